//! Every timeout and limit in one place, each with the reason for its value.

use std::time::Duration;

/// The rendezvous server's port when none is given: the C demo's port.
pub const SERVER_PORT: u16 = 8877;

/// A STUN server's port when none is given (RFC 8489 §18.4).
pub const STUN_PORT: u16 = 3478;

/// Most visitors (links) a `serve` owner accepts at once, unless told otherwise
/// (`--max-links`): each link holds a few descriptors and a multiplexed connection, so 64 keeps
/// a forgotten service from being an open door for thousands, while covering a team.
pub const SERVICE_MAX_LINKS: usize = 64;

/// How long `serve`, `connect` and `expose` keep trying to reach a server they have
/// never reached before they give up (exit 1), unless `--retry-forever`: a mistyped
/// `--server` is an error within seconds instead of WARN lines for ever, while a
/// server starting at the same moment (both on one machine at boot) still has time to
/// come up: the first reconnect delays are under a second, so this is about ten tries.
/// Once connected, a lost server is retried for ever.
pub const START_WAIT: Duration = Duration::from_secs(10);

/// How long the server remembers that a pairing code paired two peers: a third peer
/// arriving with it within this time is told that the code was just used (it waits
/// for a new partner, which is rarely what was meant). Long enough to cover a
/// transfer started by hand; bounded in number by [`MAX_WAITING`].
pub const RECENT_CODE_TTL: Duration = Duration::from_secs(600);

/// Largest control frame (after decryption). Control messages are small (addresses,
/// names, reasons); 64 KiB leaves room for growth while a hostile length prefix can
/// never make a process allocate more than this per connection.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Largest handshake frame. Noise `NNpsk0` messages are 48 bytes plus payload; the
/// limit rejects random bytes and port scanners before any allocation of note.
pub const MAX_HANDSHAKE_FRAME: usize = 1024;

/// A new connection must finish the Noise handshake and its `Hello` within this
/// time, or it is dropped. Long enough for a slow mobile link (several RTTs of
/// 500 ms), short enough that idle sockets from scanners do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server pings each control connection this often, to measure RTT (for timing
/// the punch signal) and to notice dead peers. Also refreshes NAT mappings, whose TCP
/// established timeouts are minutes to hours.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// A control connection that has not answered for this long is dropped: by the
/// server (no pong), and by the peer (no ping: the server is paused or gone while
/// the TCP connection looks alive). Three ping intervals.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// RTT samples taken on each probe connection before the punch signal is timed.
/// The minimum of a few samples filters out scheduling noise.
pub const PROBE_PINGS: usize = 3;

/// How long each side keeps dialing (and listening) during one punch attempt.
/// NATLAB measured SYNs up to 500 ms apart still succeeding with immediate redial;
/// silently dropping NATs need one SYN retransmit (1 s on Linux). 3 s covers both.
pub const PUNCH_WINDOW: Duration = Duration::from_secs(3);

/// Punch attempts per link before giving up on a direct connection. DCUtR's
/// measurements: 97.6% of successful punches succeed on the first attempt.
pub const PUNCH_ATTEMPTS: u8 = 3;

/// Time for the Noise handshake on a freshly punched connection (a few RTTs).
pub const LINK_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server waits for the other peer's probe connection of an attempt
/// before it declares the attempt failed.
pub const PROBE_WAIT: Duration = Duration::from_secs(10);

/// TCP keepalive on links: idle time before the first probe, interval, and count.
/// A peer that vanishes without a FIN (power loss, NAT reboot) is noticed in
/// about `KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES` = 15 s.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_RETRIES: u32 = 5;

/// Unacknowledged data older than this kills a link (`TCP_USER_TIMEOUT`), so a
/// writer toward a dead peer errors instead of blocking for the kernel's ~15 minutes.
pub const USER_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest pairing code and service name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// How many peers may wait for a partner at once on one server (bounds memory under a
/// flood of authenticated clients).
pub const MAX_WAITING: usize = 4096;

/// Largest STUN message read or sent (RFC 8489 §6.1: 548 bytes fit any IPv4 path
/// unfragmented; Binding requests and responses are under 120 bytes). Larger requests
/// are dropped unread.
pub const MAX_STUN_MESSAGE: usize = 548;

