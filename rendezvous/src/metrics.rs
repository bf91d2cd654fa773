//! The server's counters, and their Prometheus text rendering (`/metrics` of the
//! admin listener, see [`crate::admin`]).
//!
//! Hand-written rather than built on `prometheus-client`: the set is small and fixed,
//! every label comes from a closed enum (or an HTTP status code), and the gauges
//! (peers online, exposures, relays) are read from the server's own tables when
//! scraped, which that crate would need a custom collector for. So the hooks in the
//! connection code are one atomic increment each, and the server takes no new
//! dependency. The output follows the text exposition format 0.0.4 (`# HELP`,
//! `# TYPE`, counters ending in `_total`); the integration test parses it with the
//! `prometheus-parse` crate.
//!
//! Besides counters, this module keeps what the status page shows and no other table
//! has: when and from where each control connection came, the relays running (with
//! live byte counts), and a short history of samples for the dashboard's chart.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use common::{count::Bytes, defaults::ADMIN_HISTORY_LEN, proto::NatBehaviour};
use serde::Serialize;

/// How a link between two peers was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Punched: a simultaneous open between the peers' mapped ports.
    Direct,
    /// Spliced by this server (end-to-end encrypted).
    Relayed,
    /// Punched through a port-randomizing NAT by the birthday method (many ports
    /// tried at once). Counted once peers report it.
    Birthday,
}

impl LinkKind {
    const ALL: [LinkKind; 3] = [LinkKind::Direct, LinkKind::Relayed, LinkKind::Birthday];

    fn label(self) -> &'static str {
        match self {
            LinkKind::Direct => "direct",
            LinkKind::Relayed => "relayed",
            LinkKind::Birthday => "birthday",
        }
    }
}

/// What a punch attempt came to, as the first of the two peers reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PunchOutcome {
    /// The attempt made a direct link.
    Direct,
    /// The attempt failed (another may follow).
    Failed,
    /// The peer gave up on a direct link (relay or nothing).
    GaveUp,
}

impl PunchOutcome {
    fn label(self) -> &'static str {
        match self {
            PunchOutcome::Direct => "direct",
            PunchOutcome::Failed => "failed",
            PunchOutcome::GaveUp => "gave_up",
        }
    }
}

/// A limit that turned a request or connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limit {
    /// Too many link requests per second on one control connection.
    LinkRate,
    /// Too many peers waiting to be paired.
    Waiting,
    /// Too many service names on the server.
    Services,
    /// Too many links to one service being set up.
    PendingLinks,
    /// The server relays as many links as it may.
    Relays,
    /// A peer's data connection is at its stream limit (`--max-streams`).
    Streams,
    /// A user's `maxExposures`.
    Exposures,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::LinkRate => "link_rate",
            Limit::Waiting => "waiting_peers",
            Limit::Services => "services",
            Limit::PendingLinks => "pending_links",
            Limit::Relays => "relays",
            Limit::Streams => "streams",
            Limit::Exposures => "exposures",
        }
    }
}

/// A short name for a NAT's TCP mapping behaviour (RFC 4787), as the peer reported
/// it: `eim` (endpoint-independent), `eim_or_adm` (the server could not tell them
/// apart), `adm` (address-dependent), `apdm` (address and port dependent,
/// "symmetric"), `unknown` (not reported).
pub fn nat_label(m: Option<NatBehaviour>) -> &'static str {
    match m {
        Some(NatBehaviour::EndpointIndependent) => "eim",
        Some(NatBehaviour::EndpointIndependentOrAddressDependent) => "eim_or_adm",
        Some(NatBehaviour::AddressDependent) => "adm",
        Some(NatBehaviour::AddressAndPortDependent) => "apdm",
        None => "unknown",
    }
}

/// The two peers' NAT labels, in a fixed order (`apdm+eim`, never `eim+apdm`).
fn nat_pair(a: Option<NatBehaviour>, b: Option<NatBehaviour>) -> String {
    let (a, b) = (nat_label(a), nat_label(b));
    if a <= b {
        format!("{a}+{b}")
    } else {
        format!("{b}+{a}")
    }
}

