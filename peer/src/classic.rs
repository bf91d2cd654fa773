//! The original C demo's client (`peer --classic`): it and `demos/c/classic_client.c`
//! can stand in for each other, against either classic server.
//!
//! # What happens
//!
//! Every client connects to the server from a socket with `SO_REUSEADDR` and
//! `SO_REUSEPORT` set before `bind`: it does not know its role yet, and client2 will
//! reuse the port. The server's first line decides the role:
//!
//! * `first\n\0`: this is **client1**. It waits for `<ip2> <port2>\n\0`, closes the
//!   server connection, dials client2 at `ip2:port2` up to [`DIAL_ATTEMPTS`] times,
//!   [`DIAL_INTERVAL`] apart, and then sends `Hello, world\n\0` every
//!   [`SEND_INTERVAL`] (a given number of times, or forever), and closes.
//! * `<ip1> <port1> <port2>\n\0`: this is **client2**. It closes the server
//!   connection, connects once from its port to `ip1:port1` (the *punch*, expected to
//!   fail), listens on that same port, accepts client1, and writes every message it
//!   receives, without the NUL, to the output until client1 closes the connection.
//!
//! Each line from the server is at most [`MAX_LINE`] bytes and must be exactly of one
//! of these forms; anything else is an error naming the line.
//!
//! # Where the hole is, and why client1 dials from a fresh socket
//!
//! The server saw client2's connection arrive from `ip2:port2`: that is client2's NAT
//! mapping of its local port. Client2's punch leaves that same local port toward
//! `ip1:port1`, which, on a NAT that maps each local port to one public port whatever
//! the destination (endpoint-independent mapping, as most home routers do), renews
//! the mapping `ip2:port2` and tells client2's NAT that `ip1` is a peer it talks to.
//! That is the hole. Client1 then dials `ip2:port2` (exactly the mapping) from a
//! fresh socket, as the C program does: its NAT gives that socket some new public
//! port, so the SYN arrives from `ip1:<new port>`. Client1's own NAT is no obstacle
//! (its connection is outgoing); client2's NAT lets the SYN in when it filters by
//! address only (full-cone or address-restricted NATs) or when there is no NAT in
//! front of client2 at all. A port-restricted or symmetric NAT in front of client2
//! drops it: the original demo does not get through those, and in this mode neither
//! do we (punchline's own protocol does: both sides dial at once from their mapped
//! ports).
//!
//! Why not dial from client1's mapped port instead, to match the hole exactly? The
//! punch from `port2` to `ip1:port1` and client1's dial from `port1` to `ip2:port2`
//! would be the same 4-tuple seen from both ends: when their SYNs cross, TCP's
//! simultaneous open connects client2's *punch* socket, which the C client2 closes,
//! and client1 would be talking to nobody. A fresh port on client1's side keeps the
//! punch and the real connection apart, which the protocol relies on.
//!
//! Two deliberate differences from the C program, both invisible on the wire:
//! client2 listens on the *local* port of its server connection, where its NAT's
//! mapping leads (the C client listens on `port2`, the port the server saw, which is
//! the same unless a NAT translates ports, and then it cannot work anyway); and
//! client2 accepts client1 only from `ip1` (the address the server saw), ignoring
//! anyone else who finds the open port. Every wait is bounded: see the constants.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::net::{any_addr, reusable_socket, set_link_options};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::{timeout, timeout_at, Instant, MissedTickBehavior},
};
use tracing::{debug, info, warn};

/// The message client1 sends, NUL included, as the C program sends it.
pub const MESSAGE: &[u8] = b"Hello, world\n\0";

/// Longest line accepted from the server, `\n` and NUL included. The longest real
/// line is under 64 bytes (an IPv6 address and two ports).
pub const MAX_LINE: usize = 256;

/// How many times client1 dials client2: the C demo's 10.
pub const DIAL_ATTEMPTS: u32 = 10;

