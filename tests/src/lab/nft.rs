//! The nftables rules of the lab's NAT boxes and of the server's byte counters, as
//! `nft` command strings (one table, chain or rule each; see NATLAB.md). Pure
//! functions: the topology module runs them.
//!
//! Every box names its links the same: `wan` towards the internet, `lan` towards its
//! hosts (a bridge on home routers, a veth on a CGNAT box).

use std::net::Ipv4Addr;

use super::spec::{NatProfile, Unsolicited};

/// The base firewall of every NAT box (table `inet fw`): forward only what the LAN
/// started, what is part of a known connection, and what a DNAT (port forward, full
/// cone) let in; plus the `input` chain whose rules say what unsolicited packets get
/// ([`unsolicited_rules`]).
///
/// An unsolicited SYN to the public address, even to a port mapped for another peer,
/// matches no conntrack entry and no DNAT, so its destination stays the box itself:
/// the `input` chain sees it, never `forward`.
pub(crate) fn firewall() -> Vec<String> {
    vec![
        "add table inet fw".into(),
        "add chain inet fw forward { type filter hook forward priority 0; policy drop; }".into(),
        "add rule inet fw forward ct state established,related accept".into(),
        r#"add rule inet fw forward iifname "lan" oifname "wan" accept"#.into(),
        "add rule inet fw forward ct status dnat accept".into(),
        "add chain inet fw input { type filter hook input priority 0; policy accept; }".into(),
    ]
}

/// The `input` rules for unsolicited packets arriving on `wan`.
///
/// Rejects are stateless: the rejected packet's conntrack entry is never confirmed, so
/// a later outbound flow to that peer keeps its port (NATLAB.md: a box that answers
/// with ICMP from its own stack keeps state, and the next mapping changes port).
pub(crate) fn unsolicited_rules(unsolicited: Unsolicited) -> Vec<String> {
    let head = r#"add rule inet fw input iifname "wan" ct state != { established, related }"#;
    match unsolicited {
        Unsolicited::Rst => vec![
            format!("{head} meta l4proto tcp reject with tcp reset"),
            format!("{head} meta l4proto udp reject with icmp type port-unreachable"),
        ],
        Unsolicited::Drop => vec![format!("{head} drop")],
        Unsolicited::Icmp => vec![format!(
            "{head} meta l4proto {{ tcp, udp }} reject with icmp type port-unreachable"
        )],
    }
}

/// The `masquerade` flag that gives a new port per destination. Both `random` and
/// `fully-random` did so on kernel 6.18 (`random` hashes the destination into the
/// port); `fully-random` draws every port anew, the harshest symmetric NAT.
const SYMMETRIC_FLAG: &str = "fully-random";

/// The first port of [`NatProfile::SymmetricSequential`]'s sequence.
const SEQUENTIAL_BASE: u16 = 20000;
/// Ports in that sequence before it wraps (more than a punch's sockets and the
/// connections around it, so that a wrap never meets a live tuple to the same peer).
const SEQUENTIAL_PORTS: u16 = 1024;

