//! The relay: when two peers cannot punch through their NATs, each opens a relay
//! connection for their session and the server splices the two, raw.
//!
//! Both halves are authenticated like every server connection (Noise with the token's
//! PSK, then `Hello`); once both are here the server says `RelayReady` on each and
//! leaves the Noise channel: from then on it copies bytes. The peers run the link's own
//! Noise handshake inside (the PSK comes from a secret the server never learns), so the
//! server relays ciphertext it cannot read or forge, and pays no second encryption.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use bytes::BytesMut;
use common::{
    defaults::{MAX_RELAYS, PROBE_WAIT},
    framing::{Channel, FrameError},
    proto::{ClientMsg, ServerMsg},
    secure::NoiseStream,
};
use tokio::{
    io::{AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::oneshot,
};
use tracing::info;

use crate::metrics::RelayGuard;

type Chan = Channel<NoiseStream<TcpStream>>;

/// Relay halves waiting for their partner, by session.
#[derive(Default)]
pub(crate) struct Relays {
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// Relays being spliced right now.
    active: AtomicUsize,
    /// Numbers the halves, so that a half that gives up removes only its own entry.
    next_half: AtomicU64,
}

/// A half waiting for its partner.
struct Waiting {
    /// Which side of the session sent it (0: the owner / first arrival, 1: the other).
    side: usize,
    half: u64,
    tx: oneshot::Sender<Chan>,
}

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("the other peer's relay half did not arrive within {PROBE_WAIT:?}")]
    NoPartner,
    #[error("this side of the session already has a relay half waiting")]
    Duplicate,
    #[error("server is relaying {MAX_RELAYS} links already")]
    Full,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What [`Relays::join`] decided under its lock.
enum Decision {
    /// The partner was waiting: hand this half over.
    Partner(oneshot::Sender<Chan>),
    /// First of the two: wait for the partner.
    Wait(oneshot::Receiver<Chan>),
    Refuse(RelayError),
}

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Halves waiting and relays being spliced (for tests and status).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.lock().len(), self.active.load(Ordering::Relaxed))
    }

    /// Looks for the partner and, if it is not here, registers this half: one critical
    /// section, so that two halves arriving together always find each other.
    fn decide(&self, session: u64, side: usize, half: u64) -> Decision {
        let mut waiting = self.lock();
        if let Some(w) = waiting.remove(&session) {
            if w.side == side && !w.tx.is_closed() {
                waiting.insert(session, w);
                return Decision::Refuse(RelayError::Duplicate);
            }
            if !w.tx.is_closed() {
                return Decision::Partner(w.tx);
            }
            // A half that gave up and has not removed itself yet: take its place.
        }
        if waiting.len() >= MAX_RELAYS || self.active.load(Ordering::Relaxed) >= MAX_RELAYS {
            return Decision::Refuse(RelayError::Full);
        }
        let (tx, rx) = oneshot::channel();
        waiting.insert(session, Waiting { side, half, tx });
        Decision::Wait(rx)
    }

    /// Removes this half's own entry (not a later one's).
    fn forget(&self, session: u64, half: u64) {
        let mut waiting = self.lock();
        if waiting.get(&session).is_some_and(|w| w.half == half) {
            waiting.remove(&session);
        }
    }

    /// Runs one half (`side` of `session`): waits for the partner (or hands itself to
    /// the waiting one) and, in the half that waited, calls `started` (which lists the
    /// relay in the server's metrics until the guard it returns is dropped, and counts
    /// its bytes) and splices both until either side closes. Returns whether this half carried a relay to its end
    /// (`true`) or was handed to its partner (`false`).
    pub(crate) async fn join(
        &self,
        session: u64,
        side: usize,
        mut ch: Chan,
        started: impl FnOnce() -> RelayGuard,
    ) -> Result<bool, RelayError> {
        let half = self.next_half.fetch_add(1, Ordering::Relaxed);
        let mut rx = match self.decide(session, side, half) {
            Decision::Partner(tx) => {
                // The waiting half takes over both connections.
                return match tx.send(ch) {
                    Ok(()) => Ok(false),
                    Err(mut ch) => {
                        let _ = ch
                            .send(&ServerMsg::Refused(RelayError::NoPartner.to_string()))
                            .await;
                        Err(RelayError::NoPartner)
                    }
                };
            }
            Decision::Refuse(e) => {
                let _ = ch.send(&ServerMsg::Refused(e.to_string())).await;
                return Err(e);
            }
            Decision::Wait(rx) => rx,
        };
        let other = tokio::select! {
            r = tokio::time::timeout(PROBE_WAIT, &mut rx) => match r {
                Ok(Ok(other)) => other,
                _ => {
                    self.forget(session, half);
                    // The partner may have arrived just now.
                    match rx.try_recv() {
                        Ok(other) => other,
                        Err(_) => {
                            let _ = ch.send(&ServerMsg::Refused(RelayError::NoPartner.to_string())).await;
                            return Err(RelayError::NoPartner);
                        }
                    }
                }
            },
            // The peer sends nothing while waiting: anything is a close or a violation.
            r = ch.recv::<ClientMsg>() => {
                self.forget(session, half);
                return match r { Err(e) => Err(e.into()), Ok(_) => Ok(false) };
            }
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        let guard = started();
        let result = splice(ch, other, &guard).await;
        drop(guard);
        self.active.fetch_sub(1, Ordering::Relaxed);
        let (a_to_b, b_to_a) = result?;
        info!(
            session = format_args!("{session:016x}"),
            a_to_b, b_to_a, "relay closed"
        );
        Ok(true)
    }
}

