//! Proves the NAT lab is what it claims, with real traffic: delays (RTTs), mapping
//! behaviour of each NAT profile, what unsolicited SYNs get, CGNAT and same-NAT
//! layouts, teardown (also after a panic), and the delay program's throughput.
//!
//! Programs run in the lab through `lab-tcp` (this crate's helper binary), whose
//! one-line `key=value` reports the tests parse.
#![allow(clippy::unwrap_used)] // test helpers, outside #[test] functions

use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab::{CgnatProfile, Host, Lab, LabSpec, NatProfile, Site, Unsolicited};

const LAB_TCP: &str = env!("CARGO_BIN_EXE_lab-tcp");
const LAB_DELAY: &str = env!("CARGO_BIN_EXE_lab-delay");

fn new_lab(spec: LabSpec) -> Lab {
    Lab::new(spec.delay_binary(LAB_DELAY)).expect("lab builds")
}

/// `key=value` field of a `lab-tcp` report line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn addr_field(line: &str, key: &str) -> SocketAddrV4 {
    field(line, key).parse().unwrap()
}

fn ms_field(line: &str, key: &str) -> f64 {
    field(line, key).parse().unwrap()
}

/// A `lab-tcp listen` (or `udp-recv`) running in the lab; killed on drop.
struct Listener {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Listener {
    fn start(lab: &Lab, host: Host, args: &[&str]) -> Listener {
        let mut child = lab
            .command(host, LAB_TCP)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut l = Listener { child, lines };
        let first = l.line(Duration::from_secs(5));
        assert!(first.starts_with("listening"), "listener said {first:?}");
        l
    }

    fn tcp(lab: &Lab, host: Host, port: u16, mode: &str) -> Listener {
        Listener::start(lab, host, &["listen", &port.to_string(), "--mode", mode])
    }

    fn line(&mut self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no line from listener within {timeout:?}: {e}"))
    }

