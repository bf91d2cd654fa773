//! `peer expose http` and config files through the real binaries: a real HTTP client
//! (curl) and a real websocket client against real local servers, behind the real
//! `rendezvous` vhost. Routing by host, wildcard, subdomain and location (whole,
//! normalized path segments; duplicate or disagreeing Host refused); basic auth;
//! header sets and host rewrite; forwarded headers; websocket; the error pages (404,
//! 502, 400); slow headers cut off; conflicts; a server restart; frp config files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);

/// A local HTTP server that answers `NAME host=<Host> path=<path> [query=<query>]
/// h:<name>=<value>...`
/// for the headers the tests look at, sets `x-upstream: NAME`, and echoes websockets
/// on `/ws`.
fn upstream(name: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            l.set_nonblocking(true).unwrap();
            let l = TcpListener::from_std(l).unwrap();
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                tokio::spawn(serve_one(name, tcp));
            }
        });
    });
    addr
}

async fn serve_one(name: &'static str, tcp: TcpStream) {
    // Peek the request line to tell a websocket upgrade from plain HTTP.
    let mut buf = [0u8; 1024];
    let n = tcp.peek(&mut buf).await.unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    if head.starts_with("GET /ws") {
        if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() && ws.send(msg).await.is_err() {
                    break;
                }
            }
        }
        return;
    }
    let svc = hyper::service::service_fn(
        move |req: hyper::Request<hyper::body::Incoming>| async move {
            let mut text = format!(
                "{name} host={} path={}",
                req.headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                req.uri().path()
            );
            if let Some(q) = req.uri().query() {
                text.push_str(&format!(" query={q}"));
            }
            for h in [
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "x-from",
                "authorization",
            ] {
                if let Some(v) = req.headers().get(h).and_then(|v| v.to_str().ok()) {
                    text.push_str(&format!(" h:{h}={v}"));
                }
            }
            let resp = hyper::Response::builder()
                .header("x-upstream", name)
                .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                .unwrap();
            Ok::<_, std::convert::Infallible>(resp)
        },
    );
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
        .with_upgrades()
        .await;
}

struct Server {
    proc: Proc,
    addr: SocketAddr,
    vhost: SocketAddr,
}

fn server(args: &[&str]) -> Server {
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let mut all = vec!["--bind", "127.0.0.1", "--subdomain-host", "example.com"];
    all.extend_from_slice(args);
    if !args.contains(&"--vhost-http-port") {
        all.extend(["--vhost-http-port", "0"]);
    }
    let (proc, addr) = rendezvous(cmd, &all);
    let line = proc.stdout.wait_for("http vhost on", T);
    let vhost = line.rsplit(' ').next().unwrap().parse().unwrap();
    Server { proc, addr, vhost }
}

fn expose(s: &Server, local: SocketAddr, args: &[&str]) -> Proc {
    let mut cmd = local_cmd("peer");
    let (srv, loc) = (s.addr.to_string(), local.to_string());
    cmd.args(["--server", &srv, "expose", "http", "--local", &loc]);
    cmd.args(args);
    Proc::spawn("peer", cmd)
}

fn local_cmd(name: &str) -> Command {
    let mut c = local(name);
    c.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    c
}

