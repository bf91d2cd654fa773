//! punchline's NAT lab: real NATs on one machine, made of network namespaces, veth
//! pairs, bridges and nftables, for integration tests of the whole project.
//!
//! A [`Lab`] is built from a [`LabSpec`]: an "internet" bridge (203.0.113.0/24) with the
//! rendezvous server on it (203.0.113.10 and .11), and two sites, each a home router
//! with a NAT profile ([`NatProfile`]) and a behaviour towards unsolicited packets
//! ([`Unsolicited`]) in front of a LAN (10.0.1.0/24, 10.0.2.0/24), optionally behind a
//! carrier-grade NAT ([`CgnatProfile`]), or both hosts behind one router
//! ([`LabSpec::same_nat`], with or without [`LabSpec::hairpin`]). Each site's internet link runs through `lab-delay` (this
//! crate's binary), which holds every frame for the site's one-way delay and ages
//! IPv4 TTLs by 10 as a longer path would. The reference for all of it is
//! `shared/NATLAB.md`.
//!
//! ```no_run
//! use lab::{Host, Lab, LabSpec, Site};
//!
//! if !lab::require_lab() {
//!     return;
//! }
//! let lab = Lab::new(LabSpec::default()).unwrap();
//! let server = lab
//!     .command(Host::Server, "rendezvous")
//!     .args(["--listen", &format!("{}:8877", lab.server_ip())])
//!     .spawn()
//!     .unwrap();
//! let before = lab.server_tcp_bytes().unwrap();
//! // ... run peers with lab.command(Host::A, ...) and lab.command(Host::B, ...) ...
//! let relayed = lab.server_tcp_bytes().unwrap() - before;
//! # drop(server);
//! # let _ = (relayed, lab.public_ip(Site::A));
//! // Dropping `lab` kills everything in its namespaces and deletes them.
//! ```
//!
//! Lab tests need root, `ip` (iproute2), `nft` (nftables), `ethtool` and `ping`
//! (iputils-ping); [`require_lab`] skips them elsewhere, except in CI.
#![warn(missing_docs)]

mod lab {
    pub(crate) mod cmd;
    pub(crate) mod delay;
    pub(crate) mod env;
    pub(crate) mod error;
    pub(crate) mod nft;
    pub(crate) mod spec;
    pub(crate) mod topology;
}

pub use lab::env::{cleanup_stale_labs, find_binary, lab_available, require_lab};
pub use lab::error::{Error, Result};
pub use lab::spec::{
    CgnatProfile, Host, LabSpec, NatProfile, Site, SiteSpec, Unsolicited, DEFAULT_DELAY_A_MS,
    DEFAULT_DELAY_B_MS,
};
pub use lab::topology::{
    Lab, Miniupnpd, TcpCounters, INTERNET_IP, PORTMAP_PUBLIC_A, PORTMAP_PUBLIC_B, SERVER_ALT_IP,
    SERVER_IP,
};

/// A path for a new peer identity file (the peer creates it on first use), unique in
/// this process. Every `peer` the lab or the tests start gets one of its own, so that
/// two peers of a test are two identities to the server, as on two machines; a test
/// that restarts "the same" peer passes the same path (`PUNCHLINE_IDENTITY`) again.
pub fn fresh_identity() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static CLEAN: std::sync::Once = std::sync::Once::new();
    let dir = std::env::temp_dir().join(format!("punchline-test-ids-{}", std::process::id()));
    // A directory left by an earlier process with the same pid would hand out its
    // identities (and files where a test wants a directory of its own).
    CLEAN.call_once(|| {
        let _ = std::fs::remove_dir_all(&dir);
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("identity-{n}"))
}

/// Gives `cmd` a fresh identity (see [`fresh_identity`]) if `program` is the `peer`.
pub fn give_identity(cmd: &mut std::process::Command, program: &std::ffi::OsStr) {
    let is_peer = std::path::Path::new(program)
        .file_name()
        .is_some_and(|n| n == "peer");
    if is_peer {
        cmd.env("PUNCHLINE_IDENTITY", fresh_identity());
    }
}

/// Deterministic pseudo-random test data (xorshift64; fast, not cryptographic): the
/// same `(len, seed)` always gives the same bytes, so a receiver can check a transfer
/// by hashing.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
