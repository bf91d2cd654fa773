//! Socket helpers: ports shared between a probe, a listener and dialers
//! (`SO_REUSEADDR` + `SO_REUSEPORT`, set before `bind`), link keepalives, resetting
//! a connection ([`reset`]), and the process's open-files limit
//! ([`raise_fd_limit`]).

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

/// Closes `stream` with a reset (RST) instead of a FIN: `SO_LINGER` 0, then drop. The
/// other side's next read or write fails with `ECONNRESET`, so it can tell an
/// abnormal end (a transfer cut short, a refused connection) from a complete one.
/// Unsent data is discarded. Closing never blocks: a zero linger aborts at once.
pub fn reset(stream: TcpStream) {
    if let Err(e) = SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO)) {
        tracing::debug!(%e, "cannot set SO_LINGER 0; closing normally");
    }
    drop(stream);
}

/// The open-files limit of this process before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now.
    pub after: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit. Every carried
/// connection costs a file descriptor or two, and the usual soft limit (1024) would
/// cap a server or an exposing peer at a few hundred connections; the hard limit is
/// what the administrator allows. Where the hard limit is "unlimited" (which Linux
/// refuses as a soft limit), the kernel's `fs.nr_open` is used instead.
///
/// The syscalls need `unsafe` (libc); this function and [`keep_freed_heap`] are the
/// only places in this crate that have it.
#[cfg(unix)]
#[allow(unsafe_code)]
// `rlim_t` is `u64` on Linux but not on every unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the `rlimit` struct we pass, which lives on our
    // stack for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur as u64;
    let mut want = lim.rlim_max;
    if want == libc::RLIM_INFINITY {
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < want {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the `rlimit` struct we pass, which lives on our
        // stack for the whole call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(FdLimit {
            before,
            after: want as u64,
        });
    }
    Ok(FdLimit {
        before,
        after: before,
    })
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (nothing to do here).
#[cfg(not(unix))]
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    Ok(FdLimit {
        before: u64::MAX,
        after: u64::MAX,
    })
}

/// A stream with bytes already read from it put back in front: what a connection
/// that switches from frames to raw bytes carries over from its frame buffer.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: bytes::BytesMut,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner`, whose reads first return `prefix`.
    pub fn new(inner: T, prefix: bytes::BytesMut) -> Self {
        Self { prefix, inner }
    }

    /// `inner` with nothing in front.
    pub fn plain(inner: T) -> Self {
        Self::new(inner, bytes::BytesMut::new())
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The transport under every peer-to-peer link: a punched TCP connection, or a relay
/// connection to the server with the bytes that arrived with its last frame.
pub type LinkIo = Prefixed<TcpStream>;

/// Reads the header that starts a data stream (see `proto::stream_header`) and returns
/// the name in it; fails on a wrong version, a bad name, or after `limit`.
pub async fn read_stream_header<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    limit: std::time::Duration,
) -> io::Result<String> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let v = r.read_u8().await?;
        if v != crate::proto::STREAM_HEADER_V1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown stream header version {v}"),
            ));
        }
        let len = r.read_u16().await? as usize;
        if len > crate::defaults::MAX_NAME_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stream header name too long",
            ));
        }
        let mut name = vec![0u8; len];
        r.read_exact(&mut name).await?;
        String::from_utf8(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream header name is not UTF-8",
            )
        })
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no stream header in time"))?
}

/// The framing of datagrams on a stream (exposed udp ports): a 2-byte big-endian
/// length, then the datagram. A datagram is at most 65,535 bytes, so every one fits.
pub fn datagram_codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(usize::from(u16::MAX))
        .new_codec()
}

