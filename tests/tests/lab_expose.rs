//! `peer expose tcp` with the real binaries in the NAT lab: the owner behind NAT A,
//! users on host B reaching the server's public port. Data sha256-checked through an
//! echo service; ports outside `--allow-ports` and ports another peer holds are clear
//! errors; port 0 prints the port the server chose; a server restart is survived, and
//! during the gap users are refused at once instead of hanging.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use lab::{Host, Lab, LabSpec};
use support::*;

const T: Duration = Duration::from_secs(30);
/// Ports the server allows in these tests (inside the lab's own namespace).
const ALLOW: &str = "20000-20009";

struct World {
    lab: Lab,
    server: Option<Proc>,
    addr: SocketAddr,
    _echo: Proc,
    echo: SocketAddr,
}

fn server(lab: &Lab, port: &str) -> (Proc, SocketAddr) {
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let ip = lab.server_ip().to_string();
    rendezvous(
        cmd,
        &["--bind", &ip, "--port", port, "--allow-ports", ALLOW],
    )
}

fn world() -> World {
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let (srv, addr) = server(&lab, "0");
    let mut cmd = lab.command(Host::A, bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let port: u16 = echo
        .stdout
        .wait_for("listening on", T)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    World {
        lab,
        server: Some(srv),
        addr,
        _echo: echo,
        echo: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

impl World {
    fn expose(&self, host: Host, remote_port: &str) -> Proc {
        let mut cmd = self.lab.command(host, bin("peer"));
        cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
        let (server, local) = (self.addr.to_string(), self.echo.to_string());
        cmd.args([
            "--server",
            &server,
            "expose",
            "tcp",
            "--local",
            &local,
            "--remote-port",
            remote_port,
        ]);
        Proc::spawn("expose", cmd)
    }

    fn check(&self, port: u16, streams: usize, bytes: usize) -> Result<String, String> {
        let target = SocketAddr::new(self.lab.server_ip().into(), port);
        let out = self
            .lab
            .command(Host::B, bin("stream-check"))
            .args([
                "run",
                &target.to_string(),
                "--streams",
                &streams.to_string(),
                "--bytes",
                &bytes.to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(text.trim().to_string())
        } else {
            Err(text + &String::from_utf8_lossy(&out.stderr))
        }
    }
}

fn exposed_port(p: &Proc) -> u16 {
    let line = p.stdout.wait_for("exposed ", T);
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn tcp_exposure_carries_data_intact() {
    if !lab::require_lab() {
        return;
    }
    let w = world();
    let owner = w.expose(Host::A, "0");
    let port = exposed_port(&owner);
    assert!(
        (20000..=20009).contains(&port),
        "the server chose {port}, outside {ALLOW}"
    );
    let one = w.check(port, 1, 100_000_000).unwrap();
    let eight = w.check(port, 8, 12_500_000).unwrap();
    println!("EXPOSE tcp port {port}: {one} | {eight}");
}

#[test]
fn disallowed_and_taken_ports_are_clear_errors() {
    if !lab::require_lab() {
        return;
    }
    let w = world();
    let mut bad = w.expose(Host::A, "30000");
    assert!(!bad.wait_exit(T).success());
    let err = bad.stderr.text();
    assert!(
        err.contains("port 30000 is not allowed on this server (allowed: 20000-20009)"),
        "{err}"
    );
    let first = w.expose(Host::A, "20005");
    assert_eq!(exposed_port(&first), 20005);
    let mut second = w.expose(Host::B, "20005");
    assert!(!second.wait_exit(T).success());
    let err = second.stderr.text();
    assert!(
        err.contains("port 20005 is held by peer pl1:") && err.contains("(proxy 'tcp-"),
        "{err}"
    );
    // The first exposure is unharmed.
    w.check(20005, 2, 1_000_000).unwrap();
}

#[test]
fn a_server_restart_is_survived_and_the_gap_refuses_at_once() {
    if !lab::require_lab() {
        return;
    }
    let mut w = world();
    let owner = w.expose(Host::A, "20001");
    assert_eq!(exposed_port(&owner), 20001);
    w.check(20001, 1, 1_000_000).unwrap();
    let port = w.addr.port().to_string();
    drop(w.server.take());
    // Nothing listens now: refused at once, no hang.
    let started = std::time::Instant::now();
    assert!(w.check(20001, 1, 1000).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a user waited {:?}",
        started.elapsed()
    );
    let (srv, _) = server(&w.lab, &port);
    srv.stderr
        .wait_for("tcp port exposed", Duration::from_secs(60));
    srv.stderr.wait_for("data connection up", T);
    w.server = Some(srv);
    w.check(20001, 2, 5_000_000).unwrap();
}
