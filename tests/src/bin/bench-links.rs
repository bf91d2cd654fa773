//! `bench-links`: the benchmark harness of peer links, in the NAT lab (root needed).
//!
//! Builds one lab (two port-restricted sites, 50 ms apart, server 20/30 ms away) and
//! measures, through the real binaries and an echo service:
//!
//! * throughput of 1 and 8 streams over a direct link and over the relay, each against
//!   plain TCP between the same namespaces (through a port forward), in the same run;
//! * time to first byte for a new link (direct; relayed after a doomed punch, with the
//!   relay forced by a symmetric NAT) and for a new stream on an existing link;
//! * RSS of the server and the peers, idle and under load.
//!
//! Prints a markdown table. Run: `cargo build --release --workspace &&
//! target/release/bench-links` (figures in BENCHMARKS.md).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::{net::SocketAddr, time::Duration};

use lab::{Host, Lab, LabSpec, NatProfile, Site};
use support::*;

const T: Duration = Duration::from_secs(60);
const BYTES: usize = 100_000_000;

fn bin_(name: &str) -> std::path::PathBuf {
    lab::find_binary(name).expect("build the workspace first")
}

fn check(lab: &Lab, host: Host, addr: SocketAddr, streams: usize, bytes: usize) -> (f64, f64) {
    let out = lab
        .command(host, bin_("stream-check"))
        .args([
            "run",
            &addr.to_string(),
            "--streams",
            &streams.to_string(),
            "--bytes",
            &bytes.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stream-check failed: {text}");
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (field("mbit_per_s="), field("secs="))
}

struct Setup {
    lab: Lab,
    server: Proc,
    owner: Proc,
    visitor: Proc,
    listen: SocketAddr,
    _echo: Proc,
    echo_port: u16,
}

fn setup(spec: LabSpec) -> Setup {
    let lab = Lab::new(spec).expect("lab (run as root)");
    let mut cmd = lab.command(Host::Server, bin_("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (server, addr) = rendezvous(cmd, &["--bind", &lab.server_ip().to_string()]);
    let mut cmd = lab.command(Host::A, bin_("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let echo_port: u16 = echo
        .stdout
        .wait_for("listening on", T)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut cmd = lab.command(Host::A, bin_("peer"));
    let (srv, local) = (addr.to_string(), format!("127.0.0.1:{echo_port}"));
    cmd.args([
        "--server", &srv, "serve", "bench", "--local", &local, "--secret", "b",
    ]);
    let owner = Proc::spawn("owner", cmd);
    owner.stderr.wait_for("registered", T);
    let mut cmd = lab.command(Host::B, bin_("peer"));
    cmd.args(["--server", &srv, "connect", "bench", "--secret", "b"]);
    let visitor = Proc::spawn("visitor", cmd);
    let listen = visitor
        .stdout
        .wait_for("listening on", T)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    Setup {
        lab,
        server,
        owner,
        visitor,
        listen,
        _echo: echo,
        echo_port,
    }
}

fn main() {
    if let Err(reason) = lab::lab_available() {
        eprintln!("bench-links needs the NAT lab: {reason}");
        std::process::exit(2);
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        eprintln!("{k}: {v}");
        rows.push((k.to_string(), v));
    };

    // Direct.
    let d = setup(LabSpec::default());
    let (_, ttfb_link) = check(&d.lab, Host::B, d.listen, 1, 1);
    let (_, ttfb_stream) = check(&d.lab, Host::B, d.listen, 1, 1);
    row(
        "time to first byte, new direct link",
        format!("{:.0} ms", ttfb_link * 1e3),
    );
    row(
        "time to first byte, new stream on a direct link",
        format!("{:.0} ms", ttfb_stream * 1e3),
    );
    let idle = (
        rss_kib(d.server.child.id()),
        rss_kib(d.owner.child.id()),
        rss_kib(d.visitor.child.id()),
    );
    // Plain TCP between the same namespaces: B → forward on router A → echo on A.
    d.lab.forward_port(Site::A, d.echo_port).unwrap();
    let plain = SocketAddr::new(d.lab.public_ip(Site::A).into(), d.echo_port);
    let (tcp1, _) = check(&d.lab, Host::B, plain, 1, BYTES);
    let (tcp8, _) = check(&d.lab, Host::B, plain, 8, BYTES / 8);
    let (dir1, _) = check(&d.lab, Host::B, d.listen, 1, BYTES);
    let load = std::thread::scope(|s| {
        let h = s.spawn(|| check(&d.lab, Host::B, d.listen, 8, BYTES / 8));
        std::thread::sleep(Duration::from_millis(1500));
        let rss = (
            rss_kib(d.server.child.id()),
            rss_kib(d.owner.child.id()),
            rss_kib(d.visitor.child.id()),
        );
        (h.join().unwrap(), rss)
    });
    let ((dir8, _), load_rss) = load;
    row(
        "plain TCP, 1 stream (echo, Mbit/s each way)",
        format!("{tcp1:.0}"),
    );
    row("plain TCP, 8 streams", format!("{tcp8:.0}"));
    row(
        "direct link, 1 stream",
        format!("{dir1:.0} ({:.2}x plain TCP)", dir1 / tcp1),
    );
    row(
        "direct link, 8 streams",
        format!("{dir8:.0} ({:.2}x plain TCP)", dir8 / tcp8),
    );
    row(
        "RSS idle, server / owner / visitor",
        format!("{} / {} / {} KiB", idle.0, idle.1, idle.2),
    );
    row(
        "RSS under 8-stream load (direct), server / owner / visitor",
        format!("{} / {} / {} KiB", load_rss.0, load_rss.1, load_rss.2),
    );
    drop(d);

    // Relayed: B's NAT is symmetric, so the one punch attempt is doomed.
    let r = setup(LabSpec::default().nat(Site::B, NatProfile::Symmetric));
    let (_, ttfb_relay) = check(&r.lab, Host::B, r.listen, 1, 1);
    let (_, ttfb_rstream) = check(&r.lab, Host::B, r.listen, 1, 1);
    row(
        "time to first byte, new link relayed after a doomed punch",
        format!("{:.0} ms", ttfb_relay * 1e3),
    );
    row(
        "time to first byte, new stream on a relayed link",
        format!("{:.0} ms", ttfb_rstream * 1e3),
    );
    r.lab.forward_port(Site::A, r.echo_port).unwrap();
    let plain = SocketAddr::new(r.lab.public_ip(Site::A).into(), r.echo_port);
    let (rtcp1, _) = check(&r.lab, Host::B, plain, 1, BYTES);
    let (rtcp8, _) = check(&r.lab, Host::B, plain, 8, BYTES / 8);
    let (rel1, _) = check(&r.lab, Host::B, r.listen, 1, BYTES);
    let ((rel8, _), rload) = std::thread::scope(|s| {
        let h = s.spawn(|| check(&r.lab, Host::B, r.listen, 8, BYTES / 8));
        std::thread::sleep(Duration::from_millis(1500));
        let rss = (
            rss_kib(r.server.child.id()),
            rss_kib(r.owner.child.id()),
            rss_kib(r.visitor.child.id()),
        );
        (h.join().unwrap(), rss)
    });
    row(
        "plain TCP in the relay lab, 1 stream",
        format!("{rtcp1:.0}"),
    );
    row(
        "plain TCP in the relay lab, 8 streams",
        format!("{rtcp8:.0}"),
    );
    row(
        "relayed link, 1 stream",
        format!("{rel1:.0} ({:.2}x plain TCP)", rel1 / rtcp1),
    );
    row(
        "relayed link, 8 streams",
        format!("{rel8:.0} ({:.2}x plain TCP)", rel8 / rtcp8),
    );
    row(
        "RSS under 8-stream load (relayed), server / owner / visitor",
        format!("{} / {} / {} KiB", rload.0, rload.1, rload.2),
    );
    drop(r);

    println!("| measure | figure |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
