//! frp's `transport.useCompression`: the bytes of a proxy's streams between the server
//! and the peer, compressed with snappy (as frp does), both ways.
//!
//! [`Carried`] wraps a stream (after its header, which stays plain) and is either a
//! pass-through or compressing. Each write becomes one frame at once, so nothing
//! waits in a buffer for a flush that a byte pump never sends (interactive protocols
//! keep working): a 4-byte header (kind: 0 raw, 1 snappy; then the payload length,
//! 24 bits big endian) and the payload. A chunk that does not shrink goes raw, so
//! incompressible data (TLS, video) costs 4 bytes per chunk and no more. Reading
//! checks every length before allocating: a frame over [`MAX_FRAME`] bytes, or one
//! that would decompress to more than [`MAX_CHUNK`], is an error, and a stream that
//! ends inside a frame is an `UnexpectedEof`, never a clean end.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most plain bytes in one frame: a byte pump's largest read (one multiplexer frame
/// is 63 KiB) fits, and snappy compresses blocks of 64 KiB at a time anyway.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Most payload bytes of one frame: a raw chunk, or snappy's worst case for one.
pub const MAX_FRAME: usize = 32 + MAX_CHUNK + MAX_CHUNK / 6;

const RAW: u8 = 0;
const SNAPPY: u8 = 1;
const HEADER: usize = 4;

/// A stream carried plain or compressed (see the module docs).
pub struct Carried<S> {
    inner: S,
    snappy: Option<Box<Snappy>>,
}

impl<S> std::fmt::Debug for Carried<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried")
            .field("compressed", &self.snappy.is_some())
            .finish_non_exhaustive()
    }
}

struct Snappy {
    enc: snap::raw::Encoder,
    dec: snap::raw::Decoder,
    /// The frame being written, and how much of it the inner stream has taken.
    out: Vec<u8>,
    out_pos: usize,
    /// Plain bytes the frame in `out` stands for: reported once it is all written.
    accepted: Option<usize>,
    /// The frame being read, and how much of it has arrived.
    frame: Vec<u8>,
    have: usize,
    /// Decompressed bytes not yet read.
    plain: Vec<u8>,
    plain_pos: usize,
}

impl Default for Snappy {
    fn default() -> Self {
        Snappy {
            enc: snap::raw::Encoder::new(),
            dec: snap::raw::Decoder::new(),
            out: Vec::new(),
            out_pos: 0,
            accepted: None,
            frame: Vec::new(),
            have: 0,
            plain: Vec::new(),
            plain_pos: 0,
        }
    }
}

impl<S> Carried<S> {
    /// `inner` as it is.
    pub fn plain(inner: S) -> Self {
        Carried {
            inner,
            snappy: None,
        }
    }

    /// `inner`, compressed both ways (the other end must wrap its side too).
    pub fn compressed(inner: S) -> Self {
        Carried {
            inner,
            snappy: Some(Box::default()),
        }
    }

    /// The stream itself if nothing is compressed (so it can be carried without
    /// copies), else `self`.
    pub fn into_plain(self) -> Result<S, Self> {
        if self.snappy.is_none() {
            Ok(self.inner)
        } else {
            Err(self)
        }
    }

