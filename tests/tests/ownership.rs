//! A server that strangers share (issue 8), through the real binaries: claims belong
//! to the identity that made them, users are confined to their allowances, and every
//! attack that worked before is refused with a message that names the holder by
//! fingerprint only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use support::*;

const T: Duration = Duration::from_secs(20);

/// A TCP service that writes `name` to every client and closes.
fn banner(name: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            let _ = c.write_all(name.as_bytes());
        }
    });
    addr
}

/// What a user connection to `port` on the server reads.
fn read_port(port: u16) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

fn peer(server: SocketAddr, identity: &Path, args: &[&str]) -> Proc {
    let mut cmd = local("peer");
    cmd.env_remove("PUNCHLINE_TOKEN")
        .env("RUST_LOG", "info")
        .arg("--server")
        .arg(server.to_string())
        .arg("--identity")
        .arg(identity)
        .args(args);
    Proc::spawn("peer", cmd)
}

fn fingerprint(identity: &Path) -> String {
    let out = local("peer")
        .arg("--identity")
        .arg(identity)
        .arg("id")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let fp = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(fp.starts_with("pl1:"), "{fp}");
    fp
}

/// Runs `peer` expecting a refusal; returns its stderr.
fn refused(server: SocketAddr, identity: &Path, args: &[&str]) -> String {
    let mut p = peer(server, identity, args);
    let st = p.wait_exit(T);
    let err = p.stderr.text();
    assert!(
        !st.success(),
        "expected a refusal for {args:?}; stderr: {err}"
    );
    assert!(
        !err.contains("instance"),
        "no instance ids in errors: {err}"
    );
    err
}

fn server(extra: &[&str]) -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let mut args = vec!["--bind", "127.0.0.1", "--vhost-http-port", "0"];
    args.extend_from_slice(extra);
    let (p, addr) = rendezvous(cmd, &args);
    let line = p.stdout.wait_for("http vhost on", T);
    let vhost = line.rsplit(' ').next().unwrap().parse().unwrap();
    (p, addr, vhost)
}

/// `GET path` with `Host: host` through the vhost: the status code and body.
fn get(vhost: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(vhost).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    let code = s.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, s)
}

/// A tiny HTTP backend answering `name path` to every request.
fn http_backend(name: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
                    let body = format!("{name} {path}");
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    addr
}

#[test]
fn identity_file_is_private_and_never_replaced() {
    let dir = lab::fresh_identity();
    let path = dir.join("nested").join("identity");
    let fp = fingerprint(&path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "identity file mode");
    assert_eq!(fingerprint(&path), fp, "the same identity on the next run");

    // Corrupt: a clear error, and the file is left as it was.
    std::fs::write(&path, "private-key = not hex\n").unwrap();
    let out = local("peer")
        .arg("--identity")
        .arg(&path)
        .arg("id")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is corrupt") && err.contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "private-key = not hex\n"
    );

    // Unreadable (a directory where the file should be): a clear error too.
    let dir_path = dir.join("a-directory");
    std::fs::create_dir_all(&dir_path).unwrap();
    let out = local("peer")
        .arg("--identity")
        .arg(&dir_path)
        .arg("id")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot read the identity file"), "{err}");
}

