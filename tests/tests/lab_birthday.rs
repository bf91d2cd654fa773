//! The birthday punch through real NATs: a port-restricted site and a symmetric one
//! (`masquerade fully-random`: uniformly random ports), both orders, with a server
//! started as the README says (`rendezvous --port P`, nothing else): its second port
//! (P + 1) lets each peer measure its mapping, the server picks the birthday punch,
//! and the pipe goes direct.
//!
//! Per run: 2 MiB A → B and an answer back, hashes compared; "direct" checked from
//! the server namespace's nftables counters (the server carries next to none of the
//! bytes); the time from starting the peers to the link; and the punch's cost, counted
//! by nftables on each home router: SYNs forwarded from the LAN to the WAN (the easy
//! side's spray, the hard side's sockets and their retransmissions), which must stay
//! within the caps of `common::defaults` plus the few connections to the server.
//!
//! Both symmetric: relayed at once, well within 1 s of the pairing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::defaults::{BIRTHDAY_SOCKETS, BIRTHDAY_SPRAY, BIRTHDAY_WINDOW};
use lab::{Host, Lab, LabSpec, NatProfile, Site};
use support::*;

/// Runs per cell: 10, as the issue asks; each takes 2–3 s (two peers measuring their
/// mapping, pairing, punching, 2 MiB), so a cell stays near 30 s.
const RUNS: usize = 10;
/// Runs that may go relayed, or take longer than [`LINK_LIMIT`], before the cell
/// fails: the birthday punch is probabilistic (≈ 0.1% miss per attempt in theory),
/// and a machine running five builds at once starts processes late. The issue's bar:
/// direct within 3 s in at least 9 of 10 runs.
const MAX_MISSES: usize = 1;
const RUN_BYTES: usize = 2 << 20;
const SERVER_BYTES_LIMIT: u64 = 64 * 1024;
/// From starting both peers (processes, NAT measurement, pairing, punch) to the
/// authenticated link: the issue's bar of 3 s to the first byte.
const LINK_LIMIT: Duration = Duration::from_secs(3);
/// SYNs besides the punch's own: control, probe and mapping-test connections to the
/// server.
const OTHER_SYNS: u64 = 40;

struct Running {
    lab: Lab,
    server: Proc,
    addr: SocketAddr,
}

fn start(spec: LabSpec) -> Running {
    let lab = Lab::new(spec).expect("lab");
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    // The admin pages (loopback of the server's namespace) for the link metrics.
    let (server, addr) = rendezvous(cmd, &["--admin", "127.0.0.1:0"]);
    for site in Site::ALL {
        syn_counter(&lab, Host::router(site));
    }
    Running {
        addr: SocketAddr::new(lab.server_ip().into(), addr.port()),
        lab,
        server,
    }
}

/// Counts SYNs (without ACK) forwarded from the LAN to the WAN on `router`.
fn syn_counter(lab: &Lab, router: Host) {
    for args in [
        "add table inet syns",
        "add chain inet syns count { type filter hook forward priority -300 ; }",
        r#"add rule inet syns count iifname "lan" oifname "wan" tcp flags & (syn | ack) == syn counter"#,
    ] {
        let args: Vec<&str> = shell_words(args);
        lab.run(router, "nft", &args).expect("nft");
    }
}

/// Splits an nft command on spaces, keeping quoted words whole.
fn shell_words(s: &str) -> Vec<&str> {
    s.split(' ').filter(|w| !w.is_empty()).collect()
}

