//! `lab-tcp`: a tiny TCP/UDP tool run inside lab namespaces by the lab's tests.
//!
//! Every result is one line on stdout, `key=value` fields, so tests can parse it:
//!
//! * `lab-tcp listen PORT [--mode accept|echo|sink]`: binds `0.0.0.0:PORT` (with
//!   `SO_REUSEADDR` and `SO_REUSEPORT`, so it can share a port with an outbound
//!   socket), prints `listening addr=...`, then `accepted peer=...` for each connection.
//!   `echo` sends every byte back; `sink` reads to EOF, prints `received peer=...
//!   bytes=N` and answers with the count as 8 big-endian bytes.
//! * `lab-tcp connect ADDR:PORT [--bind PORT] [--timeout-ms MS] [--rtt N]
//!   [--send BYTES] [--hold-ms MS]`: prints `connected local=... peer=... connect_ms=...`
//!   or `error kind=refused|timeout|unreachable|other connect_ms=... msg=...` (exit 2).
//!   `--rtt N` then measures N one-byte round trips against an `echo` listener
//!   (`rtt_ms min=.. avg=.. max=..`); `--send BYTES` pushes that many bytes to a `sink`
//!   listener and waits for its count (`sent bytes=.. secs=.. mbit_per_s=..`);
//!   `--hold-ms` keeps the connection open that long before exiting.
//! * `lab-tcp udp-send ADDR:PORT --bind PORT`: sends one datagram, prints `sent`.
//! * `lab-tcp udp-recv PORT [--timeout-ms MS]`: prints `from peer=...` for the first
//!   datagram, or `error kind=timeout` (exit 2).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

fn usage() -> ! {
    eprintln!(
        "usage: lab-tcp listen PORT [--mode accept|echo|sink]\n\
         \x20      lab-tcp connect ADDR:PORT [--bind PORT] [--timeout-ms MS] [--rtt N] [--send BYTES] [--hold-ms MS]\n\
         \x20      lab-tcp udp-send ADDR:PORT --bind PORT\n\
         \x20      lab-tcp udp-recv PORT [--timeout-ms MS]"
    );
    std::process::exit(64)
}

/// Flags after the positional argument, as `(name, value)` pairs.
fn flags(rest: &[String]) -> Vec<(&str, &str)> {
    let pairs = rest.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        usage()
    }
    pairs.map(|kv| (kv[0].as_str(), kv[1].as_str())).collect()
}

fn flag<T: std::str::FromStr>(flags: &[(&str, &str)], name: &str) -> Option<T> {
    flags
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.parse().unwrap_or_else(|_| usage()))
}

fn reusable_socket(ty: Type, protocol: Protocol, port: u16) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, ty, Some(protocol))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    let local: SocketAddr = ([0, 0, 0, 0], port).into();
    s.bind(&local.into())?;
    Ok(s)
}

fn error_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(111) => "refused",                 // ECONNREFUSED
        Some(110) | Some(11) => "timeout",      // ETIMEDOUT, EAGAIN
        Some(113) | Some(101) => "unreachable", // EHOSTUNREACH, ENETUNREACH
        _ if e.kind() == io::ErrorKind::TimedOut => "timeout",
        _ if e.kind() == io::ErrorKind::WouldBlock => "timeout",
        _ => "other",
    }
}

fn say(line: String) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn listen(port: u16, mode: &str) -> io::Result<()> {
    let s = reusable_socket(Type::STREAM, Protocol::TCP, port)?;
    s.listen(128)?;
    let listener: std::net::TcpListener = s.into();
    say(format!("listening addr={}", listener.local_addr()?));
    for conn in listener.incoming() {
        let mut conn = conn?;
        let peer = conn.peer_addr()?;
        say(format!("accepted peer={peer}"));
        let mode = mode.to_string();
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n as u64;
                        if mode == "echo" && conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if mode == "sink" {
                say(format!("received peer={peer} bytes={total}"));
                let _ = conn.write_all(&total.to_be_bytes());
            }
        });
    }
    Ok(())
}

