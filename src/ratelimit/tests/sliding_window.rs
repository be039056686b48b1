//! Real-time tests: `Rate` reads its own clock. Windows are long relative to the work done
//! inside them, and assertions are on counts, never on how long anything took.

use super::super::{InvalidPolicy, Key, Limiter};
use super::{ip, limiter, ms, policy, sliding_window};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// Proves a key is cut off after `limit` and is admitted `limit` times again once two windows
/// have passed. Behaviour: `sliding_window_rejects_over_limit_and_recovers`.
#[test]
fn sliding_window_rejects_over_limit_and_recovers() {
    let l = limiter(sliding_window(5, WINDOW), 100);
    let now = Instant::now();
    for want_remaining in (0..5).rev() {
        let d = l.check(ip(1), now);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (5, want_remaining));
    }
    let denied = l.check(ip(1), now);
    assert!(!denied.allowed && denied.remaining == 0);
    let retry = denied.retry_after.expect("denied has retry_after");
    assert!(
        retry > Duration::ZERO && retry <= 2 * WINDOW + ms(2),
        "{retry:?}"
    );
    assert!(denied.reset >= retry && denied.reset <= 2 * WINDOW + ms(2));
    // Another key is unaffected (single-key sketch: no collision possible).
    assert!(l.check(ip(2), now).allowed);
    std::thread::sleep(2 * WINDOW + ms(50));
    let admitted = (0..10).filter(|_| l.check(ip(1), now).allowed).count();
    assert_eq!(admitted, 5);
}

/// Proves waiting the advertised retry_after is enough to be admitted again.
/// Behaviour: `sliding_window_retry_after_is_sufficient`.
#[test]
fn sliding_window_retry_after_is_sufficient() {
    let l = limiter(sliding_window(4, WINDOW), 100);
    let key = Key::Str("client-a");
    let now = Instant::now();
    while l.check(key, now).allowed {}
    let retry = l
        .check(key, now)
        .retry_after
        .expect("denied has retry_after");
    // Oversleeping only lowers the estimate, so a loaded machine cannot fail this.
    std::thread::sleep(retry);
    assert!(l.check(key, now).allowed);
}

/// Proves that with many keys sharing the sketch no key exceeds its limit (collisions only
/// over-count) and nearly every key still gets its full quota.
/// Behaviour: `sliding_window_many_keys_only_over_count`.
#[test]
fn sliding_window_many_keys_only_over_count() {
    let (keys, limit) = (2_000u32, 10u64);
    let l = limiter(sliding_window(limit, Duration::from_secs(120)), 8_192);
    let now = Instant::now();
    let mut total = 0;
    for k in 0..keys {
        let admitted = (0..15).filter(|_| l.check(ip(k), now).allowed).count() as u64;
        assert!(admitted <= limit, "key {k} admitted {admitted}");
        total += admitted;
    }
    let full = u64::from(keys) * limit;
    assert!(total * 10 >= full * 9, "only {total} of {full} admitted");
    assert_eq!(l.len(), 0, "sliding window tracks no per-key entries");
}

/// Proves threads hammering one key never get more than `limit` through in a window.
/// Behaviour: `sliding_window_concurrent_never_exceeds_limit`.
#[test]
fn sliding_window_concurrent_never_exceeds_limit() {
    let l = limiter(sliding_window(50, Duration::from_secs(120)), 100);
    let now = Instant::now();
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5_000 {
                    let a = u64::from(l.check(ip(1), now).allowed);
                    admitted.fetch_add(a, Ordering::Relaxed);
                }
            });
        }
    });
    let n = admitted.load(Ordering::Relaxed);
    assert!((1..=50).contains(&n), "admitted {n}");
}

/// Proves the sketch size follows max_keys within 64 KiB..4 MiB and windows are validated.
/// Behaviour: `sliding_window_constant_memory_and_validation`.
#[test]
fn sliding_window_constant_memory_and_validation() {
    let sized = |max_keys| limiter(sliding_window(1, WINDOW), max_keys).sketch_bytes();
    assert_eq!(sized(10), Some(64 << 10));
    assert_eq!(sized(10_000), Some(1 << 20));
    assert_eq!(sized(usize::MAX), Some(4 << 20));
    let bad = [
        (5, ms(999), InvalidPolicy::Window),
        (0, WINDOW, InvalidPolicy::Limit),
        ((1 << 52) + 1, WINDOW, InvalidPolicy::Limit),
    ];
    for (limit, window, err) in bad {
        let p = policy("sw", sliding_window(limit, window), 10);
        assert_eq!(Limiter::try_new(p).err(), Some(err));
    }
    // Sub-millisecond parts are truncated like Rate does; w rounds the window up.
    let l = limiter(sliding_window(7, Duration::from_micros(1_500_700)), 10);
    assert_eq!(l.policy_header(), "\"test\";q=7;w=2");
}
