//! frp-style exposure: TCP ports (and, through `vhost`, HTTP hosts) on the server that
//! lead to services of peers behind NAT. This module does the I/O; who may claim what
//! is decided by [`crate::registry`].
//!
//! A peer sends `Expose` requests on its control connection, tagged with a random
//! per-process *instance* number, and opens one *data* connection (Noise, then multiplexed streams)
//! with the same number. A data connection is attached only to a live control
//! connection of the same identity (proved by both handshakes): the number is not a
//! secret, and nobody else can use it. For every user connection the server opens a
//! multiplexed stream toward the peer that holds the port or route (no round trip: a stream
//! opens lazily), writes the stream header naming the proxy, and splices. When a
//! peer's control connection goes, its claims stay reserved for [`GRACE`] (user
//! connections are refused at once meanwhile); the same identity takes them back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{
    registry::{ConnId, PortPlan, Refusal, Registry, Released},
    server::Tasks,
};
use bytes::Bytes;
use common::{
    compress::Carried,
    defaults::{MAX_PORT_CONNECTIONS, MAX_UDP_SESSIONS, UDP_SESSION_IDLE, UDP_SESSION_QUEUE},
    identity::PublicKey,
    mux::{Mux, MuxStream},
    proto::ExposeSpec,
};
use std::net::SocketAddr;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// How long the claims of a peer whose control connection went away stay reserved
/// for it. Covers a server restart or a network blip with the peer's reconnect backoff.
pub const GRACE: Duration = Duration::from_secs(60);

/// How long a user connection waits for the data connection of a peer that is online
/// but whose data connection is not up yet (it follows `Exposed` by a round trip, or
/// is being re-established).
pub const DATA_WAIT: Duration = Duration::from_secs(3);

const NO_INSTANCE: &str = "no exposures of this peer process: send Expose first";

/// The route tables of the server's name-routed listeners, each if it has one.
pub(crate) struct Fronts {
    /// The HTTP vhost's.
    pub(crate) http: Option<Arc<crate::vhost::Vhosts>>,
    /// The HTTPS (SNI) vhost's.
    pub(crate) https: Option<Arc<crate::vhost::Vhosts>>,
    /// The tcpmux (HTTP CONNECT) port's.
    pub(crate) tcpmux: Option<Arc<crate::vhost::Vhosts>>,
}

/// One control connection's exposure side.
struct Instance {
    identity: PublicKey,
    instance: u64,
    data: Option<Mux>,
    /// Proxies whose streams are compressed (frp's `transport.useCompression`).
    compressed: std::collections::HashSet<String>,
}

