//! The server's STUN side: answers Binding requests (RFC 8489) over UDP on the server's
//! own port, and with an alternate address (`--alt-addr`) supports RFC 5780 behaviour
//! discovery (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST), so that any STUN client
//! can classify its NAT's mapping and filtering.
//!
//! # Endpoints
//!
//! RFC 5780 wants four endpoints: the primary address A1 and an alternate A2, each on
//! the primary port P1 and an alternate port P2. What the server opens depends on
//! what it is given:
//!
//! | configuration | UDP endpoints | what CHANGE-REQUEST can do |
//! |---|---|---|
//! | `--alt-port off`, no `--alt-addr` | A1:P1 | nothing (a request to change gets 420) |
//! | default (`--alt-port`, P2 = P1 + 1), `--alt-addr` with the same IP, or a wildcard `--bind` | A:P1, A:P2 | change port (change IP gets 400) |
//! | `--bind A1 --alt-addr A2[:P2]`, A1 ≠ A2 | A1:P1, A1:P2, A2:P1, A2:P2 | everything |
//!
//! With a wildcard `--bind` the server cannot tell which of its addresses a request
//! came to, so the alternate address's IP names the server in OTHER-ADDRESS and
//! RESPONSE-ORIGIN: one IP, two ports. When that IP is a wildcard too (the default
//! second port of a plain `rendezvous --port P`), the server names nothing: no
//! OTHER-ADDRESS, no RESPONSE-ORIGIN; `peer nat-check` then finds the second port by
//! the default rule (P + 1) and checks that it answers. For the full test, bind the
//! primary address explicitly.
//!
//! # TCP: STUN over TCP on the alternate endpoints only
//!
//! A NAT maps TCP apart from UDP, and punchline's links are TCP, so `peer nat-check`
//! also needs the TCP mapping towards different server addresses and ports. The
//! primary TCP port already speaks Noise first, and its `Welcome` carries the observed
//! address, authenticated. The alternate endpoints (A1:P2, A2:P1, A2:P2) have no other
//! use, so they speak plain STUN over TCP (RFC 8489 §6.2): any standard client can use
//! them, no second protocol is invented, and the Noise port is not demultiplexed by
//! sniffing. A STUN-over-TCP connection gets a few requests and a short idle time.
//!
//! Over TCP a CHANGE-REQUEST cannot change where a response comes from on the same
//! connection, so it asks for a *dial-back* instead (this server's extension): the
//! server connects from the changed alternate endpoint to the very address the
//! request's connection comes from (an established connection, so never a spoofed or
//! third-party address), sends the response there, and answers on the original
//! connection whether the dial-back got through, or what the NAT did with the
//! unsolicited SYN (RST, ICMP, silence). At most one dial-back runs per connection at
//! a time, each bounded by [`STUN_DIAL_BACK_TIMEOUT`].
//!
//! # Hostile input
//!
//! A datagram that is not a well-formed Binding request (short, no magic cookie and not
//! an RFC 3489 request, a length that disagrees with the datagram, an attribute longer
//! than the message, more than [`MAX_STUN_MESSAGE`] bytes) is dropped without an answer.
//! Responses, indications and other methods are never answered (no loops between
//! servers). Every answer goes to the request's source (the RFC 3489 RESPONSE-ADDRESS
//! is ignored) and is at most [`STUN_AMPLIFICATION`] times the request's size, optional
//! attributes being left out to stay within it, so spoofed requests cannot turn the
//! server into an amplifier.
//!
//! # RFC 3489 clients
//!
//! Requests without the magic cookie come from RFC 3489 clients (Debian's `stun`
//! among them). `stun-rs` decodes only RFC 5389+ messages, so these are answered by
//! a minimal hand encoder: MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS (the
//! RFC 3489 names of the mapped address, RESPONSE-ORIGIN and OTHER-ADDRESS), which
//! `stun-rs` does not define.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use common::{
    defaults::{
        MAX_STUN_MESSAGE, STUN_AMPLIFICATION, STUN_DIAL_BACK_TIMEOUT, STUN_TCP_IDLE,
        STUN_TCP_MAX_CONNS, STUN_TCP_MAX_REQUESTS,
    },
    stun::{self, Change, Class, Reply, BINDING_REQUEST, HEADER_LEN},
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, Instrument};

