//! TLS termination end to end: protocol versions, ALPN, and certificate selection by SNI.

#[allow(unused_imports)] // `Mode` is unused here
mod common;
use common::accept_any::AcceptAny;
use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A client config limited to `versions`, offering `alpn`.
fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A completed handshake with `addr` as `server_name` (an IP address sends no SNI).
fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> rustls::StreamOwned<ClientConnection, TcpStream> {
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let conn = ClientConnection::new(config, name).expect("client connection");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("TLS handshake failed");
    }
    tls
}

/// Sends one HTTP/1.1 request over `tls` and returns the whole response as text.
fn http1_get(tls: &mut rustls::StreamOwned<ClientConnection, TcpStream>, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).expect("write");
    let mut out = Vec::new();
    // The server may close without close_notify; what was read so far is the response.
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// DNS names in the subjectAltName of the certificate the server presented.
fn served_names(tls: &rustls::StreamOwned<ClientConnection, TcpStream>) -> Vec<String> {
    use x509_parser::prelude::*;
    let certs = tls.conn.peer_certificates().expect("peer certificates");
    let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).expect("parse certificate");
    let san = cert
        .subject_alternative_name()
        .expect("san extension")
        .expect("san present");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// The protocol ALPN settles on when a client offers `offers` (handshake off the async runtime).
async fn alpn(addr: SocketAddr, offers: &'static [&'static [u8]]) -> Option<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let tls = handshake(
            addr,
            client_config(rustls::ALL_VERSIONS, offers),
            "localhost",
        );
        tls.conn.alpn_protocol().map(<[u8]>::to_vec)
    })
    .await
    .expect("join")
}

fn api_edge(backend: &Backend) -> Edge {
    Edge::start(&raw::api(backend, ""))
}

/// A TLS 1.3-only client completes the handshake and gets a proxied response.
#[test]
fn tls13_handshake_succeeds() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    let config = client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
    let mut tls = handshake(edge.https, config, "localhost");
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let resp = http1_get(&mut tls, "/api/x");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.requests(), 1);
}

/// A TLS 1.2-only client completes the handshake and gets a proxied response.
#[test]
fn tls12_handshake_succeeds() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    let config = client_config(&[&rustls::version::TLS12], &[b"http/1.1"]);
    let mut tls = handshake(edge.https, config, "localhost");
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let resp = http1_get(&mut tls, "/api/x");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// A client offering both versions gets TLS 1.3, the best the server supports.
#[test]
fn tls13_is_preferred_when_both_are_offered() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    let config = client_config(
        &[&rustls::version::TLS12, &rustls::version::TLS13],
        &[b"http/1.1"],
    );
    let tls = handshake(edge.https, config, "localhost");
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

/// A hand-written TLS 1.1 ClientHello gets an alert or a close, never a ServerHello.
#[test]
fn tls11_client_hello_is_refused() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    // A ClientHello a TLS 1.1 client would send: legacy_version 3.2, no supported_versions
    // extension, but otherwise acceptable (suites, groups and signature schemes rustls has).
    let suites: &[u8] = &[0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x09, 0xc0, 0x13];
    let mut exts = Vec::new();
    for (kind, data) in [
        (0x000a_u16, &[0, 4, 0x00, 0x1d, 0x00, 0x17][..]), // groups: x25519, secp256r1
        (0x000b, &[1, 0][..]),                             // point formats: uncompressed
        (0x000d, &[0, 6, 4, 3, 8, 4, 4, 1][..]),           // signature algorithms
    ] {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(data);
    }
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(suites);
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut handshake = vec![1, 0, 0, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);

    let mut tcp = TcpStream::connect(edge.https).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(&record).expect("write hello");
    let mut reply = [0u8; 7];
    let n = tcp.read(&mut reply).unwrap_or(0);
    if n > 0 {
        assert_eq!(
            reply[0],
            0x15,
            "expected an alert record, got {:?}",
            &reply[..n]
        );
        if n == 7 {
            // level fatal, description protocol_version (70)
            assert_eq!(&reply[5..7], &[2, 70], "{:?}", &reply[..n]);
        }
    }
    assert_eq!(b.requests(), 0);
}

