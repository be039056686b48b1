//! Validation of upstream groups: backends, selection, health checks, breakers, timeouts.

use super::*;

pub(super) fn upstreams(
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

pub(super) fn upstream(errs: &mut Errors, path: &str, f: UpstreamFile) -> Option<UpstreamConfig> {
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

pub(super) fn breaker(errs: &mut Errors, path: &str, f: CircuitBreakerFile) -> BreakerConfig {
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

pub(super) fn hash_key(errs: &mut Errors, path: &str, key: &str) -> HashKey {
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

pub(super) fn health_check(
    errs: &mut Errors,
    path: &str,
    f: HealthCheckFile,
) -> Option<HealthCheck> {
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
