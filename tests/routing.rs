//! The routing table end to end: segment-boundary prefixes, longest match, hosts,
//! prefix stripping, and path normalization before routing.
//!
//! Most requests go as raw bytes to the plaintext listener, so odd paths reach the edge exactly
//! as written (an HTTP client library would normalize them first).

#[allow(unused_imports)] // `Mode` is unused here
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response read off a raw connection.
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    /// The JSON object in the body (the first `{` to the last `}`, so chunk framing is ignored).
    fn json(&self) -> serde_json::Value {
        let (start, end) = (self.body.find('{'), self.body.rfind('}'));
        let (Some(start), Some(end)) = (start, end) else {
            panic!("no JSON in body: {:?}", self.body);
        };
        serde_json::from_str(&self.body[start..=end]).expect("JSON body")
    }

    /// Which demo backend answered (from its echo).
    fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or("").to_string()
    }

    /// The path the backend received (from its echo).
    fn upstream_path(&self) -> String {
        self.json()["path"].as_str().unwrap_or("").to_string()
    }
}

/// Sends `GET {target}` with `Host: {host}` over plaintext and reads the response to EOF.
fn get(addr: SocketAddr, target: &str, host: &str) -> Reply {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target}: {text:?}"));
    Reply {
        status,
        body: body.to_string(),
    }
}

/// One backend per group, named after it, and the routes every test here uses.
fn routing_edge() -> (Edge, Vec<Backend>) {
    let names = ["api", "v1", "admin", "public", "ha", "hb"];
    let backends: Vec<Backend> = names.iter().map(|n| Backend::start(*n)).collect();
    let mut body = String::from("upstreams:\n");
    for b in &backends {
        body += &format!("  {}: {{ backends: {} }}\n", b.name(), backend_list(&[b]));
    }
    body += r#"routes:
  - { name: api, match: { prefix: /api }, upstream: api }
  - { name: api-v1, match: { prefix: /api/v1 }, upstream: v1 }
  - { name: public, match: { prefix: /public }, upstream: public }
  - { name: admin, match: { prefix: /admin/ }, upstream: admin }
  - { name: host-a, match: { prefix: /h, host: a.test }, upstream: ha }
  - { name: host-b, match: { prefix: /h, host: "*.b.test" }, upstream: hb }
  - { name: strip, match: { prefix: /strip }, upstream: api, strip_prefix: true }
"#;
    (Edge::start(&body), backends)
}

/// Asserts a 404 JSON "no route" answer.
fn assert_no_route(r: &Reply, what: &str) {
    assert_eq!(r.status, 404, "{what}: {}", r.body);
    assert_eq!(r.json()["code"], 404, "{what}");
    assert_eq!(r.json()["message"], "no route", "{what}");
}

/// `/api` matches `/api`, `/api/` and `/api/x`, but never `/apix`.
#[test]
fn prefix_matches_on_segment_boundaries() {
    let (edge, backends) = routing_edge();
    for path in ["/api", "/api/", "/api/x/y"] {
        let r = get(edge.http, path, "localhost");
        assert_eq!((r.status, r.backend()), (200, "api".into()), "{path}");
    }
    assert_no_route(&get(edge.http, "/apix", "localhost"), "/apix");
    assert_no_route(&get(edge.http, "/", "localhost"), "/");
    assert_eq!(backends[0].requests(), 3);
}

/// A configured trailing slash (`/admin/`) is the same prefix as `/admin`.
#[test]
fn trailing_slash_prefix_matches_bare_path() {
    let (edge, _b) = routing_edge();
    for path in ["/admin", "/admin/", "/admin/users"] {
        let r = get(edge.http, path, "localhost");
        assert_eq!((r.status, r.backend()), (200, "admin".into()), "{path}");
    }
    assert_no_route(
        &get(edge.http, "/administrator", "localhost"),
        "/administrator",
    );
}

/// The longest matching prefix wins, still on segment boundaries.
#[test]
fn longest_prefix_wins() {
    let (edge, _b) = routing_edge();
    assert_eq!(get(edge.http, "/api/v1/users", "localhost").backend(), "v1");
    assert_eq!(get(edge.http, "/api/v1", "localhost").backend(), "v1");
    assert_eq!(get(edge.http, "/api/v10", "localhost").backend(), "api");
    assert_eq!(get(edge.http, "/api/x/v1", "localhost").backend(), "api");
}

/// Two routes with one prefix are told apart by Host (any case, port ignored, wildcard).
#[test]
fn host_selects_between_routes_with_same_prefix() {
    let (edge, _b) = routing_edge();
    assert_eq!(get(edge.http, "/h/x", "a.test").backend(), "ha");
    assert_eq!(get(edge.http, "/h/x", "A.Test:8080").backend(), "ha");
    assert_eq!(get(edge.http, "/h/x", "www.b.test").backend(), "hb");
    assert_no_route(&get(edge.http, "/h/x", "b.test"), "wildcard apex");
    assert_no_route(&get(edge.http, "/h/x", "other.test"), "unknown host");
    // Host-less routes still serve every host.
    assert_eq!(get(edge.http, "/api", "a.test").backend(), "api");
}