/// The exposures of all peers: listeners, data connections, vhost routes.
pub(crate) struct Exposures {
    bind_ip: std::net::IpAddr,
    vhosts: Option<Arc<crate::vhost::Vhosts>>,
    /// The HTTPS (SNI) vhost's table.
    https: Option<Arc<crate::vhost::Vhosts>>,
    /// The tcpmux (HTTP CONNECT) port's table.
    tcpmux: Option<Arc<crate::vhost::Vhosts>>,
    registry: Arc<Mutex<Registry>>,
    /// Control connection → its instance and data connection.
    instances: Mutex<HashMap<ConnId, Instance>>,
    /// Port → the token that stops its accept loop.
    listeners: Mutex<HashMap<u16, CancellationToken>>,
    /// The server's tasks: listeners and splices run on them.
    tasks: Tasks,
    /// Woken when a data connection attaches.
    attached: tokio::sync::Notify,
    /// Most connections at once from one client address to one port.
    max_per_client: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Exposures {
    pub(crate) fn new(
        bind_ip: std::net::IpAddr,
        registry: Arc<Mutex<Registry>>,
        fronts: Fronts,
        tasks: Tasks,
        max_per_client: usize,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let Fronts {
            http: vhosts,
            https,
            tcpmux,
        } = fronts;
        Arc::new(Self {
            bind_ip,
            vhosts,
            https,
            tcpmux,
            registry,
            instances: Mutex::default(),
            listeners: Mutex::default(),
            tasks,
            max_per_client,
            attached: tokio::sync::Notify::new(),
            metrics,
        })
    }

    /// A refusal of the registry's, as the peer reads it; a user's exposure limit is
    /// counted in the metrics.
    pub(crate) fn refusal(&self, r: Refusal) -> String {
        if let Refusal::Limit(_) = r {
            self.metrics.refused(crate::metrics::Limit::Exposures);
        }
        r.to_string()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// Handles an `Expose` request from control connection `conn` of `identity`.
    pub(crate) async fn expose(
        self: &Arc<Self>,
        conn: ConnId,
        identity: PublicKey,
        instance: u64,
        name: &str,
        spec: &ExposeSpec,
        compress: bool,
    ) -> Result<(Option<u16>, Vec<String>), String> {
        {
            let mut all = lock(&self.instances);
            let inst = all.entry(conn).or_insert(Instance {
                identity,
                instance,
                data: None,
                compressed: Default::default(),
            });
            if inst.instance != instance {
                return Err("one control connection speaks for one peer process: \
                            its Expose requests must carry one instance number"
                    .into());
            }
            if compress {
                inst.compressed.insert(name.to_string());
            } else {
                inst.compressed.remove(name);
            }
        }
        match spec {
            ExposeSpec::Tcp { remote_port } => self
                .expose_tcp(conn, name, *remote_port)
                .await
                .map(|p| (Some(p), Vec::new())),
            ExposeSpec::Udp { remote_port } => self
                .expose_udp(conn, name, *remote_port)
                .await
                .map(|p| (Some(p), Vec::new())),
            ExposeSpec::Http(route) => {
                let Some(vhosts) = &self.vhosts else {
                    return Err("this server serves no HTTP virtual hosts (start it with --vhost-http-port)".into());
                };
                let (hosts, locations) = vhosts.claims(route)?;
                let released = self
                    .registry()
                    .claim_route(conn, name, &hosts, &locations, Instant::now())
                    .map_err(|r| self.refusal(r))?;
                self.apply(released);
                let me = self.clone();
                let proxy = name.to_string();
                let opener: crate::vhost::Opener = Arc::new(move || {
                    let (me, proxy) = (me.clone(), proxy.clone());
                    Box::pin(async move { me.open(conn, &proxy).await })
                });
                let urls = vhosts.add(crate::vhost::Route {
                    proxy: name.to_string(),
                    http: route.clone(),
                    opener,
                    owner: conn,
                })?;
                vhosts.set_online(conn, true);
                info!(proxy = name, ?urls, "http route exposed");
                Ok((None, urls))
            }
            ExposeSpec::Https { domains, subdomain } => {
                let Some(table) = &self.https else {
                    return Err("this server serves no HTTPS virtual hosts (start it with --vhost-https-port, or vhostHTTPSPort)".into());
                };
                self.expose_by_name(
                    conn,
                    name,
                    domains,
                    subdomain,
                    table,
                    crate::registry::HTTPS_LOCATION,
                )
            }
            ExposeSpec::TcpMux { domains, subdomain } => {
                let Some(table) = &self.tcpmux else {
                    return Err("this server has no tcpmux port (start it with --tcpmux-http-connect-port, or tcpmuxHTTPConnectPort)".into());
                };
                self.expose_by_name(
                    conn,
                    name,
                    domains,
                    subdomain,
                    table,
                    crate::registry::TCPMUX_LOCATION,
                )
            }
        }
    }

    /// An https or tcpmux proxy: its hosts claimed in the registry under `location`
    /// (the marker of its front), its route in that front's `table`; a stream per
    /// connection, carried as a tcp proxy's.
    fn expose_by_name(
        self: &Arc<Self>,
        conn: ConnId,
        name: &str,
        domains: &[String],
        subdomain: &Option<String>,
        table: &Arc<crate::vhost::Vhosts>,
        location: &str,
    ) -> Result<(Option<u16>, Vec<String>), String> {
        let http = common::proto::HttpRoute {
            domains: domains.to_vec(),
            subdomain: subdomain.clone(),
            ..Default::default()
        };
        let (hosts, _) = table.claims(&http)?;
        let released = self
            .registry()
            .claim_route(conn, name, &hosts, &[location.to_string()], Instant::now())
            .map_err(|r| self.refusal(r))?;
        self.apply(released);
        let me = self.clone();
        let proxy = name.to_string();
        let opener: crate::vhost::Opener = Arc::new(move || {
            let (me, proxy) = (me.clone(), proxy.clone());
            Box::pin(async move { me.open(conn, &proxy).await })
        });
        let urls = table.add(crate::vhost::Route {
            proxy: name.to_string(),
            http,
            opener,
            owner: conn,
        })?;
        table.set_online(conn, true);
        info!(proxy = name, ?urls, "route exposed");
        Ok((None, urls))
    }

    async fn expose_tcp(
        self: &Arc<Self>,
        conn: ConnId,
        name: &str,
        port: u16,
    ) -> Result<u16, String> {
        let plan = self
            .registry()
            .plan_port(conn, name, port, Instant::now())
            .map_err(|r| self.refusal(r))?;
        let (port, new_listener) = match plan {
            PortPlan::Keep(p) => (p, None),
            PortPlan::Bind(p) => {
                let l = self.bind(p).await?;
                (p, Some(l))
            }
            PortPlan::BindFrom(ranges) => {
                let l = self.bind_from(&ranges).await?;
                let p = l.local_addr().map_err(|e| e.to_string())?.port();
                (p, Some(l))
            }
        };
        let recorded = self
            .registry()
            .record_port(conn, name, port, Instant::now());
        let released = match recorded {
            Ok(r) => r,
            // Taken meanwhile; the new listener (if any) is dropped here.
            Err(r) => return Err(self.refusal(r)),
        };
        if let Some(listener) = new_listener {
            let me = self.clone();
            let stop = self.tasks.stop.child_token();
            if let Some(old) = lock(&self.listeners).insert(port, stop.clone()) {
                old.cancel();
            }
            self.tasks.tracker.spawn(
                async move { me.accept_loop(listener, port, stop).await }
                    .instrument(info_span!("tcp", port)),
            );
        }
        self.apply(released);
        info!(port, proxy = name, "tcp port exposed");
        Ok(port)
    }

    /// A udp proxy: a UDP socket on the port, in the same port space as tcp proxies
    /// (one proxy per port number).
    async fn expose_udp(
        self: &Arc<Self>,
        conn: ConnId,
        name: &str,
        port: u16,
    ) -> Result<u16, String> {
        let plan = self
            .registry()
            .plan_port(conn, name, port, Instant::now())
            .map_err(|r| r.to_string())?;
        let bind = |p: u16| UdpSocket::bind((self.bind_ip, p));
        let (port, socket) = match plan {
            PortPlan::Keep(p) => (p, None),
            PortPlan::Bind(p) => {
                let s = bind(p)
                    .await
                    .map_err(|e| format!("cannot listen on udp port {p}: {e}"))?;
                (p, Some(s))
            }
            PortPlan::BindFrom(ranges) => {
                let mut found = None;
                if ranges.is_all() {
                    found = bind(0).await.ok();
                } else {
                    'ranges: for range in ranges.ranges() {
                        for p in range.clone() {
                            if !self.registry().port_free(p) {
                                continue;
                            }
                            if let Ok(s) = bind(p).await {
                                found = Some(s);
                                break 'ranges;
                            }
                        }
                    }
                }
                let s = found.ok_or_else(|| {
                    format!("no free udp port left in the allowed ranges ({ranges})")
                })?;
                let p = s.local_addr().map_err(|e| e.to_string())?.port();
                (p, Some(s))
            }
        };
        let released = self
            .registry()
            .record_port(conn, name, port, Instant::now())
            .map_err(|r| r.to_string())?;
        if let Some(socket) = socket {
            let me = self.clone();
            let stop = self.tasks.stop.child_token();
            if let Some(old) = lock(&self.listeners).insert(port, stop.clone()) {
                old.cancel();
            }
            self.tasks.tracker.spawn(
                async move { me.udp_loop(socket, port, stop).await }
                    .instrument(info_span!("udp", port)),
            );
        }
        self.apply(released);
        info!(port, proxy = name, "udp port exposed");
        Ok(port)
    }

    /// Receives the datagrams of a udp port and hands each user address's to its
    /// session (a stream to the peer), starting one for a new address.
    async fn udp_loop(self: Arc<Self>, socket: UdpSocket, port: u16, stop: CancellationToken) {
        let socket = Arc::new(socket);
        let mut sessions = common::net::UdpSessions::new(MAX_UDP_SESSIONS, UDP_SESSION_QUEUE);
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let (n, from) = tokio::select! {
                _ = stop.cancelled() => break,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(%e, "udp receive failed");
                        continue;
                    }
                },
            };
            let Some(rx) = sessions.dispatch(from, Bytes::copy_from_slice(&buf[..n])) else {
                continue;
            };
            let holder = self
                .registry()
                .port_holder(port, Instant::now())
                .map(|(h, up)| (h.conn, h.proxy.clone(), up));
            let Some((conn, proxy, true)) = holder else {
                debug!(%from, "datagram dropped: the peer is offline");
                continue;
            };
            let (me, socket, stop) = (self.clone(), socket.clone(), stop.clone());
            self.tasks.tracker.spawn(
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = me.udp_session(conn, &proxy, socket, from, rx) => {}
                    }
                }
                .instrument(info_span!("udp user", %from)),
            );
        }
    }

    /// One user address of a udp port: its datagrams to the peer on a stream, the
    /// peer's answers back to it, until [`UDP_SESSION_IDLE`] passes without either.
    async fn udp_session(
        &self,
        conn: ConnId,
        proxy: &str,
        socket: Arc<UdpSocket>,
        user: SocketAddr,
        rx: mpsc::Receiver<Bytes>,
    ) {
        let stream = match self.open(conn, proxy).await {
            Ok(s) => s,
            Err(e) => return debug!(%e, "udp session refused"),
        };
        common::net::carry_datagrams(stream, rx, socket, user, UDP_SESSION_IDLE).await;
    }

    /// Carries out what the registry released: closes listeners, removes routes.
    pub(crate) fn apply(&self, released: Released) {
        for port in released.ports {
            if let Some(stop) = lock(&self.listeners).remove(&port) {
                stop.cancel();
                info!(port, "tcp port released");
            }
        }
        for (conn, proxy) in &released.routes {
            for v in self.vhosts.iter().chain(&self.https).chain(&self.tcpmux) {
                v.remove(*conn, proxy);
            }
            info!(%proxy, "http route released");
        }
        for name in released.services {
            debug!(service = %name, "service name released");
        }
    }

    async fn bind_from(&self, allow: &crate::config::PortRanges) -> Result<TcpListener, String> {
        if allow.is_all() {
            return TcpListener::bind((self.bind_ip, 0))
                .await
                .map_err(|e| format!("cannot listen: {e}"));
        }
        for range in allow.ranges() {
            for p in range.clone() {
                if !self.registry().port_free(p) {
                    continue;
                }
                if let Ok(l) = TcpListener::bind((self.bind_ip, p)).await {
                    return Ok(l);
                }
            }
        }
        Err(format!("no free port left in the allowed ranges ({allow})"))
    }

    async fn bind(&self, port: u16) -> Result<TcpListener, String> {
        // A port just released is freed when its aborted listener task is dropped, a
        // moment later: retry briefly.
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

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        port: u16,
        stop: CancellationToken,
    ) {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_PORT_CONNECTIONS));
        let tracker = self.tasks.tracker.clone();
        let clients = crate::limit::Clients::new(self.max_per_client);
        crate::accept::serve(
            "tcp port",
            &listener,
            limit,
            &tracker,
            &stop,
            |user, from| {
                let Some(slot) = clients.acquire(from.ip().to_canonical(), "tcp port") else {
                    common::net::reset(user);
                    return None;
                };
                let holder = self
                    .registry()
                    .port_holder(port, Instant::now())
                    .map(|(h, up)| (h.conn, h.proxy.clone(), up));
                let Some((conn, proxy, true)) = holder else {
                    debug!(%from, "user connection refused: the peer is offline");
                    common::net::reset(user);
                    return None;
                };
                let (me, stop) = (self.clone(), self.tasks.stop.clone());
                self.metrics.tcp_connection();
                Some(
                    async move {
                        let _slot = slot;
                        let served = async {
                            match me.open(conn, &proxy).await {
                                Ok(stream) => splice(user, stream).await,
                                Err(e) => {
                                    debug!(%e, "user connection refused");
                                    common::net::reset(user);
                                }
                            }
                        };
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = served => {}
                        }
                    }
                    .instrument(info_span!("user", %from)),
                )
            },
        )
        .await;
        // The listener closes here, when the port is released or the server stops.
    }

    /// Opens a stream to the peer of control connection `conn` for `proxy`, header
    /// written. A peer whose control connection is up but whose data connection is not
    /// (yet) gets [`DATA_WAIT`] for it: right after `Exposed`, the data connection is a
    /// round trip behind. A peer that is gone fails at once.
    pub(crate) async fn open(
        &self,
        conn: ConnId,
        proxy: &str,
    ) -> std::io::Result<Carried<MuxStream>> {
        let deadline = tokio::time::Instant::now() + DATA_WAIT;
        let (mux, compress) = loop {
            let notified = self.attached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (mux, online, compress) = match lock(&self.instances).get(&conn) {
                Some(i) => (
                    i.data.clone().filter(|m| !m.is_closed()),
                    true,
                    i.compressed.contains(proxy),
                ),
                None => (None, false, false),
            };
            if let Some(m) = mux {
                break (m, compress);
            }
            if !online || tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the peer is offline",
                ));
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        };
        let mut s = mux.open().await.map_err(|e| {
            if let common::mux::MuxError::TooManyStreams(max) = e {
                self.metrics.refused(crate::metrics::Limit::Streams);
                warn!(
                    max,
                    %proxy,
                    "user connection refused: the peer's data connection is at its stream limit (--max-streams, or the user's maxStreams)"
                );
            }
            std::io::Error::other(e)
        })?;
        s.write_all(&common::proto::stream_header(proxy)).await?;
        Ok(Carried::new(s, compress))
    }

    /// Whether a data connection of `identity` for `instance` would be attached.
    pub(crate) fn may_attach(&self, identity: PublicKey, instance: u64) -> Result<(), String> {
        if lock(&self.instances)
            .values()
            .any(|i| i.identity == identity && i.instance == instance)
        {
            Ok(())
        } else {
            Err(NO_INSTANCE.into())
        }
    }

    /// A data connection of `identity` arrived for its process `instance`: attach it to
    /// that process's live control connection (and only to one of the same identity).
    pub(crate) fn attach_data(
        &self,
        identity: PublicKey,
        instance: u64,
        mux: Mux,
    ) -> Result<(), String> {
        let mut all = lock(&self.instances);
        let Some(inst) = all
            .values_mut()
            .find(|i| i.identity == identity && i.instance == instance)
        else {
            return Err(NO_INSTANCE.into());
        };
        if let Some(old) = inst.data.replace(mux) {
            old.close();
        }
        self.attached.notify_waiters();
        Ok(())
    }

    /// The control connection `conn` went away: its claims are reserved (by the
    /// registry) for [`GRACE`]; its routes answer 502 and its data connection closes.
    pub(crate) fn control_gone(&self, conn: ConnId) {
        if let Some(inst) = lock(&self.instances).remove(&conn) {
            if let Some(m) = inst.data {
                m.close();
            }
        }
        for v in self.vhosts.iter().chain(&self.https).chain(&self.tcpmux) {
            v.set_online(conn, false);
        }
    }

    /// Stops every listener and closes every data connection (at shutdown), waiting
    /// for the data connections' multiplexers to finish.
    pub(crate) async fn close_all(&self) {
        for (_, stop) in lock(&self.listeners).drain() {
            stop.cancel();
        }
        let muxes: Vec<Mux> = lock(&self.instances)
            .drain()
            .filter_map(|(_, i)| i.data)
            .collect();
        for m in &muxes {
            m.close();
        }
        for m in muxes {
            m.closed().await;
        }
    }
}

/// Carries a user connection over its stream; an abnormal end resets the user's
/// connection (see `common::splice`).
async fn splice(user: TcpStream, stream: Carried<MuxStream>) {
    let _ = user.set_nodelay(true);
    let done = common::splice::splice_carried(user, stream).await;
    match done.error {
        None => debug!(up = done.up, down = done.down, "user connection done"),
        Some(e) => debug!(up = done.up, down = done.down, %e, "user connection reset"),
    }
}