/// Time between two of client1's dials: the C demo's one second. The first dial
/// usually comes before client2 listens (both get their lines at the same moment),
/// so the second one, a second later, is the one that connects.
pub const DIAL_INTERVAL: Duration = Duration::from_secs(1);

/// How long one dial of client1 may wait for an answer. A NAT that drops the SYN
/// would otherwise hold the dial for the kernel's two minutes of retransmits; one
/// interval keeps the attempts one second apart as in the C demo.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long client2's punch may wait. Only its SYN matters (it opens the NAT); the
/// answer, usually a refusal or nothing at all, is not.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long client2 waits for client1 to connect: client1 gives up after
/// [`DIAL_ATTEMPTS`] dials of at most [`DIAL_TIMEOUT`], [`DIAL_INTERVAL`] apart
/// (about 10 s); three times that leaves room for a slow client1.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Time between two of client1's messages: the C demo's one second.
pub const SEND_INTERVAL: Duration = Duration::from_secs(1);

/// Why a classic client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClassicError {
    /// The server could not be reached.
    #[error("cannot connect to the classic server at {server}: {source}")]
    Connect {
        /// The server's address.
        server: SocketAddr,
        /// What `connect` said.
        #[source]
        source: io::Error,
    },
    /// The connection to the server failed while waiting for a line.
    #[error("lost the connection to the server: {0}")]
    Server(#[source] io::Error),
    /// The server closed the connection before a whole line arrived.
    #[error("the server closed the connection {0}")]
    ServerClosed(&'static str),
    /// The server sent more than [`MAX_LINE`] bytes without ending the line.
    #[error("the server sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The server sent a line that is not one of the protocol's.
    #[error("the server sent a malformed line: {0}")]
    Malformed(String),
    /// Client1 could not connect to client2.
    #[error("could not reach client2 at {addr} after {DIAL_ATTEMPTS} attempts: {last}")]
    Unreachable {
        /// Client2's address, as the server saw it.
        addr: SocketAddr,
        /// Why the last attempt failed.
        last: io::Error,
    },
    /// Client2 could not listen on its port.
    #[error("cannot listen for client1 on port {port}: {source}")]
    Listen {
        /// The port client2 tried to listen on.
        port: u16,
        /// What `bind`, `listen` or `accept` said.
        #[source]
        source: io::Error,
    },
    /// Client1 did not connect to client2 in time.
    #[error("client1 ({client1}) did not connect within {} s", ACCEPT_TIMEOUT.as_secs())]
    NoClient1 {
        /// Client1's address, as the server saw it.
        client1: SocketAddr,
    },
    /// The connection between the two clients failed.
    #[error("the connection to the other client failed: {0}")]
    Link(#[source] io::Error),
    /// The received messages could not be written to the output.
    #[error("cannot write to the output: {0}")]
    Output(#[source] io::Error),
}

/// The role the server's first line gives a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `first`: wait for a second line naming client2.
    Client1,
    /// `<ip1> <port1> <port2>`: client1's address, and this client's port as seen.
    Client2 { client1: SocketAddr, seen_port: u16 },
}

/// Runs one classic client against `server`, as the C `classic_client` does.
///
/// As client1, sends `count` messages (forever if `None`) and returns `Ok` after
/// closing the connection; as client2, writes the received messages to `out`
/// (`Hello, world\n` each, flushed each time) and returns `Ok` when client1 closes.
pub async fn run(
    server: SocketAddr,
    count: Option<u32>,
    mut out: impl AsyncWrite + Unpin,
) -> Result<(), ClassicError> {
    let connect_err = |source| ClassicError::Connect { server, source };
    // Reusable from the start: a client2 listens on this port later.
    let socket = reusable_socket(any_addr(server, 0)).map_err(connect_err)?;
    let mut conn = socket.connect(server).await.map_err(connect_err)?;
    let local = conn.local_addr().map_err(ClassicError::Server)?;
    // Client1 may wait long for a partner: keepalives turn a server that vanished
    // into an error instead of an endless wait.
    if let Err(err) = set_link_options(&conn) {
        debug!(%err, "cannot set keepalives on the server connection");
    }
    debug!(%server, %local, "connected to the classic server");
    let mut lines = LineReader::default();
    let role = parse_role(&lines.next(&mut conn).await?)?;
    match role {
        Role::Client1 => {
            info!(%server, "first: waiting for a second client");
            let client2 = parse_client2(&lines.next(&mut conn).await?)?;
            drop(conn);
            info!(%client2, "client1: dialing client2");
            client1(client2, count).await
        }
        Role::Client2 { client1, seen_port } => {
            drop(conn);
            info!(%client1, "client2: punching toward client1, then listening");
            if seen_port != local.port() {
                warn!(
                    seen_port,
                    local_port = local.port(),
                    "a NAT translated our port; listening on the local port, where its mapping leads"
                );
            }
            client2(local, client1, &mut out).await
        }
    }
}

/// Client1: dial client2, then send the messages.
async fn client1(client2: SocketAddr, count: Option<u32>) -> Result<(), ClassicError> {
    let mut link = dial(client2).await?;
    if let Err(err) = set_link_options(&link) {
        debug!(%err, "cannot set keepalives on the link");
    }
    info!(%client2, "client1: connected; sending");
    let mut tick = tokio::time::interval(SEND_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = 0u32;
    // Forever when there is no count.
    while count != Some(sent) {
        tick.tick().await;
        link.write_all(MESSAGE).await.map_err(ClassicError::Link)?;
        sent = sent.saturating_add(1);
        debug!(sent, "message sent");
    }
    link.shutdown().await.map_err(ClassicError::Link)?;
    info!(sent, "client1: done");
    Ok(())
}

/// Dials `addr` up to [`DIAL_ATTEMPTS`] times, [`DIAL_INTERVAL`] apart, each from a
/// fresh socket (see the module documentation for why).
async fn dial(addr: SocketAddr) -> Result<TcpStream, ClassicError> {
    let mut tick = tokio::time::interval(DIAL_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no attempt made");
    for attempt in 1..=DIAL_ATTEMPTS {
        tick.tick().await;
        match timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => last = err,
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {DIAL_TIMEOUT:?}"),
                );
            }
        }
        debug!(attempt, %addr, err = %last, "dial failed");
    }
    Err(ClassicError::Unreachable { addr, last })
}

/// Client2: punch toward client1, listen on our port, accept client1 and print what
/// it sends.
async fn client2(
    local: SocketAddr,
    client1: SocketAddr,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), ClassicError> {
    let port = local.port();
    let bind = any_addr(local, port);
    punch(bind, client1).await;

    let listen_err = |source| ClassicError::Listen { port, source };
    let listener = reusable_socket(bind)
        .and_then(|socket| socket.listen(1))
        .map_err(listen_err)?;
    info!(port, "client2: listening for client1");
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    let link = loop {
        let (stream, from) = timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| ClassicError::NoClient1 { client1 })?
            .map_err(listen_err)?;
        if same_ip(from.ip(), client1.ip()) {
            info!(%from, "client2: client1 connected");
            break stream;
        }
        warn!(%from, expected = %client1.ip(), "ignoring a connection from someone else");
    };
    drop(listener);
    if let Err(err) = set_link_options(&link) {
        debug!(%err, "cannot set keepalives on the link");
    }
    let received = print_messages(link, out).await?;
    info!(received, "client2: client1 closed the connection");
    Ok(())
}

