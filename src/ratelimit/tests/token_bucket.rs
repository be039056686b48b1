use super::super::{Decision, InvalidPolicy, TokenBucket};
use super::{ip, limiter, ms, token_bucket, Lcg};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// (rate/s, burst, hammer duration) cases, including fractional rates.
const CASES: &[(f64, u32, Duration)] = &[
    (1.4, 1, Duration::from_secs(10)),
    (1.4, 5, Duration::from_millis(7_300)),
    (0.5, 3, Duration::from_secs(9)),
    (2.5, 1, Duration::from_millis(4_200)),
    (100.0, 10, Duration::from_secs(3)),
    (1000.0, 50, Duration::from_secs(2)),
];

/// Hammers `decide` at every 1 ms step of `[0, d]` until it denies; returns admissions.
fn hammer(d: Duration, mut decide: impl FnMut(Duration) -> bool) -> u64 {
    let mut admitted = 0;
    for step in 0..=d.as_millis() as u64 {
        while decide(ms(step)) {
            admitted += 1;
        }
    }
    admitted
}

fn assert_bound(admitted: u64, rate: f64, burst: u32, d: Duration) {
    let expected = rate * d.as_secs_f64() + f64::from(burst);
    assert!(
        (expected - 1.0..=expected + 1.0).contains(&(admitted as f64)),
        "rate {rate} burst {burst} over {d:?}: admitted {admitted}, bound {expected}±1"
    );
}

/// Proves a keyed token bucket hammered for T admits within r·T+b±1, fractional rates too.
/// Behaviour: `token_bucket_hammer_admits_rt_plus_b`.
#[test]
fn token_bucket_hammer_admits_rt_plus_b() {
    for &(rate, burst, d) in CASES {
        let l = limiter(token_bucket(rate, burst), 16);
        let t0 = Instant::now();
        let admitted = hammer(d, |dt| l.check(ip(1), t0 + dt).allowed);
        assert_bound(admitted, rate, burst, d);
    }
}

/// Proves the standalone bucket obeys the same r·T+b±1 bound.
/// Behaviour: `standalone_bucket_hammer_admits_rt_plus_b`.
#[test]
fn standalone_bucket_hammer_admits_rt_plus_b() {
    for &(rate, burst, d) in CASES {
        let t0 = Instant::now();
        let b = TokenBucket::new(rate, burst, t0).expect("valid bucket");
        let admitted = hammer(d, |dt| b.try_acquire(t0 + dt).allowed);
        assert_bound(admitted, rate, burst, d);
    }
}

/// Proves no arrival pattern gets more than b + r·t (+1 for ns rounding) by any time t.
/// Behaviour: `token_bucket_irregular_arrivals_stay_under_bound`.
#[test]
fn token_bucket_irregular_arrivals_stay_under_bound() {
    let (rate, burst) = (1.4, 4);
    let l = limiter(token_bucket(rate, burst), 16);
    let t0 = Instant::now();
    let mut rng = Lcg(7);
    let (mut t, mut admitted) = (Duration::ZERO, 0u64);
    while t < Duration::from_secs(60) {
        t += ms(rng.below(900));
        for _ in 0..rng.below(6) {
            admitted += u64::from(l.check(ip(9), t0 + t).allowed);
        }
        let bound = f64::from(burst) + rate * t.as_secs_f64() + 1.0;
        assert!(admitted as f64 <= bound, "{admitted} > {bound} at {t:?}");
    }
    assert!(
        admitted > 60,
        "pattern should mostly be admitted, got {admitted}"
    );
}

/// Proves remaining, reset and retry_after are exact for a known state (r=2/s, b=3).
/// Behaviour: `token_bucket_headers_exact`.
#[test]
fn token_bucket_headers_exact() {
    let l = limiter(token_bucket(2.0, 3), 16);
    let t0 = Instant::now();
    for (remaining, reset) in [(2, 500), (1, 1000), (0, 1500)] {
        let d = l.check(ip(1), t0);
        let want = Decision {
            allowed: true,
            limit: 3,
            remaining,
            reset: ms(reset),
            retry_after: None,
        };
        assert_eq!(d, want);
    }
    let denied = l.check(ip(1), t0 + ms(100));
    assert!(!denied.allowed);
    assert_eq!(denied.retry_after, Some(ms(400)));
    assert_eq!(denied.reset, ms(1400));
    assert_eq!(denied.retry_after_secs(), Some(1));
    assert_eq!(denied.reset_secs(), 2);
    // Exactly at retry_after one token is back, and only one.
    let d = l.check(ip(1), t0 + ms(500));
    assert!(d.allowed && d.remaining == 0 && d.reset == ms(1500));
    assert_eq!(l.check(ip(1), t0 + ms(500)).retry_after, Some(ms(500)));
}

