//! Reconnect delays: short and jittered while an outage is young (a server restart),
//! then doubling up to a cap; reset after stable uptime (rathole's pattern).

use std::time::Duration;

use std::time::Instant;

use crate::defaults::{
    RECONNECT_FAST_MAX, RECONNECT_FAST_PERIOD, RECONNECT_FIRST_BACKOFF, RECONNECT_JITTER,
    RECONNECT_MAX_BACKOFF, RECONNECT_STABLE,
};

/// The delays between attempts to reach the server.
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    /// When the current outage began (the first failure since the last success).
    down_since: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            current: RECONNECT_FIRST_BACKOFF,
            down_since: None,
        }
    }
}

impl Backoff {
    /// How long to wait before the next attempt. During the first
    /// [`RECONNECT_FAST_PERIOD`] of an outage at most [`RECONNECT_FAST_MAX`], then
    /// doubling up to [`RECONNECT_MAX_BACKOFF`]; always minus a random part of up to
    /// [`RECONNECT_JITTER`].
    pub fn next_delay(&mut self) -> Duration {
        self.next_at(Instant::now())
    }

    fn next_at(&mut self, now: Instant) -> Duration {
        let since = *self.down_since.get_or_insert(now);
        let cap = if now.saturating_duration_since(since) < RECONNECT_FAST_PERIOD {
            RECONNECT_FAST_MAX
        } else {
            RECONNECT_MAX_BACKOFF
        };
        let base = self.current.min(cap);
        self.current = (base * 2).min(RECONNECT_MAX_BACKOFF);
        base.mul_f64(1.0 - RECONNECT_JITTER * rand::random::<f64>())
    }

    /// A connection succeeded: the next outage starts fresh. The delays themselves
    /// start over only if the connection that just ended was up for
    /// [`RECONNECT_STABLE`] (a server that accepts and drops at once is not hammered).
    pub fn connected(&mut self, uptime: Duration) {
        self.down_since = None;
        if uptime >= RECONNECT_STABLE {
            self.current = RECONNECT_FIRST_BACKOFF;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_while_the_outage_is_young_then_doubling_with_jitter() {
        let mut b = Backoff::default();
        let mut now = Instant::now();
        let start = now;
        let mut delays = Vec::new();
        while now - start < RECONNECT_FAST_PERIOD {
            let d = b.next_at(now);
            assert!(d <= RECONNECT_FAST_MAX, "{d:?}");
            assert!(d >= RECONNECT_FIRST_BACKOFF.mul_f64(1.0 - RECONNECT_JITTER));
            delays.push(d);
            now += d;
        }
        // Not all the same: jittered.
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "{delays:?}");
        // Past the fast period: growing up to the cap.
        let mut longest = Duration::ZERO;
        for _ in 0..10 {
            let d = b.next_at(now);
            assert!(d <= RECONNECT_MAX_BACKOFF);
            longest = longest.max(d);
            now += d;
        }
        assert!(longest > RECONNECT_MAX_BACKOFF / 4, "{longest:?}");
        // After a connection, short, even if it was short-lived.
        b.connected(Duration::from_secs(1));
        assert!(b.next_at(now) <= RECONNECT_FAST_MAX);
    }
}
