//! Prometheus metrics: definitions, the per-server registry, and the exposition.
//!
//! One [`Metrics`] per server (not the crate's global registry), so several servers in one
//! process (tests) never mix their numbers. Labels stay bounded: route, upstream and backend
//! names come from the config, status codes are numbers; never a raw path, ip or client key.
//!
//! State that already lives elsewhere (backend health, in-flight counts, breaker state) is not
//! mirrored on every change: [`Metrics::render`] reads it from the current runtime at scrape
//! time, after resetting the gauge family, so a backend removed by a reload disappears.

use crate::proxy::ctx::Outcome;
use crate::runtime::Runtime;
use crate::upstream::{BackendState, Group};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

/// Buckets from 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    backend_healthy: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    pub downstream_connections: IntGauge,
    pub tls_handshakes: IntCounterVec,
    pub cert_not_after: GaugeVec,
    pub reloads: IntCounterVec,
    breaker_state: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub retries: IntCounterVec,
    pub ratelimited: IntCounterVec,
    ratelimit_keys: IntGaugeVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub last_reload_success: Gauge,
    pub config_info: IntGaugeVec,
}

// The series a request updates are kept where the request path finds them (its route, group
// and backend), each looked up in its family on first use: `with_label_values` hashes the
// label values and takes the family's lock on every call, and a request made four such calls
// (bench/results/cg-series.md). Counters and histograms are never removed from their
// families, so a kept handle stays the series that is exported; and nothing is exported
// before it is first used, as before.

/// A route's series: its duration histogram, and its request counters for the status codes
/// most responses have (any other code is looked up in the family each time).
#[derive(Debug, Default)]
pub struct RouteSeries {
    duration: OnceLock<Histogram>,
    codes: [OnceLock<IntCounter>; COMMON_CODES.len()],
}

const COMMON_CODES: [u16; 10] = [200, 201, 204, 301, 302, 304, 401, 404, 429, 502];

/// An upstream group's series: the time to its backends' response headers.
#[derive(Debug, Default)]
pub struct GroupSeries {
    duration: OnceLock<Histogram>,
}

/// A backend's series: its attempt counters, by outcome.
#[derive(Debug, Default)]
pub struct BackendSeries {
    attempts: [OnceLock<IntCounter>; Outcome::COUNT],
}

/// Registers a collector; names are static and unique, so this cannot fail in practice.
fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    if let Err(e) = r.register(Box::new(c.clone())) {
        log::error!("metric registration failed: {e}");
    }
    c
}

macro_rules! counter_vec {
    ($r:expr, $name:expr, $help:expr, $labels:expr) => {
        register(
            $r,
            IntCounterVec::new(Opts::new($name, $help), $labels)
                .unwrap_or_else(|e| unreachable!("static metric definition {}: {e}", $name)),
        )
    };
}

