//! The runtime: everything a request needs, built from one validated [`Config`].
//!
//! It sits behind an `ArcSwap` ([`SharedRuntime`]). A request takes one snapshot in `new_ctx`
//! and keeps it to the end, so a reload never tears a request. Building a new runtime reuses
//! every upstream group whose config did not change, so health state carries over.

use crate::config::{Auth, Config, KeySource, RetryPolicy, RouteConfig};
use crate::logging::JsonString;
use crate::metrics::{Metrics, RouteSeries};
use crate::proxy::forwarding::TrustedProxies;
use crate::proxy::gate::RouteLimit;
use crate::proxy::retry::RetryBudget;
use crate::ratelimit::Limiter;
use crate::routing::{RouteSpec, Router};
use crate::upstream::Group;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// A route as the request path uses it.
pub struct Route {
    pub name: String,
    /// `name` as the access log writes it.
    pub log_name: JsonString,
    pub prefix: String,
    pub strip_prefix: bool,
    pub group: Arc<Group>,
    pub retries: RetryPolicy,
    pub retry_budget: RetryBudget,
    pub auth: Auth,
    pub limits: Vec<RouteLimit>,
    /// This route's metric series, kept for the request path.
    pub series: RouteSeries,
}

/// Routes, groups and policies of one configuration generation.
pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router<Arc<Route>>,
    pub groups: HashMap<String, Arc<Group>>,
    pub trusted: TrustedProxies,
}

/// The runtime currently serving, swapped atomically on reload.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

/// Why a validated config could still not become a runtime.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("routes[{0}]: duplicate host and prefix")]
    DuplicateRoute(usize),
    #[error("routes[{index}].rate_limit[{policy}]: {message}")]
    RateLimit {
        index: usize,
        policy: usize,
        message: String,
    },
    #[error("routes[{index}].upstream: unknown upstream {name:?}")]
    UnknownUpstream { index: usize, name: String },
}

impl Runtime {
    /// Builds a runtime; groups identical to one in `previous` are shared, not rebuilt.
    pub fn build(
        config: Config,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Result<Runtime, BuildError> {
        let groups: HashMap<String, Arc<Group>> = config
            .upstreams
            .iter()
            .map(|(name, cfg)| {
                let old = previous.and_then(|p| p.groups.get(name));
                let group = match old {
                    Some(g) if g.config == *cfg => g.clone(),
                    _ => {
                        let group = Arc::new(Group::build(
                            name,
                            cfg,
                            config.server.header_case,
                            old.map(|g| g.as_ref()),
                        ));
                        let metrics = metrics.clone();
                        let _ = group.transitions.set(Box::new(move |g, b, t| {
                            metrics
                                .breaker_transitions
                                .with_label_values(&[&g.name, &b.label, t.to.as_str()])
                                .inc();
                        }));
                        group
                    }
                };
                (name.clone(), group)
            })
            .collect();
        let specs = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| route_spec(index, r, &groups, previous))
            .collect::<Result<Vec<_>, _>>()?;
        let router = Router::new(specs).map_err(|d| BuildError::DuplicateRoute(d.index))?;
        Ok(Runtime {
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            config: Arc::new(config),
            router,
            groups,
        })
    }
}

fn route_spec(
    index: usize,
    r: &RouteConfig,
    groups: &HashMap<String, Arc<Group>>,
    previous: Option<&Runtime>,
) -> Result<RouteSpec<Arc<Route>>, BuildError> {
    let old_limits: Vec<&RouteLimit> = previous
        .into_iter()
        .flat_map(|p| p.router.iter())
        .filter(|old| old.name == r.name)
        .flat_map(|old| old.limits.iter())
        .collect();
    let mut limits = Vec::with_capacity(r.rate_limits.len());
    for (j, l) in r.rate_limits.iter().enumerate() {
        // An unchanged policy keeps its table, so a reload does not hand out fresh quotas.
        let kept = old_limits
            .iter()
            .find(|o| o.key == l.key && *o.limiter.policy() == l.policy)
            .map(|o| o.limiter.clone());
        let limiter =
            match kept {
                Some(k) => k,
                None => Arc::new(Limiter::try_new(l.policy.clone()).map_err(|e| {
                    BuildError::RateLimit {
                        index,
                        policy: j,
                        message: e.to_string(),
                    }
                })?),
            };
        let limit = RouteLimit::new(l.key.clone(), limiter).map_err(|e| BuildError::RateLimit {
            index,
            policy: j,
            message: e.to_string(),
        })?;
        limits.push(limit);
    }
    let group = groups
        .get(&r.upstream)
        .cloned()
        .ok_or_else(|| BuildError::UnknownUpstream {
            index,
            name: r.upstream.clone(),
        })?;
    Ok(RouteSpec {
        host: r.host.clone(),
        prefix: r.prefix.clone(),
        value: Arc::new(Route {
            name: r.name.clone(),
            log_name: JsonString::new(&r.name),
            prefix: r.prefix.clone(),
            strip_prefix: r.strip_prefix,
            group,
            retries: r.retries.clone(),
            retry_budget: RetryBudget::default(),
            auth: r.auth,
            limits,
            series: RouteSeries::default(),
        }),
    })
}

impl Runtime {
    /// Where API keys are looked for (none without a clients section).
    pub fn key_sources(&self) -> &[KeySource] {
        self.config
            .clients
            .as_ref()
            .map_or(&[], |c| c.key_sources.as_slice())
    }
}
