//! Live reload: re-read the file, build a whole new runtime off to the side, swap it in.
//!
//! A file that fails validation, a certificate that fails to load, or a runtime that fails to
//! build changes nothing: the old config keeps serving and the errors are returned. Certificates
//! are swapped into each listener's resolver only after everything else succeeded. Listener
//! changes (addresses, adding or removing listeners) cannot be applied in place; the reload
//! applies the rest and says so, pointing at the `--upgrade` + `SIGQUIT` hand-off.

use crate::config::{Config, ListenerKind};
use crate::metrics::Metrics;
use crate::runtime::{Runtime, SharedRuntime};
use crate::tls::{CertStore, SniResolver};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReloadOutcome {
    pub applied: bool,
    pub errors: Vec<String>,
    /// Applied, but with parts that need a restart or hand-off.
    pub warnings: Vec<String>,
}

/// Reloads the config file into the running server.
pub struct Reloader {
    path: PathBuf,
    runtime: SharedRuntime,
    resolvers: HashMap<String, Arc<SniResolver>>,
    metrics: Arc<Metrics>,
    /// One reload at a time (SIGHUP and the admin API may race).
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        runtime: SharedRuntime,
        resolvers: HashMap<String, Arc<SniResolver>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reloader = Reloader {
            path,
            runtime,
            resolvers,
            metrics,
            lock: Mutex::new(()),
        };
        reloader.record_applied();
        reloader
    }

    /// Publishes the serving config's hash and certificate expiries.
    fn record_applied(&self) {
        self.metrics
            .config_applied(&self.runtime.load().config.source.hash);
        self.metrics.cert_not_after.reset();
        for resolver in self.resolvers.values() {
            for cert in resolver.current().certs() {
                let name = cert
                    .names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| cert.path.display().to_string());
                let secs = cert
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.metrics
                    .cert_not_after
                    .with_label_values(&[&name])
                    .set(secs);
            }
        }
    }

    /// Reloads the file; on any error nothing changes.
    pub fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match self.try_reload() {
            Ok(warnings) => ReloadOutcome {
                applied: true,
                errors: Vec::new(),
                warnings,
            },
            Err(errors) => ReloadOutcome {
                applied: false,
                errors,
                warnings: Vec::new(),
            },
        };
        let result = if outcome.applied {
            "success"
        } else {
            "failure"
        };
        self.metrics.reloads.with_label_values(&[result]).inc();
        if outcome.applied {
            self.record_applied();
            log::info!("configuration reloaded from {}", self.path.display());
            for w in &outcome.warnings {
                log::warn!("reload: {w}");
            }
        } else {
            log::error!(
                "reload refused, still serving the previous configuration:\n  {}",
                outcome.errors.join("\n  ")
            );
        }
        outcome
    }

    fn try_reload(&self) -> Result<Vec<String>, Vec<String>> {
        let mut config = Config::load(&self.path).map_err(|e| e.errors())?;
        let current = self.runtime.load_full();
        let warnings = listener_changes(&current.config, &config);
        // Server settings are bound at start (warned about above, on every reload that differs):
        // the runtime keeps the running ones, so what it builds from them (an upstream group's
        // header case) agrees with the listeners.
        config.server = current.config.server.clone();

        let mut stores = Vec::new();
        for (index, l) in config.listeners.iter().enumerate() {
            let (ListenerKind::Https(tls), Some(resolver)) = (&l.kind, self.resolvers.get(&l.name))
            else {
                continue;
            };
            let store = CertStore::load(&tls.certificates, tls.default_certificate)
                .map_err(|e| vec![format!("listeners[{index}].tls: {e}")])?;
            stores.push((resolver.clone(), store));
        }
        let runtime = Runtime::build(config, Some(&current), &self.metrics)
            .map_err(|e| vec![e.to_string()])?;
        for (resolver, store) in stores {
            resolver.replace(store);
        }
        self.runtime.store(Arc::new(runtime));
        Ok(warnings)
    }
}

/// Listener differences a reload cannot apply.
fn listener_changes(old: &Config, new: &Config) -> Vec<String> {
    let shape = |c: &Config| -> Vec<(String, String, &'static str)> {
        c.listeners
            .iter()
            .map(|l| {
                let kind = match &l.kind {
                    ListenerKind::Https(_) => "https",
                    ListenerKind::Http {
                        redirect_https: true,
                    } => "redirect",
                    ListenerKind::Http { .. } => "http",
                };
                (l.name.clone(), l.address.to_string(), kind)
            })
            .collect()
    };
    let mut warnings = Vec::new();
    if shape(old) != shape(new) {
        warnings.push(
            "listener changes are not applied by a reload; start a new process with --upgrade \
             and send SIGQUIT to this one to hand the sockets over"
                .to_string(),
        );
    }
    let restart_only = [
        ("server", old.server != new.server),
        ("logging", old.logging != new.logging),
        ("admin", old.admin != new.admin),
        ("metrics", old.metrics != new.metrics),
        // Key sources are per request and do apply; the store and its timers do not.
        ("clients", client_store(old) != client_store(new)),
    ];
    for (section, changed) in restart_only {
        if changed {
            warnings.push(format!(
                "{section} settings are not applied by a reload; use the --upgrade + SIGQUIT \
                 hand-off"
            ));
        }
    }
    warnings
}

/// The parts of the clients section bound at start.
fn client_store(c: &Config) -> Option<(&str, f64, u32, std::time::Duration, std::time::Duration)> {
    c.clients.as_ref().map(|c| {
        (
            c.store.as_str(),
            c.default_rate_per_sec,
            c.default_capacity,
            c.save_state_interval,
            c.sync_interval,
        )
    })
}

/// Reloads on every `SIGHUP`.
pub struct ReloadWatcher {
    reloader: Arc<Reloader>,
}

impl ReloadWatcher {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        ReloadWatcher { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch SIGHUP, reload only through the admin API: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let reloader = self.reloader.clone();
                    // Reading files and building groups is blocking work.
                    if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload()).await {
                        log::error!("reload task failed: {e}");
                    }
                }
            }
        }
    }
}
