//! One HTTP/1.1 connection: request parsing, body draining and responses.

use std::io::Write as _;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{
    escape_byte, is_blank, json_escape, json_escape_bytes, lock, parse_chunk_size, parse_decimal,
    reason, trim, Mode, Shared,
};

/// Cap on the request line plus headers.
const MAX_HEAD: usize = 64 * 1024;
/// Cap on the number of request headers.
const MAX_HEADERS: usize = 128;
/// Cap on a chunk-size line or a trailer line.
const MAX_LINE: usize = 8 * 1024;
/// How much to read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep reading after our FIN, so unread input does not turn
/// the close into a RST that destroys the response in flight.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Body source for `?size=N`, shared by every response.
static XS: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A client stream: plain TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Io for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Io for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpStream) {
    match shared.tls.clone() {
        None => Conn::new(&shared, tcp).run().await,
        Some(acceptor) => {
            if let Ok(Ok(tls)) =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Conn::new(&shared, tls).run().await;
            }
        }
    }
}

/// Why a connection stops early.
enum Fail {
    /// Reply with this status and message, then close.
    Bad(u16, &'static str),
    /// The socket failed or hit EOF mid-request: just close.
    Io,
}

impl From<std::io::Error> for Fail {
    fn from(_: std::io::Error) -> Self {
        Fail::Io
    }
}

/// What to do with the connection after a request.
enum Next {
    KeepAlive,
    Close,
    Reset,
}

enum Body {
    None,
    Length(u64),
    Chunked,
}

#[derive(Default)]
struct Query {
    status: Option<u16>,
    sleep_ms: Option<u64>,
    hang: bool,
    size: Option<u64>,
}

/// What the handler needs from a parsed request head (the echo JSON prefix
/// is already written to `Conn::json`).
struct Req {
    head: bool,
    healthz: bool,
    http10: bool,
    keep_alive: bool,
    expect_continue: bool,
    body: Body,
    query: Query,
}

struct Conn<'a, S> {
    sh: &'a Shared,
    io: S,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
    /// Response body being built (echo JSON or small status JSON).
    json: Vec<u8>,
    /// Response head being built.
    out: Vec<u8>,
}

impl<'a, S: Io> Conn<'a, S> {
    fn new(sh: &'a Shared, io: S) -> Self {
        Conn {
            sh,
            io,
            buf: Vec::with_capacity(READ_CHUNK),
            json: Vec::with_capacity(1024),
            out: Vec::with_capacity(256),
        }
    }

    async fn run(mut self) {
        let next = loop {
            let result = match self.next_request().await {
                Ok(Some(req)) => self.handle(req).await,
                Ok(None) => break Next::Close,
                Err(e) => Err(e),
            };
            match result {
                Ok(Next::KeepAlive) => continue,
                Ok(next) => break next,
                Err(Fail::Io) => break Next::Close,
                Err(Fail::Bad(code, msg)) => {
                    let _ = self.respond_error(code, msg).await;
                    break Next::Close;
                }
            }
        };
        match next {
            Next::Reset => {
                // SO_LINGER 0 makes the close send RST. The deprecation is
                // about non-zero linger blocking on drop; zero never blocks.
                #[allow(deprecated)]
                let _ = self.io.tcp().set_linger(Some(Duration::ZERO));
            }
            Next::Close | Next::KeepAlive => {
                let _ = self.io.shutdown().await;
                let _ = tokio::time::timeout(CLOSE_LINGER, self.drain_until_eof()).await;
            }
        }
    }