/// An endpoint's place in the RFC 5780 grid: (IP index, port index), 0 = primary.
type Slot = (usize, usize);

/// Which endpoints exist and the addresses that name them in responses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    /// `present[ip][port]`: whether the server has that endpoint.
    present: [[bool; 2]; 2],
    /// `names[ip][port]`: its address as clients should see it (`None` when the
    /// server listens on a wildcard address and has no alternate to name itself by).
    names: [[Option<SocketAddr>; 2]; 2],
    /// `tcp_bound[ip][port]`: where a STUN-over-TCP listener (shareable with
    /// `SO_REUSEPORT`, so that dial-backs can leave from it) is bound.
    tcp_bound: [[Option<SocketAddr>; 2]; 2],
    /// Where answered requests are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Layout {
    fn has(&self, (i, p): Slot) -> bool {
        self.present[i][p]
    }

    fn name(&self, (i, p): Slot) -> Option<SocketAddr> {
        self.names[i][p]
    }

    /// The endpoint to name in OTHER-ADDRESS for a request that arrived at `at`: the
    /// one differing in both IP and port, or, with one IP, in port.
    fn other(&self, (i, p): Slot) -> Option<SocketAddr> {
        [(i ^ 1, p ^ 1), (i, p ^ 1)]
            .into_iter()
            .find(|s| self.has(*s))
            .and_then(|s| self.name(s))
    }

    /// Whether the server can change anything at all.
    fn has_alternate(&self) -> bool {
        self.present[0][1] || self.present[1][0] || self.present[1][1]
    }
}

/// The STUN endpoints, bound and ready to [`run`](Responder::run).
#[derive(Debug)]
pub(crate) struct Responder {
    layout: Arc<Layout>,
    udp: [[Option<Arc<UdpSocket>>; 2]; 2],
    tcp: Vec<(Slot, TcpListener)>,
    alt: Option<SocketAddr>,
}

impl Responder {
    /// The alternate endpoint (A2:P2, or A:P2 with one IP), if any; with a wildcard
    /// bind and no named alternate, the wildcard address and the alternate port.
    pub(crate) fn alt_addr(&self) -> Option<SocketAddr> {
        self.alt
    }

    /// Counts answered requests in `metrics` (call before [`Responder::run`]).
    pub(crate) fn set_metrics(&mut self, metrics: Arc<crate::metrics::Metrics>) {
        Arc::make_mut(&mut self.layout).metrics = metrics;
    }

