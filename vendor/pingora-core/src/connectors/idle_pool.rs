// Tollgate patch 1 to pingora-core (vendor/README.md): idle upstream connections are kept in a
// plain LIFO list per peer, watched by one sweeper task per pool, instead of pingora-pool's
// `ConnectionPool` with an `idle_poll` task spawned for every released connection.

//! The pool of idle upstream streams kept for reuse.
//!
//! A released stream is pushed onto its group's list; a request takes the most recently
//! released one (its socket and buffers are the warmest, and surplus connections age out at the
//! bottom). Nothing runs per connection while it idles: a stream that outlived its idle timeout
//! is never handed out, and one sweeper task per pool closes, once per [`SWEEP_PERIOD`], the
//! streams whose idle timeout passed or whose peer closed them or sent data. The pool holds at
//! most `capacity` streams; releasing one more closes the least recently released.

use crate::protocols::{KeptStream, Stream};
use crate::utils::clock;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the sweeper looks at the idle streams.
pub(crate) const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// A stream waiting in the pool, with its HTTP session's digest (Tollgate patch 18).
pub(crate) struct Idle {
    pub(crate) kept: KeptStream,
    since: Instant,
    expires: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// How long the stream has been idle.
    pub(crate) fn idle_for(&self) -> Duration {
        self.since.elapsed()
    }
}

/// Hashes a group key to itself: the key is already a hash (a peer's `reuse_hash`), so hashing
/// it again, by SipHash twice per request, bought nothing.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }

    /// Only `u64` keys reach this map; anything else is folded in, FNV-style, to stay correct.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Default)]
struct State {
    /// Idle streams by group key (a peer's `reuse_hash`), least recently released first.
    groups: HashMap<u64, VecDeque<Idle>, BuildHasherDefault<KeyHasher>>,
    len: usize,
    /// Whether a sweeper task is running; it stops when the pool empties.
    sweeping: bool,
}

pub(crate) struct IdlePool {
    state: Mutex<State>,
    capacity: usize,
}

/// What [`IdlePool::put`] did besides keeping the stream.
pub(crate) struct Put {
    /// The stream closed to stay within capacity (the new one itself when the capacity is 0).
    pub(crate) evicted: Option<Idle>,
    /// The pool had no sweeper running: the caller starts one with [`sweep_until_empty`].
    pub(crate) start_sweeper: bool,
}

impl IdlePool {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(IdlePool {
            state: Mutex::new(State::default()),
            capacity,
        })
    }

    /// Keep `stream` under `key` for reuse until `idle_timeout` passes.
    pub(crate) fn put(&self, key: u64, kept: KeptStream, idle_timeout: Option<Duration>) -> Put {
        // The poll's reading (Tollgate patch): a release follows the response in one poll.
        let since = clock::now();
        let idle = Idle {
            kept,
            since,
            expires: idle_timeout.and_then(|t| since.checked_add(t)),
        };
        if self.capacity == 0 {
            return Put {
                evicted: Some(idle),
                start_sweeper: false,
            };
        }
        let mut state = self.state.lock();
        let evicted = if state.len >= self.capacity {
            state.pop_oldest()
        } else {
            None
        };
        state.groups.entry(key).or_default().push_back(idle);
        state.len += 1;
        let start_sweeper = !state.sweeping;
        state.sweeping = true;
        Put {
            evicted,
            start_sweeper,
        }
    }

    /// The most recently released stream under `key` that has not outlived its idle timeout.
    /// Expired streams met on the way are closed (outside the lock).
    pub(crate) fn take(&self, key: u64) -> Option<KeptStream> {
        // The poll's reading (Tollgate patch): a take follows the request in one poll.
        let now = clock::now();
        loop {
            let idle = self.state.lock().pop_newest(key)?;
            if !idle.expired(now) {
                return Some(idle.kept);
            }
        }
    }

    /// Close the streams whose idle timeout passed and those `is_live` rejects. Returns false,
    /// and marks the sweeper stopped, when the pool is empty afterwards.
    fn sweep(&self, now: Instant, mut is_live: impl FnMut(&mut Stream) -> bool) -> bool {
        let mut closed = Vec::new();
        let mut state = self.state.lock();
        state.groups.retain(|_, list| {
            let mut kept = VecDeque::with_capacity(list.len());
            for mut idle in list.drain(..) {
                if !idle.expired(now) && is_live(&mut idle.kept.stream) {
                    kept.push_back(idle);
                } else {
                    closed.push(idle);
                }
            }
            *list = kept;
            !list.is_empty()
        });
        state.len -= closed.len();
        let keep_sweeping = state.len > 0;
        state.sweeping = keep_sweeping;
        drop(state);
        drop(closed); // closes the sockets outside the lock
        keep_sweeping
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().len
    }
}

