//! Noticing a silent peer on a multiplexed connection (a link or a data connection).
//!
//! A paused or vanished peer whose kernel still answers (SIGSTOP, a frozen VM, a NAT
//! that keeps the mapping) leaves a TCP connection that looks healthy: keepalives are
//! acknowledged, small writes are buffered. Only the application can tell. The
//! multiplexer (`common::mux`) does this for its connections itself (pings every 10 s,
//! silence for [`LINK_IDLE_TIMEOUT`] loses the connection). [`Liveness`] does the same
//! for any byte stream: it wakes its reader every [`LIVENESS_WAKE`] and fails reads
//! with [`std::io::ErrorKind::TimedOut`] once nothing at all has arrived for its idle
//! timeout.
//!
//! [`LIVENESS_WAKE`]: crate::defaults::LIVENESS_WAKE
//! [`LINK_IDLE_TIMEOUT`]: crate::defaults::LINK_IDLE_TIMEOUT

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Interval, MissedTickBehavior},
};

/// A connection that fails its reads after `idle` without any incoming byte, and
/// wakes its reader every `wake` meanwhile (see the module docs).
#[derive(Debug)]
pub struct Liveness<T> {
    io: T,
    idle: Duration,
    tick: Interval,
    last_read: Instant,
}

impl<T> Liveness<T> {
    /// Wraps `io`. Must be called inside a tokio runtime.
    pub fn new(io: T, idle: Duration, wake: Duration) -> Self {
        let mut tick = tokio::time::interval(wake);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            io,
            idle,
            tick,
            last_read: Instant::now(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Liveness<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                // Registers the waker for the next tick: the reader
                // is polled again then, and sends its ping if one is due.
                while this.tick.poll_tick(cx).is_ready() {}
                if this.last_read.elapsed() >= this.idle {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing heard from the other side for {:?}: it is paused, gone, \
                             or cut off",
                            this.idle
                        ),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Liveness<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_other_side_fails_reads_after_the_idle_time() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = Liveness::new(a, Duration::from_millis(300), Duration::from_millis(50));
        // Bytes keep it alive.
        for _ in 0..4 {
            b.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            a.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // Silence does not.
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let err = a.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(b);
    }

    #[tokio::test]
    async fn a_mux_whose_other_side_is_silent_is_lost() {
        use crate::mux::{Mux, MuxConfig, Plain, Role};
        // A live pair stays up (the mux's first ping and its answer arrive at once; the
        // integration test `liveness` shows a live link idle past the idle time).
        let (a, b) = tokio::io::duplex(64 * 1024);
        let idle = Duration::from_secs(13);
        let wake = Duration::from_millis(200);
        let (ma, _ia) = Mux::start(
            Plain(Liveness::new(a, idle, wake)),
            Role::Client,
            MuxConfig::default(),
        );
        let (mb, _ib) = Mux::start(
            Plain(Liveness::new(b, idle, wake)),
            Role::Server,
            MuxConfig::default(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!ma.is_closed() && !mb.is_closed());
        // The other end of `c` is never driven: `mc` hears nothing and is lost.
        let (c, _d) = tokio::io::duplex(64 * 1024);
        let (mc, _ic) = Mux::start(
            Plain(Liveness::new(c, Duration::from_millis(500), wake)),
            Role::Client,
            MuxConfig::default(),
        );
        tokio::time::timeout(Duration::from_secs(5), mc.closed())
            .await
            .unwrap();
    }
}
