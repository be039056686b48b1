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

/// The breakers of one upstream group, index-aligned with its backends and
/// keyed by `K` (for instance the backend address) for reloads.
#[derive(Debug)]
pub struct GroupBreakers<K = String> {
    keys: Vec<K>,
    breakers: Vec<Breaker>,
    index: HashMap<K, usize>,
    max_ejected: usize,
}

impl<K: Hash + Eq + Clone> GroupBreakers<K> {
    /// Fresh closed breakers, one per key, in key order.
    pub fn new<I: IntoIterator<Item = K>>(keys: I, policy: Arc<BreakerPolicy>) -> Self {
        let entries = keys
            .into_iter()
            .map(|key| (key, Breaker::new(Arc::clone(&policy))))
            .collect();
        Self::assemble(entries, &policy)
    }

    /// A group of existing breakers, in order; each gets `policy`.
    pub fn from_breakers(entries: Vec<(K, Breaker)>, policy: Arc<BreakerPolicy>) -> Self {
        for (_, breaker) in &entries {
            breaker.set_policy(Arc::clone(&policy));
        }
        Self::assemble(entries, &policy)
    }

    /// The group after a reload: backends whose key is in `self` keep their
    /// breaker (and state) under `policy`, new ones start closed.
    pub fn rebuild<I: IntoIterator<Item = K>>(&self, keys: I, policy: Arc<BreakerPolicy>) -> Self {
        let entries = keys
            .into_iter()
            .map(|key| {
                let breaker = self
                    .get_by_key(&key)
                    .cloned()
                    .unwrap_or_else(|| Breaker::new(Arc::clone(&policy)));
                (key, breaker)
            })
            .collect();
        Self::from_breakers(entries, policy)
    }

    fn assemble(entries: Vec<(K, Breaker)>, policy: &BreakerPolicy) -> Self {
        let mut index = HashMap::with_capacity(entries.len());
        let mut keys = Vec::with_capacity(entries.len());
        let mut breakers = Vec::with_capacity(entries.len());
        for (i, (key, breaker)) in entries.into_iter().enumerate() {
            // Duplicate keys: the first one wins the lookup, all keep an index.
            index.entry(key.clone()).or_insert(i);
            keys.push(key);
            breakers.push(breaker);
        }
        let percent = usize::from(policy.max_ejection_percent.min(100));
        let max_ejected = breakers.len() * percent / 100;
        Self {
            keys,
            breakers,
            index,
            max_ejected,
        }
    }

    /// Index of the backend with this key.
    pub fn index_of<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.get(key).copied()
    }

    /// Breaker of the backend with this key.
    pub fn get_by_key<Q>(&self, key: &Q) -> Option<&Breaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index_of(key).and_then(|i| self.breakers.get(i))
    }
}

