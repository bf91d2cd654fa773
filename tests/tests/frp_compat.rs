//! frp users switch without editing their files: `rendezvous -c` and `peer -c` on files
//! written as frp's documentation and its own test framework write them (TOML and the
//! legacy INI format, with log settings, `loginFailExit`, keys in another case and
//! `{{ .Envs.X }}` templates), a mixed file where one proxy is refused and the others
//! serve, frp's status lines, `verify -c`, and frp's command-line forms. Data is
//! checked by sha256 (stream-check) and through a real HTTP client (curl).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::*;

const T: Duration = Duration::from_secs(30);

/// A port the OS had free a moment ago (frp's files need fixed numbers).
fn free() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory for one test's files.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pl-frpc-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// stream-check's echo server; returns it and its port.
fn echo() -> (Proc, u16) {
    let mut cmd = Command::new(bin("stream-check"));
    cmd.args(["echo", "0"]);
    let p = Proc::spawn("echo", cmd);
    let port = p
        .stdout
        .wait_for("listening on", T)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (p, port)
}

/// A local HTTP server answering every request with `web <Host>`.
fn web() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("host:"))
                    .unwrap_or("-")
                    .trim();
                let host = host.split(':').next().unwrap_or(host).to_string();
                let body = format!("web {host}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// curl through the vhost: the body, or panics with curl's output.
fn curl(vhost: u16, host: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "20",
            "--resolve",
            &format!("{host}:{vhost}:127.0.0.1"),
            &format!("http://{host}:{vhost}/"),
        ])
        .output()
        .expect("curl (apt-get install curl)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// 4 streams of 500 kB each through `port`, echoed and compared by sha256.
fn carry(port: u16) {
    let out = Command::new(bin("stream-check"))
        .args([
            "run",
            &format!("127.0.0.1:{port}"),
            "--streams",
            "4",
            "--bytes",
            "500000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cmd(name: &str) -> Command {
    let mut c = local(name);
    c.env_remove("PUNCHLINE_TOKEN").env_remove("RUST_LOG");
    c
}

fn with_config(name: &str, file: &Path) -> Proc {
    let mut c = cmd(name);
    c.env("FRP_AUTH_TOKEN", "token-from-the-environment");
    c.args(["-c", file.to_str().unwrap()]);
    Proc::spawn(name, c)
}

/// The lines of a log that contain `pat`.
fn lines_with(log: &Log, pat: &str) -> Vec<String> {
    log.text()
        .lines()
        .filter(|l| l.contains(pat))
        .map(str::to_string)
        .collect()
}

/// A peer serving a good tcp proxy, a refused one (its port is outside allowPorts) and
/// an http one: frp's status lines, one warning naming every key with no effect, and
/// the good proxies carry data while the refused one is reported.
fn mixed(server: &Path, client: &Path, vhost: Option<u16>, good: u16) {
    let srv = with_config("rendezvous", server);
    srv.stdout.wait_for("listening on", T);
    let peer = with_config("peer", client);
    peer.stderr.wait_for("login to server success", T);
    peer.stderr.wait_for("[good] start proxy success", T);
    let refused = peer.stderr.wait_for("[bad] start error:", T);
    assert!(refused.contains("allowed"), "{refused}");
    if let Some(vhost) = vhost {
        peer.stderr.wait_for("[web] start proxy success", T);
        assert_eq!(curl(vhost, "web.example.com"), "web web.example.com");
    }
    carry(good);
    // The refused proxy stopped nothing.
    let mut peer = peer;
    assert!(
        peer.child.try_wait().unwrap().is_none(),
        "{}",
        peer.stderr.text()
    );
    // One warning, naming every key with no effect.
    let warned = lines_with(&peer.stderr, "have no effect");
    assert_eq!(warned.len(), 1, "{}", peer.stderr.text());
    for key in ["loginFailExit", "log.level"] {
        assert!(warned[0].contains(key), "{key} in {}", warned[0]);
    }
    let warned = lines_with(&srv.stderr, "have no effect");
    assert_eq!(warned.len(), 1, "{}", srv.stderr.text());
    assert!(warned[0].contains("log.level"), "{}", warned[0]);
}

#[test]
fn toml_files_as_frp_writes_them() {
    let d = dir("toml");
    let (bind, vhost, good, bad) = (free(), free(), free(), free());
    let (_echo, echo_port) = echo();
    let web_port = web();
    let frps = format!(
        r#"bindAddr = "127.0.0.1"
bindPort = {bind}
vhostHTTPPort = {vhost}
subdomainHost = "example.com"
log.level = "trace"
log.to = "console"
auth.token = "{{{{ .Envs.FRP_AUTH_TOKEN }}}}"
allowPorts = [{{ single = {good} }}]
transport.tls.force = false
"#
    );
    let frpc = format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {bind}
loginFailExit = false
log.level = "trace"
auth.token = "{{{{ .Envs.FRP_AUTH_TOKEN }}}}"
transport.tls.enable = true

[[proxies]]
name = "good"
type = "tcp"
localIP = "127.0.0.1"
localPort = {echo_port}
remotePort = {good}
transport.useEncryption = true

[[proxies]]
name = "bad"
type = "tcp"
localPort = {echo_port}
remotePort = {bad}

[[proxies]]
name = "web"
type = "http"
localPort = {web_port}
subdomain = "web"
"#
    );
    std::fs::write(d.join("frps.toml"), frps).unwrap();
    std::fs::write(d.join("frpc.toml"), frpc).unwrap();
    mixed(
        &d.join("frps.toml"),
        &d.join("frpc.toml"),
        Some(vhost),
        good,
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ini_files_as_frp_writes_them() {
    let d = dir("ini");
    let (bind, good, bad) = (free(), free(), free());
    let (_echo, echo_port) = echo();
    let frps = format!(
        "[common]\nbind_addr = 127.0.0.1\nbind_port = {bind}\ntoken = {{{{ .Envs.FRP_AUTH_TOKEN }}}}\n\
         allow_ports = {good}\nlog_level = info\nlog_max_days = 3\n"
    );
    let frpc = format!(
        "[common]\nserver_addr = 127.0.0.1\nserver_port = {bind}\ntoken = {{{{ .Envs.FRP_AUTH_TOKEN }}}}\n\
         login_fail_exit = false\nlog_level = info\n\n\
         [good]\ntype = tcp\nlocal_ip = 127.0.0.1\nlocal_port = {echo_port}\nremote_port = {good}\n\
         use_encryption = true\n\n\
         [bad]\ntype = tcp\nlocal_port = {echo_port}\nremote_port = {bad}\n"
    );
    std::fs::write(d.join("frps.ini"), frps).unwrap();
    std::fs::write(d.join("frpc.ini"), frpc).unwrap();
    mixed(&d.join("frps.ini"), &d.join("frpc.ini"), None, good);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn verify_checks_a_file_and_exits() {
    let d = dir("verify");
    std::fs::write(
        d.join("frps.toml"),
        "bindPort = 7000\nlog.level = \"info\"\nsubdomainHost = \"example.com\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("frpc.toml"),
        "serverAddr = \"127.0.0.1\"\nloginFailExit = false\n[[proxies]]\nname = \"ssh\"\n\
         type = \"tcp\"\nlocalPort = 22\nremotePort = 6000\n",
    )
    .unwrap();
    std::fs::write(
        d.join("bad.toml"),
        "serverAddr = \"127.0.0.1\"\nincludes = [\"./confd/*.toml\"]\n[[proxies]]\nname = \"s\"\n\
         type = \"tcp\"\nlocalPort = 1\n[proxies.plugin]\ntype = \"socks5\"\n",
    )
    .unwrap();
    for (bin_name, file) in [("rendezvous", "frps.toml"), ("peer", "frpc.toml")] {
        let path = d.join(file);
        let out = cmd(bin_name)
            .args(["verify", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin_name}: {out:?}");
        assert!(
            stdout.contains(&format!(
                "the configuration file {} syntax is ok",
                path.display()
            )),
            "{stdout}"
        );
    }
    let out = cmd("peer")
        .args(["verify", "-c", d.join("bad.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [": includes: ", ": proxies[0].plugin.type: "] {
        assert!(stderr.contains(key), "{key} in {stderr}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn frp_command_line_forms() {
    let (bind, vhost, remote) = (free(), free(), free());
    let (_echo, echo_port) = echo();
    let web_port = web();
    let mut c = cmd("rendezvous");
    c.args(["--bind", "127.0.0.1", "-p", &bind.to_string(), "-t", "tok"]);
    c.args(["--vhost-http-port", &vhost.to_string()]);
    let srv = Proc::spawn("rendezvous", c);
    srv.stdout.wait_for("http vhost on", T);
    let server = SocketAddr::from(([127, 0, 0, 1], bind)).ip().to_string();
    let (b, l, r) = (bind.to_string(), echo_port.to_string(), remote.to_string());
    let mut c = cmd("peer");
    c.args([
        "tcp", "-s", &server, "-P", &b, "-t", "tok", "-l", &l, "-r", &r, "-n", "ssh",
    ]);
    let tcp = Proc::spawn("peer tcp", c);
    tcp.stderr.wait_for("[ssh] start proxy success", T);
    carry(remote);
    let w = web_port.to_string();
    let mut c = cmd("peer");
    c.args([
        "http",
        "-s",
        &server,
        "-P",
        &b,
        "-t",
        "tok",
        "-l",
        &w,
        "-d",
        "www.example.com",
    ]);
    let http = Proc::spawn("peer http", c);
    http.stderr.wait_for("[http-", T);
    http.stderr.wait_for("start proxy success", T);
    assert_eq!(curl(vhost, "www.example.com"), "web www.example.com");
    // A wrong token: the peer says why and exits.
    let mut c = cmd("peer");
    c.args([
        "tcp", "-s", &server, "-P", &b, "-t", "wrong", "-l", &l, "-n", "x",
    ]);
    let mut bad = Proc::spawn("peer wrong token", c);
    assert!(!bad.wait_exit(T).success());
    assert!(
        bad.stderr.contains("[x] start error"),
        "{}",
        bad.stderr.text()
    );
}

/// frp's stcp: a secret service reached only through a visitor, carried by the server
/// (relayed, end-to-end encrypted with secretKey) even where a direct link would work,
/// as here on loopback.
#[test]
fn stcp_proxy_and_visitor() {
    let d = dir("stcp");
    let (bind, visitor_port) = (free(), free());
    let (_echo, echo_port) = echo();
    std::fs::write(
        d.join("frps.toml"),
        format!("bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nauth.token = \"tok\"\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("frpc-owner.toml"),
        format!(
            "serverPort = {bind}\nauth.token = \"tok\"\n\n[[proxies]]\nname = \"secret_ssh\"\n\
             type = \"stcp\"\nsecretKey = \"abcdefg\"\nlocalIP = \"127.0.0.1\"\nlocalPort = {echo_port}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("frpc-visitor.toml"),
        format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nauth.token = \"tok\"\n\n\
             [[visitors]]\nname = \"secret_ssh_visitor\"\ntype = \"stcp\"\nserverName = \"secret_ssh\"\n\
             secretKey = \"abcdefg\"\nbindAddr = \"127.0.0.1\"\nbindPort = {visitor_port}\n"
        ),
    )
    .unwrap();
    let srv = with_config("rendezvous", &d.join("frps.toml"));
    srv.stdout.wait_for("listening on", T);
    let owner = with_config("peer", &d.join("frpc-owner.toml"));
    owner.stderr.wait_for("[secret_ssh] start proxy success", T);
    let visitor = with_config("peer", &d.join("frpc-visitor.toml"));
    visitor
        .stderr
        .wait_for("[secret_ssh] start visitor success", T);
    carry(visitor_port);
    let up = visitor.stderr.wait_for("link up:", T);
    assert!(up.contains("link up: relayed"), "{up}");
    assert!(
        !visitor.stderr.contains("direct"),
        "{}",
        visitor.stderr.text()
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `vhostHTTPTimeout`: a peer's service that never answers gets 504 after the file's
/// 1 s, not punchline's default 60 s (curl gives up after 20 s).
#[test]
fn vhost_http_timeout_is_honoured() {
    let d = dir("timeout");
    let (bind, vhost) = (free(), free());
    // A service that reads requests and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    std::fs::write(
        d.join("frps.toml"),
        format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nvhostHTTPPort = {vhost}\nvhostHTTPTimeout = 1\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("frpc.toml"),
        format!(
            "serverPort = {bind}\n[[proxies]]\nname = \"slow\"\ntype = \"http\"\n\
             localPort = {silent}\ncustomDomains = [\"slow.example.com\"]\n"
        ),
    )
    .unwrap();
    let srv = with_config("rendezvous", &d.join("frps.toml"));
    srv.stdout.wait_for("http vhost on", T);
    let peer = with_config("peer", &d.join("frpc.toml"));
    peer.stderr.wait_for("[slow] start proxy success", T);
    let host = "slow.example.com";
    let started = std::time::Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(["--resolve", &format!("{host}:{vhost}:127.0.0.1")])
        .arg(format!("http://{host}:{vhost}/"))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(code, "504", "after {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&d);
}

/// frp's udp proxy: 32 clients at once, each its own session on the server, send
/// datagrams (one of 60,000 bytes) through a UDP port of the server to a local UDP
/// echo service; every echo comes back to its own client, compared by sha256.
#[test]
fn udp_proxy_carries_many_clients() {
    let d = dir("udp");
    let bind = free();
    let remote = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    std::fs::write(
        d.join("frps.toml"),
        format!("bindAddr = \"127.0.0.1\"\nbindPort = {bind}\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("frpc.toml"),
        format!(
            "serverPort = {bind}\n[[proxies]]\nname = \"dns\"\ntype = \"udp\"\nlocalIP = \"127.0.0.1\"\n\
             localPort = {echo_port}\nremotePort = {remote}\n"
        ),
    )
    .unwrap();
    let srv = with_config("rendezvous", &d.join("frps.toml"));
    srv.stdout.wait_for("listening on", T);
    let peer = with_config("peer", &d.join("frpc.toml"));
    peer.stderr.wait_for("[dns] start proxy success", T);
    udp_clients(remote, 32);
    assert!(
        peer.stdout.contains(&format!("exposed dns udp {remote}")),
        "{}",
        peer.stdout.text()
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A throwaway self-signed certificate for `host` (its own CA, for curl --cacert) and
/// its key, in `d`: (cert, key).
fn cert(d: &Path, host: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (d.join(format!("{host}.crt")), d.join(format!("{host}.key")));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (c, k)
}

/// `openssl s_server -WWW` with the certificate of `host`, serving the files of `root`;
/// returns it and its port.
fn tls_server(root: &Path, host: &str) -> (Proc, u16) {
    let (c, k) = cert(root, host);
    let port = free();
    let mut cmd = Command::new("openssl");
    cmd.current_dir(root)
        .args(["s_server", "-WWW", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&c)
        .arg("-key")
        .arg(&k);
    let p = Proc::spawn("s_server", cmd);
    // s_server prints nothing with -quiet: wait until it accepts.
    let deadline = std::time::Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, port)
}

/// curl over TLS through the HTTPS vhost, the certificate checked against `ca` (so the
/// answer can only come from the service holding `host`'s key): the body, or `None`
/// when curl fails.
fn curl_tls(vhost: u16, host: &str, ca: &Path, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "--http1.0", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{vhost}:127.0.0.1")])
        .arg(format!("https://{host}:{vhost}{path}"))
        .output()
        .expect("curl");
    out.status.success().then_some(out.stdout)
}

/// frp's https proxies: TLS routed by server name (SNI) on vhostHTTPSPort to the peer
/// that claims the domain, never terminated (curl checks each service's own
/// certificate); megabytes arrive intact; an unknown name, a client that is not TLS and
/// one that says nothing are closed and logged; another identity cannot take a domain.
#[test]
fn https_routes_by_server_name() {
    let d = dir("https");
    let (bind, https) = (free(), free());
    let frps = format!(
        "bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nvhostHTTPSPort = {https}\n\
         subDomainHost = \"example.com\"\nauth.token = \"tok\"\n"
    );
    std::fs::write(d.join("frps.toml"), frps).unwrap();
    let mut c = cmd("rendezvous");
    c.args(["-c", d.join("frps.toml").to_str().unwrap()]);
    c.args(["--vhost-idle-timeout", "1"]);
    let srv = Proc::spawn("rendezvous", c);
    srv.stdout.wait_for("https vhost on", T);

    // Two services with their own certificates and 1.5 MB files, behind two peers.
    let mut blobs = Vec::new();
    let mut servers = Vec::new();
    let mut peers = Vec::new();
    for (i, host) in ["a.example.com", "web.example.com"].iter().enumerate() {
        let root = d.join(host);
        std::fs::create_dir_all(&root).unwrap();
        let blob = data(1_500_000, 40 + i as u64);
        std::fs::write(root.join("blob"), &blob).unwrap();
        let (s, port) = tls_server(&root, host);
        servers.push(s);
        blobs.push(blob);
        // One from a file, as frp's docs write it; one from frp's command line.
        let peer = if i == 0 {
            let frpc = format!(
                "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nauth.token = \"tok\"\n\n\
                 [[proxies]]\nname = \"tls-a\"\ntype = \"https\"\nlocalPort = {port}\n\
                 customDomains = [\"a.example.com\"]\n"
            );
            std::fs::write(d.join("frpc.toml"), frpc).unwrap();
            with_config("peer", &d.join("frpc.toml"))
        } else {
            let mut c = cmd("peer");
            c.args([
                "https",
                "-s",
                "127.0.0.1",
                "-P",
                &bind.to_string(),
                "-t",
                "tok",
            ]);
            c.args(["-l", &port.to_string(), "--sd", "web", "-n", "tls-web"]);
            Proc::spawn("peer https", c)
        };
        peers.push(peer);
    }
    peers[0].stderr.wait_for("[tls-a] start proxy success", T);
    peers[1].stderr.wait_for("[tls-web] start proxy success", T);
    let shown = peers[1].stdout.wait_for("exposed tls-web", T);
    assert!(
        shown.contains(&format!("https://web.example.com:{https}")),
        "{shown}"
    );

    // Each name reaches its own service: the certificate checks, the bytes match.
    for (i, host) in ["a.example.com", "web.example.com"].iter().enumerate() {
        let ca = d.join(host).join(format!("{host}.crt"));
        let body = curl_tls(https, host, &ca, "/blob")
            .unwrap_or_else(|| panic!("curl https://{host}: {}", srv.stderr.text()));
        assert_eq!(sha256(&body), sha256(&blobs[i]), "{host}");
        // The other service's certificate does not check: the route is not shared.
        let other = ["a.example.com", "web.example.com"][1 - i];
        let wrong_ca = d.join(other).join(format!("{other}.crt"));
        assert!(curl_tls(https, host, &wrong_ca, "/blob").is_none());
    }

    // An unknown name: closed, and the server says why.
    let ca = d.join("a.example.com").join("a.example.com.crt");
    assert!(curl_tls(https, "nobody.example.com", &ca, "/blob").is_none());
    srv.stderr.wait_for("no proxy serves nobody.example.com", T);
    // Not TLS at all, and a client that sends nothing: both closed.
    let closed = |send: &[u8]| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", https)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(send).unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "an answer to {send:?}");
        start.elapsed()
    };
    closed(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n");
    let silent = closed(b"");
    assert!(silent >= Duration::from_millis(900), "{silent:?}");

    // Another peer (another identity) cannot take a.example.com: refused, naming the holder.
    let mut c = cmd("peer");
    c.args([
        "https",
        "-s",
        "127.0.0.1",
        "-P",
        &bind.to_string(),
        "-t",
        "tok",
    ]);
    c.args(["-l", "1", "-d", "a.example.com", "-n", "thief"]);
    let mut thief = Proc::spawn("peer thief", c);
    assert!(!thief.wait_exit(T).success());
    let why = thief.stderr.wait_for("[thief] start error", T);
    assert!(why.contains("held by"), "{why}");
    let body = curl_tls(https, "a.example.com", &ca, "/blob").unwrap();
    assert_eq!(sha256(&body), sha256(&blobs[0]));
    drop(servers);
    let _ = std::fs::remove_dir_all(&d);
}

/// A TCP forwarder from a fresh local port to `to` that counts the bytes it carries
/// both ways: what goes over the wire between a peer and the server.
fn counting_forwarder(to: SocketAddr) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::{atomic::Ordering, Arc};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(a) = conn else { break };
            let Ok(b) = std::net::TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                let total = total.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                total.fetch_add(n as u64, Ordering::SeqCst);
                                if into.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, count)
}

/// frp's `transport.useCompression`: 4 MB of log lines echoed through a tcp proxy with
/// it arrive intact, and the wire between peer and server (counted by a forwarder in
/// between) carries a fraction of what the same bytes take through a proxy without it.
#[test]
fn use_compression_compresses() {
    use std::sync::atomic::Ordering;
    let d = dir("compression");
    let (bind, plain, zipped) = (free(), free(), free());
    let (_echo, echo_port) = echo();
    let mut c = cmd("rendezvous");
    c.args(["--bind", "127.0.0.1", "-p", &bind.to_string(), "-t", "tok"]);
    let srv = Proc::spawn("rendezvous", c);
    srv.stdout.wait_for("listening on", T);
    let (fwd, wire) = counting_forwarder(SocketAddr::from(([127, 0, 0, 1], bind)));
    let frpc = format!(
        "serverAddr = \"127.0.0.1\"\nserverPort = {fwd}\nauth.token = \"tok\"\n\n\
         [[proxies]]\nname = \"plain\"\ntype = \"tcp\"\nlocalPort = {echo_port}\nremotePort = {plain}\n\n\
         [[proxies]]\nname = \"zipped\"\ntype = \"tcp\"\nlocalPort = {echo_port}\nremotePort = {zipped}\n\
         transport.useCompression = true\n"
    );
    std::fs::write(d.join("frpc.toml"), frpc).unwrap();
    let peer = with_config("peer", &d.join("frpc.toml"));
    peer.stderr.wait_for("[plain] start proxy success", T);
    peer.stderr.wait_for("[zipped] start proxy success", T);

    let mut text = Vec::new();
    let mut i = 0u64;
    while text.len() < 4_000_000 {
        let line = format!(
            "2026-12-03T13:{:02}:{:02}Z INFO request id={i} method=GET path=/api/items?page={} status=200 bytes={}\n",
            i / 60 % 60, i % 60, i % 97, 1000 + i % 13
        );
        text.extend_from_slice(line.as_bytes());
        i += 1;
    }
    // Echoes `text` through `port`; returns the bytes the peer-server wire carried.
    let through = |port: u16| -> u64 {
        let before = wire.load(Ordering::SeqCst);
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut w = s.try_clone().unwrap();
        let send = text.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&send).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert_eq!(sha256(&back), sha256(&text), "port {port}");
        wire.load(Ordering::SeqCst) - before
    };
    let plain_bytes = through(plain);
    let zipped_bytes = through(zipped);
    println!(
        "{} bytes each way: {plain_bytes} on the wire without compression, {zipped_bytes} with",
        text.len()
    );
    assert!(plain_bytes >= 2 * text.len() as u64, "{plain_bytes}");
    assert!(
        zipped_bytes * 4 < plain_bytes,
        "compressed {zipped_bytes} vs plain {plain_bytes}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A local HTTP server answering every request with `body`.
fn says(body: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// curl through the vhost with `-u USER:PASSWORD` (or none): status and body.
fn curl_as(vhost: u16, host: &str, user: Option<&str>) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "20", "-w", "\n%{http_code}"]);
    c.args(["--resolve", &format!("{host}:{vhost}:127.0.0.1")]);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    let out = c.arg(format!("http://{host}:{vhost}/")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// frp's routeByHTTPUser: three http proxies on one domain, two for basic-auth users
/// (one of them also password-protected) and one for everyone else; requests go by the
/// user curl sends. Another peer cannot add a user route to a domain it does not hold.
#[test]
fn route_by_http_user() {
    let d = dir("routeuser");
    let (bind, vhost) = (free(), free());
    let (one, two, rest) = (says("one"), says("two"), says("rest"));
    let mut c = cmd("rendezvous");
    c.args(["--bind", "127.0.0.1", "-p", &bind.to_string(), "-t", "tok"]);
    c.args(["--vhost-http-port", &vhost.to_string()]);
    let srv = Proc::spawn("rendezvous", c);
    srv.stdout.wait_for("http vhost on", T);
    let frpc = format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {bind}
auth.token = "tok"

[[proxies]]
name = "one"
type = "http"
localPort = {one}
customDomains = ["normal.example.com"]
routeByHTTPUser = "user1"
httpUser = "user1"
httpPassword = "pw1"

[[proxies]]
name = "two"
type = "http"
localPort = {two}
customDomains = ["normal.example.com"]
routeByHTTPUser = "user2"

[[proxies]]
name = "rest"
type = "http"
localPort = {rest}
customDomains = ["normal.example.com"]
"#
    );
    std::fs::write(d.join("frpc.toml"), frpc).unwrap();
    let peer = with_config("peer", &d.join("frpc.toml"));
    for name in ["one", "two", "rest"] {
        peer.stderr
            .wait_for(&format!("[{name}] start proxy success"), T);
    }
    let host = "normal.example.com";
    let ok = |body: &str| ("200".to_string(), body.to_string());
    assert_eq!(curl_as(vhost, host, Some("user1:pw1")), ok("one"));
    assert_eq!(curl_as(vhost, host, Some("user2:anything")), ok("two"));
    assert_eq!(curl_as(vhost, host, Some("user3:x")), ok("rest"));
    assert_eq!(curl_as(vhost, host, None), ok("rest"));
    // user1's route keeps its own password.
    assert_eq!(curl_as(vhost, host, Some("user1:wrong")).0, "401");

    // Another identity cannot add a user route under this peer's domain.
    let mut c = cmd("peer");
    c.args([
        "http",
        "-s",
        "127.0.0.1",
        "-P",
        &bind.to_string(),
        "-t",
        "tok",
    ]);
    c.args(["-l", &rest.to_string(), "-d", host, "-n", "thief"]);
    let mut thief = Proc::spawn("peer thief", c);
    assert!(!thief.wait_exit(T).success());
    let why = thief.stderr.wait_for("[thief] start error", T);
    assert!(why.contains("held by"), "{why}");
    assert_eq!(curl_as(vhost, host, None), ok("rest"));
    let _ = std::fs::remove_dir_all(&d);
}

/// A UDP echo server on loopback; returns its port.
fn udp_echo() -> u16 {
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    port
}

/// `n` UDP clients at once, each from its own address, sending 10 datagrams (one of
/// 60,000 bytes) to `remote` and checking each echo by sha256.
fn udp_clients(remote: u16, n: u64) {
    let clients: Vec<_> = (0..n)
        .map(|c| {
            std::thread::spawn(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(("127.0.0.1", remote)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = vec![0u8; 65536];
                for i in 0..10u64 {
                    let len = if c == 0 && i == 0 {
                        60_000
                    } else {
                        200 + (c * 31 + i * 7) as usize
                    };
                    let sent = data(len, c * 1000 + i);
                    let want = sha256(&sent);
                    // UDP may drop a datagram: resend each second, for up to 20 s.
                    let mut ok = false;
                    'resend: for _ in 0..20 {
                        s.send(&sent).unwrap();
                        let until = std::time::Instant::now() + Duration::from_secs(1);
                        while std::time::Instant::now() < until {
                            match s.recv(&mut buf) {
                                Ok(n) if sha256(&buf[..n]) == want => {
                                    ok = true;
                                    break 'resend;
                                }
                                // A late echo of an earlier datagram.
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    }
                    assert!(ok, "client {c}: no echo of datagram {i}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

/// frp's sudp: a UDP service reached only through a visitor's UDP socket, carried
/// relayed through the server (config files on both sides), and the same with
/// `serve --udp` / `connect --udp`, whose link may go direct; 32 clients at once each
/// way, every datagram checked. A tcp visitor of the udp service is refused.
#[test]
fn sudp_proxy_and_visitor_carry_many_clients() {
    let d = dir("sudp");
    let bind = free();
    let echo_port = udp_echo();
    let free_udp = || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let visitor_port = free_udp();
    std::fs::write(
        d.join("frps.toml"),
        format!("bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nauth.token = \"tok\"\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("frpc-owner.toml"),
        format!(
            "serverPort = {bind}\nauth.token = \"tok\"\n\n[[proxies]]\nname = \"secret_dns\"\n\
             type = \"sudp\"\nsecretKey = \"abcdefg\"\nlocalIP = \"127.0.0.1\"\nlocalPort = {echo_port}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("frpc-visitor.toml"),
        format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {bind}\nauth.token = \"tok\"\n\n\
             [[visitors]]\nname = \"secret_dns_visitor\"\ntype = \"sudp\"\nserverName = \"secret_dns\"\n\
             secretKey = \"abcdefg\"\nbindAddr = \"127.0.0.1\"\nbindPort = {visitor_port}\n"
        ),
    )
    .unwrap();
    let srv = with_config("rendezvous", &d.join("frps.toml"));
    srv.stdout.wait_for("listening on", T);
    let owner = with_config("peer", &d.join("frpc-owner.toml"));
    owner.stderr.wait_for("[secret_dns] start proxy success", T);
    let visitor = with_config("peer", &d.join("frpc-visitor.toml"));
    visitor
        .stderr
        .wait_for("[secret_dns] start visitor success", T);
    udp_clients(visitor_port, 32);
    let up = visitor.stderr.wait_for("link up:", T);
    assert!(up.contains("link up: relayed"), "{up}");

    // The command line: serve --udp / connect --udp.
    let server = format!("127.0.0.1:{bind}");
    let mut c = cmd("peer");
    c.args([
        "--server", &server, "--token", "tok", "serve", "dns2", "--udp",
    ]);
    c.args([
        "--local",
        &format!("127.0.0.1:{echo_port}"),
        "--secret",
        "s2",
    ]);
    let owner2 = Proc::spawn("peer serve --udp", c);
    owner2.stderr.wait_for("[dns2] start proxy success", T);
    let mut c = cmd("peer");
    c.args([
        "--server", &server, "--token", "tok", "connect", "dns2", "--udp",
    ]);
    c.args(["--secret", "s2", "--listen", "127.0.0.1:0"]);
    let visitor2 = Proc::spawn("peer connect --udp", c);
    let line = visitor2.stdout.wait_for("listening on udp", T);
    let port2: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    udp_clients(port2, 32);

    // A tcp visitor of the udp service: its streams are refused by the owner.
    let mut c = cmd("peer");
    c.args(["--server", &server, "--token", "tok", "connect", "dns2"]);
    c.args(["--secret", "s2", "--listen", "127.0.0.1:0"]);
    let tcp_visitor = Proc::spawn("peer connect (tcp)", c);
    let line = tcp_visitor.stdout.wait_for("listening on", T);
    let port3: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port3)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    owner2.stderr.wait_for("bad header refused", T);
    let _ = std::fs::remove_dir_all(&d);
}

/// frp's command-line forms of secret services and their visitors: `peer stcp` and
/// `peer stcp visitor` (frp's flag spellings, `--server_name`, `--bind_port`), and the
/// same for sudp (`--server-name`, `--bind-port`), carrying data.
#[test]
fn stcp_and_sudp_visitor_command_line_forms() {
    let bind = free();
    let (_echo, echo_port) = echo();
    let udp_port = udp_echo();
    let mut c = cmd("rendezvous");
    c.args(["--bind", "127.0.0.1", "-p", &bind.to_string(), "-t", "tok"]);
    let srv = Proc::spawn("rendezvous", c);
    srv.stdout.wait_for("listening on", T);
    let b = bind.to_string();
    let common = ["-s", "127.0.0.1", "-P", b.as_str(), "-t", "tok"];
    let mut c = cmd("peer");
    c.arg("stcp").args(common);
    c.args([
        "-l",
        &echo_port.to_string(),
        "--sk",
        "abcdefg",
        "-n",
        "secret_ssh",
    ]);
    let owner = Proc::spawn("peer stcp", c);
    owner.stderr.wait_for("[secret_ssh] start proxy success", T);
    let visitor_port = free();
    let mut c = cmd("peer");
    c.args(["stcp", "visitor"]).args(common);
    c.args(["--server_name", "secret_ssh", "--sk", "abcdefg"]);
    c.args(["--bind_port", &visitor_port.to_string()]);
    let visitor = Proc::spawn("peer stcp visitor", c);
    visitor
        .stderr
        .wait_for("[secret_ssh] start visitor success", T);
    carry(visitor_port);
    assert!(visitor.stderr.wait_for("link up:", T).contains("relayed"));

    let mut c = cmd("peer");
    c.arg("sudp").args(common);
    c.args(["-l", &udp_port.to_string(), "--sk", "k2", "-n", "dns"]);
    let owner2 = Proc::spawn("peer sudp", c);
    owner2.stderr.wait_for("[dns] start proxy success", T);
    let mut c = cmd("peer");
    c.args(["sudp", "visitor"]).args(common);
    c.args(["--server-name", "dns", "--sk", "k2", "--bind-port", "0"]);
    let visitor2 = Proc::spawn("peer sudp visitor", c);
    let line = visitor2.stdout.wait_for("listening on udp", T);
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    udp_clients(port, 8);
    // An stcp proxy without its secret: a clear error.
    let mut c = cmd("peer");
    c.arg("stcp").args(common).args(["-l", "22"]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sk"));
}

/// frp's YAML and JSON config files: a server from frps.yaml and a peer from
/// frpc.json (and `verify` on both), carrying data; templates work there too.
#[test]
fn yaml_and_json_files() {
    let d = dir("yamljson");
    let (bind, remote) = (free(), free());
    let (_echo, echo_port) = echo();
    let frps = format!(
        "# frps.yaml\nbindAddr: 127.0.0.1\nbindPort: {bind}\nauth:\n  token: \"{{{{ .Envs.FRP_AUTH_TOKEN }}}}\"\n\
         allowPorts:\n  - single: {remote}\nlog:\n  level: trace\n"
    );
    let frpc = format!(
        "{{\"serverAddr\": \"127.0.0.1\", \"serverPort\": {bind}, \"loginFailExit\": false,\n \
         \"auth\": {{\"token\": \"{{{{ .Envs.FRP_AUTH_TOKEN }}}}\"}},\n \
         \"proxies\": [{{\"name\": \"good\", \"type\": \"tcp\", \"localIP\": \"127.0.0.1\",\n \
         \"localPort\": {echo_port}, \"remotePort\": {remote}}}]}}\n"
    );
    std::fs::write(d.join("frps.yaml"), frps).unwrap();
    std::fs::write(d.join("frpc.json"), frpc).unwrap();
    for (name, file) in [("rendezvous", "frps.yaml"), ("peer", "frpc.json")] {
        let out = cmd(name)
            .env("FRP_AUTH_TOKEN", "token-from-the-environment")
            .args(["verify", "-c", d.join(file).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("syntax is ok"));
    }
    let srv = with_config("rendezvous", &d.join("frps.yaml"));
    srv.stdout.wait_for("listening on", T);
    let peer = with_config("peer", &d.join("frpc.json"));
    peer.stderr.wait_for("[good] start proxy success", T);
    carry(remote);
    let _ = std::fs::remove_dir_all(&d);
}

/// frp's tcpmux (HTTP CONNECT): proxies of type tcpmux behind the server's
/// tcpmuxHTTPConnectPort, reached by curl through it as an HTTP proxy (curl
/// --proxytunnel) and by a raw CONNECT whose tunnel echoes 1 MB intact; an unknown
/// host gets 404, a GET 405.
#[test]
fn tcpmux_http_connect() {
    let d = dir("tcpmux");
    let (bind, mux) = (free(), free());
    let web_port = web();
    let (_echo, echo_port) = echo();
    std::fs::write(
        d.join("frps.toml"),
        format!("bindAddr = \"127.0.0.1\"\nbindPort = {bind}\ntcpmuxHTTPConnectPort = {mux}\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("frpc.toml"),
        format!(
            "serverPort = {bind}\n\n[[proxies]]\nname = \"web\"\ntype = \"tcpmux\"\n\
             multiplexer = \"httpconnect\"\nlocalPort = {web_port}\ncustomDomains = [\"web.example.com\"]\n\n\
             [[proxies]]\nname = \"echo\"\ntype = \"tcpmux\"\nlocalPort = {echo_port}\n\
             customDomains = [\"echo.example.com\"]\n"
        ),
    )
    .unwrap();
    let srv = with_config("rendezvous", &d.join("frps.toml"));
    srv.stdout.wait_for("tcpmux on", T);
    let peer = with_config("peer", &d.join("frpc.toml"));
    peer.stderr.wait_for("[web] start proxy success", T);
    peer.stderr.wait_for("[echo] start proxy success", T);

    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "--proxytunnel", "-x"])
        .arg(format!("http://127.0.0.1:{mux}"))
        .arg("http://web.example.com/")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web web.example.com");

    let head = |s: &mut std::net::TcpStream| -> String {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            got.push(b[0]);
        }
        String::from_utf8_lossy(&got).to_string()
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mux)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let blob = data(1_000_000, 77);
    // The request and the first bytes in one write: nothing after the head is lost.
    let mut first =
        b"CONNECT echo.example.com:7 HTTP/1.1\r\nHost: echo.example.com:7\r\n\r\n".to_vec();
    first.extend_from_slice(&blob[..1000]);
    s.write_all(&first).unwrap();
    assert!(head(&mut s).starts_with("HTTP/1.1 200"));
    let mut w = s.try_clone().unwrap();
    let rest = blob[1000..].to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&rest).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(sha256(&back), sha256(&blob));

    for (req, want) in [
        (
            "CONNECT nobody.example.com:22 HTTP/1.1\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mux)).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let got = head(&mut s);
        assert!(got.starts_with(want), "{req:?}: {got:?}");
    }
    let _ = std::fs::remove_dir_all(&d);
}
