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

/// Why a connection was closed before it reached a peer.
#[derive(Debug)]
enum Closed {
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
            Closed::Silent => f.write_str("no ClientHello within the idle timeout"),
            Closed::TooLong => write!(f, "no server name in the first {MAX_CLIENT_HELLO} bytes"),
            Closed::NotHello(e) => write!(f, "{e}"),
            Closed::NoName => f.write_str("a ClientHello without a server name (SNI)"),
            Closed::Unknown(h) => write!(f, "no https proxy serves {h}"),
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
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "https vhost listening");
    }
    let clients = Clients::new(cfg.max_per_client);
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let conns = TaskTracker::new();
    let log = Arc::new(Mutex::new(LogLimit::default()));
    crate::accept::serve(
        "https vhost",
        &listener,
        permits,
        &conns,
        &shutdown,
        |tcp, addr| {
            let slot = clients.acquire(addr.ip().to_canonical(), "https vhost")?;
            let (vhosts, shutdown, log) = (vhosts.clone(), shutdown.clone(), log.clone());
            let wait = cfg.idle_timeout;
            Some(
                async move {
                    let _slot = slot;
                    tokio::select! {
                        r = connection(tcp, &vhosts, wait) => if let Err(why) = r {
                            let ready = log.lock().unwrap_or_else(PoisonError::into_inner)
                                .ready(tokio::time::Instant::now());
                            match ready {
                                Some(suppressed) => info!(%addr, suppressed, "https connection closed: {why}"),
                                None => debug!(%addr, "https connection closed: {why}"),
                            }
                        },
                        () = shutdown.cancelled() => {}
                    }
                }
                .instrument(tracing::debug_span!("https", %addr)),
            )
        },
    )
    .await;
    drop(listener);
    conns.close();
    conns.wait().await;
    Ok(())
}

/// One client connection: its ClientHello, its route, then the splice.
async fn connection(
    mut tcp: TcpStream,
    vhosts: &Vhosts,
    wait: std::time::Duration,
) -> Result<(), Closed> {
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
            match sni::parse(&buf).map_err(Closed::NotHello)? {
                Hello::NeedMore => {}
                Hello::Name(name) => return Ok(name),
                Hello::NoName => return Err(Closed::NoName),
            }
        }
    };
    let name = tokio::time::timeout(wait, read_hello)
        .await
        .map_err(|_| Closed::Silent)??;
    let host = normalize_host(&name);
    let entry = vhosts
        .find(&host, "/", None)
        .ok_or_else(|| Closed::Unknown(name.clone()))?;
    if !entry.is_online() {
        return Err(Closed::Offline(name));
    }
    let mut stream = entry
        .pool
        .open_raw()
        .await
        .map_err(|e| Closed::Offline(format!("{name} ({e})")))?;
    stream.write_all(&buf).await.map_err(Closed::Io)?;
    debug!(%name, proxy = %entry.proxy, "https connection routed");
    let _ = tcp.set_nodelay(true);
    let done = common::splice::splice(tcp, stream).await;
    match done.error {
        None => debug!(up = done.up, down = done.down, "https connection done"),
        Some(e) => debug!(up = done.up, down = done.down, %e, "https connection reset"),
    }
    Ok(())
}
