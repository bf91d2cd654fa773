//! Socket helpers: ports shared between a probe, a listener and dialers
//! (`SO_REUSEADDR` + `SO_REUSEPORT`, set before `bind`), and link keepalives.

use std::{io, net::SocketAddr};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::defaults::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES, USER_TIMEOUT};

/// A TCP socket bound to `local` with `SO_REUSEADDR` and `SO_REUSEPORT`, so that
/// several sockets (the probe to the server, a listener, dialers) share the port.
pub fn reusable_socket(local: SocketAddr) -> io::Result<TcpSocket> {
    let sock = if local.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(local)?;
    Ok(sock)
}

/// The unspecified address of `peer`'s family, port `port`.
pub fn any_addr(peer: SocketAddr, port: u16) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
    }
}

/// Turns on keepalives and a user timeout, so that a link to a peer that vanished
/// without closing fails within seconds instead of hanging (see `defaults`).
pub fn set_link_options(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    sock.set_tcp_keepalive(&ka)?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    Ok(())
}
