//! What the server is doing, as one value: the `/api/status` JSON of the admin
//! listener (see [`crate::admin`]), which the dashboard draws and `/metrics` reads its
//! gauges from. Built from the registry's snapshot (who holds what), the server's
//! record of control connections and their NATs, and [`Metrics`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::proto::NatBehaviour;
use serde::Serialize;

use crate::{
    metrics::{nat_label, unix_now, Metrics, Sample},
    registry::{ClaimKind, Snapshot},
};

/// The server's status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The server's version.
    pub version: &'static str,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// When this was taken, seconds since the Unix epoch.
    pub now: u64,
    /// Peers online (one per control connection), oldest first.
    pub peers: Vec<PeerStatus>,
    /// Users with at least one peer online.
    pub users_online: Vec<String>,
    /// Service names registered for `connect` (xtcp).
    pub services: Vec<ServiceStatus>,
    /// TCP ports and HTTP routes exposed through the server.
    pub exposures: Vec<ExposureStatus>,
    /// Links being relayed now.
    pub relays: Vec<RelayStatus>,
    /// Links made since the server started, by kind.
    pub links: LinkCounts,
    /// Bytes relayed since the server started.
    pub relay_bytes: u64,
    /// Samples of the counters, oldest first, the last one now.
    pub history: Vec<Sample>,
}

/// A peer online.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Its identity's fingerprint.
    pub fingerprint: String,
    /// The short form in logs.
    pub short: String,
    /// Its user (token).
    pub user: String,
    /// The address its control connection comes from (its NAT's mapping).
    pub addr: Option<String>,
    /// Seconds since it connected.
    pub connected_secs: u64,
    /// Its NAT's TCP mapping as it reported it (`eim`, `apdm`, ...; `unknown`).
    pub nat: &'static str,
}

/// A service name.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// The name visitors `connect` to.
    pub name: String,
    /// The owner's fingerprint.
    pub owner: String,
    /// The owner's short fingerprint.
    pub owner_short: String,
    /// The owner's user.
    pub user: String,
    /// Whether the owner is online (else reserved for it during the grace period).
    pub online: bool,
}

/// A proxy exposed through the server.
#[derive(Debug, Clone, Serialize)]
pub struct ExposureStatus {
    /// The proxy's name.
    pub name: String,
    /// `tcp` or `http`.
    pub kind: &'static str,
    /// The server's port (tcp).
    pub port: Option<u16>,
    /// Where users reach it (http: one URL per host and location; tcp: `:PORT`).
    pub urls: Vec<String>,
    /// The owner's fingerprint.
    pub owner: String,
    /// The owner's short fingerprint.
    pub owner_short: String,
    /// The owner's user.
    pub user: String,
    /// Whether the owner is online (else reserved for it during the grace period).
    pub online: bool,
}

/// A relayed link.
#[derive(Debug, Clone, Serialize)]
pub struct RelayStatus {
    /// The session, in hex.
    pub session: String,
    /// The two peers' short fingerprints.
    pub peers: Vec<String>,
    /// Seconds since the relay started.
    pub secs: u64,
    /// Bytes relayed so far (both directions).
    pub bytes: u64,
}

/// Links made, by kind.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LinkCounts {
    /// Punched.
    pub direct: u64,
    /// Relayed through the server.
    pub relayed: u64,
    /// Punched by the birthday method.
    pub birthday: u64,
}

/// Builds the status from the registry's `snapshot`, the NAT each control
/// connection reported, and `metrics`; `vhost_port` and `https_port` for the URLs of
/// http and https routes.
pub(crate) fn build(
    metrics: &Metrics,
    snapshot: Snapshot,
    nat: &HashMap<u64, NatBehaviour>,
    vhost_port: Option<u16>,
    https_port: Option<u16>,
) -> Status {
    let peers: Vec<PeerStatus> = snapshot
        .conns
        .iter()
        .map(|c| {
            let seen = metrics.peer_seen(c.conn);
            let fp = c.owner.fingerprint();
            PeerStatus {
                fingerprint: fp.to_string(),
                short: fp.short(),
                user: c.user.clone(),
                addr: seen.as_ref().map(|s| s.addr.to_string()),
                connected_secs: seen.map_or(0, |s| s.since.elapsed().as_secs()),
                nat: nat_label(nat.get(&c.conn).copied()),
            }
        })
        .collect();
    let users_online: BTreeSet<String> = snapshot.conns.iter().map(|c| c.user.clone()).collect();

    let mut services = Vec::new();
    // (owner, proxy) → the exposure, to gather an http route's hosts and locations.
    let mut exposures: BTreeMap<(String, String), ExposureStatus> = BTreeMap::new();
    for c in snapshot.claims {
        let fp = c.holder.owner.fingerprint();
        let entry = |kind, port| ExposureStatus {
            name: c.holder.proxy.clone(),
            kind,
            port,
            urls: Vec::new(),
            owner: fp.to_string(),
            owner_short: fp.short(),
            user: c.user.clone(),
            online: c.online,
        };
        match c.kind {
            ClaimKind::Service(name) => services.push(ServiceStatus {
                name,
                owner: fp.to_string(),
                owner_short: fp.short(),
                user: c.user.clone(),
                online: c.online,
            }),
            ClaimKind::Tcp(port) => {
                let mut e = entry("tcp", Some(port));
                e.urls.push(format!(":{port}"));
                exposures.insert((fp.to_string(), c.holder.proxy.clone()), e);
            }
            ClaimKind::TcpMux(host) => {
                exposures
                    .entry((fp.to_string(), c.holder.proxy.clone()))
                    .or_insert_with(|| entry("tcpmux", None))
                    .urls
                    .push(format!("CONNECT {host}"));
            }
            ClaimKind::Https(host) => {
                let url = match https_port {
                    Some(443) | None => format!("https://{host}"),
                    Some(p) => format!("https://{host}:{p}"),
                };
                exposures
                    .entry((fp.to_string(), c.holder.proxy.clone()))
                    .or_insert_with(|| entry("https", None))
                    .urls
                    .push(url);
            }
            ClaimKind::Http { host, location } => {
                let url = match vhost_port {
                    Some(80) | None => format!("http://{host}{location}"),
                    Some(p) => format!("http://{host}:{p}{location}"),
                };
                exposures
                    .entry((fp.to_string(), c.holder.proxy.clone()))
                    .or_insert_with(|| entry("http", None))
                    .urls
                    .push(url);
            }
        }
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut exposures: Vec<ExposureStatus> = exposures.into_values().collect();
    exposures.sort_by(|a, b| (&a.name, &a.owner).cmp(&(&b.name, &b.owner)));

    let relays = metrics
        .relays()
        .into_iter()
        .map(|(session, r)| {
            let (read, written) = r.bytes.get();
            RelayStatus {
                session: format!("{session:016x}"),
                peers: r.peers,
                secs: r.since.elapsed().as_secs(),
                bytes: read + written,
            }
        })
        .collect();
    let [direct, relayed, birthday] = metrics.links();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: metrics.uptime_secs(),
        now: unix_now(),
        peers,
        users_online: users_online.into_iter().collect(),
        services,
        exposures,
        relays,
        links: LinkCounts {
            direct,
            relayed,
            birthday,
        },
        relay_bytes: metrics.relay_bytes(),
        history: metrics.history(),
    }
}
