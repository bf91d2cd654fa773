//! Simultaneous open: turning two NAT mappings into one direct, authenticated TCP link.
//!
//! The decisions live in [`Attempts`], a state machine that does no I/O: it is fed the
//! outcome of each attempt and says what to do next. [`punch`] is the thin I/O of one
//! attempt: from the probe's local port (shared by `SO_REUSEADDR` + `SO_REUSEPORT`) it
//! listens and dials every target at once, redials at once on a refused connect (a NAT
//! that answers an early SYN with RST or ICMP), and takes the first connection on which
//! the Noise handshake completes. Roles are fixed by the server's rule (the initiator
//! runs the Noise initiator side), never by who connected: a simultaneous open has no
//! "connector".

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, trace};

use crate::{
    defaults::{LINK_HANDSHAKE_TIMEOUT, PUNCH_ATTEMPTS},
    net,
    secure::{self, NoiseStream, Psk},
};

/// Sent by the initiator as its first encrypted bytes, so that the responder knows the
/// initiator finished the handshake on this very connection.
const CONFIRM: &[u8; 8] = b"PL-LINK1";

/// What the caller should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Open a probe and run attempt `n`.
    Attempt(u8),
    /// A direct link is up.
    Done,
    /// Stop trying: no direct link is possible now.
    GiveUp(String),
}

/// The attempt counter of one link: at most [`PUNCH_ATTEMPTS`] attempts.
#[derive(Debug, Clone)]
pub struct Attempts {
    current: u8,
    max: u8,
    failures: Vec<String>,
}

impl Default for Attempts {
    fn default() -> Self {
        Self::new(PUNCH_ATTEMPTS)
    }
}

impl Attempts {
    /// A fresh counter allowing `max` attempts.
    pub fn new(max: u8) -> Self {
        Self {
            current: 0,
            max: max.max(1),
            failures: Vec::new(),
        }
    }

    /// The first step.
    pub fn start(&mut self) -> Step {
        self.current = 1;
        Step::Attempt(1)
    }

    /// Feeds the outcome of the current attempt.
    pub fn on_result(&mut self, result: Result<(), String>) -> Step {
        match result {
            Ok(()) => Step::Done,
            Err(reason) => {
                self.failures
                    .push(format!("attempt {}: {reason}", self.current));
                if self.current >= self.max {
                    Step::GiveUp(self.failures.join("; "))
                } else {
                    self.current += 1;
                    Step::Attempt(self.current)
                }
            }
        }
    }

    /// The attempt in progress.
    pub fn current(&self) -> u8 {
        self.current
    }
}

/// The addresses to dial: the peer's public mapping, and its local address too when
/// both peers share a public IP (behind one NAT, where hairpinning may not work) and
/// that address is a LAN one: private, shared (CGNAT) or link-local, never loopback,
/// unspecified, multicast, or this machine's own (`own_local`). The other peer names
/// its local address itself, so without this rule it could make this peer dial any
/// address of its LAN, or its own loopback services.
pub fn targets(
    peer_public: SocketAddr,
    peer_local: SocketAddr,
    own_public: SocketAddr,
    own_local: SocketAddr,
) -> Vec<SocketAddr> {
    let mut t = Vec::with_capacity(2);
    if peer_public.ip() == own_public.ip()
        && peer_local != peer_public
        && is_lan_candidate(peer_local.ip(), own_local.ip())
    {
        t.push(peer_local);
    }
    t.push(peer_public);
    t
}

