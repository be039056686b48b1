//! The live bucket of an API client: the rate limiter's GCRA token bucket, persisted as
//! `tokens` + wall-clock `last_refill`.

use super::BucketState;
use crate::ratelimit::TokenBucket;
use std::time::{Instant, SystemTime};

/// A client's own token bucket (its `rate_per_sec` and `capacity`).
pub struct ClientBucket(TokenBucket);

impl ClientBucket {
    pub fn inner(&self) -> &TokenBucket {
        &self.0
    }
}

/// The `Instant` that corresponds to a wall-clock time (clamped to now for future times).
fn instant_of(at: SystemTime) -> Instant {
    let now = Instant::now();
    match SystemTime::now().duration_since(at) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(_) => now,
    }
}

impl BucketState for ClientBucket {
    fn new(rate_per_sec: f64, capacity: u32, tokens: f64, last_refill: SystemTime) -> Self {
        let at = instant_of(last_refill);
        // The registry validated rate and capacity; the fallback only guards a corrupt row.
        let bucket = TokenBucket::restore(rate_per_sec, capacity, tokens, at)
            .or_else(|_| TokenBucket::new(rate_per_sec.max(0.001), capacity.max(1), at))
            .or_else(|_| TokenBucket::new(1.0, 1, at));
        match bucket {
            Ok(b) => ClientBucket(b),
            Err(e) => unreachable!("a 1/s bucket of 1 is always valid: {e}"),
        }
    }

    fn snapshot(&self) -> (f64, SystemTime) {
        (self.0.tokens(Instant::now()), SystemTime::now())
    }

    fn reconfigure(&self, rate_per_sec: f64, capacity: u32) {
        if let Err(e) = self.0.reconfigure(rate_per_sec, capacity, Instant::now()) {
            log::error!(
                "client bucket: cannot apply rate {rate_per_sec}/s, capacity {capacity}: {e}"
            );
        }
    }
}
