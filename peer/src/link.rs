//! Bringing up a link with a paired peer: probe connections and punch attempts for a
//! direct link, and the relay through the server when punching cannot work. The
//! decisions are `common::punch::Attempts`'; this module only does the I/O.

use std::{net::SocketAddr, time::Duration};

use common::{
    birthday,
    defaults::{PORTMAP_MAP_WAIT, PROBE_WAIT, PUNCH_WINDOW},
    framing::FrameError,
    net::{self, LinkIo, Prefixed},
    proto::{ClientMsg, ConnKind, Outcome, PunchMode, ServerMsg, REASON_WRONG_SECRET},
    punch::{self, Attempts, AuthError, Plan, PunchError, Step},
    secure::{NoiseStream, Psk},
};
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, info};

use crate::client::{self, ClientError, ServerConfig};

/// An authenticated, encrypted link to the other peer.
pub type LinkStream = NoiseStream<LinkIo>;

/// How a link runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// A punched TCP connection between the peers.
    Direct,
    /// Two connections spliced by the rendezvous server (end-to-end encrypted).
    Relayed,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Relayed => "relayed",
        })
    }
}

/// What is known about a link that came up.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    /// Direct or relayed.
    pub path: Path,
    /// The other peer's address (the server's, for a relayed link).
    pub remote: SocketAddr,
    /// The attempt that succeeded (0 for the relay).
    pub attempt: u8,
    /// From the punch signal (or the relay request) to the authenticated link.
    pub signal_to_link: Duration,
    /// The router's port mapping of the link's local port, held (renewed) while the
    /// link lives and deleted after.
    pub portmap: Option<std::sync::Arc<crate::portmap::Lease>>,
}

/// Why no link came up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server connection failed.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// Every direct attempt failed and the relay was not allowed.
    #[error("no direct connection could be made after {attempts} attempts ({reason}); the NATs on the way probably map each destination to a new port (symmetric NAT)")]
    NoDirect {
        /// Attempts made.
        attempts: u8,
        /// What each attempt saw.
        reason: String,
    },
    /// Both NATs map per destination, so no attempt was made, and the relay was not
    /// allowed.
    #[error("no direct connection is possible: {SKIPPED_DIRECT}, and --no-relay forbids the relay (without it the link runs through the server, still end-to-end encrypted)")]
    DirectHopeless,
    /// The relay failed too.
    #[error("no direct connection ({direct}), and the relay failed: {relay}")]
    RelayFailed {
        /// Why direct failed.
        direct: String,
        /// Why the relay failed.
        relay: String,
    },
    /// The other peer holds a different secret.
    #[error("the other peer holds a different secret: check --secret / --code on both sides")]
    WrongSecret,
    /// The other peer left.
    #[error("the other peer left: {0}")]
    PeerGone(String),
}

/// The per-session side of the control connection: requests out, this session's
/// messages in.
#[derive(Debug)]
pub struct SessionIo<'a> {
    /// Requests to the server.
    pub tx: &'a mpsc::Sender<ClientMsg>,
    /// Messages about this session.
    pub rx: &'a mut mpsc::Receiver<ServerMsg>,
}

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct Strategy {
    /// Direct attempts before giving up on direct.
    pub attempts: u8,
    /// Whether to fall back to the relay.
    pub relay: bool,
    /// How to punch, as the server said from both NATs' mappings
    /// ([`PunchMode::Relay`]: make no direct attempt).
    pub mode: PunchMode,
    /// The session nonce the secret proofs are bound to (from `Paired`/`Incoming`).
    pub nonce: [u8; 16],
}

/// Why a link skipped its direct attempts (for status lines and the server's log).
pub const SKIPPED_DIRECT: &str =
    "both NATs map per destination (symmetric); skipped the direct attempts";

/// The proof of the session's shared secret, exchanged through the server before any
/// address is (libp2p DCUtR's order: authenticate first, then exchange candidates).
/// The initiator proves first ([`Proving::start`]); the responder answers only a
/// valid proof, so a peer without the secret gets nothing it could test guesses
/// against offline; the server sends no punch signal (no address of either peer)
/// until both proofs were accepted. The exchange runs while the first attempt's
/// probe measures its RTT, so it costs no extra round trip.
#[derive(Debug)]
pub struct Proving {
    nonce: [u8; 16],
    initiator: bool,
    done: bool,
    /// Whether the initiator's proof went out.
    sent: bool,
    started: Instant,
}

