//! Router port mappings against a real router implementation: miniupnpd (Debian's
//! `miniupnpd-nftables`) on site A's router, which offers UPnP IGD, NAT-PMP and PCP on
//! its LAN. Both sites are symmetric NATs (`masquerade fully-random`), the server is
//! plain (`rendezvous --port P`): without a mapping the link would be relayed at once.
//!
//! Per protocol (one test each, the peer restricted to it with `--portmap`): the owner
//! on A maps its probe's port (the DNAT rule is seen in miniupnpd's nftables table),
//! the visitor on B dials the mapped address and the link is direct (checked from the
//! server namespace's nftables counters while 4 MB cross it), the 2 s lease is renewed
//! (the rule outlives several leases, miniupnpd never expires it), and Ctrl-C deletes
//! it (the owner's delete arrives before any expiry could).
//!
//! And `nat-check` names the protocols that answered, with the mapped address, and says
//! "none answered" behind a router without them, quickly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lab::{Host, Lab, LabSpec, Miniupnpd, NatProfile, Site, PORTMAP_PUBLIC_A};
use support::*;

const T: Duration = Duration::from_secs(20);
/// The lease the owner asks for: short, so that the test sees renewals, and long
/// enough that a renewal due at half of it is not late under CI's load (with 2 s, one
/// came more than 1 s late in a CI run and miniupnpd expired the mapping).
const LEASE_SECS: u64 = 6;
/// Renewals to see before checking the rule is still there (each at half the lease).
const RENEWALS: usize = 2;
/// What the server's namespace may carry for a direct link (control traffic only).
const SERVER_BYTES_LIMIT: u64 = 64 * 1024;

struct World {
    lab: Lab,
    upnpd: Miniupnpd,
    server: Proc,
    addr: SocketAddr,
    _echo: Proc,
    echo: SocketAddr,
}

