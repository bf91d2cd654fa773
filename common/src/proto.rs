//! The messages of the control protocol: one enum per direction, the protocol version
//! in the first message of each side, every variant documented.
//!
//! A connection to the server is either a *control* connection (long-lived, one per
//! peer) or a *probe* connection (one per punch attempt, opened from the local port
//! the peer will punch from, so that the server sees that port's NAT mapping).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bumped on any incompatible change.
///
/// 2: peers prove an identity key in the server handshake (Noise `XNpsk0`); data
/// connections are tied to it; punch signals wait for both peers' proofs of the
/// shared secret.
///
/// 3: [`ClientMsg::Connect`] carries `relay_first`.
///
/// 4: `Paired`, `Incoming` and `Repunch` say how to punch ([`PunchMode`]: direct,
/// birthday, relay) instead of only whether direct is hopeless.
///
/// 5: the Noise handshakes carry the version and negotiate the transport cipher
/// (AES-256-GCM or ChaCha20-Poly1305, `common::secure`); an older peer is refused in
/// the handshake with a sentence naming both versions.
///
/// 6: [`ExposeSpec::Https`] (TLS routed by server name on the server's HTTPS vhost);
/// [`ClientMsg::Expose`] carries `compress`; [`HttpRoute`] `route_by_user`;
/// [`ExposeSpec::TcpMux`]; the multiplexer is punchline's own (`common::mux`:
/// 10-byte frame headers, no yamux), so that a frame is decrypted in place and handed
/// to its stream without a copy.
///
/// Also in 6: router port mappings: [`ConnKind::Probe`] carries the probe port's
/// `mapped` address (PCP, NAT-PMP or UPnP) and [`ClientMsg::Nat`] says whether the
/// peer can map ports (`portmap`; its `mapping` may be unknown).
pub const PROTOCOL_VERSION: u16 = 6;

/// What a connection to the server is for; sent in [`ClientMsg::Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnKind {
    /// The peer's long-lived control connection.
    Control,
    /// A probe connection for one punch attempt of a paired session.
    Probe {
        /// The session, as announced in [`ServerMsg::Paired`].
        session: u64,
        /// The attempt number, from 1.
        attempt: u8,
        /// The probe socket's local address (a LAN address behind a NAT).
        local: SocketAddr,
        /// The public address the router forwards to the probe's port (a port mapping
        /// made with PCP, NAT-PMP or UPnP), if the peer got one: the server offers it
        /// to the other peer instead of the observed address when both have the same
        /// IP address (a router behind another NAT maps on an address nobody reaches).
        mapped: Option<SocketAddr>,
    },
    /// The data connection of a peer that exposes services through the server: after
    /// `Welcome` it carries multiplexed streams (the server opens one stream per user connection,
    /// the peer accepts them). `instance` ties it to the peer's control connection
    /// (the value the peer sent in its [`ClientMsg::Expose`] requests).
    Data {
        /// The peer process's random instance id.
        instance: u64,
    },
    /// One half of a relayed link: once the other peer's half arrives, the server
    /// sends [`ServerMsg::RelayReady`] and from then on splices raw bytes between the
    /// two connections. The link's own Noise channel runs inside, end to end: the
    /// server sees only its ciphertext.
    Relay {
        /// The session, as announced in [`ServerMsg::Paired`] or [`ServerMsg::Incoming`].
        session: u64,
    },
}

/// How a peer wants to be paired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum Pairing {
    /// Pair with the next peer that also asks for `Any` (the C demo's behaviour).
    Any,
    /// Pair only with a peer that presents the same code.
    Code(String),
}

/// How a punch attempt ended, reported by each peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A direct link is up.
    Direct {
        /// The attempt that succeeded.
        attempt: u8,
        /// Milliseconds from the punch signal to the link being authenticated.
        millis: u32,
    },
    /// The attempt failed; another may follow.
    AttemptFailed {
        /// The attempt that failed.
        attempt: u8,
        /// Why, for the server's log.
        reason: String,
    },
    /// All attempts failed; the peer gives up on a direct link.
    GaveUp {
        /// Why, for the server's log.
        reason: String,
    },
}

