//! `bench-vhost`: requests per second and latency through the HTTP vhost
//! (`rendezvous::vhost`) against the same HTTP server hit directly.
//!
//! Two processes, as in a deployment: the peer's (a tiny hyper "hello" server, and
//! a fake peer that splices each yamux stream to it) and the server's (the vhost
//! serving it as `hello.test`, the yamux connection's other end over loopback TCP).
//! `wrk` (apt-get install wrk) runs the same load against (a) the hello server,
//! (b) the vhost and, for comparison, (c) a plain TCP splice through the same kind
//! of mux connection (an frp `tcp` proxy: the transport's share of the cost). It
//! prints requests/s, p50 and p99 for each, the ratio, and the CPU time per request
//! that each process used: on one machine everything shares the cores with wrk, so
//! the requests/s ratio is a floor, while the server side's CPU per request is what
//! a rendezvous server pays.
//!
//! Run: `cargo run --release -p lab --bin bench-vhost -- [--connections 50]
//! [--duration 5] [--threads 1] [--workers 0]`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use common::{
    mux::{Mux, MuxConfig, MuxStream, Role},
    proto::HttpRoute,
};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Response};
use hyper_util::rt::TokioIo;
use rendezvous::vhost::{serve, Route, VhostConfig, Vhosts};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

const HOST: &str = "hello.test";
const NAME: &[u8] = b"hello";

struct Args {
    connections: u32,
    duration: u32,
    threads: u32,
    /// Tokio worker threads of each process (0: one per core).
    workers: u32,
    /// Rounds of the three runs; the median of each figure is printed.
    rounds: u32,
    /// Run as the peer's process, connecting to the bench's process here.
    peer_side: Option<SocketAddr>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        connections: 50,
        duration: 5,
        threads: 1,
        workers: 0,
        rounds: 3,
        peer_side: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        if flag == "--peer-side" {
            a.peer_side = Some(value.parse()?);
            continue;
        }
        let n: u32 = value.parse().with_context(|| format!("{flag} {value}"))?;
        match flag.as_str() {
            "--connections" => a.connections = n,
            "--duration" => a.duration = n,
            "--threads" => a.threads = n,
            "--workers" => a.workers = n,
            "--rounds" => a.rounds = n.max(1),
            _ => bail!(
                "unknown option {flag} (--connections N, --duration SECS, --threads N, --workers N, \
                 --rounds N)"
            ),
        }
    }
    Ok(a)
}

/// The service behind the peer: answers every request with a short text.
async fn hello_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"Hello, world!\n",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The peer's process (`--peer-side ADDR`): the hello server, and two yamux
/// connections to the bench's process at `ADDR` (one for the vhost, one for the
/// TCP splice) whose streams are spliced to it. Prints the hello server's address,
/// then runs until its standard input closes (the bench's process ended).
async fn peer_side(server: SocketAddr) -> Result<()> {
    let hello = hello_server().await?;
    for _ in 0..2 {
        let tcp = TcpStream::connect(server).await?;
        tcp.set_nodelay(true)?;
        let (peer, mut inbound) = Mux::start(tcp, Role::Server, MuxConfig::default());
        tokio::spawn(async move {
            let _peer = peer;
            while let Some(stream) = inbound.recv().await {
                tokio::spawn(splice(stream, hello));
            }
        });
    }
    println!("hello {hello}");
    let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut tokio::io::sink()).await;
    Ok(())
}

async fn splice(mut s: MuxStream, local: SocketAddr) -> std::io::Result<()> {
    let _version = s.read_u8().await?;
    let len = s.read_u16().await? as usize;
    let mut name = vec![0; len];
    s.read_exact(&mut name).await?;
    let mut tcp = TcpStream::connect(local).await?;
    tcp.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut s, &mut tcp).await?;
    Ok(())
}

/// Starts the peer's process; returns it, the hello server's address and the two
/// yamux connections to it (this side's ends).
async fn start_peer(args: &Args) -> Result<(tokio::process::Child, SocketAddr, Mux, Mux)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--peer-side", &listener.local_addr()?.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut muxes = Vec::new();
    for _ in 0..2 {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        muxes.push(Mux::start(tcp, Role::Client, MuxConfig::default()).0);
    }
    let stdout = child.stdout.take().context("the peer's stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await?;
    let hello = line
        .trim()
        .strip_prefix("hello ")
        .context("the peer's first line")?
        .parse()?;
    let (b, a) = (muxes.pop().context("mux")?, muxes.pop().context("mux")?);
    Ok((child, hello, a, b))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime (fields 14 and 15), in clock ticks of 1/100 s on Linux.
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// The vhost on loopback serving `hello.test` through `mux`; counts streams opened.
async fn vhost(mux: Mux, opened: Arc<AtomicUsize>) -> Result<(SocketAddr, CancellationToken)> {
    let vhosts = Arc::new(Vhosts::new(None));
    vhosts
        .add(Route {
            proxy: "hello".into(),
            http: HttpRoute {
                domains: vec![HOST.into()],
                ..HttpRoute::default()
            },
            opener: Arc::new(move || {
                let (mux, opened) = (mux.clone(), opened.clone());
                Box::pin(async move {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let mut s = mux.open().await?;
                    let mut header = vec![1u8, 0, NAME.len() as u8];
                    header.extend_from_slice(NAME);
                    s.write_all(&header).await?;
                    Ok(common::compress::Carried::plain(s))
                })
            }),
            owner: 1,
        })
        .map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        vhosts,
        VhostConfig::default(),
        shutdown.clone(),
    ));
    Ok((addr, shutdown))
}

