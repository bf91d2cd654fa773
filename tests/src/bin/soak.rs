//! `soak`: mixed traffic for minutes on loopback, printing the resident memory, file
//! descriptors and error counts of the server and the long-lived peers over time
//! (issue 9). Not a timed test: a harness whose figures go into BENCHMARKS.md.
//!
//! What runs at once, against the real `rendezvous` (with a vhost):
//! * peers joining and leaving: every second a batch of library peers connects,
//!   registers a service each, stays a few seconds, and leaves;
//! * a `peer expose tcp` on a fixed port, and user connections through it (64 KiB
//!   echoed and checked each);
//! * a `peer serve` / `peer connect` pair, and connections through the visitor;
//! * a `peer expose http` route, and HTTP requests through the vhost;
//! * short-lived exposures: every 5 s a `peer expose tcp --remote-port 0` starts, is
//!   used once, and is killed.
//!
//! Run: `cargo build --release -p rendezvous -p peer -p lab && target/release/soak [SECS]`
//! (default 180 s; a line every 10 s).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use support::*;

const T: Duration = Duration::from_secs(30);
/// Library peers that join per second (each stays 2 to 6 s).
const JOINS_PER_SEC: usize = 20;

#[derive(Default)]
struct Count {
    ok: AtomicU64,
    err: AtomicU64,
}

impl Count {
    fn add(&self, ok: bool) {
        if ok { &self.ok } else { &self.err }.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.err.load(Ordering::Relaxed),
        )
    }
}

#[derive(Default)]
struct Counts {
    joins: Count,
    tcp: Count,
    link: Count,
    http: Count,
    short: Count,
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn peer(server: SocketAddr, args: &[&str]) -> Proc {
    let mut cmd = local("peer");
    cmd.env_remove("PUNCHLINE_TOKEN")
        .args(["--server", &server.to_string()])
        .args(args);
    Proc::spawn("peer", cmd)
}

/// 64 KiB through `addr` and back, checked.
fn echo_once(addr: SocketAddr, seed: u64) -> bool {
    let run = || -> std::io::Result<bool> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let data = data(64 * 1024, seed);
        c.write_all(&data)?;
        c.shutdown(std::net::Shutdown::Write)?;
        let mut got = Vec::new();
        c.read_to_end(&mut got)?;
        Ok(got == data)
    };
    run().unwrap_or(false)
}

fn http_once(vhost: SocketAddr) -> bool {
    let run = || -> std::io::Result<bool> {
        let mut c = TcpStream::connect_timeout(&vhost, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: soak.example.com\r\nConnection: close\r\n\r\n")?;
        let mut got = String::new();
        c.read_to_string(&mut got)?;
        Ok(got.starts_with("HTTP/1.1 200") && got.contains("soak"))
    };
    run().unwrap_or(false)
}

/// A tiny HTTP/1.0-style server answering every request with "soak".
fn http_backend() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nsoak",
                );
            });
        }
    });
    addr
}

