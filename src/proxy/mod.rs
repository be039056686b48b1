//! The request path: Tollgate's [`ProxyHttp`] implementation.
//!
//! ```text
//! new_ctx                  snapshot the runtime (one Arc for the whole request)
//! early_request_filter     header deadline met; keep-alive settings
//! request_filter           client ip, request id -> header size (431) -> normalize path
//!                          -> route (404) -> api key (401) -> limits (429)
//! upstream_peer            group.select(healthy && not tried) -> peer (503)
//! fail_to_connect          nothing was sent: retry on another backend
//! error_while_proxy        retry only a reused pool connection that died (Pingora's rule)
//! upstream_request_filter  path rewrite, X-Forwarded-*, X-Request-Id
//! response_filter          X-Request-Id back to the client
//! fail_to_proxy            JSON error (502/503/504), detail to the error log
//! logging                  one access-log line
//! ```
//! Each phase stays short; the decisions live in modules that take plain inputs.

pub mod connections;
pub mod ctx;
pub mod deadline;
pub mod drain;
pub mod forwarding;
pub mod gate;
pub mod names;
pub mod respond;
pub mod retry;

use crate::clients::Clients;
use crate::config::{Auth, HashKey, KeySource};
use crate::logging::{AccessLine, AccessLog};
use crate::metrics::Metrics;
use crate::routing::{normalize_path, strip_prefix};
use crate::runtime::{Route, SharedRuntime};
use ctx::{Ctx, Outcome, RequestMeta};
use futures::future::BoxFuture;
use http::HeaderValue;
use pingora::http::authority::raw_target_authority;
use pingora::http::{RequestHeader, ResponseHeader, StaticHeaderName};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::utils::clock;
use pingora::ErrorType::{self, HTTPStatus};
use pingora::RetryType;
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The proxy service's request logic.
pub struct Tollgate {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    clients: Option<Arc<Clients>>,
    draining: drain::Draining,
    access_log: Arc<AccessLog>,
    max_header_size: usize,
}

impl Tollgate {
    pub fn new(
        runtime: SharedRuntime,
        metrics: Arc<Metrics>,
        clients: Option<Arc<Clients>>,
        draining: drain::Draining,
        access_log: Arc<AccessLog>,
    ) -> Self {
        let server = runtime.load().config.server.clone();
        Tollgate {
            runtime,
            metrics,
            clients,
            draining,
            access_log,
            max_header_size: server.max_request_header_size,
        }
    }
}

