//! The operator's view (`rendezvous --admin`), with the real binaries: after real
//! traffic in the NAT lab (a relayed service link between two symmetric NATs, a TCP
//! exposure used by a user, HTTP vhost requests) `/metrics` is parsed by a Prometheus
//! text-format parser and its values checked, `/api/status` lists the peers and
//! exposures with their owners' fingerprints, and the dashboard, loaded in headless
//! Chromium, shows them (its rendered DOM is checked; a screenshot is saved for people
//! next to the binaries, `admin-dashboard.png`). `peer status` shows the visitor's
//! relayed link and its bytes. Without the lab: the admin pages refuse to start on a
//! public address without a password, and with one they refuse requests without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lab::{Host, Lab, LabSpec, NatProfile, Site};
use support::*;

const T: Duration = Duration::from_secs(30);

/// The fingerprint of the identity in `path` (created if missing).
fn fingerprint(path: &Path) -> String {
    let out = local("peer")
        .env("PUNCHLINE_IDENTITY", path)
        .arg("id")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The fingerprint's short form, as logs and the dashboard show it.
fn short(fp: &str) -> String {
    let hex = fp.trim_start_matches("pl1").replace([':', '-', ' '], "");
    format!("pl1:{}", &hex[..8])
}

/// `(metric with labels) → value` from a Prometheus text exposition, read by the
/// `prometheus-parse` crate; the key is `name{a="x",b="y"}` with labels sorted.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("unexpected {other:?} for {}", s.metric),
        };
        let mut labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        out.insert(key, value);
    }
    // Every family is documented.
    for name in out.keys().map(|k| k.split('{').next().unwrap()) {
        assert!(scrape.docs.contains_key(name), "no HELP for {name}");
    }
    out
}

