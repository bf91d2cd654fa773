//! Named services over peer links (frp's xtcp, over TCP): `peer serve` offers a local
//! TCP service under a name; `peer connect` opens a local listener whose connections
//! reach it. All connections of a visitor share one link as multiplexed streams.
//!
//! A link is direct when punching works: one attempt, so that the first connection
//! waits at most one punch window; otherwise it runs relayed through the server at
//! once, end-to-end encrypted with a key from the secret, and the visitor keeps trying
//! to go direct in the background with backoff. Once direct, new streams use the
//! direct link and old ones finish on the relay.
//!
//! Every stream starts with a header naming the service (`[1, len_hi, len_lo, name]`),
//! so an owner never serves a stream meant for something else.
//!
//! A UDP service (`serve --udp`, `connect --udp`, frp's sudp) carries datagrams: the
//! visitor's UDP socket gives each client address a session of its own, a stream
//! whose header names `udp:NAME` (so a TCP owner refuses it, and the reverse) and
//! whose datagrams are framed by `common::net::datagram_codec`; the owner sends them
//! to the local service from a UDP socket per session. A session ends after
//! [`UDP_SESSION_IDLE`] without a datagram either way; a visitor holds at most
//! [`MAX_UDP_SESSIONS`] at once.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::{
    defaults::{
        MAX_UDP_SESSIONS, REPUNCH_FIRST_BACKOFF, REPUNCH_MAX_BACKOFF, SERVER_BACK_WAIT,
        SERVICE_DIRECT_ATTEMPTS, UDP_SESSION_IDLE, UDP_SESSION_QUEUE,
    },
    mux::{Mux, MuxConfig, MuxError, MuxStream, Role},
    proto::{ClientMsg, PunchMode, ServerMsg},
    secure::Psk,
    splice,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, Mutex, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{
    client::{ClientError, ServerConfig},
    hub::{Hub, HubEvent},
    link::{self, LinkError, LinkInfo, Path, Proving, Punching, SessionIo, Strategy},
};

/// How long an owner waits for a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a visitor waits for the server to pair it with the owner.
const PAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// The name in the header of a service's streams: `udp:NAME` for a UDP service.
fn stream_name(name: &str, udp: bool) -> String {
    if udp {
        format!("udp:{name}")
    } else {
        name.to_string()
    }
}

/// The link key of a service: from its name and secret. The server never sees it.
pub fn service_psk(name: &str, secret: &str) -> Psk {
    Psk::derive("service", &[name, secret])
}

/// Why a service command failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The server connection failed for good (wrong token).
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The server refused the request.
    #[error("rendezvous server refused: {0}")]
    Refused(String),
    /// The link could not be made.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The local listener could not be opened.
    #[error("cannot listen on {addr}: {err}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        err: std::io::Error,
    },
}

/// What the owner serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The service's name.
    pub name: String,
    /// The local service every stream is connected to.
    pub local: SocketAddr,
    /// The shared secret.
    pub secret: String,
    /// Most links (visitors) at once.
    pub max_links: usize,
    /// Links always run relayed through the server, never punched (frp's stcp: the
    /// server carries the bytes, end-to-end encrypted with the secret).
    pub relay_only: bool,
    /// Most streams at once per link (`--max-streams`; default
    /// [`common::mux::DEFAULT_MAX_STREAMS`], as the visitor's). Past it the stream is
    /// refused with a reset and a warning, and the visitor resets the connection.
    pub max_streams: usize,
    /// A UDP service: streams carry datagrams to `local` over UDP (frp's sudp).
    pub udp: bool,
}

fn status(msg: &str) {
    common::process::status(msg);
}

