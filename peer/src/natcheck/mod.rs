//! `peer nat-check`: what the NAT in front of this machine does, and what that means for
//! direct links.
//!
//! Split as iroh splits its `net_report`: [`report`] holds the report's types and the
//! pure conclusions drawn from measurements (classification, verdict); `udp` and `tcp`
//! are the I/O of the two suites; [`render`] turns a report into text. This module
//! runs them (and measures the mapping pairing needs).
//!
//! Two suites run side by side, each bounded by a few seconds:
//!
//! * **UDP**, through STUN (RFC 8489) with RFC 5780 behaviour discovery: the public
//!   address; mapping (RFC 5780 §4.3: the mapped address towards the primary address,
//!   the alternate IP and the alternate IP and port, from one socket); filtering (§4.4:
//!   from a second socket that only ever talks to the primary address, requests asking
//!   the server to answer from the other IP and port, or from the other port); and
//!   hairpinning (§4.5: a request sent to one's own mapped address comes back).
//! * **TCP**, the transport punchline's links use: connections from one local port
//!   (shared with `SO_REUSEPORT`, as the punch does) to the server's endpoints. With a
//!   punchline server the primary port is the Noise control protocol, whose `Welcome`
//!   names the observed address; the alternate endpoints speak STUN over TCP (see the
//!   server's `stun.rs`). With `--stun`, every endpoint is STUN over TCP. Hairpinning:
//!   a connection from a fresh socket to one's own mapped address reaches one's own
//!   listener on the mapped port. Filtering: a punchline server with two IP addresses
//!   dials back from its other IP, or its other port, to a port that has only talked
//!   to one of its endpoints (the server's CHANGE-REQUEST over TCP), and says whether
//!   the SYN got through or what the NAT did with it (RST/ICMP or silence). Elsewhere
//!   TCP filtering is not measured and the verdict takes filtering from UDP.
//!
//! Nothing here panics or waits without bound: every exchange is under
//! [`STUN_TEST_TIMEOUT`], and STUN over UDP retransmits after [`STUN_RTO`], doubling.
//!
//! [`STUN_TEST_TIMEOUT`]: common::defaults::STUN_TEST_TIMEOUT
//! [`STUN_RTO`]: common::defaults::STUN_RTO

use std::{net::SocketAddr, time::Duration};

use common::{
    net::{any_addr, reusable_socket},
    proto::{ConnKind, NatBehaviour},
    stun::Change,
};

use crate::client::{self, ServerConfig};
use crate::portmap::Mapper;

use report::{is_private, is_shared, verdict};
use tcp::{tcp_mapping_test, tcp_suite};
use udp::{confirm_alternate, mapped, transact, udp_socket, udp_suite};

mod render;
pub mod report;
mod tcp;
mod udp;

pub use render::render;
pub use report::{Observation, Report, Transport, UnsolicitedSyn, Verdict};

/// Whom to ask.
#[derive(Debug, Clone)]
pub enum Target {
    /// A punchline rendezvous server: STUN over UDP on its port, the Noise control
    /// protocol on its TCP port, STUN over TCP on its alternate endpoints.
    Rendezvous(ServerConfig),
    /// Any standard STUN server (RFC 5780 support gives the full picture).
    Stun(SocketAddr),
}

impl Target {
    pub(crate) fn primary(&self) -> SocketAddr {
        match self {
            Target::Rendezvous(cfg) => cfg.addr,
            Target::Stun(a) => *a,
        }
    }

    /// A rendezvous server's second port by default (`rendezvous --alt-port`): its
    /// port + 1 on the same address. Asked when the server names no OTHER-ADDRESS
    /// (a wildcard bind cannot name itself), and used only if it answers.
    fn default_alternate(&self) -> Option<SocketAddr> {
        match self {
            Target::Rendezvous(cfg) => default_alternate(cfg.addr),
            Target::Stun(_) => None,
        }
    }
}

/// See [`Target::default_alternate`].
pub(crate) fn default_alternate(primary: SocketAddr) -> Option<SocketAddr> {
    primary
        .port()
        .checked_add(1)
        .map(|p| SocketAddr::new(primary.ip(), p))
}

/// Why the check could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum NatCheckError {
    /// A local socket could not be opened.
    #[error("cannot open a local socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Runs both suites against `target`, and asks the router for a test port mapping