/// Tells glibc's allocator not to hand freed memory at the top of the heap back to
/// the system until [`HEAP_TRIM_THRESHOLD`] of it is free (its default is 128 KiB),
/// and to serve blocks up to [`HEAP_MMAP_THRESHOLD`] from the heap rather than from
/// fresh `mmap`s (default 128 KiB). The sending side allocates a buffer for every
/// multiplexer frame (~64 KiB) and frees it once written, and the Noise reader's buffers
/// are 256 KiB; with the defaults, glibc gives the pages back on each free and
/// faults them in again on the next allocation: ~100k page faults and 10–15% more CPU
/// per GB carried (issue 10). The binaries trim the heap periodically anyway
/// ([`crate::defaults::MALLOC_TRIM_INTERVAL`]), so memory still follows the load.
/// A no-op on other allocators.
///
/// [`HEAP_TRIM_THRESHOLD`]: crate::defaults::HEAP_TRIM_THRESHOLD
/// [`HEAP_MMAP_THRESHOLD`]: crate::defaults::HEAP_MMAP_THRESHOLD
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_heap() {
    // SAFETY: mallopt takes no pointers; it sets a parameter of glibc's allocator
    // under the allocator's own lock.
    unsafe {
        libc::mallopt(
            libc::M_TRIM_THRESHOLD,
            crate::defaults::HEAP_TRIM_THRESHOLD as libc::c_int,
        );
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            crate::defaults::HEAP_MMAP_THRESHOLD as libc::c_int,
        );
    }
}

/// See the glibc version: nothing to tune elsewhere.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_heap() {}

/// Carries one UDP session over `stream` (framed by [`datagram_codec`]): the datagrams
/// of one user address arriving on `rx` go out on the stream, the frames from the
/// stream go back to `user` from `socket`, until either side ends or `idle` passes
/// without a datagram either way. The side that receives for many users (the
/// server's udp port, a `connect --udp` visitor) runs one per user address.
pub async fn carry_datagrams<S>(
    stream: S,
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    socket: std::sync::Arc<tokio::net::UdpSocket>,
    user: SocketAddr,
    idle: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use futures::{SinkExt, StreamExt};
    let (r, w) = tokio::io::split(stream);
    let mut from_stream = tokio_util::codec::FramedRead::new(r, datagram_codec());
    let mut to_stream = tokio_util::codec::FramedWrite::new(w, datagram_codec());
    loop {
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => if to_stream.send(d).await.is_err() { break },
                None => break,
            },
            f = from_stream.next() => match f {
                Some(Ok(d)) => { let _ = socket.send_to(&d, user).await; }
                _ => break,
            },
            _ = tokio::time::sleep(idle) => {
                tracing::debug!(%user, "udp session idle; closed");
                break;
            }
        }
    }
}

/// The UDP sessions of a socket that receives for many users (an exposed udp port, a
/// `connect --udp` visitor): each user address's datagrams go to its session's queue
/// (dropped when the queue is full, as a congested path drops them), and a datagram
/// from a new address opens a session, up to `max` at once.
#[derive(Debug)]
pub struct UdpSessions {
    sessions: std::collections::HashMap<SocketAddr, tokio::sync::mpsc::Sender<bytes::Bytes>>,
    max: usize,
    queue: usize,
}

impl UdpSessions {
    /// At most `max` sessions at once, `queue` datagrams waiting in each.
    pub fn new(max: usize, queue: usize) -> Self {
        UdpSessions {
            sessions: Default::default(),
            max,
            queue: queue.max(1),
        }
    }

    /// Hands a datagram from `from` to its session. `Some(receiver)` when a new session
    /// was opened for it (the datagram is already queued there): the caller carries it
    /// (see [`carry_datagrams`]), or drops the receiver to refuse it. `None` when it was
    /// queued, or dropped at the limit.
    pub fn dispatch(
        &mut self,
        from: SocketAddr,
        mut data: bytes::Bytes,
    ) -> Option<tokio::sync::mpsc::Receiver<bytes::Bytes>> {
        use tokio::sync::mpsc::error::TrySendError;
        if let Some(tx) = self.sessions.get(&from) {
            match tx.try_send(data) {
                Ok(()) | Err(TrySendError::Full(_)) => return None,
                Err(TrySendError::Closed(d)) => {
                    self.sessions.remove(&from);
                    data = d;
                }
            }
        }
        if self.sessions.len() >= self.max {
            self.sessions.retain(|_, tx| !tx.is_closed());
            if self.sessions.len() >= self.max {
                tracing::debug!(%from, "datagram dropped: at the session limit");
                return None;
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(self.queue);
        let _ = tx.try_send(data);
        self.sessions.insert(from, tx);
        Some(rx)
    }
}
