//! The HTTPS edge end to end: TLS, routing, balancing, health, timeouts.

#[allow(unused_imports)] // the harness re-exports more than each file uses
mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

fn group(backends: &[&Backend], extra: &str) -> String {
    format!(
        r#"
upstreams:
  api:
    backends: {list}
{extra}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}
"#,
        list = backend_list(backends)
    )
}

/// 300 requests over a 3-backend round-robin group land 100 on each (±2).
#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_evenly() {
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(format!("b{i}"))).collect();
    let edge = Edge::start(&group(&[&b[0], &b[1], &b[2]], ""));
    let client = edge.client();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
        *counts.entry(served_by(&resp)).or_default() += 1;
    }
    for name in ["b1", "b2", "b3"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!((98..=102).contains(&n), "{name} served {n}: {counts:?}");
    }
}

/// A hung backend gets the client a 504 within the read timeout, not a hang.
#[tokio::test(flavor = "multi_thread")]
async fn hung_backend_times_out_with_504() {
    let b = Backend::start("slow");
    b.set_mode(Mode::Hang);
    let edge = Edge::start(&group(&[&b], "    timeouts: { read: 300ms }"));
    let started = std::time::Instant::now();
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], 504);
}

/// A group with `tls` reaches its backends over TLS, sending the configured SNI.
#[tokio::test(flavor = "multi_thread")]
async fn tls_to_backend_with_sni() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("b.crt"), dir.path().join("b.key"));
    tollgate::tls::write_self_signed(&cert, &key, &["backend.internal"]).expect("cert");
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).expect("pem");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = Backend::spawn_tls(listener, "secure", &pem(&cert), &pem(&key)).expect("tls backend");
    let edge = Edge::start(&group(
        &[&b],
        "    tls: { sni: backend.internal, verify: false }",
    ));
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(served_by(&resp), "secure");
}

/// The same backend with certificate verification on is refused (self-signed): 502, not 200.
#[tokio::test(flavor = "multi_thread")]
async fn tls_to_backend_verifies_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("b.crt"), dir.path().join("b.key"));
    tollgate::tls::write_self_signed(&cert, &key, &["backend.internal"]).expect("cert");
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).expect("pem");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = Backend::spawn_tls(listener, "secure", &pem(&cert), &pem(&key)).expect("tls backend");
    let edge = Edge::start(&group(&[&b], "    tls: { sni: backend.internal }"));
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(b.requests(), 0);
}
