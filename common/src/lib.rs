//! punchline's shared library: everything the `rendezvous` server and the `peer`
//! client have in common.
//!
//! The connection stack, bottom up: TCP (to the server, punched between peers) →
//! [`secure`] (a Noise `NNpsk0` channel, the PSK derived from a shared secret) →
//! [`framing`] (length-delimited frames carrying [`proto`] messages, encoded by
//! [`wire`]) for control, or raw bytes through [`splice`] for data.
// `deny`, not `forbid`: `net::raise_fd_limit` (setrlimit) and `process::trim_heap`
// (malloc_trim) are the exceptions.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod birthday;
pub mod compress;
pub mod config;
pub mod count;
pub mod defaults;
pub mod framing;
pub mod identity;
pub mod liveness;
pub mod mux;
pub mod net;
pub mod process;
pub mod proto;
pub mod punch;
pub mod secure;
pub mod splice;
pub mod stun;
pub mod wire;

/// Parses `HOST[:PORT]`, using `default_port` when no port is given, and resolves it.
///
/// Accepts `1.2.3.4`, `1.2.3.4:99`, `[::1]:99`, `localhost`, `host.example:99`.
pub async fn resolve_server(
    spec: &str,
    default_port: u16,
) -> std::io::Result<std::net::SocketAddr> {
    let with_port = if spec.parse::<std::net::SocketAddr>().is_ok() {
        spec.to_string()
    } else if let Ok(ip) = spec.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        std::net::SocketAddr::new(ip, default_port).to_string()
    } else if spec
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        spec.to_string()
    } else {
        format!("{spec}:{default_port}")
    };
    let mut addrs = tokio::net::lookup_host(&with_port).await?;
    addrs.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{spec}: no address"))
    })
}
