//! Circuit breakers and retries end to end, with demo backends told to misbehave.

#[allow(unused_imports)] // the harness re-exports more than each file uses
mod common;
use common::*;
use std::time::Duration;

fn config(backends: &[&Backend], breaker: &str, retries: &str) -> String {
    format!(
        r#"
upstreams:
  api:
    backends: {list}
    timeouts: {{ connect: 500ms, read: 1s }}
{breaker}
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: api
{retries}
"#,
        list = backend_list(backends)
    )
}

const BREAKER: &str =
    "    circuit_breaker: { consecutive_failures: 3, open_for: 30s, half_open_probes: 1, max_ejection_percent: 50 }";

/// With three backends and one answering 503, 1000 GETs see no error, and the broken one
/// gets at most consecutive_failures requests once its breaker opens.
#[tokio::test(flavor = "multi_thread")]
async fn broken_backend_costs_clients_nothing() {
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(format!("b{i}"))).collect();
    b[1].set_mode(Mode::Status(503));
    let edge = Edge::start(&config(
        &[&b[0], &b[1], &b[2]],
        BREAKER,
        "    retries: { attempts: 2, budget_percent: 100 }",
    ));
    let client = edge.client();
    for i in 0..1000 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert!(
        b[1].requests() <= 3,
        "broken backend saw {}",
        b[1].requests()
    );
}

/// A POST to a backend that resets after reading the request is not sent again.
#[tokio::test(flavor = "multi_thread")]
async fn post_that_reached_backend_is_not_retried() {
    let a = Backend::start("a");
    let z = Backend::start("z");
    a.set_mode(Mode::ResetAfterBody);
    z.set_mode(Mode::ResetAfterBody);
    let edge = Edge::start(&config(&[&a, &z], "", "    retries: { attempts: 2 }"));
    let resp = edge
        .client()
        .post(edge.url("/api/x"))
        .body("payload")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 502);
    assert_eq!(a.requests() + z.requests(), 1, "the POST was replayed");
}

/// A refused connection is retried on another backend, so the client sees no error.
#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_is_retried_elsewhere() {
    let a = Backend::start("a");
    let z = Backend::start("z");
    z.stop();
    let edge = Edge::start(&config(&[&a, &z], "", ""));
    let client = edge.client();
    for _ in 0..20 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(served_by(&resp), "a");
    }
}

/// A backend whose breaker opened is back in rotation once it recovers and open_for passed.
#[tokio::test(flavor = "multi_thread")]
async fn recovered_backend_returns_to_rotation() {
    let a = Backend::start("a");
    let z = Backend::start("z");
    z.set_mode(Mode::Status(503));
    let edge = Edge::start(&config(
        &[&a, &z],
        "    circuit_breaker: { consecutive_failures: 2, open_for: 500ms, half_open_probes: 1, max_ejection_percent: 50 }",
        "    retries: { attempts: 1, budget_percent: 100 }",
    ));
    let client = edge.client();
    for _ in 0..10 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
    }
    let seen = z.requests();
    assert!(seen <= 2, "open breaker still sent {seen}");
    z.set_mode(Mode::Normal);
    let back = eventually(Duration::from_secs(10), async || {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        served_by(&resp) == "z"
    })
    .await;
    assert!(back, "z never came back after recovering");
}

/// Once the retry budget is spent, failures are answered as they are instead of retried.
#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_when_budget_is_spent() {
    let a = Backend::start("a");
    let z = Backend::start("z");
    a.set_mode(Mode::Status(503));
    z.set_mode(Mode::Status(503));
    let edge = Edge::start(&config(
        &[&a, &z],
        "",
        "    retries: { attempts: 1, budget_percent: 0, min_per_sec: 1 }",
    ));
    let client = edge.client();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 503);
    }
    let secs = started.elapsed().as_secs() + 2;
    let hits = a.requests() + z.requests();
    assert!(hits < 40, "every request was retried ({hits} backend hits)");
    assert!(
        hits <= 20 + secs,
        "{hits} backend hits in about {secs}s with a floor of 1/s"
    );
}
