//! Bringing up a direct link with a paired peer: probe connections, punch attempts,
//! reports to the server. The decisions are `common::punch::Attempts`'; this module
//! only does the I/O around them.

use std::{net::SocketAddr, time::Duration};

use common::{
    defaults::{PROBE_WAIT, PUNCH_WINDOW},
    net,
    proto::{ClientMsg, ConnKind, Outcome, ServerMsg},
    punch::{self, Attempts, Link, Plan, Step},
    secure::Psk,
};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::client::{self, ClientError, Control, ServerConfig};

/// What is known about a link that came up.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    /// The other peer's address.
    pub remote: SocketAddr,
    /// The attempt that succeeded.
    pub attempt: u8,
    /// From the punch signal to the authenticated link.
    pub signal_to_link: Duration,
}

/// Why no link came up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server connection failed.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// Every attempt failed.
    #[error("no direct connection could be made after {attempts} attempts ({reason}); the NATs on the way probably map each destination to a new port (symmetric NAT)")]
    NoDirect {
        /// Attempts made.
        attempts: u8,
        /// What each attempt saw.
        reason: String,
    },
    /// The other peer left.
    #[error("the other peer left: {0}")]
    PeerGone(String),
}

/// Punches a direct link for the paired session `ticket`.
pub async fn establish(
    cfg: &ServerConfig,
    control: &mut Control,
    ticket: u64,
    initiator: bool,
    psk: &Psk,
) -> Result<(Link, LinkInfo), LinkError> {
    let mut attempts = Attempts::default();
    let mut step = attempts.start();
    loop {
        let attempt = match step {
            Step::Attempt(n) => n,
            // `Done` only follows a success, which has returned already.
            Step::Done => {
                return Err(LinkError::NoDirect {
                    attempts: 0,
                    reason: "internal: no link".into(),
                })
            }
            Step::GiveUp(reason) => {
                let _ = control
                    .send(ClientMsg::Report {
                        session: ticket,
                        outcome: Outcome::GaveUp {
                            reason: reason.clone(),
                        },
                    })
                    .await;
                return Err(LinkError::NoDirect {
                    attempts: attempts.current(),
                    reason,
                });
            }
        };
        let result = one_attempt(cfg, control, ticket, attempt, initiator, psk).await;
        match result {
            Ok((link, info)) => {
                let millis = info.signal_to_link.as_millis().min(u32::MAX as u128) as u32;
                let _ = control
                    .send(ClientMsg::Report {
                        session: ticket,
                        outcome: Outcome::Direct { attempt, millis },
                    })
                    .await;
                return Ok((link, info));
            }
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Failed(reason)) => {
                info!(attempt, %reason, "punch attempt failed");
                let _ = control
                    .send(ClientMsg::Report {
                        session: ticket,
                        outcome: Outcome::AttemptFailed {
                            attempt,
                            reason: reason.clone(),
                        },
                    })
                    .await;
                step = attempts.on_result(Err(reason));
            }
        }
    }
}

enum AttemptError {
    Failed(String),
    Fatal(LinkError),
}

async fn one_attempt(
    cfg: &ServerConfig,
    control: &mut Control,
    ticket: u64,
    attempt: u8,
    initiator: bool,
    psk: &Psk,
) -> Result<(Link, LinkInfo), AttemptError> {
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
    let (mut probe, _observed) = client::connect(
        cfg,
        ConnKind::Probe {
            session: ticket,
            attempt,
            local: probe_local,
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
            m = control.recv() => match m {
                Ok(ServerMsg::PeerGone { reason, .. }) => return Err(AttemptError::Fatal(LinkError::PeerGone(reason))),
                Ok(other) => debug!(?other, "ignored while punching"),
                Err(e) => return Err(AttemptError::Fatal(e.into())),
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
    let targets = punch::targets(peer_public, peer_local, own_public);
    info!(attempt, ?targets, %own_public, "punching");
    let plan = Plan {
        local_port,
        targets,
        window: PUNCH_WINDOW,
        initiator,
        psk: psk.clone(),
    };
    let result = punch::punch(&plan).await;
    // The probe kept our NAT mapping alive while punching; the link holds it now.
    let _ = tokio::time::timeout(Duration::from_millis(500), probe.close()).await;
    match result {
        Ok(link) => {
            let info = LinkInfo {
                remote: link.remote,
                attempt,
                signal_to_link: signalled.elapsed(),
            };
            Ok((link, info))
        }
        Err(e) => Err(AttemptError::Failed(e.to_string())),
    }
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