/// Connects once from `bind` to client1's address as the server saw it, so that our
/// NAT lets client1 in (see the module documentation). The outcome does not matter.
async fn punch(bind: SocketAddr, client1: SocketAddr) {
    let attempt = async { reusable_socket(bind)?.connect(client1).await };
    match timeout(PUNCH_TIMEOUT, attempt).await {
        Ok(Ok(_stream)) => debug!(%client1, "the punch connected; closing it as the C client does"),
        Ok(Err(err)) => debug!(%client1, %err, "the punch failed, as expected"),
        Err(_) => debug!(%client1, "the punch got no answer, as expected behind a NAT"),
    }
}

/// Copies the messages from `link` to `out` without their NULs, until EOF; returns
/// how many (NUL-terminated) messages arrived. Holds no more than one read's worth.
async fn print_messages(
    mut link: impl AsyncRead + Unpin,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<u64, ClassicError> {
    let mut buf = [0u8; 4096];
    let mut messages = 0u64;
    loop {
        let n = link.read(&mut buf).await.map_err(ClassicError::Link)?;
        if n == 0 {
            return Ok(messages);
        }
        for (i, part) in buf[..n].split(|&b| b == 0).enumerate() {
            if i > 0 {
                messages += 1;
            }
            out.write_all(part).await.map_err(ClassicError::Output)?;
        }
        out.flush().await.map_err(ClassicError::Output)?;
    }
}

/// Whether two addresses are the same host, treating IPv4-mapped IPv6 as IPv4.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Reads the server's NUL-terminated lines, never more than [`MAX_LINE`] bytes ahead.
#[derive(Debug, Default)]
struct LineReader {
    /// Bytes received but not yet returned (the start of the next line).
    buf: Vec<u8>,
}

impl LineReader {
    /// The next line, without its NUL (but with its `\n`).
    async fn next(&mut self, conn: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, ClassicError> {
        let mut chunk = [0u8; MAX_LINE];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                return Ok(line);
            }
            let room = MAX_LINE - self.buf.len();
            if room == 0 {
                return Err(ClassicError::LineTooLong);
            }
            let n = conn
                .read(&mut chunk[..room])
                .await
                .map_err(ClassicError::Server)?;
            if n == 0 {
                return Err(ClassicError::ServerClosed(if self.buf.is_empty() {
                    "without sending a line"
                } else {
                    "in the middle of a line"
                }));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Parses the server's first line: `first\n`, or client2's `<ip1> <port1> <port2>\n`.
fn parse_role(line: &[u8]) -> Result<Role, ClassicError> {
    let fields = fields(line)?;
    match fields.as_slice() {
        ["first"] => Ok(Role::Client1),
        [ip, port1, port2] => match (parse_ip(ip), parse_port(port1), parse_port(port2)) {
            (Some(ip), Some(port1), Some(seen_port)) => Ok(Role::Client2 {
                client1: SocketAddr::new(ip, port1),
                seen_port,
            }),
            _ => Err(malformed(line)),
        },
        _ => Err(malformed(line)),
    }
}

/// Parses client1's second line, `<ip2> <port2>\n`.
fn parse_client2(line: &[u8]) -> Result<SocketAddr, ClassicError> {
    match fields(line)?.as_slice() {
        [ip, port] => match (parse_ip(ip), parse_port(port)) {
            (Some(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
            _ => Err(malformed(line)),
        },
        _ => Err(malformed(line)),
    }
}

/// Splits a line into its fields: printable ASCII separated by single spaces, ended
/// by `\n`.
fn fields(line: &[u8]) -> Result<Vec<&str>, ClassicError> {
    let Some(body) = line.strip_suffix(b"\n") else {
        return Err(malformed(line));
    };
    if !body.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(malformed(line));
    }
    let body = std::str::from_utf8(body).map_err(|_| malformed(line))?;
    let fields: Vec<&str> = body.split(' ').collect();
    if fields.iter().any(|f| f.is_empty()) {
        return Err(malformed(line));
    }
    Ok(fields)
}

/// An IPv4 address in dotted-quad form, or an IPv6 address.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

/// A port: 1 to 65535 in decimal, without sign or leading zeros.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || text.starts_with('0') {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn malformed(line: &[u8]) -> ClassicError {
    ClassicError::Malformed(format!("{:?}", String::from_utf8_lossy(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(line: &str) -> Result<Role, ClassicError> {
        parse_role(line.as_bytes())
    }

    #[test]
    fn parses_the_three_lines() -> Result<(), ClassicError> {
        assert_eq!(role("first\n")?, Role::Client1);
        assert_eq!(
            role("192.0.2.7 40001 51002\n")?,
            Role::Client2 {
                client1: SocketAddr::from(([192, 0, 2, 7], 40001)),
                seen_port: 51002
            }
        );
        assert_eq!(
            parse_client2(b"198.51.100.9 65535\n")?,
            SocketAddr::from(([198, 51, 100, 9], 65535))
        );
        assert_eq!(
            parse_client2(b"2001:db8::1 443\n")?,
            "[2001:db8::1]:443".parse().map_err(|_| malformed(b""))?
        );
        Ok(())
    }

    #[test]
    fn rejects_anything_else() {
        for line in [
            "first",
            "first \n",
            "First\n",
            "\n",
            "1.2.3.4 5\n",
            "1.2.3.4 5 6 7\n",
            "1.2.3.4  5 6\n",
            "1.2.3.4 5 6\r\n",
            "1.2.3.4 0 6\n",
            "1.2.3.4 05 6\n",
            "1.2.3.4 +5 6\n",
            "1.2.3.4 65536 6\n",
            "1.2.3 5 6\n",
            "01.2.3.4 5 6\n",
            "host.example 5 6\n",
            "1.2.3.4 5 6\nfirst\n",
        ] {
            assert!(
                matches!(role(line), Err(ClassicError::Malformed(_))),
                "{line:?} accepted"
            );
        }
        assert!(matches!(
            parse_client2(b"1.2.3.4 5 6\n"),
            Err(ClassicError::Malformed(_))
        ));
        assert!(matches!(
            parse_client2(b"first\n"),
            Err(ClassicError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_lines_are_quoted_in_the_error() {
        let err = role("hello\tthere\n").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(r#"the server sent a malformed line: "hello\tthere\n""#)
        );
    }

    #[tokio::test]
    async fn reads_lines_that_arrive_together_or_in_pieces() -> Result<(), ClassicError> {
        let mut input: &[u8] = b"first\n\x00127.0.0.1 9\n\0";
        let mut lines = LineReader::default();
        assert_eq!(lines.next(&mut input).await?, b"first\n");
        assert_eq!(lines.next(&mut input).await?, b"127.0.0.1 9\n");
        assert!(matches!(
            lines.next(&mut input).await,
            Err(ClassicError::ServerClosed("without sending a line"))
        ));

        let mut input = pieces(&[b"fir", b"st\n", b"\0"]);
        let mut lines = LineReader::default();
        assert_eq!(lines.next(&mut input).await?, b"first\n");
        Ok(())
    }

    #[tokio::test]
    async fn a_line_without_end_is_bounded() {
        let long = vec![b'a'; 10 * MAX_LINE];
        let mut input: &[u8] = &long;
        assert!(matches!(
            LineReader::default().next(&mut input).await,
            Err(ClassicError::LineTooLong)
        ));
        let mut input: &[u8] = b"first\n";
        assert!(matches!(
            LineReader::default().next(&mut input).await,
            Err(ClassicError::ServerClosed("in the middle of a line"))
        ));
    }

    #[tokio::test]
    async fn prints_messages_without_nuls() -> Result<(), ClassicError> {
        let mut input = pieces(&[
            b"Hello, world\n\0Hello, ",
            b"world\n\0",
            b"Hello, world\n\0",
        ]);
        let mut out = Vec::new();
        assert_eq!(print_messages(&mut input, &mut out).await?, 3);
        assert_eq!(out, b"Hello, world\n".repeat(3));
        Ok(())
    }

    /// A reader that returns one of `parts` per read (when the buffer is large enough).
    fn pieces(parts: &[&[u8]]) -> Pieces {
        Pieces(parts.iter().map(|p| p.to_vec()).collect())
    }

    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(mut part) = self.0.pop_front() {
                let n = part.len().min(buf.remaining());
                buf.put_slice(&part[..n]);
                if n < part.len() {
                    self.0.push_front(part.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }
}
