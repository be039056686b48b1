//! Upstream keep-alive: idle connections to backends are reused, never reused once closed or
//! past their idle timeout, and closed by the edge when that timeout passes.

#[allow(unused_imports)] // `Mode` is unused here
mod common;
use common::raw::*;
use common::*;
use std::time::Duration;

/// The status of `GET /api/x` on the client's one connection. The edge reads each request on
/// it only after the previous one has finished, its upstream connection back in the pool;
/// requests on new client connections could overtake that and open a second upstream
/// connection.
fn status(client: &mut KeepAlive) -> u16 {
    client.get("/api/x").expect("response").status()
}

/// Sequential requests through the edge travel over one pooled upstream connection.
#[test]
fn sequential_requests_reuse_one_upstream_connection() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut client = KeepAlive::new(edge.http);
    for _ in 0..20 {
        assert_eq!(status(&mut client), 200);
    }
    assert_eq!(b.requests(), 20);
    assert_eq!(b.connections(), 1, "upstream connections opened");
}

/// A pooled connection the backend has closed is not used: the next request opens a new one
/// and succeeds.
#[test]
fn upstream_connection_closed_by_the_backend_is_not_reused() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut client = KeepAlive::new(edge.http);
    assert_eq!(status(&mut client), 200);
    b.restart().expect("restart"); // closes the pooled connection from the backend's side
    std::thread::sleep(Duration::from_millis(200)); // the edge's reactor sees the FIN
    for _ in 0..3 {
        assert_eq!(status(&mut client), 200);
    }
    assert_eq!(b.connections(), 2, "one new connection after the close");
}

/// An idle upstream connection past its idle timeout is closed by the edge, and the next
/// request opens a new one.
#[test]
fn idle_upstream_connection_is_closed_after_its_idle_timeout() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, "    timeouts: { idle: 500ms }"));
    let mut client = KeepAlive::new(edge.http);
    assert_eq!(status(&mut client), 200);
    assert_eq!(b.open_connections(), 1, "pooled after the response");
    // The pool's sweeper runs once a second: closed within idle timeout + one period.
    assert!(
        wait_for(Duration::from_secs(5), || b.open_connections() == 0),
        "the idle upstream connection is still open"
    );
    assert_eq!(status(&mut client), 200);
    assert_eq!(b.connections(), 2, "a new connection after the timeout");
}

/// A connection idle for less than its timeout stays pooled and is reused.
#[test]
fn idle_upstream_connection_within_its_timeout_is_reused() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, "    timeouts: { idle: 30s }"));
    let mut client = KeepAlive::new(edge.http);
    assert_eq!(status(&mut client), 200);
    std::thread::sleep(Duration::from_millis(2500)); // two sweeps
    assert_eq!(b.open_connections(), 1);
    assert_eq!(status(&mut client), 200);
    assert_eq!(b.connections(), 1, "the pooled connection was reused");
}

/// The backend's say on reuse is kept: `Connection: close`, and an HTTP/1.0 response without
/// keep-alive, make the edge open a new connection per request although the backend leaves
/// the old one open; `Keep-Alive` and HTTP/1.1 by default keep one connection.
#[test]
fn backend_response_decides_whether_its_connection_is_reused() {
    for (response, connections) in [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            3,
        ),
        ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 3),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
            1,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=30\r\n\r\nok",
            1,
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1),
    ] {
        let backend = FixedBackend::start(response);
        let edge = Edge::start(&backend.config());
        let mut client = KeepAlive::new(edge.http);
        for _ in 0..3 {
            assert_eq!(status(&mut client), 200, "{response:?}");
        }
        assert_eq!(
            backend.connections(),
            connections,
            "upstream connections for {response:?}"
        );
    }
}