    /// Serves until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let socks = Arc::new(self.udp);
        for i in 0..2 {
            for p in 0..2 {
                if socks[i][p].is_some() {
                    let (layout, socks, token) =
                        (self.layout.clone(), socks.clone(), shutdown.clone());
                    tracker.spawn(serve_udp(layout, socks, (i, p), token));
                }
            }
        }
        let limit = Arc::new(Semaphore::new(STUN_TCP_MAX_CONNS));
        for (slot, listener) in self.tcp {
            let (layout, token, limit) = (self.layout.clone(), shutdown.clone(), limit.clone());
            tracker.spawn(serve_tcp(layout, listener, slot, limit, token));
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// A STUN-over-TCP listener whose address dial-backs can share (`SO_REUSEPORT`).
fn stun_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    common::net::reusable_socket(addr)?.listen(1024)
}

fn in_use(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrInUse
}

/// Binds the server's TCP listener on `bind` and the STUN endpoints beside it (see
/// the module doc). With port 0 in `bind` or `alt`, ports are chosen so that UDP gets
/// the same port as TCP, retrying a few times if another program holds it.
///
/// `alt_next`: the alternate port is the primary port + 1, whatever port the primary
/// gets (a server on port 0 still has its second port where peers look for it).
pub(crate) async fn bind(
    bind: SocketAddr,
    alt: Option<SocketAddr>,
    alt_next: bool,
) -> io::Result<(TcpListener, Responder)> {
    if let Some(alt) = alt {
        if alt.is_ipv4() != bind.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("alternate address {alt} is not of the same family as {bind}"),
            ));
        }
        if alt.port() != 0 && alt.port() == bind.port() && alt.ip() == bind.ip() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("alternate address {alt} is the primary address"),
            ));
        }
    }
    let tries = if bind.port() == 0 || alt.is_some_and(|a| a.port() == 0 && !alt_next) {
        8
    } else {
        1
    };
    let mut last = None;
    for _ in 0..tries {
        match try_bind(bind, alt, alt_next).await {
            Ok(x) => return Ok(x),
            Err(e) if in_use(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

async fn try_bind(
    bind: SocketAddr,
    alt: Option<SocketAddr>,
    alt_next: bool,
) -> io::Result<(TcpListener, Responder)> {
    let listener = TcpListener::bind(bind).await?;
    let p1 = listener.local_addr()?.port();
    let alt = match alt {
        Some(a) if alt_next => match p1.checked_add(1) {
            Some(p2) => Some(SocketAddr::new(a.ip(), p2)),
            // Port 65535 has no next port: the server gets a free one.
            None => Some(SocketAddr::new(a.ip(), 0)),
        },
        a => a,
    };
    let a1 = bind.ip();
    let mut udp: [[Option<Arc<UdpSocket>>; 2]; 2] = Default::default();
    let mut tcp = Vec::new();
    let mut layout = Layout::default();
    udp[0][0] = Some(Arc::new(UdpSocket::bind((a1, p1)).await?));
    layout.present[0][0] = true;
    let Some(alt) = alt else {
        layout.names[0][0] = (!a1.is_unspecified()).then_some(SocketAddr::new(a1, p1));
        let responder = Responder {
            layout: Arc::new(layout),
            udp,
            tcp,
            alt: None,
        };
        return Ok((listener, responder));
    };
    let a2 = alt.ip();
    let two_ips = !a1.is_unspecified() && a2 != a1;
    // The alternate port: as given, or whatever the first alternate socket gets.
    let first = UdpSocket::bind((a1, alt.port())).await?;
    let p2 = first.local_addr()?.port();
    if p2 == p1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the alternate port must differ from the primary port {p1}"),
        ));
    }
    udp[0][1] = Some(Arc::new(first));
    layout.present[0][1] = true;
    tcp.push(((0, 1), stun_listener(SocketAddr::new(a1, p2))?));
    layout.tcp_bound[0][1] = Some(SocketAddr::new(a1, p2));
    let name_ip = |i: usize| match (i, two_ips) {
        (1, _) => a2,
        (_, true) => a1,
        // One IP: a wildcard bind is named by the alternate's IP.
        (_, false) if a1.is_unspecified() => a2,
        _ => a1,
    };
    if two_ips {
        for p in [(0usize, p1), (1, p2)] {
            udp[1][p.0] = Some(Arc::new(UdpSocket::bind((a2, p.1)).await?));
            layout.present[1][p.0] = true;
            tcp.push(((1, p.0), stun_listener(SocketAddr::new(a2, p.1))?));
            layout.tcp_bound[1][p.0] = Some(SocketAddr::new(a2, p.1));
        }
    }
    for (i, row) in layout.names.iter_mut().enumerate() {
        for (p, name) in row.iter_mut().enumerate() {
            // A wildcard address names nothing: leave OTHER-ADDRESS and
            // RESPONSE-ORIGIN out rather than tell clients to send to 0.0.0.0.
            let ip = name_ip(i);
            *name = (!ip.is_unspecified()).then_some(SocketAddr::new(ip, [p1, p2][p]));
        }
    }
    let alt_name = if two_ips { (1, 1) } else { (0, 1) };
    let responder = Responder {
        alt: layout.name(alt_name).or(Some(SocketAddr::new(a2, p2))),
        layout: Arc::new(layout),
        udp,
        tcp,
    };
    Ok((listener, responder))
}

