//! Validation of the server-wide sections: server, listeners, logging, admin, metrics,
//! trusted proxies and API clients.

use super::*;

pub(super) fn server(errs: &mut Errors, raw: Option<serde_yaml::Value>) -> ServerSettings {
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
    let max_header = f
        .max_request_header_size
        .map_or(DEFAULT_MAX_HEADER, |b| b.0);
    if !(MIN_MAX_HEADER..=PINGORA_MAX_HEADER).contains(&max_header) {
        errs.push(
            "server.max_request_header_size",
            format!("must be 1KiB..=1MiB (Pingora reads at most 1 MiB), got {max_header} bytes"),
        );
    }
    let pool = f.upstream_keepalive_pool_size.unwrap_or(128);
    if pool == 0 {
        errs.push("server.upstream_keepalive_pool_size", "must be at least 1");
    }
    let header_case = match f.header_case.as_deref() {
        None | Some("normalize") => HeaderCase::Normalize,
        Some("preserve") => HeaderCase::Preserve,
        Some(other) => {
            errs.push(
                "server.header_case",
                format!("unknown header case {other:?} (expected normalize or preserve)"),
            );
            HeaderCase::Normalize
        }
    };
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
        max_request_header_size: max_header,
        header_case,
    }
}

/// Envoy's default (60 KiB) rounded up; nginx refuses at 8 KiB per line and 32 KiB in all.
const DEFAULT_MAX_HEADER: usize = 64 * 1024;
const MIN_MAX_HEADER: usize = 1024;
/// Pingora refuses request headers larger than this while reading them.
const PINGORA_MAX_HEADER: usize = 1024 * 1024;

pub(super) fn listeners(errs: &mut Errors, raw: Vec<serde_yaml::Value>) -> Vec<Listener> {
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

pub(super) fn tls_config(errs: &mut Errors, path: &str, f: TlsFile) -> Option<TlsConfig> {
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

pub(super) fn logging(errs: &mut Errors, raw: Option<serde_yaml::Value>) -> Logging {
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

pub(super) fn admin(errs: &mut Errors, raw: serde_yaml::Value) -> Option<Admin> {
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

pub(super) fn metrics(errs: &mut Errors, raw: serde_yaml::Value) -> Option<MetricsListener> {
    let f: MetricsFile = errs.parse("metrics", raw)?;
    let address = socket_addr(errs, "metrics.address", f.address, "127.0.0.1:9091")?;
    Some(MetricsListener { address })
}

pub(super) fn clients(errs: &mut Errors, raw: serde_yaml::Value) -> Option<ClientsConfig> {
    let f: ClientsFile = errs.parse("clients", raw)?;
    let store = f
        .store
        .unwrap_or_else(|| "sqlite://data/tollgate.db".into());
    if !(store.starts_with("sqlite://")
        || store.starts_with("postgres://")
        || store.starts_with("postgresql://"))
    {
        errs.push("clients.store", "expected sqlite://PATH or postgres://...");
    } else if !store.starts_with("sqlite://") {
        // Parses the URL and its TLS parameters (reading `sslrootcert`); connects later.
        if let Err(e) = crate::clients::PgStore::new(&store) {
            errs.push("clients.store", e.to_string());
        }
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

pub(super) fn trusted_proxies(errs: &mut Errors, raw: Option<serde_yaml::Value>) -> Vec<IpNet> {
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
