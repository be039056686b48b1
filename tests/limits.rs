//! Rate limits end to end: token bucket bounds, 429 headers, dry run, trusted proxies.

#[allow(unused_imports)] // the harness re-exports more than each file uses
mod common;
use common::*;
use std::time::Instant;

fn config(backend: &Backend, limit: &str, extra_top: &str) -> String {
    format!(
        r#"
{extra_top}
upstreams:
  api:
    backends: {list}
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: api
    rate_limit: {limit}
"#,
        list = backend_list(&[backend])
    )
}

/// A token bucket (rate 5/s, burst 10) hammered for about 2 s admits at most r·T + b + 1, and
/// at least the burst.
#[tokio::test(flavor = "multi_thread")]
async fn token_bucket_admits_rate_times_time_plus_burst() {
    let b = Backend::start("b");
    let edge = Edge::start(&config(
        &b,
        "{ name: per-ip, key: ip, algorithm: token_bucket, rate_per_sec: 5, burst: 10 }",
        "",
    ));
    let client = edge.client();
    let started = Instant::now();
    let mut admitted = 0u32;
    while started.elapsed().as_secs_f64() < 2.0 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        match resp.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let upper = (5.0 * elapsed + 10.0 + 1.0).floor() as u32;
    assert!(admitted >= 10, "admitted {admitted}, less than the burst");
    assert!(
        admitted <= upper,
        "admitted {admitted} > {upper} in {elapsed:.2}s"
    );
}

/// A limited request gets 429 JSON with Retry-After and the RateLimit headers.
#[tokio::test(flavor = "multi_thread")]
async fn limited_response_carries_retry_after_and_ratelimit_headers() {
    let b = Backend::start("b");
    let edge = Edge::start(&config(
        &b,
        "{ name: tight, key: ip, algorithm: token_bucket, rate_per_sec: 0.5, burst: 1 }",
        "",
    ));
    let client = edge.client();
    let ok = client.get(edge.url("/api/x")).send().await.expect("send");
    assert_eq!(ok.status(), 200);
    let policy = ok.headers()["ratelimit-policy"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(policy, r#""tight";q=1;w=2"#);
    let limited = client.get(edge.url("/api/x")).send().await.expect("send");
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "retry-after {retry_after}");
    let rl = limited.headers()["ratelimit"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(rl.starts_with(r#""tight";r=0;t="#), "{rl}");
    let body: serde_json::Value = limited.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({"code": 429, "message": "rate limit exceeded"})
    );
    assert_eq!(b.requests(), 1, "the limited request reached the backend");
}

/// A route with two policies names both, in order, in `RateLimit-Policy` and `RateLimit`.
#[tokio::test(flavor = "multi_thread")]
async fn two_policies_are_both_in_the_ratelimit_headers() {
    let b = Backend::start("b");
    let edge = Edge::start(&config(
        &b,
        "[ { name: per-ip, key: ip, algorithm: token_bucket, rate_per_sec: 100, burst: 50 }, \
           { name: hourly, key: ip, algorithm: fixed_window, limit: 1000, window: 1h } ]",
        "",
    ));
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 200);
    let header = |name: &str| resp.headers()[name].to_str().expect("ascii").to_string();
    assert_eq!(
        header("ratelimit-policy"),
        r#""per-ip";q=50;w=1, "hourly";q=1000;w=3600"#
    );
    let rl = header("ratelimit");
    assert!(
        rl.starts_with(r#""per-ip";r=49;t="#) && rl.contains(r#", "hourly";r=999;t="#),
        "{rl}"
    );
}

/// A dry-run policy counts but lets every request through.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_lets_requests_through() {
    let b = Backend::start("b");
    let edge = Edge::start(&config(
        &b,
        "{ name: trial, key: ip, algorithm: fixed_window, limit: 2, window: 1m, dry_run: true }",
        "",
    ));
    let client = edge.client();
    for _ in 0..5 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(b.requests(), 5);
}

/// A spoofed X-Forwarded-For from an untrusted peer does not get a fresh per-ip bucket.
#[tokio::test(flavor = "multi_thread")]
async fn spoofed_forwarded_for_does_not_escape_ip_limit() {
    let b = Backend::start("b");
    let edge = Edge::start(&config(
        &b,
        "{ key: ip, algorithm: token_bucket, rate_per_sec: 0.1, burst: 2 }",
        "",
    ));
    let client = edge.client();
    let mut codes = Vec::new();
    for i in 0..4 {
        let resp = client
            .get(edge.url("/api/x"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .expect("send");
        codes.push(resp.status().as_u16());
    }
    assert_eq!(codes, vec![200, 200, 429, 429]);
}

/// Behind a trusted proxy, each forwarded client has its own bucket.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxy_forwarded_clients_have_own_buckets() {
    let b = Backend::start("b");
    let edge = Edge::start(&config(
        &b,
        "{ key: ip, algorithm: token_bucket, rate_per_sec: 0.1, burst: 1 }",
        "trusted_proxies: [\"127.0.0.1/32\"]",
    ));
    let client = edge.client();
    for i in 0..4 {
        let resp = client
            .get(edge.url("/api/x"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200, "client {i}");
    }
}