async fn serve_udp(
    layout: Arc<Layout>,
    socks: Arc<[[Option<Arc<UdpSocket>>; 2]; 2]>,
    at: Slot,
    shutdown: CancellationToken,
) {
    let Some(sock) = socks[at.0][at.1].clone() else {
        return;
    };
    // One byte more than the largest message, to tell an oversized datagram (which
    // the kernel truncates to the buffer) from a maximal one.
    let mut buf = vec![0u8; MAX_STUN_MESSAGE + 1];
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors for earlier sends surface here; nothing to do.
                    debug!(%e, "STUN receive error");
                    continue;
                }
            },
        };
        if n > MAX_STUN_MESSAGE {
            continue;
        }
        let Some((to, reply)) = answer(&layout, at, from, &buf[..n]) else {
            debug!(%from, len = n, "STUN datagram dropped");
            continue;
        };
        let Some(out) = socks[to.0][to.1].as_ref() else {
            continue;
        };
        layout.metrics.stun_request(false);
        if let Err(e) = out.send_to(&reply, from).await {
            debug!(%from, %e, "STUN send failed");
        }
    }
}

async fn serve_tcp(
    layout: Arc<Layout>,
    listener: TcpListener,
    at: Slot,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    crate::accept::serve(
        "STUN over TCP",
        &listener,
        limit,
        &tracker,
        &shutdown,
        |stream, from| {
            let (layout, token) = (layout.clone(), shutdown.clone());
            Some(
                async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = stun_over_tcp(&layout, at, stream, from) => {}
                    }
                }
                .instrument(tracing::debug_span!("stun-tcp", %from)),
            )
        },
    )
    .await;
    tracker.close();
    tracker.wait().await;
}

/// Answers Binding requests on one STUN-over-TCP connection; a malformed message,
/// silence for [`STUN_TCP_IDLE`] or [`STUN_TCP_MAX_REQUESTS`] requests end it.
async fn stun_over_tcp(layout: &Layout, at: Slot, mut stream: TcpStream, from: SocketAddr) {
    for _ in 0..STUN_TCP_MAX_REQUESTS {
        let req = match tokio::time::timeout(STUN_TCP_IDLE, stun::read_message(&mut stream)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                debug!(%e, "STUN over TCP: connection ends");
                return;
            }
            Err(_) => return,
        };
        let Some(reply) = answer_tcp(layout, at, from, &req).await else {
            debug!("STUN over TCP: not a Binding request; closing");
            return;
        };
        layout.metrics.stun_request(true);
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// The answer to one request over TCP. A CHANGE-REQUEST asks for a *dial-back*: the
/// server connects from the changed endpoint to the address this connection comes
/// from (never anywhere else) and sends the Binding response over that connection;
/// this connection then gets the same response if the dial-back got through, or a
/// 500 error saying what the client's NAT did with the unsolicited SYN. That is how
/// `peer nat-check` measures TCP filtering.
async fn answer_tcp(layout: &Layout, at: Slot, from: SocketAddr, req: &[u8]) -> Option<Vec<u8>> {
    let msg = stun::decode(req).ok()?;
    if msg.class != Class::Request || !msg.binding {
        return None;
    }
    let reply = if !msg.unknown_required.is_empty() {
        stun::binding_error(msg.tid, 420, "Unknown Attribute", &msg.unknown_required)
    } else if msg.change.any() {
        let to = (
            at.0 ^ usize::from(msg.change.ip),
            at.1 ^ usize::from(msg.change.port),
        );
        let reply = Reply {
            mapped: from,
            other: layout.other(to),
            origin: layout.name(to),
        };
        match layout.tcp_bound[to.0][to.1] {
            None => stun::binding_error(msg.tid, 400, "no TCP endpoint to dial back from", &[]),
            Some(source) => {
                let bytes = stun::binding_success(msg.tid, &reply, true).ok()?;
                match dial_back(source, from, &bytes).await {
                    Ok(()) => Ok(bytes),
                    Err(why) => stun::binding_error(msg.tid, 500, &why, &[]),
                }
            }
        }
    } else {
        let reply = Reply {
            mapped: from,
            other: layout.other(at),
            origin: layout.name(at),
        };
        stun::binding_success(msg.tid, &reply, true)
    };
    reply.ok()
}

/// Connects from `source` to `to` and sends `bytes`; on failure, why, in words that
/// say what the NAT in front of `to` did.
async fn dial_back(source: SocketAddr, to: SocketAddr, bytes: &[u8]) -> Result<(), String> {
    let attempt = async {
        let sock = common::net::reusable_socket(source)?;
        let mut s = sock.connect(to).await?;
        s.write_all(bytes).await?;
        let _ = s.shutdown().await;
        Ok::<(), io::Error>(())
    };
    match tokio::time::timeout(STUN_DIAL_BACK_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err("dial-back refused (RST or ICMP)".into())
        }
        Ok(Err(e)) => Err(format!("dial-back failed: {}", e.kind())),
        Err(_) => Err("dial-back got no answer (dropped)".into()),
    }
}

