//! Counting client connections and TLS handshakes.
//!
//! Pingora calls an app once per HTTP/1 request and loops over keep-alive reuse outside it, so
//! no phase sees a connection open and close. [`CountConnections`] takes that loop inside:
//! one `process_new` call here is one connection, counted by a guard that also decrements when
//! the task is cancelled at shutdown.

use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;
use std::sync::Arc;

pub struct CountConnections<A> {
    inner: Arc<A>,
    metrics: Arc<Metrics>,
}

impl<A> CountConnections<A> {
    pub fn new(inner: A, metrics: Arc<Metrics>) -> Self {
        CountConnections {
            inner: Arc::new(inner),
            metrics,
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
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
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

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
