//! The UDP suite: STUN (RFC 8489) with RFC 5780 behaviour discovery from two sockets,
//! one for mapping, one for filtering and hairpinning.

use std::net::SocketAddr;

use common::{
    defaults::{STUN_RTO, STUN_TEST_TIMEOUT},
    net::any_addr,
    stun::{self, Change, Class, Message, Tid},
};
use tokio::{net::UdpSocket, time::Instant};
use tracing::debug;

use super::{
    report::{classify_mapping, Behaviour, Observation, Transport},
    NatCheckError,
};

/// One answer heard on a UDP socket.
#[derive(Debug, Clone)]
pub(super) struct Heard {
    pub(super) from: SocketAddr,
    pub(super) msg: Message,
}

pub(super) fn new_tid() -> Tid {
    rand::random()
}

/// Sends each `(destination, change)` request on `sock` and collects the first message
/// carrying each one's transaction ID (a response, or the request itself when it was
/// sent to one's own address and hairpinned back), retransmitting after [`STUN_RTO`],
/// doubling, until [`STUN_TEST_TIMEOUT`].
pub(super) async fn transact(
    sock: &UdpSocket,
    reqs: &[(SocketAddr, Change)],
) -> Vec<Option<Heard>> {
    let mut out: Vec<Option<Heard>> = vec![None; reqs.len()];
    let mut sent: Vec<(Tid, Vec<u8>, SocketAddr)> = Vec::new();
    for (dest, change) in reqs {
        let tid = new_tid();
        match stun::binding_request(tid, *change) {
            Ok(bytes) => sent.push((tid, bytes, *dest)),
            Err(e) => {
                debug!(%e, "cannot encode a request");
                return out;
            }
        }
    }
    let start = Instant::now();
    let deadline = start + STUN_TEST_TIMEOUT;
    let mut rto = STUN_RTO;
    let mut next = start;
    let mut buf = vec![0u8; stun::MAX_STUN_MESSAGE + 1];
    while out.iter().any(Option::is_none) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next {
            for (i, (_, bytes, dest)) in sent.iter().enumerate() {
                if out[i].is_none() {
                    if let Err(e) = sock.send_to(bytes, dest).await {
                        debug!(%dest, %e, "STUN send failed");
                    }
                }
            }
            next = now + rto;
            rto *= 2;
        }
        let wake = next.min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Ok(msg) = stun::decode(&buf[..n.min(stun::MAX_STUN_MESSAGE)]) else { continue };
                if let Some(i) = sent.iter().position(|(tid, ..)| *tid == msg.tid) {
                    if out[i].is_none() {
                        out[i] = Some(Heard { from, msg });
                    }
                }
            }
        }
    }
    out
}

/// A successful response's mapped address, or a reason.
pub(super) fn mapped(h: &Option<Heard>) -> Result<(SocketAddr, &Message), String> {
    match h {
        None => Err("no answer".into()),
        Some(Heard { msg, .. }) if msg.class == Class::Error => Err(match &msg.error {
            Some((code, reason)) => format!("error {code} {reason}"),
            None => "an error response".into(),
        }),
        Some(Heard { msg, .. }) => match (msg.class, msg.mapped) {
            (Class::Success, Some(m)) => Ok((m, msg)),
            _ => Err("an answer without a mapped address".into()),
        },
    }
}

pub(super) async fn udp_socket(primary: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(any_addr(primary, 0)).await
}

/// The local address this host uses towards `dest` (a connected UDP socket; no packet
/// is sent).
pub(super) async fn local_towards(dest: SocketAddr, port: u16) -> Option<SocketAddr> {
    let s = UdpSocket::bind(any_addr(dest, 0)).await.ok()?;
    s.connect(dest).await.ok()?;
    Some(SocketAddr::new(s.local_addr().ok()?.ip(), port))
}

/// `guess` if a Binding request to it over UDP is answered.
pub(super) async fn confirm_alternate(
    sock: &UdpSocket,
    guess: Option<SocketAddr>,
) -> Option<SocketAddr> {
    let guess = guess?;
    let r = transact(sock, &[(guess, Change::NONE)]).await;
    mapped(&r[0]).ok().map(|_| guess)
}