/// The answer to one UDP datagram that arrived at endpoint `at` from `from`: the
/// endpoint to send it from and the bytes, or `None` to drop the datagram.
pub(crate) fn answer(
    layout: &Layout,
    at: Slot,
    from: SocketAddr,
    req: &[u8],
) -> Option<(Slot, Vec<u8>)> {
    let (msg_type, cookie) = stun::check_header(req).ok()?;
    if msg_type != BINDING_REQUEST {
        return None;
    }
    let bound = req.len() * STUN_AMPLIFICATION;
    if !cookie {
        return legacy::answer(layout, at, from, req, bound);
    }
    let msg = stun::decode(req).ok()?;
    let error = |code: u16, reason: &str, unknown: &[u16]| {
        let bytes = stun::binding_error(msg.tid, code, reason, unknown).ok()?;
        (bytes.len() <= bound).then_some((at, bytes))
    };
    if !msg.unknown_required.is_empty() {
        return error(420, "Unknown Attribute", &msg.unknown_required);
    }
    let to = (
        at.0 ^ usize::from(msg.change.ip),
        at.1 ^ usize::from(msg.change.port),
    );
    if !layout.has(to) {
        return if layout.has_alternate() {
            error(400, "no alternate IP address", &[])
        } else {
            error(420, "Unknown Attribute", &[0x0003])
        };
    }
    // Everything first; then, while too large, without FINGERPRINT, RESPONSE-ORIGIN
    // and OTHER-ADDRESS in turn. XOR-MAPPED-ADDRESS alone always fits.
    let full = Reply {
        mapped: from,
        other: layout.other(at),
        origin: layout.name(to),
    };
    let candidates = [
        (full, true),
        (full, false),
        (
            Reply {
                origin: None,
                ..full
            },
            false,
        ),
        (
            Reply {
                origin: None,
                other: None,
                ..full
            },
            false,
        ),
    ];
    candidates.iter().find_map(|(reply, fingerprint)| {
        let bytes = stun::binding_success(msg.tid, reply, *fingerprint).ok()?;
        (bytes.len() <= bound).then_some((to, bytes))
    })
}

/// Logs what the server offers, once at start.
pub(crate) fn log_layout(r: &Responder) {
    let l = &r.layout;
    let names: Vec<String> = [(0, 0), (0, 1), (1, 0), (1, 1)]
        .into_iter()
        .filter(|s| l.has(*s))
        .map(|s| match l.name(s) {
            Some(n) => n.to_string(),
            None => "primary".to_string(),
        })
        .collect();
    let what = match (l.has((0, 1)), l.has((1, 0))) {
        (false, _) => "Binding only (no --alt-addr: no RFC 5780 behaviour discovery)",
        (true, false) => "RFC 5780 with one IP: change-port only",
        (true, true) => "RFC 5780: change-IP and change-port",
    };
    info!(endpoints = %names.join(", "), "STUN over UDP: {what}");
}

