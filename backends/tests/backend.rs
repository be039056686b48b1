//! Black-box tests of the demo backend over real sockets on 127.0.0.1.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_demo_backend::{Backend, Mode};

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// Reads one response (Content-Length framed; no body for HEAD).
fn read_response(r: &mut impl BufRead, head: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header line");
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if !head {
        let len: usize = resp
            .header("content-length")
            .map_or(0, |v| v.parse().expect("len"));
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body)?;
    }
    Ok(resp)
}

struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(b: &Backend) -> Client {
        let s = TcpStream::connect(b.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Client {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.r.get_mut().write_all(raw).expect("write");
    }

    fn request(&mut self, raw: &str) -> Response {
        self.send(raw.as_bytes());
        read_response(&mut self.r, raw.starts_with("HEAD ")).expect("response")
    }

    /// True if the server closes (EOF or reset) without sending anything more.
    fn closed_silently(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.r.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }
}

fn get(b: &Backend, target: &str) -> Response {
    Client::connect(b).request(&format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n"))
}

/// A normal request is echoed as JSON: backend, method, exact target, lower-cased headers (repeats joined), body size.
#[test]
fn normal_echo() {
    let b = Backend::start("api-1");
    let resp = Client::connect(&b).request(
        "GET /x?y=1&z=%20 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\nX-Dup: a\r\nx-dup: b\r\nX-Q: \"q\\\"\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let j = resp.json();
    assert_eq!(j["backend"], "api-1");
    assert_eq!(j["method"], "GET");
    assert_eq!(j["path"], "/x?y=1&z=%20");
    assert_eq!(j["headers"]["x-forwarded-for"], "10.0.0.1");
    assert_eq!(j["headers"]["x-dup"], "a, b");
    assert_eq!(j["headers"]["x-q"], "\"q\\\"");
    assert_eq!(j["headers"]["host"], "t");
    assert_eq!(j["body_bytes"], 0);
    assert_eq!(b.requests(), 1);
    assert_eq!(b.name(), "api-1");
}

/// Every kind of response (echo, status mode, healthz, 400) carries X-Backend.
#[test]
fn x_backend_header_everywhere() {
    let b = Backend::start("static-1");
    assert_eq!(get(&b, "/").header("x-backend"), Some("static-1"));
    assert_eq!(get(&b, "/healthz").header("x-backend"), Some("static-1"));
    b.set_mode(Mode::Status(502));
    assert_eq!(get(&b, "/").header("x-backend"), Some("static-1"));
    let bad = Client::connect(&b).request("NOT A REQUEST\r\n\r\n");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("x-backend"), Some("static-1"));
}

/// Two requests (one a pipelined POST) share one connection: connections()==1, requests()==3.
#[test]
fn keep_alive_reuses_connection() {
    let b = Backend::start("ka");
    let mut c = Client::connect(&b);
    assert_eq!(c.request("GET /a HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    c.send(b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = read_response(&mut c.r, false).expect("second");
    assert_eq!(r.json()["body_bytes"], 5);
    assert_eq!(
        read_response(&mut c.r, false).expect("third").json()["path"],
        "/c"
    );
    assert_eq!(b.connections(), 1);
    assert_eq!(b.requests(), 3);
}

/// `Connection: close` and plain HTTP/1.0 close after the response; HTTP/1.0 keep-alive stays open.
#[test]
fn connection_close_and_http10() {
    let b = Backend::start("cc");
    let mut c = Client::connect(&b);
    let r = c.request("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_silently());

    let mut c = Client::connect(&b);
    c.request("GET / HTTP/1.0\r\n\r\n");
    assert!(c.closed_silently());

    let mut c = Client::connect(&b);
    let r = c.request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(
        c.request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .status,
        200
    );
}

/// HEAD gets the GET headers (including Content-Length) but no body.
#[test]
fn head_has_no_body() {
    let b = Backend::start("h");
    let mut c = Client::connect(&b);
    let r = c.request("HEAD /?size=10 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    // The next response must start right away: no stray body bytes.
    assert_eq!(
        c.request("GET /?size=3 HTTP/1.1\r\nHost: t\r\n\r\n").body,
        b"xxx"
    );
}

/// Mode::Status answers that code with a small JSON body; Normal restores the echo.
#[test]
fn mode_status() {
    let b = Backend::start("s");
    b.set_mode(Mode::Status(503));
    let r = get(&b, "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], 503);
    assert_eq!(r.json()["backend"], "s");
    b.set_mode(Mode::Normal);
    assert_eq!(get(&b, "/").status, 200);
    assert_eq!(b.requests(), 2);
}

/// Mode::Delay waits before answering normally.
#[test]
fn mode_delay() {
    let b = Backend::start("d");
    b.set_mode(Mode::Delay(Duration::from_millis(150)));
    let t = Instant::now();
    assert_eq!(get(&b, "/").status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

/// Mode::Hang reads the request, never answers, and the socket stays open until stop().
#[test]
fn mode_hang_until_stop() {
    let b = Backend::start("hang");
    b.set_mode(Mode::Hang);
    let mut c = Client::connect(&b);
    c.r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut byte = [0u8; 1];
    let err = c.r.read(&mut byte).expect_err("no answer");
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert_eq!(b.requests(), 1);
    b.stop();
    c.r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(c.closed_silently());
}

/// Mode::Reset closes after the headers, without reading the body or answering; still counted.
#[test]
fn mode_reset() {
    let b = Backend::start("r");
    b.set_mode(Mode::Reset);
    let mut c = Client::connect(&b);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    assert!(c.closed_silently());
    assert_eq!(b.requests(), 1);
}

/// Mode::ResetAfterBody reads the whole body, counts the request, then closes without answering.
#[test]
fn mode_reset_after_body() {
    let b = Backend::start("rab");
    b.set_mode(Mode::ResetAfterBody);
    let mut c = Client::connect(&b);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(b.requests(), 1, "counted once headers are read");
    c.send(b"cd");
    assert!(c.closed_silently());
}

/// Query overrides: status, sleep_ms, hang, and size=1 MiB of 'x'.
#[test]
fn query_overrides() {
    let b = Backend::start("q");
    let r = get(&b, "/any?status=418");
    assert_eq!((r.status, r.json()["status"].as_u64()), (418, Some(418)));
    let t = Instant::now();
    assert_eq!(get(&b, "/?sleep_ms=100").status, 200);
    assert!(t.elapsed() >= Duration::from_millis(100));
    let r = get(&b, "/?size=1048576");
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body.iter().all(|&x| x == b'x'));
    assert_eq!(get(&b, "/?status=abc").status, 400);

    let mut c = Client::connect(&b);
    c.r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    c.send(b"GET /?hang=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(c.r.read(&mut [0u8; 1]).is_err(), "hang=1 never answers");
}

/// /healthz toggles 200/503, ignores Mode, and is counted apart from requests().
#[test]
fn healthz_toggle() {
    let b = Backend::start("hz");
    b.set_mode(Mode::Reset);
    let r = get(&b, "/healthz");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    b.set_healthy(false);
    assert_eq!(get(&b, "/healthz").status, 503);
    b.set_healthy(true);
    assert_eq!(get(&b, "/healthz").status, 200);
    assert_eq!(b.healthz_requests(), 3);
    assert_eq!(b.requests(), 0);
}

/// stop() closes the listener (connect refused) and open keep-alive connections.
#[test]
fn stop_refuses_connections() {
    let b = Backend::start("stop");
    let mut idle = Client::connect(&b);
    assert_eq!(
        idle.request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
    b.stop();
    let err = TcpStream::connect(b.addr()).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(idle.closed_silently());
    b.stop(); // idempotent
}

/// restart() serves on the same address again, keeping counters and mode.
#[test]
fn restart_keeps_counters() {
    let b = Backend::start("re");
    get(&b, "/");
    let addr = b.addr();
    b.set_mode(Mode::Status(500));
    b.stop();
    b.restart().expect("restart");
    assert_eq!(b.addr(), addr);
    assert_eq!(get(&b, "/").status, 500);
    assert_eq!(b.requests(), 2);
    assert_eq!(b.connections(), 2);
    b.restart().expect("restart while running");
    assert_eq!(get(&b, "/").status, 500);
}

/// A chunked POST body (with extensions and trailers) is read and its size reported; keep-alive continues.
#[test]
fn chunked_body_counted() {
    let b = Backend::start("ch");
    let mut c = Client::connect(&b);
    let r = c.request(
        "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert_eq!(r.json()["body_bytes"], 15);
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(c.request("GET / HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    assert_eq!(b.connections(), 1);
}

/// Expect: 100-continue gets an interim 100 before the body is sent.
#[test]
fn expect_continue() {
    let b = Backend::start("ec");
    let mut c = Client::connect(&b);
    c.send(b"PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(read_response(&mut c.r, true).expect("100").status, 100);
    c.send(b"abc");
    assert_eq!(
        read_response(&mut c.r, false).expect("final").json()["body_bytes"],
        3
    );
}

/// Malformed requests get 400 (431 for oversized heads) and the connection is closed.
#[test]
fn malformed_requests_rejected() {
    let b = Backend::start("bad");
    for (raw, code) in [
        ("GARBAGE\r\n\r\n".to_owned(), 400),
        ("GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(), 400),
        (
            "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_owned(),
            400,
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
            400,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_owned(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(70_000)),
            431,
        ),
    ] {
        let mut c = Client::connect(&b);
        c.send(raw.as_bytes());
        let r = read_response(&mut c.r, false).expect("error response");
        assert_eq!(r.status, code, "for {:?}", &raw[..raw.len().min(60)]);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed_silently());
    }
}

/// Dropping the last handle shuts the instance down: its port stops accepting.
#[test]
fn drop_shuts_down() {
    let b = Backend::start("gone");
    let addr = b.addr();
    let clone = b.clone();
    drop(b);
    assert_eq!(get(&clone, "/").status, 200, "a clone keeps it alive");
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after drop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Handles work from inside a tokio runtime: spawn, serve and a blocking stop() do not deadlock.
#[tokio::test]
async fn works_inside_tokio_runtime() {
    let b = Backend::start("rt");
    let b2 = b.clone();
    let status = tokio::task::spawn_blocking(move || get(&b2, "/").status)
        .await
        .expect("join");
    assert_eq!(status, 200);
    b.stop();
    b.restart().expect("restart");
    b.stop();
    assert!(TcpStream::connect(b.addr()).is_err());
}

/// TLS serving: handshake with a generated cert, ALPN http/1.1, echo over TLS.
#[test]
fn tls_serving() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = Backend::spawn_tls(
        listener,
        "tls-1",
        &ck.cert.pem(),
        &ck.key_pair.serialize_pem(),
    )
    .expect("spawn_tls");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(b.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /secure HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut r = BufReader::new(tls);
    let resp = read_response(&mut r, false).expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-backend"), Some("tls-1"));
    assert_eq!(resp.json()["path"], "/secure");
    assert_eq!(r.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));

    assert!(Backend::spawn_tls(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        "x",
        "junk",
        "junk"
    )
    .is_err());
}
