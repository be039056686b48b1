//! Configuration: one YAML file, typed and validated before anything starts.
//!
//! Two layers, as in river and linkerd: [`file`] is the serde shape of the file (unknown keys
//! rejected), and [`Config`] is the validated form the rest of the crate uses. Closed choices are
//! enums; every duration is non-zero; every name a route refers to exists. [`Config::load`]
//! reports every problem at once, each naming its YAML path:
//!
//! ```text
//! upstreams.api.backends[1]: invalid socket address "10.0.0.1"
//! routes[2].upstream: unknown upstream "apii"
//! ```
//!
//! Relative file paths (certificates, pid file) are taken relative to the working directory,
//! like nginx's `-p` prefix defaulting to where it was started.

pub mod file;
mod validate;

use http::HeaderName;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerSettings,
    pub listeners: Vec<Listener>,
    pub logging: Logging,
    /// The admin API listener; `None` when the file has no `admin` section.
    pub admin: Option<Admin>,
    /// The Prometheus listener; `None` when the file has no `metrics` section.
    pub metrics: Option<MetricsListener>,
    /// Peers allowed to set `X-Forwarded-For` and `X-Request-Id`.
    pub trusted_proxies: Vec<IpNet>,
    /// API clients; `None` when the file has no `clients` section (no route may use api keys).
    pub clients: Option<ClientsConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// The text this was parsed from, and its hash.
    pub source: Arc<Source>,
}

/// A configuration's file text, kept for `GET /admin/config` and the `tollgate_config_info` hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub text: String,
    /// First 16 hex digits of the SHA-256 of `text`.
    pub hash: String,
}

impl Source {
    pub fn new(text: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(text.as_bytes());
        let hash = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Source {
            text: text.to_string(),
            hash,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub threads: usize,
    pub work_stealing: bool,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    /// Deadline for a complete request header, counted from when the server starts waiting.
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection is kept open between requests.
    pub keepalive_timeout: Duration,
    /// Requests served on one downstream connection before it is closed.
    pub keepalive_requests: u32,
    pub upstream_keepalive_pool_size: usize,
    /// Largest request header (request line and fields) forwarded; larger ones get 431.
    pub max_request_header_size: usize,
    /// How HTTP/1 header names are written on, in both directions.
    pub header_case: HeaderCase,
}

/// How HTTP/1 header names read from a client or backend are written on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderCase {
    /// In their canonical case: `Content-Type` for names `http` knows, lowercase for others
    /// (as HAProxy and Envoy do). Field names are case-insensitive (RFC 9110 section 5.1).
    #[default]
    Normalize,
    /// As received (as nginx does), for peers that wrongly match names case-sensitively.
    /// Keeping the case costs a second header map per request and response.
    Preserve,
}

impl HeaderCase {
    pub fn normalizes(self) -> bool {
        self == HeaderCase::Normalize
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    Https(TlsConfig),
    /// Plaintext; `redirect_https` answers 308 to the first https listener instead of proxying.
    Http {
        redirect_https: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Non-empty; exactly one is the default (served when SNI matches nothing).
    pub certificates: Vec<CertificatePaths>,
    pub default_certificate: usize,
    pub http2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub self_signed_if_missing: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    pub level: log::LevelFilter,
    /// `None`: standard output.
    pub file: Option<PathBuf>,
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// Environment variable with the bearer token; without one the API must bind loopback.
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsListener {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub backends: Vec<BackendConfig>,
    pub selection: Selection,
    pub health_check: Option<HealthCheck>,
    pub timeouts: Timeouts,
    pub tls: Option<UpstreamTls>,
    /// `None`: no breaker (health checks alone decide).
    pub circuit_breaker: Option<BreakerConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub policy: crate::breaker::BreakerPolicy,
    /// Response statuses that count as failures; connect errors and timeouts always do.
    pub failure_statuses: Vec<u16>,
}

/// When a request is sent again, to a backend it has not tried.
///
/// Connect failures are always retried (nothing was sent). After the request was sent, only
/// idempotent methods whose body was not streamed, and only before any response byte reached
/// the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// Backend statuses that trigger a retry (idempotent requests only).
    pub statuses: Vec<u16>,
    /// Retries may be at most this share of the route's requests in flight...
    pub budget_percent: f64,
    /// ...but this many per second are always allowed.
    pub min_per_sec: u32,
    /// Read timeout of each attempt (the group's read timeout when `None`).
    pub per_try_timeout: Option<Duration>,
    /// No new attempt starts after this much time since the request arrived.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Without a `retries` block: one retry for connect failures and failed reused
    /// connections, none on statuses.
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            statuses: Vec::new(),
            budget_percent: 20.0,
            min_per_sec: 3,
            per_try_timeout: None,
            deadline: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub address: SocketAddr,
    pub weight: u32,
}

/// How a group picks a backend for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Strict rotation; weights are ignored.
    RoundRobin,
    /// Rotation in proportion to weights.
    Weighted,
    /// Uniform at random, in proportion to weights.
    Random,
    /// The backend with the fewest requests in flight (ties rotate).
    LeastConn,
    /// Ketama consistent hashing of a request key (sticky sessions).
    ConsistentHash(HashKey),
}

impl Selection {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Selection::RoundRobin => "round_robin",
            Selection::Weighted => "weighted",
            Selection::Random => "random",
            Selection::LeastConn => "least_conn",
            Selection::ConsistentHash(_) => "consistent_hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy backend back.
    pub healthy_after: usize,
    /// Consecutive failures that take a healthy backend out.
    pub unhealthy_after: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    Tcp,
    Http {
        path: String,
        host: String,
        expected_status: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub sni: String,
    pub verify: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-case host without port; `*.example.com` matches subdomains.
    pub host: Option<String>,
    pub prefix: String,
    pub upstream: String,
    pub strip_prefix: bool,
    pub retries: RetryPolicy,
    pub auth: Auth,
    /// Applied in order; the first that refuses answers 429.
    pub rate_limits: Vec<RateLimitConfig>,
}

/// How a route identifies its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// An API client key is required (401 otherwise); its own bucket applies.
    ApiKey,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub key: LimitKey,
    pub policy: crate::ratelimit::Policy,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client ip (trusted-proxy aware).
    Ip,
    /// The API client (routes with `auth: api_key`).
    Client,
    /// A request header's value; requests without it are not limited by this policy.
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientsConfig {
    /// `sqlite://PATH` or `postgres://...`.
    pub store: String,
    pub key_sources: Vec<KeySource>,
    pub default_rate_per_sec: f64,
    pub default_capacity: u32,
    pub save_state_interval: Duration,
    pub sync_interval: Duration,
}

/// Where a request carries its API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `Authorization: Bearer <key>`.
    AuthorizationBearer,
    Header(HeaderName),
    /// A query parameter, for older clients.
    Query(String),
}

/// One problem in the file, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", format_invalid(.0))]
    Invalid(Vec<FieldError>),
}

fn format_invalid(errors: &[FieldError]) -> String {
    let mut out = format!("{} error(s) in configuration:", errors.len());
    for e in errors {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}

impl ConfigError {
    /// The individual problems (one entry for an unreadable file).
    pub fn errors(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        validate::from_yaml(text).map_err(ConfigError::Invalid)
    }

    /// The https listener a plaintext redirect points to, if any.
    pub fn https_port(&self) -> Option<u16> {
        self.listeners
            .iter()
            .find(|l| matches!(l.kind, ListenerKind::Https(_)))
            .map(|l| l.address.port())
    }
}
