//! One request: route it, check it, change its headers, forward it to the peer
//! (or splice an upgrade), and bring the response back; or answer with a small
//! error page.

use std::{
    borrow::Cow,
    convert::Infallible,
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use hyper::{
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    client::conn::http1::SendRequest,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::uri::{PathAndQuery, Scheme},
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tracing::debug;

use super::{
    pool::{ConnectError, Lease, Tasks, UpstreamBody},
    table::{basic_auth_ok, basic_auth_user, normalize_host, normalize_path, Entry},
    VhostConfig, Vhosts,
};

/// What every request of the vhost server shares.
pub(super) struct Ctx {
    pub(super) vhosts: Arc<Vhosts>,
    pub(super) clients: crate::limit::Clients,
    pub(super) cfg: VhostConfig,
    pub(super) tasks: Tasks,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, and the ones proxies traditionally drop):
/// they describe one connection and are not forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Errors of the bodies the vhost passes on (hyper's own, or an idle timeout).
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Serves one request. `client_ip` is the client's address as a header value,
/// made once per connection.
pub(super) async fn handle(
    ctx: Arc<Ctx>,
    (ip, client_ip): (IpAddr, HeaderValue),
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let resp = match proxy(&ctx, (ip, client_ip), req).await {
        Ok(resp) | Err(resp) => resp,
    };
    ctx.vhosts.answered(resp.status().as_u16());
    Ok(resp)
}

async fn proxy(
    ctx: &Ctx,
    (ip, client_ip): (IpAddr, HeaderValue),
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    if req.method() == Method::CONNECT {
        // A vhost is no forward proxy: nothing to tunnel to.
        return Err(page(
            StatusCode::METHOD_NOT_ALLOWED,
            "This server does not tunnel connections.",
        ));
    }
    // Routed, authorized and forwarded by the same normalized path.
    if let Some(uri) = normalized_target(req.uri())? {
        *req.uri_mut() = uri;
    }
    let entry = {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host_header = hosts.next();
        if hosts.next().is_some() {
            // RFC 9112 §3.2.2: more than one Host is a 400.
            return Err(page(
                StatusCode::BAD_REQUEST,
                "The request has more than one Host header.",
            ));
        }
        let host = match (req.uri().authority(), host_header) {
            // An absolute-form target's authority is what routing uses. RFC 9112
            // §3.2.2 says the target wins and a Host that disagrees is ignored;
            // refusing it is the safe choice: whatever sits in front of this server
            // (a cache, a firewall) may have judged the request by its Host, and the
            // two views must not differ. (The service gets the authority as Host.)
            (Some(a), Some(h)) if same_authority(req.uri(), h) => Some(a.host()),
            (Some(_), Some(_)) => {
                return Err(page(
                    StatusCode::BAD_REQUEST,
                    "The request target and the Host header name different hosts.",
                ))
            }
            (Some(a), None) => Some(a.host()),
            (None, h) => h.and_then(|h| h.to_str().ok()),
        };
        let host =
            host.ok_or_else(|| page(StatusCode::BAD_REQUEST, "The request names no host."))?;
        let user = basic_auth_user(req.headers().get(header::AUTHORIZATION));
        ctx.vhosts
            .find(&normalize_host(host), req.uri().path(), user.as_deref())
    };
    let entry = entry.ok_or_else(|| {
        page(
            StatusCode::NOT_FOUND,
            "No service is exposed at this address.",
        )
    })?;
    if let Some(expected) = &entry.auth {
        if !basic_auth_ok(req.headers().get(header::AUTHORIZATION), expected) {
            let mut resp = page(
                StatusCode::UNAUTHORIZED,
                "This service needs a user name and password.",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Restricted\""),
            );
            return Err(resp);
        }
        // The credentials are the proxy's, not the service's.
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    if !entry.is_online() {
        return Err(offline());
    }
    let slot = ctx.clients.acquire(ip, "http vhost").ok_or_else(|| {
        page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests at once from your address: wait for some to finish.",
        )
    })?;

    let upgrade = upgrade_of(req.headers());
    prepare_request(&mut req, &entry, client_ip, upgrade.clone());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let (body, sent, progress) = UpBody::new(body);
    let req = Request::from_parts(parts, body);

    let (mut resp, sender) = forward(ctx, &entry, req, sent, progress).await?;

    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let resp_upgrade = if upgraded {
        resp.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(resp.headers_mut());
    if let Some(protocol) = resp_upgrade {
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol);
    }
    for (name, value) in &entry.response_headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }

    if upgraded {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 the client did not ask for cannot be passed on.
            return Err(page(
                StatusCode::BAD_GATEWAY,
                "The service switched protocols unasked.",
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let shutdown = ctx.tasks.shutdown.clone();
        ctx.tasks.tracker.spawn(async move {
            let _slot = slot;
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(both) => both,
                Err(e) => return debug!(%e, "upgrade failed"),
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            tokio::select! {
                res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(e) = res {
                        debug!(%e, "upgraded connection ended");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::Full(None)));
    }

    let lease = sender.map(|sender| Lease {
        sender,
        entry: entry.clone(),
        max_idle: ctx.cfg.pool_max_idle,
    });
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        ProxyBody::Upstream(UpstreamBody::new(body, lease, ctx.cfg.idle_timeout, slot)),
    ))
}

/// The peer's response head, and the connection it came on if it can be reused.
type Answered = (Response<Incoming>, Option<SendRequest<UpBody>>);

/// Sends the request on a pooled or new connection and waits for the response
/// head: at most `response_timeout` after the request body has been sent. A
/// request that a pooled connection could not take (it had just closed) is sent
/// once more on a new one. While the body is on its way, a silence of `idle_timeout`
/// ends the request: 408 when the client stopped sending, 504 when the peer stopped
/// taking it.
async fn forward(
    ctx: &Ctx,
    entry: &Arc<Entry>,
    mut req: Request<UpBody>,
    mut sent: Option<oneshot::Receiver<()>>,
    progress: Arc<BodyProgress>,
) -> Result<Answered, Response<ProxyBody>> {
    let cfg = &ctx.cfg;
    let mut fresh = false;
    loop {
        let pooled = if fresh {
            None
        } else {
            entry.pool.checkout(cfg.pool_idle_timeout).await
        };
        let mut sender = match pooled {
            Some(s) => s,
            None => {
                fresh = true;
                let connect = entry.pool.connect(&ctx.tasks);
                match tokio::time::timeout(cfg.response_timeout, connect).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(ConnectError::Open(e))) => {
                        debug!(proxy = %entry.proxy, %e, "cannot open a stream to the peer");
                        return Err(offline());
                    }
                    Ok(Err(ConnectError::Handshake(e))) => {
                        debug!(proxy = %entry.proxy, %e, "upstream handshake failed");
                        return Err(bad_upstream());
                    }
                    Err(_) => return Err(timed_out()),
                }
            }
        };
        let mut response = std::pin::pin!(sender.try_send_request(req));
        // The clock starts once the body is sent, as Go's ResponseHeaderTimeout.
        let mut early = None;
        let mut body_pending = false;
        if let Some(rx) = sent.as_mut() {
            let idle = cfg.idle_timeout;
            let stalled = async {
                let mut seen = progress.frames.load(Ordering::Relaxed);
                loop {
                    tokio::time::sleep(idle).await;
                    let now = progress.frames.load(Ordering::Relaxed);
                    if now == seen {
                        return progress.waiting_client.load(Ordering::Relaxed);
                    }
                    seen = now;
                }
            };
            tokio::select! {
                biased;
                res = &mut response => early = Some(res),
                _ = &mut *rx => {}
                client = stalled => {
                    debug!(proxy = %entry.proxy, client, "request body stalled");
                    return Err(if client { body_timed_out() } else { timed_out() });
                }
            }
            match early {
                None => sent = None,
                // An answer before the whole body was sent (413, say): the
                // connection is still busy sending it, so it is not reused.
                Some(_) => body_pending = rx.try_recv().is_err(),
            }
        }
        let res = match early {
            Some(res) => res,
            None => match tokio::time::timeout(cfg.response_timeout, &mut response).await {
                Ok(res) => res,
                // Dropping the response future closes the connection.
                Err(_) => return Err(timed_out()),
            },
        };
        match finish(entry, res) {
            Ok(resp) => return Ok((resp, (!body_pending).then_some(sender))),
            Err(Some(back)) if !fresh => {
                debug!(proxy = %entry.proxy, "pooled connection closed; retrying on a new one");
                req = back;
                fresh = true;
            }
            Err(_) => return Err(bad_upstream()),
        }
    }
}

