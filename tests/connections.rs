//! Downstream connections: header deadlines (slowloris), keep-alive limits and timeouts, and
//! when a connection must close after a response.

#[allow(unused_imports)] // `Mode` is unused here
mod common;
use common::raw::*;
use common::*;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An edge with `setting` in its `server` section, and a kept-alive connection to it that
/// has been served one request (the backend's answer, 200, checked).
fn served_once(setting: &str) -> (Backend, Edge, KeepAlive) {
    let b = Backend::start("b1");
    let edge = Edge::start_with_server(setting, &api(&b, ""));
    let mut client = KeepAlive::new(edge.http);
    assert_eq!(client.get("/api/x").expect("response").status(), 200);
    (b, edge, client)
}

/// Dribbles one more header byte every ~300 ms on `tcp` until the edge cuts it off (closes
/// it, or answers before closing); returns how long after `since` that was, or `None` if the
/// connection is still open after 10 s. `between` runs after each byte, with the time so far.
fn dribble_until_cut_off(
    tcp: &mut TcpStream,
    since: Instant,
    mut between: impl FnMut(Duration),
) -> Option<Duration> {
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    while since.elapsed() < Duration::from_secs(10) {
        if tcp.write_all(b"a").is_err() {
            return Some(since.elapsed());
        }
        let mut buf = [0u8; 512];
        match tcp.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Closed, or a final error response before closing: either way, cut off.
            _ => return Some(since.elapsed()),
        }
        between(since.elapsed());
    }
    None
}

/// A client dribbling its header one byte every 300ms is cut off by `header_read_timeout`
/// (2s in the base config), while other connections are served normally.
#[test]
fn slowloris_is_disconnected_by_header_deadline() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut slow = connect(edge.http);
    slow.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .expect("write");
    let mut checked_others = false;
    let closed_after = dribble_until_cut_off(&mut slow, Instant::now(), |so_far| {
        if !checked_others && so_far > Duration::from_secs(1) {
            assert_eq!(get_status(edge.http, "/api/x"), 200);
            checked_others = true;
        }
    })
    .expect("slow client still connected after 10s");
    assert!(
        closed_after < Duration::from_secs(6),
        "closed after {closed_after:?}"
    );
    assert!(checked_others);
    assert_eq!(b.requests(), 1, "the dribbled request must not be proxied");
}

/// On a kept-alive connection the next request's header is due one header timeout (2s) after
/// its first byte: not counting the idle time before it (1.5s of a 5s keep-alive), not more.
#[test]
fn slowloris_on_a_reused_connection_is_cut_off_a_header_timeout_after_its_first_byte() {
    let (b, _edge, client) = served_once("keepalive_timeout: 5s");
    let mut tcp = client.reader.into_inner();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    tcp.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .expect("write");
    let closed_after = dribble_until_cut_off(&mut tcp, started, |_| {})
        .expect("slow client still connected after 10s");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_millis(4500),
        "closed {closed_after:?} after the header's first byte"
    );
    assert_eq!(b.requests(), 1, "the dribbled request must not be proxied");
}

/// A connection that sends nothing at all is also closed by the header deadline.
#[test]
fn idle_new_connection_is_closed_by_header_deadline() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut idle = connect(edge.http);
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let _ = idle.read(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// `server.keepalive_requests: 3` serves three requests on one connection, then closes it.
#[test]
fn keepalive_requests_caps_requests_per_connection() {
    let b = Backend::start("b1");
    let edge = Edge::start_with_server("keepalive_requests: 3", &api(&b, ""));
    let mut client = KeepAlive::new(edge.http);
    let mut served = 0;
    for _ in 0..10 {
        let Some(resp) = client.get("/api/x") else {
            break;
        };
        assert_eq!(resp.status(), 200);
        served += 1;
        if resp
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            break;
        }
    }
    assert_eq!(served, 3, "responses on one connection");
    let mut rest = Vec::new();
    let _ = client.reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "data after the last response");
}

/// Without a cap override, one keep-alive connection serves many requests.
#[test]
fn keepalive_connection_is_reused() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut client = KeepAlive::new(edge.http);
    for i in 0..20 {
        let resp = client
            .get("/api/x")
            .unwrap_or_else(|| panic!("closed after {i}"));
        assert_eq!(resp.status(), 200);
    }
}

/// An HTTP/1.0 request without `Connection: keep-alive` is answered, then the connection closes.
#[test]
fn http10_connection_closes_after_response() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut tcp = connect(edge.http);
    tcp.write_all(b"GET /api/x HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut reader = BufReader::new(tcp);
    let resp = read_response(&mut reader).expect("response");
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.header("connection"), Some("keep-alive"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "still open after {:?}",
        started.elapsed()
    );
}

/// An HTTP/1.0 client that asks for keep-alive gets it.
#[test]
fn http10_keepalive_is_honoured_when_asked() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut client = KeepAlive::new(edge.http);
    for _ in 0..3 {
        let resp = client
            .send(b"GET /api/x HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
            .expect("response");
        assert_eq!(resp.status(), 200);
    }
}

/// An idle keep-alive connection is closed once `keepalive_timeout` passes.
#[test]
fn idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let (_b, _edge, mut client) = served_once("keepalive_timeout: 1s");
    let idle = Instant::now();
    let mut rest = Vec::new();
    let _ = client.reader.read_to_end(&mut rest);
    let waited = idle.elapsed();
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(500),
        "closed after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(6),
        "still open after {waited:?}"
    );
}

/// Idle time counts against the keep-alive timeout, not the header timeout: a connection idle
/// past the header timeout (2s) but within its keep-alive (5s) serves its next request.
#[test]
fn keepalive_connection_idle_past_the_header_timeout_still_serves() {
    let (b, _edge, mut client) = served_once("keepalive_timeout: 5s");
    std::thread::sleep(Duration::from_millis(3000));
    let resp = client.get("/api/x").expect("the connection is still open");
    assert_eq!(resp.status(), 200);
    assert_eq!(b.requests(), 2);
}

/// A request with both Content-Length and Transfer-Encoding is served, but its connection is
/// not reused (the framing was ambiguous, so nothing after it can be trusted).
#[test]
fn content_length_with_chunked_closes_connection() {
    let b = Backend::start("b1");
    let edge = Edge::start(&api(&b, ""));
    let mut tcp = connect(edge.http);
    tcp.write_all(
        b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .expect("write");
    let mut reader = BufReader::new(tcp);
    let resp = read_response(&mut reader).expect("response");
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = serde_json::from_slice(&resp.body).expect("echo");
    assert_eq!(echo["body_bytes"], 3, "the chunked framing wins");
    assert!(echo["headers"].get("content-length").is_none(), "{echo}");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "still open after {:?}",
        started.elapsed()
    );
}
