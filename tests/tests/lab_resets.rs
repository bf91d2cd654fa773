//! Abnormal ends through the NAT lab with the real binaries: a transfer over a
//! *relayed* serve/connect link whose rendezvous server is killed mid-transfer ends
//! with a reset at the client (ECONNRESET), not with a clean end of file after a
//! truncated transfer. (A direct link survives the server: `lab_services.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use lab::{Host, Lab, LabSpec, NatProfile, Site};
use support::*;

const T: Duration = Duration::from_secs(30);

/// A server, an echo service and its owner at site A, a visitor at site B.
struct Linked {
    server: Proc,
    echo: Proc,
    owner: Proc,
    visitor: Proc,
    /// The visitor's listener.
    listen: SocketAddr,
}

fn linked(lab: &Lab) -> Linked {
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    let ip = lab.server_ip().to_string();
    let (server, addr) = rendezvous(cmd, &["--bind", ip.as_str()]);
    let server_addr = addr.to_string();

    let mut cmd = lab.command(Host::A, bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let line = echo.stdout.wait_for("listening on", T);
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], port)).to_string();

    let mut cmd = lab.command(Host::A, bin("peer"));
    cmd.env_remove("PUNCHLINE_SECRET").env("RUST_LOG", "info");
    cmd.args(["--server", &server_addr, "serve", "svc", "--local", &local])
        .args(["--secret", "k"]);
    let owner = Proc::spawn("owner", cmd);
    owner.stderr.wait_for("registered", T);

    let mut cmd = lab.command(Host::B, bin("peer"));
    cmd.env_remove("PUNCHLINE_SECRET").env("RUST_LOG", "info");
    cmd.args(["--server", &server_addr, "connect", "svc", "--secret", "k"])
        .args(["--keep-open"]);
    let visitor = Proc::spawn("visitor", cmd);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    Linked {
        server,
        echo,
        owner,
        visitor,
        listen,
    }
}

#[test]
fn a_relayed_transfer_is_reset_when_the_server_dies() {
    if !lab::require_lab() {
        return;
    }
    // Two symmetric NATs: no punch can work, the link is relayed by the server.
    let lab = Lab::new(
        LabSpec::default()
            .nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::Symmetric),
    )
    .expect("lab");
    let Linked {
        server,
        echo,
        owner,
        visitor,
        listen,
    } = linked(&lab);
    visitor.stderr.wait_for("link up: relayed", T);

    let mut cmd = lab.command(Host::B, bin("stream-check"));
    cmd.args(["run", &listen.to_string(), "--streams", "1"])
        .args(["--bytes", "200000000"]);
    let mut transfer = Proc::spawn("transfer", cmd);
    // Kill the server (SIGKILL) once the transfer has reached the owner's service.
    echo.stdout.wait_for("accepted from", T);
    std::thread::sleep(Duration::from_millis(300));
    drop(server);
    let st = transfer.wait_exit(Duration::from_secs(120));
    let out = transfer.stdout.text();
    assert!(
        !st.success(),
        "the transfer completed although its relay died:\n{out}"
    );
    // A reset reads as "read after N bytes: Connection reset by peer"; a truncated
    // transfer that ended cleanly would read as "MISMATCH stream=0 got=N".
    assert!(
        out.contains("Connection reset") && !out.contains("MISMATCH"),
        "the client did not see a reset:\n{out}\nvisitor:\n{}",
        visitor.stderr.text()
    );
    println!("RESET relayed transfer, server killed: {}", out.trim());
    drop(owner);
}

/// A 20 s network outage at the owner's site in the middle of a transfer over a
/// *direct* link: the link's liveness check gives up on the silent side
/// (`LINK_IDLE_TIMEOUT`), and the client's connection is reset, not ended as if the
/// data were complete. Afterwards the service works again.
#[test]
fn a_transfer_is_reset_after_a_long_network_outage() {
    if !lab::require_lab() {
        return;
    }
    let lab = Lab::new(LabSpec::default()).expect("lab");
    let Linked {
        server: _server,
        echo,
        owner,
        visitor,
        listen,
    } = linked(&lab);

    let mut cmd = lab.command(Host::B, bin("stream-check"));
    cmd.args(["run", &listen.to_string(), "--streams", "1"])
        .args(["--bytes", "1000000000"]);
    let mut transfer = Proc::spawn("transfer", cmd);
    visitor.stderr.wait_for("link up: direct", T);
    echo.stdout.wait_for("accepted from", T);
    std::thread::sleep(Duration::from_millis(300));

    // The outage: site A's router forwards nothing, both ways.
    let router = Host::router(Site::A);
    lab.run(router, "nft", &["add", "table", "inet", "outage"])
        .unwrap();
    lab.run(
        router,
        "nft",
        &["add chain inet outage cut { type filter hook forward priority -10 ; policy drop ; }"],
    )
    .unwrap();
    let cut = std::time::Instant::now();
    let st = transfer.wait_exit(Duration::from_secs(60));
    let noticed = cut.elapsed();
    let out = transfer.stdout.text();
    assert!(
        !st.success(),
        "the transfer completed across the outage:\n{out}"
    );
    assert!(
        out.contains("Connection reset") && !out.contains("MISMATCH"),
        "the client did not see a reset:\n{out}\nvisitor:\n{}",
        visitor.stderr.text()
    );
    println!(
        "RESET transfer after an outage, noticed in {noticed:?}: {}",
        out.trim()
    );
    assert!(
        noticed < Duration::from_secs(25),
        "noticed after {noticed:?}"
    );
    // Keep the outage to 20 s in all, then end it: the service works again.
    if let Some(rest) = Duration::from_secs(20).checked_sub(cut.elapsed()) {
        std::thread::sleep(rest);
    }
    lab.run(router, "nft", &["delete", "table", "inet", "outage"])
        .unwrap();
    let mut ok = false;
    for _ in 0..60 {
        let out = lab
            .command(Host::B, bin("stream-check"))
            .args([
                "run",
                &listen.to_string(),
                "--streams",
                "1",
                "--bytes",
                "1000000",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        ok,
        "the service did not work again:\n{}",
        visitor.stderr.text()
    );
    drop(owner);
}
