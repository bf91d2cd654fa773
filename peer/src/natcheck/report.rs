//! What `nat-check` found, and the conclusions drawn from it: the report's types and
//! the pure steps from measurements to classes and a verdict. No I/O.

use std::net::{IpAddr, SocketAddr};

pub use common::proto::NatBehaviour as Behaviour;
use serde::Serialize;

/// One public address seen by one server endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The server endpoint asked.
    pub server: SocketAddr,
    /// The address it saw this side come from.
    pub public: SocketAddr,
}

/// What one transport's tests found. `None` means "not measured" (see `notes`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transport {
    /// Whether the server answered at all.
    pub reachable: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// This side's local address of the first test.
    pub local: Option<SocketAddr>,
    /// The public address the server saw for it.
    pub public: Option<SocketAddr>,
    /// Whether a NAT changed the address.
    pub behind_nat: Option<bool>,
    /// Whether the NAT kept the local port as the public port.
    pub port_preserved: Option<bool>,
    /// Mapping behaviour.
    pub mapping: Option<Behaviour>,
    /// Filtering behaviour.
    pub filtering: Option<Behaviour>,
    /// Whether a packet or connection to one's own public address comes back.
    pub hairpinning: Option<bool>,
    /// TCP: what the NAT did with the server's refused dial-back SYN.
    pub unsolicited_syn: Option<UnsolicitedSyn>,
    /// The public addresses seen by each server endpoint, from the one local port.
    pub observations: Vec<Observation>,
    /// Why something was not measured, or what to keep in mind.
    pub notes: Vec<String>,
}

/// The conclusion for direct links.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The NAT in classic terms: `none`, `full cone`, `restricted cone`,
    /// `full or restricted cone` (a server with one IP cannot tell them apart),
    /// `port-restricted cone`, `cone`, `symmetric` or `unknown`.
    pub nat: String,
    /// Which measurements the verdict rests on.
    pub basis: String,
    /// Peers a direct link will work with.
    pub direct_with: String,
    /// Peers the link will go through the relay with.
    pub relay_with: String,
}

/// Everything `nat-check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server asked, as `rendezvous HOST:PORT` or `stun HOST:PORT`.
    pub server: String,
    /// The server's alternate endpoint (OTHER-ADDRESS), if it has one.
    pub alternate: Option<SocketAddr>,
    /// TCP, what punchline's links use.
    pub tcp: Transport,
    /// UDP, through STUN.
    pub udp: Transport,
    /// What it means.
    pub verdict: Verdict,
    /// Hints about the network as a whole (carrier-grade NAT, private server).
    pub notes: Vec<String>,
    /// What the router said to port mapping requests (PCP, NAT-PMP, UPnP IGD), one
    /// entry per protocol asked; empty with `--portmap off`.
    pub portmap: Vec<crate::portmap::ProbeResult>,
}

impl Report {
    /// Whether any test got an answer.
    pub fn reached_server(&self) -> bool {
        self.tcp.reachable || self.udp.reachable
    }
}

/// What a NAT does with a SYN nobody asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsolicitedSyn {
    /// It answers with a TCP RST or an ICMP error: a punch that arrives too early is
    /// refused, and redialing at once fixes it.
    Refused,
    /// It drops it silently: an early SYN is retransmitted by the kernel.
    Dropped,
}

pub(crate) fn is_shared(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
}

pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Mapping from the public addresses seen by the primary endpoint (`m1`), the
/// alternate IP on the primary port (`m2`) and the alternate IP and port (`m3`).
pub(crate) fn classify_mapping(
    m1: SocketAddr,
    m2: SocketAddr,
    m3: Option<SocketAddr>,
) -> Behaviour {
    if m1 == m2 {
        Behaviour::EndpointIndependent
    } else if m3 == Some(m2) {
        Behaviour::AddressDependent
    } else {
        Behaviour::AddressAndPortDependent
    }
}

