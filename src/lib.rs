//! Tollgate: an HTTPS edge proxy on Cloudflare's Pingora.
//!
//! It terminates TLS (rustls, certificates by SNI), routes each request by host and path
//! prefix to a named upstream group, picks a healthy backend, and reloads its one YAML file
//! without dropping a request.
//!
//! # Layout
//! - [`config`]: the YAML file's shape and its validation into [`config::Config`], errors with YAML paths.
//! - [`server`]: builds the Pingora server (listeners, services) from a config; [`server::build_server`].
//! - [`runtime`]: routes + upstream groups of one config generation, behind an `ArcSwap`.
//! - [`proxy`]: the request path, Pingora's `ProxyHttp` phases, one per concern.
//! - [`routing`]: path normalization and longest-prefix matching on segment boundaries.
//! - [`upstream`]: groups, selection algorithms, peers and timeouts, health checks.
//! - [`breaker`]: per-backend circuit breakers (closed/open/half-open) and the ejection cap.
//! - [`ratelimit`]: token bucket (GCRA), sliding window (Pingora's estimator), fixed window; bounded key tables.
//! - [`clients`]: API clients: keys, in-memory index, SQLite/PostgreSQL stores, fleet sync.
//! - [`tls`]: certificate store, SNI resolver, demo certificates.
//! - [`reload`]: SIGHUP reload that swaps the runtime and certificates atomically.
//! - [`redirect`]: the plaintext listener's 308 to https.
//! - [`metrics`]: Prometheus definitions and exposition (own registry per server).
//! - [`admin`]: the admin API and the metrics listener.
//! - [`logging`]: logger setup and the JSON access-log line.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod breaker;
pub mod clients;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod redirect;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::{build_server, StartOptions};
