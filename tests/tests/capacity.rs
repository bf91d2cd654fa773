//! Ten thousand concurrent connections through each data path, with default settings,
//! through the real binaries on loopback: an exposed TCP port, an HTTP vhost (kept-alive
//! connections, each request carried at the same time as all the others) and a
//! serve/connect link. Every connection is checked with data, and one that ends early
//! fails the test naming the connection and the phase.
//!
//! The local service is `load-backend` (this crate's binary), in its own process: the
//! test's ten thousand client sockets and the service's ten thousand each need their
//! own descriptors. Each test prints how long the connections took to come up and the
//! RSS and descriptors of every process while all of them were open (`--nocapture`).
//!
//! The three tests take turns (one lock): together they would need 30,000 descriptors
//! in this process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, watch, Semaphore},
};

/// Connections held open at once in each test.
const N: usize = 10_000;
/// Bytes each connection sends (and gets back) per phase.
const CHUNK: usize = 3000;
/// Connections being set up at once (connect and first exchange): keeps SYNs within
/// the listeners' backlogs. Established connections stay open regardless.
const SETUP_PARALLEL: usize = 200;
/// Bound on bringing all N up (and, for HTTP, on all first answers).
const SETUP_LIMIT: Duration = Duration::from_secs(150);
/// Bound on the second exchange of all N and their ends.
const FINISH_LIMIT: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(30);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Raises this process's open-files limit; fails clearly if N clients cannot fit.
fn raise_fd_limit() {
    let l = common::net::raise_fd_limit().expect("raise RLIMIT_NOFILE");
    assert!(
        l.after >= (N + 1000) as u64,
        "this test needs {} open files per process; the hard limit allows {}",
        N + 1000,
        l.after
    );
}

fn cmd(name: &str) -> Command {
    let mut c = local(name);
    c.env_remove("PUNCHLINE_TOKEN");
    c
}

