//! Per-client request rate limits: a token bucket per API key (or per peer
//! address without one). Over the limit the gateway answers 429
//! `{"code":"RATE_LIMITED"}` with `Retry-After`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// One client's bucket (pure: time is passed in).
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn full(burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            last: now,
        }
    }

    /// Take one token, or say how long until one is there.
    pub fn take(&mut self, now: Instant, per_sec: f64, burst: f64) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<[u8; 32], TokenBucket>>,
}

/// Buckets kept before idle ones are dropped (bounds memory under key spraying).
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// `per_sec` sustained requests with bursts of `burst`; `None` when `per_sec` is 0 (off).
    pub fn new(per_sec: f64, burst: f64) -> Option<Self> {
        (per_sec > 0.0).then(|| RateLimiter {
            per_sec,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Charge one request to `client` (hashed: keys are never stored in clear).
    pub fn check(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let id: [u8; 32] = Sha256::digest(client.as_bytes()).into();
        let mut b = self.buckets.lock();
        if b.len() >= MAX_BUCKETS && !b.contains_key(&id) {
            // full buckets of idle clients carry no state worth keeping
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, t| {
                let mut t = *t;
                t.take(now, per_sec, burst).is_ok() && t.tokens + 1.0 < burst
            });
        }
        b.entry(id)
            .or_insert_with(|| TokenBucket::full(self.burst, now))
            .take(now, self.per_sec, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3.0, t0);
        for _ in 0..3 {
            assert!(b.take(t0, 10.0, 3.0).is_ok());
        }
        let wait = b.take(t0, 10.0, 3.0).expect_err("burst used up");
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(
            b.take(t0 + Duration::from_millis(100), 10.0, 3.0).is_ok(),
            "refilled at 10/s"
        );
        // refill never exceeds the burst
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later, 10.0, 3.0).is_ok());
        }
        assert!(b.take(later, 10.0, 3.0).is_err());
    }

    #[test]
    fn clients_are_limited_separately_and_zero_is_off() {
        let l = RateLimiter::new(1.0, 2.0).expect("on");
        let now = Instant::now();
        assert!(l.check("a", now).is_ok() && l.check("a", now).is_ok());
        assert!(l.check("a", now).is_err());
        assert!(l.check("b", now).is_ok(), "b has its own bucket");
        assert!(RateLimiter::new(0.0, 10.0).is_none());
    }
}