/// Messages from a peer to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message on every connection.
    Hello {
        /// Must equal the server's [`PROTOCOL_VERSION`].
        version: u16,
        /// What this connection is for.
        kind: ConnKind,
    },
    /// Ask to be paired with another peer (control connection).
    Pair(Pairing),
    /// Answer to [`ServerMsg::Ping`] with the same nonce.
    Pong(u64),
    /// The result of a punch attempt (control connection).
    Report {
        /// The session the report is about.
        session: u64,
        /// What happened.
        outcome: Outcome,
    },
    /// Offer a named service to visitors (control connection, the owner).
    Register {
        /// The service's name, unique on the server.
        name: String,
    },
    /// Ask for a link to the owner of a named service (control connection, the
    /// visitor). Answered with [`ServerMsg::Paired`] or [`ServerMsg::Refused`].
    Connect {
        /// The service's name.
        name: String,
        /// Skip the direct attempts and relay at once (both peers are told so in
        /// `mode`, as [`PunchMode::Relay`]): the visitor's previous link to this service could not
        /// be made direct, so a new one (after a server restart, say) should not wait
        /// a punch window for the same result. The visitor still tries direct in the
        /// background once the relayed link is up.
        relay_first: bool,
    },
    /// Ask for another direct attempt on a session whose link is relayed; the server
    /// answers both peers with [`ServerMsg::Repunch`].
    Repunch {
        /// The session.
        session: u64,
    },
    /// Expose a local service through the server (frp's tcp and http proxies).
    /// Answered with [`ServerMsg::Exposed`] or [`ServerMsg::Refused`]. User connections
    /// arrive as streams on the peer's data connection ([`ConnKind::Data`]), each
    /// starting with the stream header naming `name`.
    Expose {
        /// The proxy's name, unique per peer; names the streams.
        name: String,
        /// The peer process's random instance id: a peer that reconnects with the same
        /// id takes its exposures back; another peer cannot take them while in use.
        instance: u64,
        /// What to expose.
        spec: ExposeSpec,
        /// Compress the proxy's streams between server and peer, after the stream
        /// header ([`crate::compress`]; frp's `transport.useCompression`).
        compress: bool,
    },
    /// Proof of the session's shared secret ([`crate::secure::Psk::proof`]), for the
    /// other peer: the initiator sends it first; the responder sends its own only
    /// after checking the initiator's. The server forwards it as
    /// [`ServerMsg::PeerProof`] and sends no punch signal (no address) before both
    /// proofs were accepted.
    Prove {
        /// This side's session ticket.
        session: u64,
        /// HMAC of the session nonce and this side's role, keyed with the link PSK.
        proof: [u8; 32],
    },
    /// The initiator's verdict on the responder's proof (or the responder's, when the
    /// initiator's proof was wrong).
    Verified {
        /// This side's session ticket.
        session: u64,
        /// Whether the other peer's proof was right.
        ok: bool,
    },
    /// This peer's TCP mapping behaviour, as it measured it through the server's
    /// alternate endpoint (control connection; sent when known, again after a
    /// reconnection). When both peers of a pairing map per destination, the server
    /// says so in [`ServerMsg::Paired`] / [`ServerMsg::Incoming`].
    Nat {
        /// How the peer's NAT maps its TCP connections, if measured.
        mapping: Option<NatBehaviour>,
        /// Whether the peer's router grants port mappings (PCP, NAT-PMP, UPnP): its
        /// probes then carry a mapped address that anyone can connect to, so the
        /// server picks the plain simultaneous open whatever the mappings.
        portmap: bool,
    },
    /// The link of a session is over: closed, or abandoned before it came up (control
    /// connection). The server forgets the session and tells the other peer
    /// ([`ServerMsg::PeerGone`]). Sessions nobody ends end anyway: when both peers
    /// reported a direct link, when their relay closes, when a control connection
    /// ends, or when the link is not up in time.
    EndSession {
        /// This side's session ticket.
        session: u64,
    },
}

/// A NAT's mapping or filtering behaviour (RFC 4787 / RFC 5780 terms), as measured by
/// a peer: what `peer nat-check` reports for each, and the TCP mapping a peer tells
/// the server ([`ClientMsg::Nat`]). One type for both, so that the report and pairing
/// never disagree on what a measurement means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatBehaviour {
    /// The same for every remote endpoint ("cone"; for mapping: the same public port
    /// for every destination, or no NAT at all).
    EndpointIndependent,
    /// Not address-and-port-dependent, but the server has one IP address, so
    /// endpoint-independent and address-dependent cannot be told apart.
    EndpointIndependentOrAddressDependent,
    /// Depends on the remote IP address (for mapping: a new public port per
    /// destination IP address).
    AddressDependent,
    /// Depends on the remote IP address and port ("symmetric" for mapping).
    AddressAndPortDependent,
}

impl NatBehaviour {
    /// Whether a *mapping* depends on the destination, so that the address the server
    /// sees is not the one the other peer would have to reach (a symmetric NAT).
    pub fn per_destination(self) -> bool {
        matches!(
            self,
            NatBehaviour::AddressDependent | NatBehaviour::AddressAndPortDependent
        )
    }