fn world() -> World {
    let spec = LabSpec::default()
        .nat(Site::A, NatProfile::Symmetric)
        .nat(Site::B, NatProfile::Symmetric)
        .portmap(Site::A);
    let lab = Lab::new(spec).expect("lab");
    let upnpd = lab.start_miniupnpd(Site::A, &[]).expect("miniupnpd");
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let (server, addr) = rendezvous(cmd, &[]);
    let mut cmd = lab.command(Host::A, bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let line = echo.stdout.wait_for("listening on", T);
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    World {
        addr: SocketAddr::new(lab.server_ip().into(), addr.port()),
        lab,
        upnpd,
        server,
        _echo: echo,
        echo: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

impl World {
    fn peer(&self, host: Host, name: &str, args: &[&str]) -> Proc {
        let mut cmd = self.lab.command(host, bin("peer"));
        cmd.env_remove("PUNCHLINE_SECRET")
            .env_remove("PUNCHLINE_TOKEN")
            .env("RUST_LOG", "info");
        cmd.args(["--server", &self.addr.to_string()]).args(args);
        Proc::spawn(name, cmd)
    }

    fn server_log(&self) -> String {
        self.server.stdout.text() + "\n" + &self.server.stderr.text()
    }

    /// 4 streams of 1 MB echoed through the visitor's listener.
    fn check(&self, listen: SocketAddr) {
        let out = self
            .lab
            .command(Host::B, bin("stream-check"))
            .args([
                "run",
                &listen.to_string(),
                "--streams",
                "4",
                "--bytes",
                "1000000",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("ok streams="),
            "stream-check failed:\n{text}"
        );
    }
}

/// Polls `cond` every 50 ms for at most `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The external port in the owner's "port mapped" line.
fn mapped_port(log: &str) -> u16 {
    let line = log
        .lines()
        .find(|l| l.contains("port mapped"))
        .unwrap_or_else(|| panic!("no mapping made:\n{log}"));
    let ext = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("external="))
        .unwrap_or_else(|| panic!("no external= in {line:?}"));
    let addr: SocketAddr = ext.parse().unwrap();
    assert_eq!(
        addr.ip(),
        std::net::IpAddr::V4(PORTMAP_PUBLIC_A),
        "mapped on another address: {line}"
    );
    addr.port()
}

fn mapping_makes_a_direct_link(protocol: &str, log_name: &str) {
    if !lab::require_lab() {
        return;
    }
    let w = world();
    let echo = w.echo.to_string();
    let lease = LEASE_SECS.to_string();
    let mut owner = w.peer(
        Host::A,
        "owner",
        &[
            "--portmap",
            protocol,
            "--portmap-lease",
            &lease,
            "serve",
            "svc",
            "--local",
            &echo,
            "--secret",
            "s3cret",
        ],
    );
    owner.stderr.wait_for("registered", T);
    owner.stderr.wait_for("router offers port mappings", T);
    // The server knows the owner can map before the visitor asks (what pairing uses).
    wait_until(T, "the owner's NAT report", || {
        w.server_log().contains("portmap=true")
    });
    let visitor = w.peer(
        Host::B,
        "visitor",
        &[
            "connect",
            "svc",
            "--secret",
            "s3cret",
            "--listen",
            "127.0.0.1:0",
            "--keep-open",
        ],
    );
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let up = visitor.stderr.wait_for("link up:", T);
    let (olog, vlog) = (owner.stderr.text(), visitor.stderr.text());
    assert!(
        up.contains("link up: direct"),
        "{protocol}: not direct: {up}\nowner: {olog}\nvisitor: {vlog}\nserver: {}",
        w.server_log()
    );
    assert!(
        olog.contains(&format!("protocol=\"{log_name}\"")),
        "{protocol}: the owner used another protocol:\n{olog}"
    );
    let port = mapped_port(&olog);
    // The router forwards it: miniupnpd's DNAT rule to the owner's host, same port.
    let rules = w.upnpd.mapped_ports().unwrap();
    assert!(
        rules
            .iter()
            .any(|(p, to)| *p == port && *to.ip() == w.lab.host_ip(Host::A)),
        "{protocol}: no DNAT rule for port {port}: {rules:?}\n{}",
        w.upnpd.ruleset().unwrap()
    );
    // Direct, seen from outside: the server's namespace carries next to nothing.
    let before = w.lab.server_tcp_bytes().unwrap();
    w.check(listen);
    let server_bytes = w.lab.server_tcp_bytes().unwrap() - before;
    assert!(
        server_bytes < SERVER_BYTES_LIMIT,
        "{protocol}: 'direct', but the server's namespace carried {server_bytes} bytes"
    );
    println!(
        "PORTMAP {protocol}: {up}; mapped port {port}; server carried {server_bytes} bytes of 8 MB"
    );
    // Renewed: several leases later the rule is still there, and miniupnpd never
    // expired it.
    wait_until(T, "renewals", || {
        owner.stderr.text().matches("port mapping renewed").count() >= RENEWALS
    });
    let rules = w.upnpd.mapped_ports().unwrap();
    assert!(
        rules.iter().any(|(p, _)| *p == port),
        "{protocol}: the renewed mapping is gone: {rules:?}\n{}",
        w.upnpd.log()
    );
    assert!(
        !w.upnpd.log().contains("because it has expired"),
        "{protocol}: miniupnpd expired a mapping:\n{}",
        w.upnpd.log()
    );
    // Removed on exit: Ctrl-C, and the owner deletes it itself (not the lease's end).
    let pid = owner.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    owner.wait_exit(T);
    let olog = owner.stderr.text();
    assert!(
        olog.contains("port mapping deleted"),
        "{protocol}: no delete on exit:\n{olog}"
    );
    let rules = w.upnpd.mapped_ports().unwrap();
    assert!(
        !rules.iter().any(|(p, _)| *p == port),
        "{protocol}: the mapping outlived the owner: {rules:?}"
    );
    assert!(
        !w.upnpd.log().contains("because it has expired"),
        "{protocol}: removed by expiry, not by the owner:\n{}",
        w.upnpd.log()
    );
}

#[test]
fn upnp_mapping_makes_symmetric_x_symmetric_direct() {
    mapping_makes_a_direct_link("upnp", "UPnP IGD");
}

#[test]
fn pcp_mapping_makes_symmetric_x_symmetric_direct() {
    mapping_makes_a_direct_link("pcp", "PCP");
}

#[test]
fn nat_pmp_mapping_makes_symmetric_x_symmetric_direct() {
    mapping_makes_a_direct_link("nat-pmp", "NAT-PMP");
}

/// `nat-check` asks each protocol for a test mapping: behind miniupnpd all three
/// answer with the router's address; behind a router without them, none does, and the
/// check still ends quickly.
#[test]
fn nat_check_names_the_protocols() {
    if !lab::require_lab() {
        return;
    }
    let w = world();
    let run = |host: Host, extra: &[&str]| {
        let started = Instant::now();
        let out = w
            .lab
            .command(host, bin("peer"))
            .env_remove("PUNCHLINE_TOKEN")
            .args(["--server", &w.addr.to_string(), "nat-check"])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "nat-check failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (text, started.elapsed())
    };
    let (a, took_a) = run(Host::A, &[]);
    for name in ["PCP", "NAT-PMP", "UPnP IGD"] {
        let line = a
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{a}"));
        assert!(
            line.contains(&format!(
                "answered: test port mapped to {PORTMAP_PUBLIC_A}:"
            )),
            "{line}\n{a}"
        );
    }
    assert!(a.contains("punch ports are mapped with PCP"), "{a}");
    // The test mappings were deleted again.
    assert!(
        w.upnpd.mapped_ports().unwrap().is_empty(),
        "{}",
        w.upnpd.ruleset().unwrap()
    );
    let (b, took_b) = run(Host::B, &[]);
    assert!(b.contains("none answered: no port mappings"), "{b}");
    // Router B has no UPnP device: its ICMP port unreachable ends the UPnP search at
    // once (igd-next alone would wait out PORTMAP_UPNP_TIMEOUT, and every first link
    // of a peer behind such a router waited PORTMAP_DISCOVERY_WAIT for it).
    let upnp = b
        .lines()
        .find(|l| l.trim_start().starts_with("UPnP IGD"))
        .unwrap_or_else(|| panic!("no UPnP line:\n{b}"));
    assert!(upnp.contains("refused"), "{upnp}\n{b}");
    println!("PORTMAP without a router: {upnp}");
    let (off, _) = run(Host::A, &["--no-portmap"]);
    assert!(!off.contains("Port mapping"), "{off}");
    println!("PORTMAP nat-check: with miniupnpd {took_a:?}, without {took_b:?}");
    // The whole check (TCP and UDP suites too) stays short without a router.
    assert!(took_b < Duration::from_secs(8), "nat-check took {took_b:?}");
}
