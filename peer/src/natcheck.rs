//! `peer nat-check`: what the NAT in front of this machine does, and what that means for
//! direct links.
//!
//! Two suites run side by side, each bounded by a few seconds:
//!
//! * **UDP**, through STUN (RFC 8489) with RFC 5780 behaviour discovery: the public
//!   address; mapping (RFC 5780 §4.3: the mapped address towards the primary address,
//!   the alternate IP and the alternate IP and port, from one socket); filtering (§4.4:
//!   from a second socket that only ever talks to the primary address, requests asking
//!   the server to answer from the other IP and port, or from the other port); and
//!   hairpinning (§4.5: a request sent to one's own mapped address comes back).
//! * **TCP**, the transport punchline's links use: connections from one local port
//!   (shared with `SO_REUSEPORT`, as the punch does) to the server's endpoints. With a
//!   punchline server the primary port is the Noise control protocol, whose `Welcome`
//!   names the observed address; the alternate endpoints speak STUN over TCP (see the
//!   server's `stun.rs`). With `--stun`, every endpoint is STUN over TCP. Hairpinning:
//!   a connection from a fresh socket to one's own mapped address reaches one's own
//!   listener on the mapped port. Filtering: a punchline server with two IP addresses
//!   dials back from its other IP, or its other port, to a port that has only talked
//!   to one of its endpoints (the server's CHANGE-REQUEST over TCP), and says whether
//!   the SYN got through or what the NAT did with it (RST/ICMP or silence). Elsewhere
//!   TCP filtering is not measured and the verdict takes filtering from UDP.
//!
//! Nothing here panics or waits without bound: every exchange is under
//! [`STUN_TEST_TIMEOUT`], and STUN over UDP retransmits after [`STUN_RTO`], doubling.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{
    defaults::{STUN_RTO, STUN_TEST_TIMEOUT},
    net::{any_addr, reusable_socket},
    proto::{ConnKind, NatMapping},
    stun::{self, Change, Class, Message, Tid},
};
use serde::Serialize;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    time::Instant,
};
use tracing::debug;

use crate::client::{self, ServerConfig};

/// Whom to ask.
#[derive(Debug, Clone)]
pub enum Target {
    /// A punchline rendezvous server: STUN over UDP on its port, the Noise control
    /// protocol on its TCP port, STUN over TCP on its alternate endpoints.
    Rendezvous(ServerConfig),
    /// Any standard STUN server (RFC 5780 support gives the full picture).
    Stun(SocketAddr),
}

impl Target {
    fn primary(&self) -> SocketAddr {
        match self {
            Target::Rendezvous(cfg) => cfg.addr,
            Target::Stun(a) => *a,
        }
    }
}

/// A NAT's mapping or filtering behaviour (RFC 4787 / RFC 5780 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// The same for every remote endpoint ("cone").
    EndpointIndependent,
    /// Depends on the remote IP address.
    AddressDependent,
    /// Depends on the remote IP address and port ("symmetric" for mapping).
    AddressAndPortDependent,
    /// Not address-and-port-dependent, but the server has one IP address, so
    /// endpoint-independent and address-dependent cannot be told apart.
    EndpointIndependentOrAddressDependent,
}

impl Behaviour {
    /// How a person would say it.
    pub fn describe(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::EndpointIndependentOrAddressDependent => {
                "endpoint-independent or address-dependent (the server has one IP address)"
            }
        }
    }

    fn dependent_mapping(self) -> bool {
        matches!(
            self,
            Behaviour::AddressDependent | Behaviour::AddressAndPortDependent
        )
    }
}

/// One public address seen by one server endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The server endpoint asked.
    pub server: SocketAddr,
    /// The address it saw this side come from.
    pub public: SocketAddr,
}

