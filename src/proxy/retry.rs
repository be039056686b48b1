//! When a failed attempt may go to another backend, and the budget that keeps retries from
//! multiplying an outage.
//!
//! The rules (Envoy's and nginx's, made explicit):
//! - a connect failure (refused, TLS handshake failed) is always safe: nothing was sent;
//! - a pooled connection that Pingora reports died before the request went out is safe too;
//! - anything after the request was sent is retried only for idempotent methods whose body was
//!   not streamed past the retry buffer, and only before a response byte reached the client;
//! - every retry needs an attempt left, an untried healthy backend and time before the
//!   deadline; retries that make a backend work again (timeouts, errors, statuses) also need
//!   room in the route's budget: `budget_percent` of the route's requests in flight, with
//!   `min_per_sec` always allowed so a quiet route can still retry. Connect failures and dead
//!   pooled connections are outside the budget: the failed backend did no work, so they cannot
//!   multiply an outage's load, and refusing them would fail requests a healthy peer can serve.

use crate::config::RetryPolicy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a request was sent again (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Connect,
    /// A reused pooled connection died before the request was written.
    StalePool,
    Timeout,
    Error,
    Status,
}

impl Reason {
    /// Whether the failed attempt made a backend do work, so its retry spends budget.
    pub fn uses_budget(self) -> bool {
        !matches!(self, Reason::Connect | Reason::StalePool)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect_error",
            Reason::StalePool => "stale_connection",
            Reason::Timeout => "timeout",
            Reason::Error => "upstream_error",
            Reason::Status => "status",
        }
    }
}

/// In-flight accounting of one route.
#[derive(Debug, Default)]
pub struct RetryBudget {
    requests: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    /// Unix second (high 40 bits) and retries made in it (low 24 bits).
    floor_window: AtomicU64,
}

/// Counts one in-flight request or retry until dropped.
#[derive(Debug)]
pub struct Active(Arc<AtomicU64>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RetryBudget {
    /// Counts a request on the route until the guard drops.
    pub fn request(&self) -> Active {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Active(self.requests.clone())
    }

    /// Takes room for one retry, or `None` when the budget is spent.
    pub fn try_retry(&self, policy: &RetryPolicy, unix_secs: u64) -> Option<Active> {
        let requests = self.requests.load(Ordering::Relaxed) as f64;
        let retries = self.retries.load(Ordering::Relaxed) as f64;
        let within_share = retries + 1.0 <= requests * policy.budget_percent / 100.0;
        if within_share || self.take_floor(policy.min_per_sec, unix_secs) {
            self.retries.fetch_add(1, Ordering::Relaxed);
            return Some(Active(self.retries.clone()));
        }
        None
    }

    /// One of the `min_per_sec` retries always allowed in the current second.
    fn take_floor(&self, min_per_sec: u32, unix_secs: u64) -> bool {
        let mut current = self.floor_window.load(Ordering::Relaxed);
        loop {
            let (sec, used) = (current >> 24, current & 0xFF_FFFF);
            let used = if sec == unix_secs { used } else { 0 };
            if used >= u64::from(min_per_sec) {
                return false;
            }
            let next = (unix_secs << 24) | (used + 1);
            match self.floor_window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Whether another attempt fits the policy's count and deadline.
pub fn attempt_left(
    policy: &RetryPolicy,
    attempts_made: usize,
    untried_backends: usize,
    started: Instant,
    now: Instant,
) -> bool {
    let count_ok = attempts_made <= policy.attempts as usize && untried_backends > 0;
    let time_ok = policy
        .deadline
        .is_none_or(|d| now.saturating_duration_since(started) < d);
    count_ok && time_ok
}

/// The read timeout of the next attempt: per-try timeout, group timeout and what is left of
/// the deadline, whichever is shortest. `None` when the deadline has passed.
pub fn attempt_timeout(
    policy: &RetryPolicy,
    group_read: Duration,
    started: Instant,
    now: Instant,
) -> Option<Duration> {
    let mut t = policy
        .per_try_timeout
        .map_or(group_read, |p| p.min(group_read));
    if let Some(deadline) = policy.deadline {
        let left = deadline.checked_sub(now.saturating_duration_since(started))?;
        if left.is_zero() {
            return None;
        }
        t = t.min(left);
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            budget_percent: 50.0,
            min_per_sec: 1,
            ..RetryPolicy::default()
        }
    }

    /// Retries stay within the share of in-flight requests, plus the per-second floor.
    #[test]
    fn budget_caps_retries_to_share_plus_floor() {
        let budget = RetryBudget::default();
        let _reqs: Vec<Active> = (0..4).map(|_| budget.request()).collect();
        let p = policy();
        let granted: Vec<Active> = (0..10).filter_map(|_| budget.try_retry(&p, 100)).collect();
        // 50% of 4 in flight = 2, plus 1 from the floor in second 100.
        assert_eq!(granted.len(), 3);
        drop(granted);
        assert!(
            budget.try_retry(&p, 100).is_some(),
            "share frees when retries end"
        );
    }

    /// The floor renews every second.
    #[test]
    fn floor_renews_each_second() {
        let budget = RetryBudget::default();
        let p = policy();
        let first = budget.try_retry(&p, 7);
        assert!(first.is_some());
        assert!(budget.try_retry(&p, 7).is_none());
        assert!(budget.try_retry(&p, 8).is_some());
    }

    /// Attempts are bounded by count, untried backends and the deadline.
    #[test]
    fn attempts_respect_count_backends_and_deadline() {
        let p = RetryPolicy {
            attempts: 1,
            deadline: Some(Duration::from_secs(1)),
            ..RetryPolicy::default()
        };
        let t0 = Instant::now();
        assert!(attempt_left(&p, 1, 2, t0, t0));
        assert!(!attempt_left(&p, 2, 2, t0, t0), "count spent");
        assert!(!attempt_left(&p, 1, 0, t0, t0), "no backend left");
        assert!(
            !attempt_left(&p, 1, 2, t0, t0 + Duration::from_secs(2)),
            "deadline"
        );
    }

    /// Each attempt's timeout is the shortest of per-try, group and remaining deadline.
    #[test]
    fn attempt_timeout_is_shortest_bound() {
        let p = RetryPolicy {
            per_try_timeout: Some(Duration::from_secs(2)),
            deadline: Some(Duration::from_secs(3)),
            ..RetryPolicy::default()
        };
        let t0 = Instant::now();
        let group = Duration::from_secs(30);
        assert_eq!(
            attempt_timeout(&p, group, t0, t0),
            Some(Duration::from_secs(2))
        );
        let later = t0 + Duration::from_millis(2500);
        assert_eq!(
            attempt_timeout(&p, group, t0, later),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            attempt_timeout(&p, group, t0, t0 + Duration::from_secs(4)),
            None
        );
    }
}
