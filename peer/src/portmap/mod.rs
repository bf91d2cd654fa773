//! Port mappings from the router: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP IGD.
//!
//! Where the router offers one of them, a peer asks it to forward the TCP port a punch
//! attempt runs from (its probe's port) to this host, and offers the mapped address to
//! the other peer: a mapped port accepts connections from anyone, like a full-cone
//! NAT, so even a symmetric NAT with UPnP gets direct links. Requests go to the
//! default route's next hop only (`/proc/net/route`), never anywhere else: SSDP's
//! search too is sent to the gateway, not to the multicast group.
//!
//! A [`Mapper`] finds out once (lazily, with short timeouts) which protocol answers;
//! [`Mapper::map`] then asks for a mapping and returns a [`Lease`], renewed at half
//! its lifetime by a task and deleted when the lease is dropped. [`release_all`]
//! deletes whatever is still mapped when the process exits cleanly.

pub mod wire;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, LazyLock},
    time::Duration,
};

use common::defaults::{
    PORTMAP_DELETE_WAIT, PORTMAP_LEASE, PORTMAP_RTO, PORTMAP_TRIES, PORTMAP_UPNP_TIMEOUT,
};
use igd_next::aio::{tokio::Tokio, Gateway};
use tokio::net::UdpSocket;
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};
use tracing::{debug, info, warn};

use wire::{Granted, WireError};

/// A port mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887), NAT-PMP's successor.
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device (WANIPConnection's AddPortMapping).
    Upnp,
}

impl Protocol {
    /// In order of preference: PCP and NAT-PMP are one UDP round trip, UPnP a search
    /// and a few HTTP requests.
    pub const ALL: [Protocol; 3] = [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp];

    /// The name users know it by.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP IGD",
        }
    }
}

/// Which protocols a peer may use (`--portmap`, config key `portmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Whichever the router answers (PCP, then NAT-PMP, then UPnP).
    Auto,
    /// None: no request is sent.
    Off,
    /// Only this one.
    Only(Protocol),
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Mode::Auto),
            "off" | "none" | "no" => Ok(Mode::Off),
            "pcp" => Ok(Mode::Only(Protocol::Pcp)),
            "nat-pmp" | "natpmp" => Ok(Mode::Only(Protocol::NatPmp)),
            "upnp" => Ok(Mode::Only(Protocol::Upnp)),
            _ => Err(format!(
                "unknown port mapping mode {s:?}: use auto, off, pcp, nat-pmp or upnp"
            )),
        }
    }
}

/// Why a protocol gave no mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortmapError {
    /// No default route with a gateway.
    #[error("no default gateway in /proc/net/route")]
    NoGateway,
    /// Nothing answered in time.
    #[error("no answer from {0}")]
    NoAnswer(String),
    /// The gateway answered but refused or made no sense.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// Socket or HTTP trouble.
    #[error("{0}")]
    Io(String),
}

/// A protocol that answered, and how to talk to it.
#[derive(Clone)]
struct Backend {
    protocol: Protocol,
    gateway: Ipv4Addr,
    /// This host's address towards the gateway (what the mapping points to).
    client: Ipv4Addr,
    /// The external address, when the protocol told it at discovery.
    external_ip: Option<Ipv4Addr>,
    upnp: Option<Arc<Gateway<Tokio>>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("protocol", &self.protocol)
            .field("gateway", &self.gateway)
            .field("client", &self.client)
            .field("external_ip", &self.external_ip)
            .finish()
    }
}

/// What asking the router gave, per protocol (for `nat-check`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeResult {
    /// The protocol.
    pub protocol: Protocol,
    /// The public address the router mapped a test port to (then deleted).
    pub mapped: Option<SocketAddrV4>,
    /// Why there is none.
    pub error: Option<String>,
}

/// Asks the router for port mappings; see the module doc.
#[derive(Debug)]
pub struct Mapper {
    mode: Mode,
    lease: Duration,
    found: tokio::sync::OnceCell<Option<Backend>>,
}

/// Leases' renewal tasks, and their cancellation at exit ([`release_all`]).
static LEASES: LazyLock<(CancellationToken, TaskTracker)> =
    LazyLock::new(|| (CancellationToken::new(), TaskTracker::new()));

