//! `stream-check`: end-to-end data checks for tests and benchmarks.
//!
//! * `stream-check echo PORT`: listens on `0.0.0.0:PORT` (0: any), prints
//!   `listening on ADDR`, and echoes every connection back, passing the half-close
//!   through (it shuts down its write side after the client's EOF); prints
//!   `accepted from ADDR` for each connection.
//! * `stream-check run ADDR --streams K --bytes N`: opens K connections at once, sends
//!   N deterministic bytes on each, half-closes, reads the echo and compares sha256.
//!   Prints `ok streams=K bytes_each=N secs=S mbit_per_s=X` (payload one way) or
//!   `MISMATCH stream=i ...` and exits 1.
#![forbid(unsafe_code)]

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Instant,
};

use sha2::{Digest, Sha256};

fn echo(port: u16) -> std::io::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    println!("listening on {}", l.local_addr()?);
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        if let Ok(peer) = c.peer_addr() {
            println!("accepted from {peer}");
        }
        std::thread::spawn(move || {
            let Ok(mut w) = c.try_clone() else { return };
            let _ = std::io::copy(&mut c, &mut w);
            let _ = w.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

fn one(addr: SocketAddr, i: usize, bytes: usize) -> Result<(), String> {
    let data = lab::pattern(bytes, i as u64 + 1);
    let want = Sha256::digest(&data);
    let mut s = TcpStream::connect(addr).map_err(|e| format!("stream={i} connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&data);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("stream={i} read after {got} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("stream={i} write: {e}"))?;
    if got != bytes || h.finalize() != want {
        return Err(format!("MISMATCH stream={i} got={got} want={bytes}"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    match args.first().map(String::as_str) {
        Some("echo") => {
            let port = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if let Err(e) = echo(port) {
                eprintln!("stream-check: {e}");
                std::process::exit(1);
            }
        }
        Some("run") => {
            let Some(addr) = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()) else {
                eprintln!("usage: stream-check run ADDR --streams K --bytes N");
                std::process::exit(64);
            };
            let (streams, bytes) = (
                flag("--streams").unwrap_or(1),
                flag("--bytes").unwrap_or(1 << 20),
            );
            let start = Instant::now();
            let handles: Vec<_> = (0..streams)
                .map(|i| std::thread::spawn(move || one(addr, i, bytes)))
                .collect();
            let mut failed = false;
            for h in handles {
                if let Err(e) = h.join().unwrap_or_else(|_| Err("panicked".into())) {
                    println!("{e}");
                    failed = true;
                }
            }
            let secs = start.elapsed().as_secs_f64();
            if failed {
                std::process::exit(1);
            }
            let mbit = (streams * bytes) as f64 * 8.0 / secs / 1e6;
            println!("ok streams={streams} bytes_each={bytes} secs={secs:.3} mbit_per_s={mbit:.1}");
        }
        _ => {
            eprintln!(
                "usage: stream-check echo PORT | stream-check run ADDR --streams K --bytes N"
            );
            std::process::exit(64);
        }
    }
}
