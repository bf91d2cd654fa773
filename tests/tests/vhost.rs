//! The HTTP vhost (`rendezvous::vhost`) end to end, in-process: real HTTP servers on
//! loopback play the services behind the peer; a fake peer accepts yamux streams on
//! loopback TCP, reads the stream header and splices to the named service; the vhost
//! serves on a loopback port and requests go to it over TCP.
//!
//! frp's own e2e cases for http proxies (locations, host and wildcard routing,
//! subdomains, basic auth, request and response header sets, Host rewrite,
//! websocket, 404 for an unknown host, the response timeout), plus what frp leaves
//! untested: paths matched in whole normalized segments, ambiguous Host headers,
//! an offline peer, malformed, oversized and slow requests, keep-alive
//! reuse of upstream connections, conflicting claims, bodies both ways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{
    mux::{Mux, MuxConfig, MuxStream, Role},
    proto::HttpRoute,
};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, HeaderMap, Request, Response,
    StatusCode,
};
use hyper_util::rt::TokioIo;
use rendezvous::vhost::{serve, Opener, Route, VhostConfig, Vhosts};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Limit for anything that should be quick.
const T: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------
// The harness: services, the fake peer, the vhost.

type Services = Arc<Mutex<HashMap<String, SocketAddr>>>;

/// A vhost on loopback with one fake peer behind a yamux connection.
struct Harness {
    vhosts: Arc<Vhosts>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The server's side of the peer's data connection.
    mux: Mux,
    /// The fake peer's services: stream name → local address.
    services: Services,
    /// Streams opened toward the peer (by every opener of this harness).
    opened: Arc<AtomicUsize>,
}

