//! The HTTP virtual-host proxy (frp's `vhostHTTPPort`): one listener where users'
//! HTTP requests arrive and are carried to the peers that expose them.
//!
//! This module owns routing and proxying; registering routes is the server's job,
//! which fills a shared [`Vhosts`] table (with [`Route`]s, each with an [`Opener`]
//! that opens a stream to its peer) while [`serve`] answers requests from it.
//!
//! * Routing: by Host (port stripped, case-insensitive): exact names (custom domains
//!   and `subdomain`s under the server's subdomain host), then wildcards
//!   (`*.example.com`, the most specific first, `*` last); then by the longest
//!   location among the route's that matches the path in whole segments: `/public`
//!   matches `/public`, `/public/` and `/public/x`, not `/publicadmin`; `/api/`
//!   matches `/api/` and below; `/` matches everything. (frp matches raw string
//!   prefixes: there `/public` also takes `/publicadmin`, and `/public/../admin`
//!   reaches `/public`'s service, which may well serve `/admin` for it, past the
//!   basic auth of a `/` route.)
//! * Paths are normalized before routing and forwarded normalized (the query as it
//!   is), so a service gets the path that was routed and authorized: percent-encoded
//!   unreserved characters decoded (`%2e` is `.`), then dot segments removed (RFC
//!   3986 §5.2.4: `/public/%2e%2e/admin` is `/admin`). `//` and `;parameters` are
//!   forwarded as they are but do not count for matching (`//admin` and
//!   `/admin;jsessionid=1` match `/admin`, as servers that merge slashes or drop
//!   path parameters read them). A path a service could read differently is
//!   refused with 400: `%2F`, `%5C`, a raw `\`, `%00`, a malformed escape, a `..;`
//!   segment. So are two Host headers, and an absolute-form target (`GET
//!   http://host/path`) whose host is not the Host header's.
//! * A route may ask for basic auth (401 with `WWW-Authenticate` otherwise), rewrite
//!   Host, and set request and response headers. `X-Forwarded-For` (appended),
//!   `X-Forwarded-Proto: http` and `X-Real-IP` are added; hop-by-hop headers dropped.
//! * `Upgrade` requests (websockets) pass through: both sides are upgraded and the
//!   bytes spliced.
//! * Client connections are kept alive; upstream, each stream to a peer carries one
//!   HTTP/1.1 client connection, kept alive in the route's pool and reused.
//! * Errors are small HTML pages: unknown host 404, offline peer 502 at once, no
//!   answer within [`VhostConfig::response_timeout`] 504, an ambiguous path or Host
//!   400 (above). hyper itself answers a malformed request with 400, headers over
//!   [`VhostConfig::max_header_size`] with 431, and cuts a client off whose headers
//!   take longer than [`VhostConfig::header_read_timeout`].
//!
//! Built on hyper 1 (parsing, limits, keep-alive, upgrades) with hyper-util's tokio
//! glue. The table is read under a `RwLock` read guard held only for the lookup;
//! the hot path allocates no buffers of its own (a path that needs normalizing is
//! the exception).

pub mod https;
mod pool;
mod proxy;
mod sni;
mod table;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{header::HeaderValue, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, Instrument};

pub use pool::Opener;
pub use table::{Route, Vhosts};

use pool::Tasks;
use proxy::Ctx;

/// Default for [`VhostConfig::header_read_timeout`]: 20 s. Request headers come in
/// one or two packets; 20 s is several round trips of the worst mobile link, while
/// a slowloris client that trickles headers is cut off before it matters. hyper
/// also runs this clock while a kept-alive connection waits for its next request,
/// so it is the keep-alive idle time too (browsers reuse connections within
/// seconds; Apache keeps them 5 s, nginx 75 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Default for [`VhostConfig::max_header_size`]: 64 KiB for the request line and
/// headers together. Twice nginx's default (4 × 8 KiB buffers): room for large
/// cookies, while a client cannot make the server buffer more per connection.
pub const MAX_HEADER_SIZE: usize = 64 * 1024;

/// Default for [`VhostConfig::response_timeout`]: 60 s from the end of the request
/// body to the response head, frp's `vhostHTTPTimeout` default, and nginx's
/// `proxy_read_timeout`: long enough for a slow report, short enough that a stuck
/// peer frees the client.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default for [`VhostConfig::pool_max_idle`]: 128 idle upstream connections per
/// route. Covers a busy site's concurrent browsers; a sliver of a peer connection's
/// default stream limit ([`common::mux::DEFAULT_MAX_STREAMS`]), so idle streams never
/// crowd out new ones.
pub const POOL_MAX_IDLE: usize = 128;

/// Default for [`VhostConfig::pool_idle_timeout`]: 90 s, Go's
/// `http.DefaultTransport` `IdleConnTimeout`. Below the keep-alive timeout of
/// common servers behind the peer (Node 5 s is the exception; a connection it closed
/// is noticed and replaced, and a request that could not be sent on it is retried).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Default for [`VhostConfig::max_connections`]: 65,536 client connections at once,
/// as many as one peer process's data connection carries by default
/// ([`common::mux::DEFAULT_MAX_STREAMS`]). Each costs a socket, a task and hyper's
/// buffers (about 38 KiB of server RSS per connection with a request in flight,
/// measured with 10,000 in `tests/tests/capacity.rs`); beyond this the listener stops
/// accepting until one ends. The open-files limit, raised to the hard limit at start,
/// usually binds first.
pub const MAX_CONNECTIONS: usize = 65_536;

