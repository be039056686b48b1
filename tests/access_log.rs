//! The access log end to end: one JSON line per request, in the configured file, whatever the
//! error-log level.

#[allow(unused_imports)] // the harness re-exports more than each file uses
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// An edge whose access log goes to `{dir}/access.log` while the error log stays at `warn`.
fn logging_edge(body: &str) -> Edge {
    Edge::start_with(|p| {
        let quiet = "logging: { level: warn, access_log: false }";
        let logged = format!(
            "logging: {{ level: warn, file: \"{}/access.log\", access_log: true }}",
            p.dir.display()
        );
        let base = base_config(p);
        assert!(base.contains(quiet), "base config changed its logging line");
        base.replace(quiet, &logged) + body
    })
}

fn route_to(backends: &str) -> String {
    format!(
        "upstreams:\n  api: {{ backends: {backends}, timeouts: {{ connect: 500ms }} }}\n\
         routes:\n  - {{ name: api, match: {{ prefix: /api }}, upstream: api, retries: {{ attempts: 1 }} }}\n"
    )
}

/// The access lines written so far, once there are at least `n` (the log is flushed every
/// 200 ms).
async fn lines(dir: &Path, n: usize) -> Vec<Value> {
    let path = dir.join("access.log");
    let read = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect::<Vec<Value>>()
    };
    let found = eventually(Duration::from_secs(5), async || read().len() >= n).await;
    assert!(found, "fewer than {n} access lines: {:?}", read());
    read()
}

/// Each request, routed or not, gets one JSON line naming its id, route, backend and status.
#[tokio::test(flavor = "multi_thread")]
async fn every_request_gets_one_json_line_even_at_level_warn() {
    let b = Backend::start("b1");
    let edge = logging_edge(&route_to(&backend_list(&[&b])));
    let client = edge.client();
    let ok = client
        .get(edge.url("/api/x?q=1"))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    let id = ok.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let missing = client.get(edge.url("/nowhere")).send().await.expect("send");
    assert_eq!(missing.status(), 404);

    let log = lines(edge.dir.path(), 2).await;
    assert_eq!(log.len(), 2, "{log:?}");
    // A request is logged after its response went out, so lines may come in either order.
    let by_status = |code: u16| log.iter().find(|l| l["status"] == code).expect("line");
    let (hit, miss) = (by_status(200), by_status(404));
    assert_eq!(hit["request_id"], id.as_str());
    assert_eq!(hit["method"], "GET");
    assert_eq!(hit["path"], "/api/x");
    assert_eq!(hit["route"], "api");
    assert_eq!(hit["upstream"], "api");
    assert_eq!(hit["backend"], b.addr().to_string().as_str());
    assert_eq!(hit["status"], 200);
    assert_eq!(hit["client_ip"], "127.0.0.1");
    assert_eq!(hit["attempts"], 1);
    assert!(hit["bytes"].as_u64().is_some_and(|n| n > 0), "{hit}");
    assert!(
        hit["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{hit}"
    );
    assert!(hit["latency_ms"].as_f64().is_some(), "{hit}");
    assert!(hit["upstream_latency_ms"].as_f64().is_some(), "{hit}");
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["route"], Value::Null);
    assert_eq!(miss["attempts"], 0);
}

/// A request retried after a refused connection logs both backends, in the order tried.
#[tokio::test(flavor = "multi_thread")]
async fn retried_request_logs_every_backend_tried() {
    let live = Backend::start("live");
    let dead = Backend::start("dead");
    dead.stop();
    let edge = logging_edge(&route_to(&backend_list(&[&dead, &live])));
    let client = edge.client();
    // Round robin starts one of two requests on the dead backend.
    for _ in 0..2 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
    }
    let log = lines(edge.dir.path(), 2).await;
    let retried = log
        .iter()
        .find(|l| l["attempts"] == 2)
        .unwrap_or_else(|| panic!("no retried request in {log:?}"));
    let tried = [dead.addr().to_string(), live.addr().to_string()];
    assert_eq!(retried["tried"], serde_json::json!(tried));
    assert_eq!(retried["backend"], live.addr().to_string().as_str());
    assert_eq!(retried["status"], 200);
}

/// A client that goes away while its backend is still working ends the request there (status
/// 0 in the log), over HTTP/1.1 (the connection closes) and HTTP/2 (the stream is reset), long
/// before the backend would have answered.
#[tokio::test(flavor = "multi_thread")]
async fn client_going_away_mid_request_ends_it_without_waiting_for_the_backend() {
    use std::io::Write;
    let b = Backend::start("b1");
    let edge = logging_edge(&route_to(&backend_list(&[&b])));
    let slow = "?sleep_ms=8000";

    let mut h1 = raw::connect(edge.http);
    let request = format!("GET /api/h1{slow} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    h1.write_all(request.as_bytes()).expect("write");
    let h2 = client_builder(edge.https)
        .http2_prior_knowledge()
        .build()
        .expect("client");
    // Dropping the request future resets its stream; the connection stays open.
    let waited = tokio::time::timeout(
        Duration::from_millis(500),
        h2.get(edge.url(&format!("/api/h2{slow}"))).send(),
    )
    .await;
    assert!(waited.is_err(), "the backend answered early: {waited:?}");
    drop(h1);

    let log = lines(edge.dir.path(), 2).await;
    for path in ["/api/h1", "/api/h2"] {
        let line = log
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path} in {log:?}"));
        assert_eq!(line["status"], 0, "{line}");
        // It was waiting on the backend, not refused before.
        assert_eq!(line["backend"], b.addr().to_string().as_str(), "{line}");
    }
    drop(h2);
}
