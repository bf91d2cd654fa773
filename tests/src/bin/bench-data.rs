//! `bench-data`: punchline's data path against direct TCP, rathole and bore, in one
//! run on loopback.
//!
//! Paths (each to the same local target, which is a byte sink for bulk connections
//! and a hyper "hello" server for connections that start with `GET `):
//!
//! * `direct`: the target itself;
//! * `punchline expose tcp`: `rendezvous` + `peer expose tcp` (Noise, multiplexed streams);
//! * `punchline vhost`: `peer expose http` through the server's HTTP vhost (HTTP only);
//! * `punchline serve/connect`: `peer serve` + `peer connect`, a direct link (Noise,
//!   multiplexed streams) punched over loopback;
//! * `rathole` (no encryption) and `bore` (no encryption), installed from crates.io
//!   into `target/bench-tools` by `cargo install` on first use (skipped if present).
//!
//! Per path: bulk throughput one way at 1 and 8 connections (measured at the sink),
//! HTTP requests/s and p99 at 50 connections with keep-alive and with
//! `Connection: close`, CPU seconds per GB of bulk data and CPU microseconds per
//! keep-alive request (utime + stime from `/proc/PID/stat`, summed over the path's
//! processes: on a machine where the load shares the cores with the tunnel, requests/s
//! is a floor and CPU per request is what the tunnel costs), and RSS idle / peak (VmRSS
//! after set-up, VmHWM at the end) of each process. Every figure is the median of
//! `--rounds` rounds; ratios are to `direct` in the same run.
//!
//! Run: `cargo build --release -p rendezvous -p peer -p lab && target/release/bench-data`
//! (options: `--rounds N` (default 3), `--secs S` per measurement (default 3),
//! `--only NAME,...` to run some paths). A benchmark, not a test: `cargo test` never
//! runs it.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const T: Duration = Duration::from_secs(30);
/// HTTP connections at once, as in the and frp's figures.
const HTTP_CONNS: usize = 50;
const VHOST_DOMAIN: &str = "bench.example.com";

/// Bytes the sink has received, all connections together.
static SINK: AtomicU64 = AtomicU64::new(0);

/// The target: a sink, or a hello server for connections that start with `GET `.
async fn target(l: TcpListener) {
    loop {
        let Ok((tcp, _)) = l.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut first = [0u8; 4];
            if tcp.peek(&mut first).await.is_err() {
                return;
            }
            if &first == b"GET " {
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
            } else {
                let mut tcp = tcp;
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    SINK.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
    }
}

/// CPU ticks (utime + stime) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until the sink has received nothing for a while (the last run's data has
/// drained), so that runs do not overlap.
async fn quiet() {
    let mut last = SINK.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = SINK.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Bulk data one way on `streams` connections for `secs`: (bytes/s at the sink, CPU
/// seconds of `pids` per GB).
async fn bulk(addr: SocketAddr, streams: usize, secs: f64, pids: &[u32], tck: f64) -> (f64, f64) {
    quiet().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..streams {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            let _ = tcp.set_nodelay(true);
            let chunk = lab::pattern(128 * 1024, i as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                if tcp.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
    }
    // Warm-up: connections up, windows grown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let (b0, t0) = (SINK.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (b1, t1) = (SINK.load(Ordering::Relaxed), Instant::now());
    let cpu1: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let bytes = (b1 - b0) as f64;
    let rate = bytes / (t1 - t0).as_secs_f64();
    let cpu = (cpu1 - cpu0) as f64 / tck;
    (
        rate,
        if bytes > 0.0 {
            cpu / (bytes / 1e9)
        } else {
            0.0
        },
    )
}

/// Reads one HTTP response (headers and a Content-Length body) from `tcp`, with `buf`
/// holding bytes already read; false on a bad or missing response.
async fn read_response(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return false;
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let mut more = [0u8; 4096];
                match tcp.read(&mut more).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => buf.extend_from_slice(&more[..n]),
                }
            }
            buf.drain(..total);
            return true;
        }
        let mut more = [0u8; 4096];
        match tcp.read(&mut more).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&more[..n]),
        }
    }
}

