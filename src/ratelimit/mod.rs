//! Rate-limiting core: one [`Limiter`] per configured policy, plus a standalone
//! [`TokenBucket`] for per-API-client limits. Depends on `std`, `pingora-limits` and `ahash`
//! (already in the graph through `pingora-limits`): keyed tables hash each key once per
//! decision with a per-table random seed, and ahash does that in ~5 ns where std's SipHash-1-3
//! takes ~16 ns, a third of the whole decision; both are seeded against hash flooding.
//!
//! # `token_bucket`: GCRA, exact per key
//! Each key holds one theoretical arrival time (TAT) in an `AtomicU64`; a decision is a
//! lock-free CAS loop and a denial does not write. With emission interval `T = 1/rate` and
//! `tau = burst·T`, a client that starts with a full bucket and hammers continuously for
//! `D` seconds is admitted exactly `burst + ⌊rate·D⌋` times, i.e. within
//! `[rate·D + burst − 1, rate·D + burst]`. Concurrent callers cannot push it past that: every
//! admission is one successful CAS. Approximation: `T` is rounded to whole nanoseconds, an
//! error of at most 0.5 ns per emission interval (relative: 5e-10 at 1/s, 5e-4 at 1e6/s).
//! Advertised as `q = burst` per `w = ceil(burst/rate)` seconds: a quota no arrival pattern
//! can get denied within, so it understates the long-run rate when `burst/rate` is not a
//! whole number of seconds.
//!
//! # `fixed_window`: exact per key
//! Each key holds `(window index, count)` packed in an `AtomicU64`; at most `limit`
//! admissions fall inside any one of the key's windows, also under concurrency. Windows are
//! aligned per key with a phase taken from the key's hash, so different keys reset at
//! different instants instead of releasing every throttled client at once. By design a
//! client can get up to `2·limit` through in a span shorter than one window, straddling a
//! boundary (end of one window, start of the next). The index wraps after 2^32 windows; a
//! stale entry (never swept) whose age is exactly a multiple of that is mistaken for the
//! current window, which at the 1 ms minimum window means ~50 days of exact idleness.
//!
//! # `sliding_window`: pingora's `Rate`, approximate, constant memory
//! All keys of the policy share two count–min sketches (previous and current window) of
//! 4 rows × `slots` counters, `slots = next_power_of_two(max_keys)` clamped to 1024..=65536,
//! i.e. 64 KiB..4 MiB per policy whatever the number of keys. The estimate is
//! `prev·(1 − f) + curr` at fraction `f` into the current window (Cloudflare's interpolation)
//! and a request is admitted iff the estimate including it is `<= limit`; only admitted
//! requests are counted, so a client hammering at twice the limit still gets ~`limit` through.
//! A single key in an otherwise idle window is exact. Honest limits:
//! - Keys hash into shared counters, so collisions only ever over-count (false denials, never
//!   extra admissions). The inflation of a key is roughly the traffic of the other keys that
//!   share its counter in all 4 rows; with `K` active keys that happens to a fraction of keys
//!   near `(1 − e^(−K/slots))^4`: size `max_keys` to the expected distinct keys per window.
//! - Interpolation assumes the previous window's requests were spread evenly. When they all
//!   came at its very end they are under-weighted, and a span of one window can then see up
//!   to ~`2·limit` (like a fixed window's boundary); for evenly spread traffic it is ~`limit`.
//! - `Rate` anchors a window at the first call after the previous one expired (not on a grid)
//!   and clears a window not observed for two; after an idle gap the previous window is
//!   weighted as if it had just ended (conservative).
//! - Not clock-injectable: `Rate` reads `Instant::now()` itself and counts whole
//!   milliseconds, so `now` is ignored and windows must be whole ms, at least 1 s.
//! - pingora-limits 0.9.1 race: a thread delayed between reading the clock and reading the
//!   last rotation time, while another thread rotates, underflows `now − last_reset`; debug
//!   builds panic, release builds rotate again and clear both windows (a one-window
//!   under-count for every key). It needs a preemption at that exact point during a rotation.
//!
//! # Memory bounds and eviction (keyed algorithms)
//! A keyed table has 64 `RwLock<HashMap>` shards holding ~40 B of slot per key (hash, key
//! inline, one `AtomicU64`), i.e. ~48–96 B per key with hash-table load, plus the bytes of
//! `Str` keys. It never holds more than `max_keys` entries. An entry is idle when dropping it
//! cannot change any decision: a full bucket (`TAT <= now`) or an expired window. Run
//! [`Limiter::sweep`] periodically to drop idle entries. An insert into a full table first
//! evicts idle entries inline (its own shard, then any other shard it can lock without
//! waiting; per-shard hints skip shards with nothing idle, so this stays cheap under a flood
//! of new keys). If nothing is idle, the request is decided against one shared overflow
//! state: all untracked keys together get one key's quota (fails closed in aggregate, while
//! tracked keys keep their exact state, so a flood cannot evict a victim to reset its quota).
//! Size `max_keys` above the expected concurrent clients and alert on
//! [`Limiter::overflow_decisions`]; for IPv6, key by prefix (e.g. /64) rather than address.
//!
//! # Time
//! Keyed algorithms and [`TokenBucket`] take `now: Instant` so tests can step time; state is
//! i64 ns relative to an epoch, and callers may pass instants before it. Pass a monotonic
//! `Instant::now()` in production; slightly out-of-order `now`s from different threads are
//! tolerated (GCRA takes `max(TAT, now)`, fixed windows honour a window already started).

