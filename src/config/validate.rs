//! From the file's shape to a validated [`Config`], collecting every error with its YAML path.

use super::file::*;
use super::*;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

const DEFAULT_PID_FILE: &str = "/tmp/tollgate.pid";
const DEFAULT_UPGRADE_SOCK: &str = "/tmp/tollgate_upgrade.sock";

/// Collects errors while walking the file.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserializes one node; a type error is recorded with its full path and yields `None`.
    fn parse<T: DeserializeOwned>(&mut self, path: &str, value: serde_yaml::Value) -> Option<T> {
        match serde_path_to_error::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match inner.as_str() {
                    "." => path.to_string(),
                    p if path == "(root)" => p.to_string(),
                    p if p.starts_with('[') => format!("{path}{p}"),
                    p => format!("{path}.{p}"),
                };
                self.push(full, e.into_inner().to_string());
                None
            }
        }
    }

    fn positive(&mut self, path: &str, d: Option<HumanDuration>, default: Duration) -> Duration {
        match d {
            Some(HumanDuration(d)) if d.is_zero() => {
                self.push(path, "must be greater than zero");
                default
            }
            Some(HumanDuration(d)) => d,
            None => default,
        }
    }
}

pub(super) fn from_yaml(text: &str) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors::default();
    let root: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "(document)".into());
            return Err(vec![FieldError {
                path: at,
                message: format!("invalid YAML: {e}"),
            }]);
        }
    };
    let Some(top) = errs.parse::<TopFile>("(root)", root) else {
        return Err(errs.0);
    };

    let server = server(&mut errs, top.server);
    let listeners = listeners(&mut errs, top.listeners);
    let logging = logging(&mut errs, top.logging);
    let admin = top.admin.and_then(|v| admin(&mut errs, v));
    let metrics = top.metrics.and_then(|v| metrics(&mut errs, v));
    let trusted_proxies = trusted_proxies(&mut errs, top.trusted_proxies);
    let clients = top.clients.and_then(|v| clients(&mut errs, v));
    // Routes are checked against every declared group, valid or not, so one broken group does
    // not also report each route that uses it.
    let declared: HashSet<String> = top.upstreams.keys().cloned().collect();
    let upstreams = upstreams(&mut errs, top.upstreams);
    let routes = routes(&mut errs, top.routes, &declared, clients.is_some());

    if errs.0.is_empty() {
        Ok(Config {
            server,
            listeners,
            logging,
            admin,
            metrics,
            trusted_proxies,
            clients,
            upstreams,
            routes,
            source: Arc::new(Source::new(text)),
        })
    } else {
        Err(errs.0)
    }
}

fn server(errs: &mut Errors, raw: Option<serde_yaml::Value>) -> ServerSettings {
    let f: ServerFile = raw
        .and_then(|v| errs.parse("server", v))
        .unwrap_or_default();
    let threads = f.threads.unwrap_or(1);
    if threads == 0 {
        errs.push("server.threads", "must be at least 1");
    }
    let keepalive_requests = f.keepalive_requests.unwrap_or(1000);
    if keepalive_requests == 0 {
        errs.push("server.keepalive_requests", "must be at least 1");
    }
    let pool = f.upstream_keepalive_pool_size.unwrap_or(128);
    if pool == 0 {
        errs.push("server.upstream_keepalive_pool_size", "must be at least 1");
    }
    ServerSettings {
        threads: threads.max(1),
        work_stealing: f.work_stealing.unwrap_or(false),
        grace_period: errs.positive(
            "server.grace_period",
            f.grace_period,
            Duration::from_secs(30),
        ),
        graceful_shutdown_timeout: errs.positive(
            "server.graceful_shutdown_timeout",
            f.graceful_shutdown_timeout,
            Duration::from_secs(10),
        ),
        pid_file: f.pid_file.unwrap_or_else(|| DEFAULT_PID_FILE.into()).into(),
        upgrade_sock: f
            .upgrade_sock
            .unwrap_or_else(|| DEFAULT_UPGRADE_SOCK.into())
            .into(),
        header_read_timeout: errs.positive(
            "server.header_read_timeout",
            f.header_read_timeout,
            Duration::from_secs(10),
        ),
        keepalive_timeout: errs.positive(
            "server.keepalive_timeout",
            f.keepalive_timeout,
            Duration::from_secs(60),
        ),
        keepalive_requests,
        upstream_keepalive_pool_size: pool,
    }
}