/// For comparison: a plain TCP splice through the same kind of mux connection (what
/// an frp `tcp` proxy does), so the HTTP layer's cost can be told from the
/// transport's.
async fn tcp_splice(mux: Mux) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let mux = mux.clone();
            tokio::spawn(async move {
                let mut s = mux.open().await?;
                let mut header = vec![1u8, 0, NAME.len() as u8];
                header.extend_from_slice(NAME);
                s.write_all(&header).await?;
                tokio::io::copy_bidirectional(&mut tcp, &mut s).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    Ok(addr)
}

/// One wrk run's figures.
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
    errors: String,
    /// CPU seconds used meanwhile by this process and by the peer's.
    cpu_here: f64,
    cpu_peer: f64,
}

impl Figures {
    fn micros_per_request(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.requests.max(1.0)
    }
}

async fn wrk(args: &Args, addr: SocketAddr, peer_pid: &str) -> Result<Figures> {
    let (here0, peer0) = (cpu_secs("self")?, cpu_secs(peer_pid)?);
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t",
            &args.threads.to_string(),
            "-c",
            &args.connections.to_string(),
            "-d",
            &format!("{}s", args.duration),
            "--latency",
            "-H",
            &format!("Host: {HOST}"),
            &format!("http://{addr}/"),
        ])
        .output()
        .await
        .context("running wrk")?;
    let (cpu_here, cpu_peer) = (cpu_secs("self")? - here0, cpu_secs(peer_pid)? - peer0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no {prefix:?} in wrk's output:\n{text}"))
    };
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?;
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Figures {
        rps: field("Requests/sec:")?.parse()?,
        p50_ms: millis(&field("50%")?)?,
        p99_ms: millis(&field("99%")?)?,
        requests,
        errors,
        cpu_here,
        cpu_peer,
    })
}

/// The median of each figure over rounds (errors of all rounds).
fn median(runs: Vec<Figures>) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        rps: mid(|f| f.rps),
        p50_ms: mid(|f| f.p50_ms),
        p99_ms: mid(|f| f.p99_ms),
        requests: mid(|f| f.requests),
        // CPU per request is taken as the median of the per-round ratios below.
        cpu_here: mid(|f| f.cpu_here / f.requests.max(1.0)) * mid(|f| f.requests),
        cpu_peer: mid(|f| f.cpu_peer / f.requests.max(1.0)) * mid(|f| f.requests),
        errors: runs
            .iter()
            .map(|f| f.errors.as_str())
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// wrk's latency (`263.00us`, `1.23ms`, `1.01s`) in milliseconds.
fn millis(v: &str) -> Result<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().with_context(|| format!("latency {v:?}"))?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => bail!("latency unit in {v:?}"),
    })
}

fn main() -> Result<()> {
    let args = args()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.workers > 0 {
        rt.worker_threads(args.workers as usize);
    }
    let rt = rt.enable_all().build()?;
    if let Some(server) = args.peer_side {
        return rt.block_on(peer_side(server));
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: apt-get install -y wrk");
    }
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let (peer, hello, mux_vhost, mux_tcp) = start_peer(&args).await?;
    let peer_pid = peer.id().context("the peer's pid")?.to_string();
    let opened = Arc::new(AtomicUsize::new(0));
    let (via, shutdown) = vhost(mux_vhost, opened.clone()).await?;
    let spliced = tcp_splice(mux_tcp).await?;

    // A short warm-up of each path (fills the upstream pool).
    let warm = Args {
        duration: 1,
        peer_side: None,
        ..args
    };
    for addr in [hello, via, spliced] {
        wrk(&warm, addr, &peer_pid).await?;
    }

    // Rounds interleave the three paths, so that a slow moment of the machine
    // (shared cores) does not land on one path only; medians are printed.
    let mut runs: [Vec<Figures>; 3] = Default::default();
    for _ in 0..args.rounds {
        for (i, addr) in [hello, via, spliced].into_iter().enumerate() {
            runs[i].push(wrk(&args, addr, &peer_pid).await?);
        }
    }
    let [direct, vhost, tcp] = runs.map(median);
    println!(
        "wrk: {} connections, {} s, {} thread(s), median of {} rounds; {} cores, {} tokio \
         workers per process (0: one per core); response 14 bytes",
        args.connections,
        args.duration,
        args.threads,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.workers,
    );
    println!("| path | requests/s | p50 | p99 | CPU µs/request: server side | peer side |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| direct to the hello server | {:.0} | {:.2} ms | {:.2} ms | - | {:.1} |",
        direct.rps,
        direct.p50_ms,
        direct.p99_ms,
        direct.micros_per_request(direct.cpu_peer)
    );
    for (name, f) in [
        ("through the vhost", &vhost),
        ("(TCP splice through the mux, no HTTP)", &tcp),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.1} | {:.1} |",
            f.rps,
            f.p50_ms,
            f.p99_ms,
            f.micros_per_request(f.cpu_here),
            f.micros_per_request(f.cpu_peer)
        );
    }
    println!(
        "ratio (vhost / direct requests/s): {:.2} (TCP splice / direct: {:.2}); upstream \
         streams opened by the vhost: {}",
        vhost.rps / direct.rps,
        tcp.rps / direct.rps,
        opened.load(Ordering::Relaxed)
    );
    for (name, f) in [("direct", &direct), ("vhost", &vhost), ("tcp", &tcp)] {
        if !f.errors.is_empty() {
            println!("{name}: {}", f.errors);
        }
    }
    shutdown.cancel();
    drop(peer);
    Ok(())
}
