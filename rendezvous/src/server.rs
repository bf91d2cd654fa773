//! The rendezvous server: a listener, a task per connection, explicit shutdown.
//!
//! Every connection starts with the Noise handshake (PSK from the token) and a
//! `Hello` within [`HANDSHAKE_TIMEOUT`], inside its own task, so a slow or silent
//! client stalls nobody. A control connection can ask to be paired; a probe
//! connection carries one punch attempt: the server measures its RTT, waits for the
//! other side's probe, and sends both `Punch` signals timed so they arrive together.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use common::{
    defaults::{
        HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, LINK_REQUESTS_PER_SEC, LINK_REQUEST_BURST, MAX_NAME_LEN,
        MAX_PENDING_LINKS_PER_ADDRESS, MAX_PENDING_LINKS_PER_SERVICE,
        MAX_PENDING_LINKS_PER_VISITOR, MAX_SERVER_CONNECTIONS, MAX_SERVICES, MAX_WAITING,
        PENDING_LINK_TIMEOUT, PING_INTERVAL, PROBE_PINGS, PROBE_WAIT, PUNCH_ATTEMPTS,
        RECENT_CODE_TTL, SESSION_SETUP_TIMEOUT,
    },
    framing::{Channel, FrameError},
    identity::PublicKey,
    proto::{
        ClientMsg, ConnKind, NatBehaviour, Outcome, Pairing, PunchMode, ServerMsg, PROTOCOL_VERSION,
    },
    secure::{self, NoiseStream, Psk},
};

use crate::{
    config::{DomainAllow, PortRanges},
    limit::{LogLimit, RateLimit},
    metrics::{Limit, LinkKind, PunchOutcome},
    registry::{Allowance, Registry},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, info_span, warn, Instrument};

type Chan = Channel<NoiseStream<TcpStream>>;

/// How the server runs: the same settings a config file gives.
pub type Config = crate::config::ServerConfig;

/// A running server.
#[derive(Debug)]
pub struct Handle {
    local_addr: SocketAddr,
    alt_addr: Option<SocketAddr>,
    vhost_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    tcpmux_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    tasks: Tasks,
}

/// Every task the server starts, and the token that stops them (mini-redis's and
/// iroh-relay's pattern): listeners, connections, splices, relays, timers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    pub(crate) tracker: TaskTracker,
    pub(crate) stop: CancellationToken,
}

impl Handle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The HTTP vhost listener's address, if the server has one.
    pub fn vhost_addr(&self) -> Option<SocketAddr> {
        self.vhost_addr
    }

    /// The HTTPS (SNI) vhost listener's address, if the server has one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The tcpmux (HTTP CONNECT) listener's address, if the server has one.
    pub fn tcpmux_addr(&self) -> Option<SocketAddr> {
        self.tcpmux_addr
    }

    /// The admin listener's address (dashboard, status, metrics), if the server has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The alternate STUN endpoint (OTHER-ADDRESS), if the server has one.
    pub fn alt_addr(&self) -> Option<SocketAddr> {
        self.alt_addr
    }

    /// Asks the server and all its tasks to stop: listeners close at once.
    pub fn shutdown(&self) {
        self.tasks.stop.cancel();
    }

    /// Waits until every task the server started has stopped (after [`Handle::shutdown`]).
    pub async fn join(&self) {
        self.tasks.tracker.wait().await;
    }

    /// Tasks of the server still running (listeners, connections, splices, timers):
    /// zero once [`Handle::join`] has returned.
    pub fn tasks(&self) -> usize {
        self.tasks.tracker.len()
    }
}

