//! Validation of routes: matching, auth, retries and rate limits.

use super::*;

pub(super) fn routes(
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

pub(super) fn rate_limit(
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

pub(super) fn retries(errs: &mut Errors, path: &str, f: Option<RetriesFile>) -> RetryPolicy {
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