/// A STUN response is never more than this many times the size of its request, so
/// the server cannot amplify a spoofed request into a flood. A bare 20-byte request
/// gets at most 80 bytes back; optional attributes are left out to stay within it.
pub const STUN_AMPLIFICATION: usize = 4;

/// STUN over TCP (the server's alternate endpoints): a connection must send its next
/// request within this time, or it is closed. Long enough for `peer nat-check` to keep
/// its mappings while it tests the other endpoints.
pub const STUN_TCP_IDLE: Duration = Duration::from_secs(10);

/// Requests answered on one STUN-over-TCP connection before the server closes it.
pub const STUN_TCP_MAX_REQUESTS: usize = 8;

/// How long the server tries a TCP dial-back (`peer nat-check`'s TCP filtering test)
/// before it reports that the client's NAT dropped the SYN: a SYN and one retransmit.
pub const STUN_DIAL_BACK_TIMEOUT: Duration = Duration::from_millis(2500);

/// STUN-over-TCP connections served at once; more wait in the kernel's backlog.
pub const STUN_TCP_MAX_CONNS: usize = 256;

/// First STUN retransmission timeout of `peer nat-check` over UDP (RFC 8489 §6.2.1
/// recommends 500 ms); each retransmission doubles it.
pub const STUN_RTO: Duration = Duration::from_millis(500);

/// Each `peer nat-check` test gives up after this long (RFC 8489's full schedule
/// takes 39.5 s; a filtering test that gets no answer is a *result*, so the bound is
/// short: transmissions at 0, 0.5 and 1.5 s, then 1.5 s more to hear back).
pub const STUN_TEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Relayed links one server carries at once. Each costs two sockets and two 64 KiB
/// buffers; the cap keeps a flood of sessions from exhausting file descriptors.
pub const MAX_RELAYS: usize = 1024;

/// Services (names) one server keeps registered at once.
pub const MAX_SERVICES: usize = 4096;

/// How long a peer waits before its first background attempt to turn a relayed link
/// into a direct one; doubled after each failure up to [`REPUNCH_MAX_BACKOFF`].
pub const REPUNCH_FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// The longest wait between background direct attempts on a relayed link (NAT
/// mappings and routes change on the scale of minutes).
pub const REPUNCH_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Direct attempts a service link makes before falling back to the relay: one, so
/// that the user's first connection waits at most one punch window; further attempts
/// run in the background while the relay carries the traffic.
pub const SERVICE_DIRECT_ATTEMPTS: u8 = 1;

/// How long a peer holds its first pairing request back for its own NAT mapping
/// measurement (which runs alongside the connection to the server), so that the
/// server can tell a pair of symmetric NATs apart. Past it, the mapping is unknown.
pub const NAT_MAPPING_WAIT: Duration = Duration::from_secs(1);

/// Reconnecting to the server after it went away: first delay, doubled up to the max,
/// reset after [`RECONNECT_STABLE`] of uptime (rathole's pattern).
pub const RECONNECT_FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// See [`RECONNECT_FIRST_BACKOFF`].
pub const RECONNECT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// See [`RECONNECT_FIRST_BACKOFF`].
pub const RECONNECT_STABLE: Duration = Duration::from_secs(60);

/// A session whose peers have neither proved the shared secret to each other nor
/// joined a relay within this time is ended by the server (and the owner's link slot
/// freed). The owner waits as long for a visitor's proof before it gives up; an honest
/// visitor proves within a few round trips of being paired.
pub const PENDING_LINK_TIMEOUT: Duration = PROBE_WAIT;

/// A session whose link is neither direct nor relayed this long after pairing is
/// ended by the server: three direct attempts (each at most a probe wait and a punch
/// window) and the relay fit well within it.
pub const SESSION_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Links to one service being set up at once (paired, secret not yet proved). Half of
/// an owner's default `--max-links` (64): visitors that never prove anything cannot
/// take every link slot of the owner.
pub const MAX_PENDING_LINKS_PER_SERVICE: usize = 32;

/// Links to one service that one visitor (identity) may have being set up at once. A
/// visitor asks for one link at a time; a few allow for retries overlapping the
/// server's [`PENDING_LINK_TIMEOUT`].
pub const MAX_PENDING_LINKS_PER_VISITOR: usize = 4;

