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

//! Timeouts on reused timers (Tollgate patch, vendor/README.md).
//!
//! An HTTP/1 read or write that waits (every upstream response header does), and a TLS
//! handshake, armed a timer of its own: a tokio `Sleep` made, boxed, put in the timer wheel
//! under its lock, taken out again under the lock when the wait ended, and freed; and the clock
//! read for its deadline. [`timeout`] takes a
//! timer a finished wait on this thread left behind instead, and moves its deadline later, which
//! tokio does without the wheel's lock while the timer is still armed: the wheel sees the new
//! deadline when the old one comes round. The deadline is counted from this poll's reading of
//! [`clock::now`](super::clock::now).
//!
//! A spare timer stays armed until its deadline and keeps the waker of the task that last
//! waited on it until then or until it is reused: a thread keeps at most [`MAX_SPARE`] of them.
//! Spare timers are kept per runtime: a thread that runs a different runtime drops the others'.

use super::clock;
use pingora_timeout::Elapsed;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// The most spare timers one thread keeps (about the reads it has waiting at once).
pub const MAX_SPARE: usize = 128;

/// This thread's spare timers, and the runtime whose timer driver they are armed in.
struct Spare {
    runtime: Option<Id>,
    timers: Vec<Pin<Box<Sleep>>>,
}

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            runtime: None,
            timers: Vec::new(),
        })
    };
}

/// `future`'s output, or [`Elapsed`] if it has not finished `duration` after the first time it
/// waited. Like `tokio::time::timeout` (and `pingora_timeout::timeout`), `future` is polled
/// first: one that is ready at once never arms a timer.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let mut timer: Option<Lent> = None;
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let timer = timer.get_or_insert_with(|| Lent::armed(clock::now() + duration));
        timer.sleep().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// A timer taken for one wait, given back to this thread's spares when the wait ends.
struct Lent(Option<Pin<Box<Sleep>>>);

impl Lent {
    /// A spare timer moved to `deadline`, or a new one.
    fn armed(deadline: std::time::Instant) -> Lent {
        let deadline = Instant::from_std(deadline);
        let spare = current_runtime().and_then(|runtime| {
            SPARE.with_borrow_mut(|spare| {
                if spare.runtime != Some(runtime) {
                    spare.timers.clear();
                    spare.runtime = Some(runtime);
                }
                spare.timers.pop()
            })
        });
        Lent(Some(match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }))
    }

    fn sleep(&mut self) -> Pin<&mut Sleep> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut(),
            None => unreachable!("a lent timer is only taken when it is dropped"),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(sleep) = self.0.take() else {
            return;
        };
        let Some(runtime) = current_runtime() else {
            return;
        };
        // `try_with`: a wait dropped while the thread's locals are being destroyed just
        // drops its timer.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.runtime == Some(runtime) && spare.timers.len() < MAX_SPARE {
                spare.timers.push(sleep);
            }
        });
    }
}

fn current_runtime() -> Option<Id> {
    Handle::try_current().ok().map(|handle| handle.id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn spare_timers() -> usize {
        SPARE.with_borrow(|spare| spare.timers.len())
    }

    /// A future that is ready at once arms no timer; a wait that ends leaves its timer spare.
    #[tokio::test]
    async fn a_finished_wait_leaves_its_timer_for_the_next() {
        assert_eq!(
            timeout(Duration::from_secs(5), async { 1 }).await.ok(),
            Some(1)
        );
        assert_eq!(spare_timers(), 0);
        let waited = timeout(
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_millis(1)),
        );
        assert!(waited.await.is_ok());
        assert_eq!(spare_timers(), 1);
        let waited = timeout(
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_millis(1)),
        );
        assert!(waited.await.is_ok());
        assert_eq!(
            spare_timers(),
            1,
            "the spare was reused, not a second one made"
        );
    }

    /// A reused timer times out after its own duration, not the one it had before, whether
    /// that was longer or shorter.
    #[tokio::test]
    async fn a_reused_timer_keeps_its_new_deadline() {
        let quick = tokio::time::sleep(Duration::from_millis(1));
        assert!(timeout(Duration::from_secs(60), quick).await.is_ok());
        let start = std::time::Instant::now();
        assert!(timeout(Duration::from_millis(30), pending::<()>())
            .await
            .is_err());
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert!(waited < Duration::from_secs(30), "{waited:?}");
        // The timer that fired is spare again, and a later, longer wait is not cut short by the
        // deadline it had.
        assert_eq!(spare_timers(), 1);
        let slow = tokio::time::sleep(Duration::from_millis(60));
        assert!(timeout(Duration::from_millis(200), slow).await.is_ok());
    }

    /// Timeouts abandoned part-way (the caller dropped them) give their timers back too, up
    /// to the most a thread keeps.
    #[tokio::test]
    async fn abandoned_waits_give_their_timers_back_up_to_the_cap() {
        let mut waits: Vec<_> = (0..MAX_SPARE + 8)
            .map(|_| Box::pin(timeout(Duration::from_secs(5), pending::<()>())))
            .collect();
        for wait in &mut waits {
            let polled = futures::poll!(wait.as_mut());
            assert!(polled.is_pending());
        }
        drop(waits);
        assert_eq!(spare_timers(), MAX_SPARE);
    }

    /// A thread that moves to another runtime does not use the first one's timers.
    #[test]
    fn spare_timers_stay_with_their_runtime() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let wait = || {
            timeout(
                Duration::from_secs(5),
                tokio::time::sleep(Duration::from_millis(1)),
            )
        };
        runtime().block_on(async { assert!(wait().await.is_ok()) });
        assert_eq!(spare_timers(), 1);
        // The first runtime is gone: its timer must not be polled under the second.
        runtime().block_on(async {
            assert!(wait().await.is_ok());
            assert_eq!(spare_timers(), 1);
        });
    }
}
