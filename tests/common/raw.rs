//! A raw HTTP/1.1 client over std sockets, for requests an HTTP library would refuse to send
//! or would normalize, and for watching connections close.

use super::backend_list;
use super::Backend;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

pub fn api(b: &Backend, group_extra: &str) -> String {
    api_at(&backend_list(&[b]), group_extra)
}

/// A config with one route, `/api`, over the backends at `backends` (a YAML list).
pub fn api_at(backends: &str, group_extra: &str) -> String {
    format!(
        "upstreams:\n  api:\n    backends: {backends}\n{group_extra}\nroutes:\n  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}\n"
    )
}

/// One response read off a keep-alive connection: status line + headers, and the body.
pub struct Response {
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (Content-Length or chunked body); `None` if the server closed first.
pub fn read_response(r: &mut impl BufRead) -> Option<Response> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push_str(&line),
        }
    }
    let mut resp = Response {
        head,
        body: Vec::new(),
    };
    if let Some(len) = resp.header("content-length") {
        let mut body = vec![0; len.parse().ok()?];
        r.read_exact(&mut body).ok()?;
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            resp.body.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
        }
    }
    Some(resp)
}

/// One kept-alive client connection: requests go out one at a time, each answer read before
/// the next is sent.
pub struct KeepAlive {
    writer: TcpStream,
    pub reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        let tcp = connect(addr);
        let writer = tcp.try_clone().expect("clone");
        KeepAlive {
            writer,
            reader: BufReader::new(tcp),
        }
    }

    /// Sends `request` and reads its response; `None` if the server closed the connection.
    pub fn send(&mut self, request: &[u8]) -> Option<Response> {
        self.writer.write_all(request).ok()?;
        read_response(&mut self.reader)
    }

    /// `GET path` (HTTP/1.1, Host: localhost); `None` if the server closed the connection.
    pub fn get(&mut self, path: &str) -> Option<Response> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
    }
}

/// Opens a connection with generous read timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp
}

/// A plain GET on a fresh connection; returns the status.
pub fn get_status(addr: SocketAddr, path: &str) -> u16 {
    let mut tcp = connect(addr);
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).expect("write");
    read_response(&mut BufReader::new(tcp)).map_or(0, |r| r.status())
}

/// A backend on a raw socket, for responses the demo backend cannot give: it answers every
/// request head on a connection with `response`, never closes a connection itself, and
/// counts connections and keeps each request head it read.
pub struct FixedBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Receiver<String>,
}

impl FixedBackend {
    pub fn start(response: &'static str) -> FixedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, heads) = channel();
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                let _ = tx.send(std::mem::take(&mut head));
                                if stream.write_all(response.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => head.push_str(&line),
                        }
                    }
                });
            }
        });
        FixedBackend {
            addr,
            accepted,
            heads,
        }
    }

    /// An edge config routing `/api` to this backend.
    pub fn config(&self) -> String {
        api_at(&format!("[\"{}\"]", self.addr), "")
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The next request head read (request line and fields), waiting up to 10 s.
    pub fn next_head(&self) -> String {
        self.heads
            .recv_timeout(Duration::from_secs(10))
            .expect("backend got a request")
    }
}