/// With h2 and http/1.1 offered, the listener picks h2; reqwest's default client speaks HTTP/2.
#[tokio::test(flavor = "multi_thread")]
async fn alpn_negotiates_h2_when_offered() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    assert_eq!(
        alpn(edge.https, &[b"h2", b"http/1.1"]).await.as_deref(),
        Some(&b"h2"[..])
    );
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
}

/// With only http/1.1 offered, the listener agrees to http/1.1; an http1-only client gets HTTP/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn alpn_falls_back_to_http11() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    assert_eq!(
        alpn(edge.https, &[b"http/1.1"]).await.as_deref(),
        Some(&b"http/1.1"[..])
    );
    let client = client_builder(edge.https)
        .http1_only()
        .build()
        .expect("client");
    let resp = client.get(edge.url("/api/x")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
}

/// A full config with one https listener holding `certs` (YAML list items) and a plaintext one;
/// the server section mirrors `base_config` (work-stealing: see the note on `ONE_EDGE`).
fn sni_config(p: &Placeholders, certs: &str, http2: bool, backend: &Backend) -> String {
    format!(
        r#"
server:
  threads: 1
  work_stealing: true
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: {dir}/tollgate.pid
  upgrade_sock: {dir}/upgrade.sock
listeners:
  - name: https
    address: "{https}"
    tls:
      http2: {http2}
      certificates:
{certs}
  - name: http
    address: "{http}"
logging: {{ level: warn, access_log: false }}
upstreams:
  api: {{ backends: {list} }}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}
"#,
        dir = p.dir.display(),
        https = p.https,
        http = p.http,
        list = backend_list(&[backend]),
    )
}

/// Writes a certificate for `names` into the edge's directory; returns its YAML list item.
fn cert_item(p: &Placeholders, file: &str, names: &[&str], default: bool) -> String {
    let cert = p.dir.join(format!("{file}.crt"));
    let key = p.dir.join(format!("{file}.key"));
    tollgate::tls::write_self_signed(&cert, &key, names).expect("write certificate");
    format!(
        "        - {{ cert: {}, key: {}, default: {default} }}\n",
        cert.display(),
        key.display()
    )
}

/// Each SNI name gets its own certificate; unknown names and no SNI get the `default: true` one.
#[test]
fn sni_selects_certificate_and_default() {
    let b = Backend::start("b1");
    let edge = Edge::start_with(|p| {
        let certs = cert_item(p, "a", &["a.test"], false)
            + &cert_item(p, "b", &["b.test"], true)
            + &cert_item(p, "w", &["*.wild.test"], false);
        sni_config(p, &certs, true, &b)
    });
    let config = client_config(rustls::ALL_VERSIONS, &[b"http/1.1"]);
    let names = |sni: &str| served_names(&handshake(edge.https, config.clone(), sni));
    assert_eq!(names("a.test"), ["a.test"]);
    assert_eq!(names("A.TEST"), ["a.test"]);
    assert_eq!(names("b.test"), ["b.test"]);
    assert_eq!(names("x.wild.test"), ["*.wild.test"]);
    assert_eq!(names("unknown.test"), ["b.test"]);
    // An IP address as server name sends no SNI at all.
    assert_eq!(names("127.0.0.1"), ["b.test"]);
    // The certificate chosen by SNI still serves requests.
    let mut tls = handshake(edge.https, config, "a.test");
    assert!(http1_get(&mut tls, "/api/x").starts_with("HTTP/1.1 200"));
}

/// Without a `default: true` certificate, the first one listed is served to unknown names.
#[test]
fn first_certificate_is_default_without_flag() {
    let b = Backend::start("b1");
    let edge = Edge::start_with(|p| {
        let certs = cert_item(p, "a", &["a.test"], false) + &cert_item(p, "b", &["b.test"], false);
        sni_config(p, &certs, true, &b)
    });
    let config = client_config(rustls::ALL_VERSIONS, &[b"http/1.1"]);
    let names = |sni: &str| served_names(&handshake(edge.https, config.clone(), sni));
    assert_eq!(names("unknown.test"), ["a.test"]);
    assert_eq!(names("127.0.0.1"), ["a.test"]);
    assert_eq!(names("b.test"), ["b.test"]);
}

