//! Backend selection: Pingora's algorithms over a group's fixed set of backends, walked here.
//!
//! The algorithms are Pingora's (`RoundRobin` is its weighted rotation, fed weight 1 for every
//! backend unless the group is `weighted`; `Random`; `Consistent`, Ketama) plus `least_conn`,
//! ours (Pingora's source says `TODO: least conn`). Pingora's `LoadBalancer::select_with`
//! would walk them too, but it clones every candidate `Backend` (and its `ext` map) and keeps
//! a `HashSet` of SipHashed backends to skip repeats; a group's set never changes while the
//! group lives (a reload builds a new group), so [`Selector`] walks the algorithm's order
//! itself and skips repeats by the backend's index.

use super::BackendState;
use crate::config::Selection;
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::Backend;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A group's selection algorithm, built over its backends.
pub enum Selector {
    RoundRobin(Arc<RoundRobin>),
    Random(Arc<Random>),
    LeastConn(Arc<LeastConn>),
    Consistent(Arc<Consistent>),
}

/// Enough steps to visit every backend once even with weighted repeats and Ketama's ring.
const MAX_ITERATIONS: usize = 256;

impl Selector {
    /// Builds `selection` over `backends`, each carrying its `Arc<BackendState>` in `ext`.
    pub fn build(selection: &Selection, backends: &BTreeSet<Backend>) -> Selector {
        match selection {
            Selection::RoundRobin | Selection::Weighted => {
                Selector::RoundRobin(Arc::new(RoundRobin::build(backends)))
            }
            Selection::Random => Selector::Random(Arc::new(Random::build(backends))),
            Selection::LeastConn => Selector::LeastConn(Arc::new(LeastConn::build(backends))),
            Selection::ConsistentHash(_) => {
                Selector::Consistent(Arc::new(Consistent::build(backends)))
            }
        }
    }

    /// The first `pick(state)` that is `Some`, trying backends in the algorithm's
    /// order for `key`, each at most once, for at most [`MAX_ITERATIONS`] steps.
    pub fn find<T>(
        &self,
        key: &[u8],
        pick: impl FnMut(&Arc<BackendState>) -> Option<T>,
    ) -> Option<T> {
        match self {
            Selector::RoundRobin(s) => walk(s.iter(key), pick),
            Selector::Random(s) => walk(s.iter(key), pick),
            Selector::LeastConn(s) => walk(s.iter(key), pick),
            Selector::Consistent(s) => walk(s.iter(key), pick),
        }
    }
}

fn walk<T>(
    mut order: impl BackendIter,
    mut pick: impl FnMut(&Arc<BackendState>) -> Option<T>,
) -> Option<T> {
    let mut tried = Tried::default();
    for _ in 0..MAX_ITERATIONS {
        let backend = order.next()?;
        let Some(state) = backend.ext.get::<Arc<BackendState>>() else {
            continue;
        };
        if tried.contains(state.index) {
            continue;
        }
        if let Some(found) = pick(state) {
            return Some(found);
        }
        tried.insert(state.index);
    }
    None
}

/// Backend indexes already refused by this pick: a bitset, allocated on the first refusal,
/// so a pick whose first choice is taken allocates nothing.
#[derive(Default)]
struct Tried(Vec<u64>);

impl Tried {
    fn contains(&self, index: usize) -> bool {
        self.0
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    fn insert(&mut self, index: usize) {
        let word = index / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (index % 64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn set(weights: &[usize]) -> BTreeSet<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16));
                crate::upstream::member(&Arc::new(BackendState::new(i, addr)), weight)
            })
            .collect()
    }

    /// Every algorithm offers each backend once, however often weights repeat it, and a pick
    /// that refuses them all ends with `None`.
    #[test]
    fn each_backend_is_offered_once_until_one_is_taken() {
        let backends = set(&[3, 1, 2]);
        for selection in [
            Selection::RoundRobin,
            Selection::Weighted,
            Selection::Random,
            Selection::LeastConn,
            Selection::ConsistentHash(crate::config::HashKey::ClientIp),
        ] {
            let selector = Selector::build(&selection, &backends);
            let mut offered = Vec::new();
            let none: Option<()> = selector.find(b"key", |s| {
                offered.push(s.index);
                None
            });
            assert!(none.is_none());
            offered.sort_unstable();
            assert_eq!(offered, [0, 1, 2], "{selection:?}");

            let taken = selector.find(b"key", |s| (s.index == 2).then_some(s.index));
            assert_eq!(taken, Some(2), "{selection:?}");
        }
    }

    /// The refused set grows past one word for large groups.
    #[test]
    fn refused_indexes_are_remembered_past_64() {
        let mut tried = Tried::default();
        assert!(!tried.contains(0) && !tried.contains(130));
        tried.insert(130);
        tried.insert(3);
        assert!(tried.contains(130) && tried.contains(3));
        assert!(!tried.contains(129) && !tried.contains(64) && !tried.contains(500));
    }
}
