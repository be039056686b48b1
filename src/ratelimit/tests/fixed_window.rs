use super::super::{InvalidPolicy, Limiter};
use super::{fixed_window, ip, limiter, ms};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Proves a hammered key gets exactly `limit` in each of its windows, never more.
/// Behaviour: `fixed_window_at_most_limit_per_window`.
#[test]
fn fixed_window_at_most_limit_per_window() {
    let (limit, window) = (5, Duration::from_secs(1));
    let l = limiter(fixed_window(limit, window), 16);
    let t0 = Instant::now();
    // Window end (ms since t0) → admissions in that window.
    let mut per_window: BTreeMap<u128, u64> = BTreeMap::new();
    for step in 0..10_000u64 {
        let now = ms(step);
        loop {
            let d = l.check(ip(1), t0 + now);
            if !d.allowed {
                break;
            }
            assert!(d.reset > Duration::ZERO && d.reset <= window);
            *per_window.entry((now + d.reset).as_nanos()).or_default() += 1;
        }
    }
    assert!(per_window.len() >= 10, "windows seen: {}", per_window.len());
    // Consecutive windows are exactly one window apart and every one is filled to `limit`.
    let ends: Vec<u128> = per_window.keys().copied().collect();
    assert!(ends.windows(2).all(|w| w[1] - w[0] == window.as_nanos()));
    assert!(per_window.values().all(|&n| n == limit), "{per_window:?}");
}

/// Proves the documented boundary burst: up to 2×limit in a span much shorter than a window.
/// Behaviour: `fixed_window_boundary_burst_is_at_most_twice_limit`.
#[test]
fn fixed_window_boundary_burst_is_at_most_twice_limit() {
    let (limit, window) = (10, Duration::from_secs(60));
    let l = limiter(fixed_window(limit, window), 16);
    let t0 = Instant::now();
    // The probe only reveals the key's phase; `end` closes the window after the probe's.
    let end = t0 + l.check(ip(2), t0).reset + window;
    let mut burst = 0;
    for at in [end - ms(1), end] {
        while l.check(ip(2), at).allowed {
            burst += 1;
        }
    }
    assert_eq!(burst, 2 * limit);
}

/// Proves reset and retry_after equal the exact time to the key's window end.
/// Behaviour: `fixed_window_headers_exact`.
#[test]
fn fixed_window_headers_exact() {
    let window = Duration::from_secs(10);
    let l = limiter(fixed_window(3, window), 16);
    let t0 = Instant::now();
    let first = l.check(ip(7), t0);
    assert!(first.allowed && first.remaining == 2 && first.limit == 3);
    assert!(first.reset > Duration::ZERO && first.reset <= window);
    let r = first.reset;
    let x = r / 3;
    assert_eq!(l.check(ip(7), t0 + x).reset, r - x);
    assert_eq!(l.check(ip(7), t0 + x).remaining, 0);
    let denied = l.check(ip(7), t0 + x);
    assert_eq!((denied.allowed, denied.remaining), (false, 0));
    assert_eq!(denied.retry_after, Some(r - x));
    assert_eq!(denied.reset, r - x);
    let next = l.check(ip(7), t0 + r);
    assert!(next.allowed && next.remaining == 2 && next.reset == window);
}

/// Proves different keys get different window phases (no synchronized release).
/// Behaviour: `fixed_window_phases_staggered_across_keys`.
#[test]
fn fixed_window_phases_staggered_across_keys() {
    let l = limiter(fixed_window(1, Duration::from_secs(60)), 1024);
    let t0 = Instant::now();
    let resets: HashSet<Duration> = (0..64).map(|k| l.check(ip(k), t0).reset).collect();
    assert!(resets.len() > 32, "only {} distinct phases", resets.len());
}

/// Proves a thread with a slightly older `now` cannot reopen a window another thread began.
/// Behaviour: `fixed_window_out_of_order_now_does_not_recount`.
#[test]
fn fixed_window_out_of_order_now_does_not_recount() {
    let l = limiter(fixed_window(2, Duration::from_secs(1)), 16);
    let t0 = Instant::now();
    let end = t0 + l.check(ip(5), t0).reset;
    assert!(l.check(ip(5), end).allowed && l.check(ip(5), end).allowed);
    let late = l.check(ip(5), end - Duration::from_nanos(1));
    assert!(!late.allowed);
    assert_eq!(
        late.retry_after,
        Some(Duration::from_secs(1) + Duration::from_nanos(1))
    );
}

/// Proves threads hammering one key in one window admit exactly `limit`.
/// Behaviour: `fixed_window_concurrent_hammer_exact`.
#[test]
fn fixed_window_concurrent_hammer_exact() {
    let l = limiter(fixed_window(100, Duration::from_secs(60)), 16);
    let at = Instant::now();
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5_000 {
                    let a = u64::from(l.check(ip(1), at).allowed);
                    admitted.fetch_add(a, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 100);
}

/// Proves limits and windows outside the packable range are rejected.
/// Behaviour: `fixed_window_rejects_invalid_parameters`.
#[test]
fn fixed_window_rejects_invalid_parameters() {
    let bad = [
        (0, ms(1000), InvalidPolicy::Limit),
        (1 << 32, ms(1000), InvalidPolicy::Limit),
        (1, Duration::from_micros(999), InvalidPolicy::Window),
    ];
    for (limit, window, err) in bad {
        let p = super::policy("fw", fixed_window(limit, window), 16);
        assert_eq!(Limiter::try_new(p).err(), Some(err));
    }
    let p = super::policy("fw", fixed_window(u64::from(u32::MAX), ms(1)), 16);
    assert!(Limiter::try_new(p).is_ok());
}