impl<K> GroupBreakers<K> {
    /// Number of backends.
    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    /// Whether the group has no backend.
    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
    }

    /// Breaker of backend `i`.
    pub fn get(&self, i: usize) -> Option<&Breaker> {
        self.breakers.get(i)
    }

    /// Keys and breakers in index order, e.g. to export per-backend gauges.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Breaker)> + '_ {
        self.keys.iter().zip(&self.breakers)
    }

    /// Most backends refused at once: `floor(len * max_ejection_percent / 100)`.
    pub fn max_ejected(&self) -> usize {
        self.max_ejected
    }

    /// Selection filter for `LoadBalancer::select_with`: whether backend `i`
    /// may be chosen.
    ///
    /// Lock-free. One atomic load when its breaker would admit; otherwise a
    /// scan of the group to rank it against the other refusing backends. An
    /// unknown index is allowed, so a breaker bug cannot blackhole traffic.
    /// Call [`admit`](Self::admit) on the chosen backend afterwards: in
    /// HalfOpen several requests may pass this filter for one probe slot.
    #[inline]
    pub fn allows(&self, i: usize, now: Instant) -> bool {
        match self.breakers.get(i) {
            Some(breaker) => breaker.would_admit(now) || self.spared(i, breaker, now),
            None => true,
        }
    }

    /// [`Breaker::admit`] for backend `i`, turning a rejection into
    /// [`Admission::Overridden`] when the ejection cap spares the backend.
    pub fn admit(&self, i: usize, now: Instant) -> (Admission, Option<Transition>) {
        let Some(breaker) = self.breakers.get(i) else {
            return (Admission::Allowed, None);
        };
        match breaker.admit(now) {
            (Admission::Rejected, transition) if self.spared(i, breaker, now) => {
                (Admission::Overridden, transition)
            }
            decision => decision,
        }
    }

    /// Backends refused at `now`, never more than [`max_ejected`](Self::max_ejected).
    pub fn ejected(&self, now: Instant) -> usize {
        let ticks = to_ticks(process_epoch(), now);
        let refusing = self
            .breakers
            .iter()
            .filter(|breaker| breaker.shared.refuses_at(ticks))
            .count();
        refusing.min(self.max_ejected)
    }

    /// Whether the cap keeps backend `i`, which its breaker refuses, in
    /// rotation: true when at least `max_ejected` other refusing backends
    /// tripped before it (ties go to the lower index), so the earliest trips
    /// stay ejected and every caller agrees on which ones.
    fn spared(&self, i: usize, breaker: &Breaker, now: Instant) -> bool {
        if self.max_ejected == 0 {
            return true;
        }
        if self.max_ejected >= self.breakers.len() {
            return false;
        }
        // All breakers share the process epoch, so one conversion serves the
        // whole scan.
        let ticks = breaker.shared.ticks(now);
        let mine = (breaker.shared.tripped_at.load(Ordering::Relaxed), i);
        let mut earlier = 0;
        for (j, other) in self.breakers.iter().enumerate() {
            // The state load (Acquire) comes before the trip time so that a
            // fresh trip is seen with its own trip time.
            if j != i
                && other.shared.refuses_at(ticks)
                && (other.shared.tripped_at.load(Ordering::Relaxed), j) < mine
            {
                earlier += 1;
                if earlier >= self.max_ejected {
                    return true;
                }
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------
// Internals

const STATE_SHIFT: u32 = 62;
const TICK_MASK: u64 = (1 << STATE_SHIFT) - 1;
const EPOCH_BIAS: u64 = 1 << 61;
const CLOSED_WORD: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
}

/// Shared by every breaker so that trip times (used to rank ejections) are
/// comparable across breakers.
fn process_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn to_ticks(epoch: Instant, now: Instant) -> u64 {
    let ticks = match now.checked_duration_since(epoch) {
        Some(after) => EPOCH_BIAS.saturating_add(nanos(after)),
        None => EPOCH_BIAS.saturating_sub(nanos(epoch.saturating_duration_since(now))),
    };
    ticks.min(TICK_MASK)
}

fn pack(state: State, ticks: u64) -> u64 {
    (u64::from(state.as_u8()) << STATE_SHIFT) | ticks.min(TICK_MASK)
}

fn state_of(word: u64) -> State {
    match word >> STATE_SHIFT {
        0 => State::Closed,
        1 => State::Open,
        _ => State::HalfOpen,
    }
}

/// Field order is layout: `repr(C)` keeps the read-mostly fields that every
/// selection touches away from the window buckets that every result writes.
#[repr(C)]
struct Shared {
    epoch: Instant,
    /// State in the top 2 bits; the low 62 are the end of the open period
    /// (Open) or when a probe slot frees up, 0 meaning one is free now
    /// (HalfOpen).
    word: AtomicU64,
    /// Ticks of the trip from Closed that started the current episode.
    tripped_at: AtomicU64,
    // Copies of policy fields read without the mutex.
    consecutive_limit: AtomicU32,
    min_requests: AtomicU32,
    bucket_ticks: AtomicU64,
    rate_bits: AtomicU64,
    consecutive: AtomicU32,
    window: Window,
    slow: Mutex<Slow>,
}

struct Slow {
    policy: Arc<BreakerPolicy>,
    /// Trips from HalfOpen since the last close; drives the backoff.
    trips: u32,
    /// HalfOpen episode, so a permit from an earlier episode cannot vote.
    generation: u64,
    next_probe: u64,
    probes: Vec<Probe>,
    successes: u32,
}

struct Probe {
    id: u64,
    started: u64,
}

impl Slow {
    fn expire_probes(&mut self, ticks: u64) {
        let timeout = self.policy.probe_timeout_ticks();
        self.probes
            .retain(|probe| probe.started.saturating_add(timeout) > ticks);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slow> {
        // A panic while holding the lock leaves at worst a stale probe list;
        // routing must keep working rather than cascade the panic.
        self.slow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ticks(&self, now: Instant) -> u64 {
        to_ticks(self.epoch, now)
    }

    /// `!would_admit` for a `now` already converted to ticks.
    fn refuses_at(&self, ticks: u64) -> bool {
        let word = self.word.load(Ordering::Acquire);
        let deadline = word & TICK_MASK;
        state_of(word) != State::Closed && deadline != 0 && ticks < deadline
    }

    #[inline]
    fn deadline_passed(&self, word: u64, now: Instant) -> bool {
        let deadline = word & TICK_MASK;
        deadline == 0 || self.ticks(now) >= deadline
    }

    fn apply_limits(&self, policy: &BreakerPolicy) {
        self.consecutive_limit
            .store(policy.consecutive_failures, Ordering::Relaxed);
        self.min_requests
            .store(policy.min_requests, Ordering::Relaxed);
        let rate = policy.failure_rate.unwrap_or(f64::NAN);
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        self.bucket_ticks
            .store(policy.bucket_ticks(), Ordering::Relaxed);
    }

    fn success_when_closed(&self, now: Instant) {
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

    fn rate_exceeded(&self, ticks: u64, width: u64) -> bool {
        let (ok, failed) = self.window.totals(ticks, width);
        let total = ok + failed;
        let rate = f64::from_bits(self.rate_bits.load(Ordering::Relaxed));
        let min = u64::from(self.min_requests.load(Ordering::Relaxed));
        // A NaN rate compares false, so a rate that slipped past validation
        // never trips.
        total > 0 && total >= min && failed as f64 >= rate * total as f64
    }

    fn trip_from_closed(&self, now: Instant) -> Option<Transition> {
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
    fn publish_half_open(&self, slow: &Slow) {
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

    fn release(&self, generation: u64, id: u64) {
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
struct Window([AtomicU64; WINDOW_BUCKETS]);

const ID_SPACE: u64 = (1 << 24) - 1;
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

fn bucket_word(id: u64, ok: u64, failed: u64) -> u64 {
    (id << (2 * COUNT_BITS)) | (ok << COUNT_BITS) | failed
}

fn bucket_id(word: u64) -> u64 {
    word >> (2 * COUNT_BITS)
}

fn bucket_counts(word: u64) -> (u64, u64) {
    ((word >> COUNT_BITS) & COUNT_MAX, word & COUNT_MAX)
}

/// How many buckets `id` lies behind `current`, modulo the id space.
fn bucket_age(current: u64, id: u64) -> u64 {
    (current + ID_SPACE - id) % ID_SPACE
}

impl Window {
    fn locate(&self, ticks: u64, width: u64) -> (&AtomicU64, u64) {
        let n = ticks / width;
        let slot = &self.0[(n % WINDOW_BUCKETS as u64) as usize];
        (slot, n % ID_SPACE + 1)
    }

    fn record(&self, ticks: u64, width: u64, outcome: Outcome) {
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

    fn totals(&self, ticks: u64, width: u64) -> (u64, u64) {
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

    fn clear(&self) {
        for slot in &self.0 {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);
    const NS: Duration = Duration::from_nanos(1);

    fn policy(edit: impl FnOnce(&mut BreakerPolicy)) -> Arc<BreakerPolicy> {
        let mut policy = BreakerPolicy::default();
        edit(&mut policy);
        Arc::new(policy)
    }

    fn fail_times(breaker: &Breaker, n: u32, now: Instant) -> Option<Transition> {
        let mut last = None;
        for _ in 0..n {
            last = breaker.record_failure(None, now);
        }
        last
    }

    fn probe(breaker: &Breaker, now: Instant) -> ProbePermit {
        match breaker.admit(now) {
            (Admission::Probe(permit), _) => permit,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    fn opened() -> Option<Transition> {
        Some(Transition::new(State::Closed, State::Open))
    }

    /// Trips a breaker with the default policy (5 consecutive failures).
    fn tripped(policy: Arc<BreakerPolicy>, now: Instant) -> Breaker {
        let breaker = Breaker::new(policy);
        let limit = breaker.policy().consecutive_failures;
        assert_eq!(fail_times(&breaker, limit, now), opened());
        breaker
    }

    /// opens_after_consecutive_failures: the Nth failure in a row opens the
    /// breaker, the (N-1)th does not.
    #[test]
    fn opens_after_consecutive_failures() {
        let t0 = Instant::now();
        let breaker = Breaker::new(policy(|p| p.consecutive_failures = 3));
        assert_eq!(fail_times(&breaker, 2, t0), None);
        assert_eq!(breaker.state(t0), State::Closed);
        assert!(breaker.would_admit(t0));
        assert_eq!(breaker.record_failure(None, t0), opened());
        assert_eq!(breaker.state(t0), State::Open);
        assert!(!breaker.would_admit(t0));
        assert!(breaker.admit(t0).0.is_rejected());
    }

    /// success_resets_consecutive_failures: a success between failures starts
    /// the count again.
    #[test]
    fn success_resets_consecutive_failures() {
        let t0 = Instant::now();
        let breaker = Breaker::new(policy(|p| p.consecutive_failures = 3));
        fail_times(&breaker, 2, t0);
        assert_eq!(breaker.record_success(None, t0), None);
        assert_eq!(fail_times(&breaker, 2, t0), None);
        assert_eq!(breaker.state(t0), State::Closed);
        assert_eq!(breaker.record_failure(None, t0), opened());
    }

    /// failure_rate_opens_after_min_requests: the rate trigger waits for
    /// min_requests in the window and trips when failures reach the ratio.
    #[test]
    fn failure_rate_opens_after_min_requests() {
        let t0 = Instant::now();
        let breaker = Breaker::new(policy(|p| {
            p.consecutive_failures = 0;
            p.failure_rate = Some(0.5);
            p.min_requests = 10;
        }));
        // 9 requests, 5 of them failures: over the ratio but under the volume.
        for _ in 0..4 {
            assert_eq!(breaker.record_success(None, t0), None);
            assert_eq!(breaker.record_failure(None, t0), None);
        }
        assert_eq!(breaker.record_failure(None, t0), None);
        assert_eq!(breaker.state(t0), State::Closed);
        // 10th request, 6/10 failed.
        assert_eq!(breaker.record_failure(None, t0), opened());
    }

    /// failure_rate_below_threshold_stays_closed: enough volume but a failure
    /// ratio under the threshold keeps the breaker closed; reaching it
    /// exactly opens it.
    #[test]
    fn failure_rate_below_threshold_stays_closed() {
        let t0 = Instant::now();
        let breaker = Breaker::new(policy(|p| {
            p.consecutive_failures = 0;
            p.failure_rate = Some(0.5);
            p.min_requests = 10;
        }));
        for _ in 0..6 {
            breaker.record_success(None, t0);
        }
        assert_eq!(fail_times(&breaker, 4, t0), None, "4/10 is under 0.5");
        assert_eq!(fail_times(&breaker, 1, t0), None, "5/11 is under 0.5");
        assert_eq!(fail_times(&breaker, 1, t0), opened(), "6/12 reaches 0.5");
    }

    /// failure_rate_forgets_failures_outside_window: failures that slid out
    /// of the window count neither toward the volume nor the ratio.
    #[test]
    fn failure_rate_forgets_failures_outside_window() {
        let t0 = Instant::now();
        let breaker = Breaker::new(policy(|p| {
            p.consecutive_failures = 0;
            p.failure_rate = Some(0.5);
            p.min_requests = 10;
            p.window = Duration::from_secs(10);
        }));
        assert_eq!(fail_times(&breaker, 9, t0), None);
        let later = t0 + Duration::from_secs(11);
        // With the old failures still counted this would be 10/10.
        assert_eq!(breaker.record_failure(None, later), None);
        for _ in 0..5 {
            breaker.record_success(None, later);
        }
        assert_eq!(fail_times(&breaker, 3, later), None, "4/9 is under volume");
        assert_eq!(fail_times(&breaker, 1, later), opened(), "5/10 trips");
    }

    /// open_lasts_open_for: the breaker refuses until exactly open_for has
    /// passed, then the first admit turns it half-open with a probe.
    #[test]
    fn open_lasts_open_for() {
        let t0 = Instant::now();
        let breaker = tripped(policy(|p| p.open_for = 10 * SEC), t0);
        let end = t0 + 10 * SEC;
        assert_eq!(breaker.state(end - NS), State::Open);
        assert!(!breaker.would_admit(end - NS));
        assert!(breaker.admit(end - NS).0.is_rejected());
        assert_eq!(breaker.state(end), State::HalfOpen);
        assert!(breaker.would_admit(end));
        let (admission, transition) = breaker.admit(end);
        assert!(matches!(admission, Admission::Probe(_)));
        assert_eq!(
            transition,
            Some(Transition::new(State::Open, State::HalfOpen))
        );
    }

    /// open_for_doubles_up_to_cap: each probe failure without an intervening
    /// close doubles the open period until max_open_for.
    #[test]
    fn open_for_doubles_up_to_cap() {
        let t0 = Instant::now();
        let breaker = tripped(
            policy(|p| {
                p.open_for = SEC;
                p.max_open_for = 5 * SEC;
            }),
            t0,
        );
        let mut now = t0;
        for expected in [1, 2, 4, 5, 5] {
            let period = expected * SEC;
            assert!(!breaker.would_admit(now + period - NS), "open {expected}s");
            now += period;
            let permit = probe(&breaker, now);
            assert_eq!(
                breaker.record_failure(Some(permit), now),
                Some(Transition::new(State::HalfOpen, State::Open))
            );
        }
    }

    /// closing_resets_backoff: after the breaker closes, the next trip opens
    /// for the base open_for again.
    #[test]
    fn closing_resets_backoff() {
        let t0 = Instant::now();
        let breaker = tripped(
            policy(|p| {
                p.open_for = SEC;
                p.half_open_probes = 1;
            }),
            t0,
        );
        let t1 = t0 + SEC;
        breaker.record_failure(Some(probe(&breaker, t1)), t1);
        let t2 = t1 + 2 * SEC;
        assert_eq!(
            breaker.record_success(Some(probe(&breaker, t2)), t2),
            Some(Transition::new(State::HalfOpen, State::Closed))
        );
        assert_eq!(fail_times(&breaker, 5, t2), opened());
        assert!(!breaker.would_admit(t2 + SEC - NS));
        assert!(breaker.would_admit(t2 + SEC));
    }

    /// half_open_limits_concurrent_probes: exactly half_open_probes probes are
    /// admitted at once; the next admit is rejected.
    #[test]
    fn half_open_limits_concurrent_probes() {
        let t0 = Instant::now();
        let breaker = tripped(policy(|p| p.half_open_probes = 3), t0);
        let t1 = t0 + BreakerPolicy::default().open_for;
        let permits: Vec<_> = (0..3).map(|_| probe(&breaker, t1)).collect();
        assert!(!breaker.would_admit(t1));
        assert!(breaker.admit(t1).0.is_rejected());
        assert_eq!(breaker.state(t1), State::HalfOpen);
        assert_eq!(permits.len(), 3);
    }

    /// half_open_closes_after_probe_successes: half_open_probes successes
    /// close the breaker, one fewer does not.
    #[test]
    fn half_open_closes_after_probe_successes() {
        let t0 = Instant::now();
        let breaker = tripped(policy(|p| p.half_open_probes = 3), t0);
        let t1 = t0 + BreakerPolicy::default().open_for;
        let mut permits: Vec<_> = (0..3).map(|_| probe(&breaker, t1)).collect();
        let last = permits.pop();
        for permit in permits {
            assert_eq!(breaker.record_success(Some(permit), t1), None);
        }
        assert_eq!(breaker.state(t1), State::HalfOpen);
        assert_eq!(
            breaker.record_success(last, t1),
            Some(Transition::new(State::HalfOpen, State::Closed))
        );
        assert_eq!(breaker.state(t1), State::Closed);
        assert!(matches!(breaker.admit(t1).0, Admission::Allowed));
    }

    /// half_open_reopens_on_one_probe_failure: one failed probe reopens the
    /// breaker, and the other outstanding probes can no longer close it.
    #[test]
    fn half_open_reopens_on_one_probe_failure() {
        let t0 = Instant::now();
        let breaker = tripped(policy(|p| p.half_open_probes = 2), t0);
        let t1 = t0 + BreakerPolicy::default().open_for;
        let first = probe(&breaker, t1);
        let second = probe(&breaker, t1);
        assert_eq!(
            breaker.record_failure(Some(first), t1),
            Some(Transition::new(State::HalfOpen, State::Open))
        );
        assert_eq!(breaker.record_success(Some(second), t1), None);
        assert_eq!(breaker.state(t1), State::Open);
    }

    /// dropped_permit_frees_probe_slot: dropping an unreported permit frees
    /// its slot and counts neither as success nor failure.
    #[test]
    fn dropped_permit_frees_probe_slot() {
        let t0 = Instant::now();
        let breaker = tripped(policy(|p| p.half_open_probes = 2), t0);
        let t1 = t0 + BreakerPolicy::default().open_for;
        let first = probe(&breaker, t1);
        let second = probe(&breaker, t1);
        assert!(!breaker.would_admit(t1));
        drop(first);
        assert!(breaker.would_admit(t1));
        let third = probe(&breaker, t1);
        assert_eq!(breaker.state(t1), State::HalfOpen, "drop is no failure");
        assert_eq!(breaker.record_success(Some(second), t1), None);
        assert_eq!(
            breaker.record_success(Some(third), t1),
            Some(Transition::new(State::HalfOpen, State::Closed)),
            "drop was no success either: two reported successes were needed"
        );
    }

    /// probe_timeout_frees_stuck_slot: a probe older than probe_timeout loses
    /// its slot and its late report is ignored.
    #[test]
    fn probe_timeout_frees_stuck_slot() {
        let t0 = Instant::now();
        let breaker = tripped(
            policy(|p| {
                p.half_open_probes = 1;
                p.probe_timeout = 5 * SEC;
            }),
            t0,
        );
        let t1 = t0 + BreakerPolicy::default().open_for;
        let stuck = probe(&breaker, t1);
        assert!(!breaker.would_admit(t1 + 5 * SEC - NS));
        assert!(breaker.admit(t1 + 5 * SEC - NS).0.is_rejected());
        let t2 = t1 + 5 * SEC;
        assert!(breaker.would_admit(t2));
        let fresh = probe(&breaker, t2);
        assert_eq!(breaker.record_failure(Some(stuck), t2), None);
        assert_eq!(breaker.state(t2), State::HalfOpen);
        assert_eq!(
            breaker.record_success(Some(fresh), t2),
            Some(Transition::new(State::HalfOpen, State::Closed))
        );
    }

    /// results_without_permit_ignored_when_not_closed: stragglers admitted
    /// before the trip neither extend nor end the open or half-open state.
    #[test]
    fn results_without_permit_ignored_when_not_closed() {
        let t0 = Instant::now();
        let breaker = tripped(policy(|p| p.half_open_probes = 1), t0);
        let t1 = t0 + BreakerPolicy::default().open_for;
        assert_eq!(breaker.record_failure(None, t1 - NS), None);
        assert_eq!(breaker.record_success(None, t1 - NS), None);
        assert!(breaker.would_admit(t1), "failure did not extend the period");
        let permit = probe(&breaker, t1);
        assert_eq!(breaker.record_success(None, t1), None);
        assert_eq!(breaker.record_failure(None, t1), None);
        assert_eq!(breaker.state(t1), State::HalfOpen);
        assert_eq!(breaker.probes_in_flight(), 1);
        drop(permit);
    }

    /// foreign_permit_counts_as_plain_result: a permit handed to the wrong
    /// breaker frees its own slot and does not vote on the other breaker.
    #[test]
    fn foreign_permit_counts_as_plain_result() {
        let t0 = Instant::now();
        let half_open = tripped(policy(|p| p.half_open_probes = 1), t0);
        let other = Breaker::new(policy(|_| {}));
        let t1 = t0 + BreakerPolicy::default().open_for;
        let permit = probe(&half_open, t1);
        assert_eq!(other.record_success(Some(permit), t1), None);
        assert_eq!(half_open.state(t1), State::HalfOpen);
        assert_eq!(half_open.probes_in_flight(), 0);
        assert_eq!(other.state(t1), State::Closed);
    }

    /// instants_before_epoch_order_correctly: an Instant taken before the
    /// breaker (and the process epoch) existed still times the open period.
    #[test]
    fn instants_before_epoch_order_correctly() {
        let Some(early) = Instant::now().checked_sub(Duration::from_secs(3600)) else {
            return; // Host booted less than an hour ago; nothing to test.
        };
        let breaker = tripped(policy(|p| p.open_for = 10 * SEC), early);
        assert!(!breaker.would_admit(early + 10 * SEC - NS));
        assert!(breaker.would_admit(early + 10 * SEC));
    }

    /// ejection_cap_spares_later_trips: with 3 backends at 50% only one is
    /// ejected; the second to trip stays selectable and is admitted as
    /// Overridden.
    #[test]
    fn ejection_cap_spares_later_trips() {
        let t0 = Instant::now();
        let group = GroupBreakers::new(["a", "b", "c"], policy(|_| {}));
        assert_eq!(group.max_ejected(), 1);
        let [a, b, c] = [0, 1, 2].map(|i| group.get(i).cloned());
        let (Some(a), Some(b), Some(c)) = (a, b, c) else {
            panic!("group of three");
        };
        // b trips first, then a: the earlier trip is the one ejected, not
        // the lower index.
        assert_eq!(fail_times(&b, 5, t0), opened());
        assert_eq!(fail_times(&a, 5, t0 + MS), opened());
        let now = t0 + 2 * MS;
        assert!(group.allows(0, now), "a tripped second: spared by the cap");
        assert!(!group.allows(1, now), "b tripped first: ejected");
        assert!(group.allows(2, now));
        assert_eq!(group.ejected(now), 1);
        assert!(matches!(group.admit(0, now).0, Admission::Overridden));
        assert!(group.admit(1, now).0.is_rejected());
        assert!(matches!(group.admit(2, now).0, Admission::Allowed));
        // Once b's period ends it may probe, and a (still open) takes the
        // single ejection.
        let later = t0 + BreakerPolicy::default().open_for;
        assert!(group.allows(1, later));
        assert!(!group.allows(0, later));
        assert_eq!(c.state(later), State::Closed);
        assert_eq!(group.index_of("b"), Some(1));
        assert!(group.get_by_key("b").is_some_and(|found| found.same_as(&b)));
    }

    /// ejection_cap_rounds_down: the cap is floor(len * percent / 100), so a
    /// single backend at 50% is never ejected, at 100% it is, and 0% never
    /// ejects anything.
    #[test]
    fn ejection_cap_rounds_down() {
        let t0 = Instant::now();
        for (percent, allowed) in [(50, true), (100, false), (0, true)] {
            let group = GroupBreakers::new(["only"], policy(|p| p.max_ejection_percent = percent));
            if let Some(breaker) = group.get(0) {
                fail_times(breaker, 5, t0);
            }
            assert_eq!(group.allows(0, t0), allowed, "{percent}%");
            assert_eq!(group.ejected(t0), usize::from(!allowed), "{percent}%");
        }
        assert!(GroupBreakers::<&str>::new([], policy(|_| {})).allows(0, t0));
    }

    /// set_policy_keeps_state: a reload keeps the open state and its deadline
    /// and applies the new thresholds from the next result.
    #[test]
    fn set_policy_keeps_state() {
        let t0 = Instant::now();
        let breaker = tripped(policy(|p| p.half_open_probes = 1), t0);
        breaker.set_policy(policy(|p| {
            p.consecutive_failures = 2;
            p.half_open_probes = 1;
            p.open_for = 60 * SEC;
        }));
        let t1 = t0 + BreakerPolicy::default().open_for;
        assert_eq!(breaker.state(t1 - NS), State::Open);
        assert_eq!(breaker.state(t1), State::HalfOpen, "old deadline kept");
        breaker.record_success(Some(probe(&breaker, t1)), t1);
        assert_eq!(breaker.record_failure(None, t1), None);
        assert_eq!(breaker.record_failure(None, t1), opened());
        assert!(!breaker.would_admit(t1 + 60 * SEC - NS), "new open_for");
    }

    /// rebuild_reuses_breakers_by_key: a group rebuilt after a reload keeps
    /// the breakers of backends that stay and starts new ones closed.
    #[test]
    fn rebuild_reuses_breakers_by_key() {
        let t0 = Instant::now();
        let old = GroupBreakers::new(["a".to_string(), "b".to_string()], policy(|_| {}));
        if let Some(b) = old.get_by_key("b") {
            fail_times(b, 5, t0);
        }
        let new = old.rebuild(
            ["b".to_string(), "c".to_string()],
            policy(|p| p.max_ejection_percent = 100),
        );
        assert_eq!(new.len(), 2);
        assert_eq!(new.max_ejected(), 2);
        assert_eq!(new.get(0).map(|b| b.state(t0)), Some(State::Open));
        assert_eq!(new.get(1).map(|c| c.state(t0)), Some(State::Closed));
        assert!(new
            .get(0)
            .zip(old.get(1))
            .is_some_and(|(x, y)| x.same_as(y)));
        assert_eq!(
            new.get(0).map(|b| b.policy().max_ejection_percent),
            Some(100)
        );
        let keys: Vec<_> = new.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["b", "c"]);
    }

    /// concurrent_recording_stays_consistent: threads admitting and reporting
    /// at once (with out-of-order clocks) neither panic nor leak probe slots,
    /// every transition is reported exactly once so they chain from Closed to
    /// the final state, and the breaker still recovers afterwards.
    #[test]
    fn concurrent_recording_stays_consistent() {
        let t0 = Instant::now();
        let breaker = Breaker::new(policy(|p| {
            p.consecutive_failures = 3;
            p.failure_rate = Some(0.5);
            p.min_requests = 5;
            p.open_for = MS;
            p.max_open_for = 4 * MS;
            p.half_open_probes = 2;
        }));
        let transitions: Vec<Transition> = thread::scope(|scope| {
            let workers: Vec<_> = (0..4u64)
                .map(|worker| {
                    let breaker = breaker.clone();
                    scope.spawn(move || {
                        let mut seen = Vec::new();
                        // xorshift: periodic outcome patterns lock into
                        // phase with the open periods and never close.
                        let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ worker;
                        for step in 0..5_000u64 {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            let now = t0 + Duration::from_micros(step * 100 + worker);
                            let (admission, opened) = breaker.admit(now);
                            seen.extend(opened);
                            let permit = admission.into_permit();
                            seen.extend(match rng % 10 {
                                0 => {
                                    drop(permit);
                                    None
                                }
                                1..=3 => breaker.record_failure(permit, now),
                                _ => breaker.record_success(permit, now),
                            });
                            assert!(breaker.probes_in_flight() <= 2);
                        }
                        seen
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(breaker.probes_in_flight(), 0, "every permit was released");
        let states = [State::Closed, State::Open, State::HalfOpen];
        let net = |state| {
            let into = transitions.iter().filter(|t| t.to == state).count();
            let out_of = transitions.iter().filter(|t| t.from == state).count();
            into as i64 - out_of as i64
        };
        let last = state_of(breaker.shared.word.load(Ordering::Acquire));
        for state in states {
            let expected = i64::from(state == last) - i64::from(state == State::Closed);
            assert_eq!(net(state), expected, "{state} entries vs exits");
        }
        for (from, to) in [(0, 1), (1, 2), (2, 1), (2, 0)] {
            let edge = Transition::new(states[from], states[to]);
            assert!(transitions.contains(&edge), "{edge:?} never happened");
        }
        let end = t0 + Duration::from_secs(3600);
        while breaker.state(end) == State::HalfOpen {
            breaker.record_success(Some(probe(&breaker, end)), end);
        }
        assert_eq!(breaker.state(end), State::Closed);
    }

    /// policy_validation_reports_bad_fields: validate names the first field
    /// the breaker would have to clamp.
    #[test]
    fn policy_validation_reports_bad_fields() {
        assert_eq!(BreakerPolicy::default().validate(), Ok(()));
        let field = |edit: fn(&mut BreakerPolicy)| {
            let mut policy = BreakerPolicy::default();
            edit(&mut policy);
            policy.validate().err().map(|e| e.field)
        };
        assert_eq!(field(|p| p.failure_rate = Some(1.5)), Some("failure_rate"));
        assert_eq!(
            field(|p| p.failure_rate = Some(f64::NAN)),
            Some("failure_rate")
        );
        assert_eq!(
            field(|p| {
                p.failure_rate = Some(0.5);
                p.window = Duration::ZERO;
            }),
            Some("window")
        );
        assert_eq!(field(|p| p.max_open_for = SEC), Some("max_open_for"));
        assert_eq!(field(|p| p.half_open_probes = 0), Some("half_open_probes"));
        assert_eq!(
            field(|p| p.probe_timeout = Duration::ZERO),
            Some("probe_timeout")
        );
        assert_eq!(
            field(|p| p.max_ejection_percent = 101),
            Some("max_ejection_percent")
        );
    }

    /// state_labels_and_gauge_values: states render as the metric labels and
    /// gauge numbers the dashboards expect.
    #[test]
    fn state_labels_and_gauge_values() {
        let states = [State::Closed, State::Open, State::HalfOpen];
        let labels: Vec<_> = states.iter().map(|s| s.to_string()).collect();
        assert_eq!(labels, ["closed", "open", "half_open"]);
        assert_eq!(states.map(State::as_u8), [0, 1, 2]);
    }
}