/// Runs the owner side until a fatal error.
pub async fn serve(cfg: ServerConfig, svc: ServeConfig) -> Result<(), ServiceError> {
    crate::status::book().role(format!("serve {}", svc.name));
    let mut hub = Hub::start(
        cfg.clone(),
        vec![ClientMsg::Register {
            name: svc.name.clone(),
        }],
    );
    let svc = Arc::new(svc);
    let links = Arc::new(Semaphore::new(svc.max_links));
    let mut tasks = JoinSet::new();
    loop {
        let Some(ev) = hub.events.recv().await else {
            return Ok(());
        };
        match ev {
            HubEvent::Fatal(e) => return Err(e.into()),
            HubEvent::Up => status("login to server success"),
            HubEvent::Down(_) => {}
            HubEvent::Msg(ServerMsg::Registered { name }) => {
                status(&format!(
                    "service {name:?} registered; serving {}",
                    svc.local
                ));
                status(&format!("[{name}] start proxy success"));
            }
            HubEvent::Msg(ServerMsg::Refused(r)) => return Err(ServiceError::Refused(r)),
            HubEvent::Msg(ServerMsg::Incoming {
                session,
                name,
                visitor,
                mode,
                nonce,
            }) => {
                if name != svc.name {
                    continue;
                }
                let Ok(permit) = links.clone().try_acquire_owned() else {
                    warn!(%visitor, max = svc.max_links, "link refused: too many links");
                    let _ = hub.tx.try_send(ClientMsg::Report {
                        session,
                        outcome: common::proto::Outcome::GaveUp {
                            reason: "owner at its link limit".into(),
                        },
                    });
                    continue;
                };
                let rx = hub.route(session);
                let (cfg, svc, tx) = (cfg.clone(), svc.clone(), hub.tx.clone());
                tasks.spawn(
                    async move {
                        owner_link(cfg, svc, tx, rx, session, mode, nonce).await;
                        drop(permit);
                    }
                    .instrument(info_span!("link", %visitor)),
                );
            }
            HubEvent::Msg(other) => debug!(?other, "ignored"),
        }
        while tasks.try_join_next().is_some() {}
    }
}

