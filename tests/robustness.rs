//! Upstream failures and malformed input: the edge answers with a clean error or hangs up,
//! never stalls or falls over, and keeps serving everyone else.

#[allow(unused_imports)] // the harness re-exports more than each file uses
mod common;
use common::raw::*;
use common::*;
use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A POST whose backend never answers gets a 504 JSON error within the read timeout.
#[tokio::test(flavor = "multi_thread")]
async fn post_to_hung_backend_times_out_with_504() {
    let b = Backend::start("slow");
    b.set_mode(Mode::Hang);
    let edge = Edge::start(&api(&b, "    timeouts: { read: 300ms }"));
    let started = Instant::now();
    let resp = edge
        .client()
        .post(edge.url("/api/x"))
        .body("payload")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], 504);
    // A POST is not retried after it was sent.
    assert_eq!(b.requests(), 1);
}

/// A backend that resets the connection instead of answering gets the client a 502 JSON error:
/// after a POST (Pingora's duplex loop) and after a GET (the single loop of a request without a
/// body).
#[tokio::test(flavor = "multi_thread")]
async fn backend_reset_gives_502_json() {
    for (mode, post) in [(Mode::ResetAfterBody, true), (Mode::Reset, false)] {
        let b = Backend::start("rst");
        b.set_mode(mode);
        let edge = Edge::start(&api(&b, ""));
        let client = edge.client();
        let request = if post {
            client.post(edge.url("/api/x")).body("payload")
        } else {
            client.get(edge.url("/api/x"))
        };
        let resp = request.send().await.expect("send");
        assert_eq!(resp.status(), 502, "post: {post}");
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["code"], 502);
    }
}

/// Sends `bytes` on a fresh connection; returns the response, or `None` for a close.
fn probe(addr: SocketAddr, bytes: &[u8]) -> Option<Response> {
    let tcp = connect(addr);
    let mut writer = tcp.try_clone().expect("clone");
    // The server may hang up mid-write on a large request: that is an answer too.
    let _ = writer.write_all(bytes);
    let mut reader = BufReader::new(tcp);
    let started = Instant::now();
    let resp = read_response(&mut reader);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "no answer and no close: the connection hung"
    );
    resp
}

/// Malformed requests get a 4xx or a closed connection, never reach the backend, and the edge
/// keeps serving normal requests after each.
#[test]
fn malformed_requests_are_refused_without_harm() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let huge = "a".repeat(2 * 1024 * 1024);
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\x01\x02garbage\xff\xfe\r\n\r\n".to_vec()),
        (
            "tls to plaintext",
            b"\x16\x03\x01\x00\x05hello\r\n\r\n".to_vec(),
        ),
        (
            "bad method",
            b"G(E)T /api/x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("no version", b"GET /api/x\r\nHost: x\r\n\r\n".to_vec()),
        (
            "bad version",
            b"GET /api/x HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "nul in path",
            b"GET /api/\x00x HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "space in header name",
            b"GET /api/x HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n".to_vec(),
        ),
        (
            "bad content-length",
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        ),
        (
            "negative content-length",
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        ),
        (
            "conflicting content-lengths",
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
                .to_vec(),
        ),
        (
            "header over 1MiB",
            format!("GET /api/x HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").into_bytes(),
        ),
        (
            "500 headers",
            format!("GET /api/x HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
        ),
    ];
    let mut report = Vec::new();
    for (name, bytes) in &cases {
        let before = b.requests();
        let resp = probe(edge.http, bytes);
        let answer = resp.as_ref().map(Response::status);
        let refused = answer.is_none_or(|s| (400..500).contains(&s));
        // The demo backend's own 4xx (e.g. 431) carries X-Backend.
        let from_backend = resp.is_some_and(|r| r.header("x-backend").is_some());
        let reached = b.requests() != before || from_backend;
        if !refused || reached {
            report.push(format!(
                "{name}: answer {answer:?}, reached backend: {reached}"
            ));
        }
        assert_eq!(
            get_status(edge.http, "/api/x"),
            200,
            "edge unwell after {name}"
        );
    }
    assert!(report.is_empty(), "{report:#?}");
}

/// A header over the 64 KiB default limit gets 431 JSON from the edge itself, never reaches
/// the backend, and the edge keeps serving.
#[test]
fn header_over_limit_gets_431_at_the_edge() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let big = "a".repeat(70 * 1024);
    let req =
        format!("GET /api/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let resp = probe(edge.http, req.as_bytes()).expect("an answer, not a close");
    assert_eq!(resp.status(), 431, "{}", resp.head);
    let body: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(body["code"], 431);
    assert_eq!(b.requests(), 0, "the backend was reached");
    assert_eq!(get_status(edge.http, "/api/x"), 200);
}

/// `server.max_request_header_size` moves the limit: with 8 KiB, a 9 KiB header gets 431 and
/// a 7 KiB one is forwarded; many small fields count together.
#[test]
fn configured_header_limit_counts_the_whole_header() {
    let b = Backend::start("b1");
    let edge = Edge::start_with(|p| {
        let base =
            base_config(p).replace("server:\n", "server:\n  max_request_header_size: 8KiB\n");
        base + &api(&b, "")
    });
    let send = |fields: &str| {
        let req = format!("GET /api/x HTTP/1.1\r\nHost: x\r\n{fields}Connection: close\r\n\r\n");
        probe(edge.http, req.as_bytes()).map_or(0, |r| r.status())
    };
    assert_eq!(send(&format!("X-Big: {}\r\n", "a".repeat(9 * 1024))), 431);
    assert_eq!(send(&format!("X-Big: {}\r\n", "a".repeat(7 * 1024))), 200);
    let many: String = (0..100)
        .map(|i| format!("X-F{i}: {}\r\n", "b".repeat(90)))
        .collect();
    assert_eq!(send(&many), 431, "100 fields of ~100 bytes");
    assert_eq!(
        b.requests(),
        1,
        "only the 7 KiB request reached the backend"
    );
}

/// A repeated Content-Length (`3, 3`) is either refused or forwarded as one value, never passed
/// on verbatim (RFC 9110 section 8.6 forbids forwarding it).
#[test]
fn repeated_content_length_is_not_forwarded_verbatim() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut tcp = connect(edge.http);
    tcp.write_all(
        b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\nabc",
    )
    .expect("write");
    let resp = read_response(&mut BufReader::new(tcp)).expect("response");
    match resp.status() {
        400 => {
            // The demo backend's own 400 would carry X-Backend; the edge must refuse it itself.
            assert_eq!(
                resp.header("x-backend"),
                None,
                "the backend saw it: {}",
                resp.head
            );
            assert_eq!(b.connections(), 0, "the backend saw it");
        }
        200 => {
            let echo: serde_json::Value = serde_json::from_slice(&resp.body).expect("echo");
            assert_eq!(echo["headers"]["content-length"], "3");
        }
        other => panic!("unexpected status {other}: {}", resp.head),
    }
}