impl Proving {
    /// A session whose secret is proved already (later attempts, upgrades).
    pub fn proved() -> Self {
        Proving {
            nonce: [0; 16],
            initiator: false,
            done: true,
            sent: true,
            started: Instant::now(),
        }
    }

    /// A session relayed at once (no direct attempt, so no proofs yet): the first
    /// background attempt proves the secret, as the first attempt of any other
    /// session does ([`Proving::send_if_due`]).
    pub fn later(initiator: bool, nonce: [u8; 16]) -> Self {
        Proving {
            nonce,
            initiator,
            done: false,
            sent: false,
            started: Instant::now(),
        }
    }

    /// The initiator's proof, if it has not gone out yet.
    async fn send_if_due(
        &mut self,
        tx: &mpsc::Sender<ClientMsg>,
        ticket: u64,
        psk: &Psk,
    ) -> Result<(), LinkError> {
        if self.done || self.sent || !self.initiator {
            return Ok(());
        }
        tx.send(ClientMsg::Prove {
            session: ticket,
            proof: psk.proof(&self.nonce, true),
        })
        .await
        .map_err(|_| closed())?;
        self.sent = true;
        self.started = Instant::now();
        Ok(())
    }

    /// Starts the exchange: the initiator sends its proof.
    pub async fn start(
        tx: &mpsc::Sender<ClientMsg>,
        ticket: u64,
        initiator: bool,
        psk: &Psk,
        nonce: [u8; 16],
    ) -> Result<Self, LinkError> {
        if initiator {
            tx.send(ClientMsg::Prove {
                session: ticket,
                proof: psk.proof(&nonce, true),
            })
            .await
            .map_err(|_| closed())?;
        }
        Ok(Proving {
            nonce,
            initiator,
            done: false,
            sent: initiator,
            started: Instant::now(),
        })
    }

    /// The other peer's proof arrived: check it and answer (the initiator with its
    /// verdict, the responder with its own proof, or its verdict if the proof is wrong).
    async fn on_peer_proof(
        &mut self,
        tx: &mpsc::Sender<ClientMsg>,
        ticket: u64,
        psk: &Psk,
        theirs: &[u8; 32],
    ) -> Result<(), LinkError> {
        if self.done {
            return Ok(());
        }
        let ok = psk.verify_proof(&self.nonce, !self.initiator, theirs);
        let reply = if self.initiator || !ok {
            ClientMsg::Verified {
                session: ticket,
                ok,
            }
        } else {
            ClientMsg::Prove {
                session: ticket,
                proof: psk.proof(&self.nonce, false),
            }
        };
        tx.send(reply).await.map_err(|_| closed())?;
        if !ok {
            return Err(LinkError::WrongSecret);
        }
        self.done = true;
        info!(
            ms = self.started.elapsed().as_millis() as u64,
            "shared secret proved both ways"
        );
        Ok(())
    }
}

fn closed() -> LinkError {
    LinkError::Server(ClientError::Frame(FrameError::Closed))
}

/// Brings up a link for the paired session `ticket`: the secret proofs, direct
/// attempts, then the relay. A session whose link could not be made is ended on the
/// server ([`ClientMsg::EndSession`]).
pub async fn establish(
    cfg: &ServerConfig,
    io: SessionIo<'_>,
    ticket: u64,
    initiator: bool,
    psk: &Psk,
    strategy: Strategy,
) -> Result<(LinkStream, LinkInfo), LinkError> {
    let tx = io.tx.clone();
    let result = try_establish(cfg, io, ticket, initiator, psk, strategy).await;
    if result.is_err() {
        let _ = tx.try_send(ClientMsg::EndSession { session: ticket });
    }
    result
}

