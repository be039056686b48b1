//! Upstream groups: backends, how one is chosen, how it is reached, and whether it is healthy.
//!
//! A [`Group`] is built from one validated [`UpstreamConfig`] and never changes; a reload that
//! leaves a group's config alone reuses the same `Arc<Group>`. A reload that changes it builds a
//! new group that shares the old one's health registry (when the check itself is unchanged) and
//! breakers, so backends that stay keep their health verdicts and breaker states.
//! Health checks run from [`health::HealthService`], a Pingora background service that follows
//! whatever groups the current runtime has.

pub mod health;
pub mod selection;

use crate::breaker::{Admission, GroupBreakers, ProbePermit, State, Transition};
use crate::config::{HashKey, HeaderCase, Selection, UpstreamConfig};
use crate::logging::JsonString;
use crate::metrics::{BackendSeries, GroupSeries};
use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::{Backend, Backends, HealthRegistry};
use pingora::upstreams::peer::HttpPeer;
use selection::Selector;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What Tollgate tracks about one backend besides Pingora's health state.
#[derive(Debug)]
pub struct BackendState {
    /// Position in the group's config (and in its breakers).
    pub index: usize,
    pub addr: SocketAddr,
    /// `ip:port`, used in logs, metrics and the admin API.
    pub label: String,
    in_flight: AtomicU64,
    /// Pingora's health verdict on this backend as of its group's last check round, copied
    /// here so that a pick reads one flag instead of hashing the backend into Pingora's map
    /// (~740-920 instructions per request, bench/results/cg-ready.md).
    healthy: AtomicBool,
    /// This backend's metric series, kept for the request path.
    pub series: BackendSeries,
}

impl BackendState {
    pub fn new(index: usize, addr: SocketAddr) -> Self {
        BackendState {
            index,
            addr,
            label: addr.to_string(),
            in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            series: BackendSeries::default(),
        }
    }