/// Binds and starts the server (and its STUN responder on the same port).
pub async fn spawn(config: Config) -> std::io::Result<Handle> {
    let admin = match &config.admin {
        Some(a) => {
            crate::admin::check(a)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            Some((TcpListener::bind(a.addr).await?, a.clone()))
        }
        None => None,
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let (listener, mut stun) = bind_with_alternate(&config).await?;
    stun.set_metrics(metrics.clone());
    crate::stun::log_layout(&stun);
    let alt_addr = stun.alt_addr();
    let local_addr = listener.local_addr()?;
    let tasks = Tasks::default();
    let vhost = match config.vhost_http_port {
        Some(port) => {
            let l = TcpListener::bind((config.bind.ip(), port)).await?;
            let addr = l.local_addr()?;
            let table = Arc::new(
                crate::vhost::Vhosts::new(config.subdomain_host.clone())
                    .with_http_port(addr.port())
                    .with_metrics(metrics.clone()),
            );
            Some((l, addr, table))
        }
        None => None,
    };
    let vhost_addr = vhost.as_ref().map(|v| v.1);
    let https = match config.vhost_https_port {
        Some(port) => {
            let l = TcpListener::bind((config.bind.ip(), port)).await?;
            let addr = l.local_addr()?;
            let table = Arc::new(
                crate::vhost::Vhosts::new(config.subdomain_host.clone())
                    .with_https_port(addr.port()),
            );
            Some((l, addr, table))
        }
        None => None,
    };
    let https_addr = https.as_ref().map(|v| v.1);
    let tcpmux = match config.tcpmux_http_connect_port {
        Some(port) => {
            let l = TcpListener::bind((config.bind.ip(), port)).await?;
            let addr = l.local_addr()?;
            let table = Arc::new(
                crate::vhost::Vhosts::new(config.subdomain_host.clone())
                    .with_tcpmux_port(addr.port()),
            );
            Some((l, addr, table))
        }
        None => None,
    };
    let tcpmux_addr = tcpmux.as_ref().map(|v| v.1);
    let (allowances, psks) = users(&config);
    let registry = Arc::new(Mutex::new(Registry::new(allowances, config.grace)));
    let exposures = crate::expose::Exposures::new(
        config.bind.ip(),
        registry.clone(),
        crate::expose::Fronts {
            http: vhost.as_ref().map(|v| v.2.clone()),
            https: https.as_ref().map(|v| v.2.clone()),
            tcpmux: tcpmux.as_ref().map(|v| v.2.clone()),
        },
        tasks.clone(),
        config.vhost.max_per_client,
        metrics.clone(),
    );
    if let Some((l, _, table)) = vhost {
        let stop = tasks.stop.clone();
        let mut vcfg = config.vhost.clone();
        vcfg.response_timeout = config.vhost_http_timeout;
        tasks.tracker.spawn(async move {
            if let Err(e) = crate::vhost::serve(l, table, vcfg, stop).await {
                warn!(%e, "http vhost stopped");
            }
        });
    }
    if let Some((l, _, table)) = https {
        let stop = tasks.stop.clone();
        let vcfg = config.vhost.clone();
        tasks.tracker.spawn(async move {
            if let Err(e) = crate::vhost::https::serve(l, table, vcfg, stop).await {
                warn!(%e, "https vhost stopped");
            }
        });
    }
    if let Some((l, _, table)) = tcpmux {
        let stop = tasks.stop.clone();
        let vcfg = config.vhost.clone();
        tasks.tracker.spawn(async move {
            if let Err(e) = crate::vhost::https::serve_connect(l, table, vcfg, stop).await {
                warn!(%e, "tcpmux stopped");
            }
        });
    }
    let server = Arc::new(Server {
        psks,
        state: Mutex::new(State::default()),
        next_id: AtomicU64::new(1),
        relays: Default::default(),
        exposures,
        registry,
        max_streams: config.max_streams,
        tasks: tasks.clone(),
        metrics: metrics.clone(),
    });
    let admin_addr = match admin {
        Some((l, cfg)) => {
            let addr = l.local_addr()?;
            let (server, vhost_port) = (server.clone(), vhost_addr.map(|a| a.port()));
            let https_port = https_addr.map(|a| a.port());
            let status: crate::admin::StatusFn =
                Arc::new(move || server.status(vhost_port, https_port));
            let serving = crate::admin::serve(l, cfg, metrics, status, tasks.clone());
            tasks.tracker.spawn(serving);
            Some(addr)
        }
        None => None,
    };
    tasks.tracker.spawn(accept_loop(listener, server.clone()));
    tasks.tracker.spawn(stun.run(tasks.stop.clone()));
    tasks
        .tracker
        .spawn(expire_loop(server.clone(), tasks.stop.clone()));
    let stop = tasks.stop.clone();
    tasks.tracker.spawn(async move {
        stop.cancelled().await;
        // Data connections' multiplexers run tasks of their own: close them and wait.
        server.exposures.close_all().await;
    });
    // Tasks spawned later (connections, exposures) are tracked too; `join` returns
    // once all have ended.
    tasks.tracker.close();
    Ok(Handle {
        local_addr,
        alt_addr,
        vhost_addr,
        https_addr,
        tcpmux_addr,
        admin_addr,
        tasks,
    })
}

/// Binds the server's port and its STUN endpoints: `--alt-addr` if given, else the
/// second port on the bind address (`--alt-port`, by default the bind port + 1). When
/// the default second port is taken, the server starts without it and says so.
async fn bind_with_alternate(
    config: &Config,
) -> std::io::Result<(TcpListener, crate::stun::Responder)> {
    let second = config
        .alt_port
        .resolve(config.bind.port())
        .map(|p| SocketAddr::new(config.bind.ip(), p));
    let mut alt = config.alt_addr.or(second);
    let next = config.alt_addr.is_none() && config.alt_port == crate::config::AltPort::Next;
    // The default second port never takes a port the configuration gives the vhost.
    let next_port = config.bind.port().checked_add(1);
    let taken = |p: Option<u16>| p.filter(|p| *p != 0).is_some_and(|p| Some(p) == next_port);
    if next
        && (taken(config.vhost_http_port)
            || taken(config.vhost_https_port)
            || taken(config.tcpmux_http_connect_port))
    {
        warn!(
            "the vhost port is the bind port + 1: no second port for NAT checks \
             (peers cannot tell symmetric NATs apart; see --alt-port)"
        );
        alt = None;
    }
    match crate::stun::bind(config.bind, alt, next && alt.is_some()).await {
        Err(e) if next && e.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(
                %e,
                "the second port for NAT checks is taken; starting without it (peers cannot \
                 tell symmetric NATs apart; see --alt-port)"
            );
            crate::stun::bind(config.bind, None, false).await
        }
        r => r,
    }
}

/// The registry's users and their PSKs, in the same order: the `[[users]]` of the
/// config, and the single `--token` (or, with neither, an open server) as a user with
/// the server's `allowPorts` and any domain but the catch-all.
fn users(config: &Config) -> (Vec<Allowance>, Vec<Psk>) {
    let mut allowances = Vec::new();
    let mut psks = Vec::new();
    if config.token.is_some() || config.users.is_empty() {
        allowances.push(Allowance {
            name: crate::registry::DEFAULT_USER.into(),
            ports: config.allow_ports.clone(),
            domains: DomainAllow::AnyButCatchAll,
            max_exposures: crate::config::MAX_EXPOSURES,
            max_streams: None,
        });
        psks.push(Psk::server(config.token.as_deref()));
    }
    for u in &config.users {
        allowances.push(Allowance {
            name: u.name.clone(),
            ports: u.allow_ports.clone().unwrap_or_else(PortRanges::none),
            domains: u.allow_domains.clone(),
            max_exposures: u.max_exposures,
            max_streams: u.max_streams,
        });
        psks.push(Psk::server(Some(&u.token)));
    }
    (allowances, psks)
}

/// Releases the claims of peers gone longer than the grace period, every second.
async fn expire_loop(server: Arc<Server>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ended = server.lock().expire_sessions(Instant::now());
        if ended > 0 {
            debug!(ended, "sessions whose link did not come up ended");
        }
        let released = server.registry().expire(std::time::Instant::now());
        if !released.is_empty() {
            info!(
                ?released,
                "claims of peers gone for the grace period released"
            );
            server.exposures.apply(released);
        }
    }
}

struct Server {
    psks: Vec<Psk>,
    registry: Arc<Mutex<Registry>>,
    state: Mutex<State>,
    next_id: AtomicU64,
    relays: crate::relay::Relays,
    exposures: Arc<crate::expose::Exposures>,
    /// Streams at once on one peer process's data connection (`--max-streams`).
    max_streams: usize,
    tasks: Tasks,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<Pairing, Waiter>,
    tickets: HashMap<u64, Ticket>,
    attempts: HashMap<(u64, u8), [Option<ProbeSlot>; 2]>,
    services: HashMap<String, Waiter>,
    /// The TCP mapping each control connection reported (`ClientMsg::Nat`).
    nat: HashMap<u64, NatBehaviour>,
    /// Control connections whose router grants port mappings (`ClientMsg::Nat`).
    portmap: std::collections::HashSet<u64>,
    /// Sessions by id, until their link is up for good, over, or abandoned.
    sessions: HashMap<u64, Session>,
    /// Pairing codes that paired two peers, and when (for at most
    /// [`RECENT_CODE_TTL`], at most [`MAX_WAITING`] of them): a third peer with the
    /// same code is told.
    recent_codes: HashMap<String, Instant>,
}

