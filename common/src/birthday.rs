//! The birthday punch: a direct TCP link between a NAT that keeps one public port for
//! every destination (the *easy* side: port-restricted or full cone) and one that maps
//! each destination to a new port (the *hard* side: symmetric).
//!
//! The server's view of the hard side's probe says only its public IP: the port the
//! easy side would have to reach is new for every destination. So both sides make
//! many tries at once and count on a collision (the birthday paradox):
//!
//! * the hard side opens [`BIRTHDAY_SOCKETS`] sockets toward the easy side's mapped
//!   endpoint, each getting a fresh public port from its NAT. Their first SYNs leave
//!   with an IP TTL of [`BIRTHDAY_TTL`]: enough to create the mappings in the hard
//!   side's own NAT, too little to reach the easy side's NAT, which would refuse them
//!   (RST or ICMP) and so close the mappings again. The TTL goes back to normal at
//!   once, for the SYN-ACK and the retransmission;
//! * the easy side, from its one mapped port (`SO_REUSEADDR` + `SO_REUSEPORT`: many
//!   connects share it, the 4-tuples differ), sends [`BIRTHDAY_SPRAY`] SYNs to ports of
//!   the hard side's public IP, paced over [`BIRTHDAY_SPRAY_TIME`], and listens on the
//!   same port. The first [`BIRTHDAY_PREDICT`] ports are the ones just above the port
//!   the server saw (a NAT that allocates in sequence hands those out next); the rest
//!   are random.
//!
//! A SYN of the easy side that hits one of the hard side's new ports meets a socket in
//! `SYN_SENT` toward the very address it comes from: a simultaneous open. A later
//! crossing (the hard side's retransmitted SYN through a port the easy side's NAT
//! opened) ends at the easy side's listener. The Noise handshake decides the winner
//! as in every punch ([`crate::punch`]); every loser is closed, and the attempt's
//! cost is bounded: sockets and SYNs by the counts above (each easy socket lives
//! [`BIRTHDAY_PROBE_LIFETIME`], less than one retransmission), time by
//! [`BIRTHDAY_WINDOW`].
//!
//! [`Spray`] (which ports, when) does no I/O; [`easy`] and [`hard`] are the I/O.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::TcpStream, sync::mpsc, task::JoinSet, time::Instant};
use tracing::{debug, info};

use crate::{
    defaults::{
        BIRTHDAY_PREDICT, BIRTHDAY_PROBE_LIFETIME, BIRTHDAY_SOCKETS, BIRTHDAY_SPRAY,
        BIRTHDAY_SPRAY_DELAY, BIRTHDAY_SPRAY_TIME, BIRTHDAY_TTL, BIRTHDAY_WINDOW,
    },
    net,
    punch::{first_link, Event, Link, PunchError},
    secure::Psk,
};

/// The lowest port a NAT hands out for a connection from an unprivileged port (Linux:
/// 1024–65535).
const LOWEST_NAT_PORT: u16 = 1024;

/// Batches per spray: one every few milliseconds.
const SPRAY_BATCHES: u32 = 80;

/// The easy side's plan: which ports of the hard side's IP to send SYNs to, and how
/// many should be out by a given time. No I/O.
#[derive(Debug, Clone)]
pub struct Spray {
    ports: Vec<u16>,
    sent: usize,
    duration: Duration,
}

impl Spray {
    /// `count` distinct ports: first the `predict` ports just above `last_seen` (the
    /// hard side's port as the server saw it), then random ones from the NAT range.
    pub fn new(last_seen: u16, count: usize, predict: usize, duration: Duration) -> Spray {
        Spray::with_rng(last_seen, count, predict, duration, &mut rand::rng())
    }

    /// [`Spray::new`] with a given random source (tests).
    pub fn with_rng(
        last_seen: u16,
        count: usize,
        predict: usize,
        duration: Duration,
        rng: &mut impl rand::Rng,
    ) -> Spray {
        let range = usize::from(u16::MAX - LOWEST_NAT_PORT) + 1;
        let count = count.min(range);
        let mut seen = HashSet::with_capacity(count);
        let mut ports = Vec::with_capacity(count);
        let mut p = last_seen;
        for _ in 0..predict.min(count) {
            p = if p == u16::MAX {
                LOWEST_NAT_PORT
            } else {
                p.saturating_add(1).max(LOWEST_NAT_PORT)
            };
            if seen.insert(p) {
                ports.push(p);
            }
        }
        while ports.len() < count {
            let p = rng.random_range(LOWEST_NAT_PORT..=u16::MAX);
            if seen.insert(p) {
                ports.push(p);
            }
        }
        Spray {
            ports,
            sent: 0,
            duration,
        }
    }

