//! Backend selection: one Pingora [`LoadBalancer`] per group, over the algorithm it configures.
//!
//! Pingora's balancers are generic over the algorithm, so [`Balancer`] is the closed set of
//! instantiations Tollgate offers. `round_robin` is Pingora's weighted rotation fed weight 1 for
//! every backend; `weighted` feeds it the configured weights. `least_conn` is ours: Pingora has
//! none (its source says `TODO: least conn`).

use super::BackendState;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The balancer of one group.
pub enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    LeastConn(LoadBalancer<LeastConn>),
    Consistent(LoadBalancer<Consistent>),
}

impl Balancer {
    /// The first backend, in the algorithm's order, that `accept` takes.
    ///
    /// `accept(backend, healthy)` is the one place where health checks, breakers and "already
    /// tried by this request" meet.
    pub fn select_with<F>(&self, key: &[u8], accept: F) -> Option<Backend>
    where
        F: Fn(&Backend, bool) -> bool,
    {
        // Enough steps to visit every backend once even with weighted repeats and Ketama's ring.
        const MAX_ITERATIONS: usize = 256;
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::LeastConn(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
        }
    }

    pub fn backends(&self) -> &pingora::lb::Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::LeastConn(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }
}

/// Fewest requests in flight first; ties are broken by a rotating start so equal backends share.
pub struct LeastConn {
    backends: Box<[(Backend, Arc<BackendState>)]>,
    next: AtomicUsize,
}

impl BackendSelection for LeastConn {
    type Iter = LeastConnIter;
    type Config = ();

    fn build(backends: &BTreeSet<Backend>) -> Self {
        let backends = backends
            .iter()
            .filter_map(|b| {
                let state = b.ext.get::<Arc<BackendState>>()?.clone();
                Some((b.clone(), state))
            })
            .collect();
        LeastConn {
            backends,
            next: AtomicUsize::new(0),
        }
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> LeastConnIter {
        let n = self.backends.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        // Order once per request: a snapshot of the counters, stable while we iterate.
        let mut order: Vec<(u64, usize)> = (0..n)
            .map(|i| {
                let idx = (start + i) % n;
                (self.backends[idx].1.in_flight(), idx)
            })
            .collect();
        // Stable sort keeps the rotated order among equals.
        order.sort_by_key(|&(load, _)| load);
        LeastConnIter {
            selection: self.clone(),
            order: order.into_iter().map(|(_, i)| i).collect(),
            pos: 0,
        }
    }
}

pub struct LeastConnIter {
    selection: Arc<LeastConn>,
    order: Vec<usize>,
    pos: usize,
}

impl BackendIter for LeastConnIter {
    fn next(&mut self) -> Option<&Backend> {
        let idx = *self.order.get(self.pos)?;
        self.pos += 1;
        self.selection.backends.get(idx).map(|(b, _)| b)
    }
}
