//! The original C demo's rendezvous server (`rendezvous --classic`), byte for byte.
//!
//! The protocol is a few text lines, each ended by `\n` and a NUL byte:
//!
//! * the first client to arrive gets `first\n\0` and stays connected;
//! * when a second client arrives, it gets `<ip1> <port1> <port2>\n\0` (client1's
//!   address as this server sees it, then its own seen port), client1 gets
//!   `<ip2> <port2>\n\0`, and both connections are closed. The next client to arrive
//!   is a new first, pair after pair, forever.
//!
//! What the clients do with these lines is described in `peer::classic`; the
//! reference implementations are `demos/c/classic_server.c` and `classic_client.c`.
//!
//! Everything is decided in the accept loop, which never waits for a client: a
//! classic client never writes to the server, so nothing is ever read, and each line
//! (under 64 bytes) is written with one non-blocking `send` on a socket whose send
//! buffer is empty (a client that was only ever sent 7 bytes). Such a send takes the
//! whole line at once, or the connection is already broken. So one slow or hostile
//! client stalls nobody, and the server holds at most one connection (the waiting
//! client1) at any time.
//!
//! What the C server does not do: when a second client arrives, the waiting client1
//! is checked first (a non-blocking `MSG_PEEK` of one byte). If it has left (EOF, or
//! an error such as a keepalive timeout) or has sent anything (so it is no classic
//! client), it is dropped and the newcomer becomes the first. And a newcomer whose
//! line cannot be sent leaves client1 waiting for the next one.
//!
//! Addresses are printed as the C server's `inet_ntoa` prints them for IPv4 (also for
//! IPv4-mapped IPv6 addresses, when listening on `[::]`); a genuine IPv6 client gets
//! its address in the usual IPv6 text form, which our client accepts and the C one
//! does not.

use std::{io, mem::MaybeUninit, net::SocketAddr, sync::Arc};

use common::net::set_link_options;
use socket2::SockRef;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

/// The line the first client of a pair receives: the C demo's `"first\n"` with its
/// terminating NUL.
pub const FIRST_LINE: &[u8] = b"first\n\0";

#[derive(Debug)]
struct Client {
    stream: TcpStream,
    addr: SocketAddr,
}

/// Runs the classic server on `listener` until `shutdown` is cancelled, pairing
/// clients in arrival order, on the server's shared accept loop
/// ([`crate::accept::serve`]: backoff when `accept` fails, e.g. out of file
/// descriptors). It spawns nothing: each client is handled within the loop.
///
/// Returns on shutdown (the waiting client, if any, is disconnected).
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> io::Result<()> {
    let local = listener.local_addr()?;
    info!(%local, "classic server ready");
    let mut waiting: Option<Client> = None;
    // Nothing is spawned, so one permit is never held: the cap does not apply.
    let permits = Arc::new(Semaphore::new(1));
    let tracker = TaskTracker::new();
    crate::accept::serve(
        "classic server",
        &listener,
        permits,
        &tracker,
        &shutdown,
        |stream, addr| {
            let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            waiting = arrive(waiting.take(), Client { stream, addr });
            None::<std::future::Ready<()>>
        },
    )
    .await;
    if let Some(client1) = waiting {
        debug!(client1 = %client1.addr, "shutting down: disconnecting the waiting client");
    }
    info!(%local, "classic server stopped");
    Ok(())
}

/// Handles a newly arrived client; returns the client now waiting for a partner.
fn arrive(waiting: Option<Client>, newcomer: Client) -> Option<Client> {
    if let Some(client1) = waiting {
        match still_waiting(&client1.stream) {
            Ok(()) => return pair(client1, newcomer),
            Err(reason) => info!(
                client1 = %client1.addr,
                %reason,
                newcomer = %newcomer.addr,
                "the waiting client is gone; the newcomer takes its place"
            ),
        }
    }
    match send_now(&newcomer.stream, FIRST_LINE) {
        Ok(()) => {
            // Keepalives, so that a client1 that vanishes without closing (power cut,
            // NAT reboot) shows as an error to `still_waiting` within seconds.
            if let Err(err) = set_link_options(&newcomer.stream) {
                debug!(client1 = %newcomer.addr, %err, "cannot set keepalives");
            }
            info!(client1 = %newcomer.addr, "first client: waiting for a second");
            Some(newcomer)
        }
        Err(err) => {
            debug!(client = %newcomer.addr, %err, "cannot greet a new client; dropped");
            None
        }
    }
}

/// Sends both clients their lines and closes both connections. Returns client1 back
/// if client2 could not be told (client1 then keeps waiting for the next client).
fn pair(client1: Client, client2: Client) -> Option<Client> {
    let (a1, a2) = (client1.addr, client2.addr);
    // The same order as the C server: client2 first.
    let to_client2 = format!("{} {} {}\n\0", a1.ip(), a1.port(), a2.port());
    if let Err(err) = send_now(&client2.stream, to_client2.as_bytes()) {
        debug!(client = %a2, %err, "cannot send the pairing line; dropped");
        return Some(client1);
    }
    let to_client1 = format!("{} {}\n\0", a2.ip(), a2.port());
    match send_now(&client1.stream, to_client1.as_bytes()) {
        Ok(()) => info!(client1 = %a1, client2 = %a2, "paired"),
        // It left between the check and now: client2 will wait for it in vain.
        Err(err) => warn!(client1 = %a1, client2 = %a2, %err, "client1 left while being paired"),
    }
    // Dropping both streams closes them; the kernel still delivers the queued lines.
    None
}

