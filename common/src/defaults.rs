//! Every timeout and limit in one place, each with the reason for its value.

use std::time::Duration;

/// The rendezvous server's port when none is given: the C demo's port.
pub const SERVER_PORT: u16 = 8877;

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

/// A control connection that has not answered for this long is dropped.
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
