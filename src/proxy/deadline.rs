//! A deadline for the whole request header, not just for each read.
//!
//! Pingora times out each read of the request header separately, so a client that dribbles one
//! byte every few seconds (slowloris) holds a connection forever. Two wrappers enforce a
//! deadline for the whole header without a timer per request:
//!
//! - [`ConnectionDeadline`] (per connection) makes the connection's `Due` slot, found through a
//!   task-local, and writes into it when the first request's header is due: one header
//!   timeout after the connection's start (HTTP/1 only);
//! - [`HeaderDeadline`] (per HTTP/1 request, which Pingora starts at the request's first byte:
//!   vendor/README.md, pingora-core patch 2) writes when its header is due, one header timeout
//!   later, unless a due time is pending: the first request keeps the connection's;
//! - the proxy clears the slot once the header is parsed ([`header_read`]);
//! - [`ConnectionDeadline`] keeps one timer and closes the connection if it finds a header
//!   overdue. It wakes at the due time of the header being waited for, or, with none, one
//!   header timeout later: no header that starts afterwards can be due sooner.
//!
//! So between requests a kept-alive connection is idle, bounded by the keep-alive timeout, and
//! the next header is due one header timeout after its first byte, as nginx's
//! `client_header_timeout` follows `keepalive_timeout`.

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

tokio::task_local! {
    static DUE: Arc<Due>;
}

/// When the header a connection is waiting for must be complete; `None` when it is not
/// waiting. Only the connection's own task touches it, so the lock is never contended.
#[derive(Debug, Default)]
struct Due(Mutex<Option<Instant>>);

impl Due {
    fn set(&self, at: Option<Instant>) {
        if let Ok(mut due) = self.0.lock() {
            *due = at;
        }
    }

    /// Sets `at` unless a due time is already pending (the first request's, from the
    /// connection's start).
    fn set_if_none(&self, at: Instant) {
        if let Ok(mut due) = self.0.lock() {
            due.get_or_insert(at);
        }
    }

    fn get(&self) -> Option<Instant> {
        self.0.lock().ok().and_then(|due| *due)
    }
}

/// Called by the proxy once the request header is parsed.
pub fn header_read() {
    let _ = DUE.try_with(|due| due.set(None));
}

/// Wraps an HTTP app with a request-header deadline: the connection level around the
/// request level.
pub fn wrap<A: HttpServerApp>(
    app: A,
    header_timeout: Duration,
) -> ConnectionDeadline<HeaderDeadline<A>> {
    ConnectionDeadline {
        inner: Arc::new(HeaderDeadline {
            inner: Arc::new(app),
            header_timeout,
        }),
        header_timeout,
    }
}

/// The connection level: one timer per connection, checking its `Due` slot.
pub struct ConnectionDeadline<A> {
    inner: Arc<A>,
    header_timeout: Duration,
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
        // limits); every other connection here is HTTP/1 (Tollgate enables no h2c), whose
        // first header is due from now.
        let http2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let due = Arc::new(Due::default());
        if !http2 {
            due.set(Some(Instant::now() + self.header_timeout));
        }
        let connection = DUE.scope(due.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(connection);
        let check = tokio::time::sleep(self.header_timeout);
        tokio::pin!(check);
        loop {
            tokio::select! {
                biased;
                next = &mut connection => return next,
                () = &mut check => {
                    let now = Instant::now();
                    let next_check = match due.get() {
                        Some(at) if at <= now => {
                            log::debug!("request header not complete in time, closing");
                            return None;
                        }
                        Some(at) => at,
                        None => now + self.header_timeout,
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
            let due = Instant::now() + self.header_timeout;
            let _ = DUE.try_with(|slot| slot.set_if_none(due));
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
