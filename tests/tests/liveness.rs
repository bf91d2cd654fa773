//! Liveness and recovery, with the real binaries on loopback:
//! * a paused owner (SIGSTOP) is noticed by the visitor within 20 s, while a live
//!   link that is idle for longer than the idle timeout stays up;
//! * after a server restart an exposed TCP port works again within 3 s;
//! * `peer status` names a paused peer that does not answer, in text and with `--json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use support::*;

const T: Duration = Duration::from_secs(30);

fn echo() -> (Proc, SocketAddr) {
    let mut cmd = std::process::Command::new(bin("stream-check"));
    cmd.args(["echo", "0"]);
    let p = Proc::spawn("echo", cmd);
    let line = p.stdout.wait_for("listening on", T);
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    (p, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn peer(args: &[&str]) -> Proc {
    let mut cmd = local("peer");
    cmd.env_remove("PUNCHLINE_TOKEN")
        .env("RUST_LOG", "info")
        .args(args);
    Proc::spawn("peer", cmd)
}

/// Sends `msg` and reads its echo on `c`.
fn ping(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    c.write_all(msg)?;
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got)?;
    if got != msg {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

/// Keeps talking on `c` (a byte, then a read with a short timeout) until the
/// connection fails or ends; returns the time since `since`.
fn until_cut(c: &mut TcpStream, since: Instant, log_of: &Proc) -> Duration {
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    loop {
        let mut buf = [0u8; 16];
        let r = c.write_all(b"?").and_then(|()| c.read(&mut buf));
        match r {
            Ok(0) => return since.elapsed(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return since.elapsed(),
            // SIGSTOP reaches every thread of the peer soon after `kill` returns, but
            // not at once: a probe sent within the first moments may still be echoed.
            // Anything else (bytes other than the probes, or an echo later) is wrong.
            Ok(n) => assert!(
                buf[..n].iter().all(|&b| b == b'?') && since.elapsed() < Duration::from_secs(2),
                "{:?} came back through a peer paused {:?} ago",
                String::from_utf8_lossy(&buf[..n]),
                since.elapsed()
            ),
        }
        assert!(
            since.elapsed() < Duration::from_secs(40),
            "the paused peer was not noticed in 40 s:\n{}",
            log_of.stderr.text()
        );
    }
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_paused_owner_is_noticed_within_20_s() {
    let (_srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let (_echo, echo_addr) = echo();
    let server = addr.to_string();
    let owner = peer(&[
        "--server",
        &server,
        "serve",
        "svc",
        "--local",
        &echo_addr.to_string(),
        "--secret",
        "s",
    ]);
    owner.stderr.wait_for("registered", T);
    let visitor = peer(&[
        "--server",
        &server,
        "connect",
        "svc",
        "--secret",
        "s",
        "--listen",
        "127.0.0.1:0",
    ]);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    ping(&mut c, b"hello").unwrap();
    visitor.stderr.wait_for("link up: direct", T);

    // A live link idle for longer than the idle timeout stays up.
    std::thread::sleep(common::defaults::LINK_IDLE_TIMEOUT + Duration::from_secs(3));
    ping(&mut c, b"still there").unwrap();

    // Pause the owner. The user keeps talking through the visitor; its connection
    // fails once the visitor has noticed the silence.
    signal(owner.child.id(), "-STOP");
    let paused = Instant::now();
    let noticed = until_cut(&mut c, paused, &visitor);
    signal(owner.child.id(), "-CONT");
    eprintln!("paused owner noticed after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(20),
        "noticed only after {noticed:?}"
    );
    // And the visitor recovers: a new connection gets a new link to the resumed owner.
    let mut c2 = TcpStream::connect(listen).unwrap();
    c2.set_read_timeout(Some(T)).unwrap();
    ping(&mut c2, b"again").unwrap();
}

#[test]
fn an_exposed_port_works_again_within_3_s_of_a_server_restart() {
    let (srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let (_echo, echo_addr) = echo();
    // A fixed remote port, so that it is the same after the restart.
    let remote = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = addr.to_string();
    let p = peer(&[
        "--server",
        &server,
        "expose",
        "tcp",
        "--local",
        &echo_addr.to_string(),
        "--remote-port",
        &remote.to_string(),
    ]);
    p.stdout.wait_for("exposed", T);
    let through = SocketAddr::from(([127, 0, 0, 1], remote));
    let works = || -> bool {
        let Ok(mut c) = TcpStream::connect_timeout(&through, Duration::from_millis(200)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
        ping(&mut c, b"through").is_ok()
    };
    let deadline = Instant::now() + T;
    while !works() {
        assert!(Instant::now() < deadline, "{}", p.stderr.text());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Restart the server on the same port, after a few seconds of outage (the
    // peer's backoff grows meanwhile).
    drop(srv);
    std::thread::sleep(Duration::from_secs(5));
    let port = addr.port().to_string();
    let (_srv2, _) = rendezvous(
        local("rendezvous"),
        &["--bind", "127.0.0.1", "--port", &port],
    );
    let restarted = Instant::now();
    while !works() {
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "the exposure did not come back in 30 s:\n{}",
            p.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = restarted.elapsed();
    eprintln!("exposed port works again {took:?} after the server restarted");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// A paused server (its kernel still holds the connection) is noticed by a peer's
/// control connection after `IDLE_TIMEOUT` without the server's pings, so the peer
/// reconnects instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_is_noticed_by_the_peer() {
    let (srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let cfg = peer::client::ServerConfig::ephemeral(addr, None);
    let mut control = peer::client::Control::connect(&cfg).await.unwrap();
    signal(srv.child.id(), "-STOP");
    let paused = Instant::now();
    let idle = common::defaults::IDLE_TIMEOUT;
    let r = tokio::time::timeout(idle + Duration::from_secs(10), control.recv()).await;
    let took = paused.elapsed();
    signal(srv.child.id(), "-CONT");
    assert!(
        matches!(r, Ok(Err(_))),
        "the control connection outlived a paused server: {r:?}"
    );
    eprintln!("paused server noticed after {took:?}");
    assert!(took <= idle + Duration::from_secs(2), "{took:?}");
}

/// A paused exposing peer is noticed by the server on its data connection within
/// 20 s: a user connection through its port is cut, not left hanging.
#[test]
fn a_paused_exposer_is_noticed_within_20_s() {
    let (srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let (_echo, echo_addr) = echo();
    let p = peer(&[
        "--server",
        &addr.to_string(),
        "expose",
        "tcp",
        "--local",
        &echo_addr.to_string(),
        "--remote-port",
        "0",
    ]);
    let port: u16 = p
        .stdout
        .wait_for("exposed", T)
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let through = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + T;
    let mut c = loop {
        let mut c = TcpStream::connect(through).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if ping(&mut c, b"hello").is_ok() {
            break c;
        }
        assert!(Instant::now() < deadline, "{}", p.stderr.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(p.child.id(), "-STOP");
    let paused = Instant::now();
    let noticed = until_cut(&mut c, paused, &srv);
    signal(p.child.id(), "-CONT");
    eprintln!("paused exposer noticed after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(20),
        "noticed only after {noticed:?}"
    );
}

/// A peer that does not answer its status socket (paused) is named by `peer status`
/// with the reason, in the text form and on stderr with `--json`, instead of being
/// left out silently.
#[test]
fn peer_status_names_a_peer_that_does_not_answer() {
    let (_srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let (_echo, echo_addr) = echo();
    let dir =
        std::env::temp_dir().join(format!("punchline-liveness-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = local("peer");
    cmd.env_remove("PUNCHLINE_TOKEN")
        .env("PUNCHLINE_STATUS_DIR", &dir)
        .args(["--server", &addr.to_string(), "expose", "tcp", "--local"])
        .arg(echo_addr.to_string())
        .args(["--remote-port", "0"]);
    let p = Proc::spawn("peer", cmd);
    p.stdout.wait_for("exposed", T);
    let status = |json: bool| {
        let mut cmd = local("peer");
        cmd.env("PUNCHLINE_STATUS_DIR", &dir).arg("status");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (out, _) = status(true);
    let docs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(docs.as_array().map(Vec::len), Some(1), "{out}");

    signal(p.child.id(), "-STOP");
    let (out, err) = status(true);
    let (text, _) = status(false);
    signal(p.child.id(), "-CONT");
    let docs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(docs.as_array().map(Vec::len), Some(0), "{out}");
    let sock = format!("peer-{}.sock", p.child.id());
    assert!(
        err.contains(&sock) && err.contains("no answer within 2s"),
        "stderr of --json: {err}"
    );
    assert!(
        text.contains(&sock) && text.contains("no answer within 2s"),
        "text: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
