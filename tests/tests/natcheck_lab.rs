//! `peer nat-check` through the NAT lab's real NATs: the real `rendezvous` (with its
//! second address, 203.0.113.11, as `--alt-addr`) on the lab's internet, the real
//! `peer nat-check` behind each NAT profile, and the report checked against what the
//! profile is:
//!
//! | profile | mapping | filtering (TCP and UDP) | verdict |
//! |---|---|---|---|
//! | port-restricted (`masquerade`) | endpoint-independent, port kept | address-and-port-dependent | port-restricted cone |
//! | symmetric (`masquerade fully-random`) | address-and-port-dependent | address-and-port-dependent | symmetric |
//! | full cone (outbound map + DNAT) | endpoint-independent | endpoint-independent | full cone |
//! | port-restricted behind an endpoint-independent CGNAT | endpoint-independent | address-and-port-dependent | port-restricted cone: the two NATs count as one |
//! | port-restricted behind a symmetric CGNAT | dependent | address-and-port-dependent | symmetric |
//!
//! TCP filtering comes from the server's dial-backs, which also show what the NAT does
//! with an unsolicited SYN (RST by default, silence with `Unsolicited::Drop`).
//! Hairpinning is reported "no" on the lab's default routers and "yes" on a router
//! with the lab's hairpinning turned on.
#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, time::Duration};

use lab::{CgnatProfile, Host, Lab, LabSpec, NatProfile, Site, Unsolicited};
use support::*;

const T: Duration = Duration::from_secs(30);

fn server(lab: &Lab) -> (Proc, SocketAddr) {
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN");
    let alt = format!("{}:0", lab.server_alt_ip());
    let (p, addr) = rendezvous(
        cmd,
        &["--bind", &lab.server_ip().to_string(), "--alt-addr", &alt],
    );
    p.stdout.wait_for("stun alternate", T);
    (p, addr)
}

/// Starts `peer nat-check` on `host`.
fn start_check(lab: &Lab, host: Host, server: SocketAddr) -> Proc {
    let mut cmd = lab.command(host, bin("peer"));
    cmd.env_remove("PUNCHLINE_TOKEN")
        .env_remove("PUNCHLINE_SERVER")
        .args(["--server", &server.to_string(), "nat-check"]);
    Proc::spawn(&format!("nat-check on {host:?}"), cmd)
}

/// Waits for a `nat-check` to finish and returns its report.
fn report(mut p: Proc) -> String {
    let st = p.wait_exit(T);
    let text = p.stdout.text();
    eprintln!("--- {}:\n{text}", p.name);
    assert!(
        st.success(),
        "{} ({st}): {text}\n{}",
        p.name,
        p.stderr.text()
    );
    text
}

/// The value of `name` in the report section whose title starts with `section`.
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

/// What a report must say, transport by transport (`None`: not checked).
struct Expect<'a> {
    public_ip: std::net::Ipv4Addr,
    mapping: &'a [&'a str],
    filtering: &'a str,
    unsolicited_syn: &'a str,
    port_kept: Option<&'a str>,
    hairpinning: &'a str,
    verdict: &'a str,
}

fn check(report: &str, e: &Expect) {
    for section in ["TCP", "UDP"] {
        let public = field(report, section, "public address");
        assert!(
            public.starts_with(&format!("{}:", e.public_ip)),
            "{section} public address: {report}"
        );
        let mapping = field(report, section, "mapping");
        assert!(
            e.mapping.contains(&mapping.as_str()),
            "{section} mapping {mapping:?}, expected one of {:?}:\n{report}",
            e.mapping
        );
        if let Some(kept) = e.port_kept {
            assert_eq!(
                field(report, section, "local port kept"),
                kept,
                "{section}: {report}"
            );
        }
        assert_eq!(
            field(report, section, "hairpinning"),
            e.hairpinning,
            "{section}: {report}"
        );
    }
    for section in ["TCP", "UDP"] {
        assert_eq!(
            field(report, section, "filtering"),
            e.filtering,
            "{section}: {report}"
        );
    }
    if e.filtering != "endpoint-independent" {
        assert!(
            field(report, "TCP", "unsolicited SYN").starts_with(e.unsolicited_syn),
            "{report}"
        );
    }
    assert!(
        report.contains(&format!("Verdict: {}", e.verdict)),
        "expected verdict {:?}:\n{report}",
        e.verdict
    );
    assert!(report.contains("Direct links will work with"), "{report}");
    assert!(
        report.contains("expect relay with") || report.contains("no peer should need the relay"),
        "{report}"
    );
}