    /// The ports to send to now, `elapsed` after the spray started: the next batch of
    /// the even pace, or nothing. Empty forever once all are out.
    pub fn due(&mut self, elapsed: Duration) -> &[u16] {
        let total = self.ports.len();
        let frac = if self.duration.is_zero() {
            1.0
        } else {
            (elapsed.as_secs_f64() / self.duration.as_secs_f64()).min(1.0)
        };
        let want = ((total as f64 * frac).ceil() as usize).min(total);
        let from = self.sent;
        self.sent = want.max(from);
        &self.ports[from..self.sent]
    }

    /// Whether every port has been handed out.
    pub fn done(&self) -> bool {
        self.sent == self.ports.len()
    }

    /// All the ports, in order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

/// One birthday attempt.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The easy side: the probe's local port (mapped to the same public port for every
    /// destination). The hard side: unused.
    pub local_port: u16,
    /// The other side's public address from the server's punch signal: for the easy
    /// side, the hard side's IP and its last seen port; for the hard side, the easy
    /// side's mapped endpoint.
    pub peer_public: SocketAddr,
    /// Whether this side runs the Noise initiator.
    pub initiator: bool,
    /// The link's PSK.
    pub psk: Psk,
}

/// The easy side (see the module docs).
pub async fn easy(plan: &Plan) -> Result<Link, PunchError> {
    let start = Instant::now();
    let until = start + BIRTHDAY_WINDOW;
    let local = net::any_addr(plan.peer_public, plan.local_port);
    let backlog = u32::try_from(BIRTHDAY_SOCKETS).unwrap_or(u32::MAX);
    let listener = net::reusable_socket(local)
        .and_then(|s| s.listen(backlog))
        .map_err(|err| PunchError::Listen {
            port: plan.local_port,
            err,
        })?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    let spray = Spray::new(
        plan.peer_public.port(),
        BIRTHDAY_SPRAY,
        BIRTHDAY_PREDICT,
        BIRTHDAY_SPRAY_TIME,
    );
    let mut tasks = JoinSet::new();
    tasks.spawn(run_spray(local, plan.peer_public.ip(), spray, tx, start));
    let result = first_link(
        rx,
        Some(listener),
        plan.initiator,
        &plan.psk,
        until,
        BIRTHDAY_WINDOW,
    )
    .await;
    // Dropping the task closes every socket still trying.
    tasks.abort_all();
    result
}

async fn run_spray(
    local: SocketAddr,
    ip: IpAddr,
    mut spray: Spray,
    tx: mpsc::Sender<Event>,
    start: Instant,
) {
    let begin = start + BIRTHDAY_SPRAY_DELAY;
    tokio::time::sleep_until(begin).await;
    let step = BIRTHDAY_SPRAY_TIME / SPRAY_BATCHES;
    let mut probes = JoinSet::new();
    let mut sockets = 0usize;
    // Set when a SYN of ours completed a connection: the rest of the spray is not
    // needed (the listener still takes crossings that complete later).
    let hit = Arc::new(AtomicBool::new(false));
    loop {
        if hit.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        for &port in spray.due(now - begin) {
            let target = SocketAddr::new(ip, port);
            // This SYN's place in the spray: the first BIRTHDAY_PREDICT are predicted.
            let nth = sockets;
            // The SYN leaves here, in the spray's order and on its pace, not when
            // the runtime first polls a task of its own (on a loaded machine, or
            // with one worker, that came late and newest first).
            let stream = match syn_from(local, target) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.try_send(Event::DialError(format!("connect from {local}: {e}")));
                    continue;
                }
            };
            sockets += 1;
            let (tx, hit) = (tx.clone(), hit.clone());
            probes.spawn(async move {
                match tokio::time::timeout(BIRTHDAY_PROBE_LIFETIME, connected(&stream)).await {
                    Ok(Ok(())) => {
                        if !hit.swap(true, Ordering::Relaxed) {
                            info!(
                                %target,
                                nth,
                                predicted = nth < BIRTHDAY_PREDICT,
                                "birthday punch: a SYN of the spray hit"
                            );
                        }
                        let _ = tx.send(Event::Connected(stream, target)).await;
                    }
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        let _ = tx.try_send(Event::Refused);
                    }
                    Ok(Err(e)) => debug!(%target, %e, "birthday SYN failed"),
                    // No answer within its lifetime: closed before it retransmits.
                    Err(_) => {}
                }
            });
        }
        while probes.try_join_next().is_some() {}
        if spray.done() {
            break;
        }
        tokio::time::sleep(step).await;
    }
    info!(
        sockets,
        ms = begin.elapsed().as_millis() as u64,
        hit = hit.load(Ordering::Relaxed),
        "birthday punch: SYNs sent"
    );
    // Keep the last probes until their lifetime ends; `tx` goes with them.
    while probes.join_next().await.is_some() {}
}

/// A socket bound to `local` (shared with the easy side's other sockets and its
/// listener) whose non-blocking connect to `target` is under way: its SYN has left
/// when this returns.
fn syn_from(local: SocketAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = nonblocking_socket(target)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&local.into())?;
    start_connect(&sock, target)?;
    TcpStream::from_std(sock.into())
}