/// curl through the vhost: (status, headers+body).
fn curl(vhost: SocketAddr, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{host}:{}{path}", vhost.port());
    let out = Command::new("curl")
        .args([
            "-s",
            "-i",
            "--max-time",
            "20",
            "--resolve",
            &format!("{host}:{}:127.0.0.1", vhost.port()),
        ])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn routing_auth_headers_and_error_pages() {
    let s = server(&[]);
    let (web, api) = (upstream("web"), upstream("api"));
    // Both proxies belong to one peer (one identity, two processes): only the holder
    // of a host may add locations under it.
    let id = lab::fresh_identity();
    let id = id.to_str().unwrap();
    let a = expose(
        &s,
        web,
        &[
            "--identity",
            id,
            "--domain",
            "www.example.com",
            "--domain",
            "*.apps.example.com",
            "--subdomain",
            "blog",
            "--name",
            "web",
        ],
    );
    a.stdout.wait_for("exposed web http", T);
    let b = expose(
        &s,
        api,
        &[
            "--identity",
            id,
            "--domain",
            "www.example.com",
            "--location",
            "/api",
            "--name",
            "api",
            "--basic-auth",
            "alice:s3cret",
            "--host-rewrite",
            "api.internal",
            "--request-header",
            "x-from=punchline",
            "--response-header",
            "x-served-by=punchline",
        ],
    );
    b.stdout.wait_for("exposed api http", T);

    // Host, wildcard and subdomain routing; longest location wins.
    let (st, body) = curl(s.vhost, "www.example.com", "/index", &[]);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("web host=www.example.com"), "{body}");
    assert!(curl(s.vhost, "x.apps.example.com", "/", &[])
        .1
        .contains("web host=x.apps.example.com"));
    assert!(curl(s.vhost, "blog.example.com", "/", &[])
        .1
        .contains("web host=blog.example.com"));
    // Basic auth on /api.
    let (st, body) = curl(s.vhost, "www.example.com", "/api/v1", &[]);
    assert_eq!(st, 401, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("www-authenticate"),
        "{body}"
    );
    assert_eq!(
        curl(
            s.vhost,
            "www.example.com",
            "/api/v1",
            &["-u", "alice:wrong"]
        )
        .0,
        401
    );
    let (st, body) = curl(
        s.vhost,
        "www.example.com",
        "/api/v1",
        &["-u", "alice:s3cret"],
    );
    assert_eq!(st, 200, "{body}");
    // Routed to api, host rewritten, request header set, response header set,
    // forwarded headers added.
    assert!(
        body.contains("api host=api.internal path=/api/v1"),
        "{body}"
    );
    assert!(body.contains("h:x-from=punchline"), "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-served-by: punchline"),
        "{body}"
    );
    assert!(
        body.contains("h:x-forwarded-for=127.0.0.1") && body.contains("h:x-real-ip=127.0.0.1"),
        "{body}"
    );
    assert!(body.contains("h:x-forwarded-proto=http"), "{body}");

    // Unknown host: 404 page.
    let (st, body) = curl(s.vhost, "nobody.example.org", "/", &[]);
    assert_eq!(st, 404, "{body}");
    // Malformed request: 400.
    let mut raw = std::net::TcpStream::connect(s.vhost).unwrap();
    raw.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(T)).unwrap();
    let mut resp = String::new();
    let _ = raw.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");

    // Conflict: another peer claiming www.example.com at / while `web` is online.
    let mut c = expose(&s, web, &["--domain", "www.example.com", "--name", "other"]);
    assert!(!c.wait_exit(T).success());
    // It is told who holds it, by fingerprint and proxy name, and nothing else.
    let holder = local("peer")
        .args(["--identity", id, "id"])
        .output()
        .unwrap();
    let holder = String::from_utf8_lossy(&holder.stdout).trim().to_string();
    assert!(holder.starts_with("pl1:"), "{holder}");
    let err = c.stderr.text();
    assert!(
        err.contains(&format!("host www.example.com is held by peer {holder}")),
        "{err}"
    );
    assert!(
        err.contains("proxy 'web'") || err.contains("proxy 'api'"),
        "{err}"
    );

    // Peer offline: 502 at once.
    drop(a);
    let started = Instant::now();
    let deadline = started + T;
    loop {
        let (st, _) = curl(s.vhost, "www.example.com", "/", &[]);
        if st == 502 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 502 after the peer died (last status {st})"
        );
    }
    let t = Instant::now();
    assert_eq!(curl(s.vhost, "www.example.com", "/", &[]).0, 502);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "502 took {:?}",
        t.elapsed()
    );
    drop(s.proc);
}

