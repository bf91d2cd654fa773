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
        atomic::{AtomicUsize, Ordering},
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

type Chan = Channel<NoiseStream<TcpStream>>;

/// Relay halves waiting for their partner, by session.
#[derive(Default)]
pub(crate) struct Relays {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Chan>>>,
    active: AtomicUsize,
}

/// Why a relay ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("the other peer's relay half did not arrive within {PROBE_WAIT:?}")]
    NoPartner,
    #[error("this session already has a relay")]
    Duplicate,
    #[error("server is relaying {MAX_RELAYS} links already")]
    Full,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Chan>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one half: waits for the partner (or hands itself to the waiting one) and,
    /// in the half that waited, splices both until either side closes.
    pub(crate) async fn join(&self, session: u64, mut ch: Chan) -> Result<(), RelayError> {
        let partner = self.lock().remove(&session);
        if let Some(tx) = partner {
            // The waiting half takes over both connections.
            if let Err(mut ch) = tx.send(ch) {
                let _ = ch
                    .send(&ServerMsg::Refused(RelayError::NoPartner.to_string()))
                    .await;
                return Err(RelayError::NoPartner);
            }
            return Ok(());
        }
        if self.active.load(Ordering::Relaxed) >= MAX_RELAYS {
            let _ = ch
                .send(&ServerMsg::Refused(RelayError::Full.to_string()))
                .await;
            return Err(RelayError::Full);
        }
        let (tx, rx) = oneshot::channel();
        let inserted = match self.lock().entry(session) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(tx);
                true
            }
        };
        if !inserted {
            let _ = ch
                .send(&ServerMsg::Refused(RelayError::Duplicate.to_string()))
                .await;
            return Err(RelayError::Duplicate);
        }
        let other = tokio::select! {
            r = tokio::time::timeout(PROBE_WAIT, rx) => match r {
                Ok(Ok(other)) => other,
                _ => {
                    self.lock().remove(&session);
                    let _ = ch.send(&ServerMsg::Refused(RelayError::NoPartner.to_string())).await;
                    return Err(RelayError::NoPartner);
                }
            },
            // The peer sends nothing while waiting: anything is a close or a violation.
            r = ch.recv::<ClientMsg>() => {
                self.lock().remove(&session);
                return match r { Err(e) => Err(e.into()), Ok(_) => Ok(()) };
            }
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        let result = splice(ch, other).await;
        self.active.fetch_sub(1, Ordering::Relaxed);
        let (a_to_b, b_to_a) = result?;
        info!(
            session = format_args!("{session:016x}"),
            a_to_b, b_to_a, "relay closed"
        );
        Ok(())
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

async fn splice(a: Chan, b: Chan) -> Result<(u64, u64), RelayError> {
    let ((mut a, a_left), (mut b, b_left)) = (raw(a).await?, raw(b).await?);
    info!(a = ?a.peer_addr().ok(), b = ?b.peer_addr().ok(), "relaying");
    if !a_left.is_empty() {
        b.write_all(&a_left).await?;
    }
    if !b_left.is_empty() {
        a.write_all(&b_left).await?;
    }
    let _ = common::net::set_link_options(&a);
    let _ = common::net::set_link_options(&b);
    // copy_bidirectional passes half-closes through and stops when both sides ended.
    let (mut a, mut b) = (
        BufReader::with_capacity(64 * 1024, a),
        BufReader::with_capacity(64 * 1024, b),
    );
    let (x, y) = tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    Ok((x + a_left.len() as u64, y + b_left.len() as u64))
}
