//! Active health checks end to end: ejection, readmission, status checks, all-down, tcp checks.

#[allow(unused_imports)] // `Mode` is unused here
mod common;
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(200);
const HEALTHY_AFTER: u32 = 2;
const UNHEALTHY_AFTER: u32 = 2;
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(4);

/// A one-group config with the given health check fields (`kind: ...` and extras).
fn checked_group(backends: &[&Backend], check: &str) -> String {
    format!(
        r#"
upstreams:
  api:
    backends: {list}
    health_check: {{ {check}, interval: 200ms, timeout: 300ms, healthy_after: {HEALTHY_AFTER}, unhealthy_after: {UNHEALTHY_AFTER} }}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}
"#,
        list = backend_list(backends)
    )
}

/// Whether the edge currently lets `addr` of group `api` take traffic.
fn in_rotation(edge: &Edge, addr: SocketAddr) -> bool {
    let runtime = edge.runtime.load();
    let group = runtime.groups.get("api").expect("group api");
    let state = group
        .backends()
        .iter()
        .find(|b| b.addr == addr)
        .expect("backend in group");
    state.is_healthy()
}

/// Polls until `addr` is (or is not) in rotation; returns how long it took.
async fn wait_rotation(edge: &Edge, addr: SocketAddr, want: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    let ok = eventually(limit, async || in_rotation(edge, addr) == want).await;
    assert!(ok, "{addr} in rotation != {want} after {limit:?}");
    started.elapsed()
}

/// Sends `n` requests; asserts all succeed and returns how many `name` served.
async fn served_count(edge: &Edge, n: usize, name: &str) -> usize {
    let client = edge.client();
    let mut hits = 0;
    for _ in 0..n {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
        hits += usize::from(served_by(&resp) == name);
    }
    hits
}

/// A stopped backend leaves rotation within interval × unhealthy_after, and returns within
/// interval × healthy_after after a restart; meanwhile every request succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn stopped_backend_is_ejected_and_readmitted() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let edge = Edge::start(&checked_group(&[&b1, &b2], "kind: http, path: /healthz"));
    assert!(served_count(&edge, 10, "b2").await > 0);

    b2.stop();
    let limit = INTERVAL * UNHEALTHY_AFTER + SLACK;
    wait_rotation(&edge, b2.addr(), false, limit).await;
    assert_eq!(served_count(&edge, 100, "b1").await, 100);

    b2.restart().expect("restart");
    let limit = INTERVAL * HEALTHY_AFTER + SLACK;
    wait_rotation(&edge, b2.addr(), true, limit).await;
    let before = b2.requests();
    assert!(served_count(&edge, 20, "b2").await >= 5);
    assert!(b2.requests() > before);
}

/// A backend whose /healthz fails is ejected even though it still serves, and comes back.
#[tokio::test(flavor = "multi_thread")]
async fn failing_health_endpoint_ejects_serving_backend() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let edge = Edge::start(&checked_group(&[&b1, &b2], "kind: http, path: /healthz"));
    b2.set_healthy(false);
    wait_rotation(&edge, b2.addr(), false, INTERVAL * UNHEALTHY_AFTER + SLACK).await;
    let before = b2.requests();
    assert_eq!(served_count(&edge, 50, "b1").await, 50);
    assert_eq!(b2.requests(), before, "an ejected backend got traffic");

    b2.set_healthy(true);
    wait_rotation(&edge, b2.addr(), true, INTERVAL * HEALTHY_AFTER + SLACK).await;
    assert!(served_count(&edge, 20, "b2").await >= 5);
}

/// The check uses the configured path: a backend is judged by what that path answers.
#[tokio::test(flavor = "multi_thread")]
async fn health_check_uses_configured_path() {
    let b1 = Backend::start("b1");
    // Any path other than /healthz gets the demo backend's normal 200 echo, so /healthz's
    // 503 must not matter when the check asks for /ping.
    b1.set_healthy(false);
    let edge = Edge::start(&checked_group(&[&b1], "kind: http, path: /ping"));
    tokio::time::sleep(INTERVAL * (UNHEALTHY_AFTER + 2)).await;
    assert!(in_rotation(&edge, b1.addr()));
    assert!(b1.requests() >= 1, "the check never asked for /ping");
}

/// `expected_status` is what counts as healthy: with 503 expected, a 200 backend is ejected.
#[tokio::test(flavor = "multi_thread")]
async fn expected_status_decides_health() {
    let (sick, fine) = (Backend::start("sick"), Backend::start("fine"));
    sick.set_healthy(false); // /healthz answers 503
    let check = "kind: http, path: /healthz, expected_status: 503";
    let edge = Edge::start(&checked_group(&[&sick, &fine], check));
    wait_rotation(
        &edge,
        fine.addr(),
        false,
        INTERVAL * UNHEALTHY_AFTER + SLACK,
    )
    .await;
    assert!(in_rotation(&edge, sick.addr()));
    assert_eq!(served_count(&edge, 20, "sick").await, 20);
}

/// With every backend ejected the edge answers 503 with a JSON body, without hanging.
#[tokio::test(flavor = "multi_thread")]
async fn all_backends_down_gives_503_json() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let edge = Edge::start(&checked_group(&[&b1, &b2], "kind: http, path: /healthz"));
    b1.set_healthy(false);
    b2.set_healthy(false);
    for b in [&b1, &b2] {
        wait_rotation(&edge, b.addr(), false, INTERVAL * UNHEALTHY_AFTER + SLACK).await;
    }
    let started = Instant::now();
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(resp.headers().contains_key("x-request-id"));
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], 503);
    assert_eq!(body["message"], "no available backend");
    assert_eq!(b1.requests() + b2.requests(), 0);
}

/// A tcp check ejects a backend that stops accepting, but ignores what /healthz says.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_check_follows_connectability_only() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let edge = Edge::start(&checked_group(&[&b1, &b2], "kind: tcp"));
    b2.set_healthy(false);
    tokio::time::sleep(INTERVAL * (UNHEALTHY_AFTER + 2)).await;
    assert!(
        in_rotation(&edge, b2.addr()),
        "tcp check looked at /healthz"
    );
    assert_eq!(b2.healthz_requests(), 0);

    b2.stop();
    wait_rotation(&edge, b2.addr(), false, INTERVAL * UNHEALTHY_AFTER + SLACK).await;
    assert_eq!(served_count(&edge, 50, "b1").await, 50);
    b2.restart().expect("restart");
    wait_rotation(&edge, b2.addr(), true, INTERVAL * HEALTHY_AFTER + SLACK).await;
}

/// Without health checks, a refused connection is retried on another backend: no errors.
#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_is_retried_elsewhere() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let edge = Edge::start(&format!(
        "upstreams:\n  api: {{ backends: {} }}\nroutes:\n  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}\n",
        backend_list(&[&b1, &b2])
    ));
    b2.stop();
    assert_eq!(served_count(&edge, 50, "b1").await, 50);
}
