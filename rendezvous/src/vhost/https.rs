//! The HTTPS virtual hosts (frp's `vhostHTTPSPort`): TLS connections routed by the
//! server name of their ClientHello (SNI) to the peer that claims it, without
//! terminating TLS. The certificate and keys stay with the service behind the peer.
//!
//! Each connection: read the ClientHello ([`super::sni`]) within
//! [`VhostConfig::idle_timeout`] and at most [`MAX_CLIENT_HELLO`] bytes; look the name
//! up in a [`Vhosts`] table of its own (exact names, subdomains, wildcards, as for
//! HTTP; path `/`); open a stream to the route's peer, replay the bytes read, and
//! splice. A name nobody claims, a hello without a name, anything that is not a
//! ClientHello, a silent client or an offline peer: the connection is closed (a TLS
//! client reports it), and the server logs why (one line a second at most).
//!
//! The tcpmux port (frp's `tcpmuxHTTPConnectPort`, [`serve_connect`]) works the same
//! way with an HTTP CONNECT request in place of the ClientHello: `CONNECT host:port
//! HTTP/1.1` routes by host, the server answers `200 Connection established` once the
//! peer's stream is open, and the bytes after the request head go to the peer. There
//! the refusals are HTTP answers (400, 404, 405, 502) before the close.

use std::sync::{Arc, Mutex, PoisonError};

use common::defaults::MAX_CLIENT_HELLO;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, Instrument};

use super::{
    sni::{self, Hello},
    table::normalize_host,
    VhostConfig, Vhosts,
};
use crate::limit::{Clients, LogLimit};

/// What the clients of a listener send first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    /// A TLS ClientHello, routed by its server name.
    Tls,
    /// An HTTP CONNECT request, routed by its host.
    Connect,
}

/// Why a connection was closed before it reached a peer.
#[derive(Debug)]
enum Closed {
    BadConnect(&'static str),
    Io(std::io::Error),
    Silent,
    TooLong,
    NotHello(sni::NotHello),
    NoName,
    Unknown(String),
    Offline(String),
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Io(e) => write!(f, "{e}"),
            Closed::BadConnect(why) => f.write_str(why),
            Closed::Silent => f.write_str("no ClientHello within the idle timeout"),
            Closed::TooLong => write!(f, "no server name in the first {MAX_CLIENT_HELLO} bytes"),
            Closed::NotHello(e) => write!(f, "{e}"),
            Closed::NoName => f.write_str("a ClientHello without a server name (SNI)"),
            Closed::Unknown(h) => write!(f, "no proxy serves {h}"),
            Closed::Offline(h) => write!(f, "the peer serving {h} is offline"),
        }
    }
}

/// Serves TLS on `listener`, routing by `vhosts`, until `shutdown` is cancelled; then
/// stops accepting and ends the connections it carries.
pub async fn serve(
    listener: TcpListener,
    vhosts: Arc<Vhosts>,
    cfg: VhostConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_front(Front::Tls, listener, vhosts, cfg, shutdown).await
}

/// Serves HTTP CONNECT on `listener` (the tcpmux port), routing by `vhosts`, until
/// `shutdown` is cancelled.
pub async fn serve_connect(
    listener: TcpListener,
    vhosts: Arc<Vhosts>,
    cfg: VhostConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_front(Front::Connect, listener, vhosts, cfg, shutdown).await
}

async fn serve_front(
    front: Front,
    listener: TcpListener,
    vhosts: Arc<Vhosts>,
    cfg: VhostConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let what = match front {
        Front::Tls => "https vhost",
        Front::Connect => "tcpmux",
    };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "{what} listening");
    }
    let clients = Clients::new(cfg.max_per_client);
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let conns = TaskTracker::new();
    let log = Arc::new(Mutex::new(LogLimit::default()));
    crate::accept::serve(
        what,
        &listener,
        permits,
        &conns,
        &shutdown,
        |tcp, addr| {
            let slot = clients.acquire(addr.ip().to_canonical(), what)?;
            let (vhosts, shutdown, log) = (vhosts.clone(), shutdown.clone(), log.clone());
            let wait = cfg.idle_timeout;
            Some(
                async move {
                    let _slot = slot;
                    tokio::select! {
                        r = connection(front, tcp, &vhosts, wait) => if let Err(why) = r {
                            let ready = log.lock().unwrap_or_else(PoisonError::into_inner)
                                .ready(tokio::time::Instant::now());
                            match ready {
                                Some(suppressed) => info!(%addr, suppressed, "{what} connection closed: {why}"),
                                None => debug!(%addr, "{what} connection closed: {why}"),
                            }
                        },
                        () = shutdown.cancelled() => {}
                    }
                }
                .instrument(tracing::debug_span!("front", what, %addr)),
            )
        },
    )
    .await;
    drop(listener);
    conns.close();
    conns.wait().await;
    Ok(())
}

