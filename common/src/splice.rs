//! Byte pumping with half-close and counters.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Buffer size of a pump: large enough to fill a Noise frame in one write.
const PUMP_BUF: usize = 64 * 1024;

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
/// shutdown, so nothing is lost on a clean close.
pub async fn pump<R, W>(mut r: R, mut w: W, counter: &Counter) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PUMP_BUF];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.add(n);
    }
    w.flush().await?;
    w.shutdown().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
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
}
