//! `serve`/`connect` through the NAT lab with the real binaries: direct where punching
//! can work, relayed where it cannot (checked from outside: the server namespace's
//! byte counters), data sha256-checked end to end through an echo service; a relayed
//! link that becomes direct when a NAT changes; the server killed mid-transfer; wrong
//! secrets, unknown services and a visitor flooding past the owner's cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use lab::{Host, Lab, LabSpec, NatProfile, Site};
use support::*;

const T: Duration = Duration::from_secs(30);

struct World {
    lab: Lab,
    server: Option<Proc>,
    addr: SocketAddr,
    _echo: Proc,
    echo: SocketAddr,
}

fn world(spec: LabSpec) -> World {
    let lab = Lab::new(spec).expect("lab");
    let (server, addr) = start_server(&lab, None);
    let mut cmd = lab.command(Host::A, bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo_proc = Proc::spawn("echo", cmd);
    let line = echo_proc.stdout.wait_for("listening on", T);
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    World {
        lab,
        server: Some(server),
        addr,
        _echo: echo_proc,
        echo: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

fn start_server(lab: &Lab, port: Option<u16>) -> (Proc, SocketAddr) {
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let ip = lab.server_ip().to_string();
    let port = port.map(|p| p.to_string());
    let mut args = vec!["--bind", ip.as_str()];
    if let Some(p) = &port {
        args.extend(["--port", p.as_str()]);
    }
    rendezvous(cmd, &args)
}

impl World {
    fn serve(&self, name: &str, secret: &str, extra: &[&str]) -> Proc {
        let mut cmd = self.lab.command(Host::A, bin("peer"));
        cmd.env_remove("PUNCHLINE_SECRET").env("RUST_LOG", "info");
        let (server, local) = (self.addr.to_string(), self.echo.to_string());
        cmd.args([
            "--server", &server, "serve", name, "--local", &local, "--secret", secret,
        ]);
        cmd.args(extra);
        let p = Proc::spawn("owner", cmd);
        p.stderr.wait_for("registered", T);
        p
    }

    fn connect(&self, name: &str, secret: &str, extra: &[&str]) -> (Proc, SocketAddr) {
        let mut cmd = self.lab.command(Host::B, bin("peer"));
        cmd.env_remove("PUNCHLINE_SECRET").env("RUST_LOG", "info");
        let server = self.addr.to_string();
        cmd.args(["--server", &server, "connect", name, "--secret", secret]);
        cmd.args(extra);
        let p = Proc::spawn("visitor", cmd);
        let line = p.stdout.wait_for("listening on", T);
        let addr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        (p, addr)
    }

    /// Runs stream-check in host B against the visitor's listener.
    fn check(&self, listen: SocketAddr, streams: usize, bytes: usize) -> Result<String, String> {
        let out = self
            .lab
            .command(Host::B, bin("stream-check"))
            .args([
                "run",
                &listen.to_string(),
                "--streams",
                &streams.to_string(),
                "--bytes",
                &bytes.to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && text.contains("ok streams=") {
            Ok(text.trim().to_string())
        } else {
            Err(text)
        }
    }

    fn server_bytes(&self) -> u64 {
        self.lab.server_tcp_bytes().unwrap()
    }
}

fn mbit(line: &str) -> f64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("mbit_per_s="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// 100 MB on one stream and 100 concurrent streams of 1 MB, through an echo service:
/// every byte crosses the link twice and is hashed at the end.
fn service_case(name: &str, spec: LabSpec, expect: &str) {
    if !lab::require_lab() {
        return;
    }
    let w = world(spec);
    let _owner = w.serve("svc", "s3cret", &[]);
    let (visitor, listen) = w.connect("svc", "s3cret", &[]);
    let before = w.server_bytes();
    let one = w
        .check(listen, 1, 100_000_000)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", visitor.stderr.text()));
    let many = w
        .check(listen, 100, 1_000_000)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", visitor.stderr.text()));
    let through_server = w.server_bytes() - before;
    let log = visitor.stderr.text();
    assert!(
        log.contains(&format!("link up: {expect}")),
        "{name}: expected a {expect} link:\n{log}"
    );
    // 400 MB crossed the link (200 MB each way); a relay carries all of it twice
    // (in and out of the server), a direct link none of it.
    match expect {
        "direct" => assert!(
            through_server < 1_000_000,
            "{name}: server carried {through_server} bytes"
        ),
        _ => assert!(
            through_server > 400_000_000,
            "{name}: server carried only {through_server} bytes"
        ),
    }
    println!(
        "SERVICES case={name} link={expect} one_stream={:.0} Mbit/s 100_streams={:.0} Mbit/s server_bytes={through_server}",
        mbit(&one),
        mbit(&many)
    );
}

/// What the secret proofs cost a direct link (issue 8): the server holds each punch
/// signal until both peers proved the shared secret; the proofs run while the probes
/// measure their RTT, so the wait should be nothing. Prints the figures; checks the
/// links are direct.
#[test]
fn the_secret_proofs_cost_the_punch_nothing() {
    if !lab::require_lab() {
        return;
    }
    let w = world(LabSpec::default());
    let _owner = w.serve("svc", "s3cret", &[]);
    let mut waits = Vec::new();
    let mut request_to_link = Vec::new();
    for _ in 0..5 {
        let (visitor, listen) = w.connect("svc", "s3cret", &[]);
        w.check(listen, 1, 10_000)
            .unwrap_or_else(|e| panic!("{e}\n{}", visitor.stderr.text()));
        let line = visitor.stderr.wait_for("link up: direct", T);
        let ms: u64 = line
            .split(", ")
            .find_map(|f| f.strip_suffix(" ms after the request"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no time in {line}"));
        request_to_link.push(ms);
    }
    let log = w.server.as_ref().unwrap().stderr.text();
    for line in log.lines().filter(|l| l.contains("probe ready")) {
        let v: f64 = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("proof_wait_ms="))
            .and_then(|v| v.parse().ok())
            .unwrap();
        waits.push(v);
    }
    assert_eq!(waits.len(), 10, "two probes per link:\n{log}");
    waits.sort_by(f64::total_cmp);
    request_to_link.sort();
    println!(
        "PROOF punch held for the proofs: median {:.1} ms, max {:.1} ms (10 probes); connect request to direct link: median {} ms, max {} ms (5 links)",
        waits[5], waits[9], request_to_link[2], request_to_link[4]
    );
}

#[test]
fn services_direct_port_restricted() {
    service_case("pr x pr", LabSpec::default(), "direct");
}

#[test]
fn services_direct_full_cone_x_symmetric() {
    service_case(
        "fullcone x sym",
        LabSpec::default()
            .nat(Site::A, NatProfile::FullCone)
            .nat(Site::B, NatProfile::Symmetric),
        "direct",
    );
}

#[test]
fn services_direct_behind_one_nat() {
    service_case("same nat", LabSpec::default().same_nat(), "direct");
}

#[test]
fn services_relayed_symmetric_x_symmetric() {
    service_case(
        "sym x sym",
        LabSpec::default()
            .nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::Symmetric),
        "relayed",
    );
}

#[test]
fn services_direct_port_restricted_x_symmetric() {
    // The birthday punch (the server's second port lets both peers measure their NAT).
    service_case(
        "pr x sym",
        LabSpec::default().nat(Site::B, NatProfile::Symmetric),
        "direct",
    );
}

#[test]
fn relayed_link_upgrades_to_direct_when_the_nat_allows() {
    if !lab::require_lab() {
        return;
    }
    let w = world(
        LabSpec::default()
            .nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::Symmetric),
    );
    let _owner = w.serve("svc", "k", &[]);
    let (visitor, listen) = w.connect("svc", "k", &["--keep-open"]);
    visitor.stderr.wait_for("link up: relayed", T);
    w.check(listen, 4, 2_000_000).unwrap();
    // The NAT in front of B becomes port-restricted; A's stays symmetric. The visitor
    // measures its NAT again before each background attempt, the server picks the
    // birthday punch, and it succeeds.
    w.lab.set_nat(Site::B, NatProfile::PortRestricted).unwrap();
    visitor
        .stderr
        .wait_for("link upgraded: direct", Duration::from_secs(90));
    let log = visitor.stderr.text();
    assert!(
        log.contains("punching (birthday)"),
        "the upgrade was not a birthday punch:\n{log}"
    );
    let before = w.server_bytes();
    let line = w.check(listen, 4, 10_000_000).unwrap();
    let through_server = w.server_bytes() - before;
    assert!(
        through_server < 500_000,
        "new streams still crossed the server: {through_server} bytes"
    );
    println!("UPGRADE new streams direct: {line}, server carried {through_server} bytes");
}

#[test]
fn a_direct_transfer_survives_the_server_dying() {
    if !lab::require_lab() {
        return;
    }
    let mut w = world(LabSpec::default());
    let _owner = w.serve("svc", "k", &[]);
    let (visitor, listen) = w.connect("svc", "k", &["--keep-open"]);
    visitor.stderr.wait_for("link up: direct", T);
    let mut cmd = w.lab.command(Host::B, bin("stream-check"));
    cmd.args([
        "run",
        &listen.to_string(),
        "--streams",
        "1",
        "--bytes",
        "200000000",
    ]);
    let mut transfer = Proc::spawn("transfer", cmd);
    // Kill the server once the transfer reached the owner's echo service.
    w._echo.stdout.wait_for("accepted from", T);
    drop(w.server.take());
    let st = transfer.wait_exit(Duration::from_secs(120));
    assert!(
        st.success(),
        "transfer failed after the server died: {}",
        transfer.stdout.text()
    );
    transfer.stdout.wait_for("ok streams=1", T);
    // The server comes back on the same address: the owner registers again.
    let port = w.addr.port();
    let (server, _) = start_server(&w.lab, Some(port));
    server
        .stderr
        .wait_for("service registered", Duration::from_secs(60));
    w.server = Some(server);
}

#[test]
fn wrong_secret_unknown_service_and_flooding() {
    if !lab::require_lab() {
        return;
    }
    let w = world(LabSpec::default());
    let owner = w.serve("svc", "right", &["--max-streams", "8"]);
    // Wrong secret: the visitor fails with a clear error; the owner logs it.
    let (mut bad, _) = w.connect("svc", "wrong", &["--keep-open"]);
    assert!(!bad.wait_exit(T).success());
    assert!(
        bad.stderr.text().contains("holds a different secret"),
        "{}",
        bad.stderr.text()
    );
    owner.stderr.wait_for("wrong secret", T);
    // Unknown service: a clear error within seconds.
    let started = std::time::Instant::now();
    let (mut none, _) = w.connect("nosuch", "right", &["--keep-open"]);
    assert!(!none.wait_exit(T).success());
    assert!(
        none.stderr
            .text()
            .contains("no service named \"nosuch\" is online"),
        "{}",
        none.stderr.text()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Flooding: 64 streams at once against a cap of 8. Some are refused, none are
    // corrupted, and the link keeps serving afterwards.
    let (visitor, listen) = w.connect("svc", "right", &[]);
    let flood = w.check(listen, 64, 200_000);
    if let Err(e) = &flood {
        assert!(
            !e.contains("MISMATCH stream") || e.contains("got=0") || e.contains("read after"),
            "corruption: {e}"
        );
    }
    let after = w.check(listen, 4, 1_000_000);
    assert!(
        after.is_ok(),
        "the link stopped serving after the flood: {after:?}\n{}",
        visitor.stderr.text()
    );
}
/// After a server restart a relayed service link works again within seconds: the
/// peers come back within a second (jittered, short backoff while the outage is
/// young), the owner registers again, and the visitor's next connection makes a new
/// link, relayed at once because the last one was relayed. Prints the time; issue 9
/// measured 13.8 s (a request dropped while the peer reconnected, then a punch window).
#[test]
fn a_relayed_service_works_again_soon_after_a_server_restart() {
    if !lab::require_lab() {
        return;
    }
    // Two symmetric NATs: no punch (not even a birthday punch) can work.
    let mut w = world(
        LabSpec::default()
            .nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::Symmetric),
    );
    let _owner = w.serve("svc", "k", &[]);
    let (visitor, listen) = w.connect("svc", "k", &["--keep-open"]);
    visitor.stderr.wait_for("link up: relayed", T);
    w.check(listen, 1, 100_000).unwrap();
    // A few seconds of outage: the peers' backoff grows meanwhile.
    drop(w.server.take());
    std::thread::sleep(Duration::from_secs(5));
    let port = w.addr.port();
    let (server, _) = start_server(&w.lab, Some(port));
    let restarted = std::time::Instant::now();
    w.server = Some(server);
    loop {
        if w.check(listen, 1, 100_000).is_ok() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "the relayed service did not come back in 60 s:\n{}",
            visitor.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = restarted.elapsed();
    println!("RESTART relayed service works again after {took:?}");
    // Peers are back within a second (jittered); the new link skips the punch window
    // that failed last time and relays at once.
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}:\n{}",
        visitor.stderr.text()
    );
    assert!(
        visitor.stderr.text().contains("relayed at once"),
        "{}",
        visitor.stderr.text()
    );
}
