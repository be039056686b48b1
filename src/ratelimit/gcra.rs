//! GCRA ("virtual scheduling" token bucket), shared by keyed `token_bucket` policies and the
//! standalone per-API-client [`TokenBucket`].
//!
//! State is one theoretical arrival time (TAT, i64 ns since an epoch). A request at `now` is
//! admitted iff `max(TAT, now) + T - now <= tau`, where `T = 1/rate` is the emission interval
//! and `tau = burst·T`; admitting sets `TAT = max(TAT, now) + T`. The bucket holds
//! `(tau - max(TAT - now, 0)) / T` tokens, is full when `TAT <= now`, and a denial never
//! mutates state, so hammering clients cost one load and no write.

use super::table::CellAlgo;
use super::{nanos_since, to_duration, Decision, InvalidPolicy};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Above this `T` would round to 0 ns and the bucket would stop limiting.
const MAX_RATE: f64 = 1e9;
/// Keeps `TAT + tau` far from i64 overflow for any `now` within ~73 years of the epoch.
const MAX_TAU_NS: f64 = (1u64 << 61) as f64;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Gcra {
    interval: i64,
    tau: i64,
    burst: u32,
}

impl Gcra {
    pub(crate) fn new(rate_per_sec: f64, burst: u32) -> Result<Self, InvalidPolicy> {
        if !(rate_per_sec.is_finite() && rate_per_sec > 0.0 && rate_per_sec <= MAX_RATE) {
            return Err(InvalidPolicy::Rate);
        }
        if burst == 0 {
            return Err(InvalidPolicy::Burst);
        }
        // Rounding T to whole ns errs by <= 0.5 ns per admitted request (see module docs).
        let interval_f = (1e9 / rate_per_sec).round();
        if interval_f * f64::from(burst) > MAX_TAU_NS {
            return Err(InvalidPolicy::Rate);
        }
        let interval = interval_f as i64;
        Ok(Gcra {
            interval,
            tau: interval * i64::from(burst),
            burst,
        })
    }

    /// Whole seconds needed to refill an empty bucket: the `w` this policy advertises.
    pub(crate) fn refill_secs(&self) -> u64 {
        (self.tau as u64).div_ceil(1_000_000_000).max(1)
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    fn decide_at(&self, tat: &AtomicU64, now: i64) -> Decision {
        // Relaxed suffices: the cell is the only shared datum and CAS gives one total order.
        let mut cur = tat.load(Relaxed) as i64;
        loop {
            let base = cur.max(now);
            let next = base.saturating_add(self.interval);
            let backlog = next - now;
            if backlog > self.tau {
                return Decision {
                    allowed: false,
                    limit: u64::from(self.burst),
                    remaining: 0,
                    reset: to_duration(base - now),
                    // > 0 because backlog > tau; when one token will have dripped back in.
                    retry_after: Some(to_duration(backlog - self.tau)),
                };
            }
            match tat.compare_exchange_weak(cur as u64, next as u64, Relaxed, Relaxed) {
                Ok(_) => {
                    return Decision {
                        allowed: true,
                        limit: u64::from(self.burst),
                        remaining: ((self.tau - backlog) / self.interval) as u64,
                        reset: to_duration(backlog),
                        retry_after: None,
                    }
                }
                Err(actual) => cur = actual as i64,
            }
        }
    }

    fn tokens_at(&self, tat: i64, now: i64) -> f64 {
        let debt = tat.saturating_sub(now).max(0);
        ((self.tau - debt) as f64 / self.interval as f64).clamp(0.0, f64::from(self.burst))
    }

    /// The TAT at which the bucket holds `tokens` at `now` (clamped to `0..=burst`).
    fn tat_for(&self, tokens: f64, now: i64) -> i64 {
        let tokens = if tokens.is_nan() { 0.0 } else { tokens };
        let tokens = tokens.clamp(0.0, f64::from(self.burst));
        let debt = (self.tau as f64 - tokens * self.interval as f64).round() as i64;
        now.saturating_add(debt.clamp(0, self.tau))
    }
}

impl CellAlgo for Gcra {
    // TAT at the beginning of time: every bucket starts full.
    const FRESH: u64 = i64::MIN as u64;

    fn decide(&self, cell: &AtomicU64, now: i64, _hash: u64) -> Decision {
        self.decide_at(cell, now)
    }