/// Hosts, locations under them, names under wildcards and the catch-all belong to the
/// identity that claimed them.
#[test]
fn another_identity_cannot_take_hosts_locations_or_wildcards() {
    let (_srv, addr, vhost) = server(&[]);
    let (site, evil) = (http_backend("site"), http_backend("evil"));
    let owner = lab::fresh_identity();
    let other = lab::fresh_identity();
    let owner_fp = fingerprint(&owner);
    let local = site.to_string();
    let a = peer(
        addr,
        &owner,
        &[
            "expose",
            "http",
            "--local",
            &local,
            "--name",
            "site",
            "--domain",
            "www.corp.test",
            "--domain",
            "*.corp.test",
        ],
    );
    a.stdout.wait_for("exposed site http", T);

    let evil_local = evil.to_string();
    let http = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["expose", "http", "--local", &evil_local, "--name", "evil"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let refused = |id: &Path, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(addr, id, &args)
    };
    // A sub-path of someone else's domain (it would receive the POST bodies).
    let err = refused(
        &other,
        http(&["--domain", "www.corp.test", "--location", "/login"]),
    );
    assert!(
        err.contains(&format!("host www.corp.test is held by peer {owner_fp}")),
        "{err}"
    );
    // A name under someone else's wildcard.
    let err = refused(&other, http(&["--domain", "mail.corp.test"]));
    assert!(
        err.contains("under *.corp.test") && err.contains(&owner_fp),
        "{err}"
    );
    // A narrower wildcard under it.
    let err = refused(&other, http(&["--domain", "*.x.corp.test"]));
    assert!(err.contains(&owner_fp), "{err}");
    // The catch-all, never granted by default.
    let err = refused(&other, http(&["--domain", "*"]));
    assert!(err.contains("catch-all"), "{err}");

    // Nothing changed for the users of the site.
    let (code, body) = get(vhost, "www.corp.test", "/login");
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with("site /login"), "{body}");
    let (_, body) = get(vhost, "mail.corp.test", "/");
    assert!(body.ends_with("site /"), "{body}");
    assert_eq!(get(vhost, "unclaimed.test", "/").0, 404);

    // The owner itself (another process, same identity) may add a location.
    let login = http_backend("login").to_string();
    let b = peer(
        addr,
        &owner,
        &[
            "expose",
            "http",
            "--local",
            &login,
            "--name",
            "login",
            "--domain",
            "www.corp.test",
            "--location",
            "/login",
        ],
    );
    b.stdout.wait_for("exposed login http", T);
    let (_, body) = get(vhost, "www.corp.test", "/login/x");
    assert!(body.ends_with("login /login/x"), "{body}");
    drop(a);
}

/// Port and service name of a peer killed with SIGKILL: reserved for it during the
/// grace period (others refused, naming its fingerprint), taken back at once by its
/// restart.
#[test]
fn a_killed_holder_keeps_its_claims_and_its_restart_takes_them_back() {
    let (_srv, addr, _) = server(&["--grace", "60"]);
    let owner = lab::fresh_identity();
    let other = lab::fresh_identity();
    let owner_fp = fingerprint(&owner);
    let svc = banner("owner").to_string();
    let a = peer(
        addr,
        &owner,
        &[
            "expose",
            "tcp",
            "--local",
            &svc,
            "--remote-port",
            "0",
            "--name",
            "web",
        ],
    );
    let line = a.stdout.wait_for("exposed web tcp", T);
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(read_port(port), "owner");
    let s = peer(
        addr,
        &owner,
        &["serve", "ssh", "--local", &svc, "--secret", "s"],
    );
    s.stderr.wait_for("registered", T);
    drop(a); // SIGKILL: no goodbye
    drop(s);

    let p = port.to_string();
    let evil = banner("evil").to_string();
    let err = refused(
        addr,
        &other,
        &[
            "expose",
            "tcp",
            "--local",
            &evil,
            "--remote-port",
            &p,
            "--name",
            "web",
        ],
    );
    // "reserved for" once the server has seen the connection end, "held by" if the
    // attempt overtook that: refused either way, naming the holder's fingerprint.
    assert!(err.contains(&format!("port {port} is")), "{err}");
    assert!(
        err.contains(&format!("peer {owner_fp} (proxy 'web')")),
        "{err}"
    );
    let err = refused(
        addr,
        &other,
        &["serve", "ssh", "--local", &evil, "--secret", "x"],
    );
    assert!(
        err.contains("service \"ssh\" is") && err.contains(&owner_fp),
        "{err}"
    );
    // Meanwhile user connections are refused at once, not carried to anyone.
    assert_eq!(read_port(port), "");

    // The real holder's restart takes both back at once.
    let started = Instant::now();
    let a = peer(
        addr,
        &owner,
        &[
            "expose",
            "tcp",
            "--local",
            &svc,
            "--remote-port",
            &p,
            "--name",
            "web",
        ],
    );
    a.stdout.wait_for(&format!("exposed web tcp {port}"), T);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(read_port(port), "owner");
    let s = peer(
        addr,
        &owner,
        &["serve", "ssh", "--local", &svc, "--secret", "s"],
    );
    s.stderr.wait_for("registered", T);
}