/// The response, or the request back if it never left.
#[allow(clippy::result_large_err)]
fn finish(
    entry: &Entry,
    res: Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpBody>>>,
) -> Result<Response<Incoming>, Option<Request<UpBody>>> {
    match res {
        Ok(resp) => Ok(resp),
        Err(mut e) => {
            debug!(proxy = %entry.proxy, error = %e.error(), "upstream request failed");
            Err(e.take_message())
        }
    }
}

/// The request target with its path normalized ([`normalize_path`]) and its query
/// unchanged, or `None` if it needs no change. An absolute-form target keeps its
/// scheme and authority (and gets a `/` path if it had none before its query).
/// Targets without a path (`*`, an authority) are left alone. A path that
/// [`normalize_path`] refuses is answered 400.
#[allow(clippy::result_large_err)]
fn normalized_target(uri: &Uri) -> Result<Option<Uri>, Response<ProxyBody>> {
    let path = uri.path();
    if !path.starts_with('/') {
        return Ok(None);
    }
    let normalized = normalize_path(path).map_err(|e| page(StatusCode::BAD_REQUEST, e.detail()))?;
    let origin_ok = uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str().starts_with('/'));
    if matches!(normalized, Cow::Borrowed(_)) && origin_ok {
        return Ok(None);
    }
    let target = match uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized.into_owned(),
    };
    // Cannot fail (the characters are the target's own, a few decoded); no panic if
    // it does.
    let malformed = || page(StatusCode::BAD_REQUEST, "The request target is malformed.");
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| malformed())?);
    Uri::from_parts(parts).map(Some).map_err(|_| malformed())
}