impl ProxyHttp for Tollgate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.runtime.load_full())
    }

    /// No downstream modules. Pingora's default adds its response-compression module switched
    /// off, which still builds a context and runs its filters on every request; Tollgate does
    /// not compress responses (bench/results/cg-hotpath.md).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    /// Marks the request header as read in time and keeps the connection alive for the next.
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        deadline::header_read();
        // Only where Pingora keeps the connection (not HTTP/1.0 without keep-alive, not after
        // ambiguous framing such as Content-Length with Transfer-Encoding).
        if session.get_keepalive().is_some() {
            session.set_keepalive(deadline::KEEP_ALIVE);
        }
        Ok(())
    }

    /// Routes the request; returns `Ok(true)` when a response (400/404) was already written.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let req = session.req_header();
        ctx.request = RequestMeta::read(req, peer, &ctx.runtime.trusted);
        if header_size(req) > self.max_header_size {
            return reply(session, ctx, 431, "request header fields too large").await;
        }

        let path = match normalize_path(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("request {}: rejected path: {e}", ctx.request.id);
                return reply(session, ctx, 400, "bad request path").await;
            }
        };
        let Some(found) = ctx.runtime.router.lookup(request_host(req), &path) else {
            return reply(session, ctx, 404, "no route").await;
        };
        let route = found.value.clone();
        if route.auth == Auth::ApiKey {
            match gate::authenticate(self.clients.as_deref(), req, ctx.runtime.key_sources()) {
                Ok(caller) => ctx.caller = Some(caller),
                Err(refusal) => return self.refuse(session, ctx, &route, refusal).await,
            }
        }
        if let Err(refusal) = gate::check_limits(
            clock::now(),
            &route,
            ctx.caller.as_ref(),
            ctx.request.client_ip,
            req,
            &self.metrics,
            &mut ctx.limit_headers,
        ) {
            return self.refuse(session, ctx, &route, refusal).await;
        }
        let key_param = match ctx.caller.as_ref().map(|c| &c.source) {
            Some(KeySource::Query(param)) => Some(param.as_str()),
            _ => None,
        };
        ctx.request.upstream_path = upstream_target(req, &path, &route, found.prefix, key_param);
        if route.retries.attempts > 0 && req.method.is_idempotent() {
            // Keep the start of the body so an idempotent request can be sent again.
            session.as_mut().enable_retry_buffering();
        }
        ctx.in_flight = Some(route.retry_budget.request());
        ctx.route = Some(route);
        Ok(false)
    }

    /// Picks a backend that is healthy, admitted by its breaker, and not tried yet (503 if
    /// none); the attempt's read timeout honours the route's per-try timeout and deadline.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in context"))?;
        let group = &route.group;
        let now = clock::now();
        let Some(read_timeout) = retry::attempt_timeout(
            &route.retries,
            group.config.timeouts.read,
            ctx.request.started,
            now,
        ) else {
            return Err(Error::explain(HTTPStatus(504), "route deadline passed"));
        };
        let key = hash_key(
            group.hash_key(),
            session.req_header(),
            ctx.request.client_ip,
        );
        let attempts = &ctx.upstream;
        let Some((backend, admitted)) = group.select(&key, now, |b| !attempts.has_tried(b)) else {
            return Err(Error::explain(
                HTTPStatus(503),
                format!("upstream {}: no available backend left to try", group.name),
            ));
        };
        let mut peer = group.peer(&backend);
        peer.options.read_timeout = Some(read_timeout);
        ctx.upstream.begin(backend, admitted);
        Ok(peer)
    }

    /// Nothing reached the backend: a breaker failure, and safe to retry elsewhere.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(route) = ctx.route.clone() {
            ctx.upstream.report(&route.group, false, clock::now());
            ctx.upstream
                .end(&self.metrics, &route.group, Outcome::ConnectError);
            e.set_retry(self.take_retry(ctx, &route, retry::Reason::Connect));
        }
        e
    }

    /// An attempt failed after connecting: a breaker failure (unless it was a status we chose
    /// to retry, already reported); retried only when safe (see [`retry`]).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        let Some(route) = ctx.route.clone() else {
            e.set_retry(false);
            return e;
        };
        if ctx.upstream.retry_on_status {
            // Decided, budgeted and reported in upstream_response_filter.
            ctx.upstream
                .end(&self.metrics, &route.group, Outcome::Response);
            e.set_retry(true);
            return e;
        }
        ctx.upstream.report(&route.group, false, clock::now());
        let outcome = Outcome::of_error(&e);
        ctx.upstream.end(&self.metrics, &route.group, outcome);
        let stale_pool = client_reused && matches!(e.retry, RetryType::ReusedOnly);
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        let reason = match outcome {
            _ if stale_pool => retry::Reason::StalePool,
            Outcome::Timeout => retry::Reason::Timeout,
            _ => retry::Reason::Error,
        };
        let retry = (stale_pool || replayable) && self.take_retry(ctx, &route, reason);
        e.set_retry(retry);
        e
    }

    /// Rewrites the path and adds the forwarding headers.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Pingora accepts a repeated, identical Content-Length ("3, 3"); RFC 9110 forbids
        // forwarding it as is.
        let repeated_length = upstream
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(','))
            .map(|(first, _)| first.trim().to_string());
        if let Some(length) = repeated_length {
            upstream.insert_header(http::header::CONTENT_LENGTH, length)?;
        }
        if let Some(path) = &ctx.request.upstream_path {
            let uri = path.parse::<http::Uri>().or_err(
                ErrorType::InternalError,
                "rewritten path is not a valid uri",
            )?;
            upstream.set_uri(uri);
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let peer = ctx.request.peer_ip;
        let xff = forwarding::forwarded_for(&ctx.runtime.trusted, peer, &upstream.headers);
        upstream.insert_header(&names::X_FORWARDED_FOR, xff)?;
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        upstream.insert_header(&names::X_FORWARDED_PROTO, proto)?;
        // The copy's Host as it is (Pingora set it from an HTTP/2 request's authority before
        // this filter), else the authority the target names (Pingora sets Host from it after).
        let host = match upstream.headers.get(http::header::HOST) {
            Some(host) => Some(host.clone()),
            None => request_host(upstream).and_then(|h| HeaderValue::from_str(h).ok()),
        };
        if let Some(host) = host {
            upstream.insert_header(&names::X_FORWARDED_HOST, host)?;
        }
        upstream.insert_header(&names::X_REQUEST_ID, ctx.request.id.header())?;
        // Only Tollgate says who the client is; the key itself never reaches the backend.
        upstream.remove_header(names::X_CLIENT_ID.name());
        if let Some(caller) = &ctx.caller {
            match &caller.source {
                KeySource::AuthorizationBearer => {
                    upstream.remove_header(&http::header::AUTHORIZATION);
                }
                KeySource::Header(name) => {
                    upstream.remove_header(name);
                }
                KeySource::Query(_) => {}
            }
            upstream.insert_header(&names::X_CLIENT_ID, caller.client.client_id())?;
        }
        ctx.upstream.sent_at = Some(clock::now());
        Ok(())
    }

    /// The backend answered: report to its breaker by status, and turn a retryable status
    /// into a retry when the request is safe to replay (nothing has reached the client yet).
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        let now = clock::now();
        ctx.upstream.responded(&self.metrics, &route.group, now);
        ctx.upstream
            .report(&route.group, !route.group.is_failure_status(status), now);
        let replayable = route.retries.statuses.contains(&status)
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        if replayable && self.take_retry(ctx, &route, retry::Reason::Status) {
            ctx.upstream.retry_on_status = true;
            return Err(Error::explain(
                ErrorType::Custom("retryable status"),
                format!("backend answered {status}"),
            ));
        }
        Ok(())
    }

    /// Returns the request id and rate-limit headers to the client; closes the connection
    /// after this response when the process is leaving.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header(&names::X_REQUEST_ID, ctx.request.id.header())?;
        if self.draining.is_set() {
            session.set_keepalive(None);
        }
        // Moved, not copied: the response header is written once.
        if let Some(values) = std::mem::take(&mut ctx.limit_headers).into_header_values()? {
            for (name, value) in values {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    /// Answers a failed request with a JSON error; the detail goes to the error log.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy
    where
        Ctx: Send + Sync,
    {
        let code = status_for(e);
        if code >= 500 {
            log::error!("request {}: {code}: {e}", ctx.request.id);
        } else if code > 0 {
            log::debug!("request {}: {code}: {e}", ctx.request.id);
        }
        if code > 0 && session.response_written().is_none() {
            let message = respond::default_message(code);
            if let Err(we) = respond::write_error(session, code, message, &ctx.request.id).await {
                log::debug!(
                    "request {}: cannot write error response: {we}",
                    ctx.request.id
                );
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// `fail_to_proxy` already logged the failure with the request id.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    /// Writes the access-log line and the request metrics; never fails the request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.map(status_for))
            .unwrap_or(0);
        let outcome = match e {
            _ if ctx.upstream.has_response() => Outcome::Response,
            Some(e) => Outcome::of_error(e),
            None => Outcome::Error,
        };
        if let Some(route) = &ctx.route {
            ctx.upstream.end(&self.metrics, &route.group, outcome);
        }
        let now = clock::now();
        deadline::request_done(now);
        let latency = now.saturating_duration_since(ctx.request.started);
        self.metrics.request_finished(
            ctx.route.as_deref().map(|r| (r.name.as_str(), &r.series)),
            status,
            latency,
        );
        if self.access_log.enabled() {
            let req = session.req_header();
            let line = AccessLine {
                request_id: ctx.request.id.as_str(),
                client_ip: ctx.request.client_ip,
                method: &req.method,
                path: req.uri.path(),
                route: ctx.route.as_ref().map(|r| &r.log_name),
                upstream: ctx.route.as_ref().map(|r| &r.group.log_name),
                status,
                bytes: session.body_bytes_sent(),
                latency,
                upstream_latency: ctx.upstream.latency(),
                tried: &ctx.upstream.tried,
            };
            self.access_log.write(&line);
        }
    }
}

impl Tollgate {
    /// Answers a request the gate refused (401, 429, or 503 without a client registry).
    /// Boxed, like [`reply`]: a cold path kept out of `request_filter`'s future.
    fn refuse<'a>(
        &'a self,
        session: &'a mut Session,
        ctx: &'a mut Ctx,
        route: &'a Route,
        refusal: gate::Refusal,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut extra: Vec<(&StaticHeaderName, HeaderValue)> = Vec::new();
            let (code, message) = match refusal {
                gate::Refusal::Unauthorized(e) => (401, e.to_string()),
                gate::Refusal::NoRegistry => {
                    log::error!(
                        "route {}: auth api_key but no client registry is open (the clients \
                         section needs a restart to take effect)",
                        route.name
                    );
                    (503, "client registry unavailable".to_string())
                }
                gate::Refusal::Limited { retry_after_secs } => {
                    extra.push((&names::RETRY_AFTER, HeaderValue::from(retry_after_secs)));
                    (429, "rate limit exceeded".to_string())
                }
            };
            if let Some(values) = std::mem::take(&mut ctx.limit_headers).into_header_values()? {
                extra.extend(values);
            }
            respond::write_error_with(session, code, &message, &ctx.request.id, extra).await?;
            Ok(true)
        })
    }

    /// Whether this request may make another attempt for `reason`; takes budget when it may.
    fn take_retry(&self, ctx: &mut Ctx, route: &Route, reason: retry::Reason) -> bool {
        let group = &route.group;
        let untried = group
            .backends()
            .iter()
            .filter(|b| !ctx.upstream.has_tried(b))
            .count();
        let policy = &route.retries;
        if !retry::attempt_left(
            policy,
            ctx.upstream.tried.len(),
            untried,
            ctx.request.started,
            clock::now(),
        ) {
            return false;
        }
        if !reason.uses_budget() {
            self.metrics
                .retries
                .with_label_values(&[&route.name, reason.as_str()])
                .inc();
            return true;
        }
        let unix = clock::system_now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match route.retry_budget.try_retry(policy, unix) {
            Some(active) => {
                ctx.retries.push(active);
                self.metrics
                    .retries
                    .with_label_values(&[&route.name, reason.as_str()])
                    .inc();
                true
            }
            None => {
                self.metrics
                    .retry_budget_exhausted
                    .with_label_values(&[&route.name])
                    .inc();
                false
            }
        }
    }
}