/// A listener with `http2: false` negotiates http/1.1 even when the client prefers h2.
#[tokio::test(flavor = "multi_thread")]
async fn http2_disabled_listener_speaks_http11() {
    let b = Backend::start("b1");
    let edge = Edge::start_with(|p| {
        let certs = cert_item(p, "localhost", &["localhost"], false);
        sni_config(p, &certs, false, &b)
    });
    assert_eq!(
        alpn(edge.https, &[b"h2", b"http/1.1"]).await.as_deref(),
        Some(&b"http/1.1"[..])
    );
    let resp = edge.get("/api/x").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
}

/// The request-header deadline (2s here) is HTTP/1's: an HTTP/2 connection that sent its
/// preface and then nothing for longer stays open (HTTP/2 has its own limits).
#[test]
fn http2_connection_is_not_cut_off_by_the_header_deadline() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    let config = client_config(rustls::ALL_VERSIONS, &[b"h2"]);
    let mut tls = handshake(edge.https, config, "localhost");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The client preface: the magic, then an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("preface");
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut acked = false;
    while started.elapsed() < Duration::from_secs(3) {
        let mut buf = [0u8; 1024];
        match tls.read(&mut buf) {
            Ok(n) if n > 0 => {
                // The server's SETTINGS: acknowledge them once, as a client must.
                if !acked {
                    tls.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                        .expect("settings ack");
                    acked = true;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("closed after {:?}: {other:?}", started.elapsed()),
        }
    }
    assert!(acked, "no SETTINGS from the server");
}

/// A kept-alive HTTP/1.1 connection to the edge over TLS (whichever version it prefers).
fn http1_over_tls(edge: &Edge) -> rustls::StreamOwned<ClientConnection, TcpStream> {
    handshake(
        edge.https,
        client_config(rustls::ALL_VERSIONS, &[b"http/1.1"]),
        "localhost",
    )
}

/// Sends `GET target` on a kept-alive connection and returns the body of its 200 response.
fn get_body(tls: &mut rustls::StreamOwned<ClientConnection, TcpStream>, target: &str) -> Vec<u8> {
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(req.as_bytes()).expect("write");
    // Nothing follows the response on the connection, so the reader's buffer holds no more.
    let resp = raw::read_response(&mut std::io::BufReader::new(&mut *tls)).expect("response");
    assert_eq!(resp.status(), 200, "{}", resp.head);
    resp.body
}

/// Every request on one kept-alive HTTPS connection tells the backend it came over TLS and
/// from whom: what the edge knows of the connection serves each request, not the first alone.
#[test]
fn each_request_on_a_kept_alive_tls_connection_is_forwarded_as_https() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    let mut tls = http1_over_tls(&edge);
    for i in 0..3 {
        let body: serde_json::Value =
            serde_json::from_slice(&get_body(&mut tls, &format!("/api/x?n={i}")))
                .expect("json echo");
        let headers = &body["headers"];
        assert_eq!(headers["x-forwarded-proto"], "https", "request {i}");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "request {i}");
    }
    assert_eq!(b.requests(), 3);
}

/// Responses of every size around what the edge gathers into one TLS record (a few KiB)
/// arrive whole, one after another on one kept-alive connection: a small one is not held
/// back and a large one is not cut short.
#[test]
fn responses_of_every_size_arrive_whole_over_one_tls_connection() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    let mut tls = http1_over_tls(&edge);
    let sizes = [0, 1, 3_000, 4_000, 4_096, 4_097, 20_000, 1 << 20];
    for size in sizes {
        let body = get_body(&mut tls, &format!("/api/x?size={size}"));
        assert_eq!(body.len(), size, "size {size}");
        assert!(body.iter().all(|&c| c == b'x'), "size {size}: body bytes");
    }
    assert_eq!(b.requests(), sizes.len() as u64);
}

