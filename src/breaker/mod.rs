//! Per-backend circuit breakers and the group-level ejection cap.
//!
//! # State machine
//!
//! ```text
//!              consecutive_failures in a row, or
//!              failure_rate over `window` (>= min_requests)
//!   ┌────────┐ ───────────────────────────────────────────▶ ┌──────┐
//!   │ Closed │                                              │ Open │ ◀──┐
//!   └────────┘ ◀──────────┐                                 └──────┘    │
//!                         │ half_open_probes                    │        │ one probe
//!                         │ probe successes                     │        │ fails
//!                         │                   open_for elapsed, │        │ (open_for
//!                         │                   first admit()     ▼        │  doubles)
//!                         │                              ┌──────────┐    │
//!                         └───────────────────────────── │ HalfOpen │ ───┘
//!                                                        └──────────┘
//! ```
//!
//! * **Closed**: every request is admitted. Results feed a consecutive-failure
//!   counter and, when `failure_rate` is set, a rolling window.
//! * **Open**: every request is rejected until the open period ends. The
//!   period is `open_for` on a trip from Closed and doubles on each trip from
//!   HalfOpen (the backend failed again without ever closing), capped at
//!   `max_open_for`. Closing resets the backoff.
//! * **HalfOpen**: entered lazily by the first [`Breaker::admit`] after the
//!   open period ends ([`Breaker::state`] already reports it as HalfOpen).
//!   At most `half_open_probes` requests are in flight at once, each holding a
//!   [`ProbePermit`]. That many successful probes close the breaker; a single
//!   failed probe reopens it.
//!
//! A probe that never reports back cannot wedge the breaker: dropping a permit
//! without reporting frees its slot and counts as neither success nor failure,
//! and a probe older than `probe_timeout` loses its slot (its late report is
//! then ignored). Results reported without a permit while Open or HalfOpen are
//! ignored: they come from requests admitted before the trip (or forced
//! through by the ejection cap) and say nothing about the recovery being
//! probed.
//!
//! Classifying a response as success or failure is the caller's job; the
//! breaker only sees [`Breaker::record_success`] and [`Breaker::record_failure`].
//! Transitions are returned to the caller, which logs them and updates
//! metrics, so this module has no logging or metrics dependency.
//!
//! # Time
//!
//! Every time-dependent method takes `now: Instant` so that tests step time
//! instead of sleeping and the proxy reads the clock once per request.
//! Internally instants become nanosecond "ticks" relative to a process-wide
//! epoch, biased by 2^61 ns (~73 years) so that an `Instant` taken before the
//! epoch (a request that started before a reload built this breaker) still
//! orders correctly.
//!
//! # Concurrency and cost
//!
//! The state and its deadline share one `AtomicU64` (2 bits of state, 62 bits
//! of ticks), so a reader never sees a state paired with another episode's
//! deadline. [`Breaker::would_admit`] and [`GroupBreakers::allows`] on a
//! closed breaker are one atomic load and a compare. In the Closed state
//! `record_success` is a load (plus a store only when failures had been
//! counted); with `failure_rate` enabled every result also does one CAS on a
//! time bucket. Every transition, probe admission and probe report takes a
//! per-breaker `Mutex`, which is only reached off the closed fast path.
//!
//! The failure-rate window is [`WINDOW_BUCKETS`] buckets of `window / 10`
//! each, so it covers between 90% and 100% of `window`. A bucket is one
//! `AtomicU64` holding a 24-bit bucket id and two 20-bit counters; a counter
//! about to overflow halves both, which keeps the ratio, so `min_requests`
//! above 2^19 cannot be honoured.
//!
//! # Groups
//!
//! [`GroupBreakers`] holds the breakers of one upstream group, index-aligned
//! with its backends, and applies Envoy's `max_ejection_percent` rail: at most
//! `floor(len * max_ejection_percent / 100)` backends are refused at once. The
//! backends that tripped first stay ejected; the later ones are still allowed
//! so that traffic spreads over all backends instead of piling onto a few or
//! being refused outright. A reload builds a new group with
//! [`GroupBreakers::rebuild`], which keeps the breaker (and its state) of every
//! backend that stays.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Number of buckets of the rolling failure-rate window.
pub const WINDOW_BUCKETS: usize = 10;

