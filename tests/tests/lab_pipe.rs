//! `pipe` in the NAT lab at size: 100 MB across two port-restricted NATs with 50 ms
//! between them, sha256-checked, with plain TCP between the same two namespaces
//! measured in the same run for comparison; and a peer killed mid-transfer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use lab::{Host, Lab, LabSpec, Site};
use support::*;

const BIG: usize = 100_000_000;

fn server(lab: &Lab) -> (Proc, std::net::SocketAddr) {
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN");
    rendezvous(cmd, &["--bind", &lab.server_ip().to_string()])
}

fn pipe(
    lab: &Lab,
    host: Host,
    addr: std::net::SocketAddr,
    code: &str,
    input: Input,
) -> (Proc, std::thread::JoinHandle<Vec<u8>>) {
    let mut cmd = lab.command(host, bin("peer"));
    cmd.env_remove("PUNCHLINE_TOKEN")
        .args(["--server", &addr.to_string(), "pipe", "--code", code]);
    Proc::spawn_piped(&format!("peer {host:?}"), cmd, input)
}

#[test]
fn hundred_megabytes_intact_and_compared_with_plain_tcp() {
    if !lab::require_lab() {
        return;
    }
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_srv, addr) = server(&lab);

    // Plain TCP between the same namespaces, through a port forward on router A.
    let port = 45000;
    lab.forward_port(Site::A, port).expect("forward");
    let sink = Proc::spawn("sink", {
        let mut c = lab.command(Host::A, bin("lab-tcp"));
        c.args(["listen", &port.to_string(), "--mode", "sink"]);
        c
    });
    sink.stdout.wait_for("listening", Duration::from_secs(10));
    let out = lab
        .command(Host::B, bin("lab-tcp"))
        .args([
            "connect",
            &format!("{}:{port}", lab.public_ip(Site::A)),
            "--send",
            &BIG.to_string(),
        ])
        .output()
        .expect("lab-tcp");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "plain TCP failed: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tcp_mbps: f64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("mbit_per_s="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mbit_per_s in {line:?}"));

    let input = data(BIG, 42);
    let want = sha256(&input);
    let before = lab.server_tcp_bytes().unwrap();
    let (mut rx, rx_out) = pipe(&lab, Host::A, addr, "big", Input::Bytes(Vec::new()));
    let (mut tx, _) = pipe(&lab, Host::B, addr, "big", Input::Bytes(input));
    tx.stderr
        .wait_for("link up: direct", Duration::from_secs(30));
    let started = Instant::now();
    assert!(
        tx.wait_exit(Duration::from_secs(300)).success(),
        "{}",
        tx.stderr.text()
    );
    assert!(
        rx.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        rx.stderr.text()
    );
    let secs = started.elapsed().as_secs_f64();
    let got = rx_out.join().unwrap();
    assert_eq!(got.len(), BIG);
    assert_eq!(sha256(&got), want);
    let server_bytes = lab.server_tcp_bytes().unwrap() - before;
    assert!(
        server_bytes < 64 * 1024,
        "server namespace carried {server_bytes} bytes"
    );
    let pipe_mbps = BIG as f64 * 8.0 / secs / 1e6;
    println!(
        "THROUGHPUT pipe={pipe_mbps:.0} Mbit/s plain_tcp={tcp_mbps:.0} Mbit/s ratio={:.2} (100 MB, B→A, server saw {server_bytes} bytes)",
        pipe_mbps / tcp_mbps
    );
}

#[test]
fn a_peer_killed_mid_transfer_makes_the_other_exit_with_an_error() {
    if !lab::require_lab() {
        return;
    }
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (_srv, addr) = server(&lab);
    for kill_sender in [true, false] {
        let code = format!("kill-{kill_sender}");
        let (mut tx, _) = pipe(&lab, Host::A, addr, &code, Input::Endless);
        let (mut rx, _out) = pipe(&lab, Host::B, addr, &code, Input::Bytes(Vec::new()));
        tx.stderr
            .wait_for("link up: direct", Duration::from_secs(30));
        rx.stderr
            .wait_for("link up: direct", Duration::from_secs(30));
        let (victim, survivor) = if kill_sender {
            (&mut tx, &mut rx)
        } else {
            (&mut rx, &mut tx)
        };
        victim.child.kill().unwrap();
        let st = survivor.wait_exit(Duration::from_secs(30));
        assert!(!st.success());
        let err = survivor.stderr.text();
        assert!(err.contains("link lost after"), "{err}");
    }
}