/// Whether `ip` may be dialed as another peer's LAN address (see [`targets`]).
pub fn is_lan_candidate(ip: std::net::IpAddr, own: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    if ip.to_canonical() == own.to_canonical() || unusable(ip) {
        return false;
    }
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                // 100.64.0.0/10, shared address space behind carrier-grade NATs.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            // fc00::/7 unique local, fe80::/10 link-local.
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

/// Loopback, unspecified, multicast or broadcast: never another machine.
fn unusable(ip: std::net::IpAddr) -> bool {
    let c = ip.to_canonical();
    c.is_loopback()
        || c.is_unspecified()
        || c.is_multicast()
        || matches!(c, std::net::IpAddr::V4(v4) if v4.is_broadcast())
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    /// The local port could not be reused.
    #[error("cannot listen on local port {port}: {err}")]
    Listen {
        /// The port.
        port: u16,
        /// What the OS said.
        err: io::Error,
    },
    /// A connection was made, but the other peer holds a different secret.
    #[error("the other peer holds a different secret (wrong --secret or --code)")]
    WrongSecret,
    /// No connection authenticated before the deadline.
    #[error("no direct connection within {window:?} ({detail})")]
    Timeout {
        /// The window.
        window: Duration,
        /// What was seen.
        detail: String,
    },
}

/// One punch attempt.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The local port: the probe connection's port, whose NAT mapping the server saw.
    pub local_port: u16,
    /// Where to dial (see [`targets`]).
    pub targets: Vec<SocketAddr>,
    /// How long to keep dialing and listening.
    pub window: Duration,
    /// Whether this side runs the Noise initiator.
    pub initiator: bool,
    /// The link's PSK.
    pub psk: Psk,
}

/// A punched, authenticated link.
#[derive(Debug)]
pub struct Link {
    /// The encrypted stream.
    pub stream: NoiseStream<net::LinkIo>,
    /// The other side's address as this side sees it.
    pub remote: SocketAddr,
}

#[derive(Default)]
pub(crate) struct Seen {
    refused: u32,
    other_errors: Vec<String>,
    handshakes_failed: Vec<String>,
}

impl Seen {
    fn summary(&self) -> String {
        let mut parts = vec![format!("{} connects refused", self.refused)];
        if let Some(e) = self.other_errors.last() {
            parts.push(format!("last dial error: {e}"));
        }
        if let Some(e) = self.handshakes_failed.last() {
            parts.push(format!("handshake: {e}"));
        }
        parts.join(", ")
    }
}

/// What a dialer reports to [`first_link`].
pub(crate) enum Event {
    /// A connection is up (not yet authenticated).
    Connected(TcpStream, SocketAddr),
    /// A connect was refused (RST or ICMP).
    Refused,
    /// Any other dial failure.
    DialError(String),
}