/// Thresholds and timings of a breaker; shared by all breakers of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    /// Open after this many failures in a row (a success resets the run);
    /// 0 disables this trigger.
    pub consecutive_failures: u32,
    /// Open when failures / requests within `window` reaches this ratio
    /// (0..=1) once `min_requests` were seen; `None` disables this trigger
    /// and its per-request bookkeeping.
    pub failure_rate: Option<f64>,
    /// Length of the rolling failure-rate window.
    pub window: Duration,
    /// Requests (successes + failures) needed in `window` before the failure
    /// rate is trusted.
    pub min_requests: u32,
    /// Open period after a trip from Closed.
    pub open_for: Duration,
    /// Cap of the doubling open period.
    pub max_open_for: Duration,
    /// Concurrent probes allowed in HalfOpen, and probe successes needed to
    /// close.
    pub half_open_probes: u32,
    /// Age after which a probe that has not reported loses its slot. Set it
    /// above the upstream request timeout, or slow probes get overlapped by
    /// new ones.
    pub probe_timeout: Duration,
    /// Largest share of a group's backends (0..=100) that may be refused at
    /// once; 0 means breakers only observe and never eject.
    pub max_ejection_percent: u8,
}

/// 5 failures in a row; rate trigger off (10 s window, 20 requests once
/// enabled); open 10 s doubling up to 5 min; 3 probes; 50% ejection cap.
///
/// The probe timeout is 30 s rather than `open_for`: it has to outlast a slow
/// but healthy probe (the upstream request timeout), since an expired probe's
/// slot goes to another request. Permit drops already cover cancelled
/// requests; the timeout only catches permits leaked in a context that never
/// drops.
impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: None,
            window: Duration::from_secs(10),
            min_requests: 20,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            half_open_probes: 3,
            probe_timeout: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// A [`BreakerPolicy`] field holding a value the breaker cannot honour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidPolicy {
    /// Name of the offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid breaker policy: {} {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidPolicy {}

impl BreakerPolicy {
    /// Checks the policy at config load time.
    ///
    /// Breakers never reject a policy: they clamp what they cannot honour
    /// (at least one probe, a probe timeout of at least 1 ns, percentages
    /// above 100 read as 100, a NaN rate never trips), so the config loader
    /// is where mistakes should be reported.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        let invalid = |field, reason| Err(InvalidPolicy { field, reason });
        if let Some(rate) = self.failure_rate {
            if !(0.0..=1.0).contains(&rate) {
                return invalid("failure_rate", "must be within 0..=1");
            }
            if self.window.is_zero() {
                return invalid("window", "must be non-zero when failure_rate is set");
            }
        }
        if self.max_open_for < self.open_for {
            return invalid("max_open_for", "must be at least open_for");
        }
        if self.half_open_probes == 0 {
            return invalid("half_open_probes", "must be at least 1");
        }
        if self.probe_timeout.is_zero() {
            return invalid("probe_timeout", "must be non-zero");
        }
        if self.max_ejection_percent > 100 {
            return invalid("max_ejection_percent", "must be within 0..=100");
        }
        Ok(())
    }

    fn probe_limit(&self) -> u32 {
        self.half_open_probes.max(1)
    }

    fn probe_timeout_ticks(&self) -> u64 {
        nanos(self.probe_timeout).max(1)
    }

    /// Open period after `trips` trips from HalfOpen since the last close.
    fn open_period(&self, trips: u32) -> Duration {
        let cap = self.max_open_for.max(self.open_for);
        let factor = 1u32.checked_shl(trips).unwrap_or(u32::MAX);
        self.open_for
            .checked_mul(factor)
            .map_or(cap, |period| period.min(cap))
    }

    /// Width of one window bucket in ticks, 0 when the rate trigger is off.
    fn bucket_ticks(&self) -> u64 {
        match self.failure_rate {
            Some(_) if !self.window.is_zero() => {
                (nanos(self.window) / WINDOW_BUCKETS as u64).max(1)
            }
            _ => 0,
        }
    }
}

/// Breaker state; the discriminant is the value exported on the state gauge.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Requests flow; results are counted.
    Closed = 0,
    /// Requests are refused until the open period ends.
    Open = 1,
    /// A limited number of probe requests decide whether to close or reopen.
    HalfOpen = 2,
}

impl State {
    /// Label for logs and metrics: `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change, returned to the caller for logging and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before the change.
    pub from: State,
    /// State after the change.
    pub to: State,
}

impl Transition {
    const fn new(from: State, to: State) -> Self {
        Self { from, to }
    }
}

/// Outcome of [`Breaker::admit`] / [`GroupBreakers::admit`].
#[derive(Debug)]
#[must_use = "a probe permit must be handed back to record_success/record_failure"]
pub enum Admission {
    /// Closed: send the request and report its result without a permit.
    Allowed,
    /// HalfOpen: send the request as a probe and report its result with this
    /// permit.
    Probe(ProbePermit),
    /// The breaker refuses, but the group's ejection cap keeps the backend in
    /// rotation. Send the request; its result is ignored by the breaker.
    /// Only [`GroupBreakers::admit`] returns this.
    Overridden,
    /// Refused: pick another backend or fail the request.
    Rejected,
}

