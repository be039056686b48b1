//! The gate: who is calling (API keys) and whether they may (rate limits).
//!
//! Runs in `request_filter` after routing. Order: identify the API client (401), spend from
//! the client's own bucket (429), then each of the route's policies in order (429 from the
//! first that refuses; `dry_run` policies only count). Every decision adds its members to the
//! `RateLimit-Policy` / `RateLimit` headers (IETF httpapi draft), sent on allowed and limited
//! responses alike. Nothing here touches the database or allocates per key: the client index
//! and the limiter tables are in memory.

use super::names;
use crate::clients::{AuthError, ClientBucket, ClientEntry, Clients};
use crate::config::{KeySource, LimitKey};
use crate::metrics::Metrics;
use crate::ratelimit::{write_policy_item, write_ratelimit_item, Decision, Key, Limiter};
use crate::runtime::{Route, SharedRuntime};
use async_trait::async_trait;
use http::header::InvalidHeaderValue;
use http::HeaderValue;
use pingora::http::{RequestHeader, StaticHeaderName};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::utils::clock;
use pingora::{ErrorType, OrErr};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// One rate-limit policy of a route.
pub struct RouteLimit {
    pub key: LimitKey,
    pub limiter: Arc<Limiter>,
    /// The limiter's `RateLimit-Policy` member as a header value, made once: a response
    /// limited by this policy alone sends it as is (a clone shares its bytes).
    pub policy_value: HeaderValue,
}

impl RouteLimit {
    pub fn new(key: LimitKey, limiter: Arc<Limiter>) -> Result<Self, InvalidHeaderValue> {
        let policy_value = HeaderValue::from_str(limiter.policy_header())?;
        Ok(RouteLimit {
            key,
            limiter,
            policy_value,
        })
    }
}

/// The identified API client and how its key was presented (so it can be stripped).
pub struct Caller {
    pub client: Arc<ClientEntry<ClientBucket>>,
    pub source: KeySource,
}

/// The rate-limit headers of a request.
#[derive(Default)]
pub struct LimitHeaders {
    policy: Policies,
    ratelimit: String,
}

/// `RateLimit-Policy`'s members so far.
#[derive(Default)]
enum Policies {
    #[default]
    None,
    /// One route policy: its value as made with the route.
    One(HeaderValue),
    /// The client's own, or more than one: written out.
    Written(String),
}

impl LimitHeaders {
    /// Appends the member of the client's own bucket, written out.
    fn write_client_policy(&mut self, quota: u64, window_secs: u64) {
        let mut out = self.take_written();
        write_policy_item(&mut out, "client", quota, window_secs);
        self.policy = Policies::Written(out);
    }

    /// Appends a route policy's member, made once as `value`: kept as is when it is the only one.
    fn push_policy(&mut self, value: &HeaderValue) {
        if matches!(self.policy, Policies::None) {
            self.policy = Policies::One(value.clone());
            return;
        }
        let mut out = self.take_written();
        push_member(&mut out, value);
        self.policy = Policies::Written(out);
    }

    /// The members so far, written out (room for the usual one or two more).
    fn take_written(&mut self) -> String {
        match std::mem::take(&mut self.policy) {
            Policies::None => String::with_capacity(64),
            Policies::One(first) => {
                let mut out = String::with_capacity(64);
                push_member(&mut out, &first);
                out
            }
            Policies::Written(out) => out,
        }
    }

    /// `RateLimit-Policy` and `RateLimit` (`None` when no policy applied); `RateLimit`, which
    /// changes with every request, marked never-indexed for HTTP/2.
    pub fn into_header_values(
        self,
    ) -> pingora::Result<Option<[(&'static StaticHeaderName, HeaderValue); 2]>> {
        let value = |v: String| {
            HeaderValue::try_from(v).explain_err(ErrorType::InvalidHTTPHeader, |_| "RateLimit")
        };
        let policy = match self.policy {
            Policies::None => return Ok(None),
            Policies::One(value) => value,
            Policies::Written(out) => value(out)?,
        };
        Ok(Some([
            (&names::RATELIMIT_POLICY, policy),
            (
                &names::RATELIMIT,
                names::never_indexed(value(self.ratelimit)?),
            ),
        ]))
    }
}

/// Appends a member made as a header value (visible ASCII, so also a `str`), after `", "` if
/// `out` holds others.
fn push_member(out: &mut String, member: &HeaderValue) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push_str(member.to_str().unwrap_or_default());
}

/// Why the gate refused.
pub enum Refusal {
    Unauthorized(AuthError),
    /// The registry is not open (a reload added `auth: api_key` without a clients section).
    NoRegistry,
    Limited {
        retry_after_secs: u64,
    },
}

/// Finds the API key in the request: the first configured source that carries one.
pub fn presented_key<'r>(
    req: &'r RequestHeader,
    sources: &[KeySource],
) -> Option<(&'r str, KeySource)> {
    sources.iter().find_map(|source| {
        let key = match source {
            KeySource::AuthorizationBearer => req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                }),
            KeySource::Header(name) => req.headers.get(name).and_then(|v| v.to_str().ok()),
            KeySource::Query(param) => req.uri.query().and_then(|q| query_value(q, param)),
        };
        key.map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| (k, source.clone()))
    })
}

