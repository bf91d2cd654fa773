//! An owner whose rendezvous server goes away while a link is up keeps the link and
//! stays idle: its CPU time (from /proc/PID/stat) over a few seconds of the server's
//! absence stays far below the wall time. It used to spin a core for as long as the
//! server was gone. The link still carries new connections meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const T: Duration = Duration::from_secs(30);
/// How long the owner's CPU time is watched while the server is away.
const WATCH: Duration = Duration::from_secs(4);

fn cmd(name: &str) -> Command {
    let mut c = local(name);
    c.env_remove("PUNCHLINE_TOKEN");
    c
}

/// A local echo service (a thread per connection); returns its address.
fn echo_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let _ = std::io::copy(&mut c, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Sends a message through `addr` and checks the echo and the clean end.
fn echo_through(addr: SocketAddr, msg: &[u8]) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    c.write_all(msg).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// CPU time (user + system) of process `pid`, in seconds: fields 14 and 15 of
/// /proc/PID/stat, in clock ticks of 1/100 s.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn owner_stays_idle_while_its_server_is_away() {
    let service = echo_service();
    let (mut srv, addr) = rendezvous(cmd("rendezvous"), &["--bind", "127.0.0.1"]);
    let server = addr.to_string();
    let mut c = cmd("peer");
    c.args(["--server", &server, "serve", "svc", "--secret", "s3cret"])
        .args(["--local", &service.to_string()]);
    let owner = Proc::spawn("owner", c);
    owner.stderr.wait_for("registered", T);
    let mut c = cmd("peer");
    c.args(["--server", &server, "connect", "svc", "--secret", "s3cret"])
        .args(["--listen", "127.0.0.1:0", "--keep-open"]);
    let visitor = Proc::spawn("visitor", c);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    visitor.stderr.wait_for("link up", T);
    echo_through(listen, b"with the server");

    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    // Let both peers notice the server's end, then watch the owner.
    std::thread::sleep(Duration::from_millis(500));
    let pid = owner.child.id();
    let (cpu0, wall0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(WATCH);
    let (cpu, wall) = (cpu_secs(pid) - cpu0, wall0.elapsed().as_secs_f64());
    println!("owner CPU while the server was away: {cpu:.2} s in {wall:.1} s");
    assert!(
        cpu < wall * 0.1,
        "the owner used {cpu:.2} s of CPU in {wall:.1} s without its server: it spins"
    );
    // The link outlives the server connection.
    echo_through(listen, b"without the server");
}