    /// The next line starting with `prefix` (others skipped).
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = self.line(deadline.saturating_duration_since(Instant::now()));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    fn nothing_within(&mut self, timeout: Duration) -> bool {
        self.lines.recv_timeout(timeout).is_err()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `lab-tcp args...` in `host` to completion; returns its report line.
fn lab_tcp(lab: &Lab, host: Host, args: &[&str]) -> String {
    let out = lab.command(host, LAB_TCP).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some_and(|c| c == 0 || c == 2),
        "lab-tcp {args:?} failed: {:?} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().to_string()
}

/// Connects from `host` (optionally from local port `bind`) and returns the report.
fn connect(lab: &Lab, host: Host, to: SocketAddrV4, bind: u16, extra: &[&str]) -> String {
    let mut args = vec!["connect".to_string(), to.to_string()];
    if bind != 0 {
        args.extend(["--bind".into(), bind.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab_tcp(lab, host, &args)
}

fn sock(ip: std::net::Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// The public source addresses the server sees for two connections from `host`'s local
/// port `bind`, one to each server address.
fn mapped_ports(
    lab: &Lab,
    host: Host,
    bind: u16,
    server_port: u16,
) -> (SocketAddrV4, SocketAddrV4) {
    let mut listener = Listener::tcp(lab, Host::Server, server_port, "accept");
    let mut seen = Vec::new();
    for ip in [lab.server_ip(), lab.server_alt_ip()] {
        let report = connect(lab, host, sock(ip, server_port), bind, &[]);
        assert!(report.starts_with("connected"), "{report}");
        seen.push(addr_field(&listener.expect("accepted"), "peer"));
    }
    (seen[0], seen[1])
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

#[test]
fn rtts_and_masquerade() {
    if !lab::require_lab() {
        return;
    }
    let lab = new_lab(LabSpec::default());

    // A <-> B through a port forward on router A: both delays, twice.
    lab.forward_port(Site::A, 5001).unwrap();
    let _echo_a = Listener::tcp(&lab, Host::A, 5001, "echo");
    let ab = connect(
        &lab,
        Host::B,
        sock(lab.public_ip(Site::A), 5001),
        0,
        &["--rtt", "10"],
    );
    let ab_connect = ms_field(&ab, "connect_ms");
    let ab_rtts = ab.lines().last().unwrap();
    let ab_rtt = ms_field(ab_rtts, "min");
    println!("A<->B: connect {ab_connect:.1} ms, echo {ab_rtts}");
    assert!(ab_connect >= 40.0 && ab_rtt >= 40.0, "{ab}");
    // One RTT for the handshake: no ARP across the delay lines on first contact.
    assert!(ab_connect < 60.0 && ab_rtt < 55.0, "{ab}");

    // Server <-> A and server <-> B.
    let _echo_srv = Listener::tcp(&lab, Host::Server, 5002, "echo");
    for (host, expect) in [(Host::A, 20.0), (Host::B, 30.0)] {
        let r = connect(&lab, host, sock(lab.server_ip(), 5002), 0, &["--rtt", "10"]);
        let rtts = r.lines().last().unwrap();
        let min = ms_field(rtts, "min");
        println!(
            "server<->{host:?}: connect {:.1} ms, echo {rtts}",
            ms_field(&r, "connect_ms")
        );
        // The minimum: other tests running in parallel may delay single samples.
        assert!(min >= expect && min < expect + 5.0, "{r}");
    }

    // Masquerade: the server sees router A's public address, and a port-restricted
    // (endpoint-independent) mapping keeps the source port for both destinations.
    let (to_main, to_alt) = mapped_ports(&lab, Host::A, 40001, 5003);
    println!("port-restricted: host A :40001 seen as {to_main} and {to_alt}");
    assert_eq!(*to_main.ip(), lab.public_ip(Site::A));
    assert_eq!(to_main, to_alt);
    assert_eq!(to_main.port(), 40001);
}

#[test]
fn symmetric_and_full_cone() {
    if !lab::require_lab() {
        return;
    }
    let lab = new_lab(
        LabSpec::default()
            .nat(Site::A, NatProfile::Symmetric)
            .nat(Site::B, NatProfile::FullCone)
            .delay_ms(Site::A, 0)
            .delay_ms(Site::B, 0),
    );

    // Symmetric: a new public port per destination.
    let (to_main, to_alt) = mapped_ports(&lab, Host::A, 40001, 5003);
    println!("symmetric: host A :40001 seen as {to_main} and {to_alt}");
    assert_eq!(*to_main.ip(), lab.public_ip(Site::A));
    assert_ne!(to_main.port(), to_alt.port());

    // Switched to port-restricted while running: the port is kept again.
    lab.set_nat(Site::A, NatProfile::PortRestricted).unwrap();
    let (to_main, to_alt) = mapped_ports(&lab, Host::A, 40002, 5004);
    println!("after set_nat(PortRestricted): host A :40002 seen as {to_main} and {to_alt}");
    assert_eq!(to_main, to_alt);

    // Full cone: once host B's port 40003 is mapped (by a connection to the server's
    // main address), anyone reaches host B's listener there: here the server's other
    // address, which host B never talked to.
    let _listen_b = Listener::tcp(&lab, Host::B, 40003, "accept");
    let mut srv = Listener::tcp(&lab, Host::Server, 5005, "accept");
    let out = connect(&lab, Host::B, sock(lab.server_ip(), 5005), 40003, &[]);
    let mapped = addr_field(&srv.expect("accepted"), "peer");
    assert!(out.starts_with("connected"), "{out}");
    assert_eq!(mapped, sock(lab.public_ip(Site::B), 40003));
    let inbound = connect(&lab, Host::Server, mapped, 0, &["--timeout-ms", "2000"]);
    println!("full cone: server -> {mapped}: {inbound}");
    assert!(inbound.starts_with("connected"), "{inbound}");
}

/// Adds counters of inbound RSTs and ICMP destination-unreachables to the server.
fn add_probe_counters(lab: &Lab) {
    for cmd in [
        "add table inet probe",
        "add counter inet probe resets",
        "add counter inet probe unreachables",
        "add chain inet probe input { type filter hook input priority -310; }",
        "add rule inet probe input tcp flags & rst == rst counter name \"resets\"",
        "add rule inet probe input icmp type destination-unreachable counter name \"unreachables\"",
    ] {
        lab.run(Host::Server, "nft", &[cmd]).unwrap();
    }
}

/// (RSTs, ICMP errors) received by the server so far.
fn probe_counters(lab: &Lab) -> (u64, u64) {
    let out = lab
        .run(
            Host::Server,
            "nft",
            &["list", "counters", "table", "inet", "probe"],
        )
        .unwrap();
    let packets: Vec<u64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("packets "))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    (packets[0], packets[1])
}

#[test]
fn unsolicited_syn_behaviour() {
    if !lab::require_lab() {
        return;
    }
    let lab = new_lab(LabSpec::default().delay_ms(Site::B, 0));
    add_probe_counters(&lab);
    let public_a = lab.public_ip(Site::A);

    // Host A maps its port 41000 (a connection to the server, held open) and listens
    // there too: a SYN from elsewhere to that public port is unsolicited.
    let _listen_a = Listener::tcp(&lab, Host::A, 41000, "accept");
    let mut srv = Listener::tcp(&lab, Host::Server, 6000, "accept");
    let mut hold = lab
        .command(Host::A, LAB_TCP)
        .args([
            "connect",
            &format!("{}:6000", lab.server_ip()),
            "--bind",
            "41000",
            "--hold-ms",
            "30000",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The mapping exists once the held connection has reached the server.
    srv.expect("accepted");
    let target = sock(public_a, 41000);

    for (u, expect) in [
        (Unsolicited::Rst, "refused"),
        (Unsolicited::Drop, "timeout"),
        (Unsolicited::Icmp, "refused"),
    ] {
        lab.set_unsolicited(Site::A, u).unwrap();
        let before = probe_counters(&lab);
        let r = connect(&lab, Host::Server, target, 0, &["--timeout-ms", "1000"]);
        let after = probe_counters(&lab);
        let (rst, icmp) = (after.0 - before.0, after.1 - before.1);
        println!("{u:?}: server -> {target}: {r} (RSTs {rst}, ICMP errors {icmp})");
        assert_eq!(field(&r, "kind"), expect, "{r}");
        match u {
            Unsolicited::Rst => {
                assert!(ms_field(&r, "connect_ms") < 100.0, "{r}");
                assert_eq!((rst, icmp), (1, 0));
            }
            Unsolicited::Drop => assert_eq!((rst, icmp), (0, 0)),
            Unsolicited::Icmp => {
                assert!(ms_field(&r, "connect_ms") < 100.0, "{r}");
                assert_eq!((rst, icmp), (0, 1));
            }
        }
    }

    // UDP: an unsolicited datagram is rejected without keeping state, so host A's later
    // datagram from that very port to that very peer still keeps its port.
    for (u, port) in [(Unsolicited::Rst, 42000u16), (Unsolicited::Icmp, 42001)] {
        lab.set_unsolicited(Site::A, u).unwrap();
        let before = probe_counters(&lab);
        let sent = lab_tcp(
            &lab,
            Host::Server,
            &[
                "udp-send",
                &sock(public_a, port).to_string(),
                "--bind",
                "7000",
            ],
        );
        assert!(sent.starts_with("sent"), "{sent}");
        let deadline = Instant::now() + Duration::from_secs(2);
        while probe_counters(&lab).1 == before.1 {
            assert!(
                Instant::now() < deadline,
                "{u:?}: no ICMP for unsolicited UDP"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut recv = Listener::start(
            &lab,
            Host::Server,
            &["udp-recv", "7000", "--timeout-ms", "3000"],
        );
        let sent = lab_tcp(
            &lab,
            Host::A,
            &[
                "udp-send",
                &sock(lab.server_ip(), 7000).to_string(),
                "--bind",
                &port.to_string(),
            ],
        );
        assert!(sent.starts_with("sent"), "{sent}");
        let from = addr_field(&recv.expect("from"), "peer");
        println!("{u:?}: unsolicited UDP to :{port} rejected; host A :{port} then seen as {from}");
        assert_eq!(from, sock(public_a, port));
    }

    // Full cone: the same unsolicited SYN now reaches host A's listener.
    lab.set_unsolicited(Site::A, Unsolicited::Rst).unwrap();
    lab.set_nat(Site::A, NatProfile::FullCone).unwrap();
    let mut listen = Listener::tcp(&lab, Host::A, 41001, "accept");
    let out = connect(&lab, Host::A, sock(lab.server_ip(), 6000), 41001, &[]);
    assert!(out.starts_with("connected"), "{out}");
    let r = connect(
        &lab,
        Host::Server,
        sock(public_a, 41001),
        0,
        &["--timeout-ms", "1000"],
    );
    println!("FullCone: server -> {public_a}:41001: {r}");
    assert!(r.starts_with("connected"), "{r}");
    let accepted = addr_field(&listen.expect("accepted"), "peer");
    assert_eq!(*accepted.ip(), lab.server_ip());
    // ...while a port-restricted NAT never let it through to the listener on 41000.
    assert!(listen.nothing_within(Duration::from_millis(1)));
    let _ = hold.kill();
    let _ = hold.wait();
}

#[test]
fn cgnat_layouts_and_same_nat() {
    if !lab::require_lab() {
        return;
    }
    let lab = new_lab(
        LabSpec::default()
            .cgnat(Site::A, CgnatProfile::EndpointIndependent)
            .cgnat(Site::B, CgnatProfile::Symmetric)
            .delay_ms(Site::B, 0),
    );
    assert_eq!(lab.host_ip(Host::RouterA).to_string(), "100.64.1.2");
    assert_eq!(lab.host_ip(Host::CgnatA), lab.public_ip(Site::A));

    let (to_main, to_alt) = mapped_ports(&lab, Host::A, 40001, 5003);
    println!("behind EIM CGNAT: host A :40001 seen as {to_main} and {to_alt}");
    assert_eq!(*to_main.ip(), lab.public_ip(Site::A));
    assert_eq!(to_main, to_alt);
    let (to_main, to_alt) = mapped_ports(&lab, Host::B, 40001, 5004);
    println!("behind symmetric CGNAT: host B :40001 seen as {to_main} and {to_alt}");
    assert_eq!(*to_main.ip(), lab.public_ip(Site::B));
    assert_ne!(to_main.port(), to_alt.port());

    // A port forward goes through the CGNAT and the home router.
    lab.forward_port(Site::A, 5006).unwrap();
    let mut listen = Listener::tcp(&lab, Host::A, 5006, "accept");
    let r = connect(
        &lab,
        Host::Server,
        sock(lab.public_ip(Site::A), 5006),
        0,
        &[],
    );
    assert!(r.starts_with("connected"), "{r}");
    listen.expect("accepted");
    drop(lab);

    // Both hosts behind router A.
    let lab = new_lab(LabSpec::default().same_nat());
    assert_eq!(lab.host_ip(Host::B).to_string(), "10.0.1.3");
    assert_eq!(lab.public_ip(Site::B), lab.public_ip(Site::A));
    assert_eq!(lab.namespace(Host::RouterB), lab.namespace(Host::RouterA));
    let mut listen_b = Listener::tcp(&lab, Host::B, 5007, "accept");
    let r = connect(&lab, Host::A, sock(lab.host_ip(Host::B), 5007), 0, &[]);
    assert!(r.starts_with("connected"), "{r}");
    assert_eq!(
        *addr_field(&listen_b.expect("accepted"), "peer").ip(),
        lab.host_ip(Host::A)
    );
    let mut srv = Listener::tcp(&lab, Host::Server, 5008, "accept");
    for host in [Host::A, Host::B] {
        let r = connect(&lab, host, sock(lab.server_ip(), 5008), 0, &[]);
        assert!(r.starts_with("connected"), "{r}");
        assert_eq!(
            *addr_field(&srv.expect("accepted"), "peer").ip(),
            lab.public_ip(Site::A)
        );
    }
    // Without hairpinning, host B cannot reach host A through A's public mapping.
    let _listen_a = Listener::tcp(&lab, Host::A, 40010, "accept");
    let r = connect(&lab, Host::A, sock(lab.server_ip(), 5008), 40010, &[]);
    assert!(r.starts_with("connected"), "{r}");
    let r = connect(&lab, Host::B, sock(lab.public_ip(Site::A), 40010), 0, &[]);
    assert_eq!(field(&r, "kind"), "refused", "{r}");
}

#[test]
fn same_nat_hairpin() {
    if !lab::require_lab() {
        return;
    }
    let lab = new_lab(LabSpec::default().same_nat().hairpin(Site::A));
    let public = lab.public_ip(Site::A);
    // Host A's port 40010 is mapped (by a connection to the server); host B reaches it
    // at the public address and appears with its own public address and port.
    let mut listen_a = Listener::tcp(&lab, Host::A, 40010, "accept");
    let _srv = Listener::tcp(&lab, Host::Server, 5008, "accept");
    let r = connect(&lab, Host::A, sock(lab.server_ip(), 5008), 40010, &[]);
    assert!(r.starts_with("connected"), "{r}");
    let r = connect(&lab, Host::B, sock(public, 40010), 40011, &[]);
    println!("hairpin: host B -> {public}:40010: {r}");
    assert!(r.starts_with("connected"), "{r}");
    let peer = addr_field(&listen_a.expect("accepted"), "peer");
    assert_eq!(peer, sock(public, 40011));

    // Port forwards hairpin too.
    lab.forward_port_to(Host::A, 5020).unwrap();
    let mut listen = Listener::tcp(&lab, Host::A, 5020, "accept");
    let r = connect(&lab, Host::B, sock(public, 5020), 0, &[]);
    assert!(r.starts_with("connected"), "{r}");
    assert_eq!(*addr_field(&listen.expect("accepted"), "peer").ip(), public);
}

#[test]
fn teardown_removes_everything() {
    if !lab::require_lab() {
        return;
    }
    let lab = new_lab(LabSpec::default().second_host(Site::A));
    let prefix = lab.prefix().to_string();
    assert_eq!(
        lab_namespaces(&prefix).len(),
        7,
        "{:?}",
        lab_namespaces(&prefix)
    );
    drop(lab);
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());

    // A panicking test: the lab is dropped while unwinding, and the program the test
    // left running in it is killed with it.
    let (tx, rx) = mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let lab = new_lab(LabSpec::default());
        let sleeper = lab.command(Host::A, "sleep").arg("60").spawn().unwrap();
        let delays = std::process::Command::new("ip")
            .args(["netns", "pids", &lab.namespace(Host::Internet)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        tx.send((lab.prefix().to_string(), sleeper, delays))
            .unwrap();
        panic!("test failure inside a lab");
    });
    assert!(result.is_err());
    let (prefix, mut sleeper, delays) = rx.recv().unwrap();
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());
    let status = sleeper.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "sleep ended with {status}, not by the lab"
    );
    let gone = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    };
    let delays = delays.unwrap();
    assert_eq!(delays.split_whitespace().count(), 2, "{delays}");
    for pid in delays.split_whitespace() {
        assert!(gone(pid), "lab-delay {pid} survived the lab");
    }
}

#[test]
fn failed_build_leaves_nothing() {
    if !lab::require_lab() {
        return;
    }
    // A delay program that exits at once: Lab::new fails after the rest of the lab
    // was built.
    let err = Lab::new(LabSpec::default().delay_binary("/bin/false")).unwrap_err();
    println!("failed build: {err}");
    let message = err.to_string();
    let ns = message
        .split_whitespace()
        .find(|w| w.starts_with("pl-") && w.ends_with("-inet"))
        .unwrap_or_else(|| panic!("no namespace named in {message:?}"));
    let prefix = ns.trim_end_matches("-inet");
    assert_eq!(lab_namespaces(prefix), Vec::<String>::new());
}

#[test]
fn delayed_path_throughput() {
    if !lab::require_lab() {
        return;
    }
    const BYTES: u64 = 100_000_000;
    let lab = new_lab(LabSpec::default());
    let mut sink_srv = Listener::tcp(&lab, Host::Server, 5010, "sink");
    lab.forward_port(Site::A, 5011).unwrap();
    let mut sink_a = Listener::tcp(&lab, Host::A, 5011, "sink");

    // Host A -> server: through one lab-delay (RTT 20 ms).
    let before = lab.server_tcp_bytes().unwrap();
    let r = connect(
        &lab,
        Host::A,
        sock(lab.server_ip(), 5010),
        0,
        &["--send", &BYTES.to_string()],
    );
    let sent = r.lines().last().unwrap();
    println!("100 MB host A -> server (RTT 20 ms): {sent}");
    assert_eq!(field(sent, "bytes"), BYTES.to_string(), "{r}");
    sink_srv.expect("received");
    let server_bytes = lab.server_tcp_bytes().unwrap() - before;
    assert!(server_bytes > BYTES, "server counted {server_bytes} bytes");

    // Host B -> host A via the port forward: through both (RTT 50 ms); the server's
    // link carries none of it.
    let before = lab.server_tcp_bytes().unwrap();
    let r = connect(
        &lab,
        Host::B,
        sock(lab.public_ip(Site::A), 5011),
        0,
        &["--send", &BYTES.to_string()],
    );
    let sent = r.lines().last().unwrap();
    println!("100 MB host B -> host A (RTT 50 ms): {sent}");
    assert_eq!(field(sent, "bytes"), BYTES.to_string(), "{r}");
    sink_a.expect("received");
    // (The first transfer's closing handshake may still land: a few packets.)
    let server_bytes = lab.server_tcp_bytes().unwrap() - before;
    assert!(
        server_bytes < 1000,
        "server link carried {server_bytes} bytes"
    );
    let mbit: f64 = field(sent, "mbit_per_s").parse().unwrap();
    assert!(mbit > 100.0, "lab-delay too slow: {mbit} Mbit/s");
}