/// Default for [`VhostConfig::idle_timeout`]: 60 s without a byte of a request body
/// from the client, or of a response body from the peer, ends the request (408 before
/// the response started; otherwise the client's connection is cut, so it cannot take
/// the truncated body for a whole one). nginx's `client_body_timeout` and
/// `proxy_read_timeout` are 60 s: an upload or download that makes any progress is
/// never cut; a stalled one stops holding a stream of the peer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default for [`VhostConfig::max_per_client`]: requests in flight at once from one
/// client address, over all sites (the server's `--max-per-client`, also applied per
/// exposed TCP port). A quarter of a peer's default stream limit
/// ([`common::mux::DEFAULT_MAX_STREAMS`]): one address can never hold more than a
/// quarter of what a peer carries, so everyone else keeps three quarters; while a
/// whole office behind one NAT, or a load test of 10,000 connections from one host
/// (`tests/tests/capacity.rs`), still fits. Operators of a public site lower it.
pub const MAX_PER_CLIENT: usize = 16_384;

/// Default for [`VhostConfig::shutdown_grace`]: requests in flight get 5 s to finish
/// when the server shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Most domains a route may claim: plenty for one service, bounded for the table.
pub const MAX_ROUTE_DOMAINS: usize = 64;
/// Most locations a route may claim.
pub const MAX_ROUTE_LOCATIONS: usize = 64;
/// Most request (and, separately, response) headers a route may set.
pub const MAX_ROUTE_HEADERS: usize = 64;

/// Settings of the vhost listener. [`Default`] uses the constants of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostConfig {
    /// A client must send a request's headers within this time, counted from when
    /// the server starts waiting for them (also between kept-alive requests).
    pub header_read_timeout: Duration,
    /// Largest request line and headers; larger gets 431. At least 8 KiB is
    /// sensible; hyper's read buffer bounds it anyway at about 400 KiB.
    pub max_header_size: usize,
    /// Longest wait for a peer's response head after the request was sent (504).
    pub response_timeout: Duration,
    /// Most idle upstream connections kept per route.
    pub pool_max_idle: usize,
    /// Idle upstream connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Most client connections at once.
    pub max_connections: usize,
    /// How long requests in flight may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Longest silence within a request body (client) or a response body (peer).
    pub idle_timeout: Duration,
    /// Most requests in flight from one client address (429 past it).
    pub max_per_client: usize,
}

impl Default for VhostConfig {
    fn default() -> Self {
        VhostConfig {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_header_size: MAX_HEADER_SIZE,
            response_timeout: RESPONSE_TIMEOUT,
            pool_max_idle: POOL_MAX_IDLE,
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            shutdown_grace: SHUTDOWN_GRACE,
            idle_timeout: IDLE_TIMEOUT,
            max_per_client: MAX_PER_CLIENT,
        }
    }
}

/// Serves HTTP on `listener`, routing by `vhosts`, until `shutdown` is cancelled;
/// then stops accepting, gives requests in flight [`VhostConfig::shutdown_grace`]
/// to finish, ends upgraded connections and upstream connections, and returns.
///
/// Each client connection runs in its own task: a slow client stalls nobody.
pub async fn serve(
    listener: TcpListener,
    vhosts: Arc<Vhosts>,
    cfg: VhostConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "http vhost listening");
    }
    let tracker = TaskTracker::new();
    let ctx = Arc::new(Ctx {
        vhosts,
        clients: crate::limit::Clients::new(cfg.max_per_client),
        cfg,
        tasks: Tasks {
            tracker: tracker.clone(),
            // Upstream and upgraded connections end a grace period after the listener.
            shutdown: CancellationToken::new(),
        },
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.header_read_timeout)
        .max_header_size(ctx.cfg.max_header_size)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(ctx.cfg.max_connections.max(1)));
    let conns = TaskTracker::new();

    tracker.spawn(sweep(ctx.clone()));
    crate::accept::serve(
        "http vhost",
        &listener,
        permits,
        &conns,
        &shutdown,
        |tcp, addr| {
            let _ = tcp.set_nodelay(true);
            let client = (addr.ip().to_canonical(), client_ip(addr));
            let svc_ctx = ctx.clone();
            let svc = service_fn(move |req| proxy::handle(svc_ctx.clone(), client.clone(), req));
            let conn = http
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            let shutdown = shutdown.clone();
            let grace = ctx.cfg.shutdown_grace;
            Some(
                async move {
                    let mut conn = std::pin::pin!(conn);
                    let res = tokio::select! {
                        res = conn.as_mut() => res,
                        () = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            tokio::time::timeout(grace, conn.as_mut()).await.unwrap_or(Ok(()))
                        }
                    };
                    if let Err(e) = res {
                        debug!(%e, "client connection ended");
                    }
                }
                .instrument(tracing::debug_span!("vhost", %addr)),
            )
        },
    )
    .await;
    drop(listener);
    conns.close();
    conns.wait().await;
    ctx.tasks.shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The client's address as a header value (IPv4-mapped addresses as IPv4).
fn client_ip(addr: SocketAddr) -> HeaderValue {
    let ip = addr.ip().to_canonical().to_string();
    HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Closes idle upstream connections past their time, until shutdown.
async fn sweep(ctx: Arc<Ctx>) {
    let every = (ctx.cfg.pool_idle_timeout / 2).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => ctx.vhosts.sweep(ctx.cfg.pool_idle_timeout),
            () = ctx.tasks.shutdown.cancelled() => return,
        }
    }
}
