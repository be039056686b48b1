//! Active health checks: Pingora's TCP and HTTP checks, scheduled per group by one background
//! service that follows the runtime currently swapped in.
//!
//! Pingora's `LoadBalancer` can run its own checks as a background service, but background
//! services are fixed when the server starts, and a reload adds and removes groups. So one
//! service walks the current groups every tick and runs the checks that are due, each group on
//! its own task so a slow group does not delay the others.

use super::Group;
use crate::config::{HealthCheck, HealthCheckKind, UpstreamTls};
use crate::runtime::SharedRuntime;
use async_trait::async_trait;
use pingora::lb::health_check::HealthObserve;
use pingora::lb::health_check::{HealthCheck as PingoraCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Builds Pingora's check for a group's `health_check` block.
pub fn build_check(
    group: &str,
    hc: &HealthCheck,
    tls: Option<&UpstreamTls>,
) -> Box<dyn PingoraCheck + Send + Sync> {
    let observer = Box::new(LogHealthChange {
        group: group.to_string(),
    });
    match &hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = match tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni),
                None => TcpHealthCheck::new(),
            };
            check.consecutive_success = hc.healthy_after;
            check.consecutive_failure = hc.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.total_connection_timeout = Some(hc.timeout);
            check.health_changed_callback = Some(observer);
            check
        }
        HealthCheckKind::Http {
            path,
            host,
            expected_status,
        } => {
            let mut check = HttpHealthCheck::new(host, tls.is_some());
            if let Some(t) = tls {
                check.peer_template.sni = t.sni.clone();
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
            }
            check.consecutive_success = hc.healthy_after;
            check.consecutive_failure = hc.unhealthy_after;
            let o = &mut check.peer_template.options;
            o.connection_timeout = Some(hc.timeout);
            o.total_connection_timeout = Some(hc.timeout);
            o.read_timeout = Some(hc.timeout);
            o.write_timeout = Some(hc.timeout);
            // A fresh connection per check: a pooled one can hide a backend that stopped
            // accepting.
            check.reuse_connection = false;
            match path.parse::<http::Uri>() {
                Ok(uri) => check.req.set_uri(uri),
                Err(e) => log::error!("upstream {group}: bad health check path {path}: {e}"),
            }
            let expected = *expected_status;
            check.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                        format!("health check expected {expected}, got {}", resp.status),
                    )
                }
            }));
            check.health_changed_callback = Some(observer);
            Box::new(check)
        }
    }
}

struct LogHealthChange {
    group: String,
}

#[async_trait]
impl HealthObserve for LogHealthChange {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let state = if healthy { "healthy" } else { "unhealthy" };
        log::warn!(
            "upstream {}: backend {} is now {state}",
            self.group,
            target.addr
        );
    }
}

impl Group {
    /// Runs this group's health check if it is due and not already running.
    fn start_check_if_due(self: &Arc<Self>, now: Instant) {
        let Some(hc) = &self.config.health_check else {
            return;
        };
        {
            let Ok(mut last) = self.last_check.lock() else {
                return;
            };
            if last.is_some_and(|t| now.duration_since(t) < hc.interval) {
                return;
            }
            if self.check_running.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(now);
        }
        let group = self.clone();
        tokio::spawn(async move {
            // Parallel within the group: one hung backend must not delay the verdict on others.
            group.run_health_check().await;
            group.check_running.store(false, Ordering::Release);
        });
    }
}

/// Runs due health checks for the groups of the current runtime.
pub struct HealthService {
    runtime: SharedRuntime,
    tick: Duration,
}

impl HealthService {
    pub fn new(runtime: SharedRuntime) -> Self {
        HealthService {
            runtime,
            tick: Duration::from_millis(100),
        }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let runtime = self.runtime.load();
            for group in runtime.groups.values() {
                group.start_check_if_due(now);
            }
        }
    }
}