/// One session between two control connections, from pairing until the server no
/// longer needs it: both peers reported a direct link, its relay closed, a peer said
/// it is over ([`ClientMsg::EndSession`]), a peer's control connection ended, or its
/// link was not up in time ([`SESSION_SETUP_TIMEOUT`], [`PENDING_LINK_TIMEOUT`]).
struct Session {
    /// The two sides' tickets (side 1 is the initiator).
    tickets: [u64; 2],
    created: Instant,
    /// For a service link: the service, the visitor's identity and its address (what
    /// the limits on links being set up are counted by).
    service: Option<(String, PublicKey, IpAddr)>,
    nonce: [u8; 16],
    /// The secret-proof exchange (side 1 proves first; side 0 answers only a valid
    /// proof; side 1 then says whether side 0's was).
    initiator_proved: bool,
    responder_proved: bool,
    /// Set to true once both proofs were accepted: punch signals wait for it.
    proven: tokio::sync::watch::Sender<bool>,
    /// The next attempt number a `Repunch` hands out.
    next_attempt: u8,
    /// The relay of this session is carrying the link.
    relayed: bool,
    /// Which sides reported a direct link.
    direct: [bool; 2],
    /// Outcomes counted in the metrics already (failed attempts by number, gave up).
    counted_failures: std::collections::HashSet<u8>,
    counted_gave_up: bool,
    /// The last punch the peers were told to make was a birthday punch: a direct
    /// link reported now counts as a birthday link in the metrics.
    birthday: bool,
}

impl Session {
    /// Whether `outcome` is the first report of its kind for this session (the two
    /// peers report the same attempts; the metrics count each once).
    fn first_report(&mut self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Direct { .. } => self.direct == [false; 2],
            Outcome::AttemptFailed { attempt, .. } => self.counted_failures.insert(*attempt),
            Outcome::GaveUp { .. } => !std::mem::replace(&mut self.counted_gave_up, true),
        }
    }

    /// Not yet past the secret proofs or onto a relay: a visitor that never proves
    /// anything holds nothing longer than [`PENDING_LINK_TIMEOUT`].
    fn pending(&self) -> bool {
        !*self.proven.borrow() && !self.relayed
    }
}

/// Counts of links being set up, see [`State::pending_links`].
#[derive(Default)]
struct Pending {
    all: usize,
    mine: usize,
    same_address: usize,
}

impl State {
    fn nonce(&self, session: u64) -> [u8; 16] {
        self.sessions
            .get(&session)
            .map(|p| p.nonce)
            .unwrap_or_default()
    }