/// with each protocol `portmap` may use, and draws the conclusion.
pub async fn run(target: &Target, portmap: &Mapper) -> Result<Report, NatCheckError> {
    let primary = target.primary();
    let guess = target.default_alternate();
    let ((udp, other), portmap) = tokio::try_join!(udp_suite(primary, guess), async {
        Ok(portmap.probe_all().await)
    })?;
    let mut udp = udp;
    let tcp = tcp_suite(target, other.or(guess)).await?;
    // Test I over UDP ran first; the TCP suite needs OTHER-ADDRESS from it.
    if !udp.reachable && tcp.reachable {
        udp.notes
            .push("UDP got no answer while TCP did: UDP is blocked on the way".into());
    }
    let verdict = verdict(&tcp, &udp);
    let mut notes = Vec::new();
    let local_ip = tcp.local.or(udp.local).map(|a| a.ip());
    if local_ip.is_some_and(is_shared) {
        notes.push(
            "your own address is in 100.64.0.0/10: a carrier-grade NAT is in front of you; \
             the behaviour above is that of all NAT layers together"
                .into(),
        );
    }
    let public_ip = tcp.public.or(udp.public).map(|a| a.ip());
    if public_ip.is_some_and(|ip| is_private(ip) || is_shared(ip)) && !is_private(primary.ip()) {
        notes.push(
            "the server sees a private or shared address: another NAT (double NAT or \
             carrier-grade NAT) may sit between it and the internet"
                .into(),
        );
    }
    if primary.ip().is_loopback() {
        notes.push(
            "the server is on this machine (loopback): this says nothing about the NATs \
             between you and other peers; run it against a public server"
                .into(),
        );
    } else if is_private(primary.ip()) {
        notes.push(
            "the server has a private address: this describes only the NATs between you and it"
                .into(),
        );
    }
    if let (Some(public), Some(m)) = (public_ip, portmap.iter().find_map(|p| p.mapped)) {
        if public != std::net::IpAddr::V4(*m.ip()) {
            notes.push(format!(
                "the router maps ports on {}, but the server sees {public}: another NAT is \
                 in front of the router, so its mappings are not offered to peers",
                m.ip()
            ));
        }
    }
    let server = match target {
        Target::Rendezvous(_) => format!("rendezvous {primary}"),
        Target::Stun(_) => format!("stun {primary}"),
    };
    Ok(Report {
        server,
        alternate: other,
        tcp,
        udp,
        verdict,
        notes,
        portmap,
    })
}

/// This process's own TCP mapping, for pairing (see [`ClientMsg::Nat`]): measured
/// once per process with the TCP mapping test of `nat-check` (a UDP Binding request
/// for the server's alternate endpoint, then the server and its alternate endpoint
/// seen from one local port), then cached. `None` when it cannot be measured (no
/// alternate endpoint, UDP blocked, the server unreachable).
///
/// [`ClientMsg::Nat`]: common::proto::ClientMsg::Nat
pub async fn own_mapping(cfg: &ServerConfig) -> Option<NatBehaviour> {
    static MAPPING: tokio::sync::OnceCell<Option<NatBehaviour>> =
        tokio::sync::OnceCell::const_new();
    *MAPPING
        .get_or_init(|| async {
            let mapping = measure_own_mapping(cfg).await;
            tracing::info!(?mapping, "own TCP mapping measured");
            mapping
        })
        .await
}

/// What to tell the server about this peer's NAT ([`ClientMsg::Nat`]): its own TCP
/// mapping ([`own_mapping`], cached) and whether the router grants port mappings
/// (found out once, at the same time); `None` when neither is known.
///
/// [`ClientMsg::Nat`]: common::proto::ClientMsg::Nat
pub async fn own_nat(cfg: &ServerConfig) -> Option<common::proto::ClientMsg> {
    let (mapping, portmap) = tokio::join!(own_mapping(cfg), portmap_known(cfg));
    nat_msg(mapping, portmap)
}

/// [`own_nat`] with the mapping measured again (not cached): before a re-punch.
pub async fn own_nat_now(cfg: &ServerConfig) -> Option<common::proto::ClientMsg> {
    let (mapping, portmap) = tokio::join!(measure_mapping(cfg), portmap_known(cfg));
    nat_msg(mapping, portmap)
}

/// Whether the router grants port mappings, as far as known within
/// [`PORTMAP_DISCOVERY_WAIT`]: the discovery runs on in its own task (and is cached),
/// so a slow "no" (a router that ignores the requests) never holds up the report.
///
/// [`PORTMAP_DISCOVERY_WAIT`]: common::defaults::PORTMAP_DISCOVERY_WAIT
async fn portmap_known(cfg: &ServerConfig) -> bool {
    let mapper = cfg.portmap.clone();
    let discovery = tokio::spawn(async move { mapper.protocol().await });
    matches!(
        tokio::time::timeout(common::defaults::PORTMAP_DISCOVERY_WAIT, discovery).await,
        Ok(Ok(Some(_)))
    )
}

fn nat_msg(mapping: Option<NatBehaviour>, portmap: bool) -> Option<common::proto::ClientMsg> {
    (mapping.is_some() || portmap).then_some(common::proto::ClientMsg::Nat { mapping, portmap })
}

/// This process's own TCP mapping, measured now (not cached): see [`own_mapping`].
pub async fn measure_mapping(cfg: &ServerConfig) -> Option<NatBehaviour> {
    let mapping = measure_own_mapping(cfg).await;
    tracing::debug!(?mapping, "own TCP mapping measured again");
    mapping
}

async fn measure_own_mapping(cfg: &ServerConfig) -> Option<NatBehaviour> {
    let primary = cfg.addr;
    let udp = udp_socket(primary).await.ok()?;
    let answer = transact(&udp, &[(primary, Change::NONE)]).await;
    let other = match mapped(&answer[0]).ok()?.1.other {
        Some(o) => o,
        None => confirm_alternate(&udp, default_alternate(primary)).await?,
    };
    let sock = reusable_socket(any_addr(primary, 0)).ok()?;
    let local = any_addr(primary, sock.local_addr().ok()?.port());
    let (mut ch, m1) = client::connect(cfg, ConnKind::Control, Some(sock))
        .await
        .ok()?;
    let (result, _, streams) = tcp_mapping_test(primary, local, m1, Some(other)).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), ch.close()).await;
    drop(streams);
    result.ok()
}