/// RFC 3489 requests (no magic cookie, a 128-bit transaction ID).
mod legacy {
    use super::*;

    const MAPPED_ADDRESS: u16 = 0x0001;
    const CHANGE_REQUEST: u16 = 0x0003;
    const SOURCE_ADDRESS: u16 = 0x0004;
    const CHANGED_ADDRESS: u16 = 0x0005;
    const ERROR_CODE: u16 = 0x0009;

    pub(super) fn answer(
        layout: &Layout,
        at: Slot,
        from: SocketAddr,
        req: &[u8],
        bound: usize,
    ) -> Option<(Slot, Vec<u8>)> {
        let change = change_request(&req[HEADER_LEN..])?;
        let to = (
            at.0 ^ usize::from(change.ip),
            at.1 ^ usize::from(change.port),
        );
        let mut out = Vec::with_capacity(HEADER_LEN + 60);
        if layout.has(to) {
            out.extend_from_slice(&0x0101u16.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&req[4..HEADER_LEN]);
            address(&mut out, MAPPED_ADDRESS, from);
            if let Some(origin) = layout.name(to) {
                address(&mut out, SOURCE_ADDRESS, origin);
            }
            if let Some(other) = layout.other(at) {
                address(&mut out, CHANGED_ADDRESS, other);
            }
        } else {
            // 400 rather than silence: the client must not take it for filtering.
            let reason = b"No alternate address";
            out.extend_from_slice(&0x0111u16.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&req[4..HEADER_LEN]);
            let len = 4 + reason.len().next_multiple_of(4);
            out.extend_from_slice(&ERROR_CODE.to_be_bytes());
            out.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
            out.extend_from_slice(&[0, 0, 4, 0]);
            out.extend_from_slice(reason);
            out.resize(HEADER_LEN + 4 + len, b' ');
        }
        let body = u16::try_from(out.len() - HEADER_LEN).ok()?;
        out[2..4].copy_from_slice(&body.to_be_bytes());
        (out.len() <= bound).then_some((to, out))
    }

    /// The CHANGE-REQUEST flags among the attributes, `None` if they are malformed.
    fn change_request(mut attrs: &[u8]) -> Option<Change> {
        let mut change = Change::NONE;
        while !attrs.is_empty() {
            let head = attrs.get(..4)?;
            let t = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = attrs.get(4..4 + len)?;
            if t == CHANGE_REQUEST && len == 4 {
                change = Change {
                    ip: value[3] & 0x04 != 0,
                    port: value[3] & 0x02 != 0,
                };
            }
            attrs = attrs.get(4 + len.next_multiple_of(4)..).unwrap_or(&[]);
        }
        Some(change)
    }

    fn address(out: &mut Vec<u8>, t: u16, a: SocketAddr) {
        let (family, ip): (u8, Vec<u8>) = match a.ip() {
            IpAddr::V4(v4) => (1, v4.octets().to_vec()),
            IpAddr::V6(v6) => (2, v6.octets().to_vec()),
        };
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&(4 + ip.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, family]);
        out.extend_from_slice(&a.port().to_be_bytes());
        out.extend_from_slice(&ip);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use common::stun::{binding_request, decode};

    fn full_layout() -> Layout {
        let mut l = Layout::default();
        for i in 0..2 {
            for p in 0..2 {
                l.present[i][p] = true;
                l.names[i][p] = Some(SocketAddr::new(
                    ["203.0.113.10", "203.0.113.11"][i].parse().unwrap(),
                    [3478, 3479][p],
                ));
            }
        }
        l
    }

    fn from() -> SocketAddr {
        "198.51.100.7:40000".parse().unwrap()
    }