fn listeners(errs: &mut Errors, raw: Vec<serde_yaml::Value>) -> Vec<Listener> {
    if raw.is_empty() {
        errs.push("listeners", "at least one listener is required");
    }
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, v) in raw.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Some(f) = errs.parse::<ListenerFile>(&path, v) else {
            continue;
        };
        if f.name.is_empty() {
            errs.push(format!("{path}.name"), "must not be empty");
        } else if !names.insert(f.name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", f.name),
            );
        }
        let address = match f.address.parse::<SocketAddr>() {
            Ok(a) => {
                if !addresses.insert(a) {
                    errs.push(
                        format!("{path}.address"),
                        format!("address {a} is used by another listener"),
                    );
                }
                Some(a)
            }
            Err(_) => {
                errs.push(
                    format!("{path}.address"),
                    format!("invalid socket address {:?} (expected ip:port)", f.address),
                );
                None
            }
        };
        let kind = match f.tls {
            Some(tls) => {
                if f.redirect_https {
                    errs.push(
                        format!("{path}.redirect_https"),
                        "only a plaintext listener can redirect to https",
                    );
                }
                tls_config(errs, &format!("{path}.tls"), tls).map(ListenerKind::Https)
            }
            None => Some(ListenerKind::Http {
                redirect_https: f.redirect_https,
            }),
        };
        if let (Some(address), Some(kind)) = (address, kind) {
            out.push(Listener {
                name: f.name,
                address,
                kind,
            });
        }
    }
    let has_https = out.iter().any(|l| matches!(l.kind, ListenerKind::Https(_)));
    for (i, l) in out.iter().enumerate() {
        if matches!(
            l.kind,
            ListenerKind::Http {
                redirect_https: true
            }
        ) && !has_https
        {
            errs.push(
                format!("listeners[{i}].redirect_https"),
                "no https listener to redirect to",
            );
        }
    }
    out
}

fn tls_config(errs: &mut Errors, path: &str, f: TlsFile) -> Option<TlsConfig> {
    if f.certificates.is_empty() {
        errs.push(
            format!("{path}.certificates"),
            "at least one certificate is required",
        );
        return None;
    }
    let defaults: Vec<usize> = f
        .certificates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.default)
        .map(|(i, _)| i)
        .collect();
    if defaults.len() > 1 {
        errs.push(
            format!("{path}.certificates"),
            "only one certificate can be the default",
        );
    }
    let mut certificates = Vec::new();
    for (i, c) in f.certificates.into_iter().enumerate() {
        let cpath = format!("{path}.certificates[{i}]");
        let (cert, key) = (PathBuf::from(&c.cert), PathBuf::from(&c.key));
        let both_missing = !cert.exists() && !key.exists();
        if !(c.self_signed_if_missing && both_missing) {
            for (field, p) in [("cert", &cert), ("key", &key)] {
                if !p.is_file() {
                    errs.push(
                        format!("{cpath}.{field}"),
                        format!("file not found: {}", p.display()),
                    );
                }
            }
        }
        certificates.push(CertificatePaths {
            cert,
            key,
            self_signed_if_missing: c.self_signed_if_missing,
        });
    }
    Some(TlsConfig {
        certificates,
        default_certificate: defaults.first().copied().unwrap_or(0),
        http2: f.http2,
    })
}

fn logging(errs: &mut Errors, raw: Option<serde_yaml::Value>) -> Logging {
    let f: LoggingFile = raw
        .and_then(|v| errs.parse("logging", v))
        .unwrap_or_default();
    let level = match f
        .level
        .as_deref()
        .unwrap_or("info")
        .parse::<log::LevelFilter>()
    {
        Ok(l) => l,
        Err(_) => {
            errs.push(
                "logging.level",
                format!(
                    "unknown level {:?} (expected off, error, warn, info, debug or trace)",
                    f.level.unwrap_or_default()
                ),
            );
            log::LevelFilter::Info
        }
    };
    Logging {
        level,
        file: f.file.filter(|s| !s.is_empty()).map(PathBuf::from),
        access_log: f.access_log.unwrap_or(true),
    }
}