    /// Remembers which punch session `id`'s peers were told to make (for the metrics).
    fn note_mode(&mut self, id: u64, mode: PunchMode) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.birthday = matches!(mode, PunchMode::BirthdayEasy | PunchMode::BirthdayHard);
        }
    }

    /// How the peers on control connections `a` and `b` punch, from the NAT mappings
    /// they reported: both per destination, relay at once; one, a birthday punch;
    /// otherwise (or unknown) the plain simultaneous open.
    fn punch_modes(&self, a: u64, b: u64) -> (PunchMode, PunchMode) {
        PunchMode::pair_mapped(
            self.nat.get(&a).copied(),
            self.portmap.contains(&a),
            self.nat.get(&b).copied(),
            self.portmap.contains(&b),
        )
    }

    /// Forgets session `id`; with a reason, tells both peers it is over.
    fn end_session(&mut self, id: u64, reason: Option<&str>) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        for t in session.tickets {
            if let Some(t) = self.tickets.remove(&t) {
                if let Some(reason) = reason {
                    let _ = t.other_tx.try_send(ServerMsg::PeerGone {
                        session: t.other,
                        reason: reason.into(),
                    });
                }
            }
        }
        self.attempts.retain(|(s, _), _| *s != id);
    }

    /// Links to `service` being set up, in all and by `visitor`.
    /// Links to `service` being set up: in all, by this visitor's identity, and from
    /// its address (identities cost nothing to make; addresses do).
    fn pending_links(&self, service: &str, visitor: PublicKey, ip: IpAddr) -> Pending {
        let mut n = Pending::default();
        for s in self.sessions.values().filter(|s| s.pending()) {
            if let Some((name, v, from)) = &s.service {
                if name == service {
                    n.all += 1;
                    n.mine += usize::from(*v == visitor);
                    n.same_address += usize::from(*from == ip);
                }
            }
        }
        n
    }

    /// Ends the sessions whose link did not come up in time; returns how many.
    fn expire_sessions(&mut self, now: Instant) -> usize {
        let late: Vec<(u64, &'static str)> = self
            .sessions
            .iter()
            .filter_map(|(id, s)| {
                let age = now.saturating_duration_since(s.created);
                if s.pending() && age >= PENDING_LINK_TIMEOUT {
                    Some((*id, PENDING_EXPIRED))
                } else if !s.relayed && age >= SESSION_SETUP_TIMEOUT {
                    Some((*id, SETUP_EXPIRED))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in &late {
            self.end_session(*id, Some(reason));
        }
        late.len()
    }
}

const PENDING_EXPIRED: &str =
    "the peers did not prove the shared secret to each other in time: session ended";
const SETUP_EXPIRED: &str = "the link was not up in time: session ended";

/// Most URLs listed in an `Exposed` reply (each at most ~300 bytes: the reply stays
/// far below the frame limit).
const MAX_REPLY_URLS: usize = 64;

const HOPELESS: &str =
    "both NATs map per destination (symmetric): no direct attempts, relaying at once";

struct Waiter {
    conn: u64,
    tx: mpsc::Sender<ServerMsg>,
}

#[derive(Clone)]
struct Ticket {
    session: u64,
    side: usize,
    conn: u64,
    other: u64,
    other_tx: mpsc::Sender<ServerMsg>,
}

struct ProbeSlot {
    public: SocketAddr,
    local: SocketAddr,
    rtt: Duration,
    go: oneshot::Sender<(ServerMsg, Duration)>,
}

impl Server {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether ticket `t` was handed to a control connection of `identity`.
    fn ticket_of(&self, t: &Ticket, identity: PublicKey) -> bool {
        self.registry()
            .conn_owner(t.conn)
            .is_some_and(|(owner, _)| owner == identity)
    }

    /// What the server is doing (the admin listener's `/api/status`).
    fn status(&self, vhost_port: Option<u16>, https_port: Option<u16>) -> crate::status::Status {
        let nat = self.lock().nat.clone();
        let snapshot = self.registry().snapshot();
        crate::status::build(&self.metrics, snapshot, &nat, vhost_port, https_port)
    }

    /// The short fingerprints of the two peers of ticket `t`'s session.
    fn session_peers(&self, t: &Ticket) -> Vec<String> {
        let other = self.lock().tickets.get(&t.other).map(|o| o.conn);
        let reg = self.registry();
        [Some(t.conn), other]
            .into_iter()
            .flatten()
            .filter_map(|c| reg.conn_owner(c))
            .map(|(k, _)| k.fingerprint().short())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way
        // worse than a lost pairing, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_SERVER_CONNECTIONS));
    let tasks = server.tasks.clone();
    crate::accept::serve(
        "control port",
        &listener,
        limit,
        &tasks.tracker,
        &tasks.stop,
        |stream, addr| {
            let server = server.clone();
            let stop = tasks.stop.clone();
            let id = server.next_id.fetch_add(1, Ordering::Relaxed);
            Some(
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = handle(server, stream, addr, id) => if let Err(e) = r {
                            warn!(%e, "connection closed with an error");
                        }
                    }
                }
                .instrument(info_span!("conn", id, %addr, peer = tracing::field::Empty)),
            )
        },
    )
    .await;
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("handshake: {0}")]
    Handshake(#[from] secure::HandshakeError),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("timed out after {0:?} during the handshake")]
    HandshakeTimeout(Duration),
    #[error("refused: {0}")]
    Refused(String),
}

async fn handle(
    server: Arc<Server>,
    stream: TcpStream,
    addr: SocketAddr,
    id: u64,
) -> Result<(), ConnError> {
    let _ = stream.set_nodelay(true);
    let setup = async {
        let (noise, who) =
            secure::respond_server(stream, &server.psks, "wrong or missing token").await?;
        let mut ch = Channel::new(noise);
        let hello: ClientMsg = ch.recv().await?;
        Ok::<_, ConnError>((ch, hello, who))
    };
    let (mut ch, hello, who) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, setup).await {
        Err(_) => {
            warn!("refused: no handshake within {HANDSHAKE_TIMEOUT:?}");
            return Err(ConnError::HandshakeTimeout(HANDSHAKE_TIMEOUT));
        }
        Ok(Err(ConnError::Handshake(secure::HandshakeError::BadSecret))) => {
            warn!("refused: wrong or missing token (handshake failed)");
            return Ok(());
        }
        Ok(Err(ConnError::Handshake(secure::HandshakeError::Refused(r)))) => {
            warn!("refused: {r}");
            return Ok(());
        }
        Ok(Err(e)) => {
            warn!(%e, "refused: bad handshake");
            return Ok(());
        }
        Ok(Ok(x)) => x,
    };
    let kind = match hello {
        ClientMsg::Hello { version, kind } if version == PROTOCOL_VERSION => kind,
        ClientMsg::Hello { version, .. } => {
            let reason = format!("protocol version {version} is not supported; this server speaks version {PROTOCOL_VERSION}");
            warn!("refused: {reason}");
            let _ = ch.send(&ServerMsg::Refused(reason.clone())).await;
            return Err(ConnError::Refused(reason));
        }
        other => {
            let reason = format!("expected Hello first, got {}", msg_name(&other));
            warn!("refused: {reason}");
            let _ = ch.send(&ServerMsg::Refused(reason.clone())).await;
            return Err(ConnError::Refused(reason));
        }
    };
    // A data connection is only for a process of this identity that exposes something:
    // say so instead of welcoming it.
    if let ConnKind::Data { instance } = &kind {
        if let Err(reason) = server.exposures.may_attach(who.identity, *instance) {
            warn!("data connection refused: {reason}");
            let _ = ch.send(&ServerMsg::Refused(reason.clone())).await;
            return Err(ConnError::Refused(reason));
        }
    }
    ch.send(&ServerMsg::Welcome {
        version: PROTOCOL_VERSION,
        observed: addr,
    })
    .await?;
    let identity = who.identity;
    tracing::Span::current().record(
        "peer",
        tracing::field::display(identity.fingerprint().short()),
    );
    match kind {
        ConnKind::Control => {
            server.registry().connect(id, identity, who.psk_index);
            server.metrics.peer_up(id, addr);
            let result = control(&server, ch, id, addr, identity).await;
            server.metrics.peer_down(id);
            // Every way a control connection ends comes here: send errors included.
            forget_conn(&server, id);
            server.registry().disconnect(id, std::time::Instant::now());
            server.exposures.control_gone(id);
            info!("peer disconnected");
            result
        }
        ConnKind::Data { instance } => {
            // The server's stream limit per data connection, or the user's own.
            let mut cfg = common::mux::MuxConfig {
                max_streams: server.max_streams,
                ..common::mux::MuxConfig::default()
            };
            if let Some(n) = server
                .registry()
                .allowance(who.psk_index)
                .and_then(|a| a.max_streams)
            {
                cfg.max_streams = n;
            }
            let (mux, mut inbound) =
                common::mux::Mux::start(ch.into_parts().0, common::mux::Role::Client, cfg);
            if let Err(reason) = server
                .exposures
                .attach_data(identity, instance, mux.clone())
            {
                warn!("data connection refused: {reason}");
                mux.close();
                return Err(ConnError::Refused(reason));
            }
            info!("data connection up");
            // The server only opens streams on it; streams the peer opens are refused.
            tokio::select! {
                _ = mux.closed() => {}
                _ = async { while let Some(s) = inbound.recv().await { drop(s); } } => {}
            }
            info!("data connection closed");
            Ok(())
        }
        ConnKind::Relay { session } => {
            let t = server.lock().tickets.get(&session).cloned();
            let Some(t) = t.filter(|t| server.ticket_of(t, identity)) else {
                let reason = "relay for an unknown or finished session".to_string();
                ch.send(&ServerMsg::Refused(reason.clone())).await?;
                return Err(ConnError::Refused(reason));
            };
            let started = || {
                if let Some(s) = server.lock().sessions.get_mut(&t.session) {
                    s.relayed = true;
                }
                let peers = server.session_peers(&t);
                server.metrics.relay_started(t.session, peers)
            };
            let result = server.relays.join(t.session, t.side, ch, started).await;
            if let Err(crate::relay::RelayError::Full) = result {
                server.metrics.refused(Limit::Relays);
            }
            if let Ok(true) = result {
                // The relayed link is over: so is the session (unless it went direct,
                // and was forgotten then).
                server.lock().end_session(t.session, None);
            }
            result
                .map(|_| ())
                .map_err(|e| ConnError::Refused(format!("relay: {e}")))
        }
        ConnKind::Probe {
            session,
            attempt,
            local,
            mapped,
        } => {
            // A router's mapping on the address the server sees: offered instead of the
            // observed port (anyone may connect to it). On another address (a router
            // behind a CGNAT) nobody could reach it.
            let public = match mapped {
                Some(m) if m.ip() == addr.ip() => {
                    info!(observed = %addr, mapped = %m, "probe with a router port mapping");
                    m
                }
                Some(m) => {
                    info!(observed = %addr, mapped = %m, "probe's port mapping is on another address; ignored");
                    addr
                }
                None => addr,
            };
            probe(server, ch, public, session, attempt, local, identity).await
        }
    }
}

fn msg_name(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Hello { .. } => "Hello",
        ClientMsg::Pair(_) => "Pair",
        ClientMsg::Pong(_) => "Pong",
        ClientMsg::Report { .. } => "Report",
        ClientMsg::Register { .. } => "Register",
        ClientMsg::Connect { .. } => "Connect",
        ClientMsg::Repunch { .. } => "Repunch",
        ClientMsg::Expose { .. } => "Expose",
        ClientMsg::Nat { .. } => "Nat",
        ClientMsg::Prove { .. } => "Prove",
        ClientMsg::Verified { .. } => "Verified",
        ClientMsg::EndSession { .. } => "EndSession",
    }
}