pub(crate) fn verdict(tcp: &Transport, udp: &Transport) -> Verdict {
    let (mapping, mapping_from) = match (tcp.mapping, udp.mapping) {
        (Some(m), _) => (Some(m), "TCP mapping"),
        (None, Some(m)) => (Some(m), "UDP mapping"),
        _ => (None, ""),
    };
    let behind_nat = tcp.behind_nat.or(udp.behind_nat);
    let (filtering, filtering_from) = match (tcp.filtering, udp.filtering) {
        (Some(f), _) => (Some(f), "TCP filtering"),
        (None, f) => (f, "UDP filtering"),
    };
    let basis = match (behind_nat, mapping, filtering) {
        (_, Some(_), Some(_)) => format!("{mapping_from}, {filtering_from}"),
        (_, Some(_), None) => mapping_from.to_string(),
        (Some(false), None, _) => "the server sees this machine's own address".to_string(),
        _ => "too few answers to tell".to_string(),
    };
    let (nat, direct, relay) = match (behind_nat, mapping, filtering) {
        (Some(false), _, f) if f.is_none() || f == Some(Behaviour::EndpointIndependent) => (
            "none",
            "every peer: your address is public and peers can reach it, unless a firewall drops incoming connections",
            "nobody",
        ),
        (_, Some(m), _) if m.per_destination() => (
            "symmetric",
            "peers that have a public address or a full-cone NAT (endpoint-independent filtering)",
            "peers behind restricted, port-restricted or symmetric NATs (most home and mobile networks)",
        ),
        (_, Some(_), Some(Behaviour::EndpointIndependent)) => (
            "full cone",
            "peers behind any NAT, symmetric ones included",
            "nobody, as long as your NAT keeps its mappings",
        ),
        // One server IP: what comes from the server's other port gets in, so the NAT
        // filters by address at most. Either way a peer this side has sent to first
        // (as every punch does) gets in from any of its ports.
        (_, Some(_), Some(Behaviour::EndpointIndependentOrAddressDependent)) => (
            "full or restricted cone",
            "peers behind any NAT, symmetric ones included",
            "nobody, as long as your NAT keeps its mappings",
        ),
        (_, Some(_), f) => (
            match f {
                Some(Behaviour::AddressDependent) => "restricted cone",
                Some(Behaviour::AddressAndPortDependent) => "port-restricted cone",
                _ => "cone",
            },
            "peers that have a public address or an endpoint-independent NAT (full, restricted or port-restricted cone: most home routers)",
            "peers behind symmetric NATs (a new public port per destination: some corporate, mobile and carrier-grade NATs)",
        ),
        (_, None, _) => (
            "unknown",
            "peers that have a public address; others could not be predicted",
            "possibly every peer behind a NAT",
        ),
    };
    Verdict {
        nat: nat.into(),
        basis,
        direct_with: direct.into(),
        relay_with: relay.into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::natcheck::render;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapping_classes() {
        let m1 = a("203.0.113.21:4000");
        assert_eq!(
            classify_mapping(m1, m1, None),
            Behaviour::EndpointIndependent
        );
        let m2 = a("203.0.113.21:4001");
        assert_eq!(
            classify_mapping(m1, m2, Some(m2)),
            Behaviour::AddressDependent
        );
        assert_eq!(
            classify_mapping(m1, m2, Some(a("203.0.113.21:4002"))),
            Behaviour::AddressAndPortDependent
        );
    }

    fn transport(mapping: Behaviour, filtering: Option<Behaviour>) -> Transport {
        Transport {
            reachable: true,
            behind_nat: Some(true),
            mapping: Some(mapping),
            filtering,
            ..Transport::default()
        }
    }

    #[test]
    fn verdicts() {
        let eim = Behaviour::EndpointIndependent;
        let apd = Behaviour::AddressAndPortDependent;
        let v = verdict(&transport(eim, None), &transport(eim, Some(apd)));
        assert_eq!(v.nat, "port-restricted cone");
        assert!(v.relay_with.contains("symmetric"));
        let v = verdict(&transport(apd, None), &transport(apd, Some(apd)));
        assert_eq!(v.nat, "symmetric");
        let v = verdict(&transport(eim, None), &transport(eim, Some(eim)));
        assert_eq!(v.nat, "full cone");
        let text = render(&Report {
            server: "rendezvous 203.0.113.10:8877".into(),
            alternate: None,
            tcp: transport(eim, None),
            udp: transport(eim, Some(apd)),
            verdict: v,
            notes: vec![],
            portmap: vec![],
        });
        assert!(
            text.contains("Direct links will work with peers behind any NAT"),
            "{text}"
        );
        let json = serde_json::to_value(transport(eim, Some(apd))).unwrap();
        assert_eq!(json["mapping"], "endpoint-independent");
        assert_eq!(json["filtering"], "address-and-port-dependent");
    }

    #[test]
    fn address_ranges() {
        assert!(is_shared("100.64.1.2".parse().unwrap()));
        assert!(!is_shared("100.128.0.1".parse().unwrap()));
        assert!(is_private("10.0.1.2".parse().unwrap()));
    }
}
