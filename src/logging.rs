//! Logging: `log` + `env_logger`, to stdout or a file, and the structured access log.
//!
//! Error and info logs go through `env_logger` with a timestamp, level and module; `RUST_LOG`,
//! when set, overrides the configured level. Access lines (one JSON object per line, so they
//! can be shipped as-is) go to the same destination through [`AccessLog`], a buffered writer
//! flushed every 200 ms and at exit: writing each line with its own `write(2)` through the
//! logger cost 2.5 µs per request (bench/results/micro.md), buffering about a quarter of that.

use crate::config::Logging;
use crate::upstream::BackendState;
use pingora::utils::clock;
use std::cell::RefCell;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Installs the global logger. Call once, before the server starts.
pub fn init(cfg: &Logging) -> std::io::Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(cfg.level);
    // Pingora logs every failed request at error level too; ours carry the request id.
    builder.filter_module("pingora_proxy", log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(|buf, record| {
        let ts = buf.timestamp_millis();
        writeln!(
            buf,
            "{ts} {:5} {}: {}",
            record.level(),
            record.target(),
            record.args()
        )
    });
    if let Some(path) = &cfg.file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    // A second init (tests start several servers in one process) keeps the first logger.
    let _ = builder.try_init();
    Ok(())
}

/// One access-log line, written as one JSON object (see [`AccessLine::write_json`]).
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    /// A method is a token (RFC 9110 section 9.1), so it is written as it is.
    pub method: &'a http::Method,
    pub path: &'a str,
    pub route: Option<&'a JsonString>,
    pub upstream: Option<&'a JsonString>,
    pub status: u16,
    pub bytes: usize,
    /// Written as `latency_ms`, in milliseconds with microsecond precision.
    pub latency: Duration,
    /// Written as `upstream_latency_ms`.
    pub upstream_latency: Option<Duration>,
    /// Every backend tried, in order: written as `tried`, their labels (`ip:port`), with the
    /// last as `backend` and their number as `attempts`.
    pub tried: &'a [Arc<BackendState>],
}

impl AccessLine<'_> {
    /// Appends the line as a JSON object (no newline), `time` (RFC 3339, UTC, milliseconds)
    /// first. Written by hand rather than through serde and `fmt`: a third of the cost, in
    /// instructions per request (bench/results/cg-accesslog-now.md), for the same JSON.
    pub fn write_json(&self, now: SystemTime, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"time\":\"");
        write_time(now, buf);
        buf.extend_from_slice(b"\",\"request_id\":");
        json_str(buf, self.request_id);
        buf.extend_from_slice(b",\"client_ip\":\"");
        buf.extend_from_slice(IpText::new(self.client_ip).as_bytes());
        buf.extend_from_slice(b"\",\"method\":\"");
        buf.extend_from_slice(self.method.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"path\":");
        json_str(buf, self.path);
        for (key, value) in [
            (&b",\"route\":"[..], self.route),
            (b",\"upstream\":", self.upstream),
        ] {
            buf.extend_from_slice(key);
            buf.extend_from_slice(value.map_or(&b"null"[..], |v| &v.0));
        }
        // A label is a socket address as `Display` writes it: nothing in it to escape.
        let label = |buf: &mut Vec<u8>, backend: &BackendState| {
            buf.push(b'"');
            buf.extend_from_slice(backend.label.as_bytes());
            buf.push(b'"');
        };
        buf.extend_from_slice(b",\"backend\":");
        match self.tried.last() {
            Some(backend) => label(buf, backend),
            None => buf.extend_from_slice(b"null"),
        }
        let mut n = itoa::Buffer::new();
        for (key, value) in [
            (&b",\"status\":"[..], usize::from(self.status)),
            (b",\"bytes\":", self.bytes),
        ] {
            buf.extend_from_slice(key);
            buf.extend_from_slice(n.format(value).as_bytes());
        }
        let latencies = [
            (&b",\"latency_ms\":"[..], Some(self.latency)),
            (b",\"upstream_latency_ms\":", self.upstream_latency),
        ];
        for (key, value) in latencies {
            buf.extend_from_slice(key);
            match value {
                Some(d) => json_ms(buf, d),
                None => buf.extend_from_slice(b"null"),
            }
        }
        buf.extend_from_slice(b",\"attempts\":");
        buf.extend_from_slice(n.format(self.tried.len()).as_bytes());
        buf.extend_from_slice(b",\"tried\":[");
        for (i, backend) in self.tried.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            label(buf, backend);
        }
        buf.extend_from_slice(b"]}");
    }
}