async fn try_establish(
    cfg: &ServerConfig,
    io: SessionIo<'_>,
    ticket: u64,
    initiator: bool,
    psk: &Psk,
    strategy: Strategy,
) -> Result<(LinkStream, LinkInfo), LinkError> {
    let SessionIo { tx, rx } = io;
    let mut attempts = Attempts::new(strategy.attempts);
    let mut proving = Proving::proved();
    let mut step = if strategy.mode == PunchMode::Relay {
        Step::GiveUp(SKIPPED_DIRECT.into())
    } else {
        proving = Proving::start(tx, ticket, initiator, psk, strategy.nonce).await?;
        attempts.start()
    };
    let reason = loop {
        let attempt = match step {
            Step::Attempt(n) => n,
            Step::GiveUp(reason) => break reason,
            // `Done` only follows a success, which has returned already.
            Step::Done => break "internal: no link".into(),
        };
        let how = Punching {
            initiator,
            mode: strategy.mode,
        };
        match attempt_proving(cfg, tx, rx, ticket, attempt, how, psk, &mut proving).await {
            Ok(x) => return Ok(x),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Failed(reason)) => step = attempts.on_result(Err(reason)),
        }
    };
    let _ = tx
        .send(ClientMsg::Report {
            session: ticket,
            outcome: Outcome::GaveUp {
                reason: reason.clone(),
            },
        })
        .await;
    if !strategy.relay && strategy.mode == PunchMode::Relay {
        return Err(LinkError::DirectHopeless);
    }
    if !strategy.relay {
        return Err(LinkError::NoDirect {
            attempts: attempts.current(),
            reason,
        });
    }
    info!(%reason, "no direct link; relaying through the server");
    relay(cfg, ticket, initiator, psk)
        .await
        .map_err(|e| match e {
            LinkError::WrongSecret => LinkError::WrongSecret,
            e => LinkError::RelayFailed {
                direct: reason,
                relay: e.to_string(),
            },
        })
}

/// This side's part in a punch.
#[derive(Debug, Clone, Copy)]
pub struct Punching {
    /// Whether this side runs the Noise initiator.
    pub initiator: bool,
    /// Simultaneous open or a birthday punch, as the server said at pairing.
    pub mode: PunchMode,
}

/// One direct attempt (`attempt` as numbered by the peers or by the server's
/// `Repunch`), reported to the server either way; `proving` is the session's secret
/// proof exchange ([`Proving::proved`] once done, [`Proving::later`] for a session
/// that was relayed at once).
#[allow(clippy::too_many_arguments)]
pub async fn direct_attempt(
    cfg: &ServerConfig,
    tx: &mpsc::Sender<ClientMsg>,
    rx: &mut mpsc::Receiver<ServerMsg>,
    ticket: u64,
    attempt: u8,
    how: Punching,
    psk: &Psk,
    proving: &mut Proving,
) -> Result<(LinkStream, LinkInfo), AttemptError> {
    attempt_proving(cfg, tx, rx, ticket, attempt, how, psk, proving).await
}

/// [`direct_attempt`], answering the other peer's proof of the secret meanwhile.
#[allow(clippy::too_many_arguments)]
async fn attempt_proving(
    cfg: &ServerConfig,
    tx: &mpsc::Sender<ClientMsg>,
    rx: &mut mpsc::Receiver<ServerMsg>,
    ticket: u64,
    attempt: u8,
    how: Punching,
    psk: &Psk,
    proving: &mut Proving,
) -> Result<(LinkStream, LinkInfo), AttemptError> {
    let mut result = punch_once(cfg, tx, rx, ticket, attempt, how, psk, proving).await;
    if let Err(AttemptError::Failed(reason)) = &result {
        // The session may have ended because the other peer found our proof wrong (or
        // left): the server said so on the control connection, which can be a moment
        // behind the probe's refusal. That reason beats "unknown session".
        if reason.contains("unknown or finished session") {
            if let Some(fatal) = why_session_ended(rx).await {
                result = Err(AttemptError::Fatal(fatal));
            }
        }
    }
    let outcome = match &result {
        Ok((_, info)) => Outcome::Direct {
            attempt,
            millis: info.signal_to_link.as_millis().min(u32::MAX as u128) as u32,
        },
        Err(AttemptError::Failed(reason)) => {
            info!(attempt, %reason, "punch attempt failed");
            Outcome::AttemptFailed {
                attempt,
                reason: reason.clone(),
            }
        }
        Err(AttemptError::Fatal(e)) => Outcome::AttemptFailed {
            attempt,
            reason: e.to_string(),
        },
    };
    let _ = tx
        .send(ClientMsg::Report {
            session: ticket,
            outcome,
        })
        .await;
    result
}

/// How long a failed attempt waits for the server's word on why its session ended.
const SESSION_END_WAIT: Duration = Duration::from_millis(500);