impl Admission {
    /// Whether the request must not be sent to this backend.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Admission::Rejected)
    }

    /// The probe permit, if this admission is a probe.
    pub fn into_permit(self) -> Option<ProbePermit> {
        match self {
            Admission::Probe(permit) => Some(permit),
            _ => None,
        }
    }
}

/// A HalfOpen probe slot.
///
/// Hand it back to [`Breaker::record_success`] or [`Breaker::record_failure`].
/// Dropping it unreported (request cancelled, task aborted) frees the slot
/// without counting a result. It owns a reference to the breaker, so it can
/// live in a `'static` per-request context.
#[must_use = "dropping a probe permit frees its slot without reporting a result"]
pub struct ProbePermit {
    shared: Arc<Shared>,
    generation: u64,
    id: u64,
    settled: bool,
}

impl fmt::Debug for ProbePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbePermit")
            .field("generation", &self.generation)
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for ProbePermit {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.release(self.generation, self.id);
        }
    }
}

/// The circuit breaker of one backend.
///
/// A cheap handle: clones share the same state, which is how a reload keeps
/// the state of backends that stay.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.shared.word.load(Ordering::Acquire);
        f.debug_struct("Breaker")
            .field("state", &state_of(word))
            .field("deadline_ticks", &(word & TICK_MASK))
            .field(
                "consecutive_failures",
                &self.shared.consecutive.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: Arc<BreakerPolicy>) -> Self {
        let shared = Shared {
            epoch: process_epoch(),
            word: AtomicU64::new(CLOSED_WORD),
            tripped_at: AtomicU64::new(0),
            consecutive_limit: AtomicU32::new(0),
            bucket_ticks: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0),
            min_requests: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window: Window::default(),
            slow: Mutex::new(Slow {
                policy: Arc::clone(&policy),
                trips: 0,
                generation: 0,
                next_probe: 0,
                probes: Vec::new(),
                successes: 0,
            }),
        };
        shared.apply_limits(&policy);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<BreakerPolicy> {
        Arc::clone(&self.shared.lock().policy)
    }

    /// Replaces the policy and keeps the state.
    ///
    /// New thresholds apply from the next result; a running open period keeps
    /// its end, the next one uses the new durations. The failure-rate window
    /// is cleared when its length changes because old buckets would be read
    /// with the wrong width.
    pub fn set_policy(&self, policy: Arc<BreakerPolicy>) {
        let sh = &*self.shared;
        let mut slow = sh.lock();
        let rewindow = slow.policy.bucket_ticks() != policy.bucket_ticks();
        sh.apply_limits(&policy);
        if rewindow {
            sh.window.clear();
        }
        slow.policy = policy;
        if state_of(sh.word.load(Ordering::Acquire)) == State::HalfOpen {
            sh.publish_half_open(&slow);
        }
    }

    /// Whether two handles share one breaker.
    pub fn same_as(&self, other: &Breaker) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The state at `now`; an Open breaker whose period has ended reads as
    /// HalfOpen even before an [`admit`](Self::admit) performs the change.
    pub fn state(&self, now: Instant) -> State {
        let word = self.shared.word.load(Ordering::Acquire);
        match state_of(word) {
            State::Open if self.shared.ticks(now) >= word & TICK_MASK => State::HalfOpen,
            state => state,
        }
    }

    /// Lock-free admission hint for backend selection.
    ///
    /// `true` when Closed, when the open period has ended, or when a HalfOpen
    /// probe slot is free (or held by an expired probe). Another thread may
    /// take the last slot in between, so [`admit`](Self::admit) can still
    /// reject.
    #[inline]
    pub fn would_admit(&self, now: Instant) -> bool {
        let word = self.shared.word.load(Ordering::Acquire);
        word >> STATE_SHIFT == State::Closed as u64 || self.shared.deadline_passed(word, now)
    }

    /// Admits a request to the chosen backend; in HalfOpen this takes a probe
    /// slot.
    ///
    /// The transition is `Open -> HalfOpen` when this call is the first since
    /// the open period ended.
    #[inline]
    pub fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        let word = self.shared.word.load(Ordering::Acquire);
        if state_of(word) == State::Closed {
            return (Admission::Allowed, None);
        }
        if !self.shared.deadline_passed(word, now) {
            return (Admission::Rejected, None);
        }
        self.admit_slow(now)
    }

    /// Reports a successful request; pass the permit if it was a probe.
    ///
    /// Without a permit only the Closed state counts it. A permit counts only
    /// while it still holds its slot (same HalfOpen episode, not older than
    /// `probe_timeout`); a permit of another breaker is released and the
    /// result treated as permit-less.
    pub fn record_success(&self, permit: Option<ProbePermit>, now: Instant) -> Option<Transition> {
        match permit {
            Some(permit) if Arc::ptr_eq(&permit.shared, &self.shared) => {
                self.settle(permit, Outcome::Success, now)
            }
            // A foreign permit is dropped here, which frees its own breaker's
            // slot without voting there.
            _ => {
                self.shared.success_when_closed(now);
                None
            }
        }
    }

    /// Reports a failed request; pass the permit if it was a probe. Same
    /// counting rules as [`record_success`](Self::record_success).
    pub fn record_failure(&self, permit: Option<ProbePermit>, now: Instant) -> Option<Transition> {
        match permit {
            Some(permit) if Arc::ptr_eq(&permit.shared, &self.shared) => {
                self.settle(permit, Outcome::Failure, now)
            }
            _ => self.failure_when_closed(now),
        }
    }

    // Out of line so that the closed fast path of `admit` stays small enough
    // to inline into the caller.
    #[inline(never)]
    fn admit_slow(&self, now: Instant) -> (Admission, Option<Transition>) {
        let sh = &*self.shared;
        let ticks = sh.ticks(now);
        let mut slow = sh.lock();
        let word = sh.word.load(Ordering::Acquire);
        let mut transition = None;
        match state_of(word) {
            State::Closed => return (Admission::Allowed, None),
            State::Open if ticks < word & TICK_MASK => return (Admission::Rejected, None),
            State::Open => {
                slow.generation = slow.generation.wrapping_add(1);
                slow.probes.clear();
                slow.successes = 0;
                transition = Some(Transition::new(State::Open, State::HalfOpen));
            }
            State::HalfOpen => slow.expire_probes(ticks),
        }
        let admission = if slow.probes.len() < slow.policy.probe_limit() as usize {
            let id = slow.next_probe;
            slow.next_probe = id.wrapping_add(1);
            slow.probes.push(Probe { id, started: ticks });
            Admission::Probe(ProbePermit {
                shared: Arc::clone(&self.shared),
                generation: slow.generation,
                id,
                settled: false,
            })
        } else {
            Admission::Rejected
        };
        sh.publish_half_open(&slow);
        (admission, transition)
    }

    fn failure_when_closed(&self, now: Instant) -> Option<Transition> {
        let sh = &*self.shared;
        if state_of(sh.word.load(Ordering::Acquire)) != State::Closed {
            return None;
        }
        let run = sh
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let limit = sh.consecutive_limit.load(Ordering::Relaxed);
        // `>=` rather than `==`: concurrent failures may skip past the limit.
        let mut trip = limit != 0 && run >= limit;
        let width = sh.bucket_ticks.load(Ordering::Relaxed);
        if width != 0 {
            let ticks = sh.ticks(now);
            sh.window.record(ticks, width, Outcome::Failure);
            trip = trip || sh.rate_exceeded(ticks, width);
        }
        if trip {
            sh.trip_from_closed(now)
        } else {
            None
        }
    }

    fn settle(
        &self,
        mut permit: ProbePermit,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        // Drop would otherwise lock the mutex that this function holds.
        permit.settled = true;
        let sh = &*self.shared;
        let ticks = sh.ticks(now);
        let mut slow = sh.lock();
        if state_of(sh.word.load(Ordering::Acquire)) != State::HalfOpen
            || slow.generation != permit.generation
        {
            return None;
        }
        slow.expire_probes(ticks);
        let Some(pos) = slow.probes.iter().position(|probe| probe.id == permit.id) else {
            // Expired: the slot was already given up, so the report is moot.
            sh.publish_half_open(&slow);
            return None;
        };
        slow.probes.swap_remove(pos);
        match outcome {
            Outcome::Success => {
                slow.successes = slow.successes.saturating_add(1);
                if slow.successes < slow.policy.probe_limit() {
                    sh.publish_half_open(&slow);
                    return None;
                }
                slow.trips = 0;
                slow.probes.clear();
                sh.consecutive.store(0, Ordering::Relaxed);
                sh.window.clear();
                sh.tripped_at.store(0, Ordering::Relaxed);
                sh.word.store(CLOSED_WORD, Ordering::Release);
                Some(Transition::new(State::HalfOpen, State::Closed))
            }
            Outcome::Failure => {
                slow.trips = slow.trips.saturating_add(1);
                slow.probes.clear();
                let until = ticks.saturating_add(nanos(slow.policy.open_period(slow.trips)));
                sh.word.store(pack(State::Open, until), Ordering::Release);
                Some(Transition::new(State::HalfOpen, State::Open))
            }
        }
    }

    #[cfg(test)]
    fn probes_in_flight(&self) -> usize {
        self.shared.lock().probes.len()
    }
}

mod group;
mod state;

pub use group::GroupBreakers;
use state::*;

#[cfg(test)]
mod tests;
