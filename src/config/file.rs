//! The shape of the YAML file, as serde sees it.
//!
//! Every struct denies unknown fields, so a typo is an error with its YAML path rather than a
//! silently ignored setting. Nothing here is checked beyond its type: `validate.rs` turns this
//! into a [`super::Config`] and reports every semantic problem at once.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A human-readable duration (`500ms`, `10s`, `1m 30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// A size in bytes: a number, or a string with a binary unit (`"512"`, `"16KiB"`, `"1MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?} (expected bytes, or a number with B, KiB or MiB)"
                ))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(scale)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    pub grace_period: Option<HumanDuration>,
    pub graceful_shutdown_timeout: Option<HumanDuration>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub header_read_timeout: Option<HumanDuration>,
    pub keepalive_timeout: Option<HumanDuration>,
    pub keepalive_requests: Option<u32>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub max_request_header_size: Option<ByteSize>,
    pub header_case: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// Plaintext listeners only: answer every request with a 308 to the https listener.
    #[serde(default)]
    pub redirect_https: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub certificates: Vec<CertificateFile>,
    #[serde(default = "yes")]
    pub http2: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: String,
    pub key: String,
    /// Serve this one when SNI matches no certificate (or is absent). Default: the first.
    #[serde(default)]
    pub default: bool,
    /// Generate a self-signed certificate for these files when both are missing (demo only).
    #[serde(default)]
    pub self_signed_if_missing: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingFile {
    pub level: Option<String>,
    pub file: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub address: Option<String>,
    /// Name of the environment variable holding the bearer token.
    pub token_env: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsFile {
    pub address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BackendFile {
    Address(String),
    Detailed(BackendDetailFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDetailFile {
    pub address: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SelectionFile {
    Name(String),
    ConsistentHash { consistent_hash: ConsistentHashFile },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistentHashFile {
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub expected_status: Option<u16>,
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub healthy_after: Option<usize>,
    #[serde(default)]
    pub unhealthy_after: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsFile {
    pub connect: Option<HumanDuration>,
    pub read: Option<HumanDuration>,
    pub write: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// Server name sent in SNI and verified against the backend's certificate.
    pub sni: String,
    /// Verify the backend certificate against the system roots (or `ca_file`). Default true.
    #[serde(default = "yes")]
    pub verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub backends: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub selection: Option<SelectionFile>,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerFile {
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub window: Option<HumanDuration>,
    pub min_requests: Option<u32>,
    pub open_for: Option<HumanDuration>,
    pub max_open_for: Option<HumanDuration>,
    pub half_open_probes: Option<u32>,
    pub probe_timeout: Option<HumanDuration>,
    pub max_ejection_percent: Option<u8>,
    /// Response statuses counted as failures (connect errors and timeouts always are).
    pub failure_statuses: Option<Vec<u16>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RetriesFile {
    pub attempts: Option<u32>,
    pub statuses: Option<Vec<u16>>,
    pub budget_percent: Option<f64>,
    pub min_per_sec: Option<u32>,
    pub per_try_timeout: Option<HumanDuration>,
    pub deadline: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchFile,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub retries: Option<RetriesFile>,
    /// `none` (default) or `api_key`.
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<OneOrMany<serde_yaml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(t) => vec![t],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    #[serde(default)]
    pub name: Option<String>,
    /// `ip`, `client`, or `header:NAME`.
    pub key: String,
    /// `token_bucket` (default), `sliding_window` or `fixed_window`.
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub window: Option<HumanDuration>,
    #[serde(default)]
    pub max_keys: Option<usize>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsFile {
    pub store: Option<String>,
    pub key_sources: Option<Vec<String>>,
    pub defaults: Option<ClientDefaultsFile>,
    pub save_state_interval: Option<HumanDuration>,
    pub sync_interval: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDefaultsFile {
    pub rate_per_sec: f64,
    pub capacity: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub prefix: String,
    #[serde(default)]
    pub host: Option<String>,
}

/// Top-level sections. Each is kept as raw YAML here and deserialized on its own, so an error in
/// one section (or one upstream, or one route) does not hide the errors in the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopFile {
    #[serde(default)]
    pub server: Option<serde_yaml::Value>,
    pub listeners: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub logging: Option<serde_yaml::Value>,
    #[serde(default)]
    pub admin: Option<serde_yaml::Value>,
    #[serde(default)]
    pub metrics: Option<serde_yaml::Value>,
    #[serde(default)]
    pub trusted_proxies: Option<serde_yaml::Value>,
    #[serde(default)]
    pub clients: Option<serde_yaml::Value>,
    pub upstreams: BTreeMap<String, serde_yaml::Value>,
    pub routes: Vec<serde_yaml::Value>,
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("16KiB"), Some(16 * 1024));
        assert_eq!(parse_size("1 MiB"), Some(1024 * 1024));
        for bad in ["", "KiB", "16kb", "1.5MiB", "-1", "99999999999999999999MiB"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