/// Starts `load-backend ARGS`; returns it and its address.
fn backend(args: &[&str]) -> (Proc, SocketAddr) {
    let mut c = Command::new(bin("load-backend"));
    c.args(args);
    let p = Proc::spawn("load-backend", c);
    let line = p.stdout.wait_for("listening on", T);
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (p, addr)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Samples the RSS and open descriptors of processes every 100 ms until dropped, and
/// keeps each one's peak.
struct Sampler {
    names: Vec<String>,
    pids: Vec<u32>,
    peaks: Arc<Mutex<Vec<(u64, usize)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(procs: &[(&str, &Proc)]) -> Sampler {
        let pids: Vec<u32> = procs.iter().map(|(_, p)| p.child.id()).collect();
        let peaks = Arc::new(Mutex::new(vec![(0u64, 0usize); pids.len()]));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peaks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Acquire) {
                for (i, pid) in pids.iter().enumerate() {
                    let (rss, fds) = (rss_kib(*pid), open_fds(*pid));
                    let mut peaks = p.lock().unwrap();
                    peaks[i] = (peaks[i].0.max(rss), peaks[i].1.max(fds));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            names: procs.iter().map(|(n, _)| n.to_string()).collect(),
            pids: procs.iter().map(|(_, p)| p.child.id()).collect(),
            peaks,
            stop,
            thread: Some(thread),
        }
    }

    /// Prints how long the N connections took to come up and each process's peak
    /// (sampled once more now).
    fn report(&self, what: &str, up: Duration) {
        {
            let mut peaks = self.peaks.lock().unwrap();
            for (i, pid) in self.pids.iter().enumerate() {
                let (rss, fds) = (rss_kib(*pid), open_fds(*pid));
                peaks[i] = (peaks[i].0.max(rss), peaks[i].1.max(fds));
            }
        }
        let mut line = format!(
            "{what}: {N} connections up in {:.1} s; peak RSS and descriptors:",
            up.as_secs_f64()
        );
        for (name, (rss, fds)) in self.names.iter().zip(self.peaks.lock().unwrap().iter()) {
            line.push_str(&format!(
                " {name} {:.0} MiB {fds} fds;",
                *rss as f64 / 1024.0
            ));
        }
        println!("{line}");
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Reads exactly `len` bytes, or says how far it got and why not.
async fn read_full(c: &mut TcpStream, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match c.read(&mut buf[got..]).await {
            Ok(0) => return Err(format!("end of file after {got} of {len} bytes")),
            Ok(n) => got += n,
            Err(e) => return Err(format!("{e} after {got} of {len} bytes")),
        }
    }
    Ok(buf)
}

/// The pattern connection `i` sends in `phase`.
fn payload(i: usize, phase: u64) -> Vec<u8> {
    data(CHUNK, i as u64 * 4 + phase)
}

/// Holds N connections to `addr` at once, with a check of the payload in each
/// direction: phase 1 echoes a chunk on every connection (all stay open); once all N
/// have, phase 2 echoes a second chunk, half-closes, and expects exactly the chunk and
/// then end of file. Returns how long phase 1 took; calls `at_peak` between the phases.
fn hold_tcp(addr: SocketAddr, at_peak: impl FnOnce(Duration)) {
    let rt = runtime();
    rt.block_on(async move {
        let setup = Arc::new(Semaphore::new(SETUP_PARALLEL));
        let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(N);
        let (go_tx, go_rx) = watch::channel(false);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let (setup, ready_tx, mut go_rx) = (setup.clone(), ready_tx.clone(), go_rx.clone());
            tasks.spawn(async move {
                let permit = setup.acquire_owned().await.unwrap();
                let first = async {
                    let mut c = TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("connection {i}: connect: {e}"))?;
                    let a = payload(i, 1);
                    c.write_all(&a)
                        .await
                        .map_err(|e| format!("connection {i}: phase 1 write: {e}"))?;
                    let back = read_full(&mut c, CHUNK)
                        .await
                        .map_err(|e| format!("connection {i}: phase 1 echo: {e}"))?;
                    if back != a {
                        return Err(format!("connection {i}: phase 1 echo differs"));
                    }
                    Ok(c)
                }
                .await;
                drop(permit);
                let mut c = match first {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(())).await;
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone())).await;
                        return Err(e);
                    }
                };
                let _ = go_rx.wait_for(|go| *go).await;
                let b = payload(i, 2);
                c.write_all(&b)
                    .await
                    .map_err(|e| format!("connection {i}: phase 2 write: {e}"))?;
                c.shutdown()
                    .await
                    .map_err(|e| format!("connection {i}: shutdown: {e}"))?;
                let back = read_full(&mut c, CHUNK)
                    .await
                    .map_err(|e| format!("connection {i}: phase 2 echo: {e}"))?;
                if back != b {
                    return Err(format!("connection {i}: phase 2 echo differs"));
                }
                match c.read(&mut [0u8; 1]).await {
                    Ok(0) => Ok(()),
                    Ok(_) => Err(format!("connection {i}: more than was sent")),
                    Err(e) => Err(format!("connection {i}: {e} instead of end of file")),
                }
            });
        }
        drop(ready_tx);
        let deadline = tokio::time::Instant::now() + SETUP_LIMIT;
        for n in 0..N {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => panic!("{n} connections were up, then {e}"),
                Ok(None) => panic!("{n} connections were up, then the tasks ended"),
                Err(_) => panic!("only {n} of {N} connections came up within {SETUP_LIMIT:?}"),
            }
        }
        at_peak(started.elapsed());
        let second = Instant::now();
        go_tx.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + FINISH_LIMIT;
        let mut errors = Vec::new();
        while let Ok(Some(res)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
            if let Err(e) = res.unwrap() {
                errors.push(e);
            }
        }
        assert!(
            tasks.is_empty(),
            "{} connections did not finish within {FINISH_LIMIT:?}",
            tasks.len()
        );
        assert!(
            errors.is_empty(),
            "{} of {N} connections failed in phase 2, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        println!(
            "phase 2 (second chunk, half-close, end of file) on all {N}: {:.1} s",
            second.elapsed().as_secs_f64()
        );
    });
}

