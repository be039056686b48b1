// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The time, read at most once per poll (Tollgate patch, vendor/README.md).
//!
//! A request reads the clock many times: when its header is due, when it starts, when its
//! upstream connection is taken and released, for its `Date` and for its log line. Most of
//! those reads happen in one poll of the connection's future, microseconds apart. Inside
//! [`scoped`] (one poll), [`now`] and [`system_now`] read the clock the first time each is
//! asked and return that reading afterwards, as nginx and HAProxy update their cached time
//! once per event-loop pass. Outside a scope they read the clock on every call.
//!
//! A reading is at most as old as the poll it was taken in. Use these for timestamps and
//! deadlines that tolerate that, not to time work done within one poll.
//!
//! Pingora polls each downstream connection's task, and each HTTP/2 stream's, in a [`scope`].

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::thread::LocalKey;
use std::time::{Instant, SystemTime};

thread_local! {
    /// Whether this thread is inside [`scoped`].
    static OPEN: Cell<bool> = const { Cell::new(false) };
    /// This poll's readings; always `None` outside a scope.
    static INSTANT: Cell<Option<Instant>> = const { Cell::new(None) };
    static SYSTEM: Cell<Option<SystemTime>> = const { Cell::new(None) };
}

/// The monotonic time: this poll's reading inside [`scoped`], else the clock's.
pub fn now() -> Instant {
    reading(&INSTANT, Instant::now)
}

/// The wall-clock time: this poll's reading inside [`scoped`], else the clock's.
pub fn system_now() -> SystemTime {
    reading(&SYSTEM, SystemTime::now)
}

/// `slot`'s reading if taken in this scope, else `read()`, kept in `slot` inside a scope.
fn reading<T: Copy + 'static>(slot: &'static LocalKey<Cell<Option<T>>>, read: fn() -> T) -> T {
    slot.with(|slot| {
        slot.get().unwrap_or_else(|| {
            let now = read();
            if OPEN.with(Cell::get) {
                slot.set(Some(now));
            }
            now
        })
    })
}

/// Runs `f`, one poll of a future, with [`now`] and [`system_now`] each reading the clock at
/// most once. Nested inside another scope, `f` shares the outer scope's readings.
pub fn scoped<R>(f: impl FnOnce() -> R) -> R {
    if OPEN.with(|open| open.replace(true)) {
        return f();
    }
    /// Closes the scope, and forgets its readings, when `f` returns or unwinds.
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            INSTANT.with(|slot| slot.set(None));
            SYSTEM.with(|slot| slot.set(None));
            OPEN.with(|open| open.set(false));
        }
    }
    let _close = Close;
    f()
}

/// Runs `future` with each of its polls in [`scoped`].
pub async fn scope<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    poll_fn(|cx| scoped(|| future.as_mut().poll(cx))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sleep() {
        std::thread::sleep(Duration::from_millis(2));
    }

    #[test]
    fn outside_a_scope_every_call_reads_the_clock() {
        let (a, sa) = (now(), system_now());
        sleep();
        assert!(now() > a);
        assert!(system_now() > sa);
    }

    #[test]
    fn inside_a_scope_each_clock_is_read_once() {
        scoped(|| {
            let (a, sa) = (now(), system_now());
            sleep();
            assert_eq!(now(), a);
            assert_eq!(system_now(), sa);
        });
    }

    #[test]
    fn each_scope_reads_afresh_and_closing_one_ends_the_caching() {
        let first = scoped(now);
        sleep();
        let second = scoped(now);
        assert!(second > first);
        sleep();
        assert!(now() > second);
    }

    #[test]
    fn a_nested_scope_shares_the_outer_reading_and_leaves_the_outer_scope_open() {
        scoped(|| {
            let outer = now();
            sleep();
            assert_eq!(scoped(now), outer);
            sleep();
            assert_eq!(now(), outer);
        });
    }

    #[tokio::test]
    async fn each_poll_of_a_scoped_future_reads_the_clock_afresh() {
        let (first, second) = scope(async {
            let first = (now(), now());
            tokio::time::sleep(Duration::from_millis(2)).await;
            (first, now())
        })
        .await;
        assert_eq!(first.0, first.1, "one poll, one reading");
        assert!(second > first.0, "a later poll reads again");
    }

    #[test]
    fn a_scope_closes_when_its_poll_unwinds() {
        let unwound = std::panic::catch_unwind(|| {
            scoped(|| {
                now();
                panic!("poll panicked");
            })
        });
        assert!(unwound.is_err());
        let a = now();
        sleep();
        assert!(now() > a);
    }
}
