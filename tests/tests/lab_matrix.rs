//! The punching matrix through real NATs: the real `rendezvous` and `peer` binaries in
//! the NAT lab (namespaces, nftables NATs, 50 ms between the sites), 10 runs per case.
//!
//! "Direct" is checked from outside the programs: the server namespace's nftables
//! counters must carry next to none of the bytes that crossed between the peers.
//! Each case prints one `MATRIX` line with the count and the time from the punch
//! signal to the authenticated link (median, max).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use lab::{CgnatProfile, Host, Lab, LabSpec, NatProfile, Site, Unsolicited};
use support::*;

const RUNS: usize = 10;
/// Bytes each run sends from A to B (B sends a smaller answer back).
const RUN_BYTES: usize = 2 << 20;
/// The server namespace may see control traffic, never the data: far below RUN_BYTES.
const SERVER_BYTES_LIMIT: u64 = 64 * 1024;

struct Running {
    lab: Lab,
    _server: Proc,
    addr: SocketAddr,
}

fn start(spec: LabSpec) -> Running {
    let lab = Lab::new(spec).expect("lab");
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let (server, addr) = rendezvous(
        cmd,
        &["--bind", &lab.server_ip().to_string(), "--token", "lab"],
    );
    Running {
        lab,
        _server: server,
        addr,
    }
}

fn peer(
    r: &Running,
    host: Host,
    code: &str,
    input: Input,
) -> (Proc, std::thread::JoinHandle<Vec<u8>>) {
    peer_args(r, host, code, &[], input)
}

fn peer_args(
    r: &Running,
    host: Host,
    code: &str,
    extra: &[&str],
    input: Input,
) -> (Proc, std::thread::JoinHandle<Vec<u8>>) {
    let mut cmd = r.lab.command(host, bin("peer"));
    let server = r.addr.to_string();
    cmd.args([
        "--server", &server, "--token", "lab", "pipe", "--code", code,
    ]);
    cmd.args(extra);
    Proc::spawn_piped(&format!("peer {host:?}"), cmd, input)
}

/// Milliseconds from the punch signal to the link, from the peer's status line.
fn link_ms(stderr: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains("link up: direct"))?;
    let before = line.split(" ms after signal").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

struct Stats {
    direct: usize,
    millis: Vec<u64>,
}

/// One pipe run A → B (and a short answer B → A), checked end to end.
fn run_once(r: &Running, a: Host, b: Host, run: usize) -> Option<u64> {
    let code = format!("run-{run}");
    let (a_in, b_in) = (data(RUN_BYTES, run as u64), data(4096, 1000 + run as u64));
    let before = r.lab.server_tcp_bytes().expect("counters");
    let (mut pa, a_out) = peer(r, a, &code, Input::Bytes(a_in.clone()));
    let (mut pb, b_out) = peer(r, b, &code, Input::Bytes(b_in.clone()));
    let (sa, sb) = (
        pa.wait_exit(Duration::from_secs(60)),
        pb.wait_exit(Duration::from_secs(60)),
    );
    let server_bytes = r.lab.server_tcp_bytes().expect("counters") - before;
    let (ea, eb) = (pa.stderr.text(), pb.stderr.text());
    assert!(
        sa.success() && sb.success(),
        "run {run} failed:\nA: {ea}\nB: {eb}"
    );
    assert_eq!(
        sha256(&b_out.join().unwrap()),
        sha256(&a_in),
        "A→B data differs"
    );
    assert_eq!(
        sha256(&a_out.join().unwrap()),
        sha256(&b_in),
        "B→A data differs"
    );
    assert!(
        server_bytes < SERVER_BYTES_LIMIT,
        "run {run}: the server's namespace carried {server_bytes} bytes of a {RUN_BYTES}-byte transfer: not direct"
    );
    let ms = link_ms(&ea).max(link_ms(&eb));
    assert!(ms.is_some(), "no 'link up: direct' line:\nA: {ea}\nB: {eb}");
    ms
}

fn matrix_case(name: &str, spec: LabSpec, a: Host, b: Host) {
    if !lab::require_lab() {
        return;
    }
    let r = start(spec);
    let mut stats = Stats {
        direct: 0,
        millis: Vec::new(),
    };
    for run in 0..RUNS {
        if let Some(ms) = run_once(&r, a, b, run) {
            stats.direct += 1;
            stats.millis.push(ms);
        }
    }
    stats.millis.sort_unstable();
    let median = stats.millis[stats.millis.len() / 2];
    let max = *stats.millis.last().unwrap();
    println!(
        "MATRIX case={name} direct={}/{RUNS} signal_to_link_ms median={median} max={max}",
        stats.direct
    );
    assert_eq!(stats.direct, RUNS);
}

fn pr() -> LabSpec {
    LabSpec::default()
}

#[test]
fn port_restricted_rst_x_port_restricted_rst() {
    matrix_case("pr-rst x pr-rst", pr(), Host::A, Host::B);
}