    /// Whether health checks currently let this backend take traffic (its group's verdict as
    /// of its last check round).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests currently sent to this backend and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to a backend; dropping it (request done, or retried elsewhere) ends it.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One named group of backends.
pub struct Group {
    pub name: String,
    /// `name` as the access log writes it.
    pub log_name: JsonString,
    pub config: UpstreamConfig,
    selector: Selector,
    backends: Vec<Arc<BackendState>>,
    /// Pingora's view of the same backends, index-aligned with `backends`; health is keyed by
    /// address and weight.
    members: Vec<Backend>,
    /// Pingora's health verdicts for `members`.
    view: Backends,
    /// Template cloned for each request: timeouts and TLS settings of this group.
    peer_template: HttpPeer,
    /// Index-aligned with `backends`; `None` without a `circuit_breaker` block.
    breakers: Option<GroupBreakers<SocketAddr>>,
    /// Health verdicts by backend, shared with the group this one replaced; `None` without a
    /// `health_check` block.
    health: Option<Arc<HealthRegistry>>,
    last_check: Mutex<Option<Instant>>,
    check_running: AtomicBool,
    /// Called on every breaker transition (metrics); set once by the runtime.
    pub transitions: std::sync::OnceLock<TransitionHook>,
    /// This group's metric series, kept for the request path.
    pub series: GroupSeries,
}

/// Observer of breaker transitions.
pub type TransitionHook = Box<dyn Fn(&Group, &BackendState, Transition) + Send + Sync>;

/// A breaker's decision for a chosen backend, kept with the attempt.
pub enum Admitted {
    /// No breaker, or a closed one: report the result without a permit.
    Plain,
    /// A half-open probe: report with the permit (dropping it frees the slot).
    Probe(ProbePermit),
    /// Forced through by the ejection cap: the breaker ignores the result.
    Overridden,
}

impl Group {
    /// Builds a group from its validated config; breakers of backends that stay in
    /// `previous` keep their state. `header_case` is the server's, for response headers.
    pub fn build(
        name: &str,
        config: &UpstreamConfig,
        header_case: HeaderCase,
        previous: Option<&Group>,
    ) -> Group {
        let backends: Vec<Arc<BackendState>> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Arc::new(BackendState::new(i, b.address)))
            .collect();
        let use_weights = !matches!(config.selection, Selection::RoundRobin);
        let members: Vec<Backend> = config
            .backends
            .iter()
            .zip(&backends)
            .map(|(b, state)| member(state, if use_weights { b.weight as usize } else { 1 }))
            .collect();
        let set: BTreeSet<Backend> = members.iter().cloned().collect();
        let health = config.health_check.as_ref().map(|hc| {
            let same_check = |p: &&Group| {
                p.config.health_check == config.health_check && p.config.tls == config.tls
            };
            match previous.filter(same_check).and_then(|p| p.health.clone()) {
                Some(shared) => shared,
                None => {
                    let registry = HealthRegistry::new();
                    registry.set_health_check(health::build_check(name, hc, config.tls.as_ref()));
                    Arc::new(registry)
                }
            }
        });
        let selector = Selector::build(&config.selection, &set);
        let view = health_view(set, health.as_ref(), name);
        let breakers = config.circuit_breaker.as_ref().map(|bc| {
            let policy = Arc::new(bc.policy.clone());
            let keys = config.backends.iter().map(|b| b.address);
            match previous.and_then(|p| p.breakers.as_ref()) {
                Some(prev) => prev.rebuild(keys, policy),
                None => GroupBreakers::new(keys, policy),
            }
        });
        let group = Group {
            name: name.to_string(),
            log_name: JsonString::new(name),
            breakers,
            health,
            config: config.clone(),
            selector,
            backends,
            members,
            view,
            peer_template: peer_template(config, header_case),
            last_check: Mutex::new(None),
            check_running: AtomicBool::new(false),
            transitions: std::sync::OnceLock::new(),
            series: GroupSeries::default(),
        };
        group.copy_health_verdicts();
        group
    }