/// What one transport's tests found. `None` means "not measured" (see `notes`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transport {
    /// Whether the server answered at all.
    pub reachable: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// This side's local address of the first test.
    pub local: Option<SocketAddr>,
    /// The public address the server saw for it.
    pub public: Option<SocketAddr>,
    /// Whether a NAT changed the address.
    pub behind_nat: Option<bool>,
    /// Whether the NAT kept the local port as the public port.
    pub port_preserved: Option<bool>,
    /// Mapping behaviour.
    pub mapping: Option<Behaviour>,
    /// Filtering behaviour.
    pub filtering: Option<Behaviour>,
    /// Whether a packet or connection to one's own public address comes back.
    pub hairpinning: Option<bool>,
    /// TCP: what the NAT did with the server's refused dial-back SYN.
    pub unsolicited_syn: Option<UnsolicitedSyn>,
    /// The public addresses seen by each server endpoint, from the one local port.
    pub observations: Vec<Observation>,
    /// Why something was not measured, or what to keep in mind.
    pub notes: Vec<String>,
}

/// The conclusion for direct links.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The NAT in classic terms: `none`, `full cone`, `restricted cone`,
    /// `port-restricted cone`, `cone`, `symmetric` or `unknown`.
    pub nat: String,
    /// Which measurements the verdict rests on.
    pub basis: String,
    /// Peers a direct link will work with.
    pub direct_with: String,
    /// Peers the link will go through the relay with.
    pub relay_with: String,
}

/// Everything `nat-check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server asked, as `rendezvous HOST:PORT` or `stun HOST:PORT`.
    pub server: String,
    /// The server's alternate endpoint (OTHER-ADDRESS), if it has one.
    pub alternate: Option<SocketAddr>,
    /// TCP, what punchline's links use.
    pub tcp: Transport,
    /// UDP, through STUN.
    pub udp: Transport,
    /// What it means.
    pub verdict: Verdict,
    /// Hints about the network as a whole (carrier-grade NAT, private server).
    pub notes: Vec<String>,
}

impl Report {
    /// Whether any test got an answer.
    pub fn reached_server(&self) -> bool {
        self.tcp.reachable || self.udp.reachable
    }
}

/// Why the check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum NatCheckError {
    /// A local socket could not be opened.
    #[error("cannot open a local socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Runs both suites against `target` and draws the conclusion.
pub async fn run(target: &Target) -> Result<Report, NatCheckError> {
    let primary = target.primary();
    let (mut udp, other) = udp_suite(primary).await?;
    let tcp = tcp_suite(target, other).await?;
    // Test I over UDP ran first; the TCP suite needs OTHER-ADDRESS from it.
    if !udp.reachable && tcp.reachable {
        udp.notes
            .push("UDP got no answer while TCP did: UDP is blocked on the way".into());
    }
    let verdict = verdict(&tcp, &udp);
    let mut notes = Vec::new();
    let local_ip = tcp.local.or(udp.local).map(|a| a.ip());
    if local_ip.is_some_and(is_shared) {
        notes.push(
            "your own address is in 100.64.0.0/10: a carrier-grade NAT is in front of you; \
             the behaviour above is that of all NAT layers together"
                .into(),
        );
    }
    let public_ip = tcp.public.or(udp.public).map(|a| a.ip());
    if public_ip.is_some_and(|ip| is_private(ip) || is_shared(ip)) && !is_private(primary.ip()) {
        notes.push(
            "the server sees a private or shared address: another NAT (double NAT or \
             carrier-grade NAT) may sit between it and the internet"
                .into(),
        );
    }
    if primary.ip().is_loopback() {
        notes.push(
            "the server is on this machine (loopback): this says nothing about the NATs \
             between you and other peers; run it against a public server"
                .into(),
        );
    } else if is_private(primary.ip()) {
        notes.push(
            "the server has a private address: this describes only the NATs between you and it"
                .into(),
        );
    }
    let server = match target {
        Target::Rendezvous(_) => format!("rendezvous {primary}"),
        Target::Stun(_) => format!("stun {primary}"),
    };
    Ok(Report {
        server,
        alternate: other,
        tcp,
        udp,
        verdict,
        notes,
    })
}

