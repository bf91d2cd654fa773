//! Byte counting on a live stream: [`Counted`] wraps any `AsyncRead + AsyncWrite` and
//! adds what passes through to shared counters, so that a status page or a metric
//! sees the bytes of a relay or a link while it runs, not only when it ends.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from and written to a stream, shared with whoever reports them.
#[derive(Debug, Clone, Default)]
pub struct Bytes {
    /// Bytes read from the stream (received).
    pub read: Arc<AtomicU64>,
    /// Bytes written to the stream (sent).
    pub written: Arc<AtomicU64>,
}

impl Bytes {
    /// `(read, written)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// A stream that counts its bytes into [`Bytes`] (and, optionally, one more total,
/// such as a server-wide metric).
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    bytes: Bytes,
    total: Option<Arc<AtomicU64>>,
}

impl<T> Counted<T> {
    /// Wraps `inner`, counting into `bytes`.
    pub fn new(inner: T, bytes: Bytes) -> Self {
        Counted {
            inner,
            bytes,
            total: None,
        }
    }

    /// Also adds every byte read or written to `total`.
    pub fn with_total(mut self, total: Arc<AtomicU64>) -> Self {
        self.total = Some(total);
        self
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn add(&self, which: &AtomicU64, n: usize) {
        if n > 0 {
            which.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(t) = &self.total {
                t.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.add(&this.bytes.read, buf.filled().len() - before);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.add(&this.bytes.written, n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.add(&this.bytes.written, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A counted frame writer counts each frame's plaintext (header and payload) when it
/// takes it.
impl<W: crate::mux::FrameWrite> crate::mux::FrameWrite for Counted<W> {
    fn queue(&mut self, frame: bytes::BytesMut) -> io::Result<()> {
        let n = frame.len() - crate::mux::FRAME_HEADROOM;
        self.inner.queue(frame)?;
        self.add(&self.bytes.written, n);
        Ok(())
    }

    fn queued(&self) -> usize {
        self.inner.queued()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_write_out(cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_finish(cx)
    }
}

/// The reading half of a counted [`crate::mux::Transport`]: counts each chunk it hands
/// on (after decryption, so payload bytes, as the writing half counts them).
#[derive(Debug)]
pub struct CountedReader<R> {
    inner: R,
    bytes: Bytes,
    total: Option<Arc<AtomicU64>>,
}

impl<R: crate::mux::ChunkRead> crate::mux::ChunkRead for CountedReader<R> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<bytes::Bytes>>> {
        let r = self.inner.poll_chunk(cx);
        if let Poll::Ready(Ok(Some(chunk))) = &r {
            let n = chunk.len() as u64;
            self.bytes.read.fetch_add(n, Ordering::Relaxed);
            if let Some(t) = &self.total {
                t.fetch_add(n, Ordering::Relaxed);
            }
        }
        r
    }
}

/// A counted connection runs a [`crate::mux::Mux`] like the connection itself, its two
/// halves counting separately.
impl<T: crate::mux::Transport> crate::mux::Transport for Counted<T>
where
    T::Writer: Unpin,
{
    type Reader = CountedReader<T::Reader>;
    type Writer = Counted<T::Writer>;
    fn split_transport(self) -> (Self::Reader, Self::Writer) {
        let (r, w) = self.inner.split_transport();
        (
            CountedReader {
                inner: r,
                bytes: self.bytes.clone(),
                total: self.total.clone(),
            },
            Counted {
                inner: w,
                bytes: self.bytes,
                total: self.total,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_ways_and_into_the_total() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let bytes = Bytes::default();
        let total = Arc::new(AtomicU64::new(0));
        let mut a = Counted::new(a, bytes.clone()).with_total(total.clone());
        a.write_all(&[1u8; 3000]).await.unwrap();
        let mut got = vec![0u8; 3000];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(&[2u8; 500]).await.unwrap();
        let mut back = vec![0u8; 500];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(bytes.get(), (500, 3000));
        assert_eq!(total.load(Ordering::Relaxed), 3500);
    }
}