    /// `plain` or `compressed`.
    pub fn new(inner: S, compress: bool) -> Self {
        if compress {
            Self::compressed(inner)
        } else {
            Self::plain(inner)
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("compressed stream: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Carried<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(z) = this.snappy.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if z.plain_pos < z.plain.len() {
                let n = (z.plain.len() - z.plain_pos).min(buf.remaining());
                buf.put_slice(&z.plain[z.plain_pos..z.plain_pos + n]);
                z.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            let want = if z.have < HEADER {
                HEADER
            } else {
                let len = usize::from(z.frame[1]) << 16
                    | usize::from(z.frame[2]) << 8
                    | usize::from(z.frame[3]);
                if len > MAX_FRAME {
                    return Poll::Ready(Err(invalid("a frame longer than the limit")));
                }
                HEADER + len
            };
            if z.have < want {
                z.frame.resize(want, 0);
                let mut rb = ReadBuf::new(&mut z.frame[z.have..want]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    if z.have == 0 {
                        return Poll::Ready(Ok(())); // a clean end, between frames
                    }
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                z.have += n;
                continue;
            }
            if want == HEADER && z.have == HEADER && z.frame[1..4] != [0, 0, 0] {
                continue; // header complete; now the payload
            }
            let payload = &z.frame[HEADER..want];
            z.plain.clear();
            z.plain_pos = 0;
            match z.frame[0] {
                RAW => z.plain.extend_from_slice(payload),
                SNAPPY => {
                    let len =
                        snap::raw::decompress_len(payload).map_err(|e| invalid(&e.to_string()))?;
                    if len > MAX_CHUNK {
                        return Poll::Ready(Err(invalid("a frame decompresses past the limit")));
                    }
                    z.plain.resize(len, 0);
                    z.dec
                        .decompress(payload, &mut z.plain)
                        .map_err(|e| invalid(&e.to_string()))?;
                }
                _ => return Poll::Ready(Err(invalid("an unknown frame kind"))),
            }
            z.have = 0;
        }
    }
}

impl Snappy {
    /// Writes what is left of `out` to `inner`.
    fn drain<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Makes the frame for `plain` in `out`.
    fn encode(&mut self, plain: &[u8]) -> io::Result<()> {
        self.out.clear();
        self.out_pos = 0;
        self.out
            .resize(HEADER + snap::raw::max_compress_len(plain.len()), 0);
        let packed = self
            .enc
            .compress(plain, &mut self.out[HEADER..])
            .map_err(io::Error::other)?;
        let (kind, len) = if packed < plain.len() {
            (SNAPPY, packed)
        } else {
            self.out[HEADER..HEADER + plain.len()].copy_from_slice(plain);
            (RAW, plain.len())
        };
        self.out.truncate(HEADER + len);
        let l = (len as u32).to_be_bytes();
        self.out[..HEADER].copy_from_slice(&[kind, l[1], l[2], l[3]]);
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Carried<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(z) = this.snappy.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        loop {
            // A frame is reported written only once the inner stream took all of it
            // (the caller retries with the same bytes meanwhile, as write_all does).
            ready!(z.drain(&mut this.inner, cx))?;
            if let Some(n) = z.accepted.take() {
                return Poll::Ready(Ok(n));
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let n = buf.len().min(MAX_CHUNK);
            z.encode(&buf[..n])?;
            z.accepted = Some(n);
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(z) = this.snappy.as_deref_mut() {
            ready!(z.drain(&mut this.inner, cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(z) = this.snappy.as_deref_mut() {
            ready!(z.drain(&mut this.inner, cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn round_trips_and_shrinks_what_compresses() {
        let text: Vec<u8> = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n"
            .iter()
            .copied()
            .cycle()
            .take(1_000_000)
            .collect();
        let mut x: u64 = 7;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for (data, most) in [
            (&text, text.len() / 10),
            (&noise, noise.len() + noise.len() / 100),
        ] {
            let (a, b) = tokio::io::duplex(8192);
            let (counted_tx, mut counted_rx) = tokio::io::duplex(1 << 22);
            // a -> (compressed) -> b, and b's raw bytes copied aside to be counted.
            let mut w = Carried::compressed(a);
            let send = data.clone();
            let writer = tokio::spawn(async move {
                for chunk in send.chunks(70_000) {
                    w.write_all(chunk).await.unwrap();
                }
                w.shutdown().await.unwrap();
            });
            let mut raw = Vec::new();
            let mut b = b;
            b.read_to_end(&mut raw).await.unwrap();
            writer.await.unwrap();
            assert!(
                raw.len() <= most,
                "{} bytes on the wire for {}",
                raw.len(),
                data.len()
            );
            let mut tx = counted_tx;
            tx.write_all(&raw).await.unwrap();
            drop(tx);
            let mut r = Carried::compressed(&mut counted_rx);
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert!(got == *data);
        }
    }

    #[tokio::test]
    async fn bad_input_is_an_error() {
        async fn read(wire: &[u8]) -> io::Result<Vec<u8>> {
            let mut r = Carried::compressed(wire);
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.map(|_| got)
        }
        assert_eq!(read(&[]).await.unwrap(), b"");
        assert_eq!(read(&[0, 0, 0, 2, b'h', b'i']).await.unwrap(), b"hi");
        // Cut inside a frame: not a clean end.
        let e = read(&[0, 0, 0, 5, b'h']).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(read(&[0, 0xff, 0xff, 0xff]).await.is_err());
        assert!(read(&[9, 0, 0, 1, 0]).await.is_err());
        // Snappy that claims 16 MB: refused before allocating it.
        assert!(read(&[1, 0, 0, 4, 0x80, 0x80, 0x80, 0x08]).await.is_err());
        assert!(read(&[1, 0, 0, 3, 1, 2, 3]).await.is_err());
        // Never a panic on noise.
        let mut x: u64 = 99;
        for _ in 0..2000 {
            let len = (x % 40) as usize;
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = read(&noise).await;
        }
    }
}