/// This process's own TCP mapping, for pairing (see [`ClientMsg::Nat`]): measured
/// once per process with the TCP mapping test of `nat-check` (a UDP Binding request
/// for the server's alternate endpoint, then the server and its alternate endpoint
/// seen from one local port), then cached. `None` when it cannot be measured (no
/// alternate endpoint, UDP blocked, the server unreachable).
///
/// [`ClientMsg::Nat`]: common::proto::ClientMsg::Nat
pub async fn own_mapping(cfg: &ServerConfig) -> Option<NatMapping> {
    static MAPPING: tokio::sync::OnceCell<Option<NatMapping>> = tokio::sync::OnceCell::const_new();
    *MAPPING
        .get_or_init(|| async {
            let mapping = measure_own_mapping(cfg).await;
            tracing::info!(?mapping, "own TCP mapping measured");
            mapping
        })
        .await
}

async fn measure_own_mapping(cfg: &ServerConfig) -> Option<NatMapping> {
    let primary = cfg.addr;
    let udp = udp_socket(primary).await.ok()?;
    let answer = transact(&udp, &[(primary, Change::NONE)]).await;
    let other = mapped(&answer[0]).ok()?.1.other?;
    let sock = reusable_socket(any_addr(primary, 0)).ok()?;
    let local = any_addr(primary, sock.local_addr().ok()?.port());
    let (mut ch, m1) = client::connect(cfg, ConnKind::Control, Some(sock))
        .await
        .ok()?;
    let (result, _, streams) = tcp_mapping_test(primary, local, m1, Some(other)).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), ch.close()).await;
    drop(streams);
    Some(match result.ok()? {
        Behaviour::EndpointIndependent => NatMapping::EndpointIndependent,
        Behaviour::EndpointIndependentOrAddressDependent => {
            NatMapping::EndpointIndependentOrAddressDependent
        }
        Behaviour::AddressDependent => NatMapping::AddressDependent,
        Behaviour::AddressAndPortDependent => NatMapping::AddressAndPortDependent,
    })
}

