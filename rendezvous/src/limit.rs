//! Small rate limits: a token bucket for requests, and a limit on how often a warning
//! is logged (so that a flood is visible in the log without flooding it).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use common::defaults::WARN_LOG_INTERVAL;
use tokio::time::Instant;
use tracing::warn;

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimit {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Whether a request at `now` is allowed (and takes a token if so).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// At most one log line per [`WARN_LOG_INTERVAL`]; counts what it held back.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(lines held back since the last one)` if a line may be logged at `now`.
    pub(crate) fn ready(&mut self, now: Instant) -> Option<u64> {
        self.ready_every(now, WARN_LOG_INTERVAL)
    }

    fn ready_every(&mut self, now: Instant, every: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10, 20);
        assert_eq!((0..30).filter(|_| r.allow(t0)).count(), 20);
        // 1 s later: 10 more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..30).filter(|_| r.allow(t1)).count(), 10);
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..30).filter(|_| r.allow(t2)).count(), 20);
    }

    #[test]
    fn log_limit_counts_what_it_held_back() {
        let t0 = Instant::now();
        let mut l = LogLimit::default();
        assert_eq!(l.ready(t0), Some(0));
        assert_eq!(l.ready(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.ready(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.ready(t0 + WARN_LOG_INTERVAL), Some(2));
    }
}

/// Connections or requests in flight per client address (`--max-per-client`): one
/// address cannot take everything a port or a site has.
#[derive(Clone)]
pub(crate) struct Clients(Arc<ClientsInner>);

struct ClientsInner {
    max: usize,
    in_flight: Mutex<HashMap<IpAddr, usize>>,
    /// When the last "limit reached" warning was logged (one a second at most).
    warned: Mutex<Option<Instant>>,
}

/// One connection or request in flight from a client address; the count goes down when dropped.
pub(crate) struct ClientSlot {
    clients: Clients,
    ip: IpAddr,
}

impl Clients {
    pub(crate) fn new(max: usize) -> Clients {
        Clients(Arc::new(ClientsInner {
            max: max.max(1),
            in_flight: Mutex::default(),
            warned: Mutex::default(),
        }))
    }

    /// A slot for one more connection from `ip`, or `None` at the limit (a warning
    /// naming `what`, once a second at most).
    pub(crate) fn acquire(&self, ip: IpAddr, what: &str) -> Option<ClientSlot> {
        let mut map = self
            .0
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_default();
        if *n >= self.0.max {
            drop(map);
            let mut warned = self.0.warned.lock().unwrap_or_else(PoisonError::into_inner);
            if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *warned = Some(Instant::now());
                warn!(%ip, max = self.0.max, "{what}: client at its limit of connections in flight (--max-per-client); refused");
            }
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self
            .clients
            .0
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