/// A control connection as the server saw it arrive.
#[derive(Debug, Clone)]
pub(crate) struct PeerSeen {
    pub(crate) addr: SocketAddr,
    pub(crate) since: Instant,
}

/// A relay being spliced.
#[derive(Debug, Clone)]
pub(crate) struct RelaySeen {
    pub(crate) peers: Vec<String>,
    pub(crate) since: Instant,
    pub(crate) bytes: Bytes,
}

/// One sample of the history (cumulative counters and gauges at time `t`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub t: u64,
    /// Direct links made so far.
    pub direct: u64,
    /// Relayed links made so far.
    pub relayed: u64,
    /// Birthday links made so far.
    pub birthday: u64,
    /// Peers online then.
    pub peers: usize,
    /// Relays running then.
    pub relays: usize,
}

/// The server's counters. One per server, shared by its tasks.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    links: [AtomicU64; 3],
    punches: Mutex<BTreeMap<(String, PunchOutcome), u64>>,
    relay_bytes: Arc<AtomicU64>,
    tcp_connections: AtomicU64,
    vhost: Mutex<BTreeMap<u16, u64>>,
    stun: [AtomicU64; 2],
    refused: Mutex<BTreeMap<Limit, u64>>,
    peers: Mutex<HashMap<u64, PeerSeen>>,
    relays: Mutex<HashMap<u64, RelaySeen>>,
    history: Mutex<VecDeque<Sample>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            links: Default::default(),
            punches: Default::default(),
            relay_bytes: Default::default(),
            tcp_connections: Default::default(),
            vhost: Default::default(),
            stun: Default::default(),
            refused: Default::default(),
            peers: Default::default(),
            relays: Default::default(),
            history: Default::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters only: a poisoned lock holds numbers that are still good.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Removes its relay from the table when the relay ends.
pub(crate) struct RelayGuard {
    metrics: Arc<Metrics>,
    session: u64,
    bytes: Bytes,
}

impl RelayGuard {
    /// The relay's own byte counters.
    pub(crate) fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The server's total of relayed bytes.
    pub(crate) fn total(&self) -> Arc<AtomicU64> {
        self.metrics.relay_bytes.clone()
    }
}

impl Drop for RelayGuard {
    fn drop(&mut self) {
        lock(&self.metrics.relays).remove(&self.session);
    }
}