/// Host routing also works over HTTPS/h2, where the host is the `:authority`.
#[tokio::test(flavor = "multi_thread")]
async fn host_routing_uses_authority_over_h2() {
    let (edge, _b) = routing_edge();
    let client = client_builder(edge.https)
        .resolve("a.test", edge.https)
        .build()
        .expect("client");
    let url = format!("https://a.test:{}/h/x", edge.https.port());
    let resp = client.get(url).send().await.expect("send");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(served_by(&resp), "ha");
    let resp = client.get(edge.url("/apix")).send().await.expect("send");
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], 404);
}

/// `strip_prefix` removes the matched prefix and keeps the query; other routes keep the path.
#[test]
fn strip_prefix_rewrites_upstream_path() {
    let (edge, _b) = routing_edge();
    let cases = [
        ("/strip/x/y?q=1&r=2", "/x/y?q=1&r=2"),
        ("/strip", "/"),
        ("/strip/", "/"),
        ("/strip?q=1", "/?q=1"),
        ("/api/x?y=1", "/api/x?y=1"),
    ];
    for (sent, seen) in cases {
        let r = get(edge.http, sent, "localhost");
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(r.upstream_path(), seen, "{sent}");
    }
}

/// `..` is resolved before routing: `/api/../secret` does not reach the `/api` route.
#[test]
fn dot_segments_cannot_borrow_another_route() {
    let (edge, backends) = routing_edge();
    assert_no_route(
        &get(edge.http, "/api/../secret", "localhost"),
        "/api/../secret",
    );
    assert_no_route(&get(edge.http, "/api/./../secret", "localhost"), "./..");
    assert_no_route(&get(edge.http, "/api/..", "localhost"), "/api/..");
    assert_eq!(backends[0].requests(), 0, "the api backend was reached");
}

/// Encoded dot segments are decoded and resolved: `/public/%2e%2e/admin` goes to admin as `/admin`.
#[test]
fn encoded_dot_segments_route_by_normalized_path() {
    let (edge, backends) = routing_edge();
    for path in [
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin/",
        "/public/./../admin",
    ] {
        let r = get(edge.http, path, "localhost");
        assert_eq!(r.backend(), "admin", "{path}");
        assert!(r.upstream_path().starts_with("/admin"), "{path}");
        assert!(!r.upstream_path().contains(".."), "{path}");
    }
    assert_eq!(backends[3].requests(), 0, "the public backend was reached");
}

/// Empty segments collapse before routing and the backend sees the clean path.
#[test]
fn empty_segments_collapse() {
    let (edge, _b) = routing_edge();
    let r = get(edge.http, "//api//x///y?a=1//2", "localhost");
    assert_eq!(r.backend(), "api");
    assert_eq!(
        r.upstream_path(),
        "/api/x/y?a=1//2",
        "the query is left alone"
    );
}

/// `%2F` is a real slash for routing, so `/public%2F..%2Fadmin` cannot hide from the admin route.
#[test]
fn encoded_slash_is_decoded_before_routing() {
    let (edge, _b) = routing_edge();
    let r = get(edge.http, "/api%2Fx", "localhost");
    assert_eq!(
        (r.backend(), r.upstream_path()),
        ("api".into(), "/api/x".into())
    );
    let r = get(edge.http, "/public%2F..%2Fadmin", "localhost");
    assert_eq!(
        (r.backend(), r.upstream_path()),
        ("admin".into(), "/admin".into())
    );
    // Unreserved characters are decoded too, so `%61pi` is `api`.
    assert_eq!(get(edge.http, "/%61pi/x", "localhost").backend(), "api");
}

/// Paths the normalizer refuses get a 400 JSON error and never reach a backend.
#[test]
fn malformed_paths_are_rejected_with_400() {
    let (edge, backends) = routing_edge();
    for path in ["/api/%zz", "/api/%4", "/api/%00", "/../api", "/api/../../x"] {
        let r = get(edge.http, path, "localhost");
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(r.json()["code"], 400, "{path}");
    }
    let total: u64 = backends.iter().map(Backend::requests).sum();
    assert_eq!(total, 0, "a rejected path reached a backend");
}

/// Paths are case-sensitive: `/API` is not `/api`.
#[test]
fn prefix_match_is_case_sensitive() {
    let (edge, _b) = routing_edge();
    assert_no_route(&get(edge.http, "/API/x", "localhost"), "/API/x");
}

/// An absolute-form target whose host disagrees with Host is refused, so the router and the
/// backend cannot each pick a different one; when they agree it routes normally.
#[test]
fn absolute_form_target_with_conflicting_host_is_refused() {
    let (edge, backends) = routing_edge();
    let r = get(edge.http, "http://a.test/h/x", "www.b.test");
    assert_eq!(r.status, 400, "{}", r.body);
    let total: u64 = backends.iter().map(Backend::requests).sum();
    assert_eq!(total, 0, "a conflicting request reached a backend");
    assert_eq!(
        get(edge.http, "http://a.test/h/x", "a.test").backend(),
        "ha"
    );
}
