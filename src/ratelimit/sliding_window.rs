//! Sliding-window estimate on top of `pingora_limits::rate::Rate`: constant memory, shared
//! by every key of the policy, approximate (see the module docs for the exact caveats).
//!
//! Estimate at fraction `f` into the current window: `prev·(1−f) + curr`, where `prev` and
//! `curr` are count–min sketch counts for the key in the previous and current window. A
//! request is admitted iff the estimate including it is `<= limit`; only admitted requests
//! are counted, so a client hammering at twice the limit still gets about `limit` through.

use super::{Decision, InvalidPolicy, Key};
use pingora_limits::rate::{Rate, RateComponents};
use std::time::Duration;

/// `Rate` can panic on an underflowing `now - 1000` (ms since it was created) when two
/// threads race to rotate a window inside its first second; windows of at least 1 s cannot
/// rotate that early. Whole seconds are also all the `w` header parameter can express.
pub(crate) const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);
/// Sketch rows; pingora's default. Each row is one independent hash of the key.
const HASHES: usize = 4;
/// Sketch columns are sized from `max_keys`, within pingora's default and a 4 MiB policy.
pub(crate) const MIN_SLOTS: usize = 1024;
pub(crate) const MAX_SLOTS: usize = 65_536;
/// Limits above 2^52 would lose integer precision in the f64 estimate.
const MAX_LIMIT: u64 = 1 << 52;

pub(crate) struct SlidingWindow {
    rate: Rate,
    limit: u64,
    window: Duration,
    slots: usize,
}

/// One sketch read: raw previous-window count, current-window count, elapsed fraction.
#[derive(Clone, Copy)]
struct Sample {
    prev: f64,
    curr: f64,
    frac: f64,
}

impl SlidingWindow {
    pub(crate) fn new(
        limit: u64,
        window: Duration,
        max_keys: usize,
    ) -> Result<Self, InvalidPolicy> {
        if limit == 0 || limit > MAX_LIMIT {
            return Err(InvalidPolicy::Limit);
        }
        // `Rate` counts in whole milliseconds; truncate here so our maths uses the same window.
        let window = Duration::from_millis(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err(InvalidPolicy::Window);
        }
        let slots = max_keys
            .checked_next_power_of_two()
            .unwrap_or(MAX_SLOTS)
            .clamp(MIN_SLOTS, MAX_SLOTS);
        Ok(SlidingWindow {
            rate: Rate::new_with_estimator_config(window, HASHES, slots),
            limit,
            window,
            slots,
        })
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// Bytes held by the two sketches, whatever the number of keys.
    pub(crate) fn memory_bytes(&self) -> usize {
        2 * HASHES * self.slots * std::mem::size_of::<isize>()
    }

    pub(crate) fn check(&self, key: Key<'_>) -> Decision {
        let s = self.rate.rate_with(&key, |c: RateComponents| Sample {
            prev: c.prev_samples.max(0) as f64,
            curr: c.curr_samples.max(0) as f64,
            frac: c.current_interval_fraction,
        });
        let limit = self.limit as f64;
        // Read-only pre-check: under a flood most requests are denied here, without writes.
        if s.prev * (1.0 - s.frac) + s.curr + 1.0 > limit {
            return self.denied(s);
        }
        // `observe` returns the count including every concurrent increment, so racing
        // threads cannot all squeeze through the last slot; the loser undoes its increment.
        let curr = self.rate.observe(&key, 1).max(0) as f64;
        let estimate = s.prev * (1.0 - s.frac) + curr;
        if estimate > limit {
            self.rate.observe(&key, -1);
            return self.denied(Sample {
                curr: curr - 1.0,
                ..s
            });
        }
        Decision {
            allowed: true,
            limit: self.limit,
            remaining: (limit - estimate).floor() as u64,
            reset: self.until_empty(Sample { curr, ..s }),
            retry_after: None,
        }
    }

    fn denied(&self, s: Sample) -> Decision {
        Decision {
            allowed: false,
            limit: self.limit,
            remaining: 0,
            reset: self.until_empty(s),
            retry_after: Some(self.until_fits(s)),
        }
    }

    /// Time until the estimate drops to `limit − 1` if nothing else is counted, i.e. when one
    /// more request would be admitted, assuming on-time window rotation.
    fn until_fits(&self, s: Sample) -> Duration {
        let budget = self.limit as f64 - 1.0;
        let windows = if s.curr <= budget && s.prev > 0.0 {
            // Within this window: prev·(1−f') + curr <= budget.
            (1.0 - (budget - s.curr) / s.prev) - s.frac
        } else {
            // After rotation the current count becomes `prev`: curr·(1−g) <= budget.
            (1.0 - s.frac) + (1.0 - budget / s.curr.max(1.0))
        };
        self.windows_to_duration(windows)
    }

    /// Time until the estimate reaches 0 if nothing else is counted.
    fn until_empty(&self, s: Sample) -> Duration {
        let windows = if s.curr > 0.0 {
            2.0 - s.frac
        } else if s.prev > 0.0 {
            1.0 - s.frac
        } else {
            0.0
        };
        self.windows_to_duration(windows)
    }

    fn windows_to_duration(&self, windows: f64) -> Duration {
        if windows <= 0.0 || windows.is_nan() {
            return Duration::ZERO;
        }
        // Rate samples time in whole ms (truncated), so it can see up to 1 ms less elapsed
        // than we computed; rounding up plus 1 ms keeps "retry after" from being too early.
        let ms = (windows * self.window.as_millis() as f64).ceil() as u64;
        Duration::from_millis(ms.saturating_add(1))
    }
}