    /// The key consistent hashing uses, if this group hashes.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.config.selection {
            Selection::ConsistentHash(k) => Some(k),
            _ => None,
        }
    }

    /// Picks a backend: the first in the algorithm's order that is healthy, that its breaker
    /// admits, and that `accept` takes (the caller excludes backends this request already
    /// tried). A breaker that loses a race for its last probe slot is skipped.
    pub fn select(
        &self,
        key: &[u8],
        now: Instant,
        accept: impl Fn(&BackendState) -> bool,
    ) -> Option<(Arc<BackendState>, Admitted)> {
        self.selector.find(key, |state| {
            if !state.is_healthy() || !accept(state) {
                return None;
            }
            let Some(breakers) = &self.breakers else {
                return Some((state.clone(), Admitted::Plain));
            };
            if !breakers.allows(state.index, now) {
                return None;
            }
            let (admission, transition) = breakers.admit(state.index, now);
            if let Some(t) = transition {
                self.on_transition(state, t);
            }
            let admitted = match admission {
                Admission::Allowed => Admitted::Plain,
                Admission::Probe(p) => Admitted::Probe(p),
                Admission::Overridden => Admitted::Overridden,
                Admission::Rejected => return None,
            };
            Some((state.clone(), admitted))
        })
    }

    /// Reports an attempt's result to the backend's breaker.
    pub fn report(&self, backend: &BackendState, admitted: Admitted, ok: bool, now: Instant) {
        let Some(breaker) = self.breakers.as_ref().and_then(|b| b.get(backend.index)) else {
            return;
        };
        let permit = match admitted {
            Admitted::Plain => None,
            Admitted::Probe(p) => Some(p),
            Admitted::Overridden => return,
        };
        let transition = if ok {
            breaker.record_success(permit, now)
        } else {
            breaker.record_failure(permit, now)
        };
        if let Some(t) = transition {
            self.on_transition(backend, t);
        }
    }

    /// Whether a backend response status counts as a breaker failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.config
            .circuit_breaker
            .as_ref()
            .is_some_and(|b| b.failure_statuses.contains(&status))
    }

    /// The breaker state of a backend, if the group has breakers.
    pub fn breaker_state(&self, backend: &BackendState, now: Instant) -> Option<State> {
        let breakers = self.breakers.as_ref()?;
        breakers.get(backend.index).map(|b| b.state(now))
    }

    fn on_transition(&self, backend: &BackendState, t: Transition) {
        log::warn!(
            "upstream {}: breaker of {} {} -> {}",
            self.name,
            backend.label,
            t.from.as_str(),
            t.to.as_str()
        );
        if let Some(hook) = self.transitions.get() {
            hook(self, backend, t);
        }
    }

    /// The peer to connect to for `backend`, with this group's timeouts and TLS. Cloned
    /// straight into its box: `Box::new(clone)` would build the 672-byte peer on the stack and
    /// copy it.
    pub fn peer(&self, backend: &BackendState) -> Box<HttpPeer> {
        let mut peer = Box::write(Box::new_uninit(), self.peer_template.clone());
        peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(backend.addr);
        peer
    }

    pub fn backends(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// Runs one round of this group's health checks (every backend at once), then publishes
    /// the verdicts to the request path.
    pub(super) async fn run_health_check(&self) {
        self.view.run_health_check(true).await;
        self.copy_health_verdicts();
    }

    /// Copies Pingora's verdicts into the backends' flags: after each check round, and when
    /// the group is built (a group that shares its predecessor's registry starts from its
    /// verdicts). A round the replaced group finishes after a reload reaches this group's
    /// flags with this group's next round. Without health checks every backend is healthy.
    fn copy_health_verdicts(&self) {
        for (member, state) in self.members.iter().zip(&self.backends) {
            let healthy = self.health.is_none() || self.view.ready(member);
            state.healthy.store(healthy, Ordering::Relaxed);
        }
    }
}

/// Pingora's view of one backend: its address and `weight`, carrying its state in `ext` for
/// the selector.
fn member(state: &Arc<BackendState>, weight: usize) -> Backend {
    let mut backend = Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(state.addr),
        weight,
        ext: Default::default(),
    };
    backend.ext.insert(state.clone());
    backend
}

/// Pingora's view of a group's backends, for their health verdicts: from `registry` when the
/// group checks health (shared with the group it replaced when the check is the same), all
/// healthy otherwise.
fn health_view(
    set: BTreeSet<Backend>,
    registry: Option<&Arc<HealthRegistry>>,
    name: &str,
) -> Backends {
    let view = match registry {
        Some(registry) => Backends::new_with_health_registry(Static::new(set), registry.clone()),
        None => Backends::new(Static::new(set)),
    };
    // Static discovery resolves immediately; this publishes the set to the view.
    match view.update(|_| {}).now_or_never() {
        Some(Ok(())) => {}
        Some(Err(e)) => log::error!("upstream {name}: cannot publish backends: {e}"),
        None => log::error!("upstream {name}: static discovery did not complete"),
    }
    view
}

fn peer_template(config: &UpstreamConfig, header_case: HeaderCase) -> HttpPeer {
    let (tls, sni) = match &config.tls {
        Some(t) => (true, t.sni.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new("0.0.0.0:1", tls, sni);
    let t = config.timeouts;
    let o = &mut peer.options;
    o.connection_timeout = Some(t.connect);
    o.total_connection_timeout = Some(t.connect);
    o.read_timeout = Some(t.read);
    o.write_timeout = Some(t.write);
    o.idle_timeout = Some(t.idle);
    o.normalize_header_case = header_case.normalizes();
    if let Some(tls) = &config.tls {
        o.verify_cert = tls.verify;
        o.verify_hostname = tls.verify;
    }
    peer
}