/// The raw value of `param` in a query string.
fn query_value<'q>(query: &'q str, param: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == param)
        .map(|(_, v)| v)
}

/// The query string without `param` (for stripping a key from the upstream request).
pub fn query_without(query: &str, param: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != param)
        .collect::<Vec<_>>()
        .join("&")
}

/// Identifies the caller of an `auth: api_key` route.
pub fn authenticate(
    registry: Option<&Clients>,
    req: &RequestHeader,
    sources: &[KeySource],
) -> Result<Caller, Refusal> {
    let registry = registry.ok_or(Refusal::NoRegistry)?;
    let (key, source) =
        presented_key(req, sources).ok_or(Refusal::Unauthorized(AuthError::Missing))?;
    let client = registry
        .authenticate(key, clock::system_now())
        .map_err(Refusal::Unauthorized)?;
    Ok(Caller { client, source })
}

/// Applies the client's own bucket, then the route's policies, at `now`; fills `headers`
/// either way.
pub fn check_limits(
    now: Instant,
    route: &Route,
    caller: Option<&Caller>,
    client_ip: IpAddr,
    req: &RequestHeader,
    metrics: &Metrics,
    headers: &mut LimitHeaders,
) -> Result<(), Refusal> {
    if caller.is_some() || !route.limits.is_empty() {
        // One allocation for the usual one or two policies, not one per doubling.
        headers.ratelimit.reserve(64);
    }
    let mut refusal: Option<u64> = None;
    if let Some(caller) = caller {
        let bucket = caller.client.bucket().inner();
        let decision = bucket.try_acquire(now);
        let (quota, window) = bucket.quota();
        headers.write_client_policy(quota, window);
        write_ratelimit_item(&mut headers.ratelimit, "client", &decision);
        if !decision.allowed {
            count(metrics, route, "client", false);
            refusal = Some(retry_after(&decision));
        }
    }
    for limit in &route.limits {
        if refusal.is_some() {
            break;
        }
        let header_value;
        let key = match &limit.key {
            LimitKey::Ip => Key::Ip(client_ip),
            LimitKey::Client => match caller {
                Some(c) => Key::Str(c.client.client_id()),
                None => continue,
            },
            LimitKey::Header(name) => {
                header_value = req.headers.get(name).and_then(|v| v.to_str().ok());
                match header_value {
                    Some(v) => Key::Str(v),
                    None => continue,
                }
            }
        };
        let decision = limit.limiter.check(key, now);
        headers.push_policy(&limit.policy_value);
        limit
            .limiter
            .write_ratelimit(&decision, &mut headers.ratelimit);
        if !decision.allowed {
            let dry_run = limit.limiter.dry_run();
            count(metrics, route, limit.limiter.name(), dry_run);
            if dry_run {
                log::info!(
                    "rate limit {} would refuse a request on route {} (dry run)",
                    limit.limiter.name(),
                    route.name
                );
            } else {
                refusal = Some(retry_after(&decision));
            }
        }
    }
    match refusal {
        Some(retry_after_secs) => Err(Refusal::Limited { retry_after_secs }),
        None => Ok(()),
    }
}

fn retry_after(d: &Decision) -> u64 {
    d.retry_after_secs().unwrap_or(1)
}

fn count(metrics: &Metrics, route: &Route, policy: &str, dry_run: bool) {
    let mode = if dry_run { "dry_run" } else { "enforced" };
    metrics
        .ratelimited
        .with_label_values(&[&route.name, policy, mode])
        .inc();
}

/// Evicts idle keys from every rate-limit table of the current runtime, every few seconds,
/// so memory follows the active clients rather than every client ever seen.
pub struct LimitSweeper {
    runtime: SharedRuntime,
}

impl LimitSweeper {
    pub fn new(runtime: SharedRuntime) -> Self {
        LimitSweeper { runtime }
    }
}

#[async_trait]
impl BackgroundService for LimitSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let runtime = self.runtime.load_full();
            let now = Instant::now();
            for route in runtime.router.iter() {
                for limit in &route.limits {
                    limit.limiter.sweep(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).expect("request");
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).expect("header");
        }
        r
    }

    /// The first configured source carrying a key wins; empty values are skipped.
    #[test]
    fn key_sources_are_tried_in_order() {
        let sources = [
            KeySource::AuthorizationBearer,
            KeySource::Header(http::HeaderName::from_static("x-api-key")),
            KeySource::Query("api_key".into()),
        ];
        let r = req("/x?api_key=q", &[("x-api-key", "h")]);
        assert_eq!(presented_key(&r, &sources).map(|k| k.0), Some("h"));
        let r = req("/x?api_key=q", &[("authorization", "Bearer b")]);
        assert_eq!(presented_key(&r, &sources).map(|k| k.0), Some("b"));
        let r = req("/x?a=1&api_key=q", &[("x-api-key", " ")]);
        assert_eq!(presented_key(&r, &sources).map(|k| k.0), Some("q"));
        assert!(presented_key(&req("/x", &[]), &sources).is_none());
    }

    /// Stripping a query key keeps every other parameter in order.
    #[test]
    fn query_key_is_stripped() {
        assert_eq!(query_without("a=1&api_key=k&b=2", "api_key"), "a=1&b=2");
        assert_eq!(query_without("api_key=k", "api_key"), "");
    }
}