#[test]
fn port_restricted_drop_x_port_restricted_drop() {
    let spec = pr()
        .unsolicited(Site::A, Unsolicited::Drop)
        .unsolicited(Site::B, Unsolicited::Drop);
    matrix_case("pr-drop x pr-drop", spec, Host::A, Host::B);
}

#[test]
fn port_restricted_icmp_x_port_restricted_icmp() {
    let spec = pr()
        .unsolicited(Site::A, Unsolicited::Icmp)
        .unsolicited(Site::B, Unsolicited::Icmp);
    matrix_case("pr-icmp x pr-icmp", spec, Host::A, Host::B);
}

#[test]
fn full_cone_x_port_restricted() {
    matrix_case(
        "fullcone x pr",
        pr().nat(Site::A, NatProfile::FullCone),
        Host::A,
        Host::B,
    );
}

#[test]
fn full_cone_x_symmetric() {
    let spec = pr()
        .nat(Site::A, NatProfile::FullCone)
        .nat(Site::B, NatProfile::Symmetric);
    matrix_case("fullcone x symmetric", spec, Host::A, Host::B);
}

#[test]
fn port_restricted_behind_cgnat_x_port_restricted() {
    let spec = pr().cgnat(Site::A, CgnatProfile::EndpointIndependent);
    matrix_case("pr behind ei-cgnat x pr", spec, Host::A, Host::B);
}

#[test]
fn two_hosts_behind_one_nat() {
    matrix_case("same nat", pr().same_nat(), Host::A, Host::B);
}

/// Where punching cannot work: with `--no-relay` the peer says so and exits non-zero
/// in bounded time (never hangs); by default the link runs relayed through the server,
/// which the server namespace's counters show, with the data intact.
fn symmetric_case(name: &str, spec: LabSpec) {
    if !lab::require_lab() {
        return;
    }
    let r = start(spec);
    let started = std::time::Instant::now();
    let (mut pa, _) = peer_args(
        &r,
        Host::A,
        "fail",
        &["--no-relay"],
        Input::Bytes(vec![1; 1000]),
    );
    let (mut pb, _) = peer_args(
        &r,
        Host::B,
        "fail",
        &["--no-relay"],
        Input::Bytes(vec![2; 1000]),
    );
    // Bounded: no attempt at all here (and 3 attempts × (3 s window + probe set-up)
    // where the mapping is unknown) stays well under 30 s.
    let (sa, sb) = (
        pa.wait_exit(Duration::from_secs(30)),
        pb.wait_exit(Duration::from_secs(30)),
    );
    let secs = started.elapsed().as_secs_f64();
    for (st, p) in [(sa, &pa), (sb, &pb)] {
        assert!(!st.success(), "{name}: a direct link cannot exist here");
        let err = p.stderr.text();
        // Both NATs map per destination and the server's second port let the peers
        // measure it: the server says so at pairing, and no attempt is made.
        assert!(
            err.contains("no direct connection is possible")
                && err.contains("skipped the direct attempts")
                && err.contains("--no-relay forbids the relay"),
            "{name}: {err}"
        );
    }
    println!("MATRIX case={name} --no-relay: failed cleanly after {secs:.1} s");
    for run in 0..2 {
        let code = format!("relay-{run}");
        let (a_in, b_in) = (data(RUN_BYTES, run), data(4096, 7 + run));
        let before = r.lab.server_tcp_bytes().expect("counters");
        let (mut pa, a_out) = peer(&r, Host::A, &code, Input::Bytes(a_in.clone()));
        let (mut pb, b_out) = peer(&r, Host::B, &code, Input::Bytes(b_in.clone()));
        let (sa, sb) = (
            pa.wait_exit(Duration::from_secs(60)),
            pb.wait_exit(Duration::from_secs(60)),
        );
        let server_bytes = r.lab.server_tcp_bytes().expect("counters") - before;
        let (ea, eb) = (pa.stderr.text(), pb.stderr.text());
        assert!(
            sa.success() && sb.success(),
            "{name}: relayed run failed:\nA: {ea}\nB: {eb}"
        );
        assert!(
            ea.contains("link up: relayed") && eb.contains("link up: relayed"),
            "A: {ea}\nB: {eb}"
        );
        assert_eq!(sha256(&b_out.join().unwrap()), sha256(&a_in));
        assert_eq!(sha256(&a_out.join().unwrap()), sha256(&b_in));
        // In and out of the server: at least twice the data.
        assert!(
            server_bytes > 2 * RUN_BYTES as u64,
            "{name}: server carried only {server_bytes} bytes: not relayed?"
        );
        println!("MATRIX case={name} run={run} relayed, server carried {server_bytes} bytes");
    }
}

#[test]
fn symmetric_x_symmetric_relays() {
    symmetric_case(
        "sym x sym",
        pr().nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::Symmetric),
    );
}

// Port-restricted × symmetric goes direct by the birthday punch: `lab_birthday.rs`.