/// A request written as it is (clients normalize paths, so this is how to send
/// `..`): (status, the answer). `request` is the request line and headers, without
/// the blank line that ends them. Reads the head and its `Content-Length` body (just
/// the head if it has none, as a 101).
fn raw_request(vhost: SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(vhost).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    tcp.write_all(format!("{request}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end].lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_none_or(|n| answer.len() >= end + 4 + n) {
                break;
            }
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Issue 8: a public `/public` beside a `/` behind basic auth on one domain. Locations
/// match whole segments of the normalized path, and the service gets the path that
/// was routed: `..` (raw or `%2e`-encoded) cannot reach the `/` route's service
/// through `/public`; ambiguous paths and Host headers are refused.
#[test]
fn locations_match_whole_normalized_segments() {
    let s = server(&[]);
    let (public, private) = (upstream("public"), upstream("private"));
    // One site owner (one identity), two processes: only it may add locations.
    let id = lab::fresh_identity();
    let id = id.to_str().unwrap();
    let a = expose(
        &s,
        public,
        &[
            "--identity",
            id,
            "--domain",
            "paths.example.com",
            "--location",
            "/public",
            "--name",
            "public",
        ],
    );
    a.stdout.wait_for("exposed public http", T);
    let b = expose(
        &s,
        private,
        &[
            "--identity",
            id,
            "--domain",
            "paths.example.com",
            "--name",
            "private",
            "--basic-auth",
            "alice:s3cret",
        ],
    );
    b.stdout.wait_for("exposed private http", T);
    const HOST: &str = "paths.example.com";
    let get = |target: &str, headers: &str| {
        raw_request(
            s.vhost,
            &format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close{headers}"),
        )
    };
    // alice:s3cret
    const AUTH: &str = "\r\nAuthorization: Basic YWxpY2U6czNjcmV0";

    // A websocket upgrade is routed the same way, and the service gets `/ws` (it
    // upgrades on `GET /ws` as a connection's first request: this goes first, before
    // the vhost pools a connection to it).
    let upgrade = |headers: &str| {
        raw_request(
            s.vhost,
            &format!(
                "GET /public/%2e%2e/ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=={headers}"
            ),
        )
    };
    let (st, answer) = upgrade("");
    assert_eq!(st, 401, "{answer}");
    let (st, answer) = upgrade(AUTH);
    assert_eq!(st, 101, "{answer}");

    // Whole segments: /public and below go to the public service as they are.
    for path in ["/public", "/public/", "/public/x", "/public/x/y.html"] {
        let (st, body) = curl(s.vhost, HOST, path, &[]);
        assert_eq!(st, 200, "{path}: {body}");
        assert!(
            body.contains(&format!(
                "public host={HOST}:{} path={path} ",
                s.vhost.port()
            )),
            "{path}: {body}"
        );
    }
    // ...but /publicadmin is not under /public: the `/` route, which wants a password.
    let (st, body) = curl(s.vhost, HOST, "/publicadmin", &[]);
    assert_eq!(st, 401, "{body}");
    let (st, body) = curl(s.vhost, HOST, "/publicadmin", &["-u", "alice:s3cret"]);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(" path=/publicadmin "), "{body}");
    assert!(body.contains("private host="), "{body}");

    // Dot segments, raw or encoded, are resolved before routing.
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/.%2E/admin",
        "/public/x/../../admin",
        "/public/./../admin?q=1",
        "http://paths.example.com/public/../admin",
    ] {
        let (st, answer) = get(target, "");
        assert_eq!(st, 401, "{target}: {answer}");
        assert!(!answer.contains("public host="), "{target}: {answer}");
    }
    // With the password, the private service gets the normalized path (and the query
    // as it was).
    let (st, answer) = get("/public/%2e%2e/admin?q=/../x", AUTH);
    assert_eq!(st, 200, "{answer}");
    assert!(
        answer.contains("private host=paths.example.com path=/admin query=q=/../x "),
        "{answer}"
    );
    let (st, answer) = get("http://paths.example.com/public/../admin", AUTH);
    assert_eq!(st, 200, "{answer}");
    assert!(
        answer.contains("private host=paths.example.com path=/admin"),
        "{answer}"
    );
    // Staying under /public: the public service gets the normalized path.
    let (st, answer) = get("/public/x/../%79", "");
    assert_eq!(st, 200, "{answer}");
    assert!(
        answer.contains("public host=paths.example.com path=/public/y"),
        "{answer}"
    );

    // Paths a service could read differently from the router: 400.
    for target in [
        "/public/%2fx",
        "/public%2F..%2Fadmin",
        "/public/%5c../admin",
        "/public\\..\\admin",
        "/public/%00",
        "/public/..;/admin",
        "/public/%zz",
    ] {
        let (st, answer) = get(target, "");
        assert_eq!(st, 400, "{target}: {answer}");
        assert!(
            answer.contains("<h1>400 Bad Request</h1>"),
            "{target}: {answer}"
        );
    }
    // Two Host headers, or a Host that disagrees with an absolute target: 400.
    let (st, answer) = get("/public/x", "\r\nHost: other.example.com");
    assert_eq!(st, 400, "{answer}");
    let (st, answer) = get("/public/x", &format!("\r\nHost: {HOST}"));
    assert_eq!(st, 400, "{answer}");
    let (st, answer) = raw_request(
        s.vhost,
        "GET http://paths.example.com/public/x HTTP/1.1\r\n\
         Host: other.example.com\r\nConnection: close",
    );
    assert_eq!(st, 400, "{answer}");
    // An absolute target that agrees with Host is fine.
    let (st, answer) = raw_request(
        s.vhost,
        "GET http://paths.example.com/public/x HTTP/1.1\r\n\
         Host: PATHS.example.com:80\r\nConnection: close",
    );
    assert_eq!(st, 200, "{answer}");
    assert!(
        answer.contains("public host=paths.example.com path=/public/x"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_the_vhost() {
    let s = server(&[]);
    let up = upstream("ws");
    let p = expose(&s, up, &["--domain", "ws.example.com"]);
    p.stdout.wait_for("exposed", T);
    let tcp = TcpStream::connect(s.vhost).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.example.com/ws", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        let msg = format!("message {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        let back = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
}

#[test]
fn slow_headers_are_cut_off() {
    let s = server(&[]);
    let mut raw = std::net::TcpStream::connect(s.vhost).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(900)))
        .unwrap();
    let started = Instant::now();
    let request = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in request {
        // One byte per second, as a slowloris client does.
        if raw.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match raw.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the server kept a slow client");
    let secs = started.elapsed().as_secs_f64();
    assert!(secs < 40.0, "cut off only after {secs:.0} s");
}

#[test]
fn a_server_restart_is_survived() {
    let s = server(&["--vhost-http-port", "0"]);
    let up = upstream("web");
    let p = expose(&s, up, &["--domain", "www.example.com"]);
    p.stdout.wait_for("exposed", T);
    assert_eq!(curl(s.vhost, "www.example.com", "/", &[]).0, 200);
    let (port, vport) = (s.addr.port().to_string(), s.vhost.port().to_string());
    drop(s.proc);
    let s2 = server(&["--port", &port, "--vhost-http-port", &vport]);
    s2.proc
        .stderr
        .wait_for("http route exposed", Duration::from_secs(60));
    s2.proc.stderr.wait_for("data connection up", T);
    assert_eq!(curl(s2.vhost, "www.example.com", "/", &[]).0, 200);
}

#[test]
fn frp_config_files_work_as_they_are() {
    let dir = std::env::temp_dir().join(format!("pl-frp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Ports for the server come from the OS (bound and released), as frps.toml needs
    // fixed numbers.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (bind, vhost, remote) = (free(), free(), free());
    let frps = format!(
        "bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nvhostHTTPPort = {vhost}\nsubDomainHost = \"example.com\"\n\
         auth.method = \"token\"\nauth.token = \"tok\"\nallowPorts = [{{ single = {remote} }}]\n"
    );
    let web = upstream("web");
    let mut cmd = Command::new(bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let echo_port: u16 = echo
        .stdout
        .wait_for("listening on", T)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let frpc = format!(
        "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nauth.token = \"tok\"\n\n\
         [[proxies]]\nname = \"echo\"\ntype = \"tcp\"\nlocalIP = \"127.0.0.1\"\nlocalPort = {echo_port}\nremotePort = {remote}\n\n\
         [[proxies]]\nname = \"web\"\ntype = \"http\"\nlocalPort = {}\ncustomDomains = [\"www.example.com\"]\nsubdomain = \"web\"\n",
        web.port()
    );
    std::fs::write(dir.join("frps.toml"), frps).unwrap();
    std::fs::write(dir.join("frpc.toml"), frpc).unwrap();
    let mut cmd = local_cmd("rendezvous");
    cmd.args(["-c", dir.join("frps.toml").to_str().unwrap()]);
    let srv = Proc::spawn("rendezvous", cmd);
    srv.stdout.wait_for("http vhost on", T);
    let mut cmd = local_cmd("peer");
    cmd.args(["-c", dir.join("frpc.toml").to_str().unwrap()]);
    let peer = Proc::spawn("peer", cmd);
    peer.stdout.wait_for("exposed echo tcp", T);
    peer.stdout.wait_for("exposed web http", T);
    let vhost_addr = SocketAddr::from(([127, 0, 0, 1], vhost));
    assert!(curl(vhost_addr, "web.example.com", "/", &[])
        .1
        .contains("web host=web.example.com"));
    let out = Command::new(bin("stream-check"))
        .args([
            "run",
            &format!("127.0.0.1:{remote}"),
            "--streams",
            "4",
            "--bytes",
            "2000000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A key punchline cannot honour is an error naming it.
    std::fs::write(
        dir.join("bad.toml"),
        "serverAddr = \"127.0.0.1\"\n[[proxies]]\nname = \"s\"\ntype = \"tcp\"\nlocalPort = 1\n\
         loadBalancer.group = \"g\"\n",
    )
    .unwrap();
    let out = local_cmd("peer")
        .args(["-c", dir.join("bad.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("proxies[0].loadBalancer.group"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A local HTTP server for the fairness test: `POST` reads the whole body and
/// answers its length; `GET /stall` sends the head and 5 bytes of a chunked body,
/// then nothing; anything else answers `ok`.
fn slow_upstream() -> SocketAddr {
    use http_body_util::{BodyExt, StreamBody};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            l.set_nonblocking(true).unwrap();
            let l = TcpListener::from_std(l).unwrap();
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            type Frames = futures::stream::BoxStream<
                                'static,
                                Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
                            >;
                            let body: Frames = if req.method() == hyper::Method::POST {
                                let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                                let text = format!("got {}", n.unwrap_or(0));
                                futures::stream::once(async move {
                                    Ok(hyper::body::Frame::data(bytes::Bytes::from(text)))
                                })
                                .boxed()
                            } else if req.uri().path() == "/stall" {
                                futures::stream::once(async {
                                    Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                                        b"start",
                                    )))
                                })
                                .chain(futures::stream::pending())
                                .boxed()
                            } else {
                                futures::stream::once(async {
                                    Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"ok")))
                                })
                                .boxed()
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                StreamBody::new(body),
                            ))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// One client address cannot hold a site: past `--vhost-max-per-client` its requests
/// get 429 while another address is served; request bodies that stop arriving get 408
/// after `--vhost-idle-timeout` (freeing the slots), and a response whose body stops
/// coming from the peer cuts the client's connection (curl sees a partial transfer,
/// not a clean end).
#[test]
fn slow_clients_and_stalled_responses_harm_only_themselves() {
    const LIMIT: usize = 8;
    let s = server(&["--vhost-idle-timeout", "2", "--vhost-max-per-client", "8"]);
    let up = slow_upstream();
    let p = expose(&s, up, &["--domain", "slow.example.com"]);
    p.stdout.wait_for("exposed", T);
    assert_eq!(curl(s.vhost, "slow.example.com", "/", &[]).0, 200);

    // LIMIT uploads that send one byte of 1,000 and then nothing.
    let started = Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..LIMIT)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(s.vhost).unwrap();
            c.write_all(
                b"POST /up HTTP/1.1\r\nHost: slow.example.com\r\nContent-Length: 1000\r\n\r\nx",
            )
            .unwrap();
            c
        })
        .collect();
    // Their slots are taken once their heads are routed: wait for that from outside
    // (a 429 for the next one), bounded.
    let mut refused = (0, String::new());
    for _ in 0..100 {
        refused = curl(s.vhost, "slow.example.com", "/", &[]);
        if refused.0 == 429 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert!(
        refused.1.contains("Too many requests at once"),
        "{}",
        refused.1
    );
    // Another address is served meanwhile.
    let other = curl(
        s.vhost,
        "slow.example.com",
        "/",
        &["--interface", "127.0.0.2"],
    );
    assert_eq!(other.0, 200, "{}", other.1);
    assert!(s
        .proc
        .stderr
        .wait_for("at its limit of requests in flight", T)
        .contains("127.0.0.1"));

    // The stalled uploads get 408 after the idle timeout, and the slots come back.
    for c in &mut slow {
        c.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "stalled bodies held for {took:?}"
    );
    assert_eq!(curl(s.vhost, "slow.example.com", "/", &[]).0, 200);

    // A complete upload still goes through whole.
    let body = "y".repeat(100_000);
    let (code, text) = curl(
        s.vhost,
        "slow.example.com",
        "/up",
        &["--data-binary", &body],
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.ends_with("got 100000"), "{text}");

    // A response that stalls after 5 bytes: the client's connection is cut (curl exit
    // 18, "transfer closed with outstanding read data") within seconds.
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "--resolve"])
        .arg(format!("slow.example.com:{}:127.0.0.1", s.vhost.port()))
        .arg(format!("http://slow.example.com:{}/stall", s.vhost.port()))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "start");
    assert_eq!(out.status.code(), Some(18), "{out:?}");
    assert!(
        took < Duration::from_secs(15),
        "stalled response held for {took:?}"
    );
}