pub(super) async fn udp_suite(
    primary: SocketAddr,
    guess: Option<SocketAddr>,
) -> Result<(Transport, Option<SocketAddr>), NatCheckError> {
    let mut t = Transport::default();
    // `m` measures mapping; `f` measures filtering and hairpinning and talks to the
    // primary address only, so no other endpoint is ever let in by its own traffic.
    let (m, f) = (udp_socket(primary).await?, udp_socket(primary).await?);
    let test1 = [(primary, Change::NONE)];
    let (rm, rf) = tokio::join!(transact(&m, &test1), transact(&f, &test1));
    let local_port = m.local_addr()?.port();
    t.local = local_towards(primary, local_port).await;
    let (m1, first) = match mapped(&rm[0]) {
        Ok((a, msg)) => (a, msg.clone()),
        Err(why) => {
            t.error = Some(format!(
                "{primary} over UDP: {why} within {STUN_TEST_TIMEOUT:?}"
            ));
            return Ok((t, None));
        }
    };
    t.reachable = true;
    t.public = Some(m1);
    t.observations.push(Observation {
        server: primary,
        public: m1,
    });
    t.behind_nat = t.local.map(|l| l != m1);
    t.port_preserved = Some(m1.port() == local_port);
    let other = match first.other {
        Some(o) => Some(o),
        None => confirm_alternate(&m, guess).await,
    };
    let Some(other) = other else {
        t.notes.push(
            "the server has no alternate address (no OTHER-ADDRESS, no answer on its port + 1): \
             mapping and filtering cannot be measured; use a server without --alt-port off, \
             or --stun with an RFC 5780 server"
                .into(),
        );
        let mf = mapped(&rf[0]).ok().map(|(a, _)| a);
        if let Some(mf) = mf {
            let r = transact(&f, &[(mf, Change::NONE)]).await;
            t.hairpinning = Some(r[0].is_some());
        }
        return Ok((t, None));
    };
    let two_ips = other.ip() != primary.ip();
    let mapping = async {
        let mut obs = Vec::new();
        let result = if two_ips {
            let alt_ip = SocketAddr::new(other.ip(), primary.port());
            let r2 = transact(&m, &[(alt_ip, Change::NONE)]).await;
            match mapped(&r2[0]) {
                Err(why) => Err(format!("{alt_ip}: {why}")),
                Ok((m2, _)) => {
                    obs.push(Observation {
                        server: alt_ip,
                        public: m2,
                    });
                    if m2 == m1 {
                        Ok(Behaviour::EndpointIndependent)
                    } else {
                        let r3 = transact(&m, &[(other, Change::NONE)]).await;
                        match mapped(&r3[0]) {
                            Err(why) => Err(format!("{other}: {why}")),
                            Ok((m3, _)) => {
                                obs.push(Observation {
                                    server: other,
                                    public: m3,
                                });
                                Ok(classify_mapping(m1, m2, Some(m3)))
                            }
                        }
                    }
                }
            }
        } else {
            let r2 = transact(&m, &[(other, Change::NONE)]).await;
            match mapped(&r2[0]) {
                Err(why) => Err(format!("{other}: {why}")),
                Ok((m2, _)) => {
                    obs.push(Observation {
                        server: other,
                        public: m2,
                    });
                    Ok(if m2 == m1 {
                        Behaviour::EndpointIndependentOrAddressDependent
                    } else {
                        Behaviour::AddressAndPortDependent
                    })
                }
            }
        };
        (result, obs)
    };
    let filtering = async {
        let Ok((mf, _)) = mapped(&rf[0]) else {
            return (
                Err("the filtering socket got no answer to its first request".to_string()),
                None,
            );
        };
        let mut reqs = vec![(primary, Change::PORT), (mf, Change::NONE)];
        if two_ips {
            reqs.push((primary, Change::BOTH));
        }
        let r = transact(&f, &reqs).await;
        let hairpin = Some(r[1].is_some());
        // A response counts only if it came from where it should: a server that
        // ignored CHANGE-REQUEST must not make a NAT look open.
        let judge = |h: &Option<Heard>, ok: &dyn Fn(SocketAddr) -> bool| match h {
            None => Ok(false),
            Some(h) if h.msg.class == Class::Success && ok(h.from) => Ok(true),
            Some(h) if h.msg.class == Class::Success => Err(format!(
                "the server answered a CHANGE-REQUEST from {} instead of another endpoint",
                h.from
            )),
            Some(h) => Err(format!(
                "the server refused CHANGE-REQUEST ({})",
                mapped(&Some(h.clone())).err().unwrap_or_default()
            )),
        };
        let port_changed = judge(&r[0], &|from| from.port() != primary.port());
        let both_changed = if two_ips {
            judge(&r[2], &|from| {
                from.ip() != primary.ip() && from.port() != primary.port()
            })
            .map(Some)
        } else {
            Ok(None)
        };
        let result = match (both_changed, port_changed) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(Some(true)), _) => Ok(Behaviour::EndpointIndependent),
            (Ok(Some(false)), Ok(true)) => Ok(Behaviour::AddressDependent),
            (Ok(None), Ok(true)) => Ok(Behaviour::EndpointIndependentOrAddressDependent),
            (_, Ok(false)) => Ok(Behaviour::AddressAndPortDependent),
        };
        (result, hairpin)
    };
    let ((mapping, obs), (filtering, hairpin)) = tokio::join!(mapping, filtering);
    t.observations.extend(obs);
    match mapping {
        Ok(b) => t.mapping = Some(b),
        Err(e) => t.notes.push(format!("mapping not measured: {e}")),
    }
    match filtering {
        Ok(b) => t.filtering = Some(b),
        Err(e) => t.notes.push(format!("filtering not measured: {e}")),
    }
    t.hairpinning = hairpin;
    Ok((t, Some(other)))
}