impl Harness {
    async fn new(subdomain_host: Option<&str>, cfg: VhostConfig) -> Harness {
        let (mux, services) = fake_peer().await;
        let vhosts = Arc::new(Vhosts::new(subdomain_host.map(str::to_string)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(listener, vhosts.clone(), cfg, shutdown.clone()));
        Harness {
            vhosts,
            addr,
            shutdown,
            served,
            mux,
            services,
            opened: Arc::default(),
        }
    }

    async fn default() -> Harness {
        Harness::new(None, VhostConfig::default()).await
    }

    /// An opener of streams named `name` on the peer's connection, counted.
    fn opener(&self, name: &str) -> Opener {
        let (mux, name, opened) = (self.mux.clone(), name.to_string(), self.opened.clone());
        Arc::new(move || {
            let (mux, name, opened) = (mux.clone(), name.clone(), opened.clone());
            Box::pin(async move {
                opened.fetch_add(1, Ordering::SeqCst);
                let mut s = mux.open().await?;
                let mut header = vec![1u8];
                header.extend_from_slice(&(name.len() as u16).to_be_bytes());
                header.extend_from_slice(name.as_bytes());
                s.write_all(&header).await?;
                Ok(common::compress::Carried::plain(s))
            })
        })
    }

    /// Registers `proxy` of `owner`, served by the local service at `local`.
    fn add(
        &self,
        owner: u64,
        proxy: &str,
        http: HttpRoute,
        local: SocketAddr,
    ) -> Result<Vec<String>, String> {
        let name = format!("{owner}/{proxy}");
        self.services.lock().unwrap().insert(name.clone(), local);
        self.vhosts.add(Route {
            proxy: proxy.to_string(),
            http,
            opener: self.opener(&name),
            owner,
        })
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(T, self.served)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

/// A yamux connection over loopback TCP; the far end is a fake peer that reads each
/// stream's header (`[1, len u16 BE, name]`) and splices it to the named service.
async fn fake_peer() -> (Mux, Services) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = tokio::join!(
        TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    let (a, (b, _)) = (a.unwrap(), b.unwrap());
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    let (server, _) = Mux::start(a, Role::Client, MuxConfig::default());
    let (_peer, mut inbound) = Mux::start(b, Role::Server, MuxConfig::default());
    let services = Services::default();
    let svc = services.clone();
    tokio::spawn(async move {
        let _peer = _peer;
        while let Some(stream) = inbound.recv().await {
            tokio::spawn(peer_stream(stream, svc.clone()));
        }
    });
    (server, services)
}

async fn peer_stream(mut s: MuxStream, services: Services) -> std::io::Result<()> {
    assert_eq!(s.read_u8().await?, 1, "stream header version");
    let len = s.read_u16().await? as usize;
    let mut name = vec![0; len];
    s.read_exact(&mut name).await?;
    let name = String::from_utf8(name).unwrap();
    let addr = *services
        .lock()
        .unwrap()
        .get(&name)
        .expect("a known service");
    let mut local = TcpStream::connect(addr).await?;
    local.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut s, &mut local).await?;
    Ok(())
}

/// An HTTP/1.1 service on loopback answering with `f`.
async fn service<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, std::convert::Infallible>(f(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// A service that always answers `body`.
async fn says(body: &'static str) -> SocketAddr {
    service(move |_| async move { text(body) }).await
}

fn text(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::new(Full::new(body.into()))
}

fn domains(d: &[&str]) -> HttpRoute {
    HttpRoute {
        domains: d.iter().map(|s| s.to_string()).collect(),
        ..HttpRoute::default()
    }
}

// ---------------------------------------------------------------------------------
// The client side.

/// An HTTP/1.1 client connection to the vhost.
struct Client(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn new(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client(sender)
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
        self.0.ready().await.unwrap();
        let resp = tokio::time::timeout(T, self.0.send_request(req))
            .await
            .expect("a response in time")
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(header::HOST, host)
        .body(Full::default())
        .unwrap()
}

/// One request on a new connection.
async fn fetch(addr: SocketAddr, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
    Client::new(addr).await.send(req).await
}

async fn body_of(addr: SocketAddr, host: &str, path: &str) -> String {
    let (status, _, body) = fetch(addr, get(host, path)).await;
    assert_eq!(status, StatusCode::OK, "{host}{path}: {body}");
    body
}

async fn status_of(addr: SocketAddr, host: &str, path: &str) -> StatusCode {
    fetch(addr, get(host, path)).await.0
}

/// Writes raw bytes and reads the whole answer until the server closes (or `T`).
async fn raw(addr: SocketAddr, request: Vec<u8>) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = tcp.split();
    let write = async move {
        let _ = w.write_all(&request).await;
    };
    let read = async move {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(T, r.read_to_end(&mut buf)).await;
        buf
    };
    let ((), buf) = tokio::join!(write, read);
    String::from_utf8_lossy(&buf).into_owned()
}

// ---------------------------------------------------------------------------------
// frp's cases.

/// frp "HTTP route by locations": the longest matching location wins; `/` catches
/// the rest.
#[tokio::test]
async fn routes_by_location() {
    let h = Harness::default().await;
    let (foo, bar) = (says("foo").await, says("bar").await);
    let mut r = domains(&["normal.example.com"]);
    r.locations = vec!["/".into(), "/foo".into()];
    h.add(1, "foo", r, foo).unwrap();
    let mut r = domains(&["normal.example.com"]);
    r.locations = vec!["/bar".into()];
    h.add(1, "bar", r, bar).unwrap();
    for (path, want) in [
        ("/foo", "foo"),
        ("/bar", "bar"),
        ("/other", "foo"),
        ("/bar/x?y=1", "bar"),
    ] {
        assert_eq!(
            body_of(h.addr, "normal.example.com", path).await,
            want,
            "{path}"
        );
    }
    h.stop().await;
}

/// Unlike frp (raw string prefixes), locations match whole segments of the
/// normalized path, and the service gets that path: dot segments (also `%2e`)
/// resolved, unreserved characters decoded, the query as it was. `//` and
/// `;parameters` are forwarded as they are but do not count for matching.
#[tokio::test]
async fn locations_match_whole_normalized_segments() {
    let h = Harness::default().await;
    let echo = |name: &'static str| {
        service(move |req: Request<Incoming>| async move { text(format!("{name} {}", req.uri())) })
    };
    let mut r = domains(&["seg.example.com"]);
    r.locations = vec!["/".into()];
    h.add(1, "root", r, echo("root").await).unwrap();
    let mut r = domains(&["seg.example.com"]);
    r.locations = vec!["/app".into()];
    h.add(1, "app", r, echo("app").await).unwrap();
    let mut r = domains(&["seg.example.com"]);
    r.locations = vec!["/api/".into()];
    h.add(1, "api", r, echo("api").await).unwrap();
    for (path, want) in [
        ("/app", "app /app"),
        ("/app/", "app /app/"),
        ("/app/x?y=1", "app /app/x?y=1"),
        ("/appx", "root /appx"),
        ("/api", "root /api"),
        ("/api/", "api /api/"),
        ("/api/v1?q=a/../b", "api /api/v1?q=a/../b"),
        ("/app/../api/v1", "api /api/v1"),
        ("/app/%2E%2e/x", "root /x"),
        ("/app/x/./y/..", "app /app/x/"),
        ("/%61pp/%7Ex", "app /app/~x"),
        ("/x/../../../app", "app /app"),
        ("//app/x", "app //app/x"),
        ("/app;jsessionid=1/x", "app /app;jsessionid=1/x"),
    ] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: seg.example.com\r\nConnection: close\r\n\r\n");
        let answer = raw(h.addr, request.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(
            answer.ends_with(&format!("\r\n\r\n{want}")),
            "{path}: {answer}"
        );
    }
    for path in [
        "/app/%2F..",
        "/app%5c..%5capi",
        "/app\\x",
        "/app%00",
        "/app/%",
        "/app/..;/api",
    ] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: seg.example.com\r\nConnection: close\r\n\r\n");
        let answer = raw(h.addr, request.into_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    h.stop().await;
}

/// Two Host headers, or an absolute-form target naming another host than Host: 400.
/// An absolute-form target is routed by its (normalized) path like any other.
#[tokio::test]
async fn ambiguous_hosts_are_400() {
    let h = Harness::default().await;
    let local = service(|req: Request<Incoming>| async move {
        let host = req.headers().get(header::HOST).cloned();
        text(format!("{host:?} {}", req.uri()))
    })
    .await;
    h.add(1, "web", domains(&["a.test", "b.test"]), local)
        .unwrap();
    for (request, want) in [
        ("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test", "400"),
        ("GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test", "400"),
        ("GET http://a.test/ HTTP/1.1\r\nHost: b.test", "400"),
        ("GET http://a.test/ HTTP/1.1\r\nHost: a.test:8080", "400"),
        (
            "GET http://a.test/x/../y?z HTTP/1.1\r\nHost: A.test:80",
            "200",
        ),
        ("GET http://a.test/x/../y?z HTTP/1.1", "200"),
    ] {
        let answer = raw(
            h.addr,
            format!("{request}\r\nConnection: close\r\n\r\n").into_bytes(),
        )
        .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want}")),
            "{request}: {answer}"
        );
        if want == "200" {
            assert!(
                answer.ends_with("Some(\"a.test\") /y?z"),
                "{request}: {answer}"
            );
        }
    }
    h.stop().await;
}

/// frp "Wildcard domain", plus: exact names beat wildcards, the most specific
/// wildcard wins, Host is matched case-insensitively without its port.
#[tokio::test]
async fn routes_by_host_and_wildcard() {
    let h = Harness::default().await;
    h.add(1, "wild", domains(&["*.example.com"]), says("wild").await)
        .unwrap();
    h.add(
        1,
        "deeper",
        domains(&["*.b.example.com"]),
        says("deeper").await,
    )
    .unwrap();
    h.add(
        1,
        "exact",
        domains(&["www.example.com"]),
        says("exact").await,
    )
    .unwrap();
    h.add(1, "other", domains(&["other.test"]), says("other").await)
        .unwrap();
    assert_eq!(body_of(h.addr, "test.example.com", "/").await, "wild");
    assert_eq!(body_of(h.addr, "sub.test.example.com", "/").await, "wild");
    assert_eq!(body_of(h.addr, "x.b.example.com", "/").await, "deeper");
    assert_eq!(body_of(h.addr, "www.example.com", "/").await, "exact");
    assert_eq!(body_of(h.addr, "WWW.Example.COM:8080", "/").await, "exact");
    assert_eq!(body_of(h.addr, "other.test.", "/").await, "other");
    assert_eq!(
        status_of(h.addr, "not-match.test.com", "/").await,
        StatusCode::NOT_FOUND
    );
    // `*.example.com` is not `example.com` itself.
    assert_eq!(
        status_of(h.addr, "example.com", "/").await,
        StatusCode::NOT_FOUND
    );
    h.stop().await;
}

/// frp "Subdomain": names under the server's subdomain host.
#[tokio::test]
async fn routes_by_subdomain() {
    let h = Harness::new(Some("example.com"), VhostConfig::default()).await;
    let sub = |s: &str| HttpRoute {
        subdomain: Some(s.into()),
        ..HttpRoute::default()
    };
    let urls = h.add(1, "foo", sub("foo"), says("foo").await).unwrap();
    assert_eq!(urls, ["http://foo.example.com/"]);
    h.add(1, "bar", sub("bar"), says("bar").await).unwrap();
    assert_eq!(body_of(h.addr, "foo.example.com", "/").await, "foo");
    assert_eq!(body_of(h.addr, "bar.example.com", "/").await, "bar");
    assert_eq!(
        status_of(h.addr, "baz.example.com", "/").await,
        StatusCode::NOT_FOUND
    );
    // A custom domain cannot take a subdomain's name from another owner.
    let err = h
        .add(2, "thief", domains(&["foo.example.com"]), says("x").await)
        .unwrap_err();
    assert!(err.contains("foo.example.com"), "{err}");
    assert!(h.add(1, "bad", sub("a.b"), says("x").await).is_err());

    // Without a subdomain host, subdomains are refused with a reason.
    let plain = Harness::default().await;
    let err = plain
        .add(1, "foo", sub("foo"), says("foo").await)
        .unwrap_err();
    assert!(err.contains("subdomain host"), "{err}");
    h.stop().await;
    plain.stop().await;
}

/// frp "HTTP Basic Auth": 401 without or with wrong credentials, through with the
/// right ones; the credentials are not passed on.
#[tokio::test]
async fn basic_auth() {
    let h = Harness::default().await;
    let local = service(|req: Request<Incoming>| async move {
        text(format!(
            "auth={:?}",
            req.headers().get(header::AUTHORIZATION)
        ))
    })
    .await;
    let mut r = domains(&["normal.example.com"]);
    r.basic_auth = Some(("test".into(), "test".into()));
    h.add(1, "test", r, local).unwrap();

    let (status, headers, body) = fetch(h.addr, get("normal.example.com", "/")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = headers
        .get(header::WWW_AUTHENTICATE)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    assert!(body.contains("401"), "{body}");

    let with = |creds: &str| {
        let mut req = get("normal.example.com", "/");
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Basic {creds}").parse().unwrap(),
        );
        req
    };
    // test:invalid
    assert_eq!(
        fetch(h.addr, with("dGVzdDppbnZhbGlk")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // test:test
    let (status, _, body) = fetch(h.addr, with("dGVzdDp0ZXN0")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "auth=None");
    h.stop().await;
}

/// frp "Modify request headers", "Modify response headers", "Host Header Rewrite".
#[tokio::test]
async fn header_sets_and_host_rewrite() {
    let h = Harness::default().await;
    let local = service(|req: Request<Incoming>| async move {
        let hv = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let mut resp = text(format!("host={} from={}", hv("host"), hv("x-from-where")));
        resp.headers_mut()
            .insert("x-upstream", "yes".parse().unwrap());
        resp
    })
    .await;
    let mut r = domains(&["normal.example.com"]);
    r.request_headers = vec![("x-from-where".into(), "frp".into())];
    r.response_headers = vec![("X-From-Where".into(), "frp".into())];
    h.add(1, "test", r, local).unwrap();
    let mut r = domains(&["rewrite.test"]);
    r.host_rewrite = Some("rewrite.example.com".into());
    h.add(1, "rewrite", r, local).unwrap();

    let mut req = get("normal.example.com", "/");
    req.headers_mut()
        .insert("x-from-where", "client".parse().unwrap());
    let (status, headers, body) = fetch(h.addr, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "host=normal.example.com from=frp");
    assert_eq!(headers.get("x-from-where").unwrap(), "frp");
    assert_eq!(headers.get("x-upstream").unwrap(), "yes");

    assert_eq!(
        body_of(h.addr, "rewrite.test", "/").await,
        "host=rewrite.example.com from="
    );
    h.stop().await;
}

/// X-Forwarded-For is appended to, X-Forwarded-Proto and X-Real-IP set; hop-by-hop
/// headers do not pass.
#[tokio::test]
async fn forwarding_headers() {
    let h = Harness::default().await;
    let local = service(|req: Request<Incoming>| async move {
        let hv = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_else(|| "-".into())
        };
        text(format!(
            "xff={} proto={} real={} secret={}",
            hv("x-forwarded-for"),
            hv("x-forwarded-proto"),
            hv("x-real-ip"),
            hv("x-secret")
        ))
    })
    .await;
    h.add(1, "test", domains(&["fwd.test"]), local).unwrap();
    assert_eq!(
        body_of(h.addr, "fwd.test", "/").await,
        "xff=127.0.0.1 proto=http real=127.0.0.1 secret=-"
    );
    let mut req = get("fwd.test", "/");
    let hm = req.headers_mut();
    hm.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    hm.insert("x-forwarded-proto", "https".parse().unwrap());
    hm.insert("x-real-ip", "203.0.113.7".parse().unwrap());
    hm.insert("x-secret", "hop".parse().unwrap());
    hm.insert(header::CONNECTION, "x-secret".parse().unwrap());
    let (_, _, body) = fetch(h.addr, req).await;
    assert_eq!(
        body,
        "xff=203.0.113.7, 127.0.0.1 proto=http real=127.0.0.1 secret=-"
    );
    h.stop().await;
}

/// frp "Websocket protocol": an upgrade passes through, messages echo both ways.
#[tokio::test]
async fn websocket_passes_through() {
    let h = Harness::default().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    h.add(1, "ws", domains(&["ws.example.com"]), local).unwrap();
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.example.com/chat", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..10 {
        let msg = format!("hello {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let back = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let back = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
    h.stop().await;
}

/// frp's 404 for an unknown host: a small HTML page that names the problem and
/// nothing else (no server version).
#[tokio::test]
async fn unknown_host_is_404() {
    let h = Harness::default().await;
    h.add(1, "web", domains(&["known.test"]), says("hi").await)
        .unwrap();
    let (status, headers, body) = fetch(h.addr, get("unknown.test", "/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        headers.get(header::CONTENT_TYPE).unwrap(),
        "text/html; charset=utf-8"
    );
    assert!(headers.get(header::SERVER).is_none());
    assert!(
        body.contains("404 Not Found") && body.contains("No service"),
        "{body}"
    );
    assert!(body.len() < 512, "{body}");
    // A request without Host at all.
    let answer = raw(h.addr, b"GET / HTTP/1.0\r\n\r\n".to_vec()).await;
    assert!(
        answer.starts_with("HTTP/1.0 400") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_eq!(h.opened(), 0);
    h.stop().await;
}

/// frp "vhostHTTPTimeout": a peer slower than the response timeout gets 504, in
/// time; the route keeps working for fast requests.
#[tokio::test]
async fn slow_upstream_is_504() {
    let cfg = VhostConfig {
        response_timeout: Duration::from_millis(500),
        ..VhostConfig::default()
    };
    let h = Harness::new(None, cfg).await;
    let local = service(|req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        text("done")
    })
    .await;
    h.add(1, "web", domains(&["slow.test"]), local).unwrap();
    assert_eq!(body_of(h.addr, "slow.test", "/").await, "done");
    let start = Instant::now();
    let (status, _, body) = fetch(h.addr, get("slow.test", "/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(body_of(h.addr, "slow.test", "/").await, "done");
    h.stop().await;
}

// ---------------------------------------------------------------------------------
// Beyond frp's cases.

/// An offline peer: 502 at once, without trying to open a stream; back online, the
/// route works again. An opener that fails (the peer's connection is gone) is 502
/// too.
#[tokio::test]
async fn offline_peer_is_502() {
    let h = Harness::default().await;
    h.add(7, "web", domains(&["peer.test"]), says("up").await)
        .unwrap();
    assert_eq!(body_of(h.addr, "peer.test", "/").await, "up");
    let opened = h.opened();
    h.vhosts.set_online(7, false);
    let start = Instant::now();
    let (status, _, body) = fetch(h.addr, get("peer.test", "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("offline"), "{body}");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(h.opened(), opened, "no stream opened for an offline peer");
    h.vhosts.set_online(7, true);
    assert_eq!(body_of(h.addr, "peer.test", "/").await, "up");

    // The peer's connection goes away while the route is still online.
    h.mux.close();
    h.mux.closed().await;
    h.vhosts.set_online(7, false);
    h.vhosts.set_online(7, true); // drops pooled connections, as a reconnect would
    let (status, _, body) = fetch(h.addr, get("peer.test", "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    h.stop().await;
}

/// A request hyper cannot parse gets 400.
#[tokio::test]
async fn malformed_request_is_400() {
    let h = Harness::default().await;
    h.add(1, "web", domains(&["a.test"]), says("hi").await)
        .unwrap();
    let answer = raw(
        h.addr,
        b"GARBAGE\x01 / HTTP/9\r\nHost: a.test\r\n\r\n".to_vec(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(h.addr, b"GET / HTTP/1.1\r\nHost a.test\r\n\r\n".to_vec()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(h.opened(), 0);
    h.stop().await;
}

/// Headers over the limit get 431; just under it pass.
#[tokio::test]
async fn oversized_headers_are_431() {
    let cfg = VhostConfig {
        max_header_size: 16 * 1024,
        ..VhostConfig::default()
    };
    let h = Harness::new(None, cfg).await;
    h.add(1, "web", domains(&["a.test"]), says("hi").await)
        .unwrap();
    let request = |filler: usize| {
        let mut r = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nX-Big: ".to_vec();
        r.extend(std::iter::repeat_n(b'a', filler));
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let answer = raw(h.addr, request(100 * 1024)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let answer = raw(h.addr, request(12 * 1024)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    h.stop().await;
}

/// A client that sends its headers one byte per second is cut off once the header
/// read timeout has passed, long before it is done.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let cfg = VhostConfig {
        header_read_timeout: Duration::from_secs(2),
        ..VhostConfig::default()
    };
    let h = Harness::new(None, cfg).await;
    h.add(1, "web", domains(&["a.test"]), says("hi").await)
        .unwrap();
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let start = Instant::now();
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let request = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: 1234567890\r\n\r\n";
        for b in request {
            if w.write_all(&[*b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        true
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, r.read_to_end(&mut buf))
        .await
        .expect("cut off in time");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "cut off after {took:?}"
    );
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    writer.abort();
    h.stop().await;
}

/// N sequential requests on one client connection use one upstream stream: the
/// upstream connection is kept alive and reused. Concurrent clients reuse the pool
/// too: the streams opened stay at the peak concurrency.
#[tokio::test]
async fn upstream_connections_are_reused() {
    let h = Harness::default().await;
    h.add(1, "web", domains(&["a.test"]), says("hi").await)
        .unwrap();
    let mut client = Client::new(h.addr).await;
    for _ in 0..50 {
        let (status, _, body) = client.send(get("a.test", "/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hi"));
    }
    assert_eq!(
        h.opened(),
        1,
        "one upstream stream for 50 sequential requests"
    );

    // New client connections, one after another, reuse it too.
    for _ in 0..10 {
        assert_eq!(body_of(h.addr, "a.test", "/").await, "hi");
    }
    assert_eq!(h.opened(), 1);

    // 8 clients at once, 20 requests each: at most 8 streams in all.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = h.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr).await;
            for _ in 0..20 {
                assert_eq!(c.send(get("a.test", "/")).await.2, "hi");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(h.opened() <= 8, "{} streams", h.opened());
    h.stop().await;
}

/// Request and response bodies pass both ways, large and chunked.
#[tokio::test]
async fn bodies_pass_both_ways() {
    let h = Harness::default().await;
    let local = service(|req: Request<Incoming>| async move {
        let method = req.method().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut out = format!("{method} {} ", body.len()).into_bytes();
        out.extend_from_slice(&body);
        text(out)
    })
    .await;
    h.add(1, "echo", domains(&["echo.test"]), local).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let req = Request::post("/upload")
        .header(header::HOST, "echo.test")
        .body(Full::new(Bytes::from(data.clone())))
        .unwrap();
    let mut client = Client::new(h.addr).await;
    let (status, _, body) = client.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("POST 3000000 "), "{}", &body[..40]);
    assert_eq!(body.as_bytes()["POST 3000000 ".len()..], data[..]);
    // Raw, chunked, with a binary-safe check.
    let answer = raw(
        h.addr,
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("POST 11 hello world"), "{answer}");
    h.stop().await;
}

/// An upstream that closes every connection after one response: each request still
/// succeeds (a closed pooled connection is noticed, or the request retried on a new
/// one). An upstream that answers before reading the whole body (413): the answer
/// passes, and the busy connection is not reused.
#[tokio::test]
async fn upstream_closes_and_early_answers() {
    let h = Harness::default().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    service_fn(|_req| async { Ok::<_, std::convert::Infallible>(text("once")) });
                let _ = http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    h.add(1, "closing", domains(&["closing.test"]), closing)
        .unwrap();
    let mut client = Client::new(h.addr).await;
    for i in 0..30 {
        let (status, _, body) = client.send(get("closing.test", "/")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "once"),
            "request {i}"
        );
    }

    // Raw, so that it can answer first and read the body afterwards (a hyper server
    // would close with the body unread, and the reset can destroy the answer).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let early = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let b = tcp.read_u8().await.unwrap();
                    head.push(b);
                }
                if head.starts_with(b"POST") {
                    tcp.write_all(
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large",
                    )
                    .await
                    .unwrap();
                    let _ = tokio::io::copy(&mut tcp, &mut tokio::io::sink()).await;
                } else {
                    tcp.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfine",
                    )
                    .await
                    .unwrap();
                }
            });
        }
    });
    h.add(1, "early", domains(&["early.test"]), early).unwrap();
    let req = Request::post("/upload")
        .header(header::HOST, "early.test")
        .body(Full::new(Bytes::from(vec![b'x'; 8 << 20])))
        .unwrap();
    let (status, _, _) = Client::new(h.addr).await.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    for _ in 0..5 {
        assert_eq!(body_of(h.addr, "early.test", "/").await, "fine");
    }
    h.stop().await;
}

/// CONNECT is refused: the vhost tunnels nowhere.
#[tokio::test]
async fn connect_is_refused() {
    let h = Harness::default().await;
    h.add(1, "web", domains(&["a.test"]), says("hi").await)
        .unwrap();
    let answer = raw(
        h.addr,
        b"CONNECT a.test:80 HTTP/1.1\r\nHost: a.test:80\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(h.opened(), 0);
    h.stop().await;
}

/// A second claim of the same host and location by another owner (or another
/// proxy) is an error naming the host, the location and both claimants; other
/// locations of the same host are fine; the owner can re-add its own route.
#[tokio::test]
async fn conflicting_claims_are_refused() {
    let h = Harness::default().await;
    let local = says("first").await;
    let urls = h
        .add(1, "web", domains(&["shared.example.com"]), local)
        .unwrap();
    assert_eq!(urls, ["http://shared.example.com/"]);
    let err = h
        .add(
            2,
            "intruder",
            domains(&["Shared.Example.com"]),
            says("second").await,
        )
        .unwrap_err();
    for part in ["shared.example.com", "location /", "'web'", "'intruder'"] {
        assert!(err.contains(part), "{part:?} missing in: {err}");
    }
    let err = h
        .add(1, "web2", domains(&["shared.example.com"]), local)
        .unwrap_err();
    assert!(err.contains("'web'") && err.contains("'web2'"), "{err}");
    // Nothing changed: the first claim still serves.
    assert_eq!(body_of(h.addr, "shared.example.com", "/").await, "first");

    let mut r = domains(&["shared.example.com"]);
    r.locations = vec!["/api".into()];
    h.add(2, "api", r, says("api").await).unwrap();
    assert_eq!(
        body_of(h.addr, "shared.example.com", "/api/v1").await,
        "api"
    );

    // The owner takes its route again (a reconnect), now with a new service.
    h.add(
        1,
        "web",
        domains(&["shared.example.com"]),
        says("again").await,
    )
    .unwrap();
    assert_eq!(body_of(h.addr, "shared.example.com", "/").await, "again");

    // Once removed, another owner may claim it.
    h.vhosts.remove(1, "web");
    assert_eq!(
        status_of(h.addr, "shared.example.com", "/").await,
        StatusCode::NOT_FOUND
    );
    h.add(
        2,
        "intruder",
        domains(&["shared.example.com"]),
        says("second").await,
    )
    .unwrap();
    assert_eq!(body_of(h.addr, "shared.example.com", "/").await, "second");
    h.vhosts.remove_owner(2);
    assert_eq!(
        status_of(h.addr, "shared.example.com", "/api").await,
        StatusCode::NOT_FOUND
    );

    // Invalid routes are refused with a reason.
    for bad in [
        domains(&[]),
        domains(&["bad host"]),
        domains(&["a.test:80"]),
    ] {
        assert!(h.add(3, "bad", bad, local).is_err());
    }
    let mut r = domains(&["a.test"]);
    r.locations = vec!["no-slash".into()];
    assert!(h.add(3, "bad", r, local).unwrap_err().contains("location"));
    h.stop().await;
}

/// Shutdown: serve returns promptly even with a client connection open and idle.
#[tokio::test]
async fn shutdown_returns() {
    let h = Harness::default().await;
    h.add(1, "web", domains(&["a.test"]), says("hi").await)
        .unwrap();
    let mut client = Client::new(h.addr).await;
    assert_eq!(client.send(get("a.test", "/")).await.2, "hi");
    let start = Instant::now();
    h.stop().await;
    assert!(start.elapsed() < Duration::from_secs(3));
}
