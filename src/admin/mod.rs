//! The admin API, on its own listener (never on the public ones).
//!
//! Served by Pingora's `ServeHttp` on Pingora's runtime and stopped with the server, so it needs
//! no second HTTP stack. JSON in and out; errors are `{"code":..,"message":..}`. Every endpoint
//! but `/healthz` requires `Authorization: Bearer <token>` when a token is configured (compared
//! in constant time); config validation refuses a token-less admin API off loopback.
//!
//! - `GET /healthz`: liveness. `GET /readyz`: config loaded and a healthy backend per group.
//! - `GET /admin/upstreams`, `GET /admin/routes`, `GET /admin/config` (hash, secrets redacted).
//! - `POST /admin/reload`: same as `SIGHUP`; the result, with the errors when refused.

mod clients;
mod http_util;

use crate::clients::Clients;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::runtime::SharedRuntime;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use http_util::{error, json};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

pub use http_util::constant_time_eq;

/// The admin API application.
pub struct AdminApp {
    runtime: SharedRuntime,
    reloader: Arc<Reloader>,
    token: Option<String>,
    clients: Option<Arc<Clients>>,
}

impl AdminApp {
    pub fn new(
        runtime: SharedRuntime,
        reloader: Arc<Reloader>,
        token: Option<String>,
        clients: Option<Arc<Clients>>,
    ) -> Self {
        AdminApp {
            runtime,
            reloader,
            token,
            clients,
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.as_bytes())
    }

    async fn dispatch(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if path == "/healthz" {
            return json(StatusCode::OK, &json!({"status": "ok"}));
        }
        if !self.authorized(session) {
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or invalid admin token");
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
            return resp;
        }
        if path == "/clients" || path.starts_with("/clients/") {
            return match &self.clients {
                Some(registry) => clients::handle(registry, session, &method, &path).await,
                None => error(
                    StatusCode::NOT_FOUND,
                    "no clients section in the configuration",
                ),
            };
        }
        match (method, path.as_str()) {
            (Method::GET, "/readyz") => self.readyz(),
            (Method::GET, "/admin/upstreams") => self.upstreams(),
            (Method::GET, "/admin/routes") => self.routes(),
            (Method::GET, "/admin/config") => self.config(),
            (Method::POST, "/admin/reload") => self.reload().await,
            (_, "/readyz" | "/admin/upstreams" | "/admin/routes" | "/admin/config")
            | (_, "/admin/reload") => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        let rt = self.runtime.load();
        let not_ready: Vec<&str> = rt
            .groups
            .values()
            .filter(|g| !g.backends().iter().any(|b| b.is_healthy()))
            .map(|g| g.name.as_str())
            .collect();
        if not_ready.is_empty() {
            json(StatusCode::OK, &json!({"status": "ready"}))
        } else {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"code": 503, "message": "no healthy backend", "upstreams": not_ready}),
            )
        }
    }

    fn upstreams(&self) -> Response<Vec<u8>> {
        let rt = self.runtime.load();
        let now = std::time::Instant::now();
        let mut groups: Vec<Value> = rt
            .groups
            .values()
            .map(|g| {
                let backends: Vec<Value> = g
                    .backends()
                    .iter()
                    .zip(&g.config.backends)
                    .map(|(b, cfg)| {
                        json!({
                            "address": b.label,
                            "weight": cfg.weight,
                            "healthy": b.is_healthy(),
                            "in_flight": b.in_flight(),
                            "breaker": g.breaker_state(b, now).map(|s| s.as_str()),
                        })
                    })
                    .collect();
                json!({
                    "name": g.name,
                    "selection": g.config.selection.as_str(),
                    "health_check": g.config.health_check.is_some(),
                    "backends": backends,
                })
            })
            .collect();
        groups.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json(StatusCode::OK, &json!({ "upstreams": groups }))
    }

    fn routes(&self) -> Response<Vec<u8>> {
        let rt = self.runtime.load();
        let routes: Vec<Value> = rt
            .config
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "host": r.host,
                    "prefix": r.prefix,
                    "upstream": r.upstream,
                    "strip_prefix": r.strip_prefix,
                })
            })
            .collect();
        json(StatusCode::OK, &json!({ "routes": routes }))
    }

    fn config(&self) -> Response<Vec<u8>> {
        let rt = self.runtime.load();
        let source = &rt.config.source;
        let mut value: Value = serde_yaml::from_str(&source.text).unwrap_or(Value::Null);
        http_util::redact(&mut value);
        json(
            StatusCode::OK,
            &json!({ "hash": source.hash, "config": value }),
        )
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(outcome) if outcome.applied => json(StatusCode::OK, &json!(outcome)),
            Ok(outcome) => json(StatusCode::UNPROCESSABLE_ENTITY, &json!(outcome)),
            Err(e) => {
                log::error!("reload task failed: {e}");
                error(StatusCode::INTERNAL_SERVER_ERROR, "reload failed")
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.dispatch(session).await
    }
}

/// Serves `GET /metrics` on the metrics listener.
pub struct MetricsApp {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
}

impl MetricsApp {
    pub fn new(runtime: SharedRuntime, metrics: Arc<Metrics>) -> Self {
        MetricsApp { runtime, metrics }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path() != "/metrics" {
            return error(StatusCode::NOT_FOUND, "not found");
        }
        let body = self.metrics.render(&self.runtime.load());
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