#[test]
fn ten_thousand_through_an_exposed_tcp_port() {
    let _turn = one_at_a_time();
    raise_fd_limit();
    let (echo, echo_addr) = backend(&["echo"]);
    let (srv, addr) = rendezvous(cmd("rendezvous"), &["--bind", "127.0.0.1"]);
    let mut c = cmd("peer");
    c.args(["--server", &addr.to_string(), "expose", "tcp"])
        .args(["--local", &echo_addr.to_string(), "--remote-port", "0"])
        .args(["--name", "load"]);
    let peer = Proc::spawn("peer", c);
    let line = peer.stdout.wait_for("exposed load tcp", T);
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let sampler = Sampler::start(&[("rendezvous", &srv), ("peer", &peer), ("service", &echo)]);
    hold_tcp(public, |up| sampler.report("exposed tcp port", up));
    for p in [&srv, &peer] {
        assert!(
            !p.stderr.contains("panicked"),
            "{} panicked:\n{}",
            p.name,
            p.stderr.text()
        );
    }
}

#[test]
fn ten_thousand_through_a_serve_connect_link() {
    let _turn = one_at_a_time();
    raise_fd_limit();
    let (echo, echo_addr) = backend(&["echo"]);
    let (srv, addr) = rendezvous(cmd("rendezvous"), &["--bind", "127.0.0.1"]);
    let server = addr.to_string();
    let mut c = cmd("peer");
    c.args(["--server", &server, "serve", "load", "--secret", "s3cret"])
        .args(["--local", &echo_addr.to_string()]);
    let owner = Proc::spawn("owner", c);
    owner.stderr.wait_for("registered", T);
    let mut c = cmd("peer");
    c.args(["--server", &server, "connect", "load", "--secret", "s3cret"])
        .args(["--listen", "127.0.0.1:0", "--keep-open"]);
    let visitor = Proc::spawn("visitor", c);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let link = visitor.stderr.wait_for("link up", T);
    println!("{link}");
    let sampler = Sampler::start(&[
        ("rendezvous", &srv),
        ("owner", &owner),
        ("visitor", &visitor),
        ("service", &echo),
    ]);
    hold_tcp(listen, |up| sampler.report("serve/connect link", up));
    for p in [&srv, &owner, &visitor] {
        assert!(
            !p.stderr.contains("panicked"),
            "{} panicked:\n{}",
            p.name,
            p.stderr.text()
        );
    }
}

/// An HTTP/1.1 response: status, the `x-peak` header, the body.
struct HttpResponse {
    status: u16,
    peak: Option<usize>,
    body: Vec<u8>,
}

/// Reads one response with a Content-Length body from `c`, using `buf` for bytes read
/// past it (kept-alive connections).
async fn read_response(c: &mut TcpStream, buf: &mut Vec<u8>) -> Result<HttpResponse, String> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk).await {
            Ok(0) => return Err(format!("end of file after {} bytes of head", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} after {} bytes of head", buf.len())),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no content-length in {head:?}"))?;
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk).await {
            Ok(0) => {
                return Err(format!(
                    "end of file after {} of {len} body bytes",
                    buf.len()
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} after {} of {len} body bytes", buf.len())),
        }
    }
    let body = buf.drain(..len).collect();
    Ok(HttpResponse {
        status,
        peak: header("x-peak").and_then(|v| v.parse().ok()),
        body,
    })
}

