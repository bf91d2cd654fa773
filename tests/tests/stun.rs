//! STUN interoperability and hostile input, on loopback with real programs:
//!
//! * our client (`peer nat-check --stun`) against coturn, a reference STUN server
//!   (Debian package `coturn`), started with two addresses and an alternate port so
//!   that it speaks RFC 5780;
//! * standard clients against our server: Debian's `stun` (package `stun-client`, an
//!   RFC 3489 client) and coturn's `turnutils_natdiscovery` (RFC 5780), which must see
//!   OTHER-ADDRESS / CHANGED-ADDRESS and RESPONSE-ORIGIN when the server has two
//!   addresses;
//! * malformed datagrams (truncated, wrong cookie, huge attribute lengths, oversized)
//!   dropped while the server keeps answering, STUN over TCP closed on junk, and no
//!   response ever more than `STUN_AMPLIFICATION` times its request.
//!
//! Loopback has no NAT: every check here expects "no NAT" behaviour (endpoint-
//! independent everything). The NAT lab (`natcheck_lab.rs`) checks real NATs.
//!
//! coturn and stun-client come from `tests/setup.sh`; without them a test is skipped
//! with a reason outside CI and fails in CI.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    defaults::STUN_AMPLIFICATION,
    stun::{self, Change, Class},
};
use support::*;

const T: Duration = Duration::from_secs(20);

/// Whether `program` is installed; panics in CI if not.
fn have(program: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).exists()))
        .unwrap_or(false);
    if !found {
        let msg = format!(
            "`{program}` is missing: install the `{package}` package (tests/setup.sh does)"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    found
}

/// Our server with two addresses on loopback: returns it, its primary address (STUN
/// and TCP) and its alternate address.
fn server_with_alt() -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (p, addr) = rendezvous(cmd, &["--bind", "127.0.0.1", "--alt-addr", "127.0.0.2:0"]);
    let alt: SocketAddr = p
        .stdout
        .wait_for("stun alternate", T)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    (p, addr, alt)
}

fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `req` and returns the first datagram that comes back (and its source).
fn exchange(s: &UdpSocket, to: SocketAddr, req: &[u8]) -> (Vec<u8>, SocketAddr) {
    s.send_to(req, to).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("an answer");
    (buf[..n].to_vec(), from)
}

/// A free port on both 127.0.0.1 and 127.0.0.2, UDP and TCP (checked, then released).
fn free_port_pair() -> (u16, u16) {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p >= 65000 {
            continue;
        }
        let ok = [p, p + 1].iter().all(|&port| {
            ["127.0.0.1", "127.0.0.2"].iter().all(|ip| {
                std::net::TcpListener::bind((*ip, port)).is_ok()
                    && (port == p && *ip == "127.0.0.1" || UdpSocket::bind((*ip, port)).is_ok())
            })
        });
        if ok {
            return (p, p + 1);
        }
    }
}