macro_rules! gauge_vec {
    ($kind:ident, $r:expr, $name:expr, $help:expr, $labels:expr) => {
        register(
            $r,
            $kind::new(Opts::new($name, $help), $labels)
                .unwrap_or_else(|e| unreachable!("static metric definition {}: {e}", $name)),
        )
    };
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(
        r,
        HistogramVec::new(opts, labels)
            .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}")),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Observes the time from sending a request to `group`'s backend to its response header.
    pub fn upstream_responded(&self, group: &Group, after: Duration) {
        group
            .series
            .duration
            .get_or_init(|| self.upstream_duration.with_label_values(&[&group.name]))
            .observe(after.as_secs_f64());
    }

    /// Counts an attempt on `backend` of `group` by how it ended.
    pub fn upstream_attempt(&self, group: &Group, backend: &BackendState, outcome: Outcome) {
        let count = || {
            self.upstream_requests.with_label_values(&[
                &group.name,
                &backend.label,
                outcome.as_str(),
            ])
        };
        match backend.series.attempts.get(outcome as usize) {
            Some(series) => series.get_or_init(count).inc(),
            None => count().inc(),
        }
    }

    /// Counts a finished request by route and status, and observes its duration. `route` is
    /// `None` for a request no route took.
    pub fn request_finished(
        &self,
        route: Option<(&str, &RouteSeries)>,
        status: u16,
        latency: Duration,
    ) {
        let name = route.map_or("none", |(name, _)| name);
        let count = || {
            self.requests
                .with_label_values(&[name, itoa::Buffer::new().format(status)])
        };
        let slot = COMMON_CODES.iter().position(|&c| c == status);
        match (route, slot) {
            (Some((_, series)), Some(i)) => series.codes[i].get_or_init(count).inc(),
            _ => count().inc(),
        }
        let duration = || self.request_duration.with_label_values(&[name]);
        match route {
            Some((_, series)) => series
                .duration
                .get_or_init(duration)
                .observe(latency.as_secs_f64()),
            None => duration().observe(latency.as_secs_f64()),
        }
    }

    pub fn new() -> Self {
        let r = Registry::new();
        let build_info = gauge_vec!(
            IntGaugeVec,
            &r,
            "tollgate_build_info",
            "Tollgate build; always 1.",
            &["version"]
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let downstream_connections = register(
            &r,
            IntGauge::new(
                "tollgate_downstream_connections",
                "Client connections open now.",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        let last_reload_success = register(
            &r,
            Gauge::new(
                "tollgate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration load that was applied.",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        );
        Metrics {
            requests: counter_vec!(
                &r,
                "tollgate_requests_total",
                "Requests answered, by route and status code.",
                &["route", "code"]
            ),
            request_duration: histogram_vec(
                &r,
                "tollgate_request_duration_seconds",
                "Time from request header to the end of the response, by route.",
                &["route"],
            ),
            upstream_requests: counter_vec!(
                &r,
                "tollgate_upstream_requests_total",
                "Attempts sent to backends, by outcome (response, connect_error, error, timeout).",
                &["upstream", "backend", "outcome"]
            ),
            upstream_duration: histogram_vec(
                &r,
                "tollgate_upstream_duration_seconds",
                "Time from sending the request to a backend to its response header.",
                &["upstream"],
            ),
            backend_healthy: gauge_vec!(
                IntGaugeVec,
                &r,
                "tollgate_backend_healthy",
                "1 when health checks let the backend take traffic.",
                &["upstream", "backend"]
            ),
            backend_in_flight: gauge_vec!(
                IntGaugeVec,
                &r,
                "tollgate_backend_in_flight_requests",
                "Requests sent to the backend and not finished.",
                &["upstream", "backend"]
            ),
            downstream_connections,
            tls_handshakes: counter_vec!(
                &r,
                "tollgate_tls_handshakes_total",
                "Completed downstream TLS handshakes, by protocol version.",
                &["version"]
            ),
            cert_not_after: gauge_vec!(
                GaugeVec,
                &r,
                "tollgate_tls_cert_not_after_seconds",
                "Expiry (unix time) of each served certificate, by its first DNS name.",
                &["name"]
            ),
            reloads: counter_vec!(
                &r,
                "tollgate_config_reloads_total",
                "Configuration reloads, by result (success, failure).",
                &["result"]
            ),
            last_reload_success,
            breaker_state: gauge_vec!(
                IntGaugeVec,
                &r,
                "tollgate_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["upstream", "backend"]
            ),
            breaker_transitions: counter_vec!(
                &r,
                "tollgate_breaker_transitions_total",
                "Circuit breaker transitions, by the state entered.",
                &["upstream", "backend", "to"]
            ),
            ratelimited: counter_vec!(
                &r,
                "tollgate_ratelimited_total",
                "Requests refused by a rate limit (mode dry_run: would have been).",
                &["route", "policy", "mode"]
            ),
            ratelimit_keys: gauge_vec!(
                IntGaugeVec,
                &r,
                "tollgate_ratelimit_keys",
                "Keys tracked by each rate-limit policy (sliding windows track none).",
                &["policy"]
            ),
            retries: counter_vec!(
                &r,
                "tollgate_retries_total",
                "Requests sent again to another backend, by reason.",
                &["route", "reason"]
            ),
            retry_budget_exhausted: counter_vec!(
                &r,
                "tollgate_retry_budget_exhausted_total",
                "Retries not made because the route's retry budget was spent.",
                &["route"]
            ),
            config_info: gauge_vec!(
                IntGaugeVec,
                &r,
                "tollgate_config_info",
                "The configuration being served, by content hash; always 1.",
                &["hash"]
            ),
            registry: r,
        }
    }

    /// Marks `hash` as the configuration now serving.
    pub fn config_applied(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_reload_success.set(now);
    }

    /// The text exposition, with runtime-derived gauges refreshed from `runtime`.
    pub fn render(&self, runtime: &Runtime) -> Vec<u8> {
        self.backend_healthy.reset();
        self.backend_in_flight.reset();
        self.breaker_state.reset();
        let now = std::time::Instant::now();
        for group in runtime.groups.values() {
            for b in group.backends() {
                let labels = [group.name.as_str(), b.label.as_str()];
                if let Some(state) = group.breaker_state(b, now) {
                    self.breaker_state
                        .with_label_values(&labels)
                        .set(i64::from(state.as_u8()));
                }
                self.backend_healthy
                    .with_label_values(&labels)
                    .set(i64::from(b.is_healthy()));
                self.backend_in_flight
                    .with_label_values(&labels)
                    .set(i64::try_from(b.in_flight()).unwrap_or(i64::MAX));
            }
        }
        self.ratelimit_keys.reset();
        for route in runtime.router.iter() {
            for limit in &route.limits {
                self.ratelimit_keys
                    .with_label_values(&[limit.limiter.name()])
                    .set(i64::try_from(limit.limiter.len()).unwrap_or(i64::MAX));
            }
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept series is the family's own: counts through two routes of one name (a reload
    /// rebuilds routes), through a code that is not kept, and without a route all add up.
    #[test]
    fn kept_series_count_into_the_exported_family() {
        let m = Metrics::new();
        let (before, after) = (RouteSeries::default(), RouteSeries::default());
        let ms = Duration::from_millis(1);
        m.request_finished(Some(("api", &before)), 200, ms);
        m.request_finished(Some(("api", &before)), 200, ms);
        m.request_finished(Some(("api", &after)), 200, ms);
        m.request_finished(Some(("api", &after)), 418, ms);
        m.request_finished(None, 404, ms);
        let count = |route: &str, code: &str| m.requests.with_label_values(&[route, code]).get();
        assert_eq!(count("api", "200"), 3);
        assert_eq!(count("api", "418"), 1);
        assert_eq!(count("none", "404"), 1);
        let observed = |route: &str| {
            m.request_duration
                .with_label_values(&[route])
                .get_sample_count()
        };
        assert_eq!((observed("api"), observed("none")), (4, 1));
    }
}