fn socket_addr(
    errs: &mut Errors,
    path: &str,
    raw: Option<String>,
    default: &str,
) -> Option<SocketAddr> {
    let raw = raw.unwrap_or_else(|| default.to_string());
    match raw.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("invalid socket address {raw:?} (expected ip:port)"),
            );
            None
        }
    }
}

fn admin(errs: &mut Errors, raw: serde_yaml::Value) -> Option<Admin> {
    let f: AdminFile = errs.parse("admin", raw)?;
    let address = socket_addr(errs, "admin.address", f.address, "127.0.0.1:9090")?;
    let token_env = f.token_env.filter(|t| !t.is_empty());
    if token_env.is_none() && !address.ip().is_loopback() {
        errs.push(
            "admin.token_env",
            "an admin API on a non-loopback address needs a token (set token_env)",
        );
    }
    Some(Admin { address, token_env })
}

fn metrics(errs: &mut Errors, raw: serde_yaml::Value) -> Option<MetricsListener> {
    let f: MetricsFile = errs.parse("metrics", raw)?;
    let address = socket_addr(errs, "metrics.address", f.address, "127.0.0.1:9091")?;
    Some(MetricsListener { address })
}

fn rate_limit(
    errs: &mut Errors,
    path: &str,
    f: RateLimitFile,
    default_name: String,
    auth: Auth,
) -> Option<RateLimitConfig> {
    use crate::ratelimit::{Algorithm, Limiter, Policy};
    let before = errs.0.len();
    let key = match f.key.as_str() {
        "ip" => LimitKey::Ip,
        "client" => {
            if auth != Auth::ApiKey {
                errs.push(
                    format!("{path}.key"),
                    "key: client needs auth: api_key on the route",
                );
            }
            LimitKey::Client
        }
        k => match k
            .strip_prefix("header:")
            .and_then(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok())
        {
            Some(h) => LimitKey::Header(h),
            None => {
                errs.push(
                    format!("{path}.key"),
                    format!("invalid key {k:?} (expected ip, client or header:NAME)"),
                );
                LimitKey::Ip
            }
        },
    };
    let mut need = |field: &str, present: bool| {
        if !present {
            errs.push(format!("{path}.{field}"), "required for this algorithm");
        }
    };
    let algorithm = match f.algorithm.as_deref().unwrap_or("token_bucket") {
        "token_bucket" => {
            need("rate_per_sec", f.rate_per_sec.is_some());
            Algorithm::TokenBucket {
                rate_per_sec: f.rate_per_sec.unwrap_or(1.0),
                burst: f
                    .burst
                    .unwrap_or_else(|| f.rate_per_sec.unwrap_or(1.0).ceil() as u32),
            }
        }
        name @ ("sliding_window" | "fixed_window") => {
            need("limit", f.limit.is_some());
            need("window", f.window.is_some());
            let (limit, window) = (
                f.limit.unwrap_or(1),
                f.window.map_or(Duration::from_secs(1), |w| w.0),
            );
            if name == "sliding_window" {
                Algorithm::SlidingWindow { limit, window }
            } else {
                Algorithm::FixedWindow { limit, window }
            }
        }
        other => {
            errs.push(
                format!("{path}.algorithm"),
                format!(
                    "unknown algorithm {other:?} (expected token_bucket, sliding_window or fixed_window)"
                ),
            );
            return None;
        }
    };
    let policy = Policy {
        name: f.name.unwrap_or(default_name),
        algorithm,
        max_keys: f.max_keys.unwrap_or(100_000),
        dry_run: f.dry_run,
    };
    if errs.0.len() == before {
        // The limiter's own checks (ranges, window bounds, name charset) are the source of truth.
        if let Err(e) = Limiter::try_new(policy.clone()) {
            errs.push(path, e.to_string());
        }
    }
    (errs.0.len() == before).then_some(RateLimitConfig { key, policy })
}