/// Links to one service being set up at once from one IP address, whatever the
/// identities: identities cost nothing to make, so a flood of them from one address
/// holds at most this many of the service's [`MAX_PENDING_LINKS_PER_SERVICE`] slots
/// (a quarter), and visitors elsewhere still get through. Room for a few honest
/// visitors behind one NAT.
pub const MAX_PENDING_LINKS_PER_ADDRESS: usize = 8;

/// Link requests (`Pair`, `Connect`) one control connection may make per second on
/// average. A visitor asks once per link, and a link serves many connections; 10 per
/// second is far above honest use and far below what fills an owner's slots.
pub const LINK_REQUESTS_PER_SEC: u32 = 10;

/// Link requests one control connection may make in a burst (a `peer -c` config with
/// many visitors starts them all at once).
pub const LINK_REQUEST_BURST: u32 = 20;

/// A warning about a refused flood is logged at most this often per connection (with a
/// count of what was held back), so the log shows a flood without being flooded.
pub const WARN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How often the server and peer binaries hand freed heap memory back to the system
/// (`malloc_trim`). glibc keeps what 1,000 departed connections freed (measured: RSS
/// 42 → 220 MB over five rounds, 1.6 MB of it in use); a trim every 10 s costs
/// milliseconds and brings RSS back to the live size.
pub const MALLOC_TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Free memory at the top of the heap that glibc keeps instead of returning it at
/// once (`common::net::keep_freed_heap`): 16 MiB holds the per-frame buffers of a
/// few hundred multiplexer frames in flight, so a bulk transfer does not fault pages in and
/// out for every frame; the periodic trim ([`MALLOC_TRIM_INTERVAL`]) returns it later.
pub const HEAP_TRIM_THRESHOLD: usize = 16 * 1024 * 1024;

/// Blocks up to this size come from the heap, not from an `mmap` of their own
/// (`common::net::keep_freed_heap`): 1 MiB covers the data path's buffers (Noise
/// read buffers of 256 KiB, multiplexer frames of 64 KiB), which would otherwise be mapped
/// and unmapped, zeroed page by page, over and over.
pub const HEAP_MMAP_THRESHOLD: usize = 1024 * 1024;

/// A link or data connection (`common::mux`) on which nothing at all arrived for this
/// long is lost: the other side is paused (SIGSTOP), frozen, or gone while its kernel
/// or a NAT still answers TCP. Each side pings every 10 s (`mux::PING_INTERVAL`) and
/// answers the other's pings, checked every [`LIVENESS_WAKE`], so a live peer is heard
/// from at least every ~11 s plus a round trip; 15 s leaves room for a slow link and
/// notices a silent peer within 16 s.
pub const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a multiplexed connection's supervisor wakes to check for silence and send
/// a ping when one is due. A wake costs one poll; once a second is nothing.
pub const LIVENESS_WAKE: Duration = Duration::from_secs(1);

/// Reconnecting to the server: during the first [`RECONNECT_FAST_PERIOD`] of an
/// outage the delay never exceeds this, so that a restarted server has its peers (and
/// so their services and exposures) back within a couple of seconds.
pub const RECONNECT_FAST_MAX: Duration = Duration::from_secs(1);

/// A user connection that arrives while the peer has lost the server (and needs it to
/// make a new link) waits this long for it to come back before it is reset: peers
/// reconnect within [`RECONNECT_FAST_MAX`] while an outage is young, so a restart is
/// covered; a server that stays away costs the user no more than this.
pub const SERVER_BACK_WAIT: Duration = Duration::from_secs(3);

/// See [`RECONNECT_FAST_MAX`]: a restart takes seconds; past this the outage is
/// longer, and the delay doubles up to [`RECONNECT_MAX_BACKOFF`].
pub const RECONNECT_FAST_PERIOD: Duration = Duration::from_secs(30);

/// Every reconnect delay is shortened by a random part of up to this fraction, so that
/// the peers of a restarted server do not all come back in the same instant.
pub const RECONNECT_JITTER: f64 = 0.5;