impl State {
    fn pop_newest(&mut self, key: u64) -> Option<Idle> {
        self.pop(key, VecDeque::pop_back)
    }

    /// The least recently released stream of all groups.
    fn pop_oldest(&mut self) -> Option<Idle> {
        let (&key, _) = self
            .groups
            .iter()
            .filter_map(|(key, list)| Some((key, list.front()?.since)))
            .min_by_key(|(_, since)| *since)?;
        self.pop(key, VecDeque::pop_front)
    }

    /// Takes a stream from one end of `key`'s list. A list left empty stays until the next
    /// sweep, which drops empty lists (so the map does not grow with every peer ever seen):
    /// the next release under the key, usually this request's own, then needs no allocation.
    fn pop(&mut self, key: u64, end: fn(&mut VecDeque<Idle>) -> Option<Idle>) -> Option<Idle> {
        let idle = end(self.groups.get_mut(&key)?);
        if idle.is_some() {
            self.len -= 1;
        }
        idle
    }
}

/// The sweeper: every [`SWEEP_PERIOD`] closes expired and dead streams; ends when the pool is
/// empty (the next `put` starts a new one) or dropped.
pub(crate) async fn sweep_until_empty(
    pool: Weak<IdlePool>,
    mut is_live: impl FnMut(&mut Stream) -> bool,
) {
    loop {
        tokio::time::sleep(SWEEP_PERIOD).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if !pool.sweep(Instant::now(), &mut is_live) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::l4::stream::Stream as L4Stream;
    use tokio::net::{TcpListener, TcpStream};

    async fn stream() -> Stream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, _) = tokio::join!(TcpStream::connect(addr), listener.accept());
        Box::new(L4Stream::from(client.unwrap()))
    }

    #[tokio::test]
    async fn take_returns_the_most_recently_released_stream_of_its_group() {
        let pool = IdlePool::new(8);
        let (a, b, c) = (stream().await, stream().await, stream().await);
        let (id_a, id_b) = (a.id(), b.id());
        pool.put(1, a.into(), None);
        pool.put(1, b.into(), None);
        pool.put(2, c.into(), None);
        assert_eq!(pool.take(1).unwrap().stream.id(), id_b);
        assert_eq!(pool.take(1).unwrap().stream.id(), id_a);
        assert!(pool.take(1).is_none());
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn an_expired_stream_is_never_handed_out() {
        let pool = IdlePool::new(8);
        pool.put(1, stream().await.into(), Some(Duration::ZERO));
        assert!(pool.take(1).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn releasing_past_capacity_evicts_the_least_recently_released() {
        let pool = IdlePool::new(2);
        let (a, b, c) = (stream().await, stream().await, stream().await);
        let id_a = a.id();
        assert!(pool.put(1, a.into(), None).evicted.is_none());
        assert!(pool.put(2, b.into(), None).evicted.is_none());
        let put = pool.put(2, c.into(), None);
        assert_eq!(put.evicted.unwrap().kept.stream.id(), id_a);
        assert!(!put.start_sweeper, "the first put started the sweeper");
        assert_eq!(pool.len(), 2);
        assert!(IdlePool::new(0)
            .put(1, stream().await.into(), None)
            .evicted
            .is_some());
    }

    #[tokio::test]
    async fn sweep_closes_expired_and_dead_streams_and_stops_when_empty() {
        let pool = IdlePool::new(8);
        let (live, dead) = (stream().await, stream().await);
        let dead_id = dead.id();
        pool.put(1, live.into(), None);
        pool.put(1, dead.into(), None);
        pool.put(2, stream().await.into(), Some(Duration::ZERO));
        assert!(pool.sweep(Instant::now(), |s| s.id() != dead_id));
        assert_eq!(pool.len(), 1);
        assert!(!pool.sweep(Instant::now(), |_| false));
        assert!(pool.put(1, stream().await.into(), None).start_sweeper);
    }
}