mod fixed_window;
mod gcra;
mod headers;
mod key;
mod sliding_window;
mod table;
#[cfg(test)]
mod tests;

pub use gcra::TokenBucket;
pub use headers::{is_valid_policy_name, write_policy_item, write_ratelimit_item};
pub use key::Key;

use fixed_window::FixedWindow;
use gcra::Gcra;
use sliding_window::SlidingWindow;
use std::fmt;
use std::time::{Duration, Instant};
use table::Table;

/// A policy's algorithm and parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Algorithm {
    /// GCRA: `rate_per_sec` in `(0, 1e9]`, `burst >= 1`.
    TokenBucket { rate_per_sec: f64, burst: u32 },
    /// `limit` in `1..=2^52`, `window` whole ms in `1 s..=366 days`.
    SlidingWindow { limit: u64, window: Duration },
    /// `limit` in `1..=u32::MAX`, `window` in `1 ms..=2^60 ns`.
    FixedWindow { limit: u64, window: Duration },
}

/// One configured policy; the proxy builds it from config and owns the `dry_run` semantics.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Identifier in the `RateLimit*` headers; see [`is_valid_policy_name`].
    pub name: String,
    pub algorithm: Algorithm,
    /// Cap on tracked keys (keyed algorithms) or sketch sizing hint (`SlidingWindow`).
    pub max_keys: usize,
    /// Evaluate and report but do not enforce; the limiter itself ignores it.
    pub dry_run: bool,
}

/// Outcome of one check, with what the rate-limit headers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Decision {
    pub allowed: bool,
    /// The advertised quota `q`.
    pub limit: u64,
    /// Requests still admissible now (after this one, when allowed).
    pub remaining: u64,
    /// Until the quota is fully restored if nothing else arrives (bucket full, window over).
    pub reset: Duration,
    /// When denied: until a request would be admitted (always > 0). `None` when allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// `Retry-After` in whole seconds, rounded up and at least 1; `None` when allowed.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| headers::ceil_secs(d).max(1))
    }

    /// `reset` in whole seconds, rounded up (the `t` parameter).
    pub fn reset_secs(&self) -> u64 {
        headers::ceil_secs(self.reset)
    }
}

/// Why a [`Policy`] was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidPolicy {
    Name,
    Rate,
    Burst,
    Limit,
    Window,
    MaxKeys,
}

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidPolicy::Name => "policy name must be non-empty printable ASCII",
            InvalidPolicy::Rate => {
                "rate_per_sec must be finite, > 0, <= 1e9, and burst/rate under ~73 years"
            }
            InvalidPolicy::Burst => "burst must be at least 1",
            InvalidPolicy::Limit => {
                "limit must be at least 1 (fixed_window: <= 2^32-1; sliding_window: <= 2^52)"
            }
            InvalidPolicy::Window => {
                "window out of range (fixed_window: >= 1ms; sliding_window: >= 1s, <= 366 days)"
            }
            InvalidPolicy::MaxKeys => "max_keys must be at least 1",
        })
    }
}

impl std::error::Error for InvalidPolicy {}

enum Inner {
    Token(Table<Gcra>),
    Fixed(Table<FixedWindow>),
    Sliding(SlidingWindow),
}