/// Deletes every mapping still held (clean exit), waiting at most
/// [`PORTMAP_DELETE_WAIT`].
pub async fn release_all() {
    let (cancel, tracker) = &*LEASES;
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(PORTMAP_DELETE_WAIT, tracker.wait()).await;
}

/// A mapping held from the router: renewed while it lives, deleted when dropped.
#[derive(Debug)]
pub struct Lease {
    /// The public address the router forwards to this host's port.
    pub external: SocketAddrV4,
    /// The protocol that made it.
    pub protocol: Protocol,
    _stop: DropGuard,
}

impl Mapper {
    /// A mapper using `mode`, asking for leases of `lease`.
    pub fn new(mode: Mode, lease: Duration) -> Self {
        Self {
            mode,
            lease,
            found: tokio::sync::OnceCell::new(),
        }
    }

    /// A mapper that never asks (tests, `--no-portmap`).
    pub fn off() -> Self {
        Self::new(Mode::Off, PORTMAP_LEASE)
    }

    /// The protocol in use, found on first call (PCP, NAT-PMP and UPnP asked at once,
    /// each within its short timeout); `None` if none answered or the mode is off.
    pub async fn protocol(&self) -> Option<Protocol> {
        self.backend().await.map(|b| b.protocol)
    }

    async fn backend(&self) -> Option<&Backend> {
        self.found
            .get_or_init(|| async {
                let candidates: Vec<Protocol> = match self.mode {
                    Mode::Off => return None,
                    Mode::Auto => Protocol::ALL.to_vec(),
                    Mode::Only(p) => vec![p],
                };
                let (gateway, client) = match gateway().await {
                    Ok(g) => g,
                    Err(e) => {
                        info!(%e, "no port mapping");
                        return None;
                    }
                };
                let chosen = first_preferred(&candidates, gateway, client).await;
                match &chosen {
                    Some(b) => info!(protocol = b.protocol.name(), %gateway, external = ?b.external_ip, "router offers port mappings"),
                    None => info!(%gateway, "the router offers no port mapping (PCP, NAT-PMP, UPnP)"),
                }
                chosen
            })
            .await
            .as_ref()
    }

    /// Asks the router to forward TCP `local_port` of this host (same port outside if
    /// free); `None` if no protocol answered (or the discovery has not finished: a
    /// punch never waits for it) or the router refused (logged).
    pub async fn map(&self, local_port: u16) -> Option<Lease> {
        let backend = self.found.get()?.as_ref()?.clone();
        let lease = self.lease.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        let nonce: [u8; 12] = rand::random();
        let req = Request {
            internal_port: local_port,
            lifetime: lease,
            nonce,
        };
        let granted = match request(&backend, &req, local_port).await {
            Ok(g) => g,
            Err(e) => {
                warn!(protocol = backend.protocol.name(), port = local_port, %e, "port mapping refused");
                return None;
            }
        };
        let Some(ip) = granted.external_ip.or(backend.external_ip) else {
            warn!(
                protocol = backend.protocol.name(),
                "the router did not say its external address"
            );
            let _ = delete(&backend, &req, granted.external_port).await;
            return None;
        };
        let external = SocketAddrV4::new(ip, granted.external_port);
        info!(protocol = backend.protocol.name(), local_port, %external, lifetime = granted.lifetime, "port mapped");
        let (cancel, tracker) = &*LEASES;
        let stop = cancel.child_token();
        let task_stop = stop.clone();
        tracker.spawn(keep(backend.clone(), req, granted, task_stop));
        Some(Lease {
            external,
            protocol: backend.protocol,
            _stop: stop.drop_guard(),
        })
    }

    /// For `nat-check`: asks each protocol (all three, whatever the mode but off) for a
    /// mapping of a bound test port, reports the mapped address, and deletes it.
    pub async fn probe_all(&self) -> Vec<ProbeResult> {
        if self.mode == Mode::Off {
            return Vec::new();
        }
        let (gateway, client) = match gateway().await {
            Ok(g) => g,
            Err(e) => {
                return Protocol::ALL
                    .iter()
                    .map(|&protocol| ProbeResult {
                        protocol,
                        mapped: None,
                        error: Some(e.to_string()),
                    })
                    .collect()
            }
        };
        let one = |protocol: Protocol| async move {
            match probe_one(protocol, gateway, client).await {
                Ok(mapped) => ProbeResult {
                    protocol,
                    mapped: Some(mapped),
                    error: None,
                },
                Err(e) => ProbeResult {
                    protocol,
                    mapped: None,
                    error: Some(e.to_string()),
                },
            }
        };
        futures::future::join_all(Protocol::ALL.map(one)).await
    }
}