/// The server's accept loops wait this long after a failed `accept` (out of file
/// descriptors, typically), doubling up to [`ACCEPT_BACKOFF_MAX`] while it keeps
/// failing: never a busy loop, and back within a second of descriptors being free.
pub const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// See [`ACCEPT_BACKOFF_FIRST`].
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections the server's control port serves at once (control, probe, relay and
/// data connections); more wait in the kernel's backlog. Each costs a socket and a
/// task of a few KiB: 20,000 is far more than one server's peers, and keeps a flood
/// from exhausting file descriptors that exposures and the vhost need too.
pub const MAX_SERVER_CONNECTIONS: usize = 20_000;

/// User connections one exposed TCP port serves at once; more wait in the kernel's
/// backlog. Issue 9's target is 10,000 concurrent connections through one port.
pub const MAX_PORT_CONNECTIONS: usize = 10_000;

/// Birthday punch (port-restricted × symmetric, `common::birthday`): sockets the hard
/// side (the NAT that maps per destination) opens toward the easy side's mapped
/// endpoint, each getting a fresh public port. frp's xtcp uses 256 over UDP. With
/// [`BIRTHDAY_SPRAY`] probes into a NAT that picks ports uniformly from 64,512, a
/// miss has probability exp(-256 × 2048 / 64512) ≈ 0.03%.
pub const BIRTHDAY_SOCKETS: usize = 256;

/// Birthday punch: SYNs the easy side sends, from its one mapped port, to ports of
/// the hard side's public address: the first [`BIRTHDAY_PREDICT`] just above the
/// port the server saw (a NAT that allocates sequentially), the rest at random.
/// Each is one socket, closed after [`BIRTHDAY_PROBE_LIFETIME`], so at most one SYN.
pub const BIRTHDAY_SPRAY: usize = 2048;

/// Birthday punch: how many of [`BIRTHDAY_SPRAY`] go to the ports just above the hard
/// side's last seen port: a NAT that hands out ports in sequence gives the hard
/// side's new sockets those. Costs 16% of the random coverage
/// (miss ≈ 0.1% instead of 0.03% for a random NAT).
pub const BIRTHDAY_PREDICT: usize = 320;

/// Birthday punch: the easy side spreads its SYNs over this long, in small batches
/// (a burst of 2,000 SYNs is what DoS filters look for), starting
/// [`BIRTHDAY_SPRAY_DELAY`] after the punch signal.
pub const BIRTHDAY_SPRAY_TIME: Duration = Duration::from_millis(400);

/// Birthday punch: the easy side waits this long after the signal before its first
/// SYN, so that the hard side's NAT holds its new mappings when the SYNs arrive
/// (opening 256 sockets takes some milliseconds on a busy machine).
pub const BIRTHDAY_SPRAY_DELAY: Duration = Duration::from_millis(40);

/// Birthday punch: each of the easy side's SYN sockets is closed after this long,
/// before its first retransmission (1 s on Linux), so that each costs one SYN. A
/// crossing that completes later arrives at the listener on the same port.
pub const BIRTHDAY_PROBE_LIFETIME: Duration = Duration::from_millis(900);

/// Birthday punch: the IP TTL of the hard side's first SYNs. They must pass the hard
/// side's own NAT (creating its mappings) but not reach the easy side's NAT, which
/// would answer them with RST or ICMP and so close the mappings again. 4 hops leave a
/// home router and a carrier-grade NAT behind and die well before the other site on a
/// real path (10+ hops; the lab ages frames by 10 per link). The TTL goes back to the
/// system's default right after, for the SYN-ACK and retransmissions.
pub const BIRTHDAY_TTL: u32 = 4;

/// Birthday punch: the whole attempt (sockets, listener, SYNs) ends after this long.
/// Covers the spray, one SYN retransmission of the hard side (1 s) and the
/// handshake's round trips; the hard side's sockets send at most two SYNs each.
pub const BIRTHDAY_WINDOW: Duration = Duration::from_millis(2500);

/// The admin listener (`rendezvous --admin`) records a sample of the server's counters
/// (links made, peers online, relays) this often, for the dashboard's "over time"
/// chart: fine enough to see a burst of relayed links, coarse enough that an hour
/// fits in [`ADMIN_HISTORY_LEN`] samples.
pub const ADMIN_HISTORY_INTERVAL: Duration = Duration::from_secs(10);