/// A non-blocking TCP socket of `target`'s family.
fn nonblocking_socket(target: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Starts a non-blocking connect: the SYN has left when this returns.
fn start_connect(sock: &Socket, target: SocketAddr) -> std::io::Result<()> {
    match sock.connect(&target.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits until a connect under way completes: `Ok` once connected, the error (a
/// refusal, say) if it failed.
async fn connected(stream: &TcpStream) -> std::io::Result<()> {
    stream.writable().await?;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => stream.peer_addr().map(|_| ()),
    }
}

/// The hard side (see the module docs).
pub async fn hard(plan: &Plan) -> Result<Link, PunchError> {
    let start = Instant::now();
    let until = start + BIRTHDAY_WINDOW;
    let target = plan.peer_public;
    let (tx, rx) = mpsc::channel::<Event>(64);
    let mut tasks = JoinSet::new();
    let mut opened = 0usize;
    let mut errors = Vec::new();
    let normal_ttl = default_ttl(target);
    for _ in 0..BIRTHDAY_SOCKETS {
        let sock = match low_ttl_connect(target, normal_ttl) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let std: std::net::TcpStream = sock.into();
        let stream = match TcpStream::from_std(std) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        opened += 1;
        let tx = tx.clone();
        tasks.spawn(async move {
            match tokio::time::timeout_at(until, connected(&stream)).await {
                Ok(Ok(())) => {
                    let _ = tx.send(Event::Connected(stream, target)).await;
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    let _ = tx.try_send(Event::Refused);
                }
                Ok(Err(e)) => debug!(%e, "birthday socket failed"),
                Err(_) => {}
            }
        });
    }
    drop(tx);
    if let Some(e) = errors.first() {
        debug!(count = errors.len(), first = %e, "birthday sockets that could not be opened");
    }
    info!(
        sockets = opened,
        ttl = BIRTHDAY_TTL,
        "birthday punch: sockets opened"
    );
    let result = first_link(rx, None, plan.initiator, &plan.psk, until, BIRTHDAY_WINDOW).await;
    tasks.abort_all();
    result
}

/// A non-blocking socket whose connect to `target` is under way, its SYN sent with
/// TTL [`BIRTHDAY_TTL`], its TTL back at `normal` (for the SYN-ACK of a crossing and
/// the retransmission). The SYN leaves inside `connect()`, so the TTL can go back at
/// once: a crossing SYN arriving a moment later gets its SYN-ACK through.
fn low_ttl_connect(target: SocketAddr, normal: u32) -> std::io::Result<Socket> {
    let sock = nonblocking_socket(target)?;
    if target.is_ipv4() {
        sock.set_ttl_v4(BIRTHDAY_TTL)?;
    } else {
        sock.set_unicast_hops_v6(BIRTHDAY_TTL)?;
    }
    start_connect(&sock, target)?;
    if target.is_ipv4() {
        sock.set_ttl_v4(normal)?;
    } else {
        sock.set_unicast_hops_v6(normal)?;
    }
    Ok(sock)
}

/// The system's TTL (hop limit) for new sockets: what a socket has before anyone
/// changes it.
fn default_ttl(target: SocketAddr) -> u32 {
    Socket::new(Domain::for_address(target), Type::STREAM, None)
        .and_then(|s| {
            if target.is_ipv4() {
                s.ttl_v4()
            } else {
                s.unicast_hops_v6()
            }
        })
        .unwrap_or(64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn spray_predicts_then_guesses_without_repeats() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let s = Spray::with_rng(40000, 2048, 320, Duration::from_millis(400), &mut rng);
        let p = s.ports();
        assert_eq!(p.len(), 2048);
        assert_eq!(&p[..3], &[40001, 40002, 40003]);
        assert_eq!(p[319], 40320);
        let distinct: HashSet<_> = p.iter().collect();
        assert_eq!(distinct.len(), 2048);
        assert!(p.iter().all(|&x| x >= LOWEST_NAT_PORT));
        // Prediction wraps into the NAT range, never below it.
        let s = Spray::with_rng(65534, 4, 4, Duration::ZERO, &mut rng);
        assert_eq!(&s.ports()[..3], &[65535, 1024, 1025]);
    }

    #[test]
    fn spray_is_paced_and_bounded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut s = Spray::with_rng(5000, 1000, 0, Duration::from_millis(400), &mut rng);
        assert_eq!(s.due(Duration::ZERO).len(), 0);
        assert_eq!(s.due(Duration::from_millis(100)).len(), 250);
        // Asking again at the same time gives nothing new.
        assert_eq!(s.due(Duration::from_millis(100)).len(), 0);
        assert_eq!(s.due(Duration::from_millis(200)).len(), 250);
        assert!(!s.done());
        assert_eq!(s.due(Duration::from_secs(9)).len(), 500);
        assert!(s.done());
        assert_eq!(s.due(Duration::from_secs(10)).len(), 0);
    }
}
