//! The breaker's internals: the packed state word, the shared state behind a handle, and the
//! failure-rate window.

use super::*;

// ---------------------------------------------------------------------------
// Internals

pub(super) const STATE_SHIFT: u32 = 62;
pub(super) const TICK_MASK: u64 = (1 << STATE_SHIFT) - 1;
pub(super) const EPOCH_BIAS: u64 = 1 << 61;
pub(super) const CLOSED_WORD: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Success,
    Failure,
}

/// Shared by every breaker so that trip times (used to rank ejections) are
/// comparable across breakers.
pub(super) fn process_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

pub(super) fn to_ticks(epoch: Instant, now: Instant) -> u64 {
    let ticks = match now.checked_duration_since(epoch) {
        Some(after) => EPOCH_BIAS.saturating_add(nanos(after)),
        None => EPOCH_BIAS.saturating_sub(nanos(epoch.saturating_duration_since(now))),
    };
    ticks.min(TICK_MASK)
}

pub(super) fn pack(state: State, ticks: u64) -> u64 {
    (u64::from(state.as_u8()) << STATE_SHIFT) | ticks.min(TICK_MASK)
}

pub(super) fn state_of(word: u64) -> State {
    match word >> STATE_SHIFT {
        0 => State::Closed,
        1 => State::Open,
        _ => State::HalfOpen,
    }
}

/// Field order is layout: `repr(C)` keeps the read-mostly fields that every
/// selection touches away from the window buckets that every result writes.
#[repr(C)]
pub(super) struct Shared {
    pub(super) epoch: Instant,
    /// State in the top 2 bits; the low 62 are the end of the open period
    /// (Open) or when a probe slot frees up, 0 meaning one is free now
    /// (HalfOpen).
    pub(super) word: AtomicU64,
    /// Ticks of the trip from Closed that started the current episode.
    pub(super) tripped_at: AtomicU64,
    // Copies of policy fields read without the mutex.
    pub(super) consecutive_limit: AtomicU32,
    pub(super) min_requests: AtomicU32,
    pub(super) bucket_ticks: AtomicU64,
    pub(super) rate_bits: AtomicU64,
    pub(super) consecutive: AtomicU32,
    pub(super) window: Window,
    pub(super) slow: Mutex<Slow>,
}

pub(super) struct Slow {
    pub(super) policy: Arc<BreakerPolicy>,
    /// Trips from HalfOpen since the last close; drives the backoff.
    pub(super) trips: u32,
    /// HalfOpen episode, so a permit from an earlier episode cannot vote.
    pub(super) generation: u64,
    pub(super) next_probe: u64,
    pub(super) probes: Vec<Probe>,
    pub(super) successes: u32,
}

pub(super) struct Probe {
    pub(super) id: u64,
    pub(super) started: u64,
}