fn metric(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in {:#?}", m.keys().collect::<BTreeSet<_>>()))
}

/// The address after `pat` in a line of `p`'s stdout (`admin on http://ADDR/`).
fn printed_addr(p: &Proc, pat: &str) -> SocketAddr {
    let line = p.stdout.wait_for(pat, T);
    line.rsplit(' ')
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn curl(lab: &Lab, args: &[&str]) -> String {
    lab.run(Host::Server, "curl", args)
        .unwrap_or_else(|e| panic!("curl {args:?}: {e}"))
}

/// Runs headless Chromium in the server's namespace on `url`: the DOM after the
/// page's scripts ran, and a screenshot saved to `png`.
fn chromium(lab: &Lab, url: &str, png: &Path) -> String {
    let profile = std::env::temp_dir().join(format!("punchline-chromium-{}", std::process::id()));
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            // Lets the page's fetch and timers run before the DOM is taken.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .env("HOME", &profile);
    };
    let mut dump = lab.command(Host::Server, "chromium");
    common(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium --dump-dom: {out:?}");
    let mut shot = lab.command(Host::Server, "chromium");
    common(&mut shot);
    let s = shot
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(s.status.success(), "chromium --screenshot: {s:?}");
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Peer {
    id: PathBuf,
    fp: String,
}

fn new_peer() -> Peer {
    let id = lab::fresh_identity();
    let fp = fingerprint(&id);
    Peer { id, fp }
}

/// The directory of the peers' status sockets in this test.
/// Each test has its own (the tests of this file run at once, and each removes its
/// directory at the end: a shared one lost the lab test's status sockets).
fn status_dir() -> PathBuf {
    status_dir_of("lab")
}

fn status_dir_of(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "punchline-admin-status-{}-{test}",
        std::process::id()
    ))
}

fn spawn_peer(lab: &Lab, host: Host, who: &Peer, name: &str, args: &[&str]) -> Proc {
    let mut cmd = lab.command(host, bin("peer"));
    cmd.env("PUNCHLINE_STATUS_DIR", status_dir());
    cmd.env_remove("PUNCHLINE_SECRET")
        .env_remove("PUNCHLINE_TOKEN")
        .env("RUST_LOG", "info")
        .env("PUNCHLINE_IDENTITY", &who.id)
        .args(args);
    Proc::spawn(name, cmd)
}

fn listening_port(p: &Proc) -> u16 {
    p.stdout
        .wait_for("listening on", T)
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn metrics_status_and_dashboard_after_real_traffic() {
    if !lab::require_lab() {
        return;
    }
    if Command::new("chromium").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing (tests/setup.sh installs it)"
        );
        eprintln!("skipped: no chromium (tests/setup.sh installs it)");
        return;
    }
    // Symmetric NATs on both sides: the service link must be relayed.
    let lab = Lab::new(
        LabSpec::default()
            .nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::Symmetric),
    )
    .expect("lab");
    let ip = lab.server_ip().to_string();
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let (server, addr) = rendezvous(
        cmd,
        &[
            "--bind",
            &ip,
            "--vhost-http-port",
            "0",
            "--subdomain-host",
            "example.test",
            "--admin",
            "127.0.0.1:0",
            // STUN over TCP (nat-check) runs on the alternate endpoints.
            "--alt-addr",
            &lab.server_alt_ip().to_string(),
        ],
    );
    let admin = printed_addr(&server, "admin on");
    let vhost = printed_addr(&server, "http vhost on");
    let server_arg = addr.to_string();

    // Local services on host A: an echo and an HTTP server.
    let mut echo = lab.command(Host::A, bin("stream-check"));
    echo.args(["echo", "0"]);
    let echo = Proc::spawn("echo", echo);
    let echo_local = format!("127.0.0.1:{}", listening_port(&echo));
    let mut web = lab.command(Host::A, bin("load-backend"));
    web.args(["http", "--hold", "0"]);
    let web = Proc::spawn("web", web);
    let web_local = format!("127.0.0.1:{}", listening_port(&web));

    let (owner, visitor, tcp, http) = (new_peer(), new_peer(), new_peer(), new_peer());
    let owner_p = spawn_peer(
        &lab,
        Host::A,
        &owner,
        "owner",
        &[
            "--server",
            &server_arg,
            "serve",
            "svc",
            "--local",
            &echo_local,
            "--secret",
            "s3cret",
        ],
    );
    owner_p.stderr.wait_for("registered", T);
    let visitor_p = spawn_peer(
        &lab,
        Host::B,
        &visitor,
        "visitor",
        &[
            "--server",
            &server_arg,
            "connect",
            "svc",
            "--secret",
            "s3cret",
        ],
    );
    let listen = visitor_p.stdout.wait_for("listening on", T);
    let listen = listen.split_whitespace().nth(2).unwrap().to_string();
    let tcp_p = spawn_peer(
        &lab,
        Host::A,
        &tcp,
        "expose-tcp",
        &[
            "--server",
            &server_arg,
            "expose",
            "tcp",
            "--local",
            &echo_local,
            "--remote-port",
            "0",
            "--name",
            "echo-tcp",
        ],
    );
    let tcp_port: u16 = tcp_p
        .stdout
        .wait_for("exposed ", T)
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    let http_p = spawn_peer(
        &lab,
        Host::A,
        &http,
        "expose-http",
        &[
            "--server",
            &server_arg,
            "expose",
            "http",
            "--local",
            &web_local,
            "--subdomain",
            "web",
            "--name",
            "web",
        ],
    );
    http_p.stdout.wait_for("exposed web http", T);

    // Traffic: 1 MB each way through the relayed link; 100 kB each way through the
    // exposed port; three HTTP requests (two routed, one to an unknown host).
    const LINK_BYTES: usize = 1_000_000;
    let run = |target: &str, bytes: usize| {
        let out = lab
            .command(Host::B, bin("stream-check"))
            .args([
                "run",
                target,
                "--streams",
                "1",
                "--bytes",
                &bytes.to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("ok streams="),
            "{text}"
        );
    };
    run(&listen, LINK_BYTES);
    assert!(
        visitor_p.stderr.contains("link up: relayed"),
        "the link between two symmetric NATs is relayed:\n{}",
        visitor_p.stderr.text()
    );
    run(&format!("{ip}:{tcp_port}"), 100_000);
    let vhost_url = format!("http://{ip}:{}/", vhost.port());
    let code = |host: &str| {
        lab.run(
            Host::B,
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &format!("Host: {host}"),
                &vhost_url,
            ],
        )
        .unwrap()
    };
    assert_eq!(code("web.example.test"), "200");
    assert_eq!(code("web.example.test"), "200");
    assert_eq!(code("nobody.example.test"), "404");
    // STUN over UDP and TCP: what `peer nat-check` asks the server.
    let out = lab
        .command(Host::B, bin("peer"))
        .env("PUNCHLINE_IDENTITY", &visitor.id)
        .args(["--server", &server_arg, "nat-check", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "nat-check: {out:?}");

    // /metrics, parsed.
    let base = format!("http://{admin}");
    // nat-check's own connections to the server end as it exits; the server notices
    // within moments: read until only the four peers are online (bounded).
    let (mut text, mut m);
    let mut tries = 0;
    loop {
        text = curl(&lab, &["-sf", &format!("{base}/metrics")]);
        m = parse_metrics(&text);
        tries += 1;
        if metric(&m, "punchline_peers_online") == 4.0 || tries >= 50 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(metric(&m, "punchline_peers_online"), 4.0, "{text}");
    assert_eq!(metric(&m, "punchline_users_online"), 1.0);
    assert_eq!(
        metric(&m, "punchline_links_total{kind=\"relayed\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&m, "punchline_links_total{kind=\"direct\"}"), 0.0);
    assert_eq!(metric(&m, "punchline_links_total{kind=\"birthday\"}"), 0.0);
    assert_eq!(metric(&m, "punchline_relays_active"), 1.0);
    // Both directions of the echo, plus Noise and multiplexer overhead.
    let relayed = metric(&m, "punchline_relay_bytes_total");
    assert!(
        relayed >= 2.0 * LINK_BYTES as f64,
        "relayed {relayed} bytes"
    );
    assert!(relayed < 2.5 * LINK_BYTES as f64, "relayed {relayed} bytes");
    assert_eq!(metric(&m, "punchline_exposures{kind=\"tcp\"}"), 1.0);
    assert_eq!(metric(&m, "punchline_exposures{kind=\"http\"}"), 1.0);
    assert_eq!(metric(&m, "punchline_exposures{kind=\"service\"}"), 1.0);
    assert_eq!(metric(&m, "punchline_tcp_connections_total"), 1.0);
    assert_eq!(
        metric(&m, "punchline_vhost_requests_total{code=\"200\"}"),
        2.0
    );
    assert_eq!(
        metric(&m, "punchline_vhost_requests_total{code=\"404\"}"),
        1.0
    );
    assert!(metric(&m, "punchline_uptime_seconds") >= 0.0);
    assert!(metric(&m, "punchline_stun_requests_total{transport=\"udp\"}") >= 1.0);
    assert!(metric(&m, "punchline_stun_requests_total{transport=\"tcp\"}") >= 1.0);
    println!("ADMIN metrics after traffic:\n{text}");

    // /api/status.
    let status: serde_json::Value =
        serde_json::from_str(&curl(&lab, &["-sf", &format!("{base}/api/status")])).unwrap();
    let peers: BTreeSet<&str> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["fingerprint"].as_str().unwrap())
        .collect();
    let all: BTreeSet<&str> = [&owner, &visitor, &tcp, &http]
        .iter()
        .map(|p| p.fp.as_str())
        .collect();
    assert_eq!(peers, all, "{status:#}");
    let exposures = status["exposures"].as_array().unwrap();
    let find = |name: &str| {
        exposures
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no exposure {name} in {status:#}"))
    };
    let e = find("echo-tcp");
    assert_eq!(
        (
            e["kind"].as_str(),
            e["port"].as_u64(),
            e["owner"].as_str(),
            e["online"].as_bool()
        ),
        (
            Some("tcp"),
            Some(u64::from(tcp_port)),
            Some(tcp.fp.as_str()),
            Some(true)
        )
    );
    let e = find("web");
    assert_eq!(
        (e["kind"].as_str(), e["owner"].as_str()),
        (Some("http"), Some(http.fp.as_str()))
    );
    let url = format!("http://web.example.test:{}/", vhost.port());
    assert_eq!(e["urls"], serde_json::json!([url]));
    assert_eq!(status["services"][0]["name"], "svc");
    assert_eq!(status["services"][0]["owner"], owner.fp.as_str());
    let relays = status["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{status:#}");
    let between: BTreeSet<&str> = relays[0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let (so, sv) = (short(&owner.fp), short(&visitor.fp));
    assert_eq!(between, BTreeSet::from([so.as_str(), sv.as_str()]));
    assert!(relays[0]["bytes"].as_u64().unwrap() >= 2 * LINK_BYTES as u64);
    assert_eq!(status["links"]["relayed"], 1);

    // The dashboard in a real browser: every peer and exposure on the page.
    let png = bin("rendezvous").with_file_name("admin-dashboard.png");
    let _ = std::fs::remove_file(&png);
    let dom = chromium(&lab, &format!("{base}/"), &png);
    for must in [
        "echo-tcp",
        "web",
        "svc",
        &url,
        &format!(":{tcp_port}"),
        "peers online",
    ] {
        assert!(
            dom.contains(must),
            "the dashboard does not show {must:?}:\n{dom}"
        );
    }
    for p in [&owner, &visitor, &tcp, &http] {
        assert!(
            dom.contains(&short(&p.fp)),
            "the dashboard does not show peer {}:\n{dom}",
            p.fp
        );
    }
    // The page's last poll succeeded (its state line says when).
    assert!(dom.contains("id=\"state\">updated "), "{dom}");
    let shot = std::fs::read(&png).expect("a screenshot");
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "{} bytes",
        shot.len()
    );
    println!(
        "ADMIN dashboard screenshot: {} ({} bytes)",
        png.display(),
        shot.len()
    );

    // `peer status`: every peer process of the test, the visitor's relayed link with
    // its bytes, the exposure's port.
    let status = |json: bool| {
        let mut cmd = local("peer");
        cmd.env("PUNCHLINE_STATUS_DIR", status_dir()).arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let docs: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let docs = docs.as_array().unwrap();
    let doc = |who: &Peer| {
        docs.iter()
            .find(|d| d["identity"] == who.fp.as_str())
            .unwrap_or_else(|| panic!("no status of {} in {docs:#?}", who.fp))
    };
    assert_eq!(docs.len(), 4, "{docs:#?}");
    let v = doc(&visitor);
    assert_eq!(v["roles"], serde_json::json!(["connect svc"]));
    let link = &v["links"][0];
    assert_eq!(
        (
            link["role"].as_str(),
            link["name"].as_str(),
            link["path"].as_str()
        ),
        (Some("connect"), Some("svc"), Some("relayed")),
        "{v:#}"
    );
    assert_eq!(link["how"], "relayed through the server");
    // 1 MB each way, encrypted and framed.
    for dir in ["bytes_in", "bytes_out"] {
        let n = link[dir].as_u64().unwrap();
        assert!(
            (LINK_BYTES as u64..LINK_BYTES as u64 * 5 / 4).contains(&n),
            "{dir} {n}"
        );
    }
    assert_eq!(doc(&owner)["links"][0]["role"], "serve");
    let t = doc(&tcp);
    assert_eq!(t["exposures"][0]["name"], "echo-tcp");
    assert_eq!(
        t["exposures"][0]["remote"],
        format!("tcp port {tcp_port} on the server")
    );
    let text = status(false);
    assert!(
        text.contains("link connect \"svc\": relayed through the server, remote"),
        "{text}"
    );
    println!("ADMIN peer status:\n{text}");
    drop((owner_p, visitor_p, tcp_p, http_p, echo, web, server));
    let _ = std::fs::remove_dir_all(status_dir());
}

/// Without the lab: the admin pages refuse to start unprotected on a public address,
/// and, protected, answer only with the password (basic auth or bearer).
#[test]
fn admin_needs_a_password_beyond_loopback() {
    let out = local("rendezvous")
        .env_remove("PUNCHLINE_ADMIN_PASSWORD")
        .args(["--port", "0", "--admin", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("--admin-password"),
        "{err}"
    );

    // The same refusal from an frps.toml.
    let dir = std::env::temp_dir().join(format!("punchline-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("frps.toml");
    std::fs::write(
        &file,
        "bindPort = 0\n[webServer]\naddr = \"0.0.0.0\"\nport = 7500\n",
    )
    .unwrap();
    let out = local("rendezvous").arg("-c").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("webServer.password") && err.contains("not a loopback address"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let mut cmd = local("rendezvous");
    cmd.env("PUNCHLINE_ADMIN_PASSWORD", "open sesame");
    let (server, _) = rendezvous(cmd, &["--admin", "0.0.0.0:0", "--admin-user", "ops"]);
    let port = printed_addr(&server, "admin on").port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let status = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("curl");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(status(&[]), "401");
    assert_eq!(status(&["-u", "ops:wrong"]), "401");
    assert_eq!(status(&["-u", "admin:open sesame"]), "401");
    assert_eq!(status(&["-H", "Authorization: Bearer nope"]), "401");
    assert_eq!(status(&["-u", "ops:open sesame"]), "200");
    assert_eq!(status(&["-H", "Authorization: Bearer open sesame"]), "200");
    let out = Command::new("curl")
        .args(["-s", "-i", &url])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(
        head.contains("WWW-Authenticate: Basic") || head.contains("www-authenticate: Basic"),
        "{head}"
    );
}

/// Without the lab: a direct link made by two `pipe`s on loopback is counted as one
/// direct link and one successful punch, by the two peers' NAT types.
#[test]
fn direct_links_and_punch_outcomes_are_counted() {
    let (server, addr) = rendezvous(
        local("rendezvous"),
        // With a second address peers can measure their mapping (here: no NAT).
        &[
            "--bind",
            "127.0.0.1",
            "--alt-addr",
            "127.0.0.2",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let admin = printed_addr(&server, "admin on");
    let pipe = |input: &[u8]| {
        let mut cmd = local("peer");
        cmd.env_remove("PUNCHLINE_TOKEN")
            .env("PUNCHLINE_STATUS_DIR", status_dir_of("pipes"))
            .args(["--server", &addr.to_string(), "pipe", "--code", "admin"]);
        Proc::spawn_piped("pipe", cmd, Input::Bytes(input.to_vec()))
    };
    let ((mut a, a_out), (mut b, b_out)) = (pipe(b"from a"), pipe(b"from b"));
    assert!(a.wait_exit(T).success(), "{}", a.stderr.text());
    assert!(b.wait_exit(T).success(), "{}", b.stderr.text());
    assert_eq!(a_out.join().unwrap(), b"from b");
    assert_eq!(b_out.join().unwrap(), b"from a");
    assert!(a.stderr.contains("link up: direct"), "{}", a.stderr.text());
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let m = parse_metrics(&text);
    assert_eq!(
        metric(&m, "punchline_links_total{kind=\"direct\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&m, "punchline_links_total{kind=\"relayed\"}"), 0.0);
    // One attempt (both peers report it; it counts once); loopback has no NAT, so
    // both peers measured an endpoint-independent mapping.
    let punches: Vec<(&String, &f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("punchline_punch_attempts_total{"))
        .collect();
    assert_eq!(punches.len(), 1, "{text}");
    let (key, n) = punches[0];
    assert_eq!(
        key, "punchline_punch_attempts_total{nat_pair=\"eim+eim\",outcome=\"direct\"}",
        "{text}"
    );
    assert_eq!(*n, 1.0);
    let _ = std::fs::remove_dir_all(status_dir_of("pipes"));
}