/// Asks every candidate at once; returns the most preferred one that answers as soon
/// as every more preferred one has failed (a router that answers PCP is not kept
/// waiting for a silent SSDP search).
async fn first_preferred(
    candidates: &[Protocol],
    gateway: Ipv4Addr,
    client: Ipv4Addr,
) -> Option<Backend> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut pending: FuturesUnordered<_> = candidates
        .iter()
        .enumerate()
        .map(|(i, &p)| async move { (i, discover(p, gateway, client).await) })
        .collect();
    let mut results: Vec<Option<Result<Backend, PortmapError>>> = vec![None; candidates.len()];
    while let Some((i, r)) = pending.next().await {
        if let Err(e) = &r {
            debug!(protocol = candidates[i].name(), %e, "no port mapping");
        }
        results[i] = Some(r);
        for r in &results {
            match r {
                None => break,
                Some(Ok(b)) => return Some(b.clone()),
                Some(Err(_)) => continue,
            }
        }
    }
    None
}

/// One protocol: discover, map a test port (a bound listener, so the mapping points at
/// something real), delete.
async fn probe_one(
    protocol: Protocol,
    gateway: Ipv4Addr,
    client: Ipv4Addr,
) -> Result<SocketAddrV4, PortmapError> {
    let backend = discover(protocol, gateway, client).await?;
    let listener = tokio::net::TcpListener::bind((client, 0))
        .await
        .map_err(|e| PortmapError::Io(e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| PortmapError::Io(e.to_string()))?
        .port();
    let req = Request {
        internal_port: port,
        lifetime: PORTMAP_PROBE_LEASE,
        nonce: rand::random(),
    };
    let granted = request(&backend, &req, port).await?;
    let _ = delete(&backend, &req, granted.external_port).await;
    let ip = granted
        .external_ip
        .or(backend.external_ip)
        .ok_or_else(|| PortmapError::Io("no external address".into()))?;
    Ok(SocketAddrV4::new(ip, granted.external_port))
}

/// The lease of `nat-check`'s test mapping (deleted at once; this bounds it if the
/// delete is lost).
const PORTMAP_PROBE_LEASE: u32 = 30;

/// One mapping's parameters, kept for renewals and the delete.
#[derive(Debug, Clone, Copy)]
struct Request {
    internal_port: u16,
    lifetime: u32,
    /// PCP's mapping nonce (renewals and the delete must repeat it).
    nonce: [u8; 12],
}

/// Renews at half the granted lifetime until stopped, then deletes.
async fn keep(backend: Backend, req: Request, mut granted: Granted, stop: CancellationToken) {
    loop {
        let half = Duration::from_millis(u64::from(granted.lifetime.max(1)) * 500);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(half) => {}
        }
        match request(&backend, &req, granted.external_port).await {
            Ok(g) => {
                info!(
                    protocol = backend.protocol.name(),
                    port = g.external_port,
                    lifetime = g.lifetime,
                    "port mapping renewed"
                );
                if g.external_port != granted.external_port {
                    warn!(
                        was = granted.external_port,
                        now = g.external_port,
                        "the router moved the mapping"
                    );
                }
                granted = g;
            }
            Err(e) => {
                warn!(protocol = backend.protocol.name(), %e, "port mapping renewal failed; retrying")
            }
        }
    }
    match delete(&backend, &req, granted.external_port).await {
        Ok(()) => info!(
            protocol = backend.protocol.name(),
            port = granted.external_port,
            "port mapping deleted"
        ),
        Err(e) => {
            warn!(protocol = backend.protocol.name(), %e, "port mapping delete failed (it expires with its lease)")
        }
    }
}

/// The default gateway and this host's address towards it (no packet is sent).
async fn gateway() -> Result<(Ipv4Addr, Ipv4Addr), PortmapError> {
    let table = tokio::fs::read_to_string("/proc/net/route")
        .await
        .map_err(|_| PortmapError::NoGateway)?;
    let gw = wire::default_gateway(&table).ok_or(PortmapError::NoGateway)?;
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| PortmapError::Io(e.to_string()))?;
    udp.connect((gw, wire::SERVER_PORT))
        .await
        .map_err(|e| PortmapError::Io(e.to_string()))?;
    match udp.local_addr() {
        Ok(SocketAddr::V4(a)) => Ok((gw, *a.ip())),
        Ok(_) => Err(PortmapError::NoGateway),
        Err(e) => Err(PortmapError::Io(e.to_string())),
    }
}

