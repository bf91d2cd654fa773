//! Floods harm only the flooder. A token holder that sends thousands of `Connect`
//! requests for a service (through the library) is refused past its rate and past its
//! share of the links being set up, with a clear reason and a few warnings in the
//! server's log; meanwhile a real visitor (`peer connect`) gets its link to the real
//! owner (`peer serve`) and moves data through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::proto::{ClientMsg, ConnKind, ServerMsg};
use peer::client::{Control, ServerConfig};
use support::*;

const T: Duration = Duration::from_secs(30);
/// The flood: 3,000 requests in 6 s.
const FLOOD: usize = 3000;
const FLOOD_TIME: Duration = Duration::from_secs(6);

fn echo() -> (Proc, SocketAddr) {
    let mut cmd = std::process::Command::new(bin("stream-check"));
    cmd.args(["echo", "0"]);
    let p = Proc::spawn("echo", cmd);
    let line = p.stdout.wait_for("listening on", T);
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    (p, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn check(listen: SocketAddr) -> Result<String, String> {
    let out = std::process::Command::new(bin("stream-check"))
        .args([
            "run",
            &listen.to_string(),
            "--streams",
            "4",
            "--bytes",
            "100000",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && text.contains("ok streams=") {
        Ok(text.trim().to_string())
    } else {
        Err(text)
    }
}

/// A real visitor (`peer connect svc`) and its listener.
fn visitor(server: &str) -> (Proc, SocketAddr) {
    let mut cmd = local("peer");
    cmd.env("RUST_LOG", "info").args([
        "--server",
        server,
        "connect",
        "svc",
        "--secret",
        "s3cret",
        "--listen",
        "127.0.0.1:0",
    ]);
    let visitor = Proc::spawn("visitor", cmd);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    (visitor, listen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_harms_only_the_flooder() {
    let (srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let (_echo, echo_addr) = echo();
    let server = addr.to_string();
    let mut cmd = local("peer");
    cmd.env("RUST_LOG", "info").args([
        "--server",
        &server,
        "serve",
        "svc",
        "--local",
        &echo_addr.to_string(),
        "--secret",
        "s3cret",
    ]);
    let owner = Proc::spawn("owner", cmd);
    owner.stderr.wait_for("registered", T);

    // The flooder: one control connection, 500 requests a second, counting answers.
    let cfg = ServerConfig::ephemeral(addr, None);
    let mut flooder = Control::connect(&cfg).await.unwrap();
    let tx = flooder.tx.clone();
    let (refused, paired) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reasons = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let answers = {
        let (refused, paired, reasons) = (refused.clone(), paired.clone(), reasons.clone());
        tokio::spawn(async move {
            while let Ok(m) = flooder.recv().await {
                match m {
                    ServerMsg::Refused(r) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        let mut v = reasons.lock().unwrap();
                        if !v.contains(&r) {
                            v.push(r);
                        }
                    }
                    ServerMsg::Paired { .. } => {
                        paired.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    let flood = tokio::spawn(async move {
        let every = FLOOD_TIME / FLOOD as u32;
        let mut tick = tokio::time::interval(every);
        for _ in 0..FLOOD {
            tick.tick().await;
            if tx
                .send(ClientMsg::Connect {
                    name: "svc".into(),
                    relay_first: false,
                })
                .await
                .is_err()
            {
                break;
            }
        }
        tx
    });

    // Meanwhile, a second into the flood, a real visitor links and moves data.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (visitor, listen) = visitor(&server);
    let started = Instant::now();
    let result = tokio::task::spawn_blocking(move || check(listen))
        .await
        .unwrap();
    let took = started.elapsed();
    let flood_done = flood.is_finished();
    assert!(
        result.is_ok(),
        "the visitor failed during the flood: {result:?}\nvisitor:\n{}\nowner:\n{}",
        visitor.stderr.text(),
        owner.stderr.text()
    );
    eprintln!("visitor's link and data during the flood: {took:?} (flood over: {flood_done})");
    assert!(
        !flood_done,
        "the visitor must have been served during the flood"
    );

    let _tx = flood.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (refused, paired) = (
        refused.load(Ordering::Relaxed),
        paired.load(Ordering::Relaxed),
    );
    let reasons = reasons.lock().unwrap().clone();
    eprintln!("flooder: {paired} paired, {refused} refused: {reasons:#?}");
    assert!(
        paired
            <= common::defaults::LINK_REQUEST_BURST as usize
                + common::defaults::LINK_REQUESTS_PER_SEC as usize * 8,
        "{paired} of the flood's requests were paired"
    );
    assert!(refused >= FLOOD - 200, "only {refused} refused");
    assert!(
        reasons.iter().any(|r| r.contains("too many link requests")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("being set up")),
        "{reasons:?}"
    );
    // The server logged the flood, a few lines, not thousands.
    let log = srv.stderr.text();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refused"))
        .count();
    assert!((1..=20).contains(&warned), "{warned} warnings:\n{log}");
    answers.abort();
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the 14th
    // field overall, stime the 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// One user at its `maxExposures` is refused with a clear reason, and the server keeps
/// serving another user's exposure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_its_exposure_limit_harms_nobody_else() {
    use common::proto::ExposeSpec;
    let dir = lab::fresh_identity();
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rendezvous.toml");
    std::fs::write(
        &config,
        "[[users]]\nname = \"greedy\"\ntoken = \"greedy-token\"\n\
         allowPorts = [{ start = 1024, end = 65535 }]\nmaxExposures = 20\n\n\
         [[users]]\nname = \"other\"\ntoken = \"other-token\"\n\
         allowPorts = [{ start = 1024, end = 65535 }]\n",
    )
    .unwrap();
    let (_srv, addr) = rendezvous(
        local("rendezvous"),
        &["-c", config.to_str().unwrap(), "--bind", "127.0.0.1"],
    );
    let cfg = ServerConfig::ephemeral(addr, Some("greedy-token".into()));
    let mut greedy = Control::connect(&cfg).await.unwrap();
    for i in 0..30 {
        greedy
            .send(ClientMsg::Expose {
                name: format!("p{i}"),
                instance: 1,
                spec: ExposeSpec::Tcp { remote_port: 0 },
                compress: false,
            })
            .await
            .unwrap();
    }
    let (mut exposed, mut refusals) = (0, Vec::new());
    while exposed + refusals.len() < 30 {
        match tokio::time::timeout(T, greedy.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ServerMsg::Exposed { .. } => exposed += 1,
            ServerMsg::Refused(r) => refusals.push(r),
            _ => {}
        }
    }
    assert_eq!(exposed, 20);
    assert!(
        refusals.iter().all(|r| r.contains("maxExposures")),
        "{refusals:?}"
    );
    // The other user exposes and is reached.
    let (_echo, echo_addr) = echo();
    let mut cmd = local("peer");
    cmd.env("PUNCHLINE_TOKEN", "other-token").args([
        "--server",
        &addr.to_string(),
        "expose",
        "tcp",
        "--local",
        &echo_addr.to_string(),
        "--remote-port",
        "0",
    ]);
    let other = Proc::spawn("other", cmd);
    let port: u16 = other
        .stdout
        .wait_for("exposed", T)
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    let through = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + T;
    loop {
        let r = tokio::task::spawn_blocking(move || check(through))
            .await
            .unwrap();
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(greedy);
}

/// Out of file descriptors, the control port's accept loop backs off instead of
/// spinning, logs a line (not one per 100 ms), and serves again once descriptors are
/// free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_out_of_file_descriptors() {
    let (srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let pid = srv.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 10;
    let st = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "prlimit failed");
    // Silent connections (no handshake) take the free descriptors; the rest wait
    // in the backlog, where every accept fails with EMFILE.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ticks = cpu_ticks(pid) - before;
    let hz = 100.0; // USER_HZ on Linux
    let busy = ticks as f64 / hz / started.elapsed().as_secs_f64();
    eprintln!(
        "server CPU while out of descriptors: {:.1}% of a core",
        busy * 100.0
    );
    assert!(
        busy < 0.2,
        "the accept loop spins: {:.0}% of a core",
        busy * 100.0
    );
    let log = srv.stderr.text();
    let failed = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        (1..=2).contains(&failed),
        "{failed} 'accept failed' lines:\n{log}"
    );
    // Descriptors come back: a peer is served again.
    drop(silent);
    let cfg = ServerConfig::ephemeral(addr, None);
    let deadline = Instant::now() + T;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), Control::connect(&cfg)).await {
            Ok(Ok(_)) => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Identities cost nothing to make: forty of them from one address, each asking for a
/// link to a service and never proving anything, hold at most
/// `MAX_PENDING_LINKS_PER_ADDRESS` of the service's slots for links being set up; the
/// rest are refused naming the address, and a visitor from another address links and
/// moves data meanwhile. (The flood comes from 127.0.0.2, the visitor from 127.0.0.1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_identities_from_one_address_hold_a_bounded_share() {
    use common::defaults::MAX_PENDING_LINKS_PER_ADDRESS;
    const FLOODERS: usize = 40;
    let (_srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let port = addr.port();
    let (_echo, echo_addr) = echo();
    let server = format!("127.0.0.1:{port}");
    let mut cmd = local("peer");
    cmd.env("RUST_LOG", "info").args([
        "--server",
        &server,
        "serve",
        "svc",
        "--local",
        &echo_addr.to_string(),
        "--secret",
        "s3cret",
    ]);
    let owner = Proc::spawn("owner", cmd);
    owner.stderr.wait_for("registered", T);

    // The flood's connections come from 127.0.0.2 (bound before connecting).
    let mut channels = Vec::new();
    let (mut paired, mut refused) = (0, Vec::new());
    for _ in 0..FLOODERS {
        let cfg = ServerConfig::ephemeral(SocketAddr::from(([127, 0, 0, 1], port)), None);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let (mut ch, _) = peer::client::connect(&cfg, ConnKind::Control, Some(socket))
            .await
            .unwrap();
        ch.send(&ClientMsg::Connect {
            name: "svc".into(),
            relay_first: false,
        })
        .await
        .unwrap();
        loop {
            match tokio::time::timeout(T, ch.recv::<ServerMsg>())
                .await
                .unwrap()
                .unwrap()
            {
                ServerMsg::Paired { .. } => paired += 1,
                ServerMsg::Refused(r) => refused.push(r),
                _ => continue,
            }
            break;
        }
        channels.push(ch);
    }
    assert_eq!(paired, MAX_PENDING_LINKS_PER_ADDRESS, "{refused:?}");
    assert_eq!(refused.len(), FLOODERS - MAX_PENDING_LINKS_PER_ADDRESS);
    assert!(
        refused[0].contains("from 127.0.0.2") && refused[0].contains("per address"),
        "{}",
        refused[0]
    );

    let (visitor, listen) = visitor(&server);
    let result = tokio::task::spawn_blocking(move || check(listen))
        .await
        .unwrap();
    assert!(
        result.is_ok(),
        "the visitor failed: {result:?}\nvisitor:\n{}",
        visitor.stderr.text()
    );
    drop(channels);
}
