//! Pairing uses what the peers know of their NATs: with both sites symmetric (and a
//! server with `--alt-addr`, so that each peer can measure its own TCP mapping), the
//! server says the direct attempts are hopeless and the link is relayed at once,
//! well inside the punch window it used to wait out; with only one side symmetric,
//! the server picks the birthday punch (see `lab_birthday.rs`) and the link is direct.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use lab::{Host, Lab, LabSpec, NatProfile, Site};
use support::*;

const T: Duration = Duration::from_secs(20);

struct World {
    lab: Lab,
    server: Proc,
    addr: SocketAddr,
    _echo: Proc,
    echo: SocketAddr,
}

/// A lab with a server, with its alternate endpoint if `alt`, and an echo service on A.
fn world(spec: LabSpec, alt: bool) -> World {
    let lab = Lab::new(spec).expect("lab");
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let (ip, alt_addr) = (
        lab.server_ip().to_string(),
        format!("{}:0", lab.server_alt_ip()),
    );
    let mut args = vec!["--bind", ip.as_str()];
    if alt {
        args.extend(["--alt-addr", alt_addr.as_str()]);
    } else {
        args.extend(["--alt-port", "off"]);
    }
    let (server, addr) = rendezvous(cmd, &args);
    if alt {
        server.stdout.wait_for("stun alternate", T);
    }
    let mut cmd = lab.command(Host::A, bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let line = echo.stdout.wait_for("listening on", T);
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    World {
        lab,
        server,
        addr,
        _echo: echo,
        echo: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

impl World {
    fn peer(&self, host: Host, name: &str, args: &[&str]) -> Proc {
        let mut cmd = self.lab.command(host, bin("peer"));
        cmd.env_remove("PUNCHLINE_SECRET")
            .env_remove("PUNCHLINE_TOKEN")
            .env("RUST_LOG", "info");
        cmd.args(["--server", &self.addr.to_string()]).args(args);
        Proc::spawn(name, cmd)
    }

    /// Owner on A (waits until it has told the server its mapping), visitor on B with
    /// `--keep-open`; returns the visitor, its listener and its "link up" line.
    fn link(&self) -> (Proc, Proc, SocketAddr, String) {
        let echo = self.echo.to_string();
        let owner = self.peer(
            Host::A,
            "owner",
            &["serve", "svc", "--local", &echo, "--secret", "s3cret"],
        );
        owner.stderr.wait_for("registered", T);
        owner.stderr.wait_for("own TCP mapping measured", T);
        let visitor = self.peer(
            Host::B,
            "visitor",
            &[
                "connect",
                "svc",
                "--secret",
                "s3cret",
                "--listen",
                "127.0.0.1:0",
                "--keep-open",
            ],
        );
        let line = visitor.stdout.wait_for("listening on", T);
        let listen = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        let up = visitor.stderr.wait_for("link up:", T);
        (owner, visitor, listen, up)
    }

    fn check(&self, listen: SocketAddr) -> String {
        let out = self
            .lab
            .command(Host::B, bin("stream-check"))
            .args([
                "run",
                &listen.to_string(),
                "--streams",
                "4",
                "--bytes",
                "1000000",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("ok streams="),
            "stream-check failed:\n{text}"
        );
        text.trim().to_string()
    }

    fn server_log(&self) -> String {
        self.server.stdout.text() + "\n" + &self.server.stderr.text()
    }
}

/// The "N ms after the request" figure of a visitor's "link up" line.
fn millis(up: &str) -> u64 {
    let i = up
        .find(" ms after")
        .unwrap_or_else(|| panic!("no ms figure in {up:?}"));
    up[..i].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn both_symmetric_relays_at_once() {
    if !lab::require_lab() {
        return;
    }
    let both = LabSpec::default()
        .nat(Site::A, NatProfile::Symmetric)
        .nat(Site::B, NatProfile::Symmetric);
    let w = world(both, true);
    let (_owner, visitor, listen, up) = w.link();
    let log = visitor.stderr.text();
    assert!(
        up.contains("link up: relayed"),
        "expected a relayed link: {up}\n{log}"
    );
    assert!(
        log.contains(
            "relayed: both NATs map per destination (symmetric); skipped the direct attempts"
        ),
        "no reason given:\n{log}"
    );
    assert!(
        !log.contains("punching"),
        "a direct attempt was made:\n{log}"
    );
    let ms = millis(&up);
    println!("NAT-AWARE both symmetric: relayed link up {ms} ms after the request");
    assert!(
        ms < 1500,
        "relayed only after {ms} ms (the punch window is 3 s)"
    );
    println!("{}", w.check(listen));
    let server = w.server_log();
    assert!(
        server.contains("both NATs map per destination"),
        "the server did not log the skip:\n{server}"
    );
}

#[test]
fn one_symmetric_side_gets_a_birthday_punch() {
    if !lab::require_lab() {
        return;
    }
    let w = world(LabSpec::default().nat(Site::B, NatProfile::Symmetric), true);
    let (_owner, visitor, listen, up) = w.link();
    let log = visitor.stderr.text();
    assert!(
        log.contains("punching (birthday)"),
        "no birthday punch was made:\n{log}"
    );
    assert!(up.contains("link up: direct"), "{up}\n{log}");
    assert!(
        !log.contains("skipped the direct attempts"),
        "direct attempts skipped:\n{log}"
    );
    println!(
        "NAT-AWARE port-restricted x symmetric: {up} ({} ms)",
        millis(&up)
    );
    println!("{}", w.check(listen));
    let server = w.server_log();
    assert!(
        !server.contains("both NATs map per destination"),
        "the server skipped:\n{server}"
    );
}

/// Without a second server port (`--alt-port off`) the peers cannot measure their
/// mapping: the same two symmetric NATs wait out the punch window first, as before.
#[test]
fn unknown_mapping_changes_nothing() {
    if !lab::require_lab() {
        return;
    }
    let both = LabSpec::default()
        .nat(Site::A, NatProfile::Symmetric)
        .nat(Site::B, NatProfile::Symmetric);
    let w = world(both, false);
    let (_owner, visitor, listen, up) = w.link();
    let log = visitor.stderr.text();
    assert!(
        up.contains("link up: relayed"),
        "expected a relayed link: {up}\n{log}"
    );
    assert!(
        log.contains("punching") && !log.contains("skipped the direct attempts"),
        "{log}"
    );
    println!(
        "NAT-AWARE both symmetric, mapping unknown: relayed link up {} ms after the request",
        millis(&up)
    );
    println!("{}", w.check(listen));
}

/// `pipe --no-relay` where the server knows no direct link can work: both peers say
/// so (no "relayed", no "after 0 attempts") and exit 1 at once. A peer measures its
/// mapping for at most NAT_MAPPING_WAIT before it pairs; on a machine so loaded that
/// it takes longer, the server cannot know and the peers punch (and fail after their
/// attempts): such a run is repeated, with a new code.
#[test]
fn no_relay_between_symmetric_nats_says_why() {
    if !lab::require_lab() {
        return;
    }
    let both = LabSpec::default()
        .nat(Site::A, NatProfile::Symmetric)
        .nat(Site::B, NatProfile::Symmetric);
    let w = world(both, true);
    for run in 0..3 {
        let code = format!("hopeless-{run}");
        let args = ["pipe", "--code", code.as_str(), "--no-relay"];
        let (mut a, mut b) = (w.peer(Host::A, "A", &args), w.peer(Host::B, "B", &args));
        let mut known = true;
        for p in [&mut a, &mut b] {
            let st = p.wait_exit(Duration::from_secs(60));
            let err = p.stderr.text();
            assert_eq!(st.code(), Some(1), "{err}");
            assert!(!err.contains("relayed"), "{err}");
            assert!(!err.contains("after 0 attempts"), "{err}");
            if err.contains("punching a direct connection") {
                known = false;
                continue;
            }
            assert!(
                err.contains(
                    "no direct connection is possible: both NATs map per destination \
                     (symmetric); skipped the direct attempts, and --no-relay forbids the relay"
                ),
                "{err}"
            );
        }
        if known {
            return;
        }
        println!("run {run}: the mappings were not measured in time; again");
    }
    panic!("in 3 runs the server never knew both mappings at pairing time");
}