/// Whether `protocol` answers at `gateway`, and its external address if it says.
async fn discover(
    protocol: Protocol,
    gateway: Ipv4Addr,
    client: Ipv4Addr,
) -> Result<Backend, PortmapError> {
    let mut backend = Backend {
        protocol,
        gateway,
        client,
        external_ip: None,
        upnp: None,
    };
    match protocol {
        Protocol::Pcp => {
            exchange(gateway, &wire::pcp_announce_request(client), |b| {
                wire::pcp_announce_response(b)
            })
            .await?;
        }
        Protocol::NatPmp => {
            let ip = exchange(gateway, &wire::natpmp_address_request(), |b| {
                wire::natpmp_address_response(b)
            })
            .await?;
            backend.external_ip = Some(ip);
        }
        Protocol::Upnp => {
            let mut options = igd_next::SearchOptions::default();
            options.bind_addr = SocketAddr::from((client, 0));
            // Unicast to the gateway: miniupnpd and other IGDs answer an M-SEARCH on
            // their SSDP port; nothing goes to the multicast group.
            options.broadcast_address = SocketAddr::from((gateway, 1900));
            options.timeout = Some(PORTMAP_UPNP_TIMEOUT);
            options.single_search_timeout = Some(PORTMAP_UPNP_TIMEOUT);
            // igd-next searches from an unconnected socket, which never hears the ICMP
            // "port unreachable" of a router without UPnP and so waits out its
            // timeout; a connected socket of our own hears it at once.
            let search = async {
                tokio::time::timeout(
                    PORTMAP_UPNP_TIMEOUT,
                    igd_next::aio::tokio::search_gateway(options),
                )
                .await
                .map_err(|_| PortmapError::NoAnswer(protocol.name().into()))?
                .map_err(|e| PortmapError::NoAnswer(format!("{}: {e}", protocol.name())))
            };
            let gw = tokio::select! {
                gw = search => gw?,
                e = ssdp_refused(gateway, client) => {
                    return Err(PortmapError::NoAnswer(format!("{}: {e}", protocol.name())));
                }
            };
            if gw.addr.ip() != std::net::IpAddr::V4(gateway) {
                return Err(PortmapError::Io(format!(
                    "the UPnP device is at {}, not at the gateway {gateway}",
                    gw.addr
                )));
            }
            let ip = tokio::time::timeout(PORTMAP_UPNP_TIMEOUT, gw.get_external_ip())
                .await
                .map_err(|_| PortmapError::NoAnswer(protocol.name().into()))?
                .map_err(|e| PortmapError::Io(format!("UPnP GetExternalIPAddress: {e}")))?;
            backend.external_ip = match ip {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            };
            backend.upnp = Some(Arc::new(gw));
        }
    }
    Ok(backend)
}

/// Completes only when the gateway refuses an SSDP search on port 1900 (an ICMP port
/// unreachable, seen on a connected UDP socket): there is no UPnP device there.
/// Pending otherwise (an answer, silence, or a local error), so that igd-next's own
/// search decides.
async fn ssdp_refused(gateway: Ipv4Addr, client: Ipv4Addr) -> std::io::Error {
    let refused = async {
        let udp = UdpSocket::bind((client, 0)).await.ok()?;
        udp.connect((gateway, 1900)).await.ok()?;
        let search = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\
                      ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                      MAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n";
        let refusal =
            |e: std::io::Error| (e.kind() == std::io::ErrorKind::ConnectionRefused).then_some(e);
        if let Err(e) = udp.send(search.as_bytes()).await {
            return refusal(e);
        }
        let mut buf = [0u8; 1500];
        loop {
            if let Err(e) = udp.recv(&mut buf).await {
                return refusal(e);
            }
        }
    };
    match refused.await {
        Some(e) => e,
        None => std::future::pending().await,
    }
}

