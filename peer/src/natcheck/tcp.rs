//! The TCP suite: connections from one local port to the server's endpoints (mapping),
//! dial-backs from the server's other endpoints (filtering, what the NAT does with an
//! unsolicited SYN), and a connection to one's own mapping (hairpinning).

use std::{net::SocketAddr, time::Duration};

use common::{
    defaults::STUN_TEST_TIMEOUT,
    net::{any_addr, reusable_socket},
    proto::ConnKind,
    stun::{self, Change, Class, Message},
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpSocket, TcpStream},
};
use tracing::debug;

use super::{
    report::{classify_mapping, Behaviour, Observation, Transport, UnsolicitedSyn},
    udp::{local_towards, mapped, new_tid, Heard},
    NatCheckError, Target,
};
use crate::client;

/// Why one TCP test failed.
#[derive(Debug, thiserror::Error)]
enum TcpTestError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {STUN_TEST_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Server(#[from] client::ClientError),
    #[error("{0}")]
    Stun(String),
}

/// Something that keeps a TCP connection (and so its NAT mapping) open.
enum Held {
    Stream(TcpStream),
    Control(Box<client::ServerChannel>),
}

/// One Binding request over TCP from `sock` to `dest`: the connection and the
/// answer.
async fn stun_over_tcp(
    sock: TcpSocket,
    dest: SocketAddr,
) -> Result<(TcpStream, Message), TcpTestError> {
    let exchange = async {
        let mut stream = sock.connect(dest).await?;
        let tid = new_tid();
        let req = stun::binding_request(tid, Change::NONE)
            .map_err(|e| TcpTestError::Stun(e.to_string()))?;
        stream.write_all(&req).await?;
        let bytes = stun::read_message(&mut stream).await?;
        let msg = stun::decode(&bytes).map_err(|e| TcpTestError::Stun(e.to_string()))?;
        if msg.tid != tid {
            return Err(TcpTestError::Stun("answer to another transaction".into()));
        }
        mapped(&Some(Heard {
            from: dest,
            msg: msg.clone(),
        }))
        .map_err(TcpTestError::Stun)?;
        Ok((stream, msg))
    };
    tokio::time::timeout(STUN_TEST_TIMEOUT, exchange)
        .await
        .map_err(|_| TcpTestError::Timeout)?
}

/// The first connection: to the rendezvous server's Noise port, or STUN over TCP.
async fn first_tcp(
    target: &Target,
    sock: TcpSocket,
) -> Result<(Held, SocketAddr, Option<SocketAddr>), TcpTestError> {
    match target {
        Target::Rendezvous(cfg) => {
            let (ch, observed) = client::connect(cfg, ConnKind::Control, Some(sock)).await?;
            Ok((Held::Control(Box::new(ch)), observed, None))
        }
        Target::Stun(addr) => {
            let (s, msg) = stun_over_tcp(sock, *addr).await?;
            let public = msg
                .mapped
                .ok_or_else(|| TcpTestError::Stun("no mapped address".into()))?;
            Ok((Held::Stream(s), public, msg.other))
        }
    }
}

pub(super) async fn tcp_suite(
    target: &Target,
    other: Option<SocketAddr>,
) -> Result<Transport, NatCheckError> {
    let primary = target.primary();
    let mut t = Transport::default();
    // The listener owns the local port first; every test connection shares it.
    let lsock = reusable_socket(any_addr(primary, 0))?;
    let port = lsock.local_addr()?.port();
    let listener = lsock.listen(16)?;
    let local = any_addr(primary, port);
    let (held, m1, stun_other) = match first_tcp(target, reusable_socket(local)?).await {
        Ok(x) => x,
        Err(e) => {
            t.error = Some(format!("{primary} over TCP: {e}"));
            return Ok(t);
        }
    };
    let mut held = vec![held];
    t.reachable = true;
    t.local = local_towards(primary, port).await;
    t.public = Some(m1);
    t.behind_nat = t.local.map(|l| l != m1);
    t.port_preserved = Some(m1.port() == port);
    t.observations.push(Observation {
        server: primary,
        public: m1,
    });
    let other = other.or(stun_other);
    let mapping = tcp_mapping_test(primary, local, m1, other);
    let filtering = async {
        match (target, other) {
            (Target::Rendezvous(_), Some(other)) if other.ip() != primary.ip() => {
                Some(tcp_filtering(other).await)
            }
            _ => None,
        }
    };
    let (mapping, hairpin, filtering) =
        tokio::join!(mapping, tcp_hairpin(&listener, m1), filtering);
    let (mapping, obs, streams) = mapping;
    t.observations.extend(obs);
    match mapping {
        Ok(b) => t.mapping = Some(b),
        Err(e) => t.notes.push(format!("mapping not measured: {e}")),
    }
    t.hairpinning = Some(hairpin);
    match filtering {
        Some(Ok((b, unsolicited))) => {
            t.filtering = Some(b);
            t.unsolicited_syn = unsolicited;
        }
        Some(Err(e)) => t.notes.push(format!("filtering not measured: {e}")),
        None => t.notes.push(
            "filtering is not measured over TCP (it needs a punchline server with a second \
             IP address to dial back); the verdict uses UDP's"
                .into(),
        ),
    }
    held.extend(streams.into_iter().map(Held::Stream));
    for h in held {
        match h {
            Held::Control(mut ch) => {
                let _ = tokio::time::timeout(Duration::from_millis(500), ch.close()).await;
            }
            Held::Stream(mut s) => {
                let _ = s.shutdown().await;
            }
        }
    }
    Ok(t)
}

/// The TCP mapping test: from `local` (whose connection to `primary` was seen as
/// `m1`), STUN over TCP to the alternate IP on the primary port and to the alternate
/// endpoint `other`. Returns the connections, which must stay open until the end of
/// the test (the NAT keeps a port only while its mapping exists).
pub(super) async fn tcp_mapping_test(
    primary: SocketAddr,
    local: SocketAddr,
    m1: SocketAddr,
    other: Option<SocketAddr>,
) -> (Result<Behaviour, String>, Vec<Observation>, Vec<TcpStream>) {
    let Some(other) = other else {
        return (
            Err(
                "the server's alternate address is unknown (no OTHER-ADDRESS over UDP)".to_string(),
            ),
            Vec::new(),
            Vec::new(),
        );
    };
    let two_ips = other.ip() != primary.ip();
    let dests = if two_ips {
        vec![SocketAddr::new(other.ip(), primary.port()), other]
    } else {
        vec![other]
    };
    let mut obs = Vec::new();
    let mut streams = Vec::new();
    for dest in dests {
        let sock = match reusable_socket(local) {
            Ok(s) => s,
            Err(e) => {
                return (
                    Err(format!("cannot share the local port: {e}")),
                    obs,
                    streams,
                )
            }
        };
        match stun_over_tcp(sock, dest).await {
            Ok((s, msg)) => {
                streams.push(s);
                if let Some(public) = msg.mapped {
                    obs.push(Observation {
                        server: dest,
                        public,
                    });
                }
            }
            Err(e) => return (Err(format!("{dest}: {e}")), obs, streams),
        }
        // Stop early: the same mapping towards the alternate IP settles it.
        if obs.last().is_some_and(|o: &Observation| o.public == m1) && two_ips {
            break;
        }
    }
    let result = match (two_ips, obs.as_slice()) {
        (true, [o2]) => Ok(classify_mapping(m1, o2.public, None)),
        (true, [o2, o3]) => Ok(classify_mapping(m1, o2.public, Some(o3.public))),
        (false, [o2]) if o2.public == m1 => Ok(Behaviour::EndpointIndependentOrAddressDependent),
        (false, [_]) => Ok(Behaviour::AddressAndPortDependent),
        _ => Err("no answer from the alternate endpoints".to_string()),
    };
    (result, obs, streams)
}

/// TCP filtering (the server's dial-back, see its `stun.rs`): two probes side by side,
/// each from its own port that talks only to the alternate endpoint `other` (A2:P2),
/// asking for a dial-back from the other IP (A1:P2) and from the other port (A2:P1).
/// Also says what the NAT did with a refused dial-back's SYN.
async fn tcp_filtering(other: SocketAddr) -> Result<(Behaviour, Option<UnsolicitedSyn>), String> {
    let change_ip = Change {
        ip: true,
        port: false,
    };
    let (ip, port) = tokio::join!(
        dial_back_probe(other, change_ip),
        dial_back_probe(other, Change::PORT)
    );
    let (ip, port) = (ip?, port?);
    let behaviour = match (&ip, &port) {
        (Ok(()), _) => Behaviour::EndpointIndependent,
        (Err(_), Ok(())) => Behaviour::AddressDependent,
        (Err(_), Err(_)) => Behaviour::AddressAndPortDependent,
    };
    let unsolicited = [ip, port].into_iter().find_map(Result::err);
    Ok((behaviour, unsolicited))
}

/// One dial-back request from a port of its own: `Ok(Ok(()))` if the server's
/// connection got through, `Ok(Err(what the NAT did))` if not.
async fn dial_back_probe(
    other: SocketAddr,
    change: Change,
) -> Result<Result<(), UnsolicitedSyn>, String> {
    let io = |e: std::io::Error| e.to_string();
    let lsock = reusable_socket(any_addr(other, 0)).map_err(io)?;
    let port = lsock.local_addr().map_err(io)?.port();
    let listener = lsock.listen(4).map_err(io)?;
    let sock = reusable_socket(any_addr(other, port)).map_err(io)?;
    let exchange = async {
        let mut stream = sock.connect(other).await.map_err(io)?;
        let tid = new_tid();
        let req = stun::binding_request(tid, change).map_err(|e| e.to_string())?;
        stream.write_all(&req).await.map_err(io)?;
        let bytes = stun::read_message(&mut stream).await.map_err(io)?;
        let msg = stun::decode(&bytes).map_err(|e| e.to_string())?;
        if msg.tid != tid {
            return Err("answer to another transaction".to_string());
        }
        match (msg.class, &msg.error) {
            (Class::Success, _) => Ok(Ok(())),
            (_, Some((500, reason))) if reason.contains("refused") => {
                Ok(Err(UnsolicitedSyn::Refused))
            }
            (_, Some((500, reason))) if reason.contains("no answer") => {
                Ok(Err(UnsolicitedSyn::Dropped))
            }
            (_, Some((code, reason))) => Err(format!("the server said {code} {reason}")),
            _ => Err("an unexpected answer".to_string()),
        }
    };
    // Accept (and drop) the dial-back while waiting for the verdict on the request's
    // own connection, so the listener's backlog never fills.
    let drain = async {
        loop {
            if listener.accept().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let bounded = async {
        tokio::select! {
            r = exchange => r,
            _ = drain => Err("unreachable".to_string()),
        }
    };
    tokio::time::timeout(STUN_TEST_TIMEOUT * 2, bounded)
        .await
        .map_err(|_| format!("no answer from {other} within {:?}", STUN_TEST_TIMEOUT * 2))?
}

/// Whether a connection from a fresh socket to `public` (this side's own mapping)
/// arrives at `listener`, the socket listening on the mapped local port.
async fn tcp_hairpin(listener: &TcpListener, public: SocketAddr) -> bool {
    let nonce: [u8; 8] = rand::random();
    let dial = async {
        let mut s = TcpStream::connect(public).await?;
        s.write_all(&nonce).await?;
        // Hold the connection until the listener side has read the nonce.
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    };
    let accept = async {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return false;
            };
            let mut got = [0u8; 8];
            if tokio::io::AsyncReadExt::read_exact(&mut s, &mut got)
                .await
                .is_ok()
                && got == nonce
            {
                return true;
            }
        }
    };
    let race = async {
        tokio::select! {
            r = dial => { debug!(?r, "hairpin dial ended"); false }
            ok = accept => ok,
        }
    };
    tokio::time::timeout(STUN_TEST_TIMEOUT, race)
        .await
        .unwrap_or(false)
}