/// HTTP GETs on [`HTTP_CONNS`] connections at once for `secs`: (requests/s, p99 ms,
/// errors). With `keep_alive` each connection carries requests one after another;
/// without, every request is a new connection with `Connection: close` (its time
/// includes the connect).
async fn http(addr: SocketAddr, host: &str, secs: f64, keep_alive: bool) -> (f64, f64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..HTTP_CONNS {
        let errors = errors.clone();
        let req = if keep_alive {
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
        } else {
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        };
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut conn: Option<(TcpStream, Vec<u8>)> = None;
            while Instant::now() < deadline {
                let t = Instant::now();
                if conn.is_none() {
                    match TcpStream::connect(addr).await {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            conn = Some((tcp, Vec::new()));
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let (tcp, buf) = conn.as_mut().unwrap();
                let ok =
                    tcp.write_all(req.as_bytes()).await.is_ok() && read_response(tcp, buf).await;
                if ok {
                    lat.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if !ok || !keep_alive {
                    conn = None;
                }
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r.unwrap());
    }
    lat.sort();
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    (lat.len() as f64 / secs, p99, errors.load(Ordering::Relaxed))
}

/// One path under test.
struct Path {
    name: &'static str,
    addr: SocketAddr,
    /// The Host header for HTTP (the vhost routes by it).
    host: String,
    /// Whether bulk data goes through it (the vhost carries HTTP only).
    bulk: bool,
    procs: Vec<Proc>,
    /// Processes of other paths that carry this path's HTTP too (the vhost's server),
    /// counted in its CPU per request.
    http_pids: Vec<u32>,
    /// Processes the path needs but that carry none of its data.
    _others: Vec<Proc>,
    idle_rss: Vec<u64>,
}

/// Retries a GET until the path answers (tunnels come up asynchronously).
async fn wait_ready(addr: SocketAddr, host: &str) {
    let deadline = Instant::now() + T;
    loop {
        if let Ok(Ok(mut tcp)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
        {
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let mut buf = Vec::new();
            let ok = tcp.write_all(req.as_bytes()).await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(2), read_response(&mut tcp, &mut buf))
                        .await,
                    Ok(true)
                );
            if ok {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `target/bench-tools`, next to the profile directory of this binary.
fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BENCH_TOOLS") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("bench-tools")
}

/// The comparison tools, installed with `cargo install` unless already there.
fn tool(name: &str, krate: &str) -> Option<PathBuf> {
    let dir = tools_dir();
    let path = dir.join("bin").join(name);
    if !path.exists() {
        eprintln!("installing {krate} into {} (once)", dir.display());
        let ok = Command::new("cargo")
            .args(["install", "--locked", "--root"])
            .arg(&dir)
            .arg(krate)
            .status()
            .is_ok_and(|s| s.success())
            || Command::new("cargo")
                .args(["install", "--root"])
                .arg(&dir)
                .arg(krate)
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot install {krate}: skipping it");
            return None;
        }
    }
    Some(path)
}

fn punchline_expose(target: SocketAddr) -> (Path, Path) {
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
    let server_pid = server.child.id();
    let mut cmd = local("peer");
    cmd.args(["--server", &addr.to_string(), "expose", "tcp", "--local"])
        .arg(target.to_string())
        .args(["--remote-port", "0"]);
    let peer = Proc::spawn("peer expose tcp", cmd);
    let port: u16 = peer
        .stdout
        .wait_for("exposed ", T)
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    let mut cmd = local("peer");
    cmd.args(["--server", &addr.to_string(), "expose", "http", "--local"])
        .arg(target.to_string())
        .args(["--domain", VHOST_DOMAIN]);
    let web = Proc::spawn("peer expose http", cmd);
    web.stdout.wait_for("exposed ", T);
    // The server process is counted in the tcp path (it carries both, one at a time),
    // and in the vhost's CPU per request.
    (
        Path {
            name: "punchline expose tcp",
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host: "localhost".into(),
            bulk: true,
            procs: vec![server, peer],
            http_pids: vec![],
            _others: vec![],
            idle_rss: vec![],
        },
        Path {
            name: "punchline vhost (HTTP)",
            addr: vhost,
            host: VHOST_DOMAIN.into(),
            bulk: false,
            procs: vec![web],
            http_pids: vec![server_pid],
            _others: vec![],
            idle_rss: vec![],
        },
    )
}

fn punchline_link(target: SocketAddr) -> Path {
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (server, addr) = rendezvous(cmd, &["--bind", "127.0.0.1"]);
    let srv = addr.to_string();
    let mut cmd = local("peer");
    cmd.args(["--server", &srv, "serve", "bench", "--local"])
        .arg(target.to_string())
        .args(["--secret", "b"]);
    let owner = Proc::spawn("peer serve", cmd);
    owner.stderr.wait_for("registered", T);
    let mut cmd = local("peer");
    cmd.args(["--server", &srv, "connect", "bench", "--secret", "b"]);
    let visitor = Proc::spawn("peer connect", cmd);
    let listen: SocketAddr = visitor
        .stdout
        .wait_for("listening on", T)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    Path {
        name: "punchline serve/connect",
        addr: listen,
        host: "localhost".into(),
        bulk: true,
        procs: vec![owner, visitor],
        http_pids: vec![],
        // Only signals: no data crosses it on a direct link.
        _others: vec![server],
        idle_rss: vec![],
    }
}

fn rathole(bin: &std::path::Path, target: SocketAddr, dir: &std::path::Path) -> Path {
    let (ctl, svc) = (free_port(), free_port());
    let server_toml = dir.join("rathole-server.toml");
    let client_toml = dir.join("rathole-client.toml");
    std::fs::write(
        &server_toml,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{ctl}\"\ndefault_token = \"bench\"\n\
             [server.services.bench]\nbind_addr = \"127.0.0.1:{svc}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &client_toml,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{ctl}\"\ndefault_token = \"bench\"\n\
             [client.services.bench]\nlocal_addr = \"{target}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--server").arg(&server_toml);
    let server = Proc::spawn("rathole server", cmd);
    let mut cmd = Command::new(bin);
    cmd.arg("--client").arg(&client_toml);
    let client = Proc::spawn("rathole client", cmd);
    Path {
        name: "rathole (no encryption)",
        addr: SocketAddr::from(([127, 0, 0, 1], svc)),
        host: "localhost".into(),
        bulk: true,
        procs: vec![server, client],
        http_pids: vec![],
        _others: vec![],
        idle_rss: vec![],
    }
}

fn bore(bin: &std::path::Path, target: SocketAddr) -> Path {
    let mut cmd = Command::new(bin);
    cmd.args(["server", "--bind-addr", "127.0.0.1", "--min-port", "20000"]);
    let server = Proc::spawn("bore server", cmd);
    server.stdout.wait_for("server listening", T);
    let mut cmd = Command::new(bin);
    cmd.args([
        "local",
        &target.port().to_string(),
        "--to",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    let client = Proc::spawn("bore local", cmd);
    let line = client.stdout.wait_for("listening at", T);
    let addr: SocketAddr = line
        .split_whitespace()
        .last()
        .unwrap()
        .trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':')
        .parse()
        .unwrap_or_else(|e| panic!("bore's address in {line:?}: {e}"));
    Path {
        name: "bore (no encryption)",
        addr,
        host: "localhost".into(),
        bulk: true,
        procs: vec![server, client],
        http_pids: vec![],
        _others: vec![],
        idle_rss: vec![],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Default, Clone)]
struct Cells {
    one: Vec<f64>,
    eight: Vec<f64>,
    cpu: Vec<f64>,
    ka: Vec<f64>,
    ka_p99: Vec<f64>,
    /// CPU µs per keep-alive request, the path's processes together.
    ka_cpu: Vec<f64>,
    close: Vec<f64>,
    close_p99: Vec<f64>,
    errors: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "bench-data: punchline's data path against direct TCP, rathole and bore, on loopback\n\n\
             usage: bench-data [--rounds N] [--secs S] [--only NAME,...]\n\n  \
             --rounds N       rounds per figure, the median is printed (default 3)\n  \
             --secs S         seconds per measurement (default 3)\n  \
             --only NAME,...  only the paths whose names contain one of these \
             (direct, expose, vhost, serve, rathole, bore)"
        );
        return;
    }
    if let Some(bad) = args
        .iter()
        .skip(1)
        .step_by(2)
        .find(|a| !matches!(a.as_str(), "--rounds" | "--secs" | "--only"))
    {
        eprintln!("bench-data: unknown option {bad:?} (see --help)");
        std::process::exit(2);
    }
    let opt = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let rounds: usize = opt("--rounds").map_or(3, |v| v.parse().expect("--rounds N"));
    let secs: f64 = opt("--secs").map_or(3.0, |v| v.parse().expect("--secs S"));
    let only: Option<Vec<String>> =
        opt("--only").map(|v| v.split(',').map(str::to_string).collect());
    let wanted = |name: &str| {
        only.as_ref()
            .is_none_or(|o| o.iter().any(|w| name.contains(w.as_str())))
    };
    let tck = clk_tck();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(target(l));
        addr
    });
    let dir = std::env::temp_dir().join(format!("bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut paths = vec![Path {
        name: "direct",
        addr: target,
        host: "localhost".into(),
        bulk: true,
        procs: vec![],
        http_pids: vec![],
        _others: vec![],
        idle_rss: vec![],
    }];
    if wanted("expose") || wanted("vhost") {
        let (tcp, vhost) = punchline_expose(target);
        paths.push(tcp);
        paths.push(vhost);
    }
    if wanted("serve") {
        paths.push(punchline_link(target));
    }
    if wanted("rathole") {
        if let Some(bin) = tool("rathole", "rathole") {
            paths.push(rathole(&bin, target, &dir));
        }
    }
    if wanted("bore") {
        if let Some(bin) = tool("bore", "bore-cli") {
            paths.push(bore(&bin, target));
        }
    }
    rt.block_on(async {
        for p in &paths {
            wait_ready(p.addr, &p.host).await;
        }
    });
    for p in &mut paths {
        p.idle_rss = p
            .procs
            .iter()
            .map(|q| status_kib(q.child.id(), "VmRSS:"))
            .collect();
    }
    let mut cells = vec![Cells::default(); paths.len()];
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        for (p, c) in paths.iter().zip(cells.iter_mut()) {
            let pids: Vec<u32> = p.procs.iter().map(|q| q.child.id()).collect();
            rt.block_on(async {
                if p.bulk {
                    let (r1, cpu1) = bulk(p.addr, 1, secs, &pids, tck).await;
                    let (r8, cpu8) = bulk(p.addr, 8, secs, &pids, tck).await;
                    c.one.push(r1 * 8.0 / 1e9);
                    c.eight.push(r8 * 8.0 / 1e9);
                    c.cpu.push((cpu1 + cpu8) / 2.0);
                }
                let http_pids: Vec<u32> = pids.iter().chain(&p.http_pids).copied().collect();
                let ticks = || http_pids.iter().map(|&pid| cpu_ticks(pid)).sum::<u64>();
                let before = ticks();
                let (rps, p99, e1) = http(p.addr, &p.host, secs, true).await;
                if !http_pids.is_empty() && rps > 0.0 {
                    let used = (ticks() - before) as f64 / tck;
                    c.ka_cpu.push(used * 1e6 / (rps * secs));
                }
                c.ka.push(rps);
                c.ka_p99.push(p99);
                let (rps, p99, e2) = http(p.addr, &p.host, secs, false).await;
                c.close.push(rps);
                c.close_p99.push(p99);
                c.errors += e1 + e2;
            });
            eprintln!(
                "  {:<26} 1: {:>6.2} Gbit/s  8: {:>6.2} Gbit/s  cpu {:>5.2} s/GB  ka {:>7.0}/s  close {:>7.0}/s",
                p.name,
                c.one.last().copied().unwrap_or(f64::NAN),
                c.eight.last().copied().unwrap_or(f64::NAN),
                c.cpu.last().copied().unwrap_or(f64::NAN),
                c.ka.last().copied().unwrap_or(f64::NAN),
                c.close.last().copied().unwrap_or(f64::NAN),
            );
        }
    }
    let d = &cells[0];
    let (d1, d8, dka, dclose) = (
        median(d.one.clone()),
        median(d.eight.clone()),
        median(d.ka.clone()),
        median(d.close.clone()),
    );
    println!(
        "\nbench-data: loopback, {} core(s), median of {rounds} round(s) of {secs} s per figure; ratio to direct in brackets\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| path | 1 stream, Gbit/s | 8 streams, Gbit/s | CPU s/GB | HTTP keep-alive, req/s (p99 ms) | HTTP Connection: close, req/s (p99 ms) | keep-alive CPU µs/request | RSS idle / peak, MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let mib = |k: u64| k as f64 / 1024.0;
    for (p, c) in paths.iter().zip(&cells) {
        let (one, eight) = (median(c.one.clone()), median(c.eight.clone()));
        let (ka, close) = (median(c.ka.clone()), median(c.close.clone()));
        let bulk = |v: f64, d: f64| {
            if p.bulk {
                format!("{v:.2} ({:.2}x)", v / d)
            } else {
                "–".into()
            }
        };
        let cpu = if p.bulk && !p.procs.is_empty() {
            format!("{:.2}", median(c.cpu.clone()))
        } else {
            "–".into()
        };
        let rss = p
            .procs
            .iter()
            .zip(&p.idle_rss)
            .map(|(q, idle)| {
                format!(
                    "{}: {:.1} / {:.1}",
                    q.name,
                    mib(*idle),
                    mib(status_kib(q.child.id(), "VmHWM:"))
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        println!(
            "| {} | {} | {} | {} | {:.0} ({:.2}x) ({:.2}) | {:.0} ({:.2}x) ({:.2}) | {} | {} |{}",
            p.name,
            bulk(one, d1),
            bulk(eight, d8),
            cpu,
            ka,
            ka / dka,
            median(c.ka_p99.clone()),
            close,
            close / dclose,
            median(c.close_p99.clone()),
            if c.ka_cpu.is_empty() {
                "–".into()
            } else {
                format!("{:.1}", median(c.ka_cpu.clone()))
            },
            if rss.is_empty() { "–".into() } else { rss },
            if c.errors > 0 {
                format!(" {} HTTP errors", c.errors)
            } else {
                String::new()
            }
        );
    }
    println!(
        "\nQuoted for reference (issue 10, iperf3 on the same kind of machine, not this run): \
         frp 0.70 with TLS 0.14x (1 stream) / 0.17x (8 streams) of direct, 3.1 CPU s/GB; \
         its vhost 0.06x of direct requests/s, p99 54 ms."
    );
    let _ = std::fs::remove_dir_all(&dir);
}