    #[test]
    fn change_request_picks_the_endpoint_and_names_it() {
        let l = full_layout();
        for (change, slot) in [
            (Change::NONE, (0, 0)),
            (Change::PORT, (0, 1)),
            (Change::BOTH, (1, 1)),
            (
                Change {
                    ip: true,
                    port: false,
                },
                (1, 0),
            ),
        ] {
            let req = binding_request([9; 12], change).unwrap();
            let (to, bytes) = answer(&l, (0, 0), from(), &req).unwrap();
            assert_eq!(to, slot);
            let m = decode(&bytes).unwrap();
            assert_eq!(m.class, Class::Success);
            assert_eq!(m.tid, [9; 12]);
            assert_eq!(m.mapped, Some(from()));
            assert_eq!(m.origin, l.name(slot));
            assert_eq!(m.other, l.name((1, 1)));
            assert!(bytes.len() <= req.len() * STUN_AMPLIFICATION);
        }
    }

    #[test]
    fn without_alternate_a_change_gets_420_and_plain_requests_an_answer() {
        let mut l = Layout::default();
        l.present[0][0] = true;
        let req = binding_request([1; 12], Change::PORT).unwrap();
        let (_, bytes) = answer(&l, (0, 0), from(), &req).unwrap();
        assert_eq!(decode(&bytes).unwrap().error.unwrap().0, 420);
        let req = binding_request([1; 12], Change::NONE).unwrap();
        let (_, bytes) = answer(&l, (0, 0), from(), &req).unwrap();
        let m = decode(&bytes).unwrap();
        assert_eq!((m.mapped, m.other, m.origin), (Some(from()), None, None));
    }

    #[test]
    fn ipv6_answers_stay_within_the_bound() {
        let mut l = Layout::default();
        for i in 0..2 {
            for p in 0..2 {
                l.present[i][p] = true;
                l.names[i][p] = Some(
                    format!("[2001:db8::{}]:{}", i + 1, 3478 + p)
                        .parse()
                        .unwrap(),
                );
            }
        }
        let v6: SocketAddr = "[2001:db8:ffff::7]:40000".parse().unwrap();
        let req = binding_request([2; 12], Change::NONE).unwrap();
        let (_, bytes) = answer(&l, (0, 0), v6, &req).unwrap();
        assert!(bytes.len() <= 80, "{}", bytes.len());
        assert_eq!(decode(&bytes).unwrap().mapped, Some(v6));
    }

    #[test]
    fn legacy_requests_get_rfc3489_answers() {
        let l = full_layout();
        // What Debian's `stun` sends: no cookie, CHANGE-REQUEST change IP and port.
        let mut req = vec![0, 1, 0, 8];
        req.extend_from_slice(&[0xab; 16]);
        req.extend_from_slice(&[0, 3, 0, 4, 0, 0, 0, 6]);
        let (to, bytes) = answer(&l, (0, 0), from(), &req).unwrap();
        assert_eq!(to, (1, 1));
        assert_eq!(&bytes[..2], &[1, 1]);
        assert_eq!(&bytes[4..20], &[0xab; 16]);
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            bytes.len() - 20
        );
        // MAPPED-ADDRESS first: family 1, port 40000, 198.51.100.7.
        assert_eq!(
            &bytes[20..32],
            &[0, 1, 0, 8, 0, 1, 0x9c, 0x40, 198, 51, 100, 7]
        );
        assert!(bytes.len() <= req.len() * STUN_AMPLIFICATION);
        // Truncated attributes: dropped.
        req[3] = 12;
        req.extend_from_slice(&[0, 3, 0, 200]);
        assert!(answer(&l, (0, 0), from(), &req).is_none());
    }

    #[test]
    fn junk_is_dropped() {
        let l = full_layout();
        let good = binding_request([5; 12], Change::NONE).unwrap();
        let mut response = good.clone();
        response[0] = 1; // 0x0101: a response, never answered
        let mut indication = good.clone();
        indication[1] = 0x11;
        let mut wrong_len = good.clone();
        wrong_len[3] = 4;
        for junk in [
            &good[..10],
            &response,
            &indication,
            &wrong_len,
            &[0xffu8; 64][..],
        ] {
            assert!(answer(&l, (0, 0), from(), junk).is_none(), "{junk:?}");
        }
    }
}