async fn control(
    server: &Arc<Server>,
    mut ch: Chan,
    id: u64,
    addr: SocketAddr,
    identity: PublicKey,
) -> Result<(), ConnError> {
    info!("peer connected");
    let (tx, mut rx) = mpsc::channel::<ServerMsg>(16);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut limiter = RateLimit::new(LINK_REQUESTS_PER_SEC, LINK_REQUEST_BURST);
    let mut warn_log = LogLimit::default();
    let result = loop {
        tokio::select! {
            msg = ch.recv::<ClientMsg>() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(FrameError::Closed) => break Ok(()),
                    Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        info!("peer went away without closing");
                        break Ok(());
                    }
                    Err(e) => break Err(e.into()),
                };
                last_heard = Instant::now();
                match msg {
                    ClientMsg::Pong(n) => {
                        if let Some((sent_n, at)) = ping_sent.take() {
                            if sent_n == n { debug!(rtt_ms = at.elapsed().as_millis() as u64, "pong"); }
                        }
                    }
                    ClientMsg::Pair(_) | ClientMsg::Connect { .. } if !limiter.allow(Instant::now()) => {
                        let reason = format!(
                            "too many link requests on this connection: at most \
                             {LINK_REQUESTS_PER_SEC} per second (bursts of {LINK_REQUEST_BURST})"
                        );
                        server.metrics.refused(Limit::LinkRate);
                        if let Some(suppressed) = warn_log.ready(Instant::now()) {
                            warn!(suppressed, "{} refused: {reason}", msg_name(&msg));
                        }
                        ch.send(&ServerMsg::Refused(reason)).await?;
                    }
                    ClientMsg::Pair(pairing) => {
                        if let Err(reason) = pair(server, id, pairing, &tx) {
                            warn!("pair request refused: {reason}");
                            ch.send(&ServerMsg::Refused(reason)).await?;
                        }
                    }
                    ClientMsg::Report { session, outcome } => report(server, id, session, outcome),
                    ClientMsg::Register { name } => {
                        let reply = match register(server, id, &name, &tx) {
                            Ok(()) => ServerMsg::Registered { name },
                            Err(reason) => {
                                warn!("register refused: {reason}");
                                ServerMsg::Refused(reason)
                            }
                        };
                        ch.send(&reply).await?;
                    }
                    ClientMsg::Connect { name, relay_first } => {
                        if let Err(reason) = connect(server, id, (addr, identity), (&name, relay_first), &tx) {
                            if reason.contains("being set up") {
                                if let Some(suppressed) = warn_log.ready(Instant::now()) {
                                    warn!(suppressed, "connect refused: {reason}");
                                }
                            } else {
                                info!("connect refused: {reason}");
                            }
                            ch.send(&ServerMsg::Refused(reason)).await?;
                        }
                    }
                    ClientMsg::EndSession { session } => end_session(server, id, session),
                    ClientMsg::Repunch { session } => repunch(server, id, session, &tx),
                    ClientMsg::Prove { session, proof } => prove(server, id, session, proof),
                    ClientMsg::Verified { session, ok } => verified(server, id, session, ok),
                    ClientMsg::Nat { mapping, portmap } => {
                        info!(?mapping, portmap, "peer reported its TCP mapping");
                        let mut st = server.lock();
                        match mapping {
                            Some(m) => st.nat.insert(id, m),
                            None => st.nat.remove(&id),
                        };
                        if portmap {
                            st.portmap.insert(id);
                        } else {
                            st.portmap.remove(&id);
                        }
                    }
                    ClientMsg::Expose {
                        name,
                        instance,
                        spec,
                        compress,
                    } => {
                        let reply = match server.exposures.expose(id, identity, instance, &name, &spec, compress).await {
                            Ok((remote_port, mut urls)) => {
                                // The reply must fit a frame: a route of 64 domains x
                                // 64 locations has 4096 URLs. The first ones tell the
                                // user enough.
                                if urls.len() > MAX_REPLY_URLS {
                                    let more = urls.len() - MAX_REPLY_URLS;
                                    urls.truncate(MAX_REPLY_URLS);
                                    urls.push(format!("(and {more} more)"));
                                }
                                ServerMsg::Exposed { name, remote_port, urls }
                            }
                            Err(reason) => {
                                warn!(proxy = %name, "expose refused: {reason}");
                                ServerMsg::Refused(format!("{name}: {reason}"))
                            }
                        };
                        ch.send(&reply).await?;
                    }
                    ClientMsg::Hello { .. } => {
                        let reason = "Hello sent twice".to_string();
                        let _ = ch.send(&ServerMsg::Refused(reason.clone())).await;
                        break Err(ConnError::Refused(reason));
                    }
                }
            }
            Some(out) = rx.recv() => ch.send(&out).await?,
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    warn!("peer silent for {IDLE_TIMEOUT:?}; dropping it");
                    break Ok(());
                }
                let n = rand::random();
                ping_sent = Some((n, Instant::now()));
                ch.send(&ServerMsg::Ping(n)).await?;
            }
        }
    };
    result
}