/// Proves a denial a hair before the next token still yields Retry-After = 1, never 0.
/// Behaviour: `token_bucket_retry_after_never_zero`.
#[test]
fn token_bucket_retry_after_never_zero() {
    let l = limiter(token_bucket(1000.0, 1), 16);
    let t0 = Instant::now();
    assert!(l.check(ip(1), t0).allowed);
    let d = l.check(ip(1), t0 + Duration::from_nanos(999_999));
    assert_eq!(d.retry_after, Some(Duration::from_nanos(1)));
    assert_eq!(d.retry_after_secs(), Some(1));
}

/// Proves threads hammering one key at frozen time admit exactly burst, then exactly r·Δt.
/// Behaviour: `token_bucket_concurrent_hammer_exact`.
#[test]
fn token_bucket_concurrent_hammer_exact() {
    let l = limiter(token_bucket(10.0, 20), 16);
    let b = TokenBucket::new(10.0, 20, Instant::now()).expect("valid bucket");
    let t0 = Instant::now();
    for (at, want) in [(t0, 20), (t0 + Duration::from_secs(1), 10)] {
        let (keyed, standalone) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5_000 {
                        let k = u64::from(l.check(ip(3), at).allowed);
                        keyed.fetch_add(k, Ordering::Relaxed);
                        let a = u64::from(b.try_acquire(at).allowed);
                        standalone.fetch_add(a, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(keyed.load(Ordering::Relaxed), want);
        assert_eq!(standalone.load(Ordering::Relaxed), want);
    }
}

/// Proves tokens()/restore() round-trip: a restored bucket decides like the original.
/// Behaviour: `standalone_bucket_restore_roundtrip`.
#[test]
fn standalone_bucket_restore_roundtrip() {
    let t0 = Instant::now();
    let a = TokenBucket::new(1.4, 10, t0).expect("valid bucket");
    for _ in 0..7 {
        assert!(a.try_acquire(t0).allowed);
    }
    assert!((a.tokens(t0) - 3.0).abs() < 1e-9);
    let t1 = t0 + Duration::from_secs(1);
    assert!((a.tokens(t1) - 4.4).abs() < 1e-6);
    let b = TokenBucket::restore(1.4, 10, a.tokens(t1), t1).expect("valid bucket");
    for step in 0..5_000 {
        let at = t1 + ms(step);
        let (da, db) = (a.try_acquire(at), b.try_acquire(at));
        // The f64 round trip may move the state by a nanosecond, never a decision.
        assert_eq!(
            (da.allowed, da.remaining),
            (db.allowed, db.remaining),
            "+{step}ms"
        );
        assert!(da.reset.abs_diff(db.reset) <= Duration::from_nanos(2));
    }
    let over = TokenBucket::restore(1.0, 5, 99.0, t0).expect("valid bucket");
    assert_eq!(over.tokens(t0), 5.0);
    let nan = TokenBucket::restore(1.0, 5, f64::NAN, t0).expect("valid bucket");
    assert_eq!(nan.tokens(t0), 0.0);
}

/// Proves reconfigure keeps available tokens (clamped) and applies the new rate.
/// Behaviour: `standalone_bucket_reconfigure_keeps_tokens`.
#[test]
fn standalone_bucket_reconfigure_keeps_tokens() {
    let t0 = Instant::now();
    let b = TokenBucket::new(10.0, 10, t0).expect("valid bucket");
    for _ in 0..6 {
        assert!(b.try_acquire(t0).allowed);
    }
    b.reconfigure(100.0, 50, t0).expect("valid config");
    assert!(
        (b.tokens(t0) - 4.0).abs() < 1e-9,
        "no fresh burst on reload"
    );
    b.reconfigure(1.0, 2, t0).expect("valid config");
    assert_eq!((b.rate_per_sec(), b.capacity()), (1.0, 2));
    assert_eq!(b.tokens(t0), 2.0);
    assert!(b.try_acquire(t0).allowed && b.try_acquire(t0).allowed);
    let denied = b.try_acquire(t0);
    assert_eq!(denied.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(b.quota(), (2, 2));
}

/// Proves out-of-range parameters are rejected instead of misbehaving.
/// Behaviour: `token_bucket_rejects_invalid_parameters`.
#[test]
fn token_bucket_rejects_invalid_parameters() {
    let now = Instant::now();
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9, 1e-12] {
        assert_eq!(
            TokenBucket::new(rate, 1, now).err(),
            Some(InvalidPolicy::Rate)
        );
    }
    assert_eq!(
        TokenBucket::new(1.0, 0, now).err(),
        Some(InvalidPolicy::Burst)
    );
}
