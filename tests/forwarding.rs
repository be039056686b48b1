//! What the backend is told about the client (X-Forwarded-*, X-Request-Id), and the plaintext
//! listeners: serving ones proxy with `X-Forwarded-Proto: http`, redirecting ones answer 308.

#[allow(unused_imports)] // `Mode` is unused here
mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn api(b: &Backend, extra: &str) -> String {
    format!(
        "{extra}\nupstreams:\n  api: {{ backends: {} }}\nroutes:\n  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}\n",
        backend_list(&[b])
    )
}

/// Sends raw bytes and reads the whole response (the request must ask to close).
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A header of a raw response (case-insensitive name).
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The demo backend's echo of the request headers it received.
async fn echoed(resp: reqwest::Response) -> serde_json::Value {
    let body: serde_json::Value = resp.json().await.expect("json echo");
    body["headers"].clone()
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Over HTTPS the backend gets X-Forwarded-For/Proto/Host and the X-Request-Id that the client
/// also gets back.
#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_reach_backend() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 200);
    let returned = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let h = echoed(resp).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    let host = format!("localhost:{}", edge.https.port());
    assert_eq!(h["x-forwarded-host"], host.as_str());
    assert_eq!(
        h["host"],
        host.as_str(),
        "h2 :authority becomes Host upstream"
    );
    assert!(is_generated_id(&returned), "{returned}");
    assert_eq!(h["x-request-id"], returned.as_str());
}

/// Every request gets its own id.
#[tokio::test(flavor = "multi_thread")]
async fn request_ids_are_unique() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let client = edge.client();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let resp = client.get(edge.url("/api/x")).send().await.expect("send");
        ids.insert(
            resp.headers()["x-request-id"]
                .to_str()
                .expect("ascii")
                .to_string(),
        );
    }
    assert_eq!(ids.len(), 20);
}

/// An untrusted peer's X-Forwarded-For and X-Request-Id are replaced, not passed on.
#[tokio::test(flavor = "multi_thread")]
async fn untrusted_peer_cannot_set_forwarding_headers() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let resp = edge
        .client()
        .get(edge.url("/api/x"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "client-chosen-id")
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .expect("send");
    let returned = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_ne!(returned, "client-chosen-id");
    assert!(is_generated_id(&returned), "{returned}");
    let h = echoed(resp).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-request-id"], returned.as_str());
    assert_eq!(h["x-forwarded-proto"], "https");
}

/// From a trusted proxy, X-Forwarded-For is extended and a well-formed X-Request-Id is kept.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_peer_forwarding_headers_are_kept_and_extended() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, "trusted_proxies: [\"127.0.0.1/32\"]"));
    let resp = edge
        .client()
        .get(edge.url("/api/x"))
        .header("x-forwarded-for", "6.6.6.6, 10.1.2.3")
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-id");
    let h = echoed(resp).await;
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-request-id"], "client-chosen-id");
}

/// Even from a trusted proxy, an oversized request id is replaced by a generated one.
#[tokio::test(flavor = "multi_thread")]
async fn trusted_peer_malformed_request_id_is_replaced() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, "trusted_proxies: [\"127.0.0.0/8\"]"));
    let long = "a".repeat(200);
    let resp = edge
        .client()
        .get(edge.url("/api/x"))
        .header("x-request-id", long.as_str())
        .send()
        .await
        .expect("send");
    let returned = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(is_generated_id(&returned), "{returned}");
    assert_eq!(echoed(resp).await["x-request-id"], returned.as_str());
}

/// Error responses the edge writes itself also carry the request id.
#[tokio::test(flavor = "multi_thread")]
async fn edge_errors_carry_request_id() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let resp = edge.get("/nowhere").await;
    assert_eq!(resp.status(), 404);
    let id = resp.headers()["x-request-id"].to_str().expect("ascii");
    assert!(is_generated_id(id), "{id}");
}

/// Hop-by-hop headers, including those named in Connection, stop at the edge.
#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let resp = raw(
        edge.http,
        "GET /api/x HTTP/1.1\r\nHost: example.test\r\nConnection: close, x-private\r\n\
         X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         TE: trailers\r\nX-Kept: yes\r\n\r\n",
    );
    let echo: serde_json::Value =
        serde_json::from_str(resp[resp.find('{').expect("json")..].trim()).expect("echo");
    let h = &echo["headers"];
    for name in ["x-private", "keep-alive", "proxy-connection", "te"] {
        assert!(h.get(name).is_none(), "{name} was forwarded: {h}");
    }
    assert_eq!(h["x-kept"], "yes");
}

/// A 1 MiB request body reaches the backend whole, and a 3 MB response reaches the client whole.
#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_pass_through_intact() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let client = edge.client();
    let resp = client
        .post(edge.url("/api/upload"))
        .body(vec![b'z'; 1 << 20])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.expect("echo");
    assert_eq!(echo["body_bytes"], 1 << 20);
    let resp = client
        .get(edge.url("/api/download?size=3000000"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.expect("body");
    assert_eq!(body.len(), 3_000_000);
    assert!(body.iter().all(|&c| c == b'x'));
}

/// A client that accepts gzip gets the backend's text body as the backend sent it: Tollgate
/// does not compress, and forwards `Accept-Encoding` for the backend to decide.
#[test]
fn responses_are_not_compressed_by_the_edge() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let resp = raw(
        edge.http,
        "GET /api/x?size=20000 HTTP/1.1\r\nHost: example.test\r\nAccept-Encoding: gzip, br\r\n\
         Connection: close\r\n\r\n",
    );
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "{}",
        &resp[..resp.len().min(200)]
    );
    assert_eq!(header(&resp, "content-encoding"), None);
    assert_eq!(header(&resp, "content-length"), Some("20000"));
    let body = &resp[resp.find("\r\n\r\n").expect("head") + 4..];
    assert_eq!(body.len(), 20_000);
    assert!(body.bytes().all(|c| c == b'x'));
}

