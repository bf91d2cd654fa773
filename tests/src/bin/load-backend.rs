//! `load-backend`: the local service behind the capacity tests, in its own process so
//! that its ten thousand sockets count against its own open-files limit, not the
//! test's (it raises its soft limit to the hard one, as the binaries do).
//!
//! * `load-backend echo`: listens on `127.0.0.1:0`, prints `listening on ADDR`, and
//!   echoes every connection, passing the half-close through.
//! * `load-backend http --hold N [--hold-secs S]`: an HTTP/1.1 server (hyper, kept
//!   alive) on `127.0.0.1:0` that answers every request with its body, and the
//!   header `x-peak: K`, the most requests it has had in flight at once. The first `N`
//!   requests are held until `N` are in flight at once (or `S` seconds passed, 50 by
//!   default), so a test can prove that N requests were carried concurrently.
#![forbid(unsafe_code)]

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Notify,
};

fn usage() -> ! {
    eprintln!("usage: load-backend echo | load-backend http --hold N [--hold-secs S]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = common::net::raise_fd_limit() {
        eprintln!("load-backend: cannot raise the open-files limit: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load-backend: {e}");
            std::process::exit(1)
        }
    };
    let res = match args.first().map(String::as_str) {
        Some("echo") => rt.block_on(echo()),
        Some("http") => {
            let mut hold = 0usize;
            let mut hold_secs = 50u64;
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                let v = it.next().unwrap_or_else(|| usage());
                match a.as_str() {
                    "--hold" => hold = v.parse().unwrap_or_else(|_| usage()),
                    "--hold-secs" => hold_secs = v.parse().unwrap_or_else(|_| usage()),
                    _ => usage(),
                }
            }
            rt.block_on(http(hold, Duration::from_secs(hold_secs)))
        }
        _ => usage(),
    };
    if let Err(e) = res {
        eprintln!("load-backend: {e}");
        std::process::exit(1);
    }
}

async fn listen() -> std::io::Result<TcpListener> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", l.local_addr()?);
    Ok(l)
}

async fn echo() -> std::io::Result<()> {
    let l = listen().await?;
    loop {
        let (c, _) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("load-backend: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let (mut r, mut w) = c.into_split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Shared by the HTTP handlers.
struct Held {
    /// Requests held until this many are in flight at once.
    hold: usize,
    in_flight: AtomicUsize,
    /// The most requests in flight at once so far.
    peak: AtomicUsize,
    /// Requests that have waited so far (only the first `hold` wait).
    arrived: AtomicUsize,
    released: AtomicBool,
    release: Notify,
}

async fn http(hold: usize, hold_for: Duration) -> std::io::Result<()> {
    let l = listen().await?;
    let held = Arc::new(Held {
        hold,
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        arrived: AtomicUsize::new(0),
        released: AtomicBool::new(hold == 0),
        release: Notify::new(),
    });
    {
        // The hold ends after `hold_for` whatever happens, so a test that lost
        // requests fails on their count instead of hanging.
        let held = held.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold_for).await;
            if !held.released.swap(true, Ordering::AcqRel) {
                eprintln!(
                    "load-backend: hold timed out with {} of {} requests in flight",
                    held.in_flight.load(Ordering::Acquire),
                    held.hold
                );
            }
            held.release.notify_waiters();
        });
    }
    loop {
        let (c, _) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("load-backend: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let held = held.clone();
        tokio::spawn(serve_http(c, held));
    }
}

async fn serve_http(c: TcpStream, held: Arc<Held>) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let held = held.clone();
        async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let now = held.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            held.peak.fetch_max(now, Ordering::AcqRel);
            if held.arrived.fetch_add(1, Ordering::AcqRel) < held.hold {
                let released = held.release.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if now >= held.hold {
                    held.released.store(true, Ordering::Release);
                    held.release.notify_waiters();
                } else if !held.released.load(Ordering::Acquire) {
                    released.await;
                }
            }
            held.in_flight.fetch_sub(1, Ordering::AcqRel);
            let resp = Response::builder()
                .header("x-peak", held.peak.load(Ordering::Acquire).to_string())
                .body(Full::new(body))
                .unwrap_or_else(|_| Response::new(Full::default()));
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(c), svc)
        .await;
}