impl Metrics {
    /// A link of `kind` was made.
    pub fn link_made(&self, kind: LinkKind) {
        self.links[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A punch attempt between NATs `a` and `b` ended with `outcome`.
    pub fn punch(&self, a: Option<NatBehaviour>, b: Option<NatBehaviour>, outcome: PunchOutcome) {
        *lock(&self.punches)
            .entry((nat_pair(a, b), outcome))
            .or_default() += 1;
    }

    /// A user connection arrived on an exposed TCP port and was carried to its peer.
    pub fn tcp_connection(&self) {
        self.tcp_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The vhost answered a request with `status`.
    pub fn vhost_response(&self, status: u16) {
        *lock(&self.vhost).entry(status).or_default() += 1;
    }

    /// A STUN Binding request was answered, over TCP or UDP.
    pub fn stun_request(&self, tcp: bool) {
        self.stun[usize::from(tcp)].fetch_add(1, Ordering::Relaxed);
    }

    /// `limit` turned a request or connection away.
    pub fn refused(&self, limit: Limit) {
        *lock(&self.refused).entry(limit).or_default() += 1;
    }

    /// Control connection `id` from `addr` is up.
    pub(crate) fn peer_up(&self, id: u64, addr: SocketAddr) {
        lock(&self.peers).insert(
            id,
            PeerSeen {
                addr,
                since: Instant::now(),
            },
        );
    }

    /// Control connection `id` ended.
    pub(crate) fn peer_down(&self, id: u64) {
        lock(&self.peers).remove(&id);
    }

    /// Where and when control connection `id` arrived.
    pub(crate) fn peer_seen(&self, id: u64) -> Option<PeerSeen> {
        lock(&self.peers).get(&id).cloned()
    }

    /// A relay for `session` between `peers` (their fingerprints) starts: counted as a
    /// relayed link, listed until the guard is dropped.
    pub(crate) fn relay_started(self: &Arc<Self>, session: u64, peers: Vec<String>) -> RelayGuard {
        self.link_made(LinkKind::Relayed);
        let bytes = Bytes::default();
        lock(&self.relays).insert(
            session,
            RelaySeen {
                peers,
                since: Instant::now(),
                bytes: bytes.clone(),
            },
        );
        RelayGuard {
            metrics: self.clone(),
            session,
            bytes,
        }
    }

    /// The relays running, by session.
    pub(crate) fn relays(&self) -> Vec<(u64, RelaySeen)> {
        let mut v: Vec<_> = lock(&self.relays)
            .iter()
            .map(|(s, r)| (*s, r.clone()))
            .collect();
        v.sort_by_key(|(_, r)| r.since);
        v
    }

    /// Links made so far, by kind (direct, relayed, birthday).
    pub fn links(&self) -> [u64; 3] {
        LinkKind::ALL.map(|k| self.links[k as usize].load(Ordering::Relaxed))
    }

    /// Bytes relayed so far (both directions).
    pub fn relay_bytes(&self) -> u64 {
        self.relay_bytes.load(Ordering::Relaxed)
    }

    /// Seconds since the server started.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Records a sample for the history (the oldest goes past [`ADMIN_HISTORY_LEN`]).
    pub(crate) fn sample(&self) {
        let [direct, relayed, birthday] = self.links();
        let s = Sample {
            t: unix_now(),
            direct,
            relayed,
            birthday,
            peers: lock(&self.peers).len(),
            relays: lock(&self.relays).len(),
        };
        let mut h = lock(&self.history);
        if h.len() >= ADMIN_HISTORY_LEN {
            h.pop_front();
        }
        h.push_back(s);
    }

    /// The history, oldest first, with a sample for now at the end.
    pub(crate) fn history(&self) -> Vec<Sample> {
        self.sample_now_into(lock(&self.history).iter().copied().collect())
    }

    fn sample_now_into(&self, mut v: Vec<Sample>) -> Vec<Sample> {
        let [direct, relayed, birthday] = self.links();
        v.push(Sample {
            t: unix_now(),
            direct,
            relayed,
            birthday,
            peers: lock(&self.peers).len(),
            relays: lock(&self.relays).len(),
        });
        v
    }

    /// The Prometheus text exposition of every metric; the gauges come from `status`.
    pub fn render(&self, status: &crate::status::Status) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP punchline_{name} {help}");
            let _ = writeln!(out, "# TYPE punchline_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "punchline_{name}{labels} {value}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v)];
        family(
            "build_info",
            "gauge",
            "The server's version (always 1).",
            &[(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
        );
        family(
            "uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            &plain(self.uptime_secs()),
        );
        family(
            "peers_online",
            "gauge",
            "Peers with a control connection to the server.",
            &plain(status.peers.len() as u64),
        );
        family(
            "users_online",
            "gauge",
            "Users (tokens) with at least one peer online.",
            &plain(status.users_online.len() as u64),
        );
        let links: Vec<(String, u64)> = LinkKind::ALL
            .iter()
            .zip(self.links())
            .map(|(k, v)| (format!("{{kind=\"{}\"}}", k.label()), v))
            .collect();
        family(
            "links_total",
            "counter",
            "Links made between peers, by how: direct (punched), relayed (through this server), birthday (punched through a port-randomizing NAT).",
            &links,
        );
        let punches: Vec<(String, u64)> = lock(&self.punches)
            .iter()
            .map(|((pair, o), v)| {
                (
                    format!("{{nat_pair=\"{pair}\",outcome=\"{}\"}}", o.label()),
                    *v,
                )
            })
            .collect();
        family(
            "punch_attempts_total",
            "counter",
            "Punch attempts as the peers reported them (each once), by the two peers' NAT mapping (eim, eim_or_adm, adm, apdm, unknown) and outcome (direct, failed, gave_up).",
            &punches,
        );
        family(
            "relays_active",
            "gauge",
            "Links being relayed through this server now.",
            &plain(status.relays.len() as u64),
        );
        family(
            "relay_bytes_total",
            "counter",
            "Bytes relayed between peers (both directions, ciphertext).",
            &plain(self.relay_bytes()),
        );
        let mut by_kind: BTreeMap<&str, u64> = [("http", 0), ("tcp", 0), ("service", 0)].into();
        for e in &status.exposures {
            *by_kind.entry(e.kind).or_default() += 1;
        }
        *by_kind.entry("service").or_default() += status.services.len() as u64;
        let exposures: Vec<(String, u64)> = by_kind
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), *v))
            .collect();
        family(
            "exposures",
            "gauge",
            "Claims held on the server: tcp ports, http routes, service names (xtcp), including those reserved for peers that went away.",
            &exposures,
        );
        family(
            "tcp_connections_total",
            "counter",
            "User connections carried through exposed TCP ports.",
            &plain(self.tcp_connections.load(Ordering::Relaxed)),
        );
        let vhost: Vec<(String, u64)> = lock(&self.vhost)
            .iter()
            .map(|(code, v)| (format!("{{code=\"{code}\"}}"), *v))
            .collect();
        family(
            "vhost_requests_total",
            "counter",
            "HTTP requests answered by the vhost, by status code.",
            &vhost,
        );
        let stun: Vec<(String, u64)> = ["udp", "tcp"]
            .iter()
            .zip(&self.stun)
            .map(|(t, v)| (format!("{{transport=\"{t}\"}}"), v.load(Ordering::Relaxed)))
            .collect();
        family(
            "stun_requests_total",
            "counter",
            "STUN Binding requests answered.",
            &stun,
        );
        let refused: Vec<(String, u64)> = lock(&self.refused)
            .iter()
            .map(|(l, v)| (format!("{{limit=\"{}\"}}", l.label()), *v))
            .collect();
        family(
            "refused_total",
            "counter",
            "Requests and connections turned away by a limit (link_rate, waiting_peers, services, pending_links, relays, streams, exposures).",
            &refused,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_pairs_are_ordered_and_counted_together() {
        let m = Metrics::default();
        let (eim, sym) = (
            Some(NatBehaviour::EndpointIndependent),
            Some(NatBehaviour::AddressAndPortDependent),
        );
        m.punch(eim, sym, PunchOutcome::Failed);
        m.punch(sym, eim, PunchOutcome::Failed);
        m.punch(None, eim, PunchOutcome::Direct);
        let p = lock(&m.punches);
        assert_eq!(p[&("apdm+eim".to_string(), PunchOutcome::Failed)], 2);
        assert_eq!(p[&("eim+unknown".to_string(), PunchOutcome::Direct)], 1);
    }

    #[test]
    fn history_is_bounded() {
        let m = Metrics::default();
        for _ in 0..ADMIN_HISTORY_LEN + 10 {
            m.sample();
        }
        // The stored samples and one for now.
        assert_eq!(m.history().len(), ADMIN_HISTORY_LEN + 1);
    }

    #[test]
    fn a_relay_is_listed_until_its_guard_goes() {
        let m = Arc::new(Metrics::default());
        let g = m.relay_started(7, vec!["a".into(), "b".into()]);
        assert_eq!(m.relays().len(), 1);
        assert_eq!(m.links()[1], 1);
        drop(g);
        assert!(m.relays().is_empty());
    }
}