/// For a session the server says is over: the `PeerGone` that says why, if one is
/// queued or arrives within [`SESSION_END_WAIT`] (other messages of the finished
/// session are dropped).
async fn why_session_ended(rx: &mut mpsc::Receiver<ServerMsg>) -> Option<LinkError> {
    let until = Instant::now() + SESSION_END_WAIT;
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(ServerMsg::PeerGone { reason, .. })) if reason == REASON_WRONG_SECRET => {
                return Some(LinkError::WrongSecret)
            }
            Ok(Some(ServerMsg::PeerGone { reason, .. })) => {
                return Some(LinkError::PeerGone(reason))
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum AttemptError {
    /// This attempt failed; another may work.
    Failed(String),
    /// No attempt can work (wrong secret, peer gone, server gone).
    Fatal(LinkError),
}

#[allow(clippy::too_many_arguments)]
async fn punch_once(
    cfg: &ServerConfig,
    tx: &mpsc::Sender<ClientMsg>,
    rx: &mut mpsc::Receiver<ServerMsg>,
    ticket: u64,
    attempt: u8,
    how: Punching,
    psk: &Psk,
    proving: &mut Proving,
) -> Result<(LinkStream, LinkInfo), AttemptError> {
    let initiator = how.initiator;
    proving
        .send_if_due(tx, ticket, psk)
        .await
        .map_err(AttemptError::Fatal)?;
    // A fresh local port per attempt: the same 4-tuple twice fails with EADDRNOTAVAIL.
    let sock = net::reusable_socket(net::any_addr(cfg.addr, 0))
        .map_err(|e| AttemptError::Failed(format!("probe socket: {e}")))?;
    let local_port = sock
        .local_addr()
        .map_err(|e| AttemptError::Failed(e.to_string()))?
        .port();
    let probe_local = probe_local_addr(cfg, local_port)
        .await
        .map_err(AttemptError::Failed)?;
    // A router port mapping of this port, if the router grants them: the other peer
    // is told the mapped address, to which anyone can connect.
    let lease = match tokio::time::timeout(PORTMAP_MAP_WAIT, cfg.portmap.map(local_port)).await {
        Ok(lease) => lease.map(std::sync::Arc::new),
        Err(_) => {
            info!(local_port, "no port mapping in time; punching without");
            None
        }
    };
    let (mut probe, _observed) = client::connect(
        cfg,
        ConnKind::Probe {
            session: ticket,
            attempt,
            local: probe_local,
            mapped: lease.as_ref().map(|l| SocketAddr::V4(l.external)),
        },
        Some(sock),
    )
    .await
    .map_err(|e| match e {
        ClientError::Refused(r) => AttemptError::Failed(format!("probe refused: {r}")),
        e => AttemptError::Failed(e.to_string()),
    })?;
    let deadline = Instant::now() + PROBE_WAIT + Duration::from_secs(2);
    let punch_msg = loop {
        tokio::select! {
            m = probe.recv::<ServerMsg>() => match m {
                Ok(ServerMsg::Ping(n)) => probe.send(&ClientMsg::Pong(n)).await.map_err(|e| AttemptError::Failed(e.to_string()))?,
                Ok(m @ ServerMsg::Punch { .. }) => break m,
                Ok(ServerMsg::Refused(r)) => return Err(AttemptError::Failed(r)),
                Ok(other) => return Err(AttemptError::Failed(format!("unexpected {other:?} on the probe"))),
                Err(e) => return Err(AttemptError::Failed(format!("probe connection: {e}"))),
            },
            m = rx.recv() => match m {
                Some(ServerMsg::PeerProof { proof, .. }) => proving
                    .on_peer_proof(tx, ticket, psk, &proof)
                    .await
                    .map_err(AttemptError::Fatal)?,
                Some(ServerMsg::PeerGone { reason, .. }) if reason == REASON_WRONG_SECRET => {
                    return Err(AttemptError::Fatal(LinkError::WrongSecret))
                }
                Some(ServerMsg::PeerGone { reason, .. }) => return Err(AttemptError::Fatal(LinkError::PeerGone(reason))),
                Some(other) => debug!(?other, "ignored while punching"),
                None => return Err(AttemptError::Fatal(LinkError::Server(ClientError::Frame(FrameError::Closed)))),
            },
            _ = tokio::time::sleep_until(deadline) => return Err(AttemptError::Failed("no punch signal from the server".into())),
        }
    };
    let signalled = Instant::now();
    let ServerMsg::Punch {
        peer_public,
        peer_local,
        own_public,
    } = punch_msg
    else {
        return Err(AttemptError::Failed("internal: not a punch".into()));
    };
    let targets = punch::targets(peer_public, peer_local, own_public, probe_local);
    // Behind one NAT the LAN address is the way: no birthday needed.
    let birthday = match how.mode {
        _ if peer_public.ip() == own_public.ip() => None,
        PunchMode::BirthdayEasy => Some(true),
        PunchMode::BirthdayHard => Some(false),
        PunchMode::Direct | PunchMode::Relay => None,
    };
    let result = match birthday {
        Some(easy) => {
            info!(attempt, %peer_public, %own_public, side = if easy { "easy" } else { "hard" }, "punching (birthday)");
            let plan = birthday::Plan {
                local_port,
                peer_public,
                initiator,
                psk: psk.clone(),
            };
            if easy {
                birthday::easy(&plan).await
            } else {
                birthday::hard(&plan).await
            }
        }
        None => {
            info!(attempt, ?targets, %own_public, "punching");
            let plan = Plan {
                local_port,
                targets,
                window: PUNCH_WINDOW,
                initiator,
                psk: psk.clone(),
            };
            punch::punch(&plan).await
        }
    };
    // The probe kept our NAT mapping alive while punching; the link holds it now.
    let _ = tokio::time::timeout(Duration::from_millis(500), probe.close()).await;
    match result {
        Ok(link) => {
            let info = LinkInfo {
                path: Path::Direct,
                remote: link.remote,
                attempt,
                signal_to_link: signalled.elapsed(),
                portmap: lease,
            };
            Ok((link.stream, info))
        }
        Err(PunchError::WrongSecret) => Err(AttemptError::Fatal(LinkError::WrongSecret)),
        Err(e) => Err(AttemptError::Failed(e.to_string())),
    }
}

/// Brings up the relayed link of session `ticket`: a relay connection to the server,
/// spliced to the other peer's, with the link's own Noise handshake inside.
pub async fn relay(
    cfg: &ServerConfig,
    ticket: u64,
    initiator: bool,
    psk: &Psk,
) -> Result<(LinkStream, LinkInfo), LinkError> {
    let started = Instant::now();
    let (mut ch, _) = client::connect(cfg, ConnKind::Relay { session: ticket }, None).await?;
    match ch
        .recv_timeout::<ServerMsg>(PROBE_WAIT + Duration::from_secs(2))
        .await
    {
        Ok(ServerMsg::RelayReady) => {}
        Ok(ServerMsg::Refused(r)) => return Err(ClientError::Refused(r).into()),
        Ok(other) => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
        Err(e) => return Err(ClientError::Frame(e).into()),
    }
    // What was read past the last frame comes first, then what the Noise layer had
    // read but not decrypted: both are the start of the raw stream.
    let (noise, mut rest) = ch.into_parts();
    let (tcp, undecrypted) = noise
        .into_raw()
        .map_err(|e| ClientError::Frame(FrameError::Io(e)))?;
    rest.unsplit(undecrypted);
    let _ = net::set_link_options(&tcp);
    let remote = cfg.addr;
    let stream = punch::authenticate(Prefixed::new(tcp, rest), initiator, psk)
        .await
        .map_err(|e| match e {
            AuthError::WrongSecret => LinkError::WrongSecret,
            AuthError::Failed(r) => LinkError::RelayFailed {
                direct: String::new(),
                relay: r,
            },
        })?;
    Ok((
        stream,
        LinkInfo {
            path: Path::Relayed,
            remote,
            attempt: 0,
            signal_to_link: started.elapsed(),
            portmap: None,
        },
    ))
}

/// The local address a connection from `port` to the server uses (the LAN address
/// behind a NAT), found with a connected UDP socket: no packet is sent.
async fn probe_local_addr(cfg: &ServerConfig, port: u16) -> Result<SocketAddr, String> {
    let udp = tokio::net::UdpSocket::bind(net::any_addr(cfg.addr, 0))
        .await
        .map_err(|e| e.to_string())?;
    udp.connect(cfg.addr)
        .await
        .map_err(|e| format!("no route to the server: {e}"))?;
    let ip = udp.local_addr().map_err(|e| e.to_string())?.ip();
    Ok(SocketAddr::new(ip, port))
}