/// Whether a waiting client is still there and silent, checked without reading: a
/// one-byte non-blocking peek that must find nothing to read. EOF means the client
/// left, data means it is no classic client (those never write to the server).
fn still_waiting(stream: &TcpStream) -> io::Result<()> {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    // A direct `recv(MSG_PEEK)` on the (non-blocking) socket, rather than tokio's
    // cached readiness, which may not have seen a FIN that already arrived.
    match SockRef::from(stream).peek(&mut byte) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(err) => Err(err),
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it closed the connection",
        )),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it sent data, which a classic client never does",
        )),
    }
}

/// Writes `line` at once with one non-blocking `send`, or fails: see the module
/// documentation for why a short line to one of our clients can always be sent whole.
fn send_now(stream: &TcpStream, line: &[u8]) -> io::Result<()> {
    // A direct `send`, as tokio's `try_write` would refuse (WouldBlock) until the
    // runtime has polled a freshly accepted socket once.
    let sent = SockRef::from(stream).send(line)?;
    if sent == line.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("only {sent} of {} bytes fit in the send buffer", line.len()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        time::timeout,
    };
    use tokio_util::sync::CancellationToken;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    async fn start() -> io::Result<(
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<io::Result<()>>,
    )> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(listener, token.clone()));
        Ok((addr, token, task))
    }

    async fn read_exact(stream: &mut TcpStream, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        timeout(LIMIT, stream.read_exact(&mut buf)).await??;
        Ok(buf)
    }

    async fn read_to_end(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        timeout(LIMIT, stream.take(1024).read_to_end(&mut buf)).await??;
        Ok(buf)
    }

    fn port(stream: &TcpStream) -> io::Result<u16> {
        Ok(stream.local_addr()?.port())
    }

    #[tokio::test]
    async fn pairs_in_arrival_order_with_exact_bytes() -> io::Result<()> {
        let (addr, token, task) = start().await?;
        for _ in 0..2 {
            let mut a = TcpStream::connect(addr).await?;
            assert_eq!(read_exact(&mut a, 7).await?, FIRST_LINE);
            let mut b = TcpStream::connect(addr).await?;
            let (pa, pb) = (port(&a)?, port(&b)?);
            let line_b = read_to_end(&mut b).await?;
            assert_eq!(line_b, format!("127.0.0.1 {pa} {pb}\n\0").as_bytes());
            let line_a = read_to_end(&mut a).await?;
            assert_eq!(line_a, format!("127.0.0.1 {pb}\n\0").as_bytes());
        }
        token.cancel();
        timeout(LIMIT, task).await??
    }

    /// A connected pair: the server's side (as `serve` holds it) and the client's.
    async fn connection() -> io::Result<(Client, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (stream, addr) = listener.accept().await?;
        Ok((Client { stream, addr }, client))
    }

    /// Polls [`still_waiting`] until it fails (bounded); returns the error kind.
    async fn until_gone(client: &Client) -> io::Result<io::ErrorKind> {
        for _ in 0..1000 {
            if let Err(err) = still_waiting(&client.stream) {
                return Ok(err.kind());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(io::Error::other("still waiting after 5 s"))
    }

    #[tokio::test]
    async fn a_waiting_client_that_left_or_talked_is_noticed() -> io::Result<()> {
        let (quiet, _quiet_peer) = connection().await?;
        assert!(still_waiting(&quiet.stream).is_ok());

        let (gone, gone_peer) = connection().await?;
        drop(gone_peer);
        assert_eq!(until_gone(&gone).await?, io::ErrorKind::UnexpectedEof);

        let (talker, mut talker_peer) = connection().await?;
        talker_peer.write_all(b"hello").await?;
        assert_eq!(until_gone(&talker).await?, io::ErrorKind::InvalidData);
        // Noticing does not consume: the bytes are still unread.
        assert_eq!(until_gone(&talker).await?, io::ErrorKind::InvalidData);
        Ok(())
    }

    #[tokio::test]
    async fn a_newcomer_replaces_a_waiting_client_that_left() -> io::Result<()> {
        let (gone, gone_peer) = connection().await?;
        drop(gone_peer);
        until_gone(&gone).await?;
        let (newcomer, mut newcomer_peer) = connection().await?;
        let newcomer_addr = newcomer.addr;
        let waiting = arrive(Some(gone), newcomer);
        assert_eq!(waiting.map(|c| c.addr), Some(newcomer_addr));
        assert_eq!(read_exact(&mut newcomer_peer, 7).await?, FIRST_LINE);
        Ok(())
    }
}
