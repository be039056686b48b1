//! The connection level: counting client connections and TLS handshakes, and letting
//! connections that were already accepted finish when the listeners stop.
//!
//! Pingora calls an app once per HTTP/1 request and loops over keep-alive reuse outside it, so
//! no phase sees a connection open and close. [`CountConnections`] takes that loop inside:
//! one `process_new` call here is one connection, counted by a guard that also decrements when
//! the task is cancelled at shutdown.
//!
//! When the listeners stop (after a `SIGQUIT` hand-off's close timeout, or on `SIGTERM`),
//! Pingora drops every HTTP/1 connection still waiting for a request (its keep-alive loop on
//! the shutdown signal it is given, the proxy on `cleanup` for a header already started), and
//! sends HTTP/2 connections a GOAWAY, including a connection accepted a moment earlier whose
//! request is on its way. All are therefore delayed by `drain_delay`: the HTTP layer gets a
//! shutdown signal that fires that much later than the server's, and `cleanup` waits as long.
//! Connections already accepted get that long to deliver their request, which is answered
//! with `Connection: close` (see `drain.rs`).

use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct CountConnections<A> {
    inner: Arc<A>,
    metrics: Arc<Metrics>,
    drain_delay: Duration,
    /// The shutdown signal the HTTP layer sees: the server's, `drain_delay` later.
    late_shutdown: (watch::Sender<bool>, ShutdownWatch),
}

impl<A> CountConnections<A> {
    pub fn new(inner: A, metrics: Arc<Metrics>, drain_delay: Duration) -> Self {
        CountConnections {
            inner: Arc::new(inner),
            metrics,
            drain_delay,
            late_shutdown: watch::channel(false),
        }
    }
}

struct Open(IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl<A> ServerApp for CountConnections<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let shutdown = &self.late_shutdown.1;
        self.metrics.downstream_connections.inc();
        let _open = Open(self.metrics.downstream_connections.clone());
        if let Some(tls) = stream.get_ssl_digest() {
            self.metrics
                .tls_handshakes
                .with_label_values(&[tls.version.as_ref()])
                .inc();
        }
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    /// Called once the listeners stopped.
    async fn cleanup(&self) {
        tokio::time::sleep(self.drain_delay).await;
        let _ = self.late_shutdown.0.send(true);
        self.inner.cleanup().await
    }
}