    fn idle_from(&self, cell: u64, _now: i64, _hash: u64) -> i64 {
        cell as i64
    }
}

/// A standalone GCRA bucket for one API client, with its own rate and capacity.
///
/// Same guarantees as a keyed `token_bucket` policy (see the module docs); ~56 bytes. There is
/// no separate "last refill" timestamp in GCRA: the pair `(tokens(at), at)` for any instant
/// `at` is the complete state, and [`TokenBucket::restore`] rebuilds it. `Instant` is only
/// meaningful inside one process, so a caller persisting across restarts stores wall-clock
/// time beside `tokens` and maps it back to an `Instant` on load.
#[derive(Debug)]
pub struct TokenBucket {
    epoch: Instant,
    tat: AtomicU64,
    interval: AtomicI64,
    tau: AtomicI64,
    burst: AtomicU32,
    rate_bits: AtomicU64,
}

impl TokenBucket {
    /// A full bucket admitting `rate_per_sec` on average and `capacity` at once.
    ///
    /// # Errors
    /// [`InvalidPolicy::Rate`] unless `0 < rate_per_sec <= 1e9` (and `capacity/rate` fits
    /// ~73 years); [`InvalidPolicy::Burst`] if `capacity == 0`.
    pub fn new(rate_per_sec: f64, capacity: u32, now: Instant) -> Result<Self, InvalidPolicy> {
        Self::restore(rate_per_sec, capacity, f64::from(capacity), now)
    }

    /// A bucket holding `tokens` (clamped to `0..=capacity`, NaN as 0) at instant `at`.
    ///
    /// # Errors
    /// As [`TokenBucket::new`].
    pub fn restore(
        rate_per_sec: f64,
        capacity: u32,
        tokens: f64,
        at: Instant,
    ) -> Result<Self, InvalidPolicy> {
        let gcra = Gcra::new(rate_per_sec, capacity)?;
        Ok(TokenBucket {
            epoch: at,
            tat: AtomicU64::new(gcra.tat_for(tokens, 0) as u64),
            interval: AtomicI64::new(gcra.interval),
            tau: AtomicI64::new(gcra.tau),
            burst: AtomicU32::new(gcra.burst),
            rate_bits: AtomicU64::new(rate_per_sec.to_bits()),
        })
    }

    fn params(&self) -> Gcra {
        Gcra {
            interval: self.interval.load(Relaxed),
            tau: self.tau.load(Relaxed),
            burst: self.burst.load(Relaxed),
        }
    }

    /// Takes one token if available. Lock-free; a denial does not write.
    pub fn try_acquire(&self, now: Instant) -> Decision {
        self.params()
            .decide_at(&self.tat, nanos_since(self.epoch, now))
    }

    /// Tokens available at `now`, fractional; with `now` this is the state to persist.
    pub fn tokens(&self, now: Instant) -> f64 {
        self.params()
            .tokens_at(self.tat.load(Relaxed) as i64, nanos_since(self.epoch, now))
    }

    /// Configured refill rate in tokens per second.
    pub fn rate_per_sec(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Relaxed))
    }

    /// Configured capacity (burst).
    pub fn capacity(&self) -> u32 {
        self.burst.load(Relaxed)
    }

    /// The advertised policy `(q, w)`: `q = capacity` per `w = ceil(capacity / rate)` seconds,
    /// a quota that never gets denied whatever the client's arrival pattern.
    pub fn quota(&self) -> (u64, u64) {
        let p = self.params();
        (u64::from(p.burst), p.refill_secs())
    }

    /// Changes rate and capacity, keeping the tokens available at `now` (clamped to the new
    /// capacity), so a config reload neither grants a fresh burst nor confiscates tokens.
    ///
    /// Meant for reloads, not the hot path: an acquisition racing with this call may be
    /// decided under the old interval with the new capacity or vice versa (one decision),
    /// and two racing reconfigurations leave the parameters of whichever stored last.
    ///
    /// # Errors
    /// As [`TokenBucket::new`]; the bucket is left unchanged.
    pub fn reconfigure(
        &self,
        rate_per_sec: f64,
        capacity: u32,
        now: Instant,
    ) -> Result<(), InvalidPolicy> {
        let new = Gcra::new(rate_per_sec, capacity)?;
        let now = nanos_since(self.epoch, now);
        let old = self.params();
        let mut cur = self.tat.load(Relaxed);
        loop {
            let next = new.tat_for(old.tokens_at(cur as i64, now), now);
            match self
                .tat
                .compare_exchange_weak(cur, next as u64, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.interval.store(new.interval, Relaxed);
        self.tau.store(new.tau, Relaxed);
        self.burst.store(new.burst, Relaxed);
        self.rate_bits.store(rate_per_sec.to_bits(), Relaxed);
        Ok(())
    }
}