fn syns(lab: &Lab, router: Host) -> u64 {
    let out = lab
        .run(router, "nft", &["list", "chain", "inet", "syns", "count"])
        .expect("nft list");
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

fn peer(
    r: &Running,
    host: Host,
    code: &str,
    input: Vec<u8>,
) -> (Proc, std::thread::JoinHandle<Vec<u8>>) {
    let mut cmd = r.lab.command(host, bin("peer"));
    cmd.env_remove("PUNCHLINE_TOKEN").env("RUST_LOG", "info");
    cmd.args(["--server", &r.addr.to_string(), "pipe", "--code", code]);
    Proc::spawn_piped(&format!("peer {host:?}"), cmd, Input::Bytes(input))
}

struct Run {
    direct: bool,
    link: Duration,
    syns: [u64; 2],
    /// The spray's SYN that hit (its place in the spray), if one did (a crossing
    /// can also reach the easy side's listener first).
    hit: Option<usize>,
}

/// The `nth=` of a "a SYN of the spray hit" line in `log`.
fn spray_hit(log: &str) -> Option<usize> {
    let line = log.lines().find(|l| l.contains("a SYN of the spray hit"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("nth="))
        .and_then(|n| n.parse().ok())
}

/// One pipe run between A and B.
fn run_once(r: &Running, run: usize) -> Run {
    let code = format!("bday-{run}");
    let (a_in, b_in) = (data(RUN_BYTES, run as u64), data(4096, 500 + run as u64));
    let before = r.lab.server_tcp_bytes().expect("counters");
    let syns_before = [syns(&r.lab, Host::RouterA), syns(&r.lab, Host::RouterB)];
    let started = Instant::now();
    let (mut pa, a_out) = peer(r, Host::A, &code, a_in.clone());
    let (mut pb, b_out) = peer(r, Host::B, &code, b_in.clone());
    pa.stderr.wait_for("link up:", Duration::from_secs(30));
    pb.stderr.wait_for("link up:", Duration::from_secs(30));
    let link = started.elapsed();
    let (sa, sb) = (
        pa.wait_exit(Duration::from_secs(60)),
        pb.wait_exit(Duration::from_secs(60)),
    );
    let server_bytes = r.lab.server_tcp_bytes().expect("counters") - before;
    let syns_after = [syns(&r.lab, Host::RouterA), syns(&r.lab, Host::RouterB)];
    let (ea, eb) = (pa.stderr.text(), pb.stderr.text());
    assert!(
        sa.success() && sb.success(),
        "run {run} failed:\nA: {ea}\nB: {eb}"
    );
    assert_eq!(
        sha256(&b_out.join().unwrap()),
        sha256(&a_in),
        "A→B data differs"
    );
    assert_eq!(
        sha256(&a_out.join().unwrap()),
        sha256(&b_in),
        "B→A data differs"
    );
    let direct = ea.contains("link up: direct") && eb.contains("link up: direct");
    assert!(
        ea.contains("birthday punch") && eb.contains("birthday punch"),
        "run {run}: no birthday punch:\nA: {ea}\nB: {eb}"
    );
    if direct {
        assert!(
            server_bytes < SERVER_BYTES_LIMIT,
            "run {run}: 'direct', but the server's namespace carried {server_bytes} bytes"
        );
    } else {
        assert!(
            server_bytes > 2 * RUN_BYTES as u64,
            "run {run}: neither direct nor relayed ({server_bytes} bytes):\nA: {ea}\nB: {eb}"
        );
        eprintln!("run {run}: relayed\nA: {ea}\nB: {eb}");
    }
    if link > Duration::from_millis(1500) {
        eprintln!("run {run}: slow link ({link:?}):\nA: {ea}\nB: {eb}");
    }
    Run {
        direct,
        link,
        hit: spray_hit(&ea).or_else(|| spray_hit(&eb)),
        syns: [
            syns_after[0] - syns_before[0],
            syns_after[1] - syns_before[1],
        ],
    }
}

fn cell(name: &str, spec: LabSpec, hard: Site) {
    if !lab::require_lab() {
        return;
    }
    let r = start(spec);
    let (hard_i, easy_i) = match hard {
        Site::A => (0, 1),
        Site::B => (1, 0),
    };
    let (mut direct, mut good) = (0, 0);
    let mut millis = Vec::new();
    let mut max_syns = [0u64; 2];
    let mut hits = Vec::new();
    for run in 0..RUNS {
        let x = run_once(&r, run);
        hits.push(x.hit);
        if x.direct {
            direct += 1;
            millis.push(x.link.as_millis() as u64);
            if x.link <= LINK_LIMIT {
                good += 1;
            }
        }
        max_syns = [max_syns[0].max(x.syns[0]), max_syns[1].max(x.syns[1])];
    }
    millis.sort_unstable();
    let median = millis.get(millis.len() / 2).copied().unwrap_or(0);
    let max = millis.last().copied().unwrap_or(0);
    println!(
        "BIRTHDAY case={name} direct={direct}/{RUNS} start_to_link_ms median={median} max={max} \
         max_syns_per_run easy={} hard={} hits (SYN of the spray) {hits:?}",
        max_syns[easy_i], max_syns[hard_i]
    );
    assert!(
        good + MAX_MISSES >= RUNS,
        "{name}: only {good}/{RUNS} direct within {LINK_LIMIT:?} ({direct} direct; times {millis:?} ms)"
    );
    // The cost caps: one SYN per easy socket; two per hard socket (the first, with a
    // low TTL, and one retransmission).
    assert!(
        max_syns[easy_i] <= BIRTHDAY_SPRAY as u64 + OTHER_SYNS,
        "{name}: the easy side sent {} SYNs in one run",
        max_syns[easy_i]
    );
    assert!(
        max_syns[hard_i] <= 2 * BIRTHDAY_SOCKETS as u64 + OTHER_SYNS,
        "{name}: the hard side sent {} SYNs in one run",
        max_syns[hard_i]
    );
    // And the punch did happen: the easy side's spray went out.
    assert!(
        max_syns[easy_i] > BIRTHDAY_SOCKETS as u64,
        "{name}: only {} SYNs from the easy side",
        max_syns[easy_i]
    );
}

#[test]
fn port_restricted_x_symmetric_goes_direct() {
    cell(
        "pr x sym",
        LabSpec::default().nat(Site::B, NatProfile::Symmetric),
        Site::B,
    );
}

#[test]
fn symmetric_x_port_restricted_goes_direct() {
    cell(
        "sym x pr",
        LabSpec::default().nat(Site::A, NatProfile::Symmetric),
        Site::A,
    );
}

/// A symmetric NAT that hands out ports in sequence: the easy side's first SYNs go to
/// the ports just above the one the server saw (BIRTHDAY_PREDICT of them), and one of
/// those hits, within the first few SYNs, where a NAT drawing ports at random needs
/// ~250 on average (64,512 ports / 256 sockets).
#[test]
fn sequential_nat_is_predicted() {
    if !lab::require_lab() {
        return;
    }
    let r = start(LabSpec::default().nat(Site::B, NatProfile::SymmetricSequential));
    let mut hits = Vec::new();
    for run in 0..SEQUENTIAL_RUNS {
        let x = run_once(&r, 100 + run);
        assert!(x.direct, "run {run} not direct");
        hits.push(x.hit);
    }
    println!("BIRTHDAY case=pr x sym-sequential hits (SYN of the spray) {hits:?}");
    let predicted = hits
        .iter()
        .filter(|h| h.is_some_and(|n| n < PREDICTED_HIT_WITHIN))
        .count();
    assert!(
        predicted + MAX_MISSES >= SEQUENTIAL_RUNS,
        "the prediction hit within {PREDICTED_HIT_WITHIN} SYNs only {predicted}/{SEQUENTIAL_RUNS} times: {hits:?}"
    );
}

/// Runs of [`sequential_nat_is_predicted`]: with fully random ports a hit within
/// [`PREDICTED_HIT_WITHIN`] SYNs has probability ~12% per run, so 4 of 5 would pass
/// by chance about once in a thousand.
const SEQUENTIAL_RUNS: usize = 5;
/// A predicted hit comes within this many SYNs: the hard side's sockets take the next
/// ports in order, so the first predicted ones are theirs (a few more if other
/// connections of the hard site took ports in between).
const PREDICTED_HIT_WITHIN: usize = 32;

/// Both symmetric, plain server: the server says so at pairing and the link is
/// relayed at once, no punch tried.
#[test]
fn symmetric_x_symmetric_relays_at_once() {
    if !lab::require_lab() {
        return;
    }
    let r = start(
        LabSpec::default()
            .nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::Symmetric),
    );
    let (a_in, b_in) = (data(RUN_BYTES, 1), data(4096, 2));
    let (mut pa, a_out) = peer(&r, Host::A, "both-sym", a_in.clone());
    let (mut pb, b_out) = peer(&r, Host::B, "both-sym", b_in.clone());
    let (sa, sb) = (
        pa.wait_exit(Duration::from_secs(60)),
        pb.wait_exit(Duration::from_secs(60)),
    );
    let (ea, eb) = (pa.stderr.text(), pb.stderr.text());
    assert!(sa.success() && sb.success(), "A: {ea}\nB: {eb}");
    assert_eq!(sha256(&b_out.join().unwrap()), sha256(&a_in));
    assert_eq!(sha256(&a_out.join().unwrap()), sha256(&b_in));
    for e in [&ea, &eb] {
        assert!(
            e.contains("paired; relayed: both NATs map per destination"),
            "{e}"
        );
        assert!(!e.contains("punching"), "a punch was tried:\n{e}");
        let line = e.lines().find(|l| l.contains("link up: relayed")).unwrap();
        let ms: u64 = line
            .split(" ms after")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no figure in {line:?}"));
        println!("BIRTHDAY case=sym x sym relayed {ms} ms after the relay request");
        assert!(ms < 1000, "relayed only {ms} ms after the request:\n{e}");
    }
}

/// TCP sockets `pid` holds now (entries of /proc/PID/fd that are sockets).
fn sockets_of(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// TCP sockets in `host`'s namespace in `state` (ss's state names), all processes.
fn tcp_in_state(lab: &Lab, host: Host, state: &str) -> Vec<String> {
    lab.run(host, "ss", &["-tanH", "state", state])
        .expect("ss")
        .lines()
        .map(str::to_string)
        .collect()
}

/// The cost of one birthday punch, counted from outside the peers: sockets each peer
/// process holds (sampled from /proc every few ms while the link comes up), SYNs each
/// router forwards (nftables), both within the `BIRTHDAY_*` caps; and afterwards no
/// socket of the punch is left: nothing in SYN-SENT or SYN-RECV in either host's
/// namespace, and each peer back to its sockets before the punch plus the link's.
#[test]
fn birthday_cost_stays_within_caps_and_losers_are_closed() {
    if !lab::require_lab() {
        return;
    }
    let r = start(LabSpec::default().nat(Site::B, NatProfile::Symmetric));
    let mut cmd = r.lab.command(Host::A, bin("stream-check"));
    cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", cmd);
    let line = echo
        .stdout
        .wait_for("listening on", Duration::from_secs(20));
    let echo_port = line.rsplit(':').next().unwrap().trim().to_string();
    let spawn = |host: Host, args: &[&str]| {
        let mut cmd = r.lab.command(host, bin("peer"));
        cmd.env_remove("PUNCHLINE_TOKEN")
            .env_remove("PUNCHLINE_SECRET")
            .env("RUST_LOG", "info")
            .args(["--server", &r.addr.to_string()])
            .args(args);
        Proc::spawn(&format!("peer {host:?}"), cmd)
    };
    let local = format!("127.0.0.1:{echo_port}");
    // Owner on the easy side (A), visitor on the hard side (B).
    let owner = spawn(
        Host::A,
        &["serve", "svc", "--local", &local, "--secret", "s3cret"],
    );
    owner.stderr.wait_for("registered", Duration::from_secs(20));
    owner
        .stderr
        .wait_for("own TCP mapping measured", Duration::from_secs(20));
    let base_owner = sockets_of(owner.child.id());
    let syns_before = [syns(&r.lab, Host::RouterA), syns(&r.lab, Host::RouterB)];
    let visitor = spawn(
        Host::B,
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
    let (owner_pid, visitor_pid) = (owner.child.id(), visitor.child.id());
    // Sample both processes' sockets until well past the punch window.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = [0usize; 2];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak[0] = peak[0].max(sockets_of(owner_pid));
                peak[1] = peak[1].max(sockets_of(visitor_pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let up = visitor.stderr.wait_for("link up:", Duration::from_secs(30));
    assert!(
        up.contains("link up: direct"),
        "{up}\nowner: {}\nvisitor: {}",
        owner.stderr.text(),
        visitor.stderr.text()
    );
    // Every loser goes: no half-open socket left in either namespace, and each peer
    // holds only what it held before plus the link (bounded wait: probes live at most
    // BIRTHDAY_PROBE_LIFETIME, the punch BIRTHDAY_WINDOW).
    let until = Instant::now() + BIRTHDAY_WINDOW + Duration::from_secs(10);
    let mut left;
    loop {
        left = Vec::new();
        for h in [Host::A, Host::B] {
            for state in ["syn-sent", "syn-recv"] {
                left.extend(tcp_in_state(&r.lab, h, state));
            }
        }
        if left.is_empty() && sockets_of(owner_pid) <= base_owner + 2 {
            break;
        }
        assert!(
            Instant::now() < until,
            "punch sockets left: {left:?}; owner holds {} sockets (before the punch {base_owner})",
            sockets_of(owner_pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let syns_after = [syns(&r.lab, Host::RouterA), syns(&r.lab, Host::RouterB)];
    let cost = [
        syns_after[0] - syns_before[0],
        syns_after[1] - syns_before[1],
    ];
    let (after_owner, after_visitor) = (sockets_of(owner_pid), sockets_of(visitor_pid));
    println!(
        "BIRTHDAY cost: easy side peak {} sockets (before {base_owner}, after {after_owner}), \
         {} SYNs; hard side peak {} sockets (after {after_visitor}), {} SYNs",
        peak[0], cost[0], peak[1], cost[1]
    );
    // Within the caps (plus the handful of connections to the server and the link).
    const OTHER_SOCKETS: usize = 16;
    assert!(
        peak[0] <= BIRTHDAY_SPRAY + OTHER_SOCKETS,
        "easy side peak {}",
        peak[0]
    );
    assert!(
        peak[1] <= BIRTHDAY_SOCKETS + OTHER_SOCKETS,
        "hard side peak {}",
        peak[1]
    );
    assert!(
        cost[0] <= BIRTHDAY_SPRAY as u64 + OTHER_SYNS,
        "easy SYNs {}",
        cost[0]
    );
    assert!(
        cost[1] <= 2 * BIRTHDAY_SOCKETS as u64 + OTHER_SYNS,
        "hard SYNs {}",
        cost[1]
    );
    // And the sampler did see the punch: the hard side's sockets open all at once.
    assert!(
        peak[1] > BIRTHDAY_SOCKETS / 2,
        "the hard side never held more than {} sockets: was there a birthday punch?\n{}",
        peak[1],
        visitor.stderr.text()
    );
    assert!(
        after_visitor <= OTHER_SOCKETS,
        "visitor still holds {after_visitor} sockets"
    );
    // The server counts it as a birthday link (once, not as a plain direct one).
    let line = r.server.stdout.wait_for("admin on", Duration::from_secs(5));
    let admin = line
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let url = format!("http://{admin}/metrics");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let text = r
            .lab
            .run(Host::Server, "curl", &["-sf", &url])
            .expect("metrics");
        if text.contains("punchline_links_total{kind=\"birthday\"} 1") {
            assert!(
                text.contains("punchline_links_total{kind=\"direct\"} 0"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < until, "no birthday link counted:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(echo);
}