/// The NAT table (`ip nat`) of a box whose LAN is `lan_net`; with `hairpin`, the box's
/// WAN address, to which LAN hosts may connect to reach each other's mappings.
pub(crate) fn nat_table(
    lan_net: &str,
    profile: NatProfile,
    hairpin: Option<Ipv4Addr>,
) -> Vec<String> {
    let mut cmds: Vec<String> = vec![
        "add table ip nat".into(),
        "add chain ip nat prerouting { type nat hook prerouting priority -100; }".into(),
        "add chain ip nat postrouting { type nat hook postrouting priority 100; }".into(),
    ];
    let masq =
        format!(r#"add rule ip nat postrouting oifname "wan" ip saddr {lan_net} masquerade"#);
    cmds.push(match profile {
        NatProfile::Symmetric => format!("{masq} {SYMMETRIC_FLAG}"),
        NatProfile::SymmetricSequential => {
            let ports: Vec<String> = (0..SEQUENTIAL_PORTS)
                .map(|i| format!("{i} : {}", SEQUENTIAL_BASE + i))
                .collect();
            // Port mapping needs a transport match; other protocols (ICMP) fall
            // through to a plain masquerade, added after this rule.
            format!(
                r#"add rule ip nat postrouting oifname "wan" ip saddr {lan_net} meta l4proto {{ tcp, udp }} masquerade to : numgen inc mod {SEQUENTIAL_PORTS} map {{ {} }}"#,
                ports.join(", ")
            )
        }
        NatProfile::PortRestricted | NatProfile::FullCone => masq.clone(),
    });
    if profile == NatProfile::SymmetricSequential {
        cmds.push(masq.clone());
    }
    if profile == NatProfile::FullCone || hairpin.is_some() {
        // Every outbound mapping (public port → private address and port) goes into a
        // map, per protocol. Priority 200: after the masquerade at 100 chose the port.
        cmds.push(
            "add chain ip nat mappings { type filter hook postrouting priority 200; }".into(),
        );
        for proto in ["tcp", "udp"] {
            cmds.push(format!(
                "add map ip nat map_{proto} {{ type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 5m; }}"
            ));
            cmds.push(format!(
                r#"add rule ip nat mappings oifname "wan" meta l4proto {proto} ct status snat update @map_{proto} {{ ct reply proto-dst : ct original ip saddr . ct original proto-src }}"#
            ));
        }
    }
    if profile == NatProfile::FullCone {
        // Full cone: any inbound connection to a mapped port goes to its owner.
        for proto in ["tcp", "udp"] {
            cmds.push(format!(
                r#"add rule ip nat prerouting iifname "wan" dnat ip addr . port to {proto} dport map @map_{proto}"#
            ));
        }
    }
    if let Some(public) = hairpin {
        // Hairpin: LAN → own public address:mapped port goes to the port's owner, with
        // the caller's source rewritten to the public address (port kept when free).
        for proto in ["tcp", "udp"] {
            cmds.push(format!(
                r#"add rule ip nat prerouting iifname "lan" ip daddr {public} dnat ip addr . port to {proto} dport map @map_{proto}"#
            ));
        }
        cmds.push(format!(
            r#"add rule ip nat postrouting oifname "lan" ip saddr {lan_net} ct status dnat snat ip to {public}"#
        ));
    }
    cmds
}

/// The port-forward table (`ip portfwd`), apart from `ip nat` so that switching the NAT
/// profile keeps the forwards. Priority -110: before the full-cone map's DNAT.
pub(crate) fn forward_table() -> Vec<String> {
    vec![
        "add table ip portfwd".into(),
        "add chain ip portfwd prerouting { type nat hook prerouting priority -110; }".into(),
    ]
}

/// Forwards TCP and UDP `port` arriving on `wan` to `to` (same port); with `hairpin`
/// (the box's WAN address), also when LAN hosts connect to that address.
pub(crate) fn forward_rules(port: u16, to: Ipv4Addr, hairpin: Option<Ipv4Addr>) -> Vec<String> {
    let tail = format!("meta l4proto {{ tcp, udp }} th dport {port} dnat to {to}");
    let mut rules = vec![format!(
        r#"add rule ip portfwd prerouting iifname "wan" {tail}"#
    )];
    if let Some(public) = hairpin {
        rules.push(format!(
            r#"add rule ip portfwd prerouting iifname "lan" ip daddr {public} {tail}"#
        ));
    }
    rules
}

/// The table miniupnpd (nftables backend) fills: it adds and deletes rules but does
/// not make the chains. `prerouting` runs its DNATs at -105: after the lab's port
/// forwards (-110), before the NAT table (-100), so a mapping wins over a full-cone
/// map. `postrouting` at 99, before the lab's masquerade.
/// `forward` is a plain chain: the lab's own forward chain accepts DNATed flows.
pub(crate) fn miniupnpd_tables() -> Vec<String> {
    vec![
        "add table inet miniupnpd".into(),
        "add chain inet miniupnpd forward".into(),
        "add chain inet miniupnpd prerouting { type nat hook prerouting priority -105; }".into(),
        "add chain inet miniupnpd postrouting { type nat hook postrouting priority 99; }".into(),
    ]
}

/// The DNAT rules miniupnpd wrote, as (external TCP port, LAN address and port), from
/// `nft list table inet miniupnpd` (rules like `iif "wan" @nh,72,8 0x6 th dport 4000
/// dnat ip to 10.0.1.2:4000`; protocol 0x6 is TCP).
pub(crate) fn parse_dnat_rules(listing: &str) -> Vec<(u16, std::net::SocketAddrV4)> {
    listing
        .lines()
        .filter(|l| l.contains("dnat") && l.contains("0x6"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f.iter().position(|w| *w == "dport")?;
            let to = f.iter().position(|w| *w == "to")?;
            Some((f.get(port + 1)?.parse().ok()?, f.get(to + 1)?.parse().ok()?))
        })
        .collect()
}

/// Name of the server's counter of TCP bytes received on its link.
pub(crate) const COUNTER_IN: &str = "tcp_in";
/// Name of the server's counter of TCP bytes sent on its link.
pub(crate) const COUNTER_OUT: &str = "tcp_out";

/// The server's accounting table (`inet acct`): named counters of all TCP packets and
/// bytes (IP length) in and out of its link `eth0`, whatever the port.
pub(crate) fn accounting() -> Vec<String> {
    vec![
        "add table inet acct".into(),
        format!("add counter inet acct {COUNTER_IN}"),
        format!("add counter inet acct {COUNTER_OUT}"),
        "add chain inet acct count_in { type filter hook input priority -300; }".into(),
        format!(
            r#"add rule inet acct count_in iifname "eth0" meta l4proto tcp counter name "{COUNTER_IN}""#
        ),
        "add chain inet acct count_out { type filter hook output priority -300; }".into(),
        format!(
            r#"add rule inet acct count_out oifname "eth0" meta l4proto tcp counter name "{COUNTER_OUT}""#
        ),
    ]
}

/// Packets and bytes of one named counter in `nft list counters` output.
pub(crate) fn parse_counter(listing: &str, name: &str) -> Option<(u64, u64)> {
    let mut in_counter = false;
    for line in listing.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("counter ") {
            in_counter = rest.trim_end_matches('{').trim() == name;
        } else if in_counter && line.starts_with("packets ") {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let ["packets", p, "bytes", b, ..] = fields.as_slice() {
                return Some((p.parse().ok()?, b.parse().ok()?));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_miniupnpd_rules() {
        let listing = "table inet miniupnpd {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat - 5; policy accept;\n\t\tiif \"wan\" @nh,72,8 0x6 th dport 4000 dnat ip to 10.0.1.2:4000\n\t\tiif \"wan\" @nh,72,8 0x11 th dport 53 dnat ip to 10.0.1.2:53\n\t}\n}\n";
        assert_eq!(
            parse_dnat_rules(listing),
            vec![(4000, "10.0.1.2:4000".parse().unwrap())]
        );
    }

    #[test]
    fn parses_counters() {
        let listing = "table inet acct {\n\tcounter tcp_in {\n\t\tpackets 3 bytes 180\n\t}\n\n\tcounter tcp_out {\n\t\tpackets 2 bytes 120\n\t}\n}\n";
        assert_eq!(parse_counter(listing, COUNTER_IN), Some((3, 180)));
        assert_eq!(parse_counter(listing, COUNTER_OUT), Some((2, 120)));
        assert_eq!(parse_counter(listing, "other"), None);
    }
}