const DEPENDENT: &[&str] = &["address-dependent", "address-and-port-dependent"];

#[test]
fn port_restricted_symmetric_and_full_cone_are_told_apart() {
    if !lab::require_lab() {
        return;
    }
    let lab = Lab::new(LabSpec::default().nat(Site::B, NatProfile::Symmetric)).expect("lab");
    let (_srv, addr) = server(&lab);
    let (a, b) = (
        start_check(&lab, Host::A, addr),
        start_check(&lab, Host::B, addr),
    );
    let (a, b) = (report(a), report(b));
    check(
        &a,
        &Expect {
            public_ip: lab.public_ip(Site::A),
            mapping: &["endpoint-independent"],
            filtering: "address-and-port-dependent",
            unsolicited_syn: "refused",
            port_kept: Some("yes"),
            hairpinning: "no",
            verdict: "port-restricted cone NAT",
        },
    );
    assert!(
        a.contains("expect relay with peers behind symmetric NATs"),
        "{a}"
    );
    check(
        &b,
        &Expect {
            public_ip: lab.public_ip(Site::B),
            mapping: DEPENDENT,
            filtering: "address-and-port-dependent",
            unsolicited_syn: "refused",
            port_kept: None,
            hairpinning: "no",
            verdict: "symmetric NAT",
        },
    );

    // The same site as a full cone: any endpoint may send to a mapped port.
    lab.set_nat(Site::A, NatProfile::FullCone).expect("set_nat");
    let a = report(start_check(&lab, Host::A, addr));
    check(
        &a,
        &Expect {
            public_ip: lab.public_ip(Site::A),
            mapping: &["endpoint-independent"],
            filtering: "endpoint-independent",
            unsolicited_syn: "",
            port_kept: Some("yes"),
            hairpinning: "no",
            verdict: "full cone NAT",
        },
    );
    assert!(a.contains("symmetric ones included"), "{a}");

    // Port-restricted again, now dropping unsolicited packets: the dial-back's SYN
    // goes unanswered, and the report says so.
    lab.set_nat(Site::A, NatProfile::PortRestricted)
        .expect("set_nat");
    lab.set_unsolicited(Site::A, Unsolicited::Drop)
        .expect("set_unsolicited");
    let a = report(start_check(&lab, Host::A, addr));
    check(
        &a,
        &Expect {
            public_ip: lab.public_ip(Site::A),
            mapping: &["endpoint-independent"],
            filtering: "address-and-port-dependent",
            unsolicited_syn: "dropped silently",
            port_kept: Some("yes"),
            hairpinning: "no",
            verdict: "port-restricted cone NAT",
        },
    );
}