fn connect(addr: SocketAddr, f: &[(&str, &str)]) -> i32 {
    let bind: u16 = flag(f, "--bind").unwrap_or(0);
    let timeout = Duration::from_millis(flag(f, "--timeout-ms").unwrap_or(3000));
    let s = match reusable_socket(Type::STREAM, Protocol::TCP, bind) {
        Ok(s) => s,
        Err(e) => {
            say(format!("error kind=bind msg={e}"));
            return 2;
        }
    };
    let start = Instant::now();
    let result = s.connect_timeout(&addr.into(), timeout);
    let connect_ms = start.elapsed().as_secs_f64() * 1000.0;
    if let Err(e) = result {
        say(format!(
            "error kind={} connect_ms={connect_ms:.2} msg={e}",
            error_kind(&e)
        ));
        return 2;
    }
    let mut conn: TcpStream = s.into();
    let local = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
    say(format!(
        "connected local={local} peer={addr} connect_ms={connect_ms:.2}"
    ));
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));

    if let Some(n) = flag::<u32>(f, "--rtt") {
        let mut samples = Vec::new();
        let mut b = [0u8; 1];
        for _ in 0..n {
            let t = Instant::now();
            if conn.write_all(&[7]).is_err() || conn.read_exact(&mut b).is_err() {
                say("error kind=rtt msg=echo failed".into());
                return 2;
            }
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let min = samples.iter().cloned().fold(f64::MAX, f64::min);
        let max = samples.iter().cloned().fold(0.0, f64::max);
        let avg = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        say(format!("rtt_ms min={min:.2} avg={avg:.2} max={max:.2}"));
    }

    if let Some(total) = flag::<u64>(f, "--send") {
        let buf = vec![0x5au8; 256 * 1024];
        let t = Instant::now();
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if let Err(e) = conn.write_all(&buf[..n]) {
                say(format!("error kind=send msg={e}"));
                return 2;
            }
            left -= n as u64;
        }
        let _ = conn.shutdown(Shutdown::Write);
        let mut count = [0u8; 8];
        if let Err(e) = conn.read_exact(&mut count) {
            say(format!("error kind=send msg=no count from sink: {e}"));
            return 2;
        }
        let secs = t.elapsed().as_secs_f64();
        let got = u64::from_be_bytes(count);
        say(format!(
            "sent bytes={got} secs={secs:.3} mbit_per_s={:.1}",
            got as f64 * 8.0 / secs / 1e6
        ));
    }

    if let Some(ms) = flag::<u64>(f, "--hold-ms") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    0
}

fn udp_send(addr: SocketAddr, f: &[(&str, &str)]) -> io::Result<()> {
    let bind: u16 = flag(f, "--bind").unwrap_or(0);
    let s: UdpSocket = reusable_socket(Type::DGRAM, Protocol::UDP, bind)?.into();
    s.send_to(b"lab", addr)?;
    say(format!("sent local={}", s.local_addr()?));
    Ok(())
}

fn udp_recv(port: u16, f: &[(&str, &str)]) -> i32 {
    let timeout = Duration::from_millis(flag(f, "--timeout-ms").unwrap_or(3000));
    let s: UdpSocket = match reusable_socket(Type::DGRAM, Protocol::UDP, port) {
        Ok(s) => s.into(),
        Err(e) => {
            say(format!("error kind=bind msg={e}"));
            return 2;
        }
    };
    let _ = s.set_read_timeout(Some(timeout));
    say(format!(
        "listening addr={}",
        s.local_addr().map(|a| a.to_string()).unwrap_or_default()
    ));
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((_, peer)) => {
            say(format!("from peer={peer}"));
            0
        }
        Err(e) => {
            say(format!("error kind={} msg={e}", error_kind(&e)));
            2
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        usage()
    }
    let f = flags(&args[2..]);
    let addr = || args[1].parse::<SocketAddr>().unwrap_or_else(|_| usage());
    let port = || args[1].parse::<u16>().unwrap_or_else(|_| usage());
    let code = match args[0].as_str() {
        "listen" => match listen(
            port(),
            flag::<String>(&f, "--mode").as_deref().unwrap_or("accept"),
        ) {
            Ok(()) => 0,
            Err(e) => {
                say(format!("error kind=listen msg={e}"));
                2
            }
        },
        "connect" => connect(addr(), &f),
        "udp-send" => match udp_send(addr(), &f) {
            Ok(()) => 0,
            Err(e) => {
                say(format!("error kind={} msg={e}", error_kind(&e)));
                2
            }
        },
        "udp-recv" => udp_recv(port(), &f),
        _ => usage(),
    };
    std::process::exit(code)
}
