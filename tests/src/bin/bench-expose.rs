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

fn check(addr: SocketAddr, streams: usize, bytes: usize) -> f64 {
    let out = Command::new(bin("stream-check"))
        .args([
            "run",
            &addr.to_string(),
            "--streams",
            &streams.to_string(),
            "--bytes",
            &bytes.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stream-check failed: {text}");
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("mbit_per_s="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A local "hello" HTTP server (hyper, keep-alive) on a thread of its own.
fn hello_server() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            l.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(
                                b"hello from behind NAT\n",
                            )),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// wrk at 50 connections: (requests/s, p50 ms, p99 ms).
fn wrk(addr: SocketAddr, host: &str) -> Option<(f64, f64, f64)> {
    let out = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            "50",
            "-d",
            "5s",
            "--latency",
            "-H",
            &format!("Host: {host}"),
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ms = |v: &str| -> Option<f64> {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic())?);
        let n: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => return None,
        })
    };
    let field = |k: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    };
    let rps: f64 = field("Requests/sec:")?.parse().ok()?;
    Some((rps, ms(&field("50%")?)?, ms(&field("99%")?)?))
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
    let port: u16 = echo
        .stdout
        .wait_for("listening on", T)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let echo_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (server, addr) = rendezvous(cmd, &["--bind", "127.0.0.1", "--vhost-http-port", "0"]);
    let vhost: SocketAddr = server
        .stdout
        .wait_for("http vhost on", T)
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut cmd = local("peer");
    cmd.args([
        "--server",
        &addr.to_string(),
        "expose",
        "tcp",
        "--local",
        &echo_addr.to_string(),
        "--remote-port",
        "0",
    ]);
    let peer = Proc::spawn("peer", cmd);
    let exposed: u16 = peer
        .stdout
        .wait_for("exposed ", T)
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
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
    row(
        "TCP direct to the service, 1 stream (echo, Mbit/s each way)",
        format!("{direct1:.0}"),
    );
    row(
        "TCP through an exposed port, 1 stream",
        format!("{via1:.0} ({:.2}x direct)", via1 / direct1),
    );
    row(
        "TCP direct to the service, 8 streams",
        format!("{direct8:.0}"),
    );
    row(
        "TCP through an exposed port, 8 streams",
        format!("{via8:.0} ({:.2}x direct)", via8 / direct8),
    );
    row(
        "RSS idle, server / peer",
        format!("{} / {} KiB", idle.0, idle.1),
    );
    row(
        "RSS under 8-stream TCP load, server / peer",
        format!("{} / {} KiB", load.0, load.1),
    );
    // HTTP through the vhost, against the same server reached directly.
    let hello = hello_server();
    let mut cmd = local("peer");
    cmd.args([
        "--server",
        &addr.to_string(),
        "expose",
        "http",
        "--local",
        &hello.to_string(),
        "--domain",
        "bench.example.com",
    ]);
    let web = Proc::spawn("peer http", cmd);
    web.stdout.wait_for("exposed ", T);
    match (
        wrk(hello, "bench.example.com"),
        wrk(vhost, "bench.example.com"),
    ) {
        (Some(direct), Some(via)) => {
            let rss = (rss_kib(server.child.id()), rss_kib(web.child.id()));
            row(
                "HTTP direct, 50 connections (requests/s, p50, p99)",
                format!(
                    "{:.0} req/s, {:.2} ms, {:.2} ms",
                    direct.0, direct.1, direct.2
                ),
            );
            row(
                "HTTP through the vhost",
                format!(
                    "{:.0} req/s ({:.2}x direct), {:.2} ms, {:.2} ms",
                    via.0,
                    via.0 / direct.0,
                    via.1,
                    via.2
                ),
            );
            row(
                "RSS after the HTTP load, server / peer",
                format!("{} / {} KiB", rss.0, rss.1),
            );
        }
        _ => row(
            "HTTP",
            "skipped: wrk is not installed (apt-get install wrk)".into(),
        ),
    }
    println!("| measure | figure |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