impl Slow {
    pub(super) fn expire_probes(&mut self, ticks: u64) {
        let timeout = self.policy.probe_timeout_ticks();
        self.probes
            .retain(|probe| probe.started.saturating_add(timeout) > ticks);
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Slow> {
        // A panic while holding the lock leaves at worst a stale probe list;
        // routing must keep working rather than cascade the panic.
        self.slow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn ticks(&self, now: Instant) -> u64 {
        to_ticks(self.epoch, now)
    }

    /// `!would_admit` for a `now` already converted to ticks.
    pub(super) fn refuses_at(&self, ticks: u64) -> bool {
        let word = self.word.load(Ordering::Acquire);
        let deadline = word & TICK_MASK;
        state_of(word) != State::Closed && deadline != 0 && ticks < deadline
    }

    #[inline]
    pub(super) fn deadline_passed(&self, word: u64, now: Instant) -> bool {
        let deadline = word & TICK_MASK;
        deadline == 0 || self.ticks(now) >= deadline
    }

    pub(super) fn apply_limits(&self, policy: &BreakerPolicy) {
        self.consecutive_limit
            .store(policy.consecutive_failures, Ordering::Relaxed);
        self.min_requests
            .store(policy.min_requests, Ordering::Relaxed);
        let rate = policy.failure_rate.unwrap_or(f64::NAN);
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        self.bucket_ticks
            .store(policy.bucket_ticks(), Ordering::Relaxed);
    }

    pub(super) fn success_when_closed(&self, now: Instant) {
        if state_of(self.word.load(Ordering::Acquire)) != State::Closed {
            return;
        }
        // Skipping the store keeps the cache line shared while all is well.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        let width = self.bucket_ticks.load(Ordering::Relaxed);
        if width != 0 {
            self.window.record(self.ticks(now), width, Outcome::Success);
        }
    }

    pub(super) fn rate_exceeded(&self, ticks: u64, width: u64) -> bool {
        let (ok, failed) = self.window.totals(ticks, width);
        let total = ok + failed;
        let rate = f64::from_bits(self.rate_bits.load(Ordering::Relaxed));
        let min = u64::from(self.min_requests.load(Ordering::Relaxed));
        // A NaN rate compares false, so a rate that slipped past validation
        // never trips.
        total > 0 && total >= min && failed as f64 >= rate * total as f64
    }

    pub(super) fn trip_from_closed(&self, now: Instant) -> Option<Transition> {
        let ticks = self.ticks(now);
        let mut slow = self.lock();
        // Another thread may have tripped (or a success closed nothing) since
        // the lock-free check.
        if state_of(self.word.load(Ordering::Acquire)) != State::Closed {
            return None;
        }
        slow.trips = 0;
        let until = ticks.saturating_add(nanos(slow.policy.open_period(0)));
        self.tripped_at.store(ticks, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.window.clear();
        // Release publishes tripped_at to readers that see the Open word.
        self.word.store(pack(State::Open, until), Ordering::Release);
        Some(Transition::new(State::Closed, State::Open))
    }

    /// Recomputes the HalfOpen deadline after the probe list changed.
    pub(super) fn publish_half_open(&self, slow: &Slow) {
        let free_at = if slow.probes.len() < slow.policy.probe_limit() as usize {
            0
        } else {
            let timeout = slow.policy.probe_timeout_ticks();
            slow.probes
                .iter()
                .map(|probe| probe.started.saturating_add(timeout))
                .min()
                .unwrap_or(0)
        };
        self.word
            .store(pack(State::HalfOpen, free_at), Ordering::Release);
    }

    pub(super) fn release(&self, generation: u64, id: u64) {
        let mut slow = self.lock();
        if state_of(self.word.load(Ordering::Acquire)) != State::HalfOpen
            || slow.generation != generation
        {
            return;
        }
        if let Some(pos) = slow.probes.iter().position(|probe| probe.id == id) {
            slow.probes.swap_remove(pos);
            self.publish_half_open(&slow);
        }
    }
}

/// Rolling failure-rate window: one atomic word per bucket, so recording is a
/// single CAS and rotating a stale bucket happens in the same CAS.
///
/// Word layout: bucket id (24 bits, never 0) | successes (20) | failures (20);
/// 0 is an empty bucket. Ids wrap after 2^24 - 1 buckets, so a bucket left
/// untouched for exactly that long could be misread as current; at the
/// default 1 s buckets that takes 194 days of silence on one slot and costs
/// one bucket of stale counts.
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Window([AtomicU64; WINDOW_BUCKETS]);

pub(super) const ID_SPACE: u64 = (1 << 24) - 1;
pub(super) const COUNT_BITS: u32 = 20;
pub(super) const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

pub(super) fn bucket_word(id: u64, ok: u64, failed: u64) -> u64 {
    (id << (2 * COUNT_BITS)) | (ok << COUNT_BITS) | failed
}

pub(super) fn bucket_id(word: u64) -> u64 {
    word >> (2 * COUNT_BITS)
}

pub(super) fn bucket_counts(word: u64) -> (u64, u64) {
    ((word >> COUNT_BITS) & COUNT_MAX, word & COUNT_MAX)
}

/// How many buckets `id` lies behind `current`, modulo the id space.
pub(super) fn bucket_age(current: u64, id: u64) -> u64 {
    (current + ID_SPACE - id) % ID_SPACE
}

impl Window {
    pub(super) fn locate(&self, ticks: u64, width: u64) -> (&AtomicU64, u64) {
        let n = ticks / width;
        let slot = &self.0[(n % WINDOW_BUCKETS as u64) as usize];
        (slot, n % ID_SPACE + 1)
    }

    pub(super) fn record(&self, ticks: u64, width: u64, outcome: Outcome) {
        let (slot, id) = self.locate(ticks, width);
        let mut seen = slot.load(Ordering::Relaxed);
        loop {
            let (mut ok, mut failed) = if seen == 0 {
                (0, 0)
            } else if bucket_id(seen) == id {
                bucket_counts(seen)
            } else if bucket_age(bucket_id(seen), id) < ID_SPACE / 2 {
                // A caller with an `Instant` a whole window older than the
                // slot's bucket must not wipe newer counts.
                return;
            } else {
                (0, 0)
            };
            match outcome {
                Outcome::Success => ok += 1,
                Outcome::Failure => failed += 1,
            }
            if ok > COUNT_MAX || failed > COUNT_MAX {
                ok >>= 1;
                failed >>= 1;
            }
            match slot.compare_exchange_weak(
                seen,
                bucket_word(id, ok, failed),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => seen = actual,
            }
        }
    }

    pub(super) fn totals(&self, ticks: u64, width: u64) -> (u64, u64) {
        let (_, current) = self.locate(ticks, width);
        self.0
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&word| {
                word != 0 && bucket_age(current, bucket_id(word)) < WINDOW_BUCKETS as u64
            })
            .map(bucket_counts)
            .fold((0, 0), |(ok, failed), (o, f)| (ok + o, failed + f))
    }

    pub(super) fn clear(&self) {
        for slot in &self.0 {
            slot.store(0, Ordering::Relaxed);
        }
    }
}
