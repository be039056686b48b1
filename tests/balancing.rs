//! Backend selection end to end: weighted, random, least connections and consistent hashing.

#[allow(unused_imports)] // the harness re-exports more than each file uses
mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A one-group config: `backends` is the YAML list, `selection` the YAML value.
fn group(backends: &str, selection: &str) -> String {
    format!(
        r#"
upstreams:
  api:
    backends: {backends}
    selection: {selection}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}
"#
    )
}

/// Sends `n` requests built by `req` and counts the backends that served them.
async fn spread(
    edge: &Edge,
    n: usize,
    req: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder,
) -> HashMap<String, usize> {
    let client = edge.client();
    let mut counts = HashMap::new();
    for i in 0..n {
        let resp = req(&client, i).send().await.expect("send");
        assert_eq!(resp.status(), 200);
        *counts.entry(served_by(&resp)).or_default() += 1;
    }
    counts
}

fn count(counts: &HashMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

/// `weighted` sends traffic in proportion to weights: 1:3 over 400 requests is ~100:~300.
#[tokio::test(flavor = "multi_thread")]
async fn weighted_selection_follows_weights() {
    let (light, heavy) = (Backend::start("light"), Backend::start("heavy"));
    let list = format!(
        "[{{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 3 }}]",
        light.addr(),
        heavy.addr()
    );
    let edge = Edge::start(&group(&list, "weighted"));
    let counts = spread(&edge, 400, |c, _| c.get(edge.url("/api/x"))).await;
    assert!((90..=110).contains(&count(&counts, "light")), "{counts:?}");
    assert!((290..=310).contains(&count(&counts, "heavy")), "{counts:?}");
}

/// `round_robin` ignores weights: the same 1:3 group is served evenly.
#[tokio::test(flavor = "multi_thread")]
async fn round_robin_ignores_weights() {
    let (light, heavy) = (Backend::start("light"), Backend::start("heavy"));
    let list = format!(
        "[{{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 3 }}]",
        light.addr(),
        heavy.addr()
    );
    let edge = Edge::start(&group(&list, "round_robin"));
    let counts = spread(&edge, 200, |c, _| c.get(edge.url("/api/x"))).await;
    assert!((95..=105).contains(&count(&counts, "light")), "{counts:?}");
}

/// `random` reaches every backend, roughly evenly.
#[tokio::test(flavor = "multi_thread")]
async fn random_selection_reaches_every_backend() {
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(format!("r{i}"))).collect();
    let edge = Edge::start(&group(&backend_list(&[&b[0], &b[1], &b[2]]), "random"));
    let counts = spread(&edge, 300, |c, _| c.get(edge.url("/api/x"))).await;
    for name in ["r1", "r2", "r3"] {
        // Expected 100 each; 50 is more than six standard deviations away.
        assert!(count(&counts, name) >= 50, "{counts:?}");
    }
}

/// `least_conn` steers new requests away from a backend still busy with slow ones.
#[tokio::test(flavor = "multi_thread")]
async fn least_conn_prefers_idle_backend() {
    let (slow, fast) = (Backend::start("slow"), Backend::start("fast"));
    slow.set_mode(Mode::Delay(Duration::from_millis(1500)));
    let edge = Edge::start(&group(&backend_list(&[&slow, &fast]), "least_conn"));
    let client = edge.client();
    let mut tasks = Vec::new();
    // 30 requests over ~0.9s: the slow backend stays busy with whatever it got first.
    for _ in 0..30 {
        let req = client.get(edge.url("/api/x"));
        tasks.push(tokio::spawn(async move { req.send().await }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for t in tasks {
        let resp = t.await.expect("join").expect("send");
        assert_eq!(resp.status(), 200);
    }
    // Round robin would give it 15.
    assert!(slow.requests() <= 3, "slow got {} of 30", slow.requests());
    assert_eq!(slow.requests() + fast.requests(), 30);
}

/// `least_conn` still shares evenly between equally idle backends.
#[tokio::test(flavor = "multi_thread")]
async fn least_conn_shares_between_idle_backends() {
    let b: Vec<Backend> = (1..=2).map(|i| Backend::start(format!("l{i}"))).collect();
    let edge = Edge::start(&group(&backend_list(&[&b[0], &b[1]]), "least_conn"));
    let counts = spread(&edge, 100, |c, _| c.get(edge.url("/api/x"))).await;
    for name in ["l1", "l2"] {
        assert!(count(&counts, name) >= 30, "{counts:?}");
    }
}

/// Three backends hashed on `key`.
fn hashed_edge(key: &str) -> (Edge, Vec<Backend>) {
    let b: Vec<Backend> = (1..=3).map(|i| Backend::start(format!("h{i}"))).collect();
    let selection = format!("{{ consistent_hash: {{ key: \"{key}\" }} }}");
    let edge = Edge::start(&group(&backend_list(&[&b[0], &b[1], &b[2]]), &selection));
    (edge, b)
}

/// For each of 30 keys, 5 requests: asserts each key sticks to one backend, and keys spread.
async fn assert_sticky(
    edge: &Edge,
    req: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) {
    let client = edge.client();
    let mut used = HashSet::new();
    for user in 0..30 {
        let key = format!("user-{user}");
        let mut seen = HashSet::new();
        for _ in 0..5 {
            let resp = req(&client, &key).send().await.expect("send");
            assert_eq!(resp.status(), 200);
            seen.insert(served_by(&resp));
        }
        assert_eq!(seen.len(), 1, "{key} moved between {seen:?}");
        used.extend(seen);
    }
    assert_eq!(used.len(), 3, "30 keys used only {used:?}");
}

/// Hashing on a header: one value always lands on one backend; values spread over all.
#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_by_header_is_sticky() {
    let (edge, _b) = hashed_edge("header:x-user");
    assert_sticky(&edge, |c, key| {
        c.get(edge.url("/api/x")).header("x-user", key)
    })
    .await;
}

/// Hashing on a cookie: the named cookie decides, whatever other cookies come with it.
#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_by_cookie_is_sticky() {
    let (edge, _b) = hashed_edge("cookie:session");
    let other = std::sync::atomic::AtomicUsize::new(0);
    assert_sticky(&edge, |c, key| {
        let n = other.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.get(edge.url("/api/x"))
            .header("cookie", format!("theme=t{n}; session={key}; lang=en"))
    })
    .await;
}

/// Hashing on the client ip: every request from 127.0.0.1 lands on one backend, and an
/// untrusted X-Forwarded-For cannot move it.
#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_by_ip_is_sticky_and_ignores_spoofing() {
    let (edge, _b) = hashed_edge("ip");
    let counts = spread(&edge, 30, |c, i| {
        c.get(edge.url("/api/x"))
            .header("x-forwarded-for", format!("10.0.{i}.1"))
    })
    .await;
    assert_eq!(counts.len(), 1, "{counts:?}");
}

/// A hash header missing from the request falls back to the client ip, which is stable.
#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_without_key_falls_back_to_client_ip() {
    let (edge, _b) = hashed_edge("header:x-user");
    let counts = spread(&edge, 20, |c, _| c.get(edge.url("/api/x"))).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
}