/// One POST of `body` to `/echo` with Host `host`.
fn request(host: &str, i: usize, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /echo/{i} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// N kept-alive connections to the vhost at once, each doing a request that the
/// backend holds until it has all N in flight (so all N are carried as streams at the
/// same time), then a second request on the same connection once all N have their
/// first answer.
#[test]
fn ten_thousand_through_an_http_vhost() {
    let _turn = one_at_a_time();
    raise_fd_limit();
    let (web, web_addr) = backend(&["http", "--hold", &N.to_string(), "--hold-secs", "50"]);
    let (srv, addr) = rendezvous(
        cmd("rendezvous"),
        &["--bind", "127.0.0.1", "--vhost-http-port", "0"],
    );
    let line = srv.stdout.wait_for("http vhost on", T);
    let vhost: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let mut c = cmd("peer");
    c.args(["--server", &addr.to_string(), "expose", "http"])
        .args(["--local", &web_addr.to_string(), "--domain", "load.test"])
        .args(["--name", "web"]);
    let peer = Proc::spawn("peer", c);
    peer.stdout.wait_for("exposed web http", T);

    let rt = runtime();
    let sampler = Sampler::start(&[("rendezvous", &srv), ("peer", &peer), ("service", &web)]);
    let (srv, peer, sampler) = (&srv, &peer, &sampler);
    rt.block_on(async move {
        let setup = Arc::new(Semaphore::new(SETUP_PARALLEL));
        let (ready_tx, mut ready_rx) = mpsc::channel::<Result<usize, String>>(N);
        let (go_tx, go_rx) = watch::channel(false);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let (setup, ready_tx, mut go_rx) = (setup.clone(), ready_tx.clone(), go_rx.clone());
            tasks.spawn(async move {
                let mut buf = Vec::new();
                let first = async {
                    // Only connecting and sending take turns; the answer comes when
                    // all N requests are in.
                    let permit = setup.acquire_owned().await.unwrap();
                    let mut c = TcpStream::connect(vhost)
                        .await
                        .map_err(|e| format!("connection {i}: connect: {e}"))?;
                    let a = payload(i, 1);
                    c.write_all(&request("load.test", i, &a))
                        .await
                        .map_err(|e| format!("connection {i}: request 1: {e}"))?;
                    drop(permit);
                    let r = read_response(&mut c, &mut buf)
                        .await
                        .map_err(|e| format!("connection {i}: response 1: {e}"))?;
                    if r.status != 200 || r.body != a {
                        return Err(format!(
                            "connection {i}: response 1: status {} with {} bytes (want 200 \
                             with the {CHUNK} sent): {}",
                            r.status,
                            r.body.len(),
                            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                        ));
                    }
                    Ok((c, r.peak.unwrap_or(0)))
                }
                .await;
                let (mut c, peak) = match first {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone())).await;
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(peak)).await;
                let _ = go_rx.wait_for(|go| *go).await;
                let b = payload(i, 2);
                c.write_all(&request("load.test", i, &b))
                    .await
                    .map_err(|e| format!("connection {i}: request 2 (kept alive): {e}"))?;
                let r = read_response(&mut c, &mut buf)
                    .await
                    .map_err(|e| format!("connection {i}: response 2 (kept alive): {e}"))?;
                if r.status != 200 || r.body != b {
                    return Err(format!(
                        "connection {i}: response 2: status {} with {} bytes",
                        r.status,
                        r.body.len()
                    ));
                }
                Ok(())
            });
        }
        drop(ready_tx);
        let deadline = tokio::time::Instant::now() + SETUP_LIMIT;
        let mut least_peak = usize::MAX;
        for n in 0..N {
            match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
                Ok(Some(Ok(peak))) => least_peak = least_peak.min(peak),
                Ok(Some(Err(e))) => panic!("{n} requests were answered, then {e}"),
                Ok(None) => panic!("{n} requests were answered, then the tasks ended"),
                Err(_) => panic!("only {n} of {N} requests were answered within {SETUP_LIMIT:?}"),
            }
        }
        sampler.report("http vhost", started.elapsed());
        assert!(
            least_peak >= N,
            "the service had at most {least_peak} of the {N} requests in flight at once"
        );
        let second = Instant::now();
        go_tx.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + FINISH_LIMIT;
        let mut errors = Vec::new();
        while let Ok(Some(res)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
            if let Err(e) = res.unwrap() {
                errors.push(e);
            }
        }
        assert!(
            tasks.is_empty(),
            "{} connections did not finish within {FINISH_LIMIT:?}",
            tasks.len()
        );
        assert!(
            errors.is_empty(),
            "{} of {N} second requests failed, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        println!(
            "second request on all {N} kept-alive connections: {:.1} s",
            second.elapsed().as_secs_f64()
        );
    });
    for p in [srv, peer] {
        assert!(
            !p.stderr.contains("panicked"),
            "{} panicked:\n{}",
            p.name,
            p.stderr.text()
        );
    }
}
