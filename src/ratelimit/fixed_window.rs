//! Fixed-window counter, exact per key, packed into one `AtomicU64` cell:
//! high 32 bits = window index (wrapping), low 32 bits = admissions in that window.
//!
//! A key's windows are `[k·W - phase, (k+1)·W - phase)` with `phase = hash mod W`: aligned
//! per key, but staggered across keys so that throttled clients are not all released at the
//! same instant. Denials do not write, so a hammering client costs one load.

use super::table::CellAlgo;
use super::{to_duration, Decision, InvalidPolicy};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Below this, window indices would wrap (2^32 windows) in under ~50 days.
pub(crate) const MIN_WINDOW: Duration = Duration::from_millis(1);
/// Keeps `now + phase` and window ends far from i64 overflow.
const MAX_WINDOW_NS: u128 = 1 << 60;

#[derive(Clone, Copy, Debug)]
pub(crate) struct FixedWindow {
    limit: u32,
    window: i64,
}

fn pack(index: u32, count: u32) -> u64 {
    (u64::from(index) << 32) | u64::from(count)
}

fn unpack(cell: u64) -> (u32, u32) {
    ((cell >> 32) as u32, cell as u32)
}

/// Where the cell's window lies relative to the window containing `now`.
enum Slot {
    /// Cell counts the current window.
    Current,
    /// Cell counts the next window: another thread's `now` already crossed the boundary.
    /// Honouring it, instead of resetting, keeps racing threads from recounting a window.
    Next,
    /// Anything else is an expired window (or a fresh cell) and counts as empty.
    Stale,
}

impl FixedWindow {
    pub(crate) fn new(limit: u64, window: Duration) -> Result<Self, InvalidPolicy> {
        let limit = u32::try_from(limit)
            .ok()
            .filter(|&l| l > 0)
            .ok_or(InvalidPolicy::Limit)?;
        if window < MIN_WINDOW || window.as_nanos() > MAX_WINDOW_NS {
            return Err(InvalidPolicy::Window);
        }
        Ok(FixedWindow {
            limit,
            window: window.as_nanos() as i64,
        })
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Current window's (wrapping index, end) for a key.
    fn window_of(&self, now: i64, hash: u64) -> (u32, i64) {
        let phase = (hash % self.window as u64) as i64;
        let index = now.saturating_add(phase).div_euclid(self.window);
        let end = (index + 1)
            .saturating_mul(self.window)
            .saturating_sub(phase);
        (index as u32, end)
    }

    fn classify(cell: u64, index: u32) -> (Slot, u32) {
        let (cell_index, count) = unpack(cell);
        match cell_index.wrapping_sub(index) {
            _ if count == 0 => (Slot::Stale, 0),
            0 => (Slot::Current, count),
            1 => (Slot::Next, count),
            _ => (Slot::Stale, 0),
        }
    }
}

impl CellAlgo for FixedWindow {
    const FRESH: u64 = 0;

    fn decide(&self, cell: &AtomicU64, now: i64, hash: u64) -> Decision {
        let (index, end) = self.window_of(now, hash);
        let limit = u64::from(self.limit);
        // Relaxed suffices: the cell is the only shared datum and CAS gives one total order.
        let mut cur = cell.load(Relaxed);
        loop {
            let (slot, count) = Self::classify(cur, index);
            let (index, end) = match slot {
                Slot::Next => (index.wrapping_add(1), end.saturating_add(self.window)),
                Slot::Current | Slot::Stale => (index, end),
            };
            let reset = to_duration(end - now);
            if count >= self.limit {
                return Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset,
                    retry_after: Some(reset),
                };
            }
            match cell.compare_exchange_weak(cur, pack(index, count + 1), Relaxed, Relaxed) {
                Ok(_) => {
                    return Decision {
                        allowed: true,
                        limit,
                        remaining: limit - u64::from(count) - 1,
                        reset,
                        retry_after: None,
                    }
                }
                Err(actual) => cur = actual,
            }
        }
    }

    fn idle_from(&self, cell: u64, now: i64, hash: u64) -> i64 {
        let (index, end) = self.window_of(now, hash);
        match Self::classify(cell, index).0 {
            Slot::Current => end,
            Slot::Next => end.saturating_add(self.window),
            Slot::Stale => i64::MIN,
        }
    }
}
