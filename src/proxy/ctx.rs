//! Per-request state, grouped by concern: the runtime snapshot, who asked, where it goes, and
//! the upstream attempts made.

use super::forwarding::{RequestId, TrustedProxies};
use super::gate::{Caller, LimitHeaders};
use super::names;
use super::retry::Active;
use crate::metrics::Metrics;
use crate::runtime::{Route, Runtime};
use crate::upstream::{Admitted, BackendState, Group, InFlight};
use pingora::http::RequestHeader;
use pingora::utils::clock;
use smallvec::SmallVec;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Ctx {
    /// The runtime this request started on; a reload never changes it mid-request.
    pub runtime: Arc<Runtime>,
    pub request: RequestMeta,
    pub route: Option<Arc<Route>>,
    pub upstream: Attempts,
    /// Counts this request in its route's retry budget while it is in flight...
    pub in_flight: Option<Active>,
    /// ...and the retries it made (empty, so no allocation, for most requests).
    pub retries: Vec<Active>,
    /// The API client, on `auth: api_key` routes.
    pub caller: Option<Caller>,
    pub limit_headers: LimitHeaders,
}

impl Ctx {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Ctx {
            runtime,
            request: RequestMeta::default(),
            route: None,
            upstream: Attempts::default(),
            in_flight: None,
            retries: Vec::new(),
            caller: None,
            limit_headers: LimitHeaders::default(),
        }
    }
}

/// Who sent the request and how to name it.
pub struct RequestMeta {
    pub id: RequestId,
    /// The socket peer.
    pub peer_ip: IpAddr,
    /// The client, per the trusted-proxy rules (the one client-ip value used everywhere).
    pub client_ip: IpAddr,
    pub started: Instant,
    /// Path and query to send upstream when it differs from what the client sent.
    pub upstream_path: Option<String>,
}

impl Default for RequestMeta {
    fn default() -> Self {
        RequestMeta {
            id: RequestId::default(),
            peer_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            started: clock::now(),
            upstream_path: None,
        }
    }
}

impl RequestMeta {
    /// Reads identity from the request: client ip and a kept or generated request id; the
    /// request starts now.
    pub fn read(req: &RequestHeader, peer: IpAddr, trusted: &TrustedProxies) -> Self {
        let client_ip = trusted.client_ip(peer, &req.headers);
        // Looked up only for a trusted peer: most requests have none to look for.
        let id = trusted
            .contains(peer)
            .then(|| req.headers.get(names::X_REQUEST_ID.name()))
            .flatten()
            .and_then(RequestId::keep)
            .unwrap_or_else(RequestId::generate);
        RequestMeta {
            id,
            peer_ip: peer,
            client_ip,
            started: clock::now(),
            upstream_path: None,
        }
    }
}

/// The backends this request tried, and the one it is on now.
#[derive(Default)]
pub struct Attempts {
    /// Backends tried so far, in order (the last is the current attempt's, or the last
    /// attempt's); a retry never picks one of these again. Two fit inline (a request and its
    /// first retry), so a request allocates nothing for them.
    pub tried: SmallVec<[Arc<BackendState>; 2]>,
    current: Option<InFlight>,
    /// The breaker's decision for the current attempt, until its result is reported.
    admitted: Option<Admitted>,
    /// The current attempt failed on a status that asked for a retry.
    pub retry_on_status: bool,
    /// When the request header went to the current backend.
    pub sent_at: Option<Instant>,
    response_after: Option<Duration>,
}

impl Attempts {
    /// Starts an attempt on `backend` (ending the previous one, if any).
    pub fn begin(&mut self, backend: Arc<BackendState>, admitted: Admitted) {
        self.current = Some(backend.begin());
        self.tried.push(backend);
        self.admitted = Some(admitted);
        self.retry_on_status = false;
        self.sent_at = None;
        self.response_after = None;
    }

    /// The backend's response header arrived (`now`).
    pub fn responded(&mut self, metrics: &Metrics, group: &Group, now: Instant) {
        self.response_after = self.sent_at.map(|t| now.saturating_duration_since(t));
        if let Some(d) = self.response_after {
            metrics.upstream_responded(group, d);
        }
    }

    /// Reports the current attempt's result, known at `now`, to its breaker (once).
    pub fn report(&mut self, group: &Group, ok: bool, now: Instant) {
        if let (Some(current), Some(admitted)) = (&self.current, self.admitted.take()) {
            group.report(current.backend(), admitted, ok, now);
        }
    }

    /// Ends the current attempt with `outcome` (counted per backend). No-op without one.
    pub fn end(&mut self, metrics: &Metrics, group: &Group, outcome: Outcome) {
        if let Some(attempt) = self.current.take() {
            metrics.upstream_attempt(group, attempt.backend(), outcome);
        }
    }

    /// Time from sending the request header to receiving the response header.
    pub fn latency(&self) -> Option<Duration> {
        self.response_after
    }

    /// Whether this request has tried `backend` already.
    pub fn has_tried(&self, backend: &BackendState) -> bool {
        self.tried.iter().any(|b| b.addr == backend.addr)
    }

    /// Whether the current attempt got a response header.
    pub fn has_response(&self) -> bool {
        self.response_after.is_some()
    }
}

/// How an upstream attempt ended, for `tollgate_upstream_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Response,
    ConnectError,
    Timeout,
    Error,
}

impl Outcome {
    /// How many outcomes there are (a kept counter per backend for each).
    pub const COUNT: usize = 4;

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Response => "response",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    /// Classifies an error that ended an attempt after connecting.
    pub fn of_error(e: &pingora::Error) -> Outcome {
        use pingora::ErrorType::*;
        match e.etype() {
            ReadTimedout | WriteTimedout | ConnectTimedout => Outcome::Timeout,
            _ => Outcome::Error,
        }
    }
}
