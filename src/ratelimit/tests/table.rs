use super::super::{Inner, Key, Limiter};
use super::{fixed_window, ip, limiter, token_bucket, Lcg};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Entries really held by the shards, as opposed to the `len` counter.
fn counted(l: &Limiter) -> usize {
    match &l.inner {
        Inner::Token(t) => t.counted_len(),
        Inner::Fixed(t) => t.counted_len(),
        Inner::Sliding(_) => 0,
    }
}

/// Proves 100k distinct IPs never grow a max_keys=10k table past 10k entries, and that the
/// keys beyond the cap share one overflow bucket (fail closed, not open).
/// Behaviour: `max_keys_cap_holds_under_100k_distinct_ips`.
#[test]
fn max_keys_cap_holds_under_100k_distinct_ips() {
    let l = limiter(token_bucket(1.0, 2), 10_000);
    let t0 = Instant::now();
    let mut overflow_admitted = 0;
    for k in 0..100_000u32 {
        let d = l.check(ip(k), t0);
        if k >= 10_000 {
            overflow_admitted += u32::from(d.allowed);
        }
        if k % 1_000 == 0 {
            assert!(l.len() <= 10_000);
        }
    }
    assert_eq!((l.len(), counted(&l)), (10_000, 10_000));
    assert_eq!(l.overflow_decisions(), 90_000);
    assert_eq!(overflow_admitted, 2, "untracked keys share one burst of 2");
    // Tracked keys keep their exact state while the table is full.
    assert!(l.check(ip(0), t0).allowed);
    assert!(!l.check(ip(0), t0).allowed);
}

/// Proves the cap holds for IPv6 and string keys inserted from several threads at once.
/// Behaviour: `max_keys_cap_holds_under_concurrent_inserts`.
#[test]
fn max_keys_cap_holds_under_concurrent_inserts() {
    let l = limiter(fixed_window(1, Duration::from_secs(60)), 1_000);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4u128 {
            let l = &l;
            s.spawn(move || {
                for k in 0..5_000u128 {
                    let v6 = IpAddr::V6(Ipv6Addr::from(t << 64 | k));
                    let _ = l.check(Key::Ip(v6), t0);
                    let name = format!("client-{t}-{k}");
                    let _ = l.check(Key::Str(&name), t0);
                }
            });
        }
    });
    assert_eq!((l.len(), counted(&l)), (1_000, 1_000));
}

/// Proves a full table evicts idle keys inline so new keys are tracked, not overflowed.
/// Behaviour: `full_table_evicts_idle_keys_inline`.
#[test]
fn full_table_evicts_idle_keys_inline() {
    let l = limiter(token_bucket(10.0, 1), 100);
    let t0 = Instant::now();
    for k in 0..100 {
        assert!(l.check(ip(k), t0).allowed);
    }
    // 50 ms in, no bucket has refilled: a new key can only use the overflow bucket.
    assert!(l.check(ip(1_000), t0 + Duration::from_millis(50)).allowed);
    assert_eq!(l.overflow_decisions(), 1);
    // At 100 ms every bucket is full again, hence idle and evictable.
    let t1 = t0 + Duration::from_millis(100);
    for k in 100..200 {
        assert!(l.check(ip(k), t1).allowed, "key {k}");
    }
    assert_eq!(l.overflow_decisions(), 1);
    assert_eq!((l.len(), counted(&l)), (100, 100));
}

/// Proves sweep drops idle keys and keeps active ones with their state intact.
/// Behaviour: `sweep_evicts_idle_keeps_active`.
#[test]
fn sweep_evicts_idle_keeps_active() {
    let l = limiter(token_bucket(1.0, 5), 100);
    let t0 = Instant::now();
    assert!(l.check(ip(1), t0).allowed); // full again at t0+1s
    for _ in 0..5 {
        assert!(l.check(ip(2), t0).allowed); // full again at t0+5s
    }
    let t2 = t0 + Duration::from_secs(2);
    assert_eq!(l.sweep(t0), 0);
    assert_eq!(l.sweep(t2), 1);
    assert_eq!(l.len(), 1);
    let admitted = (0..5).filter(|_| l.check(ip(2), t2).allowed).count();
    assert_eq!(admitted, 2, "key 2 kept its 2 refilled tokens");
    assert_eq!(l.sweep(t0 + Duration::from_secs(10)), 1);
    assert_eq!((l.len(), counted(&l)), (0, 0));

    let fw = limiter(fixed_window(3, Duration::from_secs(10)), 100);
    let end = t0 + fw.check(ip(1), t0).reset;
    assert_eq!(fw.sweep(end - Duration::from_nanos(1)), 0);
    assert_eq!(fw.sweep(end), 1);
    assert!(fw.is_empty());
}

/// Proves eviction is lossless: sweeping after every request changes no decision.
/// Behaviour: `sweep_never_changes_decisions`.
#[test]
fn sweep_never_changes_decisions() {
    let swept = limiter(token_bucket(1.4, 3), 100);
    let kept = limiter(token_bucket(1.4, 3), 100);
    let t0 = Instant::now();
    let mut rng = Lcg(42);
    let mut t = Duration::ZERO;
    for _ in 0..5_000 {
        t += Duration::from_millis(rng.below(400));
        let key = ip(rng.below(3) as u32);
        assert_eq!(
            swept.check(key, t0 + t),
            kept.check(key, t0 + t),
            "at {t:?}"
        );
        swept.sweep(t0 + t);
    }
    assert!(swept.len() <= kept.len());
}

/// Proves string and IP keys with the same text are distinct and re-checking an existing
/// string key does not insert it again. Behaviour: `keys_are_exact_and_deduplicated`.
#[test]
fn keys_are_exact_and_deduplicated() {
    let l = limiter(token_bucket(1.0, 1), 100);
    let t0 = Instant::now();
    let addr: IpAddr = [10, 0, 0, 1].into();
    assert!(l.check(Key::Ip(addr), t0).allowed);
    assert!(l.check(Key::Str("10.0.0.1"), t0).allowed);
    let owned = String::from("10.0.0.1");
    for _ in 0..10 {
        assert!(!l.check(Key::Str(&owned), t0).allowed);
        assert!(!l.check(Key::from(addr), t0).allowed);
    }
    assert_eq!(l.len(), 2);
}

/// Proves a limiter can be shared across proxy worker threads and exposes its policy,
/// including the dry_run flag the caller acts on. Behaviour: `limiter_shareable_with_policy`.
#[test]
fn limiter_shareable_with_policy() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Limiter>();
    assert_send_sync::<super::super::TokenBucket>();
    let mut p = super::policy("shadow", token_bucket(5.0, 10), 100);
    p.dry_run = true;
    let l = Limiter::try_new(p.clone()).expect("valid policy");
    assert!(l.dry_run());
    assert_eq!((l.name(), l.policy()), ("shadow", &p));
}
