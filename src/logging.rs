//! Logging: `log` + `env_logger`, to stdout or a file, and the structured access-log line.
//!
//! Access lines go through the same logger under the target [`ACCESS_TARGET`], written bare
//! (one JSON object per line) so they can be shipped as-is; everything else gets a timestamp,
//! level and module. `RUST_LOG`, when set, overrides the configured level.

use crate::config::Logging;
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;

/// The `log` target of access lines.
pub const ACCESS_TARGET: &str = "tollgate::access";

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
        if record.target() == ACCESS_TARGET {
            writeln!(buf, "{}", record.args())
        } else {
            let ts = buf.timestamp_millis();
            writeln!(
                buf,
                "{ts} {:5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            )
        }
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

impl AccessLine<'_> {
    /// Emits the line (with the time first) if access logging is enabled at info level.
    pub fn write(&self) {
        if !log::log_enabled!(target: ACCESS_TARGET, log::Level::Info) {
            return;
        }
        #[derive(Serialize)]
        struct Timed<'a, 'b> {
            time: String,
            #[serde(flatten)]
            line: &'a AccessLine<'b>,
        }
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        match serde_json::to_string(&Timed { time, line: self }) {
            Ok(json) => log::info!(target: ACCESS_TARGET, "{json}"),
            Err(e) => log::warn!("cannot format access line: {e}"),
        }
    }
}