/// Whether a Host header names the host and port of an absolute-form target, as
/// routing sees hosts (case-insensitive, without a trailing dot); a missing port
/// is the scheme's default.
fn same_authority(uri: &Uri, host: &HeaderValue) -> bool {
    let (Some(authority), Ok(host)) = (uri.authority(), host.to_str()) else {
        return false;
    };
    let default = if uri.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    let (name, port) = if host.starts_with('[') {
        let Some(i) = host.find(']') else {
            return false;
        };
        match &host[i + 1..] {
            "" => (&host[..=i], None),
            rest => match rest.strip_prefix(':') {
                Some(port) => (&host[..=i], Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port = match port {
        None | Some("") => default,
        Some(p) => match p.parse::<u16>() {
            Ok(p) => p,
            Err(_) => return false,
        },
    };
    normalize_host(authority.host()) == normalize_host(name)
        && authority.port_u16().unwrap_or(default) == port
}

/// The protocol asked for, if the request is an upgrade (`Connection: upgrade` and
/// `Upgrade`).
fn upgrade_of(h: &HeaderMap) -> Option<HeaderValue> {
    let protocol = h.get(header::UPGRADE)?;
    let asked = h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asked.then(|| protocol.clone())
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            h.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
    h.remove(header::UPGRADE);
}

/// The request as the peer gets it: origin-form target, HTTP/1.1, hop-by-hop
/// headers gone (an upgrade kept), forwarding headers, the route's Host rewrite
/// and header sets.
fn prepare_request(
    req: &mut Request<Incoming>,
    entry: &Entry,
    client_ip: HeaderValue,
    upgrade: Option<HeaderValue>,
) {
    if req.uri().authority().is_some() {
        let host = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        if let Some(host) = host {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    strip_hop_by_hop(h);
    if let Some(protocol) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol);
    }
    let forwarded_for = if h.contains_key(&X_FORWARDED_FOR) {
        let mut list = Vec::new();
        for v in h.get_all(&X_FORWARDED_FOR) {
            list.extend_from_slice(v.as_bytes());
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(client_ip.as_bytes());
        HeaderValue::from_bytes(&list).unwrap_or_else(|_| client_ip.clone())
    } else {
        client_ip.clone()
    };
    h.insert(X_FORWARDED_FOR, forwarded_for);
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    h.insert(X_REAL_IP, client_ip);
    if let Some(host) = &entry.host_rewrite {
        h.insert(header::HOST, host.clone());
    }
    for (name, value) in &entry.request_headers {
        h.insert(name.clone(), value.clone());
    }
}

/// How a request body is getting on: frames passed, and whether the last poll
/// waited for the client (else, if nothing moves, the peer is not taking it).
#[derive(Default)]
pub(super) struct BodyProgress {
    frames: AtomicU64,
    waiting_client: AtomicBool,
}

/// The request body on its way to the peer; tells when it has all been sent.
pub(super) struct UpBody {
    inner: Incoming,
    sent: Option<oneshot::Sender<()>>,
    progress: Arc<BodyProgress>,
}

impl UpBody {
    /// The body, for a body with content a receiver that fires once it is sent, and
    /// its progress.
    fn new(inner: Incoming) -> (UpBody, Option<oneshot::Receiver<()>>, Arc<BodyProgress>) {
        let progress = Arc::new(BodyProgress::default());
        if inner.is_end_stream() {
            let body = UpBody {
                inner,
                sent: None,
                progress: progress.clone(),
            };
            return (body, None, progress);
        }
        let (tx, rx) = oneshot::channel();
        let body = UpBody {
            inner,
            sent: Some(tx),
            progress: progress.clone(),
        };
        (body, Some(rx), progress)
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.progress
            .waiting_client
            .store(polled.is_pending(), Ordering::Relaxed);
        let res = ready!(polled);
        self.progress.frames.fetch_add(1, Ordering::Relaxed);
        if res.is_none() || self.inner.is_end_stream() {
            if let Some(tx) = self.sent.take() {
                let _ = tx.send(());
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of every response the vhost sends: the peer's, or a page of ours.
pub(super) enum ProxyBody {
    /// From the peer.
    Upstream(UpstreamBody),
    /// All at once (an error page), or nothing.
    Full(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A small HTML page: the status and one sentence (never input from the request).
fn page(status: StatusCode, detail: &'static str) -> Response<ProxyBody> {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>{detail}</p></body></html>\n"
    );
    let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(html))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn offline() -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        "The peer that serves this address is offline.",
    )
}

fn bad_upstream() -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        "The peer that serves this address did not answer properly.",
    )
}

fn body_timed_out() -> Response<ProxyBody> {
    page(
        StatusCode::REQUEST_TIMEOUT,
        "The request body stopped arriving.",
    )
}

fn timed_out() -> Response<ProxyBody> {
    page(
        StatusCode::GATEWAY_TIMEOUT,
        "The peer that serves this address did not answer in time.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(t: &str) -> Result<Option<String>, StatusCode> {
        let uri: Uri = t.parse().unwrap();
        normalized_target(&uri)
            .map(|u| u.map(|u| u.to_string()))
            .map_err(|resp| resp.status())
    }

    #[test]
    fn targets_are_normalized_with_their_query() {
        for (t, want) in [
            ("/", None),
            ("/a/b?x=1", None),
            ("*", None),
            ("/public/../admin", Some("/admin")),
            ("/public/%2e%2E/admin?q=/../x", Some("/admin?q=/../x")),
            ("/a/./b?", Some("/a/b?")),
            ("/%7Ea?%7E", Some("/~a?%7E")),
            ("http://a.test/public/../admin", Some("http://a.test/admin")),
            (
                "http://a.test:8080/public/%2e%2e/admin?q=1",
                Some("http://a.test:8080/admin?q=1"),
            ),
            ("http://a.test/x", None),
            ("http://a.test?q=1", Some("http://a.test/?q=1")),
        ] {
            assert_eq!(target(t), Ok(want.map(str::to_string)), "{t}");
        }
        for t in [
            "/a%2fb",
            "/a%5C",
            "/a%00",
            "/a%g0",
            "/a\\b",
            "/..;/admin",
            "http://a.test/a%2Fb",
        ] {
            assert_eq!(target(t), Err(StatusCode::BAD_REQUEST), "{t}");
        }
        // A target without a path (authority form) is left alone.
        assert_eq!(target("a.test:80"), Ok(None));
    }

    #[test]
    fn host_must_agree_with_an_absolute_target() {
        for (uri, host, same) in [
            ("http://a.test/", "a.test", true),
            ("http://a.test/", "A.Test.", true),
            ("http://a.test/", "a.test:80", true),
            ("http://a.test:80/", "a.test", true),
            ("http://a.test:8080/", "a.test:8080", true),
            ("https://a.test/", "a.test:443", true),
            ("http://[::1]/", "[::1]:80", true),
            ("http://a.test/", "a.test:", true),
            ("http://a.test/", "b.test", false),
            ("http://a.test/", "a.test:8080", false),
            ("http://a.test:8080/", "a.test", false),
            ("http://a.test/", "a.test:x", false),
            ("http://[::1]/", "[::2]", false),
            ("http://[::1]/", "[::1]x", false),
            ("http://user@a.test/", "a.test", true),
        ] {
            let uri: Uri = uri.parse().unwrap();
            let host = HeaderValue::from_static(host);
            assert_eq!(same_authority(&uri, &host), same, "{uri} vs {host:?}");
        }
    }
}