/// A serving plaintext listener proxies and tells the backend `X-Forwarded-Proto: http`.
#[test]
fn plaintext_listener_proxies_with_proto_http() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let resp = raw(
        edge.http,
        "GET /api/x?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(header(&resp, "x-backend"), Some("b1"));
    let body = &resp[resp.find('{').expect("json")..];
    let echo: serde_json::Value = serde_json::from_str(body.trim()).expect("echo");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echo["headers"]["x-forwarded-host"], "example.test");
    assert_eq!(echo["headers"]["host"], "example.test");
    assert_eq!(echo["path"], "/api/x?q=1");
}

/// An HTTP/1.0 absolute-form request without Host: the backend gets Host and
/// X-Forwarded-Host from the target's authority.
#[test]
fn absolute_form_target_without_host_names_the_host() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let resp = raw(edge.http, "GET http://example.test/api/x HTTP/1.0\r\n\r\n");
    assert!(
        resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
        "{resp}"
    );
    let body = &resp[resp.find('{').expect("json")..];
    let echo: serde_json::Value = serde_json::from_str(body.trim()).expect("echo");
    assert_eq!(echo["headers"]["host"], "example.test");
    assert_eq!(echo["headers"]["x-forwarded-host"], "example.test");
}

/// Base listeners with the plaintext one switched to redirecting.
fn redirect_edge(b: &Backend) -> Edge {
    Edge::start_with(|p| {
        let plain = format!("    address: \"{}\"\n", p.http);
        let base = base_config(p);
        assert!(base.contains(&plain), "base config changed shape");
        let redirecting = format!("{plain}    redirect_https: true\n");
        base.replacen(&plain, &redirecting, 1) + &api(b, "")
    })
}

/// `redirect_https: true` answers 308 to the same host, path and query on the https port.
#[test]
fn redirect_listener_answers_308_to_https() {
    let b = Backend::start("b1");
    let edge = redirect_edge(&b);
    let resp = raw(
        edge.http,
        "GET /api/x?q=1&r=%20 HTTP/1.1\r\nHost: example.test:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    let want = format!("https://example.test:{}/api/x?q=1&r=%20", edge.https.port());
    assert_eq!(header(&resp, "location"), Some(want.as_str()));
    // POST is redirected the same way (308 keeps the method), and nothing is proxied.
    let resp = raw(
        edge.http,
        "POST /api/y HTTP/1.1\r\nHost: example.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    let want = format!("https://example.test:{}/api/y", edge.https.port());
    assert_eq!(header(&resp, "location"), Some(want.as_str()));
    assert_eq!(b.requests(), 0);
}

/// A redirect request without a usable Host gets a 400 JSON error, not a redirect to a bogus URL.
#[test]
fn redirect_without_usable_host_is_400() {
    let b = Backend::start("b1");
    let edge = redirect_edge(&b);
    for host in ["", "Host: \r\n", "Host: evil.test/path\r\n"] {
        let resp = raw(
            edge.http,
            &format!("GET /x HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{host:?}: {resp}");
        assert!(header(&resp, "location").is_none(), "{resp}");
        assert!(
            resp.ends_with(r#"{"code":400,"message":"missing host"}"#),
            "{resp}"
        );
    }
}

/// A redirected HTTP/1.0 request (no keep-alive asked) gets its 308 and the connection closes.
#[test]
fn redirect_closes_http10_connection() {
    let b = Backend::start("b1");
    let edge = redirect_edge(&b);
    let started = std::time::Instant::now();
    let resp = raw(edge.http, "GET /x HTTP/1.0\r\nHost: example.test\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 308"), "{resp}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "open for {:?}",
        started.elapsed()
    );
}

/// Header names go on in their canonical case by default (`Content-Type`, lowercase for
/// unknown names) and exactly as received with `server.header_case: preserve`, both ways.
#[test]
fn header_names_are_normalized_unless_case_is_preserved() {
    const RESPONSE: &str =
        "HTTP/1.1 200 OK\r\nCONTENT-type: text/plain\r\nX-Backend-Thing: a\r\nContent-Length: 2\r\n\r\nok";
    let request =
        "GET /api/x HTTP/1.1\r\nHOST: example.test\r\nx-CUSTOM-req: 1\r\nConnection: close\r\n\r\n";
    for (preserve, request_lines, response_lines) in [
        (
            false,
            ["Host: example.test", "x-custom-req: 1"],
            ["Content-Type: text/plain", "x-backend-thing: a"],
        ),
        (
            true,
            ["HOST: example.test", "x-CUSTOM-req: 1"],
            ["CONTENT-type: text/plain", "X-Backend-Thing: a"],
        ),
    ] {
        let backend = common::raw::FixedBackend::start(RESPONSE);
        let edge = if preserve {
            Edge::start_with_server("header_case: preserve", &backend.config())
        } else {
            Edge::start(&backend.config())
        };
        let response = raw(edge.http, request);
        let upstream = backend.next_head();
        let sent: Vec<&str> = upstream.lines().map(str::trim_end).collect();
        let got: Vec<&str> = response.lines().map(str::trim_end).collect();
        for line in request_lines {
            assert!(
                sent.contains(&line),
                "preserve={preserve}: {line:?} not in {sent:?}"
            );
        }
        for line in response_lines {
            assert!(
                got.contains(&line),
                "preserve={preserve}: {line:?} not in {got:?}"
            );
        }
    }
}