/// The size of a request header as HTTP/1.1 would carry it: request line and fields.
fn header_size(req: &RequestHeader) -> usize {
    const LINE: usize = " HTTP/1.1\r\n".len() + 1;
    let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let fields: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    req.method.as_str().len() + target + LINE + fields
}

/// Answers with a JSON error and ends the request. Boxed: a cold path whose future would
/// otherwise be part of `request_filter`'s, which every request allocates and moves whole
/// (bench/results/cg-cold-box.md).
fn reply<'a>(
    session: &'a mut Session,
    ctx: &'a Ctx,
    code: u16,
    message: &'a str,
) -> BoxFuture<'a, Result<bool>> {
    Box::pin(async move {
        respond::write_error(session, code, message, &ctx.request.id).await?;
        Ok(true)
    })
}

/// The status a failed request is answered with (0: the client is gone, write nothing). A
/// downstream h2 error means the client reset the stream or broke the connection: gone too.
fn status_for(e: &Error) -> u16 {
    use pingora::ErrorSource;
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            match e.esource() {
                ErrorSource::Downstream => 408,
                _ => 504,
            }
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed | H2Error => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// The request's host (with any port): the Host header, else the authority its target names
/// (an HTTP/2 `:authority`, or an HTTP/1 absolute-form target).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .or_else(|| {
            // An HTTP/1 absolute-form target keeps its authority in the raw target only.
            raw_target_authority(req.raw_path())
                .authority()
                .and_then(|a| std::str::from_utf8(a).ok())
        })
}