    /// How a person would say it.
    pub fn describe(self) -> &'static str {
        match self {
            NatBehaviour::EndpointIndependent => "endpoint-independent",
            NatBehaviour::AddressDependent => "address-dependent",
            NatBehaviour::AddressAndPortDependent => "address-and-port-dependent",
            NatBehaviour::EndpointIndependentOrAddressDependent => {
                "endpoint-independent or address-dependent (the server has one IP address)"
            }
        }
    }
}

/// How the peers of a session try for a direct link, chosen by the server from the
/// NAT mappings they reported ([`ClientMsg::Nat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PunchMode {
    /// Simultaneous open from both probes' mapped ports (neither NAT maps per
    /// destination, or a mapping is unknown).
    Direct,
    /// Both NATs map per destination: no punch can work; relay at once.
    Relay,
    /// Birthday punch, the easy side (this NAT keeps one public port for all
    /// destinations, the other's maps per destination): listen on the probe's port
    /// and send SYNs from it to many ports of the other's public address.
    BirthdayEasy,
    /// Birthday punch, the hard side (this NAT maps per destination): open many
    /// sockets toward the other's mapped address, each getting a new public port.
    BirthdayHard,
}

impl PunchMode {
    /// The modes of two peers whose NATs map as `a` and `b` (`None`: unknown), of
    /// which `mapped_a` / `mapped_b` can have their router map their punch port: a
    /// mapped port takes connections from anyone, so the other peer only has to dial
    /// it, a plain simultaneous open.
    pub fn pair_mapped(
        a: Option<NatBehaviour>,
        mapped_a: bool,
        b: Option<NatBehaviour>,
        mapped_b: bool,
    ) -> (PunchMode, PunchMode) {
        if mapped_a || mapped_b {
            (PunchMode::Direct, PunchMode::Direct)
        } else {
            Self::pair(a, b)
        }
    }

    /// The modes of two peers whose NATs map as `a` and `b` (`None`: unknown).
    pub fn pair(a: Option<NatBehaviour>, b: Option<NatBehaviour>) -> (PunchMode, PunchMode) {
        let hard = |m: Option<NatBehaviour>| m.map(NatBehaviour::per_destination);
        match (hard(a), hard(b)) {
            (Some(true), Some(true)) => (PunchMode::Relay, PunchMode::Relay),
            (Some(true), Some(false)) => (PunchMode::BirthdayHard, PunchMode::BirthdayEasy),
            (Some(false), Some(true)) => (PunchMode::BirthdayEasy, PunchMode::BirthdayHard),
            _ => (PunchMode::Direct, PunchMode::Direct),
        }
    }
}

/// What a peer exposes through the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExposeSpec {
    /// The server listens on `remote_port` (0: the server chooses) and carries every
    /// connection to the peer.
    Tcp {
        /// The port on the server.
        remote_port: u16,
    },
    /// The server routes HTTP requests on its vhost port by Host and path.
    Http(HttpRoute),
    /// The server receives datagrams on UDP port `remote_port` (0: the server chooses)
    /// and carries each user address's datagrams on a stream of its own, framed by
    /// [`crate::net::datagram_codec`], to the peer (frp's udp proxy).
    Udp {
        /// The UDP port on the server.
        remote_port: u16,
    },
    /// The server routes TLS connections on its HTTPS vhost port by the server name
    /// of their ClientHello (SNI), without terminating TLS: each arrives as a stream
    /// carrying the client's bytes from the first, as a tcp proxy's do (frp's https
    /// proxy).
    Https {
        /// Host names served (`www.example.com`, `*.example.com`).
        domains: Vec<String>,
        /// A name under the server's subdomain host (`web` → `web.example.com`).
        subdomain: Option<String>,
    },
    /// The server answers HTTP CONNECT requests on its tcpmux port for these names
    /// (`CONNECT www.example.com:22 HTTP/1.1`) and carries the rest of each
    /// connection as a stream, as a tcp proxy's (frp's tcpmux proxy, multiplexer
    /// `httpconnect`).
    TcpMux {
        /// Host names served (`www.example.com`, `*.example.com`).
        domains: Vec<String>,
        /// A name under the server's subdomain host.
        subdomain: Option<String>,
    },
}

