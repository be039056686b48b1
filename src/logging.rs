//! Logging: `log` + `env_logger`, to stdout or a file, and the structured access log.
//!
//! Error and info logs go through `env_logger` with a timestamp, level and module; `RUST_LOG`,
//! when set, overrides the configured level. Access lines (one JSON object per line, so they
//! can be shipped as-is) go to the same destination through [`AccessLog`], a buffered writer
//! flushed every 200 ms and at exit: writing each line with its own `write(2)` through the
//! logger cost 2.5 µs per request (bench/results/micro.md), buffering about a quarter of that.

use crate::config::Logging;
use serde::Serialize;
use std::cell::RefCell;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::Mutex;

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

/// One access-log line.
#[derive(Serialize)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub status: u16,
    pub bytes: usize,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub attempts: usize,
    /// Every backend tried, in order.
    pub tried: &'a [std::net::SocketAddr],
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
            let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            let _ = write!(buf, "{{\"time\":\"{time}\",");
            let body = buf.len();
            if let Err(e) = serde_json::to_writer(&mut *buf, line) {
                log::warn!("cannot format access line: {e}");
                return;
            }
            // Splice the line's own object into the one opened above.
            buf.remove(body);
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