async fn dial_loop(local: SocketAddr, target: SocketAddr, until: Instant, tx: mpsc::Sender<Event>) {
    while Instant::now() < until {
        let sock = match net::reusable_socket(local) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx
                    .send(Event::DialError(format!("bind {local}: {e}")))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match tokio::time::timeout_at(until, sock.connect(target)).await {
            Err(_) => return,
            Ok(Ok(stream)) => {
                let _ = tx.send(Event::Connected(stream, target)).await;
                return;
            }
            Ok(Err(e)) => {
                trace!(%target, %e, "dial failed; redialing");
                let refused = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                );
                let ev = if refused {
                    Event::Refused
                } else {
                    Event::DialError(e.to_string())
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
                // A refused connect means the far NAT has not opened yet: redial at
                // once (NATLAB: 10/10 with immediate redial, 0/20 without). The short
                // pause only keeps a loopback RST storm from spinning a core.
                let pause = if refused { 2 } else { 20 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

/// Why a link could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The other peer holds a different secret.
    #[error("the other peer holds a different secret (wrong --secret or --code)")]
    WrongSecret,
    /// Anything else: timeouts, closed connections.
    #[error("{0}")]
    Failed(String),
}

/// The refusal the responder sends to an initiator with a different secret.
const WRONG_SECRET: &str = "wrong link secret";

/// Runs the link's Noise handshake over `io` (a punched connection or a relayed one)
/// and the initiator's confirmation, within [`LINK_HANDSHAKE_TIMEOUT`].
pub async fn authenticate<T>(io: T, initiator: bool, psk: &Psk) -> Result<NoiseStream<T>, AuthError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let fail = |e: std::io::Error| AuthError::Failed(e.to_string());
    let fut = async move {
        if initiator {
            let mut s = secure::initiate(io, psk).await.map_err(|e| match e {
                secure::HandshakeError::Refused(r) if r == WRONG_SECRET => AuthError::WrongSecret,
                secure::HandshakeError::BadSecret => AuthError::WrongSecret,
                e => AuthError::Failed(e.to_string()),
            })?;
            s.write_all(CONFIRM).await.map_err(fail)?;
            s.flush().await.map_err(fail)?;
            Ok(s)
        } else {
            let mut s = secure::respond(io, psk, WRONG_SECRET)
                .await
                .map_err(|e| match e {
                    secure::HandshakeError::BadSecret => AuthError::WrongSecret,
                    e => AuthError::Failed(e.to_string()),
                })?;
            let mut buf = [0u8; 8];
            s.read_exact(&mut buf).await.map_err(fail)?;
            if &buf != CONFIRM {
                return Err(AuthError::Failed("bad link confirmation".into()));
            }
            Ok(s)
        }
    };
    tokio::time::timeout(LINK_HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| AuthError::Failed("handshake timed out".into()))?
}

async fn handshake(
    stream: TcpStream,
    initiator: bool,
    psk: Psk,
) -> Result<NoiseStream<net::LinkIo>, AuthError> {
    let _ = net::set_link_options(&stream);
    authenticate(net::Prefixed::plain(stream), initiator, &psk).await
}

/// Runs one attempt (see the module docs).
pub async fn punch(plan: &Plan) -> Result<Link, PunchError> {
    let start = Instant::now();
    let until = start + plan.window;
    let family = plan
        .targets
        .first()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let local = net::any_addr(family, plan.local_port);
    let listener = net::reusable_socket(local)
        .and_then(|s| s.listen(16))
        .map_err(|err| PunchError::Listen {
            port: plan.local_port,
            err,
        })?;

    let (tx, rx) = mpsc::channel::<Event>(64);
    let mut dialers = JoinSet::new();
    for &target in &plan.targets {
        dialers.spawn(dial_loop(local, target, until, tx.clone()));
    }
    drop(tx);
    first_link(
        rx,
        Some(listener),
        plan.initiator,
        &plan.psk,
        until,
        plan.window,
    )
    .await
}

async fn accept_on(l: Option<&tokio::net::TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Takes connections from the dialers (`rx`, until every sender is gone) and from
/// `listener` (until `until`), runs the link's Noise handshake on them, and returns
/// the first that authenticates. The initiator runs one handshake at a time, so that
/// the responder can never complete on a different connection than the initiator;
/// the responder answers on any. Everything else is dropped (closed) on return.
pub(crate) async fn first_link(
    mut rx: mpsc::Receiver<Event>,
    listener: Option<tokio::net::TcpListener>,
    initiator: bool,
    psk: &Psk,
    until: Instant,
    window: Duration,
) -> Result<Link, PunchError> {
    let mut seen = Seen::default();
    let mut pending: Vec<(TcpStream, SocketAddr)> = Vec::new();
    let mut handshakes: JoinSet<(Result<NoiseStream<net::LinkIo>, AuthError>, SocketAddr)> =
        JoinSet::new();
    let hard_deadline = until + LINK_HANDSHAKE_TIMEOUT;
    let mut accepting = listener.is_some();
    let mut dialing = true;
    loop {
        if initiator && handshakes.is_empty() {
            if let Some((s, peer)) = pending.pop() {
                let psk = psk.clone();
                handshakes.spawn(async move { (handshake(s, true, psk).await, peer) });
            }
        }
        if !dialing && !accepting && handshakes.is_empty() && pending.is_empty() {
            break;
        }
        tokio::select! {
            ev = rx.recv(), if dialing => match ev {
                Some(Event::Connected(s, peer)) => {
                    debug!(%peer, "connected (dial)");
                    if initiator { pending.insert(0, (s, peer)); } else {
                        let psk = psk.clone();
                        handshakes.spawn(async move { (handshake(s, false, psk).await, peer) });
                    }
                }
                Some(Event::Refused) => seen.refused += 1,
                Some(Event::DialError(e)) => seen.other_errors.push(e),
                None => dialing = false,
            },
            acc = accept_on(listener.as_ref()), if accepting => match acc {
                Ok((s, peer)) => {
                    debug!(%peer, "connected (accept)");
                    if initiator { pending.insert(0, (s, peer)); } else {
                        let psk = psk.clone();
                        handshakes.spawn(async move { (handshake(s, false, psk).await, peer) });
                    }
                }
                Err(e) => seen.other_errors.push(format!("accept: {e}")),
            },
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                Ok((Ok(stream), remote)) => return Ok(Link { stream, remote }),
                Ok((Err(AuthError::WrongSecret), _)) => return Err(PunchError::WrongSecret),
                Ok((Err(e), remote)) => { debug!(%remote, %e, "handshake failed"); seen.handshakes_failed.push(format!("{remote}: {e}")); }
                Err(e) => seen.handshakes_failed.push(e.to_string()),
            },
            _ = tokio::time::sleep_until(until), if accepting => { accepting = false; }
            _ = tokio::time::sleep_until(hard_deadline) => break,
        }
    }
    Err(PunchError::Timeout {
        window,
        detail: seen.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_bounded() {
        let mut a = Attempts::new(3);
        assert_eq!(a.start(), Step::Attempt(1));
        assert_eq!(a.on_result(Err("x".into())), Step::Attempt(2));
        assert_eq!(a.on_result(Err("y".into())), Step::Attempt(3));
        match a.on_result(Err("z".into())) {
            Step::GiveUp(r) => assert_eq!(r, "attempt 1: x; attempt 2: y; attempt 3: z"),
            s => panic!("{s:?}"),
        }
        let mut b = Attempts::new(3);
        b.start();
        assert_eq!(b.on_result(Ok(())), Step::Done);
    }

    #[test]
    fn lan_targets_only_behind_one_nat() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let me = a("10.0.1.2:7000");
        assert_eq!(
            targets(
                a("203.0.113.21:5000"),
                a("10.0.1.3:5000"),
                a("203.0.113.21:6000"),
                me
            ),
            vec![a("10.0.1.3:5000"), a("203.0.113.21:5000")]
        );
        assert_eq!(
            targets(
                a("203.0.113.22:5000"),
                a("10.0.2.2:5000"),
                a("203.0.113.21:6000"),
                me
            ),
            vec![a("203.0.113.22:5000")]
        );
        assert_eq!(
            targets(a("127.0.0.1:5"), a("127.0.0.1:5"), a("127.0.0.1:6"), me),
            vec![a("127.0.0.1:5")]
        );
    }

    #[test]
    fn a_peer_cannot_make_us_dial_loopback_or_ourselves() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let me = a("10.0.1.2:7000");
        let public = a("203.0.113.21:5000");
        let own_public = a("203.0.113.21:6000");
        for bad in [
            "127.0.0.1:6379",
            "[::1]:22",
            "0.0.0.0:80",
            "10.0.1.2:22",
            "203.0.113.99:80",
            "8.8.8.8:53",
            "224.0.0.1:5",
            "[::ffff:127.0.0.1]:6379",
        ] {
            assert_eq!(
                targets(public, a(bad), own_public, me),
                vec![public],
                "{bad}"
            );
        }
        for good in [
            "192.168.1.20:5",
            "172.16.0.9:5",
            "100.64.3.4:5",
            "169.254.1.1:5",
            "[fd00::5]:5",
            "[fe80::1]:5",
        ] {
            assert_eq!(
                targets(public, a(good), own_public, me),
                vec![a(good), public],
                "{good}"
            );
        }
    }

    #[tokio::test]
    async fn loopback_simultaneous_open_and_wrong_secret() {
        for (secret_b, ok) in [("s", true), ("other", false)] {
            let pa = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let pb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let (a, b) = (pa.local_addr().unwrap(), pb.local_addr().unwrap());
            drop((pa, pb));
            let plan = |port, target, initiator, secret: &str| Plan {
                local_port: port,
                targets: vec![target],
                window: Duration::from_millis(800),
                initiator,
                psk: Psk::derive("link", &[secret]),
            };
            let pa = plan(a.port(), b, true, "s");
            let pb = plan(b.port(), a, false, secret_b);
            let (ra, rb) = tokio::join!(punch(&pa), punch(&pb));
            assert_eq!(ra.is_ok() && rb.is_ok(), ok, "{ra:?} {rb:?}");
        }
    }
}