/// A legitimate route of 40 domains x 40 locations (its reply used to exceed the
/// frame limit and skip the clean-up): exposed, and released after the grace period
/// once its peer is gone.
#[test]
fn claims_are_released_after_the_grace_period_even_for_huge_routes() {
    let (srv, addr, vhost) = server(&["--grace", "2"]);
    let owner = lab::fresh_identity();
    let other = lab::fresh_identity();
    let site = http_backend("big").to_string();
    let mut args: Vec<String> = ["expose", "http", "--local", &site, "--name", "big"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for i in 0..40 {
        args.push("--domain".into());
        args.push(format!(
            "a-rather-long-domain-name-number-{i:02}.big.example.test"
        ));
        args.push("--location".into());
        args.push(format!("/a/rather/long/location/number/{i:02}"));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = peer(addr, &owner, &argv);
    let line = a.stdout.wait_for("exposed big http", T);
    assert!(line.contains("more)"), "the URL list is cut to fit: {line}");
    let host = "a-rather-long-domain-name-number-07.big.example.test";
    let (code, body) = get(vhost, host, "/a/rather/long/location/number/39/x");
    assert_eq!(code, 200, "{body}");
    drop(a);

    // Within the grace period another identity is refused; after it, served.
    let mine = http_backend("mine").to_string();
    let claim = [
        "expose", "http", "--local", &mine, "--name", "mine", "--domain", host,
    ];
    let err = refused(addr, &other, &claim);
    assert!(
        err.contains("reserved for peer") || err.contains("held by peer"),
        "{err}"
    );
    srv.stderr.wait_for("released", T);
    let b = peer(addr, &other, &claim);
    b.stdout.wait_for("exposed mine http", T);
    let (_, body) = get(vhost, host, "/");
    assert!(body.ends_with("mine /"), "{body}");
    drop(b);
}

/// Two users with their own tokens on one server, each confined to its ports and
/// domains; no token or another token gets nothing.
#[test]
fn users_are_confined_to_their_allowances() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (pa, pb) = (free(), free());
    let dir = lab::fresh_identity();
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("rendezvous.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"bindAddr = "127.0.0.1"
bindPort = 0
subDomainHost = "example.test"

[[users]]
name = "alice"
token = "alice-token"
allowPorts = [{{ single = {pa} }}]
allowDomains = ["*.alice.test", "alice.test"]

[[users]]
name = "bob"
token = "bob-token"
allowPorts = [{{ single = {pb} }}]
allowDomains = ["*.bob.test"]
maxExposures = 1
"#
        ),
    )
    .unwrap();
    let (_srv, addr, vhost) = server(&["-c", cfg.to_str().unwrap()]);
    let (alice, bob) = (lab::fresh_identity(), lab::fresh_identity());
    let svc = banner("alice").to_string();
    let web = http_backend("alice-web").to_string();
    let with_token = |token: &str, id: &Path, args: &[&str]| {
        let mut v = vec!["--token", token];
        v.extend_from_slice(args);
        peer(addr, id, &v)
    };
    let refused_with = |token: &str, id: &Path, args: &[&str]| {
        let mut p = with_token(token, id, args);
        assert!(!p.wait_exit(T).success(), "{args:?} must be refused");
        p.stderr.text()
    };

    let (ps, pbs) = (pa.to_string(), pb.to_string());
    let a = with_token(
        "alice-token",
        &alice,
        &[
            "expose",
            "tcp",
            "--local",
            &svc,
            "--remote-port",
            &ps,
            "--name",
            "t",
        ],
    );
    a.stdout.wait_for(&format!("exposed t tcp {pa}"), T);
    assert_eq!(read_port(pa), "alice");
    let err = refused_with(
        "alice-token",
        &alice,
        &[
            "expose",
            "tcp",
            "--local",
            &svc,
            "--remote-port",
            &pbs,
            "--name",
            "u",
        ],
    );
    assert!(
        err.contains(&format!("port {pb} is not allowed for user \"alice\"")),
        "{err}"
    );
    let err = refused_with(
        "alice-token",
        &alice,
        &[
            "expose",
            "http",
            "--local",
            &web,
            "--domain",
            "www.bob.test",
            "--name",
            "h",
        ],
    );
    assert!(
        err.contains("host www.bob.test is not allowed for user \"alice\""),
        "{err}"
    );
    // A subdomain under the server's subdomain host is outside alice's domains too.
    let err = refused_with(
        "alice-token",
        &alice,
        &[
            "expose",
            "http",
            "--local",
            &web,
            "--subdomain",
            "x",
            "--name",
            "h",
        ],
    );
    assert!(
        err.contains("host x.example.test is not allowed for user"),
        "{err}"
    );
    let h = with_token(
        "alice-token",
        &alice,
        &[
            "expose",
            "http",
            "--local",
            &web,
            "--domain",
            "www.alice.test",
            "--name",
            "h",
        ],
    );
    h.stdout.wait_for("exposed h http", T);
    assert!(get(vhost, "www.alice.test", "/").1.ends_with("alice-web /"));

    // bob: its own port; one exposure at most.
    let bob_svc = banner("bob").to_string();
    let b = with_token(
        "bob-token",
        &bob,
        &[
            "expose",
            "tcp",
            "--local",
            &bob_svc,
            "--remote-port",
            &pbs,
            "--name",
            "t",
        ],
    );
    b.stdout.wait_for(&format!("exposed t tcp {pb}"), T);
    assert_eq!(read_port(pb), "bob");
    let err = refused_with(
        "bob-token",
        &bob,
        &[
            "expose",
            "http",
            "--local",
            &web,
            "--domain",
            "www.bob.test",
            "--name",
            "h",
        ],
    );
    assert!(err.contains("its limit (maxExposures)"), "{err}");

    // No token, or an unknown one: refused at the handshake.
    for token in ["", "carol-token"] {
        let err = refused_with(
            token,
            &lab::fresh_identity(),
            &["expose", "tcp", "--local", &svc, "--remote-port", "0"],
        );
        assert!(err.contains("wrong or missing token"), "{err}");
    }
}

