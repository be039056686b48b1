//! Deadlines for the whole request header and for the idle time between requests, kept with
//! one timer per connection rather than one per request.
//!
//! Pingora times out each read of the request header separately, so a client that dribbles one
//! byte every few seconds (slowloris) holds a connection forever; and it bounds the wait for a
//! kept-alive connection's next request with a timer armed, polled and dropped for every
//! request. Here:
//!
//! - [`ConnectionDeadline`] (per connection) makes the connection's [`Due`] slot, found through
//!   a task-local, and writes into it when the first request's header is due: one header
//!   timeout after the connection's start (HTTP/1 only);
//! - [`HeaderDeadline`] (per HTTP/1 request, which Pingora starts at the request's first byte:
//!   vendor/README.md, pingora-core patch 2) writes when its header is due, one header timeout
//!   later, unless a header is already due: the first request keeps the connection's;
//! - the proxy marks the slot busy once the header is parsed ([`header_read`]), and idle once
//!   the request is done ([`request_done`]): the next request must start within the keep-alive
//!   timeout (Pingora is told to wait without a timer of its own: [`KEEP_ALIVE`]);
//! - [`ConnectionDeadline`] keeps one timer and closes the connection if it finds a header or
//!   an idle period overdue. It wakes at the due time, or, while busy, one period later (the
//!   shorter of the two timeouts): nothing that starts afterwards can be due sooner.
//!
//! So between requests a kept-alive connection is idle, bounded by the keep-alive timeout, and
//! the next header is due one header timeout after its first byte, as nginx's
//! `client_header_timeout` follows `keepalive_timeout`.

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use pingora::utils::clock;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

tokio::task_local! {
    static DUE: Arc<Due>;
}

/// What a connection waits for, and until when.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Serving a request (or not HTTP/1): nothing is due.
    Busy,
    /// The header of a request must be complete by then.
    Header(Instant),
    /// The next request must start by then.
    Idle(Instant),
}

/// The connection's [`Wait`]. Only the connection's own task touches it, so the lock is
/// never contended.
#[derive(Debug)]
struct Due {
    wait: Mutex<Wait>,
    keepalive_timeout: Duration,
}

impl Due {
    fn update(&self, f: impl FnOnce(Wait) -> Wait) {
        if let Ok(mut wait) = self.wait.lock() {
            *wait = f(*wait);
        }
    }

    fn get(&self) -> Wait {
        self.wait.lock().map_or(Wait::Busy, |wait| *wait)
    }
}

/// Called by the proxy once the request header is parsed.
pub fn header_read() {
    let _ = DUE.try_with(|due| due.update(|_| Wait::Busy));
}

/// Called by the proxy when a request is done (`now`): the connection, if kept alive, is idle
/// from now on. A header still due (the request failed before it was read) stays due.
pub fn request_done(now: Instant) {
    let _ = DUE.try_with(|due| {
        due.update(|wait| match wait {
            Wait::Busy => Wait::Idle(now + due.keepalive_timeout),
            other => other,
        })
    });
}

/// What the proxy sets as a session's keep-alive: Pingora waits for the next request without
/// a timer of its own (0 = no limit), as [`ConnectionDeadline`] bounds the idle time.
pub const KEEP_ALIVE: Option<u64> = Some(0);

/// Wraps an HTTP app with the connection's deadlines: the connection level around the
/// request level.
pub fn wrap<A: HttpServerApp>(
    app: A,
    header_timeout: Duration,
    keepalive_timeout: Duration,
) -> ConnectionDeadline<HeaderDeadline<A>> {
    ConnectionDeadline {
        inner: Arc::new(HeaderDeadline {
            inner: Arc::new(app),
            header_timeout,
        }),
        header_timeout,
        keepalive_timeout,
    }
}

/// The connection level: one timer per connection, checking its `Due` slot.
pub struct ConnectionDeadline<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
}

#[async_trait]
impl<A> ServerApp for ConnectionDeadline<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // An HTTP/2 connection's streams arrive with their headers parsed (h2 has its own
        // limits and idle timeout); every other connection here is HTTP/1 (Tollgate enables no
        // h2c), whose first header is due from now.
        let http2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let now = clock::now();
        let due = Arc::new(Due {
            wait: Mutex::new(if http2 {
                Wait::Busy
            } else {
                Wait::Header(now + self.header_timeout)
            }),
            keepalive_timeout: self.keepalive_timeout,
        });
        // While busy, no header or idle period can start and be due sooner than this.
        let period = self.header_timeout.min(self.keepalive_timeout);
        let connection = DUE.scope(due.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(connection);
        let check = tokio::time::sleep(period);
        tokio::pin!(check);
        loop {
            tokio::select! {
                biased;
                next = &mut connection => return next,
                () = &mut check => {
                    let now = clock::now();
                    let next_check = match due.get() {
                        Wait::Header(at) if at <= now => {
                            log::debug!("request header not complete in time, closing");
                            return None;
                        }
                        Wait::Idle(at) if at <= now => {
                            log::debug!("keep-alive connection idle too long, closing");
                            return None;
                        }
                        Wait::Header(at) | Wait::Idle(at) => at,
                        Wait::Busy => now + period,
                    };
                    check.as_mut().reset(next_check.into());
                }
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// The request level: says when the header of the request about to be read is due.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    header_timeout: Duration,
}

#[async_trait]
impl<A> HttpServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Written out rather than `async`: this only sets the due time and returns the inner
    /// app's future, so it adds no future, allocation or copy of the session of its own.
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        // h2 streams arrive with their header already parsed; the h2 layer has its own limits.
        if !session.is_http2() {
            let due = clock::now() + self.header_timeout;
            let _ = DUE.try_with(|slot| {
                slot.update(|wait| match wait {
                    Wait::Header(first) => Wait::Header(first),
                    Wait::Busy | Wait::Idle(_) => Wait::Header(due),
                })
            });
        }
        self.inner.process_new_http(session, shutdown)
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}