/// Record headers (content type, length) of what the edge sends, seen by a relay between a
/// client and the edge.
struct RecordTap {
    addr: SocketAddr,
    records: Arc<std::sync::Mutex<Vec<(u8, usize)>>>,
}

impl RecordTap {
    /// Relays one connection to `edge`, parsing the TLS record headers coming back.
    fn start(edge: SocketAddr) -> RecordTap {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let records = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&records);
        std::thread::spawn(move || {
            let (mut client, _) = listener.accept().expect("accept");
            let mut server = TcpStream::connect(edge).expect("connect to edge");
            let (mut to_server, mut from_server) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || std::io::copy(&mut to_server, &mut server));
            let mut header = [0u8; 5];
            while from_server.read_exact(&mut header).is_ok() {
                let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
                let mut body = vec![0u8; len];
                if from_server.read_exact(&mut body).is_err() {
                    break;
                }
                seen.lock().expect("records").push((header[0], len));
                let relayed = client.write_all(&header).is_ok() && client.write_all(&body).is_ok();
                if !relayed {
                    break;
                }
            }
        });
        RecordTap { addr, records }
    }

    fn count(&self) -> usize {
        self.records.lock().expect("records").len()
    }

    /// Application-data records (content type 23) after the first `from` records.
    fn application_data_since(&self, from: usize) -> usize {
        let records = self.records.lock().expect("records");
        records[from..]
            .iter()
            .filter(|(kind, _)| *kind == 23)
            .count()
    }
}

/// A small response's header and body go out as one TLS record, not one each (TLS 1.2,
/// where a record's content type is visible on the wire).
#[test]
fn a_small_response_is_one_tls_record() {
    let b = Backend::start("b1");
    let edge = api_edge(&b);
    let tap = RecordTap::start(edge.https);
    let config = client_config(&[&rustls::version::TLS12], &[b"http/1.1"]);
    let mut tls = handshake(tap.addr, config, "localhost");
    let before = tap.count();
    assert_eq!(get_body(&mut tls, "/api/x?size=64").len(), 64);
    assert_eq!(tap.application_data_since(before), 1);
}

/// A streamed (chunked) response's first chunk reaches a TLS client while the backend still
/// holds the rest: what the edge gathers into one record does not wait past Pingora's flush.
#[test]
fn a_streamed_chunk_reaches_a_tls_client_before_the_rest_is_sent() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc::{channel, Receiver};
    use std::sync::Mutex;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = listener.local_addr().expect("addr");
    let (release, released) = channel::<()>();
    let released: Arc<Mutex<Receiver<()>>> = Arc::new(Mutex::new(released));
    let (waited_tx, waited) = channel::<bool>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (released, waited_tx) = (Arc::clone(&released), waited_tx.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                while reader.read_line(&mut request_line).is_ok_and(|n| n > 0) {
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    if !request_line.starts_with("GET /api/stream ") {
                        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                        let _ = stream.write_all(ok.as_bytes());
                        request_line.clear();
                        continue;
                    }
                    let head =
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                    stream.write_all(head.as_bytes()).expect("first chunk");
                    let by_client = released
                        .lock()
                        .expect("release")
                        .recv_timeout(Duration::from_secs(3))
                        .is_ok();
                    let _ = stream.write_all(b"4\r\nrest\r\n0\r\n\r\n");
                    let _ = waited_tx.send(by_client);
                    request_line.clear();
                }
            });
        }
    });
    let edge = Edge::start(&raw::api_at(&format!("[\"{backend}\"]"), ""));
    let mut tls = http1_over_tls(&edge);
    tls.write_all(b"GET /api/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"first\r\n") {
        tls.read_exact(&mut byte).expect("the first chunk");
        got.push(byte[0]);
    }
    release.send(()).expect("release the rest");
    while !got.ends_with(b"0\r\n\r\n") {
        tls.read_exact(&mut byte).expect("the rest");
        got.push(byte[0]);
    }
    let sent_after_release = waited
        .recv_timeout(Duration::from_secs(10))
        .expect("backend");
    assert!(
        sent_after_release,
        "the first chunk came only with the rest"
    );
    assert!(String::from_utf8_lossy(&got).contains("rest"));
}