/// coturn as an RFC 5780 STUN server on 127.0.0.1 and 127.0.0.2, ports `p` and `p+1`;
/// returns once all its UDP and TCP listeners are open.
fn coturn() -> (Proc, u16, u16) {
    let (p, alt) = free_port_pair();
    let dir = std::env::temp_dir().join(format!("punchline-coturn-{}-{p}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("turnserver");
    cmd.args([
        "-c",
        "/dev/null", // Debian's /etc/turnserver.conf sets no-rfc5780
        "-v",
        "--listening-ip",
        "127.0.0.1",
        "--listening-ip",
        "127.0.0.2",
        "--listening-port",
        &p.to_string(),
        "--alt-listening-port",
        &alt.to_string(),
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file",
        "stdout",
        "--simple-log",
        "--pidfile",
        dir.join("turnserver.pid").to_str().unwrap(),
        "--userdb",
        dir.join("turndb").to_str().unwrap(),
    ]);
    let proc = Proc::spawn("turnserver", cmd);
    for ip in ["127.0.0.1", "127.0.0.2"] {
        for port in [p, alt] {
            proc.stdout
                .wait_for(&format!("UDP listener opened on: {ip}:{port}"), T);
            proc.stdout
                .wait_for(&format!("TCP listener opened on : {ip}:{port}"), T);
        }
    }
    (proc, p, alt)
}

/// Runs `peer [global] nat-check [sub]` and returns its stdout (it must succeed).
fn nat_check(global: &[&str], sub: &[&str]) -> String {
    let out = local("peer")
        .env_remove("PUNCHLINE_TOKEN")
        .env_remove("PUNCHLINE_SERVER")
        .args(global)
        .arg("nat-check")
        .args(sub)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "peer nat-check failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The value of `name` in the report section whose title starts with `section`
/// ("TCP", "UDP"), as printed: `  mapping          endpoint-independent`.
fn field(report: &str, section: &str, name: &str) -> String {
    let block = report
        .split("\n\n")
        .find(|b| b.starts_with(section))
        .unwrap_or_else(|| panic!("no {section} section in:\n{report}"));
    block
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in the {section} section of:\n{report}"))
        .trim()
        .to_string()
}

/// What every no-NAT report must say, for one transport.
fn assert_open(report: &str, section: &str, filtering: bool) {
    assert!(
        field(report, section, "public address").ends_with("— no NAT"),
        "{report}"
    );
    assert_eq!(field(report, section, "local port kept"), "yes", "{report}");
    assert_eq!(
        field(report, section, "mapping"),
        "endpoint-independent",
        "{report}"
    );
    if filtering {
        assert_eq!(
            field(report, section, "filtering"),
            "endpoint-independent",
            "{report}"
        );
    }
    assert_eq!(field(report, section, "hairpinning"), "yes", "{report}");
}

#[test]
fn our_client_classifies_through_coturn() {
    if !have("turnserver", "coturn") {
        return;
    }
    let (_coturn, p, alt) = coturn();
    let started = Instant::now();
    let stun_server = format!("127.0.0.1:{p}");
    let report = nat_check(&[], &["--stun", &stun_server]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        report.starts_with(&format!(
            "NAT check via stun {stun_server}, alternate 127.0.0.2:{alt}"
        )),
        "{report}"
    );
    assert_open(&report, "UDP", true);
    assert_open(&report, "TCP", false);
    // The mapping was measured against coturn's other IP, over both transports.
    let other_ip = format!("via 127.0.0.2:{p}");
    assert_eq!(report.matches(&other_ip).count(), 2, "{report}");
    assert!(report.contains("Verdict: no NAT"), "{report}");
    // The same for scripts.
    let json = nat_check(&[], &["--stun", &stun_server, "--json"]);
    assert!(json.trim_start().starts_with('{'), "{json}");
    assert_eq!(
        json.matches(r#""mapping": "endpoint-independent""#).count(),
        2,
        "{json}"
    );
    assert!(
        json.contains(r#""filtering": "endpoint-independent""#),
        "{json}"
    );
    assert!(
        json.contains(&format!(r#""alternate": "127.0.0.2:{alt}""#)),
        "{json}"
    );
}

#[test]
fn our_client_against_our_server_with_two_addresses() {
    let (_srv, addr, alt) = server_with_alt();
    let report = nat_check(&["--server", &addr.to_string()], &[]);
    assert!(
        report.starts_with(&format!("NAT check via rendezvous {addr}, alternate {alt}")),
        "{report}"
    );
    assert_open(&report, "UDP", true);
    // TCP filtering too: the server dialed back from its other IP.
    assert_open(&report, "TCP", true);
    // TCP asked the Noise port and STUN over TCP on the alternate IP.
    let other_ip = format!("via 127.0.0.2:{}", addr.port());
    assert_eq!(report.matches(&other_ip).count(), 2, "{report}");
    assert!(report.contains("Verdict: no NAT"), "{report}");
    assert!(report.contains("Direct links will work with"), "{report}");
}

#[test]
fn without_second_port_the_server_answers_and_the_client_says_what_it_cannot_tell() {
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (_srv, addr) = rendezvous(cmd, &["--bind", "127.0.0.1", "--alt-port", "off"]);
    let report = nat_check(&["--server", &addr.to_string()], &[]);
    assert!(
        field(&report, "UDP", "public address").ends_with("— no NAT"),
        "{report}"
    );
    assert_eq!(field(&report, "UDP", "mapping"), "not measured", "{report}");
    assert!(
        report.contains("the server has no alternate address"),
        "{report}"
    );
    assert!(
        field(&report, "TCP", "public address").ends_with("— no NAT"),
        "{report}"
    );
    // A CHANGE-REQUEST it cannot honour gets 420, not silence.
    let s = udp_client();
    let req = stun::binding_request([4; 12], Change::PORT).unwrap();
    let (bytes, _) = exchange(&s, addr, &req);
    assert_eq!(stun::decode(&bytes).unwrap().error.unwrap().0, 420);
}

#[test]
fn a_server_with_a_token_still_answers_stun_and_nat_check_says_why_tcp_failed() {
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (_srv, addr) = rendezvous(cmd, &["--bind", "127.0.0.1", "--token", "sesame"]);
    let report = nat_check(&["--server", &addr.to_string()], &[]);
    assert!(
        field(&report, "UDP", "public address").ends_with("— no NAT"),
        "{report}"
    );
    let tcp = field(&report, "TCP", "no answer:");
    assert!(tcp.contains("token"), "{report}");
}

#[test]
fn debian_stun_client_against_our_server() {
    if !have("stun", "stun-client") {
        return;
    }
    let (_srv, addr, alt) = server_with_alt();
    let mut cmd = Command::new("stun");
    cmd.args([&addr.to_string(), "-v"]);
    let mut p = Proc::spawn("stun", cmd);
    p.wait_exit(T);
    let out = p.stdout.text() + &p.stderr.text();
    // RFC 3489: MAPPED-ADDRESS, SOURCE-ADDRESS (RESPONSE-ORIGIN) and CHANGED-ADDRESS
    // (OTHER-ADDRESS), and every test answered from the endpoint asked for: this
    // client's test II changes the IP only, its test III the port only.
    assert!(out.contains("MappedAddress = 127.0.0.1:"), "{out}");
    assert!(out.contains(&format!("ChangedAddress = {alt}")), "{out}");
    for source in [
        addr,
        SocketAddr::new(alt.ip(), addr.port()),
        SocketAddr::new(addr.ip(), alt.port()),
    ] {
        assert!(
            out.contains(&format!("SourceAddress = {source}")),
            "{source}: {out}"
        );
    }
    for test in ["test I = 1", "test II = 1", "test III = 1", "test I(2) = 1"] {
        assert!(out.contains(test), "{test}: {out}");
    }
    assert!(out.contains("Primary: Open"), "{out}");
}

#[test]
fn coturn_natdiscovery_against_our_server() {
    if !have("turnutils_natdiscovery", "coturn") {
        return;
    }
    let (_srv, addr, alt) = server_with_alt();
    let mut cmd = Command::new("turnutils_natdiscovery");
    cmd.args(["-m", "-f", "-p", &addr.port().to_string(), "127.0.0.1"]);
    let mut p = Proc::spawn("turnutils_natdiscovery", cmd);
    p.wait_exit(T);
    let out = p.stdout.text() + &p.stderr.text();
    assert!(out.contains(&format!("Other addr: : {alt}")), "{out}");
    assert!(out.contains(&format!("Response origin: : {alt}")), "{out}");
    assert!(
        out.contains("NAT with Endpoint Independent Mapping"),
        "{out}"
    );
    assert!(
        out.contains("NAT with Endpoint Independent Filtering"),
        "{out}"
    );
}

/// Datagrams no STUN server should answer, or not as asked.
fn junk() -> Vec<(&'static str, Vec<u8>)> {
    let good = stun::binding_request([1; 12], Change::NONE).unwrap();
    let with_change = stun::binding_request([1; 12], Change::PORT).unwrap();
    let mut v = vec![
        ("empty", Vec::new()),
        ("truncated header", good[..12].to_vec()),
        ("truncated attribute", with_change[..24].to_vec()),
    ];
    let mut huge_attr = with_change.clone();
    huge_attr[22..24].copy_from_slice(&[0xff, 0xff]);
    v.push(("huge attribute length", huge_attr));
    let mut huge_len = good.clone();
    huge_len[2..4].copy_from_slice(&[0xff, 0xfc]);
    v.push(("header length beyond the datagram", huge_len));
    let mut odd_len = with_change.clone();
    odd_len[3] = 6;
    odd_len.truncate(26);
    v.push(("length not a multiple of 4", odd_len));
    let mut response = good.clone();
    response[0..2].copy_from_slice(&[0x01, 0x01]);
    v.push(("a response (answering it could loop)", response));
    let mut indication = good.clone();
    indication[0..2].copy_from_slice(&[0x00, 0x11]);
    v.push(("an indication", indication));
    let mut wrong_cookie_response = good.clone();
    wrong_cookie_response[0..2].copy_from_slice(&[0x01, 0x01]);
    wrong_cookie_response[4] ^= 0xff;
    v.push(("a response with a wrong cookie", wrong_cookie_response));
    let mut wrong_cookie_bad_attr = with_change.clone();
    wrong_cookie_bad_attr[4] ^= 0xff;
    wrong_cookie_bad_attr[22..24].copy_from_slice(&[0x10, 0x00]);
    v.push((
        "wrong cookie and an attribute past the end",
        wrong_cookie_bad_attr,
    ));
    let mut not_stun = good.clone();
    not_stun[0] = 0xc0;
    v.push(("leading bits set", not_stun));
    let mut oversized = vec![0u8; 1400];
    oversized[..20].copy_from_slice(&good);
    oversized[2..4].copy_from_slice(&(1380u16).to_be_bytes());
    // A syntactically valid padding of unknown optional attributes.
    for chunk in oversized[20..].chunks_mut(4) {
        chunk.copy_from_slice(&[0x80, 0x77, 0x00, 0x00]);
    }
    v.push(("oversized (1400 bytes)", oversized));
    let mut noise = vec![0u8; 300];
    for (i, b) in noise.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    v.push(("noise", noise));
    v
}

#[test]
fn malformed_datagrams_are_dropped_and_the_server_keeps_answering() {
    let (mut srv, addr, alt) = server_with_alt();
    let s = udp_client();
    for target in [addr, alt] {
        for (what, bytes) in junk() {
            s.send_to(&bytes, target)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        // The server handles one socket's datagrams in order: the first thing to come
        // back must be the answer to this request, sent after all the junk.
        let tid = [0x5a; 12];
        let req = stun::binding_request(tid, Change::NONE).unwrap();
        let (bytes, from) = exchange(&s, target, &req);
        let m = stun::decode(&bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"));
        assert_eq!((m.class, m.tid, from), (Class::Success, tid, target));
        assert_eq!(m.mapped, Some(s.local_addr().unwrap()));
    }
    assert!(srv.child.try_wait().unwrap().is_none(), "the server died");
    assert!(!srv.stderr.contains("panicked"), "{}", srv.stderr.text());
}

#[test]
fn wrong_cookie_requests_get_at_most_an_rfc3489_answer() {
    let (_srv, addr, _alt) = server_with_alt();
    let s = udp_client();
    let mut req = stun::binding_request([2; 12], Change::NONE).unwrap();
    req[4..8].copy_from_slice(&[1, 2, 3, 4]);
    let (bytes, _) = exchange(&s, addr, &req);
    // An RFC 3489 response: same 128-bit transaction ID, plain MAPPED-ADDRESS first.
    assert_eq!(&bytes[..2], &[0x01, 0x01]);
    assert_eq!(&bytes[4..20], &req[4..20]);
    assert_eq!(&bytes[20..22], &[0x00, 0x01]);
    assert!(bytes.len() <= req.len() * STUN_AMPLIFICATION);
}

#[test]
fn stun_over_tcp_answers_and_closes_on_junk() {
    let (_srv, _addr, alt) = server_with_alt();
    let mut good = TcpStream::connect(alt).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..3u8 {
        let req = stun::binding_request([i; 12], Change::NONE).unwrap();
        good.write_all(&req).unwrap();
        let mut head = [0u8; 20];
        good.read_exact(&mut head).unwrap();
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut body = vec![0u8; len];
        good.read_exact(&mut body).unwrap();
        let m = stun::decode(&[&head[..], &body].concat()).unwrap();
        assert_eq!((m.class, m.tid), (Class::Success, [i; 12]));
        assert_eq!(m.mapped, Some(good.local_addr().unwrap()));
        assert_eq!(m.origin, Some(alt));
    }
    for (what, bytes) in [
        ("noise", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("huge length", {
            let mut r = stun::binding_request([0; 12], Change::NONE).unwrap();
            r[2..4].copy_from_slice(&[0xff, 0xfc]);
            r
        }),
    ] {
        let mut c = TcpStream::connect(alt).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(got.is_empty(), "{what}: answered {got:?}");
    }
}

/// Over TCP a CHANGE-REQUEST asks the server to dial back from the changed endpoint
/// to the connection's own address: it arrives at a listener sharing that port, and
/// the original connection hears whether it got through; without a listener, the
/// refusal is reported.
#[test]
fn change_request_over_tcp_dials_back_to_the_requester_only() {
    let (_srv, addr, alt) = server_with_alt();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let lsock = common::net::reusable_socket(local).unwrap();
        let port = lsock.local_addr().unwrap().port();
        let listener = lsock.listen(4).unwrap();
        let sock = common::net::reusable_socket(SocketAddr::new(local.ip(), port)).unwrap();
        let mut c = sock.connect(alt).await.unwrap();
        // From alt (127.0.0.2:P2), change IP: the dial-back leaves from 127.0.0.1:P2.
        let tid = [0x42; 12];
        let change_ip = Change {
            ip: true,
            port: false,
        };
        c.write_all(&stun::binding_request(tid, change_ip).unwrap())
            .await
            .unwrap();
        let (mut back, from) = tokio::time::timeout(T, listener.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, SocketAddr::new(addr.ip(), alt.port()));
        let m = stun::decode(&stun::read_message(&mut back).await.unwrap()).unwrap();
        assert_eq!((m.class, m.tid), (Class::Success, tid));
        assert_eq!(m.mapped, Some(c.local_addr().unwrap()));
        assert_eq!(m.origin, Some(from));
        let m = stun::decode(&stun::read_message(&mut c).await.unwrap()).unwrap();
        assert_eq!((m.class, m.tid), (Class::Success, tid));

        // Nobody listening on the requester's port: the SYN is refused, and said so.
        drop(listener);
        let mut c = tokio::net::TcpStream::connect(alt).await.unwrap();
        c.write_all(&stun::binding_request([0x43; 12], Change::PORT).unwrap())
            .await
            .unwrap();
        let m = stun::decode(&stun::read_message(&mut c).await.unwrap()).unwrap();
        let (code, reason) = m.error.unwrap();
        assert_eq!(code, 500);
        assert!(reason.contains("refused"), "{reason}");
    });
}

#[test]
fn no_response_is_much_larger_than_its_request() {
    let (_srv, addr, alt) = server_with_alt();
    let s = udp_client();
    let mut legacy = vec![0, 1, 0, 8];
    legacy.extend_from_slice(&[0x33; 16]);
    legacy.extend_from_slice(&[0, 3, 0, 4, 0, 0, 0, 6]);
    let mut unknown_required = stun::binding_request([7; 12], Change::NONE).unwrap();
    unknown_required[3] = 8;
    unknown_required.extend_from_slice(&[0x00, 0x7f, 0x00, 0x04, 1, 2, 3, 4]);
    // RFC 5780's PADDING asks for a padded response: an amplifier's dream; ignored.
    let mut padding = stun::binding_request([8; 12], Change::NONE).unwrap();
    padding[3] = 8;
    padding.extend_from_slice(&[0x00, 0x26, 0x00, 0x04, 0, 0, 0, 0]);
    let requests = [
        (
            "plain",
            stun::binding_request([5; 12], Change::NONE).unwrap(),
        ),
        (
            "change port",
            stun::binding_request([6; 12], Change::PORT).unwrap(),
        ),
        (
            "change IP and port",
            stun::binding_request([9; 12], Change::BOTH).unwrap(),
        ),
        ("unknown comprehension-required attribute", unknown_required),
        ("PADDING", padding),
        ("RFC 3489 change IP and port", legacy),
    ];
    for target in [addr, alt] {
        for (what, req) in &requests {
            let (bytes, _) = exchange(&s, target, req);
            assert!(
                bytes.len() <= req.len() * STUN_AMPLIFICATION,
                "{what}: {} bytes for {}",
                bytes.len(),
                req.len()
            );
            if *what == "unknown comprehension-required attribute" {
                assert_eq!(stun::decode(&bytes).unwrap().error.unwrap().0, 420);
            }
        }
    }
}