/// One client connection: its ClientHello or CONNECT request, its route, then the
/// splice. A CONNECT client is told why it is refused.
async fn connection(
    front: Front,
    mut tcp: TcpStream,
    vhosts: &Vhosts,
    wait: std::time::Duration,
) -> Result<(), Closed> {
    let (mut stream, replay) = match route(front, &mut tcp, vhosts, wait).await {
        Ok(x) => x,
        Err(why) => {
            if front == Front::Connect {
                let status = match &why {
                    Closed::BadConnect("not a CONNECT request") => "405 Method Not Allowed",
                    Closed::BadConnect(_) | Closed::TooLong => "400 Bad Request",
                    Closed::Unknown(_) => "404 Not Found",
                    Closed::Offline(_) => "502 Bad Gateway",
                    _ => return Err(why),
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
            }
            return Err(why);
        }
    };
    if front == Front::Connect {
        tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .map_err(Closed::Io)?;
    }
    stream.write_all(&replay).await.map_err(Closed::Io)?;
    let _ = tcp.set_nodelay(true);
    let done = common::splice::splice_carried(tcp, stream).await;
    match done.error {
        None => debug!(up = done.up, down = done.down, "connection done"),
        Some(e) => debug!(up = done.up, down = done.down, %e, "connection reset"),
    }
    Ok(())
}

/// The host named by a CONNECT request head in `buf`: `Ok(None)` until the head is
/// complete; then the host and where the head ends.
fn connect_target(buf: &[u8]) -> Result<Option<(String, usize)>, Closed> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| Closed::BadConnect("a request head that is not text"))?;
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Closed::BadConnect("a malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Err(Closed::BadConnect("a malformed request line"));
    }
    if !method.eq_ignore_ascii_case("CONNECT") {
        return Err(Closed::BadConnect("not a CONNECT request"));
    }
    let host = match target.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => h,
        _ => return Err(Closed::BadConnect("a CONNECT target that is not HOST:PORT")),
    };
    Ok(Some((host.to_string(), end + 4)))
}

/// Reads what the client sends first and opens a stream to the route's peer: the
/// stream and the bytes to replay into it.
async fn route(
    front: Front,
    tcp: &mut TcpStream,
    vhosts: &Vhosts,
    wait: std::time::Duration,
) -> Result<(common::compress::Carried<common::mux::MuxStream>, Vec<u8>), Closed> {
    let mut buf = Vec::with_capacity(2048);
    let read_hello = async {
        let mut chunk = [0u8; 4096];
        loop {
            let room = MAX_CLIENT_HELLO - buf.len();
            if room == 0 {
                return Err(Closed::TooLong);
            }
            let n = tcp
                .read(&mut chunk[..room.min(4096)])
                .await
                .map_err(Closed::Io)?;
            if n == 0 {
                return Err(Closed::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            match front {
                Front::Tls => match sni::parse(&buf).map_err(Closed::NotHello)? {
                    Hello::NeedMore => {}
                    Hello::Name(name) => return Ok((name, 0)),
                    Hello::NoName => return Err(Closed::NoName),
                },
                Front::Connect => {
                    if let Some(found) = connect_target(&buf)? {
                        return Ok(found);
                    }
                }
            }
        }
    };
    let (name, skip) = tokio::time::timeout(wait, read_hello)
        .await
        .map_err(|_| Closed::Silent)??;
    let host = normalize_host(&name);
    let entry = vhosts
        .find(&host, "/", None)
        .ok_or_else(|| Closed::Unknown(name.clone()))?;
    if !entry.is_online() {
        return Err(Closed::Offline(name));
    }
    let stream = entry
        .pool
        .open_raw()
        .await
        .map_err(|e| Closed::Offline(format!("{name} ({e})")))?;
    debug!(%name, proxy = %entry.proxy, "connection routed");
    buf.drain(..skip);
    Ok((stream, buf))
}
