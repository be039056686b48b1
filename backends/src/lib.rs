//! A tiny HTTP/1.1 backend for demonstrating and testing the Tollgate proxy.
//!
//! Each [`Backend`] is one named instance listening on one TCP address (plain
//! HTTP or TLS). It answers every request with `X-Backend: <name>` and, by
//! default, a JSON echo of what it received:
//!
//! ```text
//! {"backend":"api-1","method":"GET","path":"/x?y=1","headers":{"host":"..."},"body_bytes":0}
//! ```
//!
//! so a client (or an integration test) can see which instance served it and
//! which headers the proxy added or stripped. Request bodies
//! (`Content-Length` or chunked) are read, counted and discarded; connections
//! are kept alive per HTTP/1.1 rules.
//!
//! The instance can be told to misbehave, either for all requests through the
//! handle ([`Backend::set_mode`], [`Backend::set_healthy`]) or per request
//! with query parameters on any path:
//!
//! | query          | effect                                                   |
//! |----------------|----------------------------------------------------------|
//! | `status=503`   | answer with that status (200..=599) and a small JSON body |
//! | `sleep_ms=200` | wait that long before answering                          |
//! | `hang=1`       | read the request and never answer                        |
//! | `size=N`       | body of `N` bytes of `x` (text/plain) instead of JSON    |
//!
//! `GET /healthz` answers `200 ok` (or `503 unhealthy`), ignores [`Mode`]
//! and query parameters, and is counted separately.
//!
//! Every instance runs on its own OS thread with a current-thread tokio
//! runtime, so the handle works the same from synchronous code and from
//! inside any tokio runtime (including `#[tokio::test]`).
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

mod conn;

use std::fmt;
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// How an instance treats requests other than `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answer normally (JSON echo, or as the query parameters say).
    #[default]
    Normal,
    /// Answer every request with this status and a small JSON body. Codes
    /// outside `200..=599` are answered as 500.
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Read the request, never answer; the socket stays open until the client
    /// closes it or [`Backend::stop`] is called.
    Hang,
    /// Abort the connection (TCP RST) right after reading the request
    /// headers, without reading any body or responding.
    Reset,
    /// Read the full request including its body, then abort the connection
    /// (TCP RST) without responding.
    ResetAfterBody,
}

/// State shared between the handle and the connection tasks.
struct Shared {
    name: String,
    /// `X-Backend: <name>\r\n`, pre-built.
    header_line: Vec<u8>,
    /// The name as a quoted, escaped JSON string, pre-built.
    json_name: Vec<u8>,
    mode: Mutex<Mode>,
    healthy: AtomicBool,
    requests: AtomicU64,
    healthz: AtomicU64,
    connections: AtomicU64,
    /// Connections accepted and not yet closed.
    open: AtomicU64,
    tls: Option<TlsAcceptor>,
}

/// The runtime thread and the currently running accept loop.
struct Control {
    handle: Handle,
    addr: SocketAddr,
    serving: Mutex<Option<Serving>>,
    /// Dropped with the last handle, which ends the runtime thread and with
    /// it every task and socket of this instance.
    _shutdown: oneshot::Sender<()>,
}

/// One run of the accept loop, from spawn/restart until stop.
struct Serving {
    stop: oneshot::Sender<()>,
    done: mpsc::Receiver<()>,
}

/// Handle to one running backend instance. Cloning is cheap; the instance
/// shuts down completely when the last clone is dropped.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
    ctl: Arc<Control>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.shared.name)
            .field("addr", &self.ctl.addr)
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

impl Backend {
    /// Serves plain HTTP on `listener` until stopped.
    ///
    /// Takes a `std` listener so callers can bind before any runtime exists;
    /// the listener is moved onto the instance's own runtime thread.
    ///
    /// # Panics
    /// If the runtime thread cannot be started or the listener cannot be
    /// registered with it (e.g. out of file descriptors).
    pub fn spawn(listener: StdTcpListener, name: impl Into<String>) -> Backend {
        Self::try_spawn(listener, name.into(), None).expect("failed to start demo backend")
    }