/// Samples the admin listener keeps (see [`ADMIN_HISTORY_INTERVAL`]): one hour, a few
/// dozen KiB of JSON; longer histories belong in Prometheus.
pub const ADMIN_HISTORY_LEN: usize = 360;

/// Connections the admin listener serves at once: a few browsers and a Prometheus
/// scraper need a handful; the cap keeps a flood on the admin port from costing the
/// peers' side descriptors.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// A request to the admin listener must arrive (headers) within this time; it is also
/// how long a kept-alive admin connection may sit idle.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `peer status` waits this long for each running peer's status socket to answer; a
/// peer that is stuck is reported as not answering instead of hanging the command.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of one peer's status document that `peer status` reads: a document with
/// thousands of links and exposures fits; a process that sends more is not a peer.
pub const PEER_STATUS_MAX_DOCUMENT: u64 = 4 << 20;

/// A UDP session of an exposed udp port (one user address) ends after this long
/// without a datagram either way: 60 s sits between Linux conntrack's 30 s for
/// unanswered UDP flows and its 120 s for answered streams, and DNS, game and VPN
/// clients send more often than that while they are alive.
pub const UDP_SESSION_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Most UDP sessions (user addresses) one exposed udp port carries at once; datagrams
/// from new addresses past it are dropped. Each session is a stream to the peer.
pub const MAX_UDP_SESSIONS: usize = 1024;

/// Datagrams queued per UDP session toward the peer; past it new ones are dropped,
/// as a congested UDP path drops them.
pub const UDP_SESSION_QUEUE: usize = 256;

/// Most bytes of a TLS ClientHello the HTTPS vhost reads to find its server name (SNI),
/// across all the records it spans: a browser's hello is 0.5-2 KB (about 1.8 KB with a
/// post-quantum key share), one full TLS record is 16 KiB + 5 bytes of header, and
/// HAProxy's and nginx's `ssl_preread` look within one such buffer too. A client that
/// sends more before naming a host is closed.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// How long a port mapping protocol (PCP, NAT-PMP: one UDP round trip to the gateway on
/// the LAN) has to answer one request before it is sent again. RFC 6886 starts its
/// retransmissions at 250 ms; a home router answers in a few ms.
pub const PORTMAP_RTO: Duration = Duration::from_millis(250);

/// How often a PCP / NAT-PMP request is sent before the protocol counts as absent
/// (RFC 6886 allows 9; a peer must not hold up its start or a punch for seconds on a
/// network without a mapping-capable router): 250 + 500 ms.
pub const PORTMAP_TRIES: u32 = 2;

/// How long UPnP IGD discovery (an SSDP search sent to the gateway only) and each of its
/// SOAP requests may take: miniupnpd answers in milliseconds; a router without UPnP
/// never answers, and `nat-check` must still finish quickly.
pub const PORTMAP_UPNP_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a peer's report of its NAT to the server waits for the port mapping
/// discovery (below [`NAT_MAPPING_WAIT`], which bounds the whole report): a router that
/// grants mappings answers within milliseconds; one that ignores the requests makes
/// the discovery run on, and the peer counts as without port mappings until it knows.
pub const PORTMAP_DISCOVERY_WAIT: Duration = Duration::from_millis(800);

/// The lease a peer asks for on a port mapping (renewed at half of it while the link
/// lives, deleted when it ends or the peer exits). Short enough that a crashed peer's
/// mapping disappears within minutes; RFC 6886 suggests 7200 s for long-lived ones,
/// but these follow one link. `--portmap-lease` changes it.
pub const PORTMAP_LEASE: Duration = Duration::from_secs(600);

/// The shortest lease `--portmap-lease` accepts: routers round shorter ones up (or
/// refuse), and renewing faster than every half second is pointless load.
pub const PORTMAP_MIN_LEASE: Duration = Duration::from_secs(1);

/// How long a punch attempt waits for a port mapping of its probe's port before it
/// goes on without one (the mapping protocols were found working at start, so this
/// is one LAN round trip, or a few SOAP requests for UPnP).
pub const PORTMAP_MAP_WAIT: Duration = Duration::from_millis(1500);

/// How long a peer's clean exit waits for its mappings' deletions.
pub const PORTMAP_DELETE_WAIT: Duration = Duration::from_secs(2);