#[test]
fn carrier_grade_nat_counts_as_one_layer() {
    if !lab::require_lab() {
        return;
    }
    let lab = Lab::new(
        LabSpec::default()
            .cgnat(Site::A, CgnatProfile::EndpointIndependent)
            .cgnat(Site::B, CgnatProfile::Symmetric),
    )
    .expect("lab");
    let (_srv, addr) = server(&lab);
    let (a, b) = (
        start_check(&lab, Host::A, addr),
        start_check(&lab, Host::B, addr),
    );
    let (a, b) = (report(a), report(b));
    // Home port-restricted NAT behind an endpoint-independent CGNAT: together, a
    // port-restricted cone with the CGNAT's public address.
    check(
        &a,
        &Expect {
            public_ip: lab.public_ip(Site::A),
            mapping: &["endpoint-independent"],
            filtering: "address-and-port-dependent",
            unsolicited_syn: "refused",
            port_kept: None,
            hairpinning: "no",
            verdict: "port-restricted cone NAT",
        },
    );
    // Behind a symmetric CGNAT the home router's good behaviour does not help.
    check(
        &b,
        &Expect {
            public_ip: lab.public_ip(Site::B),
            mapping: DEPENDENT,
            filtering: "address-and-port-dependent",
            unsolicited_syn: "refused",
            port_kept: None,
            hairpinning: "no",
            verdict: "symmetric NAT",
        },
    );
}

#[test]
fn hairpinning_router_is_reported() {
    if !lab::require_lab() {
        return;
    }
    let lab = Lab::new(LabSpec::default().hairpin(Site::A)).expect("lab");
    let (_srv, addr) = server(&lab);
    let a = report(start_check(&lab, Host::A, addr));
    check(
        &a,
        &Expect {
            public_ip: lab.public_ip(Site::A),
            mapping: &["endpoint-independent"],
            filtering: "address-and-port-dependent",
            unsolicited_syn: "refused",
            port_kept: Some("yes"),
            hairpinning: "yes",
            verdict: "port-restricted cone NAT",
        },
    );
}

/// A server started with no option but its port (`rendezvous --port P`, bound to the
/// wildcard address): its default second port (P + 1) is enough to tell the three
/// profiles apart. With one server IP, endpoint-independent and address-dependent
/// behaviour cannot be told apart, and the report says so; TCP filtering is not
/// measured (no second IP to dial back from), UDP's is used.
#[test]
fn a_plain_server_tells_port_restricted_full_cone_and_symmetric_apart() {
    if !lab::require_lab() {
        return;
    }
    let lab = Lab::new(LabSpec::default().nat(Site::B, NatProfile::Symmetric)).expect("lab");
    let mut cmd = lab.command(Host::Server, bin("rendezvous"));
    cmd.env_remove("PUNCHLINE_TOKEN");
    let (srv, addr) = rendezvous(cmd, &[]);
    let alt = srv.stdout.wait_for("stun alternate", T);
    assert!(alt.ends_with(&format!(":{}", addr.port() + 1)), "{alt}");
    // The server listens on the wildcard address: peers reach it on its first IP.
    let addr = SocketAddr::new(lab.server_ip().into(), addr.port());
    const ONE_IP: &str =
        "endpoint-independent or address-dependent (the server has one IP address)";
    let (a, b) = (
        start_check(&lab, Host::A, addr),
        start_check(&lab, Host::B, addr),
    );
    let (a, b) = (report(a), report(b));
    for section in ["TCP", "UDP"] {
        assert_eq!(field(&a, section, "mapping"), ONE_IP, "{a}");
        assert_eq!(
            field(&b, section, "mapping"),
            "address-and-port-dependent",
            "{b}"
        );
    }
    assert_eq!(
        field(&a, "UDP", "filtering"),
        "address-and-port-dependent",
        "{a}"
    );
    assert!(a.contains("Verdict: port-restricted cone NAT"), "{a}");
    assert!(b.contains("Verdict: symmetric NAT"), "{b}");

    lab.set_nat(Site::A, NatProfile::FullCone).expect("set_nat");
    let a = report(start_check(&lab, Host::A, addr));
    assert_eq!(field(&a, "TCP", "mapping"), ONE_IP, "{a}");
    assert_eq!(field(&a, "UDP", "filtering"), ONE_IP, "{a}");
    assert!(a.contains("Verdict: full or restricted cone NAT"), "{a}");
    assert!(a.contains("symmetric ones included"), "{a}");
}
