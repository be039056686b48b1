//! The breakers of one upstream group and the ejection cap.

use super::*;

/// The breakers of one upstream group, index-aligned with its backends and
/// keyed by `K` (for instance the backend address) for reloads.
#[derive(Debug)]
pub struct GroupBreakers<K = String> {
    keys: Vec<K>,
    breakers: Vec<Breaker>,
    index: HashMap<K, usize>,
    max_ejected: usize,
}

impl<K: Hash + Eq + Clone> GroupBreakers<K> {
    /// Fresh closed breakers, one per key, in key order.
    pub fn new<I: IntoIterator<Item = K>>(keys: I, policy: Arc<BreakerPolicy>) -> Self {
        let entries = keys
            .into_iter()
            .map(|key| (key, Breaker::new(Arc::clone(&policy))))
            .collect();
        Self::assemble(entries, &policy)
    }

    /// A group of existing breakers, in order; each gets `policy`.
    pub fn from_breakers(entries: Vec<(K, Breaker)>, policy: Arc<BreakerPolicy>) -> Self {
        for (_, breaker) in &entries {
            breaker.set_policy(Arc::clone(&policy));
        }
        Self::assemble(entries, &policy)
    }

    /// The group after a reload: backends whose key is in `self` keep their
    /// breaker (and state) under `policy`, new ones start closed.
    pub fn rebuild<I: IntoIterator<Item = K>>(&self, keys: I, policy: Arc<BreakerPolicy>) -> Self {
        let entries = keys
            .into_iter()
            .map(|key| {
                let breaker = self
                    .get_by_key(&key)
                    .cloned()
                    .unwrap_or_else(|| Breaker::new(Arc::clone(&policy)));
                (key, breaker)
            })
            .collect();
        Self::from_breakers(entries, policy)
    }

    fn assemble(entries: Vec<(K, Breaker)>, policy: &BreakerPolicy) -> Self {
        let mut index = HashMap::with_capacity(entries.len());
        let mut keys = Vec::with_capacity(entries.len());
        let mut breakers = Vec::with_capacity(entries.len());
        for (i, (key, breaker)) in entries.into_iter().enumerate() {
            // Duplicate keys: the first one wins the lookup, all keep an index.
            index.entry(key.clone()).or_insert(i);
            keys.push(key);
            breakers.push(breaker);
        }
        let percent = usize::from(policy.max_ejection_percent.min(100));
        let max_ejected = breakers.len() * percent / 100;
        Self {
            keys,
            breakers,
            index,
            max_ejected,
        }
    }

    /// Index of the backend with this key.
    pub fn index_of<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.get(key).copied()
    }

    /// Breaker of the backend with this key.
    pub fn get_by_key<Q>(&self, key: &Q) -> Option<&Breaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index_of(key).and_then(|i| self.breakers.get(i))
    }
}

impl<K> GroupBreakers<K> {
    /// Number of backends.
    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    /// Whether the group has no backend.
    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
    }

    /// Breaker of backend `i`.
    pub fn get(&self, i: usize) -> Option<&Breaker> {
        self.breakers.get(i)
    }

    /// Keys and breakers in index order, e.g. to export per-backend gauges.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Breaker)> + '_ {
        self.keys.iter().zip(&self.breakers)
    }

    /// Most backends refused at once: `floor(len * max_ejection_percent / 100)`.
    pub fn max_ejected(&self) -> usize {
        self.max_ejected
    }

    /// Selection filter for `Group::select`: whether backend `i`
    /// may be chosen.
    ///
    /// Lock-free. One atomic load when its breaker would admit; otherwise a
    /// scan of the group to rank it against the other refusing backends. An
    /// unknown index is allowed, so a breaker bug cannot blackhole traffic.
    /// Call [`admit`](Self::admit) on the chosen backend afterwards: in
    /// HalfOpen several requests may pass this filter for one probe slot.
    #[inline]
    pub fn allows(&self, i: usize, now: Instant) -> bool {
        match self.breakers.get(i) {
            Some(breaker) => breaker.would_admit(now) || self.spared(i, breaker, now),
            None => true,
        }
    }

    /// [`Breaker::admit`] for backend `i`, turning a rejection into
    /// [`Admission::Overridden`] when the ejection cap spares the backend.
    pub fn admit(&self, i: usize, now: Instant) -> (Admission, Option<Transition>) {
        let Some(breaker) = self.breakers.get(i) else {
            return (Admission::Allowed, None);
        };
        match breaker.admit(now) {
            (Admission::Rejected, transition) if self.spared(i, breaker, now) => {
                (Admission::Overridden, transition)
            }
            decision => decision,
        }
    }

    /// Backends refused at `now`, never more than [`max_ejected`](Self::max_ejected).
    pub fn ejected(&self, now: Instant) -> usize {
        let ticks = to_ticks(process_epoch(), now);
        let refusing = self
            .breakers
            .iter()
            .filter(|breaker| breaker.shared.refuses_at(ticks))
            .count();
        refusing.min(self.max_ejected)
    }

    /// Whether the cap keeps backend `i`, which its breaker refuses, in
    /// rotation: true when at least `max_ejected` other refusing backends
    /// tripped before it (ties go to the lower index), so the earliest trips
    /// stay ejected and every caller agrees on which ones.
    fn spared(&self, i: usize, breaker: &Breaker, now: Instant) -> bool {
        if self.max_ejected == 0 {
            return true;
        }
        if self.max_ejected >= self.breakers.len() {
            return false;
        }
        // All breakers share the process epoch, so one conversion serves the
        // whole scan.
        let ticks = breaker.shared.ticks(now);
        let mine = (breaker.shared.tripped_at.load(Ordering::Relaxed), i);
        let mut earlier = 0;
        for (j, other) in self.breakers.iter().enumerate() {
            // The state load (Acquire) comes before the trip time so that a
            // fresh trip is seen with its own trip time.
            if j != i
                && other.shared.refuses_at(ticks)
                && (other.shared.tripped_at.load(Ordering::Relaxed), j) < mine
            {
                earlier += 1;
                if earlier >= self.max_ejected {
                    return true;
                }
            }
        }
        false
    }
}