async fn raw(mut ch: Chan) -> Result<(TcpStream, BytesMut), RelayError> {
    ch.send(&ServerMsg::RelayReady).await?;
    // Bytes read past the last frame, then bytes read but not decrypted: the start of
    // the raw stream.
    let (noise, mut leftover) = ch.into_parts();
    let (tcp, undecrypted) = noise.into_raw()?;
    leftover.unsplit(undecrypted);
    Ok((tcp, leftover))
}

async fn splice(a: Chan, b: Chan, guard: &RelayGuard) -> Result<(u64, u64), RelayError> {
    let ((a, a_left), (mut b, b_left)) = (raw(a).await?, raw(b).await?);
    let _ = common::net::set_link_options(&a);
    let _ = common::net::set_link_options(&b);
    let a_addr = a.peer_addr().ok();
    // Side a's reads and writes are both directions: count them there, live.
    let bytes = guard.bytes();
    let total = guard.total();
    bytes.read.fetch_add(a_left.len() as u64, Ordering::Relaxed);
    total.fetch_add(a_left.len() as u64, Ordering::Relaxed);
    let mut a = common::count::Counted::new(a, bytes).with_total(total);
    info!(a = ?a_addr, b = ?b.peer_addr().ok(), "relaying");
    if !a_left.is_empty() {
        b.write_all(&a_left).await?;
    }
    if !b_left.is_empty() {
        a.write_all(&b_left).await?;
    }
    // copy_bidirectional passes half-closes through and stops when both sides ended.
    let (mut a, mut b) = (
        BufReader::with_capacity(64 * 1024, a),
        BufReader::with_capacity(64 * 1024, b),
    );
    let (x, y) = tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    Ok((x + a_left.len() as u64, y + b_left.len() as u64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Two halves of each session decide at the same moment, on two threads: exactly
    /// one of them waits and the other finds it, every time.
    #[test]
    fn simultaneous_halves_find_each_other() {
        const SESSIONS: u64 = 20_000;
        let relays = std::sync::Arc::new(Relays::default());
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|side| {
                let (relays, barrier) = (relays.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut decisions = Vec::new();
                    for session in 0..SESSIONS {
                        if session % 256 == 0 {
                            barrier.wait();
                        }
                        let half = relays.next_half.fetch_add(1, Ordering::Relaxed);
                        decisions.push(relays.decide(session, side, half));
                    }
                    decisions
                })
            })
            .collect();
        let results: Vec<Vec<Decision>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (a, b) in results[0].iter().zip(&results[1]) {
            let kinds = [a, b].map(|d| match d {
                Decision::Partner(_) => "partner",
                Decision::Wait(_) => "wait",
                Decision::Refuse(_) => "refused",
            });
            assert!(
                kinds == ["partner", "wait"] || kinds == ["wait", "partner"],
                "{kinds:?}"
            );
        }
        // Nobody is left waiting: every waiter was found.
        assert_eq!(relays.counts(), (0, 0));
    }

    #[test]
    fn the_same_side_twice_is_a_duplicate_and_a_gone_waiter_is_replaced() {
        let relays = Relays::default();
        let Decision::Wait(rx) = relays.decide(7, 0, 1) else {
            panic!("first half waits");
        };
        assert!(matches!(
            relays.decide(7, 0, 2),
            Decision::Refuse(RelayError::Duplicate)
        ));
        // The waiter gave up (its receiver is gone) without removing itself yet: a new
        // half of the same side takes its place.
        drop(rx);
        assert!(matches!(relays.decide(7, 0, 3), Decision::Wait(_)));
        // Forgetting an older half leaves the newer one.
        relays.forget(7, 1);
        assert_eq!(relays.counts(), (1, 0));
        relays.forget(7, 3);
        assert_eq!(relays.counts(), (0, 0));
    }
}