thread_local! {
    /// The current second as `YYYY-MM-DDTHH:MM:SS`, formatted once per second per thread.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// `2026-11-25T20:05:47.123Z`.
fn write_time(now: SystemTime, buf: &mut Vec<u8>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != since.as_secs() {
            let full = humantime::format_rfc3339_seconds(now).to_string();
            text.copy_from_slice(&full.as_bytes()[..19]);
            *second = since.as_secs();
        }
        buf.extend_from_slice(&text[..]);
    });
    let millis = since.subsec_millis();
    buf.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// An address as `Display` writes it, on the stack (IPv4 without `fmt`, which costs ten times
/// as much), for a caller that needs its length before writing it somewhere.
pub(crate) struct IpText {
    /// The longest `Display` of an `IpAddr` is 39 bytes (IPv6, eight full groups).
    text: [u8; 40],
    len: usize,
}

impl IpText {
    pub(crate) fn new(ip: IpAddr) -> Self {
        let mut text = [0u8; 40];
        let mut len = 0;
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    if octet >= 100 {
                        text[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        text[len] = b'0' + octet / 10 % 10;
                        len += 1;
                    }
                    text[len] = b'0' + octet % 10;
                    len += 1;
                }
            }
            IpAddr::V6(v6) => {
                let mut rest = &mut text[..];
                // Cannot fail: 40 bytes hold any IPv6 address's text.
                let _ = write!(rest, "{v6}");
                len = 40 - rest.len();
            }
        }
        IpText { text, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// A duration in milliseconds with three decimals, e.g. `1.005`.
fn json_ms(buf: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(n.format(micros / 1000).as_bytes());
    let frac = (micros % 1000) as u32;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A JSON string: quotes, backslashes and control characters escaped, the rest as is. Eight
/// bytes are checked at a time, so a string with nothing to escape is copied in one go.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0; // the first byte not copied yet
    let mut i = 0;
    while i < bytes.len() {
        if let Some((word, _)) = bytes[i..].split_first_chunk::<8>() {
            if !word_needs_escape(u64::from_le_bytes(*word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        i += 1;
        if !byte_needs_escape(b) {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i - 1]);
        escape_byte(buf, b);
        start = i;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

fn byte_needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any of the eight bytes of `w` needs escaping (bit tricks from "Bit Twiddling Hacks":
/// a byte below 0x20, or one equal to `"` or `\`).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    (below(0x20) | quote | backslash) != 0
}

fn escape_byte(buf: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => buf.extend_from_slice(b"\\\""),
        b'\\' => buf.extend_from_slice(b"\\\\"),
        b'\n' => buf.extend_from_slice(b"\\n"),
        b'\r' => buf.extend_from_slice(b"\\r"),
        b'\t' => buf.extend_from_slice(b"\\t"),
        _ => buf.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

/// A string as a JSON value, quoted and escaped once: for a name every access line repeats (a
/// route's, an upstream group's), made with it.
#[derive(Debug, Clone)]
pub struct JsonString(Box<[u8]>);

impl JsonString {
    pub fn new(s: &str) -> Self {
        let mut buf = Vec::with_capacity(s.len() + 2);
        json_str(&mut buf, s);
        JsonString(buf.into_boxed_slice())
    }
}

/// Where access lines go: the log file (appending) or standard output, buffered.
pub struct AccessLog {
    out: Option<Mutex<BufWriter<Box<dyn Write + Send>>>>,
}

thread_local! {
    /// Per-thread scratch buffer, so formatting a line does not allocate.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// Opens the destination of `cfg` (nothing when access logging is off).
    pub fn open(cfg: &Logging) -> std::io::Result<Self> {
        if !cfg.access_log {
            return Ok(AccessLog { out: None });
        }
        let sink: Box<dyn Write + Send> = match &cfg.file {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Box::new(std::io::stdout()),
        };
        Ok(AccessLog {
            out: Some(Mutex::new(BufWriter::with_capacity(64 * 1024, sink))),
        })
    }

    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Appends one line (a whole line per write, so lines never interleave mid-way).
    pub fn write(&self, line: &AccessLine<'_>) {
        let Some(out) = &self.out else {
            return;
        };
        LINE.with_borrow_mut(|buf| {
            buf.clear();
            line.write_json(clock::system_now(), buf);
            buf.push(b'\n');
            if let Ok(mut out) = out.lock() {
                if let Err(e) = out.write_all(buf) {
                    log::warn!("cannot write access log: {e}");
                }
            }
        });
    }

    /// Writes out buffered lines.
    pub fn flush(&self) {
        if let Some(out) = &self.out {
            if let Ok(mut out) = out.lock() {
                let _ = out.flush();
            }
        }
    }
}

/// Flushes the access log every 200 ms, and once more at shutdown.
pub struct AccessLogFlusher(pub std::sync::Arc<AccessLog>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for AccessLogFlusher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.0.flush(),
            }
        }
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, tried: &'a [Arc<BackendState>]) -> AccessLine<'a> {
        static ROUTE: std::sync::LazyLock<JsonString> =
            std::sync::LazyLock::new(|| JsonString::new("w\"e\\b\n"));
        AccessLine {
            request_id: "id-1",
            client_ip: IpAddr::from([192, 0, 2, 7]),
            method: &http::Method::GET,
            path,
            route: Some(&ROUTE),
            upstream: None,
            status: 200,
            bytes: 64,
            latency: Duration::from_micros(1_005),
            upstream_latency: Some(Duration::from_micros(7)),
            tried,
        }
    }

    fn parse(l: &AccessLine<'_>, now: SystemTime) -> serde_json::Value {
        let mut buf = Vec::new();
        l.write_json(now, &mut buf);
        match serde_json::from_slice(&buf) {
            Ok(v) => v,
            Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&buf)),
        }
    }

    /// Every field comes out as valid JSON with its value; strings survive escaping intact.
    #[test]
    fn line_is_json_with_every_field() {
        let tried = [
            BackendState::new(0, ([127, 0, 0, 1], 8081).into()),
            BackendState::new(1, (std::net::Ipv6Addr::LOCALHOST, 8082).into()),
        ]
        .map(Arc::new);
        let nasty = "/a\"b\\c\n\r\t\u{1}\u{1f}/é/✓";
        let now = UNIX_EPOCH + Duration::from_millis(1_764_100_000_042);
        let v = parse(&line(nasty, &tried), now);
        assert_eq!(v["time"], "2025-11-25T19:46:40.042Z");
        assert_eq!(v["path"], nasty);
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["client_ip"], "192.0.2.7");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["route"], "w\"e\\b\n");
        assert!(v["upstream"].is_null());
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 64);
        assert_eq!(v["latency_ms"].as_f64(), Some(1.005));
        assert_eq!(v["upstream_latency_ms"].as_f64(), Some(0.007));
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["backend"], "[::1]:8082");
        assert_eq!(
            v["tried"],
            serde_json::json!(["127.0.0.1:8081", "[::1]:8082"])
        );
    }

    /// Escaping is right wherever a byte to escape falls among the eight checked at once,
    /// in strings shorter than eight bytes too, and next to multi-byte characters.
    #[test]
    fn strings_round_trip_whatever_the_position_of_an_escape() {
        let base: Vec<char> = "abcdefgh✓ijklmnopqrs".chars().collect();
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', '\u{7f}', 'é', ' '] {
            for (len, at) in (0..=base.len()).flat_map(|len| (0..=len).map(move |at| (len, at))) {
                let mut s = base[..len].to_vec();
                s.insert(at, special);
                let s: String = s.into_iter().collect();
                let mut buf = Vec::new();
                json_str(&mut buf, &s);
                let back: String = serde_json::from_slice(&buf)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&buf)));
                assert_eq!(back, s);
            }
        }
    }

    /// Addresses come out as `Display` writes them: IPv4 with one-, two- and three-digit
    /// octets, IPv6 up to the longest text there is.
    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.254.200.1",
            "192.0.2.7",
            "::1",
            "::ffff:192.0.2.7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let text = IpText::new(ip);
            assert_eq!(text.as_bytes(), ip.to_string().as_bytes());
        }
    }

    /// The cached second is refreshed when the second changes; milliseconds are zero-padded.
    #[test]
    fn time_follows_the_clock_across_seconds() {
        let t0 = UNIX_EPOCH + Duration::from_millis(1_764_100_000_999);
        let t1 = t0 + Duration::from_millis(2);
        assert_eq!(
            parse(&line("/", &[]), t0)["time"],
            "2025-11-25T19:46:40.999Z"
        );
        assert_eq!(
            parse(&line("/", &[]), t1)["time"],
            "2025-11-25T19:46:41.001Z"
        );
        let none = parse(&line("/", &[]), t1);
        assert_eq!(none["tried"], serde_json::json!([]));
        assert!(none["backend"].is_null());
        assert_eq!(none["attempts"], 0);
        let mut v6 = line("/", &[]);
        v6.client_ip = std::net::Ipv6Addr::LOCALHOST.into();
        assert_eq!(parse(&v6, t1)["client_ip"], "::1");
    }
}
