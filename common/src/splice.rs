//! Byte pumping with half-close and counters, and the rule for how a carried
//! connection ends.
//!
//! [`pump`] copies one direction. [`splice`] joins a user's TCP connection (or the
//! peer's connection to its local service) with the stream that carries it, both
//! directions, and owns the rule every proxy path follows:
//!
//! * A clean end stays clean: each side's end of file passes through as a FIN
//!   (half-close), after every byte before it.
//! * Anything else (the stream was reset, its connection lost, a write failed, the
//!   TCP side was reset) is an abnormal end: the TCP connection is *reset* (`SO_LINGER`
//!   0, then closed: an RST, so the client reads `ECONNRESET`, never a clean end of
//!   file after a truncated transfer), and the stream is dropped without a shutdown,
//!   which resets it for the other side, which then resets its TCP connection too.
//!
//! The pump's buffer starts small and grows while reads fill it: ten thousand idle
//! connections cost [`PUMP_BUF_START`] per direction each, a busy one reads up to
//! [`PUMP_BUF_MAX`] at a time.
//!
//! [`splice`] copies nothing in user space: toward the stream it reads the TCP
//! connection straight into a multiplexer frame ([`MuxStream::frame_buffer`]), and
//! from the stream it writes each received payload to the TCP connection as it
//! arrived ([`MuxStream::poll_recv_chunk`]). Only the cipher touches the bytes between
//! the two kernels' buffers.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::BufMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::mux::MuxStream;

/// First read buffer of a pump: 4 KiB, one page. Most connections at any moment are
/// idle or carry small messages; 10,000 of them hold 80 MiB in buffers at 4 KiB per
/// direction, against 1.25 GiB at [`PUMP_BUF_MAX`].
pub const PUMP_BUF_START: usize = 4 * 1024;

/// Largest read buffer of a pump: one multiplexer data frame ([`crate::mux::FRAME_SIZE`],
/// 63 KiB), so that a full read becomes exactly one frame (and one Noise frame). With
/// 64 KiB every full read became a 63 KiB frame and a 1 KiB one, twice the per-frame
/// work. A pump doubles its buffer, from [`PUMP_BUF_START`], each time a read fills
/// it, so a bulk transfer reaches this size after four reads.
pub const PUMP_BUF_MAX: usize = crate::mux::FRAME_SIZE;

/// A shared byte counter, read by progress displays while a pump runs.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Copies `r` to `w` until `r` ends, then shuts down `w`'s write side (the half-close
/// passes through). Returns the bytes copied. Every byte read is written before the
/// shutdown, so nothing is lost on a clean close. An error from either side ends the
/// pump with that error and no shutdown.
pub async fn pump<R, W>(mut r: R, mut w: W, counter: &Counter) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_BUF_START];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.add(n);
        if n == buf.len() && buf.len() < PUMP_BUF_MAX {
            buf.resize((buf.len() * 2).min(PUMP_BUF_MAX), 0);
        }
    }
    w.flush().await?;
    w.shutdown().await?;
    Ok(total)
}

/// How a [`splice`] ended.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes from the TCP connection into the stream.
    pub up: u64,
    /// Bytes from the stream to the TCP connection.
    pub down: u64,
    /// Why the splice ended abnormally (the TCP connection was reset and the stream
    /// dropped); `None` when both directions ended cleanly.
    pub error: Option<io::Error>,
}

/// Carries `tcp` over `stream` both ways until both directions have ended, with the
/// rule of the module docs: clean ends pass through as FINs; at the first error the
/// other direction is abandoned, `tcp` is reset and `stream` dropped without a
/// shutdown (a reset for the other side).
pub async fn splice(mut tcp: TcpStream, stream: MuxStream) -> Spliced {
    let (up, down) = (Counter::default(), Counter::default());
    let result = {
        let (tcp_r, tcp_w) = tcp.split();
        // The first error drops the other pump.
        tokio::try_join!(
            pump_to_stream(tcp_r, &stream, &up),
            pump_from_stream(&stream, tcp_w, &down)
        )
    };
    drop(stream);
    ended(tcp, &up, &down, result.err())
}

/// How a splice ended; an abnormal end resets the TCP connection (the module's rule).
fn ended(tcp: TcpStream, up: &Counter, down: &Counter, error: Option<io::Error>) -> Spliced {
    if error.is_some() {
        crate::net::reset(tcp);
    }
    Spliced {
        up: up.get(),
        down: down.get(),
        error,
    }
}

/// [`splice`] for a proxy's stream: as it is when not compressed (no copies), else
/// through [`splice_io`].
pub async fn splice_carried(
    tcp: TcpStream,
    stream: crate::compress::Carried<MuxStream>,
) -> Spliced {
    match stream.into_plain() {
        Ok(stream) => splice(tcp, stream).await,
        Err(stream) => splice_io(tcp, stream).await,
    }
}

