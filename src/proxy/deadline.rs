//! A deadline for the whole request header, not just for each read.
//!
//! Pingora times out each read of the request header separately, so a client that dribbles one
//! byte every few seconds (slowloris) holds a connection forever. [`HeaderDeadline`] wraps the
//! proxy app: if the header has not been read when the deadline passes, the connection is
//! dropped. The proxy says "header read" from `early_request_filter` through a task-local flag,
//! which is cheap and needs no change to Pingora.
//!
//! On a reused keep-alive connection the wait for the next request is idle time, bounded by
//! the keep-alive timeout, so there the deadline is keep-alive timeout + header timeout. The
//! proxy marks reused connections through Pingora's per-connection context
//! (`persist_connection_context`), which arrives with the next request's session.

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

tokio::task_local! {
    static HEADER_READ: Cell<bool>;
}

/// The marker a kept-alive connection carries to its next request.
pub struct Reused;

/// Called by the proxy once the request header is parsed.
pub fn header_read() {
    let _ = HEADER_READ.try_with(|flag| flag.set(true));
}

/// Wraps an HTTP app with a request-header deadline.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    header_timeout: Duration,
    keepalive_timeout: Duration,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, header_timeout: Duration, keepalive_timeout: Duration) -> Self {
        HeaderDeadline {
            inner: Arc::new(inner),
            header_timeout,
            keepalive_timeout,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Written out rather than `async`: the inner app's future is made here, before this one,
    /// so the session moves straight into it. An `async fn` would hold the session (~3 KiB)
    /// in its own future too, copied once more per request and allocated for as long as a
    /// keep-alive connection waits (bench/results/memory.md).
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        mut session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        // h2 streams arrive with their header already parsed; the h2 layer has its own limits.
        if session.is_http2() {
            return self.inner.process_new_http(session, shutdown);
        }
        // The proxy leaves a marker for the next request on a kept-alive connection
        // (`persist_connection_context`); Pingora hands it to this session. Peek, put back.
        let marker = session.take_connection_user_context();
        let reused = marker.is_some();
        session.set_connection_user_context(marker);
        let deadline = if reused {
            self.keepalive_timeout + self.header_timeout
        } else {
            self.header_timeout
        };
        let mut inner = self.inner.process_new_http(session, shutdown);
        Box::pin(HEADER_READ.scope(Cell::new(false), async move {
            tokio::select! {
                done = &mut inner => done,
                _ = tokio::time::sleep(deadline) => {
                    if HEADER_READ.with(Cell::get) {
                        inner.await
                    } else {
                        log::debug!("request header not complete within {deadline:?}, closing");
                        None
                    }
                }
            }
        }))
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