fn is_shared(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Mapping from the public addresses seen by the primary endpoint (`m1`), the
/// alternate IP on the primary port (`m2`) and the alternate IP and port (`m3`).
fn classify_mapping(m1: SocketAddr, m2: SocketAddr, m3: Option<SocketAddr>) -> Behaviour {
    if m1 == m2 {
        Behaviour::EndpointIndependent
    } else if m3 == Some(m2) {
        Behaviour::AddressDependent
    } else {
        Behaviour::AddressAndPortDependent
    }
}

// ---------------------------------------------------------------------------------
// UDP

/// One answer heard on a UDP socket.
#[derive(Debug, Clone)]
struct Heard {
    from: SocketAddr,
    msg: Message,
}

fn new_tid() -> Tid {
    rand::random()
}

/// Sends each `(destination, change)` request on `sock` and collects the first message
/// carrying each one's transaction ID (a response, or the request itself when it was
/// sent to one's own address and hairpinned back), retransmitting after [`STUN_RTO`],
/// doubling, until [`STUN_TEST_TIMEOUT`].
async fn transact(sock: &UdpSocket, reqs: &[(SocketAddr, Change)]) -> Vec<Option<Heard>> {
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
fn mapped(h: &Option<Heard>) -> Result<(SocketAddr, &Message), String> {
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

async fn udp_socket(primary: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(any_addr(primary, 0)).await
}

/// The local address this host uses towards `dest` (a connected UDP socket; no packet
/// is sent).
async fn local_towards(dest: SocketAddr, port: u16) -> Option<SocketAddr> {
    let s = UdpSocket::bind(any_addr(dest, 0)).await.ok()?;
    s.connect(dest).await.ok()?;
    Some(SocketAddr::new(s.local_addr().ok()?.ip(), port))
}

async fn udp_suite(primary: SocketAddr) -> Result<(Transport, Option<SocketAddr>), NatCheckError> {
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
    let other = first.other;
    let Some(other) = other else {
        t.notes.push(
            "the server has no alternate address (no OTHER-ADDRESS): mapping and filtering \
             cannot be measured; use a server started with --alt-addr, or --stun with an \
             RFC 5780 server"
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

// ---------------------------------------------------------------------------------
// TCP

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

async fn tcp_suite(target: &Target, other: Option<SocketAddr>) -> Result<Transport, NatCheckError> {
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
async fn tcp_mapping_test(
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

/// What a NAT does with a SYN nobody asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsolicitedSyn {
    /// It answers with a TCP RST or an ICMP error: a punch that arrives too early is
    /// refused, and redialing at once fixes it.
    Refused,
    /// It drops it silently: an early SYN is retransmitted by the kernel.
    Dropped,
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

// ---------------------------------------------------------------------------------
// Verdict and output

fn verdict(tcp: &Transport, udp: &Transport) -> Verdict {
    let (mapping, mapping_from) = match (tcp.mapping, udp.mapping) {
        (Some(m), _) => (Some(m), "TCP mapping"),
        (None, Some(m)) => (Some(m), "UDP mapping"),
        _ => (None, ""),
    };
    let behind_nat = tcp.behind_nat.or(udp.behind_nat);
    let (filtering, filtering_from) = match (tcp.filtering, udp.filtering) {
        (Some(f), _) => (Some(f), "TCP filtering"),
        (None, f) => (f, "UDP filtering"),
    };
    let basis = match (behind_nat, mapping, filtering) {
        (_, Some(_), Some(_)) => format!("{mapping_from}, {filtering_from}"),
        (_, Some(_), None) => mapping_from.to_string(),
        (Some(false), None, _) => "the server sees this machine's own address".to_string(),
        _ => "too few answers to tell".to_string(),
    };
    let (nat, direct, relay) = match (behind_nat, mapping, filtering) {
        (Some(false), _, f) if f.is_none() || f == Some(Behaviour::EndpointIndependent) => (
            "none",
            "every peer: your address is public and peers can reach it, unless a firewall drops incoming connections",
            "nobody",
        ),
        (_, Some(m), _) if m.dependent_mapping() => (
            "symmetric",
            "peers that have a public address or a full-cone NAT (endpoint-independent filtering)",
            "peers behind restricted, port-restricted or symmetric NATs (most home and mobile networks)",
        ),
        (_, Some(_), Some(Behaviour::EndpointIndependent)) => (
            "full cone",
            "peers behind any NAT, symmetric ones included",
            "nobody, as long as your NAT keeps its mappings",
        ),
        (_, Some(_), f) => (
            match f {
                Some(Behaviour::AddressDependent) => "restricted cone",
                Some(Behaviour::AddressAndPortDependent) => "port-restricted cone",
                _ => "cone",
            },
            "peers that have a public address or an endpoint-independent NAT (full, restricted or port-restricted cone: most home routers)",
            "peers behind symmetric NATs (a new public port per destination: some corporate, mobile and carrier-grade NATs)",
        ),
        (_, None, _) => (
            "unknown",
            "peers that have a public address; others could not be predicted",
            "possibly every peer behind a NAT",
        ),
    };
    Verdict {
        nat: nat.into(),
        basis,
        direct_with: direct.into(),
        relay_with: relay.into(),
    }
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not measured",
    }
}

fn transport_text(out: &mut String, title: &str, t: &Transport) {
    let _ = writeln!(out, "{title}");
    if !t.reachable {
        let _ = writeln!(
            out,
            "  no answer: {}",
            t.error.as_deref().unwrap_or("unknown")
        );
        for n in &t.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        return;
    }
    let public = t.public.map(|a| a.to_string()).unwrap_or_default();
    let local = t.local.map(|a| format!(" (local {a})")).unwrap_or_default();
    let nat = match t.behind_nat {
        Some(false) => " — no NAT",
        _ => "",
    };
    let _ = writeln!(out, "  public address   {public}{local}{nat}");
    let _ = writeln!(out, "  local port kept  {}", yes_no(t.port_preserved));
    let seen: Vec<String> = t
        .observations
        .iter()
        .map(|o| format!("{} via {}", o.public, o.server))
        .collect();
    let mapping = t.mapping.map(Behaviour::describe).unwrap_or("not measured");
    let _ = writeln!(out, "  mapping          {mapping}");
    if seen.len() > 1 {
        let _ = writeln!(out, "                   ({})", seen.join(", "));
    }
    let filtering = t
        .filtering
        .map(Behaviour::describe)
        .unwrap_or("not measured");
    let _ = writeln!(out, "  filtering        {filtering}");
    let _ = writeln!(out, "  hairpinning      {}", yes_no(t.hairpinning));
    if let Some(u) = t.unsolicited_syn {
        let what = match u {
            UnsolicitedSyn::Refused => "refused (RST or ICMP): an early punch is redialed at once",
            UnsolicitedSyn::Dropped => "dropped silently: an early punch is retransmitted",
        };
        let _ = writeln!(out, "  unsolicited SYN  {what}");
    }
    for n in &t.notes {
        let _ = writeln!(out, "  note: {n}");
    }
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let alt = r
        .alternate
        .map(|a| format!(", alternate {a}"))
        .unwrap_or_default();
    let _ = writeln!(out, "NAT check via {}{alt}\n", r.server);
    transport_text(&mut out, "TCP (what direct links use)", &r.tcp);
    out.push('\n');
    transport_text(&mut out, "UDP (STUN)", &r.udp);
    out.push('\n');
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let v = &r.verdict;
    let nat = match v.nat.as_str() {
        "none" => "no NAT".to_string(),
        "unknown" => "NAT type unknown".to_string(),
        other => format!("{other} NAT"),
    };
    // "expect relay with nobody" reads badly: say it the other way round.
    let relay = match v.relay_with.strip_prefix("nobody") {
        Some(rest) => format!("no peer should need the relay{rest}"),
        None => format!("expect relay with {}", v.relay_with),
    };
    let _ = writeln!(
        out,
        "Verdict: {nat} (from {}). Direct links will work with {}; {relay}.",
        v.basis, v.direct_with
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_classes() {
        let m1 = a("203.0.113.21:4000");
        assert_eq!(
            classify_mapping(m1, m1, None),
            Behaviour::EndpointIndependent
        );
        let m2 = a("203.0.113.21:4001");
        assert_eq!(
            classify_mapping(m1, m2, Some(m2)),
            Behaviour::AddressDependent
        );
        assert_eq!(
            classify_mapping(m1, m2, Some(a("203.0.113.21:4002"))),
            Behaviour::AddressAndPortDependent
        );
    }

    fn transport(mapping: Behaviour, filtering: Option<Behaviour>) -> Transport {
        Transport {
            reachable: true,
            behind_nat: Some(true),
            mapping: Some(mapping),
            filtering,
            ..Transport::default()
        }
    }

    #[test]
    fn verdicts() {
        let eim = Behaviour::EndpointIndependent;
        let apd = Behaviour::AddressAndPortDependent;
        let v = verdict(&transport(eim, None), &transport(eim, Some(apd)));
        assert_eq!(v.nat, "port-restricted cone");
        assert!(v.relay_with.contains("symmetric"));
        let v = verdict(&transport(apd, None), &transport(apd, Some(apd)));
        assert_eq!(v.nat, "symmetric");
        let v = verdict(&transport(eim, None), &transport(eim, Some(eim)));
        assert_eq!(v.nat, "full cone");
        let text = render(&Report {
            server: "rendezvous 203.0.113.10:8877".into(),
            alternate: None,
            tcp: transport(eim, None),
            udp: transport(eim, Some(apd)),
            verdict: v,
            notes: vec![],
        });
        assert!(
            text.contains("Direct links will work with peers behind any NAT"),
            "{text}"
        );
        let json = serde_json::to_value(transport(eim, Some(apd))).unwrap();
        assert_eq!(json["mapping"], "endpoint-independent");
        assert_eq!(json["filtering"], "address-and-port-dependent");
    }

    #[test]
    fn address_ranges() {
        assert!(is_shared("100.64.1.2".parse().unwrap()));
        assert!(!is_shared("100.128.0.1".parse().unwrap()));
        assert!(is_private("10.0.1.2".parse().unwrap()));
    }
}