fn pair(
    server: &Server,
    id: u64,
    pairing: Pairing,
    tx: &mpsc::Sender<ServerMsg>,
) -> Result<(), String> {
    if let Pairing::Code(code) = &pairing {
        if code.is_empty() || code.len() > MAX_NAME_LEN {
            return Err(format!("pairing code must be 1 to {MAX_NAME_LEN} bytes"));
        }
    }
    let mut st = server.lock();
    if st.waiting.values().any(|w| w.conn == id) || st.tickets.values().any(|t| t.conn == id) {
        return Err("this connection is already waiting or paired".into());
    }
    match st.waiting.remove(&pairing) {
        Some(w) if !w.tx.is_closed() => {
            let (session, t_first, t_second) =
                new_session(&mut st, (w.conn, &w.tx), (id, tx), None);
            if let Pairing::Code(code) = &pairing {
                if st.recent_codes.len() >= MAX_WAITING {
                    st.recent_codes
                        .retain(|_, at| at.elapsed() < RECENT_CODE_TTL);
                }
                if st.recent_codes.len() < MAX_WAITING {
                    st.recent_codes.insert(code.clone(), Instant::now());
                }
            }
            info!(session = format_args!("{session:016x}"), "paired");
            let (first_mode, second_mode) = st.punch_modes(w.conn, id);
            log_mode(session, first_mode);
            st.note_mode(session, first_mode);
            // The later arrival initiates the link's Noise handshake (the C demo's
            // client2 is the one that dials first).
            let nonce = st.nonce(session);
            let _ = w.tx.try_send(ServerMsg::Paired {
                session: t_first,
                initiator: false,
                mode: first_mode,
                nonce,
            });
            let _ = tx.try_send(ServerMsg::Paired {
                session: t_second,
                initiator: true,
                mode: second_mode,
                nonce,
            });
            Ok(())
        }
        _ => {
            if st.waiting.len() >= MAX_WAITING {
                server.metrics.refused(Limit::Waiting);
                return Err("server is busy: too many peers waiting".into());
            }
            let code = match &pairing {
                Pairing::Code(c) => Some(c.clone()),
                _ => None,
            };
            st.waiting.insert(
                pairing,
                Waiter {
                    conn: id,
                    tx: tx.clone(),
                },
            );
            let _ = tx.try_send(ServerMsg::Waiting);
            if let Some(code) = code {
                if let Some(at) = st.recent_codes.get(code.as_str()) {
                    if at.elapsed() < RECENT_CODE_TTL {
                        let _ = tx.try_send(ServerMsg::Notice(format!(
                            "the code {code:?} already paired two other peers {} s ago; a code \
                             pairs exactly two, so this peer waits for a new partner with it \
                             (use a new code for a new transfer)",
                            at.elapsed().as_secs()
                        )));
                    }
                }
            }
            Ok(())
        }
    }
}