/// [`splice`] over any byte stream (a compressing wrapper): the same rule, with a copy
/// through the pumps' buffers.
pub async fn splice_io<S>(mut tcp: TcpStream, stream: S) -> Spliced
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (up, down) = (Counter::default(), Counter::default());
    let result = {
        let (tcp_r, tcp_w) = tcp.split();
        let (stream_r, stream_w) = tokio::io::split(stream);
        // The first error drops the other pump, then both halves of the stream.
        tokio::try_join!(pump(tcp_r, stream_w, &up), pump(stream_r, tcp_w, &down))
    };
    ended(tcp, &up, &down, result.err())
}

/// Reads `r` into frames of `stream` until `r` ends, then sends the stream's FIN.
/// Reads only as much as the other side may be sent, so a slow receiver holds the
/// TCP sender back through TCP's own flow control.
async fn pump_to_stream<R: AsyncRead + Unpin>(
    mut r: R,
    stream: &MuxStream,
    counter: &Counter,
) -> io::Result<u64> {
    let mut size = PUMP_BUF_START;
    let mut total = 0u64;
    loop {
        let cap = std::future::poll_fn(|cx| stream.poll_send_capacity(cx)).await?;
        let want = cap.min(size);
        let mut frame = MuxStream::frame_buffer(want);
        let n = r.read_buf(&mut (&mut frame).limit(want)).await?;
        if n == 0 {
            break;
        }
        stream.send_frame(frame)?;
        total += n as u64;
        counter.add(n);
        if n == size && size < PUMP_BUF_MAX {
            size = (size * 2).min(PUMP_BUF_MAX);
        }
    }
    stream.finish()?;
    Ok(total)
}

/// Writes what arrives on `stream` to `w` until the stream's FIN, then shuts `w` down.
async fn pump_from_stream<W: AsyncWrite + Unpin>(
    stream: &MuxStream,
    mut w: W,
    counter: &Counter,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = std::future::poll_fn(|cx| stream.poll_recv_chunk(cx)).await? {
        w.write_all(&chunk).await?;
        total += chunk.len() as u64;
        counter.add(chunk.len());
    }
    w.flush().await?;
    w.shutdown().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn pumps_and_half_closes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (a, mut b) = tokio::io::duplex(4096);
        let c = Counter::default();
        let src = data.clone();
        let t = tokio::spawn(async move { pump(&src[..], a, &c).await.map(|n| (n, c.get())) });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        assert_eq!(t.await.unwrap().unwrap(), (300_000, 300_000));
    }

    /// A connected pair of TCP streams on loopback.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A multiplexed connection over an in-memory pipe; returns our stream, the
    /// far side's, and the far side's transport end (drop it to cut the connection).
    async fn mux_pair() -> (MuxStream, MuxStream, crate::mux::Mux) {
        use crate::mux::{Mux, MuxConfig, Role};
        let (a, b) = tokio::io::duplex(1 << 20);
        let (near, _near_in) = Mux::start(a, Role::Client, MuxConfig::default());
        let (far, mut far_in) = Mux::start(b, Role::Server, MuxConfig::default());
        let ours = near.open().await.unwrap();
        let theirs = far_in.recv().await.unwrap();
        (ours, theirs, far)
    }

    /// A stream that fails mid-transfer resets the TCP side: the client gets what
    /// was carried, then ECONNRESET instead of end of file, although it never sent
    /// anything or closed its side.
    #[tokio::test]
    async fn abnormal_end_resets_the_tcp_side() {
        let (ours, mut client) = tcp_pair().await;
        let carried = vec![7u8; 100_000];
        let (stream, mut theirs, far) = mux_pair().await;
        theirs.write_all(&carried).await.unwrap();
        let done = tokio::spawn(splice(ours, stream));
        // The far side closes the connection with the stream still open (its data
        // leaves first).
        far.close();
        drop(theirs);
        let mut got = Vec::new();
        let err = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
            .await
            .expect("the client is not left hanging")
            .expect_err("a reset, not end of file");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert!(got.len() <= carried.len());
        let spliced = done.await.unwrap();
        assert_eq!(spliced.down, carried.len() as u64);
        assert_eq!(
            spliced.error.map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionAborted)
        );
    }

    /// Clean ends both ways: every byte arrives, then end of file, both directions.
    #[tokio::test]
    async fn clean_end_is_a_fin_with_every_byte() {
        let (ours, mut client) = tcp_pair().await;
        let (stream, mut far, _far_mux) = mux_pair().await;
        let done = tokio::spawn(splice(ours, stream));
        let down: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let up: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
        let (d, u) = (down.clone(), up.clone());
        let far_task = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut far);
            let (got, ()) = tokio::join!(
                async {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.unwrap();
                    got
                },
                async {
                    w.write_all(&d).await.unwrap();
                    w.shutdown().await.unwrap();
                }
            );
            got
        });
        let (mut cr, mut cw) = client.split();
        let (got, ()) = tokio::join!(
            async {
                let mut got = Vec::new();
                cr.read_to_end(&mut got).await.unwrap();
                got
            },
            async {
                cw.write_all(&u).await.unwrap();
                cw.shutdown().await.unwrap();
            }
        );
        assert_eq!(got, down);
        assert_eq!(far_task.await.unwrap(), up);
        let spliced = done.await.unwrap();
        assert!(spliced.error.is_none(), "{:?}", spliced.error);
        assert_eq!((spliced.up, spliced.down), (700_000, 1_000_000));
    }
}