/// Asks for (or renews) the mapping of `req`, suggesting `external_port`.
async fn request(
    backend: &Backend,
    req: &Request,
    external_port: u16,
) -> Result<Granted, PortmapError> {
    let port = req.internal_port;
    match backend.protocol {
        Protocol::Pcp => {
            let msg =
                wire::pcp_map_request(backend.client, req.nonce, port, external_port, req.lifetime);
            exchange(backend.gateway, &msg, |b| {
                wire::pcp_map_response(b, req.nonce, port)
            })
            .await
        }
        Protocol::NatPmp => {
            let msg = wire::natpmp_map_request(port, external_port, req.lifetime);
            exchange(backend.gateway, &msg, |b| {
                wire::natpmp_map_response(b, port)
            })
            .await
        }
        Protocol::Upnp => {
            let gw = backend
                .upnp
                .as_ref()
                .ok_or_else(|| PortmapError::Io("no UPnP device".into()))?;
            let local = SocketAddr::from((backend.client, port));
            tokio::time::timeout(
                PORTMAP_UPNP_TIMEOUT,
                gw.add_port(
                    igd_next::PortMappingProtocol::TCP,
                    external_port,
                    local,
                    req.lifetime,
                    "punchline",
                ),
            )
            .await
            .map_err(|_| PortmapError::NoAnswer("UPnP AddPortMapping".into()))?
            .map_err(|e| PortmapError::Io(format!("UPnP AddPortMapping: {e}")))?;
            Ok(Granted {
                external_port,
                lifetime: req.lifetime,
                external_ip: backend.external_ip,
            })
        }
    }
}

/// Deletes the mapping of `req` (external port `external_port`).
async fn delete(backend: &Backend, req: &Request, external_port: u16) -> Result<(), PortmapError> {
    let port = req.internal_port;
    match backend.protocol {
        Protocol::Pcp => {
            let msg = wire::pcp_map_request(backend.client, req.nonce, port, external_port, 0);
            exchange(backend.gateway, &msg, |b| {
                wire::pcp_map_response(b, req.nonce, port)
            })
            .await
            .map(drop)
        }
        Protocol::NatPmp => {
            let msg = wire::natpmp_map_request(port, 0, 0);
            exchange(backend.gateway, &msg, |b| {
                wire::natpmp_map_response(b, port)
            })
            .await
            .map(drop)
        }
        Protocol::Upnp => {
            let gw = backend
                .upnp
                .as_ref()
                .ok_or_else(|| PortmapError::Io("no UPnP device".into()))?;
            tokio::time::timeout(
                PORTMAP_UPNP_TIMEOUT,
                gw.remove_port(igd_next::PortMappingProtocol::TCP, external_port),
            )
            .await
            .map_err(|_| PortmapError::NoAnswer("UPnP DeletePortMapping".into()))?
            .map_err(|e| PortmapError::Io(format!("UPnP DeletePortMapping: {e}")))
        }
    }
}

/// Sends `msg` to the gateway's PCP / NAT-PMP port and decodes the answer, resending
/// after [`PORTMAP_RTO`], doubled each time, [`PORTMAP_TRIES`] times in all. Datagrams
/// that are not an answer to this request are skipped.
async fn exchange<T>(
    gateway: Ipv4Addr,
    msg: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, WireError>,
) -> Result<T, PortmapError> {
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| PortmapError::Io(e.to_string()))?;
    udp.connect((gateway, wire::SERVER_PORT))
        .await
        .map_err(|e| PortmapError::Io(e.to_string()))?;
    let mut buf = [0u8; 1100];
    let mut rto = PORTMAP_RTO;
    for _ in 0..PORTMAP_TRIES {
        // A refused send (ICMP port unreachable from an earlier try) means no server.
        if let Err(e) = udp.send(msg).await {
            return Err(PortmapError::NoAnswer(format!("{gateway}: {e}")));
        }
        let until = tokio::time::Instant::now() + rto;
        loop {
            match tokio::time::timeout_at(until, udp.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(PortmapError::NoAnswer(format!("{gateway}: {e}"))),
                Ok(Ok(n)) => match decode(&buf[..n]) {
                    Err(WireError::Mismatch) | Err(WireError::Malformed(_)) => continue,
                    r => return r.map_err(Into::into),
                },
            }
        }
        rto *= 2;
    }
    Err(PortmapError::NoAnswer(format!(
        "{gateway}:{}",
        wire::SERVER_PORT
    )))
}