    /// Reads more input into `buf`; EOF is `Ok(0)`.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        self.io.read_buf(&mut self.buf).await
    }

    async fn drain_until_eof(&mut self) {
        loop {
            self.buf.clear();
            match self.read_more().await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Reads and parses the next request head; `None` on a clean EOF
    /// between requests.
    async fn next_request(&mut self) -> Result<Option<Req>, Fail> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let parsed = parse_head(self.sh, &req, &mut self.json)?;
                        self.buf.drain(..len);
                        return Ok(Some(parsed));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(Fail::Bad(431, "too many request headers"))
                    }
                    Err(_) => return Err(Fail::Bad(400, "malformed request")),
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(Fail::Bad(431, "request header too large"));
                }
            }
            if self.read_more().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Fail::Io)
                };
            }
        }
    }

    async fn handle(&mut self, req: Req) -> Result<Next, Fail> {
        let sh = self.sh;
        if req.healthz {
            sh.healthz.fetch_add(1, SeqCst);
            self.read_body(&req).await?;
            let (code, body): (u16, &[u8]) = if sh.healthy.load(SeqCst) {
                (200, b"ok\n")
            } else {
                (503, b"unhealthy\n")
            };
            return self.respond(&req, code, "text/plain", body).await;
        }

        sh.requests.fetch_add(1, SeqCst);
        let mode = *lock(&sh.mode);
        if mode == Mode::Reset {
            return Ok(Next::Reset);
        }
        let body_bytes = self.read_body(&req).await?;
        if mode == Mode::ResetAfterBody {
            return Ok(Next::Reset);
        }
        if mode == Mode::Hang || req.query.hang {
            // Never answer; release the socket once the client gives up.
            self.drain_until_eof().await;
            return Ok(Next::Close);
        }
        let delay = match (req.query.sleep_ms, mode) {
            (Some(ms), _) => Some(Duration::from_millis(ms)),
            (None, Mode::Delay(d)) => Some(d),
            _ => None,
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let status = match (req.query.status, mode) {
            (Some(code), _) => Some(code),
            (None, Mode::Status(code)) if (200..=599).contains(&code) => Some(code),
            (None, Mode::Status(_)) => Some(500),
            _ => None,
        };

        if let Some(size) = req.query.size {
            return self.respond_size(&req, status.unwrap_or(200), size).await;
        }
        let mut json = std::mem::take(&mut self.json);
        if let Some(code) = status {
            json.clear();
            json.extend_from_slice(b"{\"backend\":");
            json.extend_from_slice(&sh.json_name);
            let _ = write!(json, ",\"status\":{code}}}");
        } else {
            let _ = write!(json, "{body_bytes}}}");
        }
        let result = self
            .respond(&req, status.unwrap_or(200), "application/json", &json)
            .await;
        self.json = json;
        result
    }

    /// Reads and discards the request body, returning its length.
    async fn read_body(&mut self, req: &Req) -> Result<u64, Fail> {
        let has_body = match req.body {
            Body::None | Body::Length(0) => false,
            Body::Length(_) | Body::Chunked => true,
        };
        if has_body && req.expect_continue && self.buf.is_empty() {
            self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            self.io.flush().await?;
        }
        match req.body {
            Body::None => Ok(0),
            Body::Length(n) => {
                self.skip(n).await?;
                Ok(n)
            }
            Body::Chunked => self.read_chunked().await,
        }
    }

    /// Consumes exactly `n` body bytes.
    async fn skip(&mut self, n: u64) -> Result<(), Fail> {
        let mut left = n;
        loop {
            let take = left.min(self.buf.len() as u64);
            // `take` fits: it is at most `buf.len()`.
            self.buf.drain(..take as usize);
            left -= take;
            if left == 0 {
                return Ok(());
            }
            if self.read_more().await? == 0 {
                return Err(Fail::Io);
            }
        }
    }

    /// Returns the length (including `\n`) of the next line in `buf`.
    async fn line(&mut self) -> Result<usize, Fail> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[searched..].iter().position(|&b| b == b'\n') {
                return Ok(searched + i + 1);
            }
            searched = self.buf.len();
            if searched > MAX_LINE {
                return Err(Fail::Bad(400, "chunked body line too long"));
            }
            if self.read_more().await? == 0 {
                return Err(Fail::Io);
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<u64, Fail> {
        const BAD: Fail = Fail::Bad(400, "malformed chunked body");
        let mut total: u64 = 0;
        loop {
            let n = self.line().await?;
            let size = parse_chunk_size(&self.buf[..n]).ok_or(BAD)?;
            self.buf.drain(..n);
            if size == 0 {
                // Trailer section, ended by an empty line.
                loop {
                    let n = self.line().await?;
                    let blank = is_blank(&self.buf[..n]);
                    self.buf.drain(..n);
                    if blank {
                        return Ok(total);
                    }
                }
            }
            self.skip(size).await?;
            total = total.checked_add(size).ok_or(BAD)?;
            let n = self.line().await?;
            if !is_blank(&self.buf[..n]) {
                return Err(BAD);
            }
            self.buf.drain(..n);
        }
    }

    /// Writes the response head for a `len`-byte body into `out`.
    fn write_head(&mut self, req: Option<&Req>, code: u16, ctype: &str, len: u64, close: bool) {
        let out = &mut self.out;
        out.clear();
        let _ = write!(out, "HTTP/1.1 {code} {}\r\n", reason(code));
        out.extend_from_slice(&self.sh.header_line);
        if !matches!(code, 204 | 304) {
            let _ = write!(out, "Content-Type: {ctype}\r\nContent-Length: {len}\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if req.is_some_and(|r| r.http10) {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    fn next(req: &Req) -> Next {
        if req.keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    async fn respond(
        &mut self,
        req: &Req,
        code: u16,
        ctype: &str,
        body: &[u8],
    ) -> Result<Next, Fail> {
        self.write_head(Some(req), code, ctype, body.len() as u64, !req.keep_alive);
        if !req.head && !matches!(code, 204 | 304) {
            self.out.extend_from_slice(body);
        }
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        Ok(Self::next(req))
    }

    async fn respond_size(&mut self, req: &Req, code: u16, size: u64) -> Result<Next, Fail> {
        self.write_head(Some(req), code, "text/plain", size, !req.keep_alive);
        let mut left = if req.head || matches!(code, 204 | 304) {
            0
        } else {
            size
        };
        // Small bodies go out with the head in one write.
        if left <= 16 * 1024 {
            // `left` fits: it is at most 16 KiB.
            self.out.extend_from_slice(&XS[..left as usize]);
            left = 0;
        }
        self.io.write_all(&self.out).await?;
        while left > 0 {
            let n = left.min(XS.len() as u64);
            // `n` fits: it is at most `XS.len()`.
            self.io.write_all(&XS[..n as usize]).await?;
            left -= n;
        }
        self.io.flush().await?;
        Ok(Self::next(req))
    }

    async fn respond_error(&mut self, code: u16, msg: &str) -> Result<(), Fail> {
        self.write_head(None, code, "text/plain", msg.len() as u64 + 1, true);
        self.out.extend_from_slice(msg.as_bytes());
        self.out.push(b'\n');
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// Extracts what the handler needs from a parsed head and, unless it is a
/// health check, writes the echo JSON up to `"body_bytes":` into `json`.
fn parse_head(sh: &Shared, r: &httparse::Request, json: &mut Vec<u8>) -> Result<Req, Fail> {
    let method = r.method.unwrap_or("");
    let target = r.path.unwrap_or("");
    let http10 = r.version == Some(0);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    for h in r.headers.iter() {
        let value = trim(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_decimal(value).ok_or(Fail::Bad(400, "bad content-length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(Fail::Bad(400, "conflicting content-length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body = match (transfer_encoding, content_length) {
        (true, Some(_)) => return Err(Fail::Bad(400, "both content-length and transfer-encoding")),
        (true, None) if !chunked => return Err(Fail::Bad(400, "unsupported transfer-encoding")),
        (true, None) => Body::Chunked,
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::None,
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, parse_query(q)?),
        None => (target, Query::default()),
    };
    let req = Req {
        head: method == "HEAD",
        healthz: path == "/healthz" && matches!(method, "GET" | "HEAD"),
        http10,
        keep_alive: !close && (!http10 || keep_alive),
        expect_continue,
        body,
        query,
    };
    if !req.healthz {
        write_echo_prefix(sh, method, target, r.headers, json);
    }
    Ok(req)
}

fn parse_query(q: &str) -> Result<Query, Fail> {
    const BAD: Fail = Fail::Bad(400, "bad query parameter");
    let mut query = Query::default();
    for pair in q.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "status" => {
                let code = value.parse::<u16>().map_err(|_| BAD)?;
                if !(200..=599).contains(&code) {
                    return Err(BAD);
                }
                query.status = Some(code);
            }
            "sleep_ms" => query.sleep_ms = Some(value.parse().map_err(|_| BAD)?),
            "size" => query.size = Some(value.parse().map_err(|_| BAD)?),
            "hang" => query.hang = !matches!(value, "0" | "false"),
            _ => {}
        }
    }
    Ok(query)
}

/// `{"backend":..,"method":..,"path":..,"headers":{..},"body_bytes":`
fn write_echo_prefix(
    sh: &Shared,
    method: &str,
    target: &str,
    headers: &[httparse::Header],
    json: &mut Vec<u8>,
) {
    json.clear();
    json.extend_from_slice(b"{\"backend\":");
    json.extend_from_slice(&sh.json_name);
    json.extend_from_slice(b",\"method\":\"");
    json_escape(json, method);
    json.extend_from_slice(b"\",\"path\":\"");
    json_escape(json, target);
    json.extend_from_slice(b"\",\"headers\":{");
    let mut first = true;
    for (i, h) in headers.iter().enumerate() {
        if headers[..i]
            .iter()
            .any(|p| p.name.eq_ignore_ascii_case(h.name))
        {
            continue; // already emitted, joined with the first occurrence
        }
        if !first {
            json.push(b',');
        }
        first = false;
        json.push(b'"');
        for b in h.name.bytes() {
            escape_byte(json, b.to_ascii_lowercase());
        }
        json.extend_from_slice(b"\":\"");
        json_escape_bytes(json, h.value);
        for later in headers[i + 1..].iter() {
            if later.name.eq_ignore_ascii_case(h.name) {
                json.extend_from_slice(b", ");
                json_escape_bytes(json, later.value);
            }
        }
        json.push(b'"');
    }
    json.extend_from_slice(b"},\"body_bytes\":");
}