    /// Serves HTTPS on `listener` (ALPN `http/1.1`) with the given PEM
    /// certificate chain and PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn spawn_tls(
        listener: StdTcpListener,
        name: impl Into<String>,
        cert_pem: &str,
        key_pem: &str,
    ) -> io::Result<Backend> {
        let acceptor = tls_acceptor(cert_pem, key_pem)?;
        Self::try_spawn(listener, name.into(), Some(acceptor))
    }

    /// Binds `127.0.0.1:0` and serves plain HTTP there.
    ///
    /// # Panics
    /// If binding or starting the instance fails.
    pub fn start(name: impl Into<String>) -> Backend {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("failed to bind 127.0.0.1:0");
        Self::spawn(listener, name)
    }

    fn try_spawn(
        listener: StdTcpListener,
        name: String,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Backend> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                });
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("backend runtime thread exited"))??;
        let listener = {
            let _guard = handle.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared {
            header_line: header_line(&name),
            json_name: json_string(&name),
            name,
            mode: Mutex::new(Mode::Normal),
            healthy: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            healthz: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            tls,
        });
        let serving = serve(&handle, &shared, listener);
        Ok(Backend {
            shared,
            ctl: Arc::new(Control {
                handle,
                addr,
                serving: Mutex::new(Some(serving)),
                _shutdown: shutdown_tx,
            }),
        })
    }

    /// The address this instance listens on (also after [`stop`](Self::stop)).
    pub fn addr(&self) -> SocketAddr {
        self.ctl.addr
    }

    /// The instance name sent in `X-Backend`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Changes how subsequent requests (not `/healthz`) are treated.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Makes `GET /healthz` answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, SeqCst);
    }

    /// Requests whose headers were read, in every mode, excluding `/healthz`.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(SeqCst)
    }

    /// `/healthz` requests seen.
    pub fn healthz_requests(&self) -> u64 {
        self.shared.healthz.load(SeqCst)
    }

    /// TCP connections accepted in total, across restarts.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(SeqCst)
    }

    /// TCP connections open now (accepted and not yet closed by either side).
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(SeqCst)
    }

    /// Stops accepting and closes every open connection of this instance, so
    /// new connects are refused. Returns once the listener is closed. Does
    /// nothing if already stopped. Safe to call from inside a tokio runtime
    /// (it blocks the calling thread briefly; the instance runs elsewhere).
    pub fn stop(&self) {
        let mut serving = lock(&self.ctl.serving);
        stop_serving(serving.take());
    }

    /// Binds the same address again (with `SO_REUSEADDR`) and serves again,
    /// keeping mode, health and counters. If still running it is stopped
    /// first, which closes the open connections.
    pub fn restart(&self) -> io::Result<()> {
        let mut serving = lock(&self.ctl.serving);
        stop_serving(serving.take());
        let listener = {
            let _guard = self.ctl.handle.enter();
            let addr = self.ctl.addr;
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)?
        };
        *serving = Some(serve(&self.ctl.handle, &self.shared, listener));
        Ok(())
    }
}

fn stop_serving(serving: Option<Serving>) {
    if let Some(s) = serving {
        let _ = s.stop.send(());
        // Err means the accept loop is gone already; either way it is done.
        let _ = s.done.recv();
    }
}

fn serve(handle: &Handle, shared: &Arc<Shared>, listener: TcpListener) -> Serving {
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = mpsc::channel();
    handle.spawn(accept_loop(shared.clone(), listener, stop_rx, done_tx));
    Serving {
        stop: stop_tx,
        done: done_rx,
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: oneshot::Receiver<()>,
    done: mpsc::Sender<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, SeqCst);
                    let _ = stream.set_nodelay(true);
                    let open = OpenConnection::new(shared.clone());
                    conns.spawn(async move {
                        conn::serve(open.0.clone(), stream).await;
                        drop(open);
                    });
                }
                // Usually EMFILE or a connection reset before accept: back
                // off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
    let _ = done.send(());
}

/// Counts a connection as open for as long as its task lives (aborted tasks included).
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open.fetch_add(1, SeqCst);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
    }
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, e: &dyn fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("bad certificate PEM", &e))?;
    if certs.is_empty() {
        return Err(invalid("bad certificate PEM", &"no CERTIFICATE section"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| invalid("bad private key PEM", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS config", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate/key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `X-Backend: <name>\r\n`, with control characters replaced so the name can
/// never break the header block.
fn header_line(name: &str) -> Vec<u8> {
    let mut line = b"X-Backend: ".to_vec();
    line.extend(
        name.bytes()
            .map(|b| if b.is_ascii_control() { b'_' } else { b }),
    );
    line.extend_from_slice(b"\r\n");
    line
}

fn json_string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    json_escape(&mut out, s);
    out.push(b'"');
    out
}

/// Appends `s` escaped for use inside a JSON string literal.
pub(crate) fn json_escape(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        escape_byte(out, b);
    }
}

/// Escapes one byte of UTF-8 text (multi-byte sequences pass through).
pub(crate) fn escape_byte(out: &mut Vec<u8>, b: u8) {
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0..=0x1f | 0x7f => {
            let _ = write!(out, "\\u{b:04x}");
        }
        _ => out.push(b),
    }
}

/// Like [`json_escape`] for raw header bytes; invalid UTF-8 becomes U+FFFD.
pub(crate) fn json_escape_bytes(out: &mut Vec<u8>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => json_escape(out, s),
        Err(_) => json_escape(out, &String::from_utf8_lossy(value)),
    }
}

pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Parses `1a3;ext=v\r\n` into 0x1a3.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = trim(line.split(|&b| b == b';').next().unwrap_or_default());
    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

pub(crate) fn is_blank(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk-size lines parse with extensions and reject junk.
    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Some(0x1a));
        assert_eq!(parse_chunk_size(b"0;name=v\r\n"), Some(0));
        assert_eq!(parse_chunk_size(b"zz\r\n"), None);
        assert_eq!(parse_chunk_size(b"\r\n"), None);
        assert_eq!(parse_chunk_size(b"-1\r\n"), None);
    }

    /// JSON escaping handles quotes, backslashes and control characters.
    #[test]
    fn escaping() {
        let mut out = Vec::new();
        json_escape(&mut out, "a\"b\\c\n\u{1}");
        assert_eq!(out, b"a\\\"b\\\\c\\n\\u0001");
    }
}