/// Records a session between two control connections; returns its id and the two
/// sides' tickets (side 0 first).
fn new_session(
    st: &mut State,
    a: (u64, &mpsc::Sender<ServerMsg>),
    b: (u64, &mpsc::Sender<ServerMsg>),
    service: Option<(String, PublicKey, IpAddr)>,
) -> (u64, u64, u64) {
    let session: u64 = rand::random();
    let (ta, tb): (u64, u64) = (rand::random(), rand::random());
    st.sessions.insert(
        session,
        Session {
            tickets: [ta, tb],
            created: Instant::now(),
            service,
            nonce: rand::random(),
            initiator_proved: false,
            responder_proved: false,
            proven: tokio::sync::watch::channel(false).0,
            next_attempt: PUNCH_ATTEMPTS,
            relayed: false,
            direct: [false; 2],
            counted_failures: Default::default(),
            counted_gave_up: false,
            birthday: false,
        },
    );
    st.tickets.insert(
        ta,
        Ticket {
            session,
            side: 0,
            conn: a.0,
            other: tb,
            other_tx: b.1.clone(),
        },
    );
    st.tickets.insert(
        tb,
        Ticket {
            session,
            side: 1,
            conn: b.0,
            other: ta,
            other_tx: a.1.clone(),
        },
    );
    (session, ta, tb)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(format!(
            "service names must be 1 to {MAX_NAME_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

fn register(
    server: &Server,
    id: u64,
    name: &str,
    tx: &mpsc::Sender<ServerMsg>,
) -> Result<(), String> {
    check_name(name)?;
    let mut st = server.lock();
    if st.services.len() >= MAX_SERVICES && !st.services.contains_key(name) {
        server.metrics.refused(Limit::Services);
        return Err("server is busy: too many services".into());
    }
    let released = server
        .registry()
        .claim_service(id, name, std::time::Instant::now())
        .map_err(|r| server.exposures.refusal(r))?;
    server.exposures.apply(released);
    st.services.insert(
        name.to_string(),
        Waiter {
            conn: id,
            tx: tx.clone(),
        },
    );
    info!(service = name, "service registered");
    Ok(())
}

fn connect(
    server: &Server,
    id: u64,
    (visitor, identity): (SocketAddr, PublicKey),
    (name, relay_first): (&str, bool),
    tx: &mpsc::Sender<ServerMsg>,
) -> Result<(), String> {
    check_name(name)?;
    let mut st = server.lock();
    let live = server.registry().service(name).map(|h| h.conn);
    let Some(owner) = st.services.get(name).filter(|w| Some(w.conn) == live) else {
        return Err(format!("no service named {name:?} is online"));
    };
    let (oconn, otx) = (owner.conn, owner.tx.clone());
    if otx.is_closed() {
        return Err(format!("the owner of service {name:?} is offline"));
    }
    if oconn == id {
        return Err("a peer cannot connect to its own service".into());
    }
    let Pending {
        all,
        mine,
        same_address,
    } = st.pending_links(name, identity, visitor.ip());
    if mine >= MAX_PENDING_LINKS_PER_VISITOR
        || same_address >= MAX_PENDING_LINKS_PER_ADDRESS
        || all >= MAX_PENDING_LINKS_PER_SERVICE
    {
        server.metrics.refused(Limit::PendingLinks);
    }
    if mine >= MAX_PENDING_LINKS_PER_VISITOR {
        return Err(format!(
            "this peer has {mine} links to service {name:?} being set up already \
             (at most {MAX_PENDING_LINKS_PER_VISITOR}): wait for them"
        ));
    }
    if same_address >= MAX_PENDING_LINKS_PER_ADDRESS {
        return Err(format!(
            "{same_address} links to service {name:?} are being set up from {} already \
             (at most {MAX_PENDING_LINKS_PER_ADDRESS} per address): wait for them",
            visitor.ip()
        ));
    }
    if all >= MAX_PENDING_LINKS_PER_SERVICE {
        return Err(format!(
            "service {name:?} has {all} links being set up already \
             (at most {MAX_PENDING_LINKS_PER_SERVICE}): try again in a few seconds"
        ));
    }
    let (session, t_owner, t_visitor) = new_session(
        &mut st,
        (oconn, &otx),
        (id, tx),
        Some((name.to_string(), identity, visitor.ip())),
    );
    info!(service = name, session = format_args!("{session:016x}"), %visitor, "visitor paired with owner");
    let (owner_mode, visitor_mode) = if relay_first {
        info!(
            service = name,
            session = format_args!("{session:016x}"),
            "relaying at once: the visitor's last link to this service was relayed"
        );
        (PunchMode::Relay, PunchMode::Relay)
    } else {
        let modes = st.punch_modes(oconn, id);
        log_mode(session, modes.0);
        st.note_mode(session, modes.0);
        modes
    };
    let nonce = st.nonce(session);
    let incoming = ServerMsg::Incoming {
        session: t_owner,
        name: name.to_string(),
        visitor,
        mode: owner_mode,
        nonce,
    };
    if otx.try_send(incoming).is_err() {
        st.end_session(session, None);
        return Err(format!("the owner of service {name:?} is not answering"));
    }
    let _ = tx.try_send(ServerMsg::Paired {
        session: t_visitor,
        initiator: true,
        mode: visitor_mode,
        nonce,
    });
    Ok(())
}

/// Logs a pairing's punch mode when it is not the plain simultaneous open.
fn log_mode(session: u64, mode: PunchMode) {
    match mode {
        PunchMode::Direct => {}
        PunchMode::Relay => info!(session = format_args!("{session:016x}"), "{HOPELESS}"),
        PunchMode::BirthdayEasy | PunchMode::BirthdayHard => info!(
            session = format_args!("{session:016x}"),
            "one NAT maps per destination (symmetric): birthday punch"
        ),
    }
}

fn repunch(server: &Server, id: u64, ticket: u64, tx: &mpsc::Sender<ServerMsg>) {
    let mut st = server.lock();
    let Some(t) = st.tickets.get(&ticket).filter(|t| t.conn == id).cloned() else {
        let _ = tx.try_send(ServerMsg::PeerGone {
            session: ticket,
            reason: "the session has ended on the server".into(),
        });
        return;
    };
    // Attempt numbers after the initial ones, wrapping: a pair of probe slots is
    // freed as soon as it is used, so a number can come back safely.
    let Some(session) = st.sessions.get_mut(&t.session) else {
        return;
    };
    let next = &mut session.next_attempt;
    *next = if *next == u8::MAX {
        PUNCH_ATTEMPTS + 1
    } else {
        *next + 1
    };
    let attempt = *next;
    // The mappings as reported now: a peer may have measured again since pairing
    // (its network changed, or it asks for this attempt after re-measuring).
    let other_conn = st.tickets.get(&t.other).map(|o| o.conn);
    let (mine, theirs) = match other_conn {
        Some(o) => st.punch_modes(id, o),
        None => (PunchMode::Direct, PunchMode::Direct),
    };
    log_mode(t.session, mine);
    st.note_mode(t.session, mine);
    let _ = tx.try_send(ServerMsg::Repunch {
        session: ticket,
        attempt,
        mode: mine,
    });
    let _ = t.other_tx.try_send(ServerMsg::Repunch {
        session: t.other,
        attempt,
        mode: theirs,
    });
}

/// A peer's proof of the shared secret: forwarded to the other peer, in order (the
/// initiator's first, the responder's only after it).
fn prove(server: &Server, id: u64, ticket: u64, proof: [u8; 32]) {
    let mut st = server.lock();
    let Some(t) = st.tickets.get(&ticket).filter(|t| t.conn == id).cloned() else {
        debug!("proof for a session that has ended ignored");
        return;
    };
    let Some(p) = st.sessions.get_mut(&t.session) else {
        return;
    };
    let initiator = t.side == 1;
    if initiator {
        p.initiator_proved = true;
    } else if p.initiator_proved {
        // The responder checked the initiator's proof before sending its own.
        p.responder_proved = true;
    } else {
        warn!("a responder proved before the initiator: ignored");
        return;
    }
    let _ = t.other_tx.try_send(ServerMsg::PeerProof {
        session: t.other,
        proof,
    });
}

/// A peer's verdict on the other's proof: both accepted → punch signals may go.
fn verified(server: &Server, id: u64, ticket: u64, ok: bool) {
    let st = server.lock();
    let Some(t) = st.tickets.get(&ticket).filter(|t| t.conn == id) else {
        return;
    };
    let Some(p) = st.sessions.get(&t.session) else {
        return;
    };
    let session = format_args!("{:016x}", t.session);
    if !ok {
        info!(%session, "the peers hold different secrets: no addresses exchanged");
        let _ = t.other_tx.try_send(ServerMsg::PeerGone {
            session: t.other,
            reason: common::proto::REASON_WRONG_SECRET.into(),
        });
    } else if t.side == 1 && p.responder_proved {
        debug!(%session, "both peers proved the shared secret");
        p.proven.send_replace(true);
    }
}

fn report(server: &Server, id: u64, ticket: u64, outcome: Outcome) {
    let mut st = server.lock();
    let Some(t) = st.tickets.get(&ticket).filter(|t| t.conn == id).cloned() else {
        debug!("report for a session that has ended ignored");
        return;
    };
    let session = format_args!("{:016x}", t.session);
    // Both sides report each outcome: the first report counts.
    let first = st
        .sessions
        .get_mut(&t.session)
        .is_some_and(|s| s.first_report(&outcome));
    if first {
        let other = st.tickets.get(&t.other).map(|o| o.conn);
        let nat = |c: Option<u64>| c.and_then(|c| st.nat.get(&c).copied());
        let kind = match &outcome {
            Outcome::Direct { .. } => PunchOutcome::Direct,
            Outcome::AttemptFailed { .. } => PunchOutcome::Failed,
            Outcome::GaveUp { .. } => PunchOutcome::GaveUp,
        };
        server.metrics.punch(nat(Some(t.conn)), nat(other), kind);
    }
    match outcome {
        Outcome::Direct { attempt, millis } => {
            info!(%session, attempt, millis, "link direct");
            let both = st.sessions.get_mut(&t.session).is_some_and(|s| {
                if s.direct == [false; 2] {
                    server.metrics.link_made(if s.birthday {
                        LinkKind::Birthday
                    } else {
                        LinkKind::Direct
                    });
                }
                s.direct[t.side] = true;
                s.direct == [true; 2]
            });
            // The server has nothing more to do for a direct link.
            if both {
                st.end_session(t.session, None);
            }
        }
        Outcome::AttemptFailed { attempt, reason } => {
            info!(%session, attempt, %reason, "punch attempt failed")
        }
        Outcome::GaveUp { reason } => warn!(%session, %reason, "no direct link"),
    }
}

/// A peer says the link of its session `ticket` is over (or abandoned).
fn end_session(server: &Server, id: u64, ticket: u64) {
    let mut st = server.lock();
    let Some(t) = st.tickets.get(&ticket).filter(|t| t.conn == id).cloned() else {
        debug!("end of a session that has ended already ignored");
        return;
    };
    debug!(
        session = format_args!("{:016x}", t.session),
        "session ended by a peer"
    );
    st.end_session(t.session, Some("the other peer ended the session"));
}

fn forget_conn(server: &Server, id: u64) {
    let mut st = server.lock();
    st.waiting.retain(|_, w| w.conn != id);
    st.nat.remove(&id);
    st.portmap.remove(&id);
    st.services.retain(|_, w| w.conn != id);
    let mine: Vec<u64> = st
        .tickets
        .values()
        .filter(|t| t.conn == id)
        .map(|t| t.session)
        .collect();
    for session in mine {
        st.end_session(session, Some("the other peer disconnected from the server"));
    }
}

async fn probe(
    server: Arc<Server>,
    mut ch: Chan,
    public: SocketAddr,
    ticket: u64,
    attempt: u8,
    local: SocketAddr,
    identity: PublicKey,
) -> Result<(), ConnError> {
    let t = server.lock().tickets.get(&ticket).cloned();
    let Some(t) = t.filter(|t| server.ticket_of(t, identity)) else {
        let reason = "unknown or finished session".to_string();
        ch.send(&ServerMsg::Refused(reason.clone())).await?;
        return Err(ConnError::Refused(reason));
    };
    // No address goes to a peer that has not proved the shared secret (DCUtR's order):
    // wait for both proofs, with the RTT measurement below running meanwhile.
    let mut proven = server
        .lock()
        .sessions
        .get(&t.session)
        .map(|p| p.proven.subscribe());
    // RTT: the minimum of a few ping round trips on this very connection.
    let mut rtt = Duration::MAX;
    for _ in 0..PROBE_PINGS {
        let n: u64 = rand::random();
        let sent = Instant::now();
        ch.send(&ServerMsg::Ping(n)).await?;
        loop {
            match ch.recv_timeout::<ClientMsg>(PROBE_WAIT).await? {
                ClientMsg::Pong(m) if m == n => break,
                ClientMsg::Pong(_) => continue,
                other => {
                    let reason = format!("unexpected {} on a probe connection", msg_name(&other));
                    let _ = ch.send(&ServerMsg::Refused(reason.clone())).await;
                    return Err(ConnError::Refused(reason));
                }
            }
        }
        rtt = rtt.min(sent.elapsed());
    }
    let proof_wait = Instant::now();
    let proven_in_time = match proven.as_mut() {
        Some(rx) => tokio::time::timeout(PROBE_WAIT, rx.wait_for(|v| *v))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => false,
    };
    if !proven_in_time {
        let reason =
            "the peers did not prove the shared secret to each other: no addresses exchanged"
                .to_string();
        let _ = ch.send(&ServerMsg::Refused(reason.clone())).await;
        return Err(ConnError::Refused(reason));
    }
    // How long this probe, its RTT measured, waited for the secret proofs: what the
    // proofs cost the punch (0 when they finished first).
    info!(
        attempt,
        rtt_ms = rtt.as_secs_f64() * 1e3,
        proof_wait_ms = proof_wait.elapsed().as_secs_f64() * 1e3,
        "probe ready"
    );
    let (go_tx, go_rx) = oneshot::channel();
    let ready = {
        let mut st = server.lock();
        let slots = st
            .attempts
            .entry((t.session, attempt))
            .or_insert_with(|| [None, None]);
        slots[t.side] = Some(ProbeSlot {
            public,
            local,
            rtt,
            go: go_tx,
        });
        if slots.iter().all(Option::is_some) {
            st.attempts.remove(&(t.session, attempt))
        } else {
            None
        }
    };
    if let Some([Some(a), Some(b)]) = ready {
        // Fire together: the farther peer is signalled at once, the nearer one half
        // the RTT difference later (libp2p DCUtR's RTT/2 rule).
        let (da, db) = if a.rtt > b.rtt {
            (Duration::ZERO, (a.rtt - b.rtt) / 2)
        } else {
            ((b.rtt - a.rtt) / 2, Duration::ZERO)
        };
        info!(
            session = format_args!("{:016x}", t.session),
            attempt,
            a = %a.public, b = %b.public,
            rtt_a_ms = a.rtt.as_secs_f64() * 1e3, rtt_b_ms = b.rtt.as_secs_f64() * 1e3,
            "signalling punch"
        );
        let _ = a.go.send((
            ServerMsg::Punch {
                peer_public: b.public,
                peer_local: b.local,
                own_public: a.public,
            },
            da,
        ));
        let _ = b.go.send((
            ServerMsg::Punch {
                peer_public: a.public,
                peer_local: a.local,
                own_public: b.public,
            },
            db,
        ));
    }
    let (msg, delay) = match tokio::time::timeout(PROBE_WAIT, go_rx).await {
        Ok(Ok(x)) => x,
        _ => {
            server.lock().attempts.remove(&(t.session, attempt));
            let reason =
                format!("the other peer did not join attempt {attempt} within {PROBE_WAIT:?}");
            let _ = ch.send(&ServerMsg::Refused(reason.clone())).await;
            return Err(ConnError::Refused(reason));
        }
    };
    tokio::time::sleep(delay).await;
    ch.send(&msg).await?;
    // Keep the probe (and so the peer's NAT mapping) open until the peer closes it.
    match ch.recv_timeout::<ClientMsg>(PROBE_WAIT * 3).await {
        Err(FrameError::Closed) | Err(FrameError::Timeout(_)) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(()),
    }
}