async fn owner_link(
    cfg: ServerConfig,
    svc: Arc<ServeConfig>,
    tx: mpsc::Sender<ClientMsg>,
    mut rx: mpsc::Receiver<ServerMsg>,
    ticket: u64,
    mode: PunchMode,
    nonce: [u8; 16],
) {
    let psk = service_psk(&svc.name, &svc.secret);
    let io = SessionIo {
        tx: &tx,
        rx: &mut rx,
    };
    if svc.relay_only {
        debug!("relayed: stcp");
    } else if mode == PunchMode::Relay {
        status(&format!("relayed: {}", link::SKIPPED_DIRECT));
    }
    let strategy = Strategy {
        attempts: SERVICE_DIRECT_ATTEMPTS,
        relay: true,
        mode: if svc.relay_only {
            PunchMode::Relay
        } else {
            mode
        },
        nonce,
    };
    // A session relayed at once has proved nothing yet: its first background attempt
    // does (the visitor, as initiator, proves first).
    let mut proving = if mode == PunchMode::Relay {
        Proving::later(false, nonce)
    } else {
        Proving::proved()
    };
    let (stream, info) = match link::establish(&cfg, io, ticket, false, &psk, strategy).await {
        Ok(x) => x,
        Err(LinkError::WrongSecret) => {
            warn!("a visitor presented a wrong secret; nothing exposed");
            status("refused a visitor with a wrong secret");
            return;
        }
        Err(e) => {
            warn!(%e, "link failed");
            return;
        }
    };
    info!(path = %info.path, remote = %info.remote, "link up");
    let listed = crate::status::book().link_up("serve", &svc.name, &info);
    let mux_cfg = MuxConfig {
        max_streams: svc.max_streams,
        ..MuxConfig::default()
    };
    let counted = |s| common::count::Counted::new(s, listed.bytes());
    let (mux, inbound) = Mux::start(counted(stream), Role::Server, mux_cfg.clone());
    let mut streams = JoinSet::new();
    let mut inbounds = vec![inbound];
    let mut muxes = vec![mux];
    // Once the server connection is gone no session message can come: stop polling
    // for them (a closed receiver is always ready, and would spin this loop).
    let mut server_gone = false;
    loop {
        // Accept streams from every link of this session (relay and, later, direct).
        let next = async {
            let (s, i, _) =
                futures::future::select_all(inbounds.iter_mut().map(|r| Box::pin(r.recv()))).await;
            (s, i)
        };
        tokio::select! {
            (s, i) = next => match s {
                Some(s) => { streams.spawn(serve_stream(svc.clone(), s)); }
                None => {
                    inbounds.remove(i);
                    muxes.remove(i);
                    if inbounds.is_empty() { break; }
                }
            },
            m = rx.recv(), if !server_gone => match m {
                Some(ServerMsg::Repunch { attempt, mode, .. }) => {
                    match link::direct_attempt(&cfg, &tx, &mut rx, ticket, attempt, Punching { initiator: false, mode }, &psk, &mut proving).await {
                        Ok((stream, info)) => {
                            info!(remote = %info.remote, "link upgraded to direct");
                            listed.upgraded(&info);
                            let (mux, inbound) = Mux::start(counted(stream), Role::Server, mux_cfg.clone());
                            inbounds.push(inbound);
                            muxes.push(mux);
                        }
                        Err(e) => debug!(?e, "background attempt failed"),
                    }
                }
                Some(other) => debug!(?other, "ignored"),
                // The server connection is gone; the links stay until they end.
                None => {
                    debug!("server connection gone; the link stays up");
                    server_gone = true;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    let _ = tx.try_send(ClientMsg::EndSession { session: ticket });
    info!("link closed");
}

async fn serve_stream(svc: Arc<ServeConfig>, mut s: MuxStream) {
    match common::net::read_stream_header(&mut s, HEADER_TIMEOUT).await {
        Ok(name) if name == stream_name(&svc.name, svc.udp) => {}
        other => {
            warn!(?other, "stream with a bad header refused (a tcp visitor of a udp service, or the reverse?)");
            return;
        }
    }
    if svc.udp {
        return crate::expose::udp_session(s, svc.local, &svc.name).await;
    }
    let local = match TcpStream::connect(svc.local).await {
        Ok(l) => l,
        Err(e) => {
            warn!(local = %svc.local, %e, "cannot reach the local service");
            return;
        }
    };
    let _ = local.set_nodelay(true);
    splice_both(s, local).await;
}

/// Carries `tcp` (a user's connection, or ours to the local service) over `stream`
/// both ways with half-close, until both directions ended; an abnormal end resets
/// `tcp` and the stream (see `common::splice`).
pub(crate) async fn splice_both(stream: MuxStream, tcp: TcpStream) {
    let done = splice::splice(tcp, stream).await;
    match done.error {
        None => debug!(up = done.up, down = done.down, "stream done"),
        Some(e) => debug!(up = done.up, down = done.down, %e, "stream reset"),
    }
}

/// What the visitor does.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// The service's name.
    pub name: String,
    /// The shared secret.
    pub secret: String,
    /// The local listener.
    pub listen: SocketAddr,
    /// Bring the link up at once and keep it up.
    pub keep_open: bool,
    /// The link always runs relayed through the server, never punched (frp's stcp
    /// visitor).
    pub relay_only: bool,
    /// Most streams at once on the link: the same as the owner's
    /// [`ServeConfig::max_streams`] (both default to
    /// [`common::mux::DEFAULT_MAX_STREAMS`]). Past our own, a new connection is reset
    /// here with a warning; past the owner's, the owner refuses the stream (and warns)
    /// and the connection is reset.
    pub max_streams: usize,
    /// A UDP service: the local listener is a UDP socket (frp's sudp visitor).
    pub udp: bool,
}

struct Current {
    mux: Mux,
    info: LinkInfo,
    /// This side's session ticket (ended on the server when the link closes).
    ticket: u64,
    /// The link's entry for `peer status`.
    listed: Arc<crate::status::LinkGuard>,
}

struct Visitor {
    cfg: ServerConfig,
    svc: ConnectConfig,
    hub: Mutex<Hub>,
    current: Mutex<Option<Current>>,
}

/// Runs the visitor side: a local listener whose connections reach the service.
pub async fn connect(cfg: ServerConfig, svc: ConnectConfig) -> Result<(), ServiceError> {
    let listen_err = |err| ServiceError::Listen {
        addr: svc.listen,
        err,
    };
    let (listener, local) = if svc.udp {
        let s = UdpSocket::bind(svc.listen).await.map_err(listen_err)?;
        let local = s.local_addr().map_err(listen_err)?;
        (Err(s), local)
    } else {
        let l = TcpListener::bind(svc.listen).await.map_err(listen_err)?;
        let local = l.local_addr().map_err(listen_err)?;
        (Ok(l), local)
    };
    let proto = if svc.udp { "udp " } else { "" };
    println!("listening on {proto}{local}");
    crate::status::book().role(format!("connect {}", svc.name));
    status(&format!("[{}] start visitor success", svc.name));
    let keep_open = svc.keep_open;
    let mut hub = Hub::start(cfg.clone(), Vec::new());
    // Connections wait in the listener's backlog until the server was reached once;
    // one that cannot be reached at all (a wrong address, not a punchline server) is
    // an error after `start_wait` instead of a listener that can never work.
    loop {
        match hub.events.recv().await {
            Some(HubEvent::Up) => break,
            Some(HubEvent::Fatal(e)) => return Err(e.into()),
            Some(_) => {}
            None => return Err(ServiceError::Refused("internal: hub stopped".into())),
        }
    }
    let v = Arc::new(Visitor {
        hub: Mutex::new(hub),
        cfg,
        svc,
        current: Mutex::new(None),
    });
    if keep_open {
        v.link().await?;
    }
    let listener = match listener {
        Ok(l) => l,
        Err(socket) => {
            v.datagrams(socket).await;
            return Ok(());
        }
    };
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((conn, from)) => {
                    let v = v.clone();
                    tasks.spawn(async move { v.forward(conn).await }.instrument(info_span!("conn", %from)));
                }
                Err(e) => {
                    warn!(%e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

impl Visitor {
    fn mux_config(&self) -> MuxConfig {
        MuxConfig {
            max_streams: self.svc.max_streams,
            ..MuxConfig::default()
        }
    }

    /// Carries one connection to the listener; every way it fails resets it.
    async fn forward(self: Arc<Self>, conn: TcpStream) {
        let _ = conn.set_nodelay(true);
        let mux = match self.link().await {
            Ok(m) => m,
            Err(e) => {
                status(&format!("error: {e}"));
                return common::net::reset(conn);
            }
        };
        let mut s = match mux.open().await {
            Ok(s) => s,
            Err(MuxError::TooManyStreams(max)) => {
                warn!(
                    max,
                    "connection refused: the link is at its --max-streams limit"
                );
                return common::net::reset(conn);
            }
            Err(e) => {
                status(&format!("error: cannot open a stream: {e}"));
                return common::net::reset(conn);
            }
        };
        let header = common::proto::stream_header(&self.svc.name);
        if let Err(e) = s.write_all(&header).await {
            status(&format!("error: stream refused: {e}"));
            return common::net::reset(conn);
        }
        splice_both(s, conn).await;
    }

    /// A UDP visitor: receives the local clients' datagrams and hands each client
    /// address's to its session (a stream on the link), starting one for a new address.
    async fn datagrams(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let mut sessions = common::net::UdpSessions::new(MAX_UDP_SESSIONS, UDP_SESSION_QUEUE);
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let (n, from) = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(%e, "udp receive failed");
                        continue;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let Some(rx) = sessions.dispatch(from, bytes::Bytes::copy_from_slice(&buf[..n])) else {
                continue;
            };
            let (me, socket) = (self.clone(), socket.clone());
            tasks.spawn(
                async move { me.datagram_session(socket, from, rx).await }
                    .instrument(info_span!("udp client", %from)),
            );
        }
    }

    /// One client address of a UDP visitor: a stream on the link for its datagrams.
    async fn datagram_session(
        self: Arc<Self>,
        socket: Arc<UdpSocket>,
        from: SocketAddr,
        rx: mpsc::Receiver<bytes::Bytes>,
    ) {
        let mux = match self.link().await {
            Ok(m) => m,
            Err(e) => return status(&format!("error: {e}")),
        };
        let mut s = match mux.open().await {
            Ok(s) => s,
            Err(e) => return warn!(%e, "udp session refused: cannot open a stream"),
        };
        let header = common::proto::stream_header(&stream_name(&self.svc.name, true));
        if let Err(e) = s.write_all(&header).await {
            return warn!(%e, "udp session refused");
        }
        common::net::carry_datagrams(s, rx, socket, from, UDP_SESSION_IDLE).await;
    }

    /// The current link's mux, bringing a link up if there is none.
    async fn link(self: &Arc<Self>) -> Result<Mux, ServiceError> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            if !c.mux.is_closed() {
                return Ok(c.mux.clone());
            }
            info!(path = %c.info.path, "link closed; making a new one");
            let tx = self.hub.lock().await.tx.clone();
            let _ = tx.try_send(ClientMsg::EndSession { session: c.ticket });
        }
        // A link that had to be relayed last time would be relayed again: skip the
        // punch window (the background upgrade still tries direct).
        let relay_first = cur.as_ref().is_some_and(|c| c.info.path == Path::Relayed);
        let started = Instant::now();
        let (ticket, mode, nonce, rx) = self.pair(relay_first).await?;
        let mut rx = rx;
        let psk = service_psk(&self.svc.name, &self.svc.secret);
        let tx = self.hub.lock().await.tx.clone();
        let io = SessionIo {
            tx: &tx,
            rx: &mut rx,
        };
        let strategy = Strategy {
            attempts: SERVICE_DIRECT_ATTEMPTS,
            relay: true,
            mode: if self.svc.relay_only {
                PunchMode::Relay
            } else {
                mode
            },
            nonce,
        };
        if relay_first {
            status("relayed at once: the last link to this service was relayed too (direct is tried in the background)");
        } else if mode == PunchMode::Relay && !self.svc.relay_only {
            status(&format!("relayed: {}", link::SKIPPED_DIRECT));
        }
        let (stream, info) = link::establish(&self.cfg, io, ticket, true, &psk, strategy).await?;
        status(&format!(
            "link up: {} to service {:?}, remote {}, {} ms after the request",
            info.path,
            self.svc.name,
            info.remote,
            started.elapsed().as_millis()
        ));
        let listed = Arc::new(crate::status::book().link_up("connect", &self.svc.name, &info));
        let stream = common::count::Counted::new(stream, listed.bytes());
        let (mux, _inbound) = Mux::start(stream, Role::Client, self.mux_config());
        if info.path == Path::Relayed && !self.svc.relay_only {
            let proving = if mode == PunchMode::Relay {
                Proving::later(true, nonce)
            } else {
                Proving::proved()
            };
            tokio::spawn(self.clone().upgrade(ticket, proving, rx, tx));
        }
        *cur = Some(Current {
            mux: mux.clone(),
            info,
            ticket,
            listed,
        });
        Ok(mux)
    }

    #[allow(clippy::type_complexity)]
    async fn pair(
        &self,
        relay_first: bool,
    ) -> Result<(u64, PunchMode, [u8; 16], mpsc::Receiver<ServerMsg>), ServiceError> {
        let mut hub = self.hub.lock().await;
        // The server may be restarting: give it a moment rather than fail at once.
        hub.wait_up(SERVER_BACK_WAIT).await.map_err(|why| {
            ServiceError::Refused(format!(
                "rendezvous server unreachable for {SERVER_BACK_WAIT:?}: {why}"
            ))
        })?;
        // Stale events from an earlier request or connection are of no use now.
        while let Ok(ev) = hub.events.try_recv() {
            if let HubEvent::Fatal(e) = ev {
                return Err(e.into());
            }
        }
        hub.tx
            .send(ClientMsg::Connect {
                name: self.svc.name.clone(),
                relay_first,
            })
            .await
            .map_err(|_| ServiceError::Refused("not connected to the rendezvous server".into()))?;
        let deadline = Instant::now() + PAIR_TIMEOUT;
        loop {
            let ev = tokio::time::timeout_at(deadline, hub.events.recv())
                .await
                .map_err(|_| {
                    ServiceError::Refused(format!(
                        "no answer from the rendezvous server within {PAIR_TIMEOUT:?}"
                    ))
                })?;
            match ev {
                Some(HubEvent::Msg(ServerMsg::Paired {
                    session,
                    mode,
                    nonce,
                    ..
                })) => return Ok((session, mode, nonce, hub.route(session))),
                Some(HubEvent::Msg(ServerMsg::Refused(r))) => return Err(ServiceError::Refused(r)),
                Some(HubEvent::Fatal(e)) => return Err(e.into()),
                Some(HubEvent::Down(why)) => {
                    return Err(ServiceError::Refused(format!(
                        "rendezvous server unreachable: {why}"
                    )))
                }
                Some(_) => {}
                None => return Err(ServiceError::Refused("internal: hub stopped".into())),
            }
        }
    }

    /// While the link is relayed, keeps asking for direct attempts with backoff; on
    /// success, new streams use the direct link and the relayed one is closed once its
    /// streams have finished.
    async fn upgrade(
        self: Arc<Self>,
        ticket: u64,
        mut proving: Proving,
        mut rx: mpsc::Receiver<ServerMsg>,
        tx: mpsc::Sender<ClientMsg>,
    ) {
        let psk = service_psk(&self.svc.name, &self.svc.secret);
        let mut backoff = REPUNCH_FIRST_BACKOFF;
        loop {
            tokio::time::sleep(backoff).await;
            let (relayed, listed) = match self.current.lock().await.as_ref() {
                Some(c) if c.info.path == Path::Relayed && !c.mux.is_closed() => {
                    (c.mux.clone(), c.listed.clone())
                }
                _ => return,
            };
            // Measure the NAT again first: if it changed (a new network, a router
            // restarted with other settings), the server picks the punch for the NAT
            // as it is now.
            if let Some(nat) = crate::natcheck::own_nat_now(&self.cfg).await {
                let _ = tx.send(nat).await;
            }
            if tx
                .send(ClientMsg::Repunch { session: ticket })
                .await
                .is_err()
            {
                return;
            }
            let attempt = loop {
                match tokio::time::timeout(PAIR_TIMEOUT, rx.recv()).await {
                    Ok(Some(ServerMsg::Repunch { attempt, mode, .. })) => {
                        break Some((attempt, mode))
                    }
                    Ok(Some(ServerMsg::PeerGone { .. })) | Ok(None) => return,
                    Ok(Some(_)) => {}
                    Err(_) => break None,
                }
            };
            let Some((attempt, mode)) = attempt else {
                continue;
            };
            match link::direct_attempt(
                &self.cfg,
                &tx,
                &mut rx,
                ticket,
                attempt,
                Punching {
                    initiator: true,
                    mode,
                },
                &psk,
                &mut proving,
            )
            .await
            {
                Ok((stream, info)) => {
                    status(&format!(
                        "link upgraded: direct, remote {}, attempt {attempt}",
                        info.remote
                    ));
                    listed.upgraded(&info);
                    let stream = common::count::Counted::new(stream, listed.bytes());
                    let (mux, _inbound) = Mux::start(stream, Role::Client, self.mux_config());
                    *self.current.lock().await = Some(Current {
                        mux,
                        info,
                        ticket,
                        listed,
                    });
                    // Old streams finish on the relay; then it closes.
                    tokio::spawn(async move {
                        while relayed.active_streams() > 0 && !relayed.is_closed() {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        relayed.close();
                    });
                    return;
                }
                Err(link::AttemptError::Fatal(e)) => {
                    debug!(%e, "no more background attempts");
                    return;
                }
                Err(link::AttemptError::Failed(reason)) => {
                    debug!(%reason, next_in = ?backoff, "background attempt failed");
                    backoff = (backoff * 2).min(REPUNCH_MAX_BACKOFF);
                }
            }
        }
    }
}