fn clients(errs: &mut Errors, raw: serde_yaml::Value) -> Option<ClientsConfig> {
    let f: ClientsFile = errs.parse("clients", raw)?;
    let store = f
        .store
        .unwrap_or_else(|| "sqlite://data/tollgate.db".into());
    if !(store.starts_with("sqlite://")
        || store.starts_with("postgres://")
        || store.starts_with("postgresql://"))
    {
        errs.push("clients.store", "expected sqlite://PATH or postgres://...");
    }
    let mut key_sources = Vec::new();
    let raw_sources = f
        .key_sources
        .unwrap_or_else(|| vec!["authorization_bearer".into(), "header:x-api-key".into()]);
    if raw_sources.is_empty() {
        errs.push("clients.key_sources", "at least one key source is required");
    }
    for (i, s) in raw_sources.iter().enumerate() {
        let source = if s == "authorization_bearer" {
            Some(KeySource::AuthorizationBearer)
        } else if let Some(h) = s.strip_prefix("header:") {
            HeaderName::from_bytes(h.trim().as_bytes())
                .ok()
                .map(KeySource::Header)
        } else if let Some(q) = s.strip_prefix("query:") {
            let q = q.trim();
            (!q.is_empty()
                && q.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            .then(|| KeySource::Query(q.to_string()))
        } else {
            None
        };
        match source {
            Some(src) => key_sources.push(src),
            None => errs.push(
                format!("clients.key_sources[{i}]"),
                format!(
                    "invalid key source {s:?} (expected authorization_bearer, header:NAME or query:NAME)"
                ),
            ),
        }
    }
    let (rate, capacity) = f
        .defaults
        .map_or((5.0, 20), |d| (d.rate_per_sec, d.capacity));
    if !(rate.is_finite() && rate > 0.0) {
        errs.push("clients.defaults.rate_per_sec", "must be a positive number");
    }
    if capacity == 0 {
        errs.push("clients.defaults.capacity", "must be at least 1");
    }
    Some(ClientsConfig {
        store,
        key_sources,
        default_rate_per_sec: rate,
        default_capacity: capacity,
        save_state_interval: errs.positive(
            "clients.save_state_interval",
            f.save_state_interval,
            Duration::from_secs(10),
        ),
        sync_interval: errs.positive(
            "clients.sync_interval",
            f.sync_interval,
            Duration::from_secs(5),
        ),
    })
}

fn trusted_proxies(errs: &mut Errors, raw: Option<serde_yaml::Value>) -> Vec<IpNet> {
    let list: Vec<String> = raw
        .and_then(|v| errs.parse("trusted_proxies", v))
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match s.parse::<IpNet>() {
            Ok(n) => out.push(n.trunc()),
            Err(_) => match s.parse::<IpAddr>() {
                Ok(ip) => out.push(IpNet::from(ip)),
                Err(_) => errs.push(
                    format!("trusted_proxies[{i}]"),
                    format!("invalid CIDR or IP address {s:?}"),
                ),
            },
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn upstreams(
    errs: &mut Errors,
    raw: BTreeMap<String, serde_yaml::Value>,
) -> BTreeMap<String, UpstreamConfig> {
    if raw.is_empty() {
        errs.push("upstreams", "at least one upstream group is required");
    }
    let mut out = BTreeMap::new();
    for (name, v) in raw {
        let path = format!("upstreams.{name}");
        if !valid_name(&name) {
            errs.push(
                &path,
                "group names use letters, digits, '_', '-' and '.' (at most 64)",
            );
        }
        let Some(f) = errs.parse::<UpstreamFile>(&path, v) else {
            continue;
        };
        if let Some(u) = upstream(errs, &path, f) {
            out.insert(name, u);
        }
    }
    out
}

fn upstream(errs: &mut Errors, path: &str, f: UpstreamFile) -> Option<UpstreamConfig> {
    let before = errs.0.len();
    if f.backends.is_empty() {
        errs.push(
            format!("{path}.backends"),
            "at least one backend is required",
        );
    }
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for (i, v) in f.backends.into_iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let Some(b) = errs.parse::<BackendFile>(&bpath, v) else {
            continue;
        };
        let (address, weight, apath) = match b {
            BackendFile::Address(a) => (a, None, bpath.clone()),
            BackendFile::Detailed(d) => (d.address, d.weight, format!("{bpath}.address")),
        };
        let weight = match weight {
            Some(w) if !(1..=1000).contains(&w) => {
                errs.push(format!("{bpath}.weight"), "must be between 1 and 1000");
                1
            }
            Some(w) => w,
            None => 1,
        };
        match address.parse::<SocketAddr>() {
            Ok(a) if !seen.insert(a) => errs.push(apath, format!("duplicate backend {a}")),
            Ok(a) => backends.push(BackendConfig { address: a, weight }),
            Err(_) => errs.push(
                apath,
                format!("invalid socket address {address:?} (expected ip:port)"),
            ),
        }
    }
    let selection = match f.selection {
        None => Selection::RoundRobin,
        Some(SelectionFile::Name(n)) => match n.as_str() {
            "round_robin" => Selection::RoundRobin,
            "weighted" => Selection::Weighted,
            "random" => Selection::Random,
            "least_conn" => Selection::LeastConn,
            other => {
                errs.push(
                    format!("{path}.selection"),
                    format!(
                        "unknown selection {other:?} (expected round_robin, weighted, random, \
                         least_conn or consistent_hash: {{ key: ... }})"
                    ),
                );
                Selection::RoundRobin
            }
        },
        Some(SelectionFile::ConsistentHash { consistent_hash }) => {
            let kpath = format!("{path}.selection.consistent_hash.key");
            Selection::ConsistentHash(hash_key(errs, &kpath, &consistent_hash.key))
        }
    };
    let health_check = f
        .health_check
        .and_then(|h| health_check(errs, &format!("{path}.health_check"), h));
    let t = f.timeouts;
    let timeouts = Timeouts {
        connect: errs.positive(
            &format!("{path}.timeouts.connect"),
            t.connect,
            Duration::from_secs(2),
        ),
        read: errs.positive(
            &format!("{path}.timeouts.read"),
            t.read,
            Duration::from_secs(30),
        ),
        write: errs.positive(
            &format!("{path}.timeouts.write"),
            t.write,
            Duration::from_secs(30),
        ),
        idle: errs.positive(
            &format!("{path}.timeouts.idle"),
            t.idle,
            Duration::from_secs(60),
        ),
    };
    let tls = f.tls.map(|t| {
        if t.sni.is_empty() {
            errs.push(format!("{path}.tls.sni"), "must not be empty");
        }
        UpstreamTls {
            sni: t.sni,
            verify: t.verify,
        }
    });
    let circuit_breaker = f
        .circuit_breaker
        .map(|b| breaker(errs, &format!("{path}.circuit_breaker"), b));
    (errs.0.len() == before).then_some(UpstreamConfig {
        backends,
        selection,
        health_check,
        timeouts,
        tls,
        circuit_breaker,
    })
}

fn statuses(errs: &mut Errors, path: &str, list: Option<Vec<u16>>, default: &[u16]) -> Vec<u16> {
    let list = list.unwrap_or_else(|| default.to_vec());
    for (i, s) in list.iter().enumerate() {
        if !(100..=599).contains(s) {
            errs.push(
                format!("{path}[{i}]"),
                format!("{s} is not an HTTP status code"),
            );
        }
    }
    list
}

fn breaker(errs: &mut Errors, path: &str, f: CircuitBreakerFile) -> BreakerConfig {
    let d = crate::breaker::BreakerPolicy::default();
    let open_for = errs.positive(&format!("{path}.open_for"), f.open_for, d.open_for);
    let policy = crate::breaker::BreakerPolicy {
        consecutive_failures: f.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_rate: f.failure_rate,
        window: errs.positive(&format!("{path}.window"), f.window, d.window),
        min_requests: f.min_requests.unwrap_or(d.min_requests),
        open_for,
        max_open_for: errs.positive(
            &format!("{path}.max_open_for"),
            f.max_open_for,
            d.max_open_for.max(open_for),
        ),
        half_open_probes: f.half_open_probes.unwrap_or(d.half_open_probes),
        probe_timeout: errs.positive(
            &format!("{path}.probe_timeout"),
            f.probe_timeout,
            d.probe_timeout,
        ),
        max_ejection_percent: f.max_ejection_percent.unwrap_or(d.max_ejection_percent),
    };
    if let Err(e) = policy.validate() {
        errs.push(format!("{path}.{}", e.field), e.reason);
    }
    if policy.consecutive_failures == 0 && policy.failure_rate.is_none() {
        errs.push(
            format!("{path}.consecutive_failures"),
            "must be at least 1 unless failure_rate is set",
        );
    }
    BreakerConfig {
        policy,
        failure_statuses: statuses(
            errs,
            &format!("{path}.failure_statuses"),
            f.failure_statuses,
            &[502, 503, 504],
        ),
    }
}

fn retries(errs: &mut Errors, path: &str, f: Option<RetriesFile>) -> RetryPolicy {
    let Some(f) = f else {
        return RetryPolicy::default();
    };
    let d = RetryPolicy::default();
    let budget_percent = f.budget_percent.unwrap_or(d.budget_percent);
    if !(0.0..=100.0).contains(&budget_percent) {
        errs.push(format!("{path}.budget_percent"), "must be within 0..=100");
    }
    let attempts = f.attempts.unwrap_or(d.attempts);
    if attempts > 10 {
        errs.push(format!("{path}.attempts"), "at most 10 retries");
    }
    let opt = |errs: &mut Errors, field: &str, v: Option<HumanDuration>| {
        v.map(|v| errs.positive(&format!("{path}.{field}"), Some(v), Duration::from_secs(1)))
    };
    RetryPolicy {
        attempts,
        statuses: statuses(
            errs,
            &format!("{path}.statuses"),
            f.statuses,
            &[502, 503, 504],
        ),
        budget_percent,
        min_per_sec: f.min_per_sec.unwrap_or(d.min_per_sec),
        per_try_timeout: opt(errs, "per_try_timeout", f.per_try_timeout),
        deadline: opt(errs, "deadline", f.deadline),
    }
}

fn hash_key(errs: &mut Errors, path: &str, key: &str) -> HashKey {
    if key == "ip" {
        return HashKey::ClientIp;
    }
    if let Some(h) = key.strip_prefix("header:") {
        if let Ok(name) = HeaderName::from_bytes(h.trim().as_bytes()) {
            return HashKey::Header(name);
        }
    }
    if let Some(c) = key.strip_prefix("cookie:") {
        let c = c.trim();
        if !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';')
        {
            return HashKey::Cookie(c.to_string());
        }
    }
    errs.push(
        path,
        format!("invalid hash key {key:?} (expected ip, header:NAME or cookie:NAME)"),
    );
    HashKey::ClientIp
}

fn health_check(errs: &mut Errors, path: &str, f: HealthCheckFile) -> Option<HealthCheck> {
    let kind = match f.kind.as_str() {
        "tcp" => {
            for (field, set) in [
                ("path", f.path.is_some()),
                ("host", f.host.is_some()),
                ("expected_status", f.expected_status.is_some()),
            ] {
                if set {
                    errs.push(
                        format!("{path}.{field}"),
                        "only http health checks use this",
                    );
                }
            }
            HealthCheckKind::Tcp
        }
        "http" => {
            let p = f.path.unwrap_or_else(|| "/".into());
            if !p.starts_with('/') {
                errs.push(format!("{path}.path"), "must start with '/'");
            }
            let status = f.expected_status.unwrap_or(200);
            if !(100..=599).contains(&status) {
                errs.push(
                    format!("{path}.expected_status"),
                    "must be an HTTP status code",
                );
            }
            HealthCheckKind::Http {
                path: p,
                host: f.host.unwrap_or_else(|| "localhost".into()),
                expected_status: status,
            }
        }
        other => {
            errs.push(
                format!("{path}.kind"),
                format!("unknown health check kind {other:?} (expected tcp or http)"),
            );
            return None;
        }
    };
    let mut count = |field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => {
            errs.push(format!("{path}.{field}"), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let healthy_after = count("healthy_after", f.healthy_after, 2);
    let unhealthy_after = count("unhealthy_after", f.unhealthy_after, 3);
    Some(HealthCheck {
        kind,
        interval: errs.positive(
            &format!("{path}.interval"),
            f.interval,
            Duration::from_secs(5),
        ),
        timeout: errs.positive(
            &format!("{path}.timeout"),
            f.timeout,
            Duration::from_secs(1),
        ),
        healthy_after,
        unhealthy_after,
    })
}

fn routes(
    errs: &mut Errors,
    raw: Vec<serde_yaml::Value>,
    upstreams: &HashSet<String>,
    has_clients: bool,
) -> Vec<RouteConfig> {
    if raw.is_empty() {
        errs.push("routes", "at least one route is required");
    }
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut matches: HashMap<(Option<String>, String), usize> = HashMap::new();
    for (i, v) in raw.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(f) = errs.parse::<RouteFile>(&path, v) else {
            continue;
        };
        if !valid_name(&f.name) {
            errs.push(
                format!("{path}.name"),
                "route names use letters, digits, '_', '-' and '.' (at most 64)",
            );
        } else if !names.insert(f.name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate route name {:?}", f.name),
            );
        }
        let prefix = f.matcher.prefix;
        if !prefix.starts_with('/') {
            errs.push(
                format!("{path}.match.prefix"),
                format!("prefix {prefix:?} must start with '/'"),
            );
        } else {
            match crate::routing::normalize_path(&prefix) {
                Ok(n) if n != prefix => errs.push(
                    format!("{path}.match.prefix"),
                    format!("prefix {prefix:?} is not in normal form (did you mean {n:?}?)"),
                ),
                Ok(_) => {}
                Err(e) => errs.push(
                    format!("{path}.match.prefix"),
                    format!("invalid prefix {prefix:?}: {e}"),
                ),
            }
        }
        let host = f.matcher.host.map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            let ok = !bare.is_empty()
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                errs.push(
                    format!("{path}.match.host"),
                    format!("invalid host {h:?} (a DNS name, optionally starting with \"*.\")"),
                );
            }
        }
        let auth = match f.auth.as_deref() {
            None | Some("none") => Auth::None,
            Some("api_key") => {
                if !has_clients {
                    errs.push(
                        format!("{path}.auth"),
                        "api_key needs a top-level clients section",
                    );
                }
                Auth::ApiKey
            }
            Some(other) => {
                errs.push(
                    format!("{path}.auth"),
                    format!("unknown auth {other:?} (expected none or api_key)"),
                );
                Auth::None
            }
        };
        let mut rate_limits = Vec::new();
        for (j, v) in f
            .rate_limit
            .map(|r| r.into_vec())
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let lpath = format!("{path}.rate_limit[{j}]");
            let Some(lf) = errs.parse::<RateLimitFile>(&lpath, v) else {
                continue;
            };
            let default_name = format!("{}-{j}", f.name);
            if let Some(limit) = rate_limit(errs, &lpath, lf, default_name, auth) {
                if rate_limits
                    .iter()
                    .any(|l: &RateLimitConfig| l.policy.name == limit.policy.name)
                {
                    errs.push(
                        format!("{lpath}.name"),
                        "duplicate policy name in this route",
                    );
                }
                rate_limits.push(limit);
            }
        }
        let key_prefix = prefix.trim_end_matches('/').to_string();
        if let Some(other) = matches.insert((host.clone(), key_prefix), i) {
            errs.push(
                format!("{path}.match"),
                format!("same host and prefix as routes[{other}]"),
            );
        }
        if !upstreams.contains(&f.upstream) {
            errs.push(
                format!("{path}.upstream"),
                format!("unknown upstream {:?}", f.upstream),
            );
        }
        out.push(RouteConfig {
            name: f.name,
            host,
            prefix,
            upstream: f.upstream,
            strip_prefix: f.strip_prefix,
            retries: retries(errs, &format!("{path}.retries"), f.retries),
            auth,
            rate_limits,
        });
    }
    out
}
