use super::super::{
    is_valid_policy_name, write_policy_item, write_ratelimit_item, Decision, InvalidPolicy, Limiter,
};
use super::{fixed_window, ip, limiter, policy, sliding_window, token_bucket};
use std::time::{Duration, Instant};

fn decision(allowed: bool, remaining: u64, reset: Duration, retry: Option<Duration>) -> Decision {
    Decision {
        allowed,
        limit: 10,
        remaining,
        reset,
        retry_after: retry,
    }
}

/// Proves RateLimit-Policy values per algorithm, including the conservative token-bucket
/// window and sf-string escaping. Behaviour: `policy_header_formats`.
#[test]
fn policy_header_formats() {
    let cases = [
        (token_bucket(10.0, 20), "\"test\";q=20;w=2"),
        (token_bucket(1.4, 1), "\"test\";q=1;w=1"),
        (token_bucket(0.1, 3), "\"test\";q=3;w=30"),
        (
            fixed_window(100, Duration::from_secs(60)),
            "\"test\";q=100;w=60",
        ),
        (
            fixed_window(5, Duration::from_millis(100)),
            "\"test\";q=5;w=1",
        ),
        (
            sliding_window(1000, Duration::from_secs(3600)),
            "\"test\";q=1000;w=3600",
        ),
    ];
    for (algorithm, want) in cases {
        assert_eq!(limiter(algorithm, 10).policy_header(), want);
    }
    let p = policy(r#"a"b\c"#, token_bucket(1.0, 1), 10);
    let l = Limiter::try_new(p).expect("quotes and backslashes are escapable");
    assert_eq!(l.policy_header(), r#""a\"b\\c";q=1;w=1"#);
}

/// Proves RateLimit members from several policies append into one list with `t` rounded up.
/// Behaviour: `ratelimit_header_appends_members`.
#[test]
fn ratelimit_header_appends_members() {
    let a = limiter(token_bucket(2.0, 3), 10);
    let b = limiter(fixed_window(10, Duration::from_secs(60)), 10);
    let now = Instant::now();
    let da = a.check(ip(1), now);
    let mut out = String::new();
    a.write_ratelimit(&da, &mut out);
    assert_eq!(out, "\"test\";r=2;t=1");
    let db = decision(
        false,
        0,
        Duration::from_millis(59_001),
        Some(Duration::from_secs(1)),
    );
    b.write_ratelimit(&db, &mut out);
    assert_eq!(out, "\"test\";r=2;t=1, \"test\";r=0;t=60");
    assert_eq!(a.ratelimit_header(&da), "\"test\";r=2;t=1");

    let mut free = String::new();
    write_ratelimit_item(&mut free, "client", &db);
    write_policy_item(&mut free, "client", 10, 60);
    assert_eq!(free, "\"client\";r=0;t=60, \"client\";q=10;w=60");
}

/// Proves Retry-After rounds up to whole seconds, is at least 1 when denied, absent when
/// allowed. Behaviour: `retry_after_rounds_up_never_zero`.
#[test]
fn retry_after_rounds_up_never_zero() {
    let denied = |d| decision(false, 0, d, Some(d)).retry_after_secs();
    assert_eq!(denied(Duration::ZERO), Some(1));
    assert_eq!(denied(Duration::from_nanos(1)), Some(1));
    assert_eq!(denied(Duration::from_secs(1)), Some(1));
    assert_eq!(denied(Duration::from_nanos(1_000_000_001)), Some(2));
    assert_eq!(
        decision(true, 3, Duration::ZERO, None).retry_after_secs(),
        None
    );
    assert_eq!(decision(true, 3, Duration::ZERO, None).reset_secs(), 0);
}

/// Proves the writers allocate nothing beyond the header string itself.
/// Behaviour: `header_writers_do_not_allocate_beyond_value`.
#[test]
fn header_writers_do_not_allocate_beyond_value() {
    let l = limiter(
        fixed_window(u64::from(u32::MAX), Duration::from_secs(1)),
        10,
    );
    let d = decision(false, u64::MAX, Duration::MAX, Some(Duration::MAX));
    let mut out = String::with_capacity(128);
    let ptr = out.as_ptr();
    l.write_ratelimit(&d, &mut out);
    write_ratelimit_item(&mut out, "other", &d);
    assert_eq!((out.as_ptr(), out.capacity()), (ptr, 128));
    let single = l.ratelimit_header(&d);
    assert_eq!(single.capacity(), "\"test\"".len() + 48, "{single}");
}

/// Proves names that cannot be an sf-string, and max_keys = 0, are rejected.
/// Behaviour: `invalid_policy_names_rejected`.
#[test]
fn invalid_policy_names_rejected() {
    for name in ["", "caf\u{e9}", "line\nbreak", "tab\t"] {
        assert!(!is_valid_policy_name(name));
        let p = policy(name, token_bucket(1.0, 1), 10);
        assert_eq!(Limiter::try_new(p).err(), Some(InvalidPolicy::Name));
    }
    assert!(is_valid_policy_name("per-ip burst"));
    let p = policy("ok", token_bucket(1.0, 1), 0);
    assert_eq!(Limiter::try_new(p).err(), Some(InvalidPolicy::MaxKeys));
}