/// The path and query to send upstream, when they differ from what the client sent: the
/// normalized path, without the route prefix if it strips it, without a query-string API key.
fn upstream_target(
    req: &RequestHeader,
    normalized: &str,
    route: &Route,
    prefix: &str,
    key_param: Option<&str>,
) -> Option<String> {
    let path = if route.strip_prefix {
        strip_prefix(normalized, prefix)
    } else {
        Cow::Borrowed(normalized)
    };
    if path == req.uri.path() && key_param.is_none() {
        return None;
    }
    let query = match (req.uri.query(), key_param) {
        (Some(q), Some(param)) => Some(Cow::Owned(gate::query_without(q, param))),
        (q, _) => q.map(Cow::Borrowed),
    };
    Some(with_query(
        &path,
        query.as_deref().filter(|q| !q.is_empty()),
    ))
}

/// The bytes consistent hashing keys on; the client ip when the header or cookie is absent.
fn hash_key(key: Option<&HashKey>, req: &RequestHeader, client: IpAddr) -> Vec<u8> {
    let from_request = match key {
        None => return Vec::new(),
        Some(HashKey::ClientIp) => None,
        Some(HashKey::Header(name)) => req.headers.get(name).map(|v| v.as_bytes().to_vec()),
        Some(HashKey::Cookie(name)) => cookie(req, name).map(|v| v.as_bytes().to_vec()),
    };
    from_request.unwrap_or_else(|| match client {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    })
}

/// The value of cookie `name`, from any `Cookie` header.
fn cookie<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}