/// State of one policy for all its keys. `Send + Sync`; share it behind an `Arc`.
pub struct Limiter {
    policy: Policy,
    quoted_name: Box<str>,
    policy_header: Box<str>,
    epoch: Instant,
    inner: Inner,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("policy", &self.policy)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// Validates `policy` and allocates its (empty) state.
    ///
    /// # Errors
    /// [`InvalidPolicy`] naming the first parameter out of the range documented on
    /// [`Algorithm`] (or an invalid name, or `max_keys == 0`).
    pub fn try_new(policy: Policy) -> Result<Self, InvalidPolicy> {
        if !is_valid_policy_name(&policy.name) {
            return Err(InvalidPolicy::Name);
        }
        if policy.max_keys == 0 {
            return Err(InvalidPolicy::MaxKeys);
        }
        let (inner, quota, window_secs) = match policy.algorithm {
            Algorithm::TokenBucket {
                rate_per_sec,
                burst,
            } => {
                let g = Gcra::new(rate_per_sec, burst)?;
                let q = (u64::from(g.burst()), g.refill_secs());
                (Inner::Token(Table::new(g, policy.max_keys)), q.0, q.1)
            }
            Algorithm::FixedWindow { limit, window } => {
                let fw = FixedWindow::new(limit, window)?;
                let q = u64::from(fw.limit());
                (
                    Inner::Fixed(Table::new(fw, policy.max_keys)),
                    q,
                    window_secs(window),
                )
            }
            Algorithm::SlidingWindow { limit, window } => {
                let sw = SlidingWindow::new(limit, window, policy.max_keys)?;
                let w = window_secs(sw.window());
                (Inner::Sliding(sw), limit, w)
            }
        };
        let mut quoted = String::with_capacity(policy.name.len() + 2);
        headers::push_sf_string(&mut quoted, &policy.name);
        let mut policy_header = quoted.clone();
        headers::push_policy_params(&mut policy_header, quota, window_secs);
        Ok(Limiter {
            policy,
            quoted_name: quoted.into(),
            policy_header: policy_header.into(),
            epoch: Instant::now(),
            inner,
        })
    }

    /// Decides one request for `key`. `now` is ignored by `SlidingWindow` (see module docs).
    pub fn check(&self, key: Key<'_>, now: Instant) -> Decision {
        match &self.inner {
            Inner::Token(t) => t.check(key, nanos_since(self.epoch, now)),
            Inner::Fixed(t) => t.check(key, nanos_since(self.epoch, now)),
            Inner::Sliding(s) => s.check(key),
        }
    }

    /// Drops idle keys; returns how many. Run it periodically from a background task
    /// (e.g. every few seconds). A no-op for `SlidingWindow`, which rotates by itself.
    pub fn sweep(&self, now: Instant) -> usize {
        let now = nanos_since(self.epoch, now);
        match &self.inner {
            Inner::Token(t) => t.sweep(now),
            Inner::Fixed(t) => t.sweep(now),
            Inner::Sliding(_) => 0,
        }
    }

    /// Tracked keys, for the `tollgate_ratelimit_keys{policy}` gauge; always 0 for
    /// `SlidingWindow`, whose memory does not depend on keys.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Token(t) => t.len(),
            Inner::Fixed(t) => t.len(),
            Inner::Sliding(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decisions made against the shared overflow state because the table was full.
    pub fn overflow_decisions(&self) -> u64 {
        match &self.inner {
            Inner::Token(t) => t.overflow_decisions(),
            Inner::Fixed(t) => t.overflow_decisions(),
            Inner::Sliding(_) => 0,
        }
    }

    /// Fixed memory of a `SlidingWindow` policy's sketches, in bytes; `None` for keyed ones.
    pub fn sketch_bytes(&self) -> Option<usize> {
        match &self.inner {
            Inner::Sliding(s) => Some(s.memory_bytes()),
            Inner::Token(_) | Inner::Fixed(_) => None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn name(&self) -> &str {
        &self.policy.name
    }

    pub fn dry_run(&self) -> bool {
        self.policy.dry_run
    }

    /// Precomputed `RateLimit-Policy` member: `"<name>";q=<quota>;w=<window secs>`.
    pub fn policy_header(&self) -> &str {
        &self.policy_header
    }

    /// Appends this policy's `RateLimit` member (`"<name>";r=..;t=..`) to `out`, after `", "`
    /// if `out` already holds members of other policies.
    pub fn write_ratelimit(&self, decision: &Decision, out: &mut String) {
        headers::push_quoted(out, &self.quoted_name);
        headers::push_ratelimit_params(out, decision);
    }

    /// Like [`Limiter::write_ratelimit`], into a new `String` sized so it never regrows.
    pub fn ratelimit_header(&self, decision: &Decision) -> String {
        let mut out = String::with_capacity(self.quoted_name.len() + 48);
        self.write_ratelimit(decision, &mut out);
        out
    }
}

/// The `w` parameter: whole seconds, rounded up, at least 1.
fn window_secs(window: Duration) -> u64 {
    headers::ceil_secs(window).max(1)
}

/// Signed ns from `epoch` to `now`, saturating; earlier instants are negative.
pub(crate) fn nanos_since(epoch: Instant, now: Instant) -> i64 {
    match now.checked_duration_since(epoch) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => i64::try_from(epoch.duration_since(now).as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Non-negative ns to a `Duration` (negative spans mean "already").
pub(crate) fn to_duration(ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}