/// An HTTP virtual host route (frp's http proxy options).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Host names served (`www.example.com`, `*.example.com`).
    pub domains: Vec<String>,
    /// A name under the server's subdomain host (`web` → `web.example.com`).
    pub subdomain: Option<String>,
    /// Path prefixes served (empty: `/`); the longest match wins.
    pub locations: Vec<String>,
    /// Replace the Host header sent upstream.
    pub host_rewrite: Option<String>,
    /// Require HTTP basic auth with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Headers set on requests going upstream.
    pub request_headers: Vec<(String, String)>,
    /// Headers set on responses going back to the client.
    pub response_headers: Vec<(String, String)>,
    /// Serve only requests whose basic-auth user is this one (frp's
    /// `routeByHTTPUser`): routes of one host and location that differ in it are
    /// chosen by the request's user, and one without it takes the other users.
    pub route_by_user: Option<String>,
}

/// Messages from the server to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Answer to [`ClientMsg::Hello`]: accepted.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        version: u16,
        /// The address this connection arrives from, as the server sees it: the peer's
        /// NAT mapping for the connection's local port.
        observed: SocketAddr,
    },
    /// The server refuses this connection or request; the reason is for humans.
    Refused(String),
    /// RTT measurement and liveness; answer with [`ClientMsg::Pong`].
    Ping(u64),
    /// Waiting for a partner (answer to [`ClientMsg::Pair`]).
    Waiting,
    /// Paired with another peer: open a probe connection for attempt 1.
    Paired {
        /// Names the session in probes and reports.
        session: u64,
        /// Whether this side is the Noise initiator of the link (the later arrival).
        initiator: bool,
        /// How to try for a direct link, from the NAT mappings both peers reported.
        mode: PunchMode,
        /// Random per session, the same for both peers: what their proofs of the
        /// shared secret are bound to ([`ClientMsg::Prove`]).
        nonce: [u8; 16],
    },
    /// On a probe connection: punch now.
    Punch {
        /// The other peer's public address for this attempt (its probe's mapping).
        peer_public: SocketAddr,
        /// The other peer's local address of its probe (tried too when both peers
        /// share a public IP).
        peer_local: SocketAddr,
        /// This side's own public address for this attempt.
        own_public: SocketAddr,
    },
    /// The other peer of the session is gone; stop.
    PeerGone {
        /// The session that ended.
        session: u64,
        /// Why.
        reason: String,
    },
    /// Answer to [`ClientMsg::Register`]: the service is online.
    Registered {
        /// The service's name.
        name: String,
    },
    /// To a service's owner: a visitor asks for a link. The owner is the Noise
    /// responder; open probes (and, if punching fails, a relay half) for `session`.
    Incoming {
        /// Names this side of the new session.
        session: u64,
        /// The service asked for.
        name: String,
        /// The visitor's address as the server sees it (for logs).
        visitor: SocketAddr,
        /// How to try for a direct link, from the NAT mappings both peers reported.
        mode: PunchMode,
        /// As in [`ServerMsg::Paired`].
        nonce: [u8; 16],
    },
    /// On a relay connection: the other half is here; from now on the connection
    /// carries raw bytes to and from the other peer.
    RelayReady,
    /// Answer to [`ClientMsg::Expose`]: the service is reachable.
    Exposed {
        /// The proxy's name.
        name: String,
        /// For TCP: the port the server listens on (useful when 0 was asked for).
        remote_port: Option<u16>,
        /// For HTTP: the URLs the server routes to it.
        urls: Vec<String>,
    },
    /// Run one more punch attempt for a relayed session, numbered `attempt`.
    Repunch {
        /// This side's session ticket.
        session: u64,
        /// The attempt number to put in the probe's `Hello`.
        attempt: u8,
        /// How to punch, from the NAT mappings reported by now.
        mode: PunchMode,
    },
    /// The other peer's [`ClientMsg::Prove`], for this side to check.
    PeerProof {
        /// This side's session ticket.
        session: u64,
        /// The other peer's proof.
        proof: [u8; 32],
    },
    /// Something the user should know that changes nothing in the protocol (e.g. that
    /// the pairing code it waits on was just used by two other peers); printed.
    Notice(String),
}

/// The reason in [`ServerMsg::PeerGone`] when a peer found the other's proof wrong.
pub const REASON_WRONG_SECRET: &str = "the other peer holds a different secret";

/// Version byte of the header that starts every data stream.
pub const STREAM_HEADER_V1: u8 = 1;

/// The header that starts every data stream (service links and exposures alike):
/// version, name length (u16, big endian), the name of the service or proxy.
pub fn stream_header(name: &str) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
    let mut h = Vec::with_capacity(3 + name.len());
    h.push(STREAM_HEADER_V1);
    h.extend_from_slice(&(name.len() as u16).to_be_bytes());
    h.extend_from_slice(name);
    h
}