fn status(pid: u32) -> String {
    format!("{:>6} KiB {:>4} fds", rss_kib(pid), fds(pid))
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(180);
    let (srv, addr) = rendezvous(
        local("rendezvous"),
        &[
            "--bind",
            "127.0.0.1",
            "--vhost-http-port",
            "0",
            "--grace",
            "2",
        ],
    );
    let vhost: SocketAddr = srv
        .stdout
        .wait_for("http vhost on", T)
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut echo_cmd = Command::new(bin("stream-check"));
    echo_cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", echo_cmd);
    let port: u16 = echo
        .stdout
        .wait_for("listening on", T)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let echo_addr = SocketAddr::from(([127, 0, 0, 1], port)).to_string();
    let web = http_backend().to_string();

    let exposer = peer(
        addr,
        &["expose", "tcp", "--local", &echo_addr, "--remote-port", "0"],
    );
    let exposed: u16 = exposer
        .stdout
        .wait_for("exposed", T)
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let exposed = SocketAddr::from(([127, 0, 0, 1], exposed));
    let web_peer = peer(
        addr,
        &[
            "expose",
            "http",
            "--local",
            &web,
            "--domain",
            "soak.example.com",
        ],
    );
    web_peer.stdout.wait_for("exposed", T);
    let owner = peer(
        addr,
        &[
            "serve",
            "soak",
            "--local",
            &echo_addr,
            "--secret",
            "soak-secret",
        ],
    );
    owner.stderr.wait_for("registered", T);
    let visitor = peer(
        addr,
        &[
            "connect",
            "soak",
            "--secret",
            "soak-secret",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let listen: SocketAddr = visitor
        .stdout
        .wait_for("listening on", T)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();

    // Traffic through the exposed port, the link, the vhost: one client each, in a loop.
    for kind in 0..3 {
        let (counts, stop) = (counts.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match kind {
                    0 => counts.tcp.add(echo_once(exposed, i)),
                    1 => counts.link.add(echo_once(listen, i)),
                    _ => counts.http.add(http_once(vhost)),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }

    // Short-lived exposures.
    {
        let (counts, stop, echo_addr) = (counts.clone(), stop.clone(), echo_addr.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let p = peer(
                    addr,
                    &["expose", "tcp", "--local", &echo_addr, "--remote-port", "0"],
                );
                let port: Option<u16> = std::panic::catch_unwind(|| {
                    p.stdout
                        .wait_for("exposed", T)
                        .split_whitespace()
                        .last()
                        .and_then(|p| p.parse().ok())
                })
                .ok()
                .flatten();
                let ok = port.is_some_and(|port| {
                    let a = SocketAddr::from(([127, 0, 0, 1], port));
                    (0..50).any(|_| {
                        echo_once(a, i) || {
                            std::thread::sleep(Duration::from_millis(50));
                            false
                        }
                    })
                });
                counts.short.add(ok);
                drop(p);
                std::thread::sleep(Duration::from_secs(5));
            }
        }));
    }

    // Library peers joining and leaving.
    {
        let (counts, stop) = (counts.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut n: u64 = 0;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for _ in 0..JOINS_PER_SEC {
                        n += 1;
                        let counts = counts.clone();
                        tokio::spawn(async move {
                            let ok = join_once(addr, n).await;
                            counts.joins.add(ok);
                        });
                    }
                }
                tokio::time::sleep(Duration::from_secs(7)).await;
            });
        }));
    }

    let pids = [
        ("server", srv.child.id()),
        ("exposer", exposer.child.id()),
        ("owner", owner.child.id()),
        ("visitor", visitor.child.id()),
        ("http peer", web_peer.child.id()),
    ];
    println!(
        "soak: {secs} s on loopback; {JOINS_PER_SEC} peers join per second; \
         columns: ok/errors per kind, then RSS and fds"
    );
    let started = Instant::now();
    let mut next = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(secs) {
        if started.elapsed() >= next {
            let c = &counts;
            let [j, t, l, h, s] = [&c.joins, &c.tcp, &c.link, &c.http, &c.short].map(Count::get);
            let procs: Vec<String> = pids
                .iter()
                .map(|(name, pid)| format!("{name} {}", status(*pid)))
                .collect();
            println!(
                "t={:>4}s joins {}/{} tcp {}/{} link {}/{} http {}/{} short {}/{} | {}",
                started.elapsed().as_secs(),
                j.0,
                j.1,
                t.0,
                t.1,
                l.0,
                l.1,
                h.0,
                h.1,
                s.0,
                s.1,
                procs.join(" | ")
            );
            next += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Everyone left: how much comes back.
    std::thread::sleep(Duration::from_secs(15));
    let c = &counts;
    let [j, t, l, h, s] = [&c.joins, &c.tcp, &c.link, &c.http, &c.short].map(Count::get);
    println!(
        "end: joins {}/{} tcp {}/{} link {}/{} http {}/{} short {}/{} | after 15 s quiet: {}",
        j.0,
        j.1,
        t.0,
        t.1,
        l.0,
        l.1,
        h.0,
        h.1,
        s.0,
        s.1,
        pids.iter()
            .map(|(name, pid)| format!("{name} {}", status(*pid)))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let warnings = srv
        .stderr
        .text()
        .lines()
        .filter(|l| l.contains("WARN"))
        .count();
    println!("server warnings logged: {warnings}");
}

/// One library peer: connects, registers a service, stays 2 to 6 s, leaves.
async fn join_once(addr: SocketAddr, n: u64) -> bool {
    use common::proto::{ClientMsg, ServerMsg};
    let cfg = peer::client::ServerConfig::ephemeral(addr, None);
    let Ok(mut c) = peer::client::Control::connect(&cfg).await else {
        return false;
    };
    if c.send(ClientMsg::Register {
        name: format!("join-{n}"),
    })
    .await
    .is_err()
    {
        return false;
    }
    let ok = matches!(
        tokio::time::timeout(T, c.recv()).await,
        Ok(Ok(ServerMsg::Registered { .. }))
    );
    tokio::time::sleep(Duration::from_millis(2000 + n % 4000)).await;
    c.close().await;
    ok
}