/// The old hijack: a data connection for another peer's exposures. The victim (the
/// library, so that the test knows its instance number) exposes a port; an attacker
/// with the same token and a data connection naming the victim's instance is refused,
/// and user connections keep reaching the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_data_connection_is_refused() {
    use common::{
        mux::{Mux, MuxConfig, Role},
        proto::{ClientMsg, ConnKind, ExposeSpec, ServerMsg},
    };
    use peer::client::{self, ClientError, Control, ServerConfig};
    use tokio::io::AsyncWriteExt;

    let (_srv, addr, _) = server(&["--token", "shared"]);
    let token = Some("shared".to_string());
    let victim = ServerConfig::ephemeral(addr, token.clone());
    let attacker = ServerConfig::ephemeral(addr, token);
    let instance = 42;

    let mut control = Control::connect(&victim).await.unwrap();
    control
        .send(ClientMsg::Expose {
            name: "web".into(),
            instance,
            spec: ExposeSpec::Tcp { remote_port: 0 },
            compress: false,
        })
        .await
        .unwrap();
    let port = match control.recv().await.unwrap() {
        ServerMsg::Exposed {
            remote_port: Some(p),
            ..
        } => p,
        other => panic!("{other:?}"),
    };
    // The victim's data connection answers every stream with "victim".
    let (ch, _) = client::connect(&victim, ConnKind::Data { instance }, None)
        .await
        .unwrap();
    let (mux, mut inbound) = Mux::start(ch.into_parts().0, Role::Server, MuxConfig::default());
    tokio::spawn(async move {
        let _mux = mux;
        while let Some(mut s) = inbound.recv().await {
            tokio::spawn(async move {
                let _ = common::net::read_stream_header(&mut s, T).await;
                let _ = s.write_all(b"victim").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let read = move || tokio::task::spawn_blocking(move || read_port(port));
    assert_eq!(read().await.unwrap(), "victim");

    // The attacker, with and without a control connection of its own.
    let _attacker_control = Control::connect(&attacker).await.unwrap();
    for _ in 0..2 {
        match client::connect(&attacker, ConnKind::Data { instance }, None).await {
            Err(ClientError::Refused(r)) => {
                assert!(r.contains("no exposures of this peer process"), "{r}")
            }
            Ok(_) => panic!("a data connection for another identity's instance was accepted"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        read().await.unwrap(),
        "victim",
        "the victim keeps its users"
    );
    drop(control);
}
