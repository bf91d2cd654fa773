//! frp-style exposure: TCP ports (and, through `vhost`, HTTP hosts) on the server that
//! lead to services of peers behind NAT.
//!
//! A peer sends `Expose` requests on its control connection, tagged with a random
//! per-process *instance* id, and opens one *data* connection (Noise, then yamux) with
//! the same id. For every user connection the server opens a yamux stream toward the
//! peer (no round trip: yamux opens lazily), writes the stream header naming the
//! proxy, and splices. When a peer's control connection goes, its exposures stay
//! reserved for [`GRACE`] so that the same instance can reconnect and take them back
//! (same ports); meanwhile user connections are refused at once (HTTP: 502).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::config::PortRanges;
use common::{
    mux::{Mux, MuxStream},
    proto::ExposeSpec,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::{debug, info, info_span, warn, Instrument};

/// How long the exposures of a peer whose control connection went away stay reserved
/// for it. Covers a server restart or a network blip with the peer's reconnect backoff.
pub const GRACE: Duration = Duration::from_secs(60);

/// How long a user connection waits for the data connection of a peer that is online
/// but whose data connection is not up yet (it follows `Exposed` by a round trip, or
/// is being re-established).
pub const DATA_WAIT: Duration = Duration::from_secs(3);

/// One peer process's exposures.
#[derive(Default)]
struct Instance {
    /// The control connection that owns it now (None: in its grace period).
    conn: Option<u64>,
    data: Option<Mux>,
    tcp: HashMap<String, TcpExposure>,
    /// Bumped on every disconnect, so that a stale grace timer does nothing.
    epoch: u64,
}

struct TcpExposure {
    port: u16,
    task: JoinHandle<()>,
}

/// The registry of all exposures.
pub(crate) struct Exposures {
    bind_ip: std::net::IpAddr,
    allow: PortRanges,
    vhosts: Option<Arc<crate::vhost::Vhosts>>,
    instances: Mutex<HashMap<u64, Instance>>,
    /// Port → instance, for conflicts.
    ports: Mutex<HashMap<u16, u64>>,
    /// Woken when a data connection attaches.
    attached: tokio::sync::Notify,
}

impl Exposures {
    pub(crate) fn new(
        bind_ip: std::net::IpAddr,
        allow: PortRanges,
        vhosts: Option<Arc<crate::vhost::Vhosts>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            bind_ip,
            allow,
            vhosts,
            instances: Mutex::default(),
            ports: Mutex::default(),
            attached: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instance>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles an `Expose` request from control connection `conn`.
    pub(crate) async fn expose(
        self: &Arc<Self>,
        conn: u64,
        instance: u64,
        name: &str,
        spec: &ExposeSpec,
    ) -> Result<(Option<u16>, Vec<String>), String> {
        {
            let mut all = self.lock();
            let inst = all.entry(instance).or_default();
            match inst.conn {
                Some(c) if c != conn => {
                    return Err("this instance id is in use by another connection".into())
                }
                _ => inst.conn = Some(conn),
            }
            if let ExposeSpec::Tcp { remote_port } = spec {
                if let Some(existing) = inst.tcp.get(name) {
                    if *remote_port == 0 || *remote_port == existing.port {
                        // The same instance taking its exposure back (after a reconnect).
                        return Ok((Some(existing.port), Vec::new()));
                    }
                }
            }
        }
        match spec {
            ExposeSpec::Tcp { remote_port } => self
                .expose_tcp(instance, name, *remote_port)
                .await
                .map(|p| (Some(p), Vec::new())),
            ExposeSpec::Http(route) => {
                let Some(vhosts) = &self.vhosts else {
                    return Err("this server serves no HTTP virtual hosts (start it with --vhost-http-port)".into());
                };
                let me = self.clone();
                let proxy = name.to_string();
                let opener: crate::vhost::Opener = Arc::new(move || {
                    let (me, proxy) = (me.clone(), proxy.clone());
                    Box::pin(async move { me.open(instance, &proxy).await })
                });
                let urls = vhosts.add(crate::vhost::Route {
                    proxy: name.to_string(),
                    http: route.clone(),
                    opener,
                    owner: instance,
                })?;
                vhosts.set_online(instance, true);
                info!(proxy = name, ?urls, "http route exposed");
                Ok((None, urls))
            }
        }
    }

    async fn expose_tcp(
        self: &Arc<Self>,
        instance: u64,
        name: &str,
        port: u16,
    ) -> Result<u16, String> {
        if port != 0 && !self.allow.contains(port) {
            return Err(format!(
                "port {port} is not allowed on this server (allowed: {})",
                self.allow
            ));
        }
        if port != 0 {
            let owner = self
                .ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&port)
                .copied();
            if let Some(owner) = owner.filter(|&o| o != instance) {
                if !self.evict_offline(owner, port) {
                    return Err(format!("port {port} is already exposed by another peer"));
                }
            }
        }
        let listener = self.bind(port).await?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        self.ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, instance);
        let me = self.clone();
        let proxy = name.to_string();
        let task =
            tokio::spawn(
                async move { me.accept_loop(listener, instance, proxy).await }
                    .instrument(info_span!("tcp", port, proxy = name)),
            );
        let mut all = self.lock();
        let inst = all.entry(instance).or_default();
        if let Some(old) = inst
            .tcp
            .insert(name.to_string(), TcpExposure { port, task })
        {
            old.task.abort();
            if old.port != port {
                self.ports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&old.port);
            }
        }
        info!(port, proxy = name, "tcp port exposed");
        Ok(port)
    }

    /// Frees `port` if its owner is offline (in its grace period): a restarted peer
    /// process takes over what its predecessor held. Returns whether it was freed.
    fn evict_offline(&self, owner: u64, port: u16) -> bool {
        let mut all = self.lock();
        let Some(inst) = all.get_mut(&owner) else {
            return true;
        };
        if inst.conn.is_some() {
            return false;
        }
        inst.tcp.retain(|name, t| {
            if t.port == port {
                t.task.abort();
                info!(port, proxy = %name, "exposure of an offline peer taken over");
                false
            } else {
                true
            }
        });
        self.ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port);
        true
    }

    async fn bind(&self, port: u16) -> Result<TcpListener, String> {
        if port == 0 {
            // The server chooses: a free port inside the allowed ranges.
            if self.allow.is_all() {
                return TcpListener::bind((self.bind_ip, 0))
                    .await
                    .map_err(|e| format!("cannot listen: {e}"));
            }
            for range in self.allow.ranges() {
                for p in range.clone() {
                    if self
                        .ports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&p)
                    {
                        continue;
                    }
                    if let Ok(l) = TcpListener::bind((self.bind_ip, p)).await {
                        return Ok(l);
                    }
                }
            }
            return Err(format!(
                "no free port left in the allowed ranges ({})",
                self.allow
            ));
        }
        // A port just taken over from an offline peer is freed when its aborted
        // listener task is dropped, a moment later: retry briefly.
        let mut tries = 0;
        loop {
            match TcpListener::bind((self.bind_ip, port)).await {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => return Err(format!("cannot listen on port {port}: {e}")),
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, instance: u64, proxy: String) {
        loop {
            let (user, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(%e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            let proxy = proxy.clone();
            tokio::spawn(
                async move {
                    match me.open(instance, &proxy).await {
                        Ok(stream) => splice(user, stream).await,
                        Err(e) => debug!(%e, "user connection refused"),
                    }
                }
                .instrument(info_span!("user", %from)),
            );
        }
    }

    /// Opens a stream to `instance` for `proxy`, header written.
    /// A peer whose control connection is up but whose data connection is not (yet)
    /// gets [`DATA_WAIT`] for it: right after `Exposed`, the data connection is a
    /// round trip behind. A peer that is gone fails at once.
    pub(crate) async fn open(&self, instance: u64, proxy: &str) -> std::io::Result<MuxStream> {
        let deadline = tokio::time::Instant::now() + DATA_WAIT;
        let mux = loop {
            let notified = self.attached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (mux, online) = match self.lock().get(&instance) {
                Some(i) => (i.data.clone().filter(|m| !m.is_closed()), i.conn.is_some()),
                None => (None, false),
            };
            if let Some(m) = mux {
                break m;
            }
            if !online || tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the peer is offline",
                ));
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        };
        let mut s = mux.open().await.map_err(std::io::Error::other)?;
        s.write_all(&common::proto::stream_header(proxy)).await?;
        Ok(s)
    }

    /// A data connection arrived for `instance`.
    pub(crate) fn attach_data(&self, instance: u64, mux: Mux) -> Result<(), String> {
        let mut all = self.lock();
        let Some(inst) = all.get_mut(&instance) else {
            return Err("no exposures for this instance: send Expose first".into());
        };
        if let Some(old) = inst.data.replace(mux) {
            old.close();
        }
        self.attached.notify_waiters();
        Ok(())
    }

    /// The control connection `conn` went away: keep its exposures for [`GRACE`].
    pub(crate) fn control_gone(self: &Arc<Self>, conn: u64) {
        let mut all = self.lock();
        for (&id, inst) in all.iter_mut().filter(|(_, i)| i.conn == Some(conn)) {
            inst.conn = None;
            inst.epoch += 1;
            let epoch = inst.epoch;
            if let Some(v) = &self.vhosts {
                v.set_online(id, false);
            }
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(GRACE).await;
                me.expire(id, epoch);
            });
        }
    }

    fn expire(&self, instance: u64, epoch: u64) {
        let mut all = self.lock();
        if all
            .get(&instance)
            .is_some_and(|i| i.conn.is_none() && i.epoch == epoch)
        {
            if let Some(inst) = all.remove(&instance) {
                let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
                for (name, t) in inst.tcp {
                    t.task.abort();
                    ports.remove(&t.port);
                    info!(port = t.port, proxy = name, "exposure expired");
                }
                if let Some(m) = inst.data {
                    m.close();
                }
                if let Some(v) = &self.vhosts {
                    v.remove_owner(instance);
                }
            }
        }
    }
}

async fn splice(user: TcpStream, stream: MuxStream) {
    let _ = user.set_nodelay(true);
    let (ur, uw) = user.into_split();
    let (sr, sw) = tokio::io::split(stream);
    let (c1, c2) = (
        common::splice::Counter::default(),
        common::splice::Counter::default(),
    );
    let _ = tokio::join!(
        common::splice::pump(ur, sw, &c1),
        common::splice::pump(sr, uw, &c2)
    );
    debug!(up = c1.get(), down = c2.get(), "user connection done");
}
