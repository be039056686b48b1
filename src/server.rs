//! Assembling a Pingora [`Server`] from a validated [`Config`], and running it.
//!
//! Services: the proxy (every serving listener, TLS by SNI), the plaintext redirect (if any
//! listener redirects), the health checker, and the reload watcher. Pingora owns signals:
//! `SIGTERM` drains within `grace_period`, `SIGQUIT` hands listeners to a process started with
//! `--upgrade`; we add `SIGHUP` for reloads.

use crate::admin::{AdminApp, MetricsApp};
use crate::clients::{ClientDefaults, Clients, ClientsService};
use crate::config::{ClientsConfig, Config, ListenerKind};
use crate::logging::{AccessLog, AccessLogFlusher};
use crate::metrics::Metrics;
use crate::proxy::connections::CountConnections;
use crate::proxy::deadline;
use crate::proxy::drain::{DrainWatch, Draining};
use crate::proxy::gate::LimitSweeper;
use crate::proxy::Tollgate;
use crate::redirect::Redirect;
use crate::reload::{ReloadWatcher, Reloader};
use crate::runtime::{Runtime, SharedRuntime};
use crate::tls::{CertStore, SniResolver, TlsError};
use crate::upstream::health::HealthService;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::ALPN;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// How the process was started.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The file reloads re-read.
    pub config_path: PathBuf,
    /// Take the listening sockets over from a running instance (`SIGQUIT` hand-off).
    pub upgrade: bool,
    pub daemon: bool,
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listeners[{index}] ({name}): {source}")]
    Certificate {
        index: usize,
        name: String,
        source: TlsError,
    },
    #[error("admin.token_env: ${0} is not set, and the admin API is not on loopback")]
    AdminToken(String),
    #[error("logging.file: {0}")]
    AccessLog(String),
    #[error("clients.store: {0}")]
    Clients(String),
    #[error("{0}")]
    Runtime(#[from] crate::runtime::BuildError),
    #[error("listeners[{index}] ({name}): {message}")]
    Listener {
        index: usize,
        name: String,
        message: String,
    },
}

/// A server ready to run, with handles tests and the admin side use.
pub struct Built {
    pub server: Server,
    pub runtime: SharedRuntime,
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    /// The API client registry, when configured.
    pub clients: Option<Arc<Clients>>,
    pub access_log: Arc<AccessLog>,
}

/// Builds the server and all its services; nothing listens until it runs.
pub fn build_server(config: Config, opts: &StartOptions) -> Result<Built, StartError> {
    let server_conf = server_conf(&config);
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    // Nothing here reads how long a socket read or write waited; timing it is four clock
    // reads per proxied request (pingora-core patch 14).
    pingora::protocols::l4::stream::set_pending_io_timing(false);
    let conf = server.configuration.clone();

    let mut resolvers = HashMap::new();
    for (index, l) in config.listeners.iter().enumerate() {
        if let ListenerKind::Https(tls) = &l.kind {
            let store =
                CertStore::load(&tls.certificates, tls.default_certificate).map_err(|source| {
                    StartError::Certificate {
                        index,
                        name: l.name.clone(),
                        source,
                    }
                })?;
            resolvers.insert(l.name.clone(), Arc::new(SniResolver::new(store)));
        }
    }

    let settings = config.server.clone();
    let redirect_port = config.https_port();
    let listeners = config.listeners.clone();
    let clients = match &config.clients {
        Some(c) => Some(Arc::new(open_clients(c)?)),
        None => None,
    };
    let clients_config = config.clients.clone();
    let admin = config.admin.clone();
    let logging = config.logging.clone();
    let metrics_listener = config.metrics.clone();
    let metrics = Arc::new(Metrics::new());
    let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(Runtime::build(
        config, None, &metrics,
    )?));

    let access_log =
        Arc::new(AccessLog::open(&logging).map_err(|e| StartError::AccessLog(e.to_string()))?);
    server.add_service(background_service(
        "access log flush",
        AccessLogFlusher(access_log.clone()),
    ));
    let draining = Draining::default();
    server.add_service(background_service(
        "drain on upgrade or stop",
        DrainWatch::new(server.watch_execution_phase(), draining.clone()),
    ));
    let mut proxy = pingora::proxy::http_proxy(
        &conf,
        Tollgate::new(
            runtime.clone(),
            metrics.clone(),
            clients.clone(),
            draining,
            access_log.clone(),
        ),
    );
    let mut options = HttpServerOptions::default();
    // Pingora counts reuses after the first request.
    options.keepalive_request_limit = Some(settings.keepalive_requests.saturating_sub(1));
    options.normalize_header_case = settings.header_case.normalizes();
    proxy.server_options = Some(options);
    let app = CountConnections::new(
        deadline::wrap(
            proxy,
            settings.header_read_timeout,
            settings.keepalive_timeout,
        ),
        metrics.clone(),
        // Long enough for a request already on its way, leaving half the grace period for
        // HTTP/2 clients to move after their GOAWAY.
        settings.header_read_timeout.min(settings.grace_period / 2),
    );
    let mut proxy_service = Service::new("tollgate proxy".to_string(), app);
    let mut redirect_service = None;
    for (index, l) in listeners.iter().enumerate() {
        let addr = l.address.to_string();
        match &l.kind {
            ListenerKind::Https(tls) => {
                let resolver =
                    resolvers
                        .get(&l.name)
                        .cloned()
                        .ok_or_else(|| StartError::Listener {
                            index,
                            name: l.name.clone(),
                            message: "no certificate store".into(),
                        })?;
                let mut ts =
                    TlsSettings::intermediate("", "").map_err(|e| StartError::Listener {
                        index,
                        name: l.name.clone(),
                        message: e.to_string(),
                    })?;
                ts.set_cert_resolver(resolver);
                if tls.http2 {
                    ts.enable_h2();
                } else {
                    ts.set_alpn(ALPN::H1);
                }
                proxy_service.add_tls_with_settings(&addr, None, ts);
            }
            ListenerKind::Http {
                redirect_https: false,
            } => proxy_service.add_tcp(&addr),
            ListenerKind::Http {
                redirect_https: true,
            } => redirect_service
                .get_or_insert_with(|| {
                    let app = HttpServer::new_app(Redirect::new(redirect_port.unwrap_or(443)));
                    Service::new("tollgate redirect".to_string(), app)
                })
                .add_tcp(&addr),
        }
    }
    server.add_service(proxy_service);
    if let Some(r) = redirect_service {
        server.add_service(r);
    }
    server.add_service(background_service(
        "rate limit sweeper",
        LimitSweeper::new(runtime.clone()),
    ));
    server.add_service(background_service(
        "health checks",
        HealthService::new(runtime.clone()),
    ));
    let reloader = Arc::new(Reloader::new(
        opts.config_path.clone(),
        runtime.clone(),
        resolvers,
        metrics.clone(),
    ));
    if let Some(m) = metrics_listener {
        let app = HttpServer::new_app(MetricsApp::new(runtime.clone(), metrics.clone()));
        let mut service = Service::new("tollgate metrics".to_string(), app);
        service.add_tcp(&m.address.to_string());
        server.add_service(service);
    }
    if let Some(a) = admin {
        let token = match &a.token_env {
            Some(var) => match std::env::var(var) {
                Ok(t) if !t.is_empty() => Some(t),
                _ if a.address.ip().is_loopback() => {
                    log::warn!("admin: ${var} is not set; the loopback admin API has no token");
                    None
                }
                _ => return Err(StartError::AdminToken(var.clone())),
            },
            None => None,
        };
        let app = HttpServer::new_app(AdminApp::new(
            runtime.clone(),
            reloader.clone(),
            token,
            clients.clone(),
        ));
        let mut service = Service::new("tollgate admin".to_string(), app);
        service.add_tcp(&a.address.to_string());
        server.add_service(service);
    }
    server.add_service(background_service(
        "reload on SIGHUP",
        ReloadWatcher::new(reloader.clone()),
    ));
    if let (Some(registry), Some(c)) = (&clients, clients_config) {
        server.add_service(background_service(
            "clients sync and save",
            ClientsService::new(registry.clone(), c.sync_interval, c.save_state_interval),
        ));
    }
    Ok(Built {
        server,
        runtime,
        reloader,
        metrics,
        clients,
        access_log,
    })
}

/// Opens the client store and loads every client (and its saved bucket level) into memory.
fn open_clients(c: &ClientsConfig) -> Result<Clients, StartError> {
    let defaults = ClientDefaults {
        rate_per_sec: c.default_rate_per_sec,
        capacity: c.default_capacity,
    };
    let store = c.store.clone();
    // Pingora's runtimes do not exist yet; a short-lived one on its own thread does the first
    // load (its own thread, so building a server from inside an async context works too).
    on_own_runtime(move || async move { Clients::open(&store, defaults).await })
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(StartError::Clients)
}

/// Runs a future to completion on a fresh current-thread runtime in a new thread.
fn on_own_runtime<F, Fut, T>(make: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(make()))
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "client store loader panicked".to_string())?
}

/// Saves client bucket levels once more after the server stopped. A graceful stop already
/// did (the clients service saves on shutdown); a fast one (SIGINT) never tells background
/// services, so this is what keeps a restart from refilling every bucket.
fn save_after_stop(clients: Option<Arc<Clients>>) {
    let Some(registry) = clients else {
        return;
    };
    match on_own_runtime(move || async move { registry.save_states().await }) {
        Ok(Ok(n)) => log::info!("clients: saved {n} bucket levels at exit"),
        Ok(Err(e)) => log::warn!("clients: cannot save bucket levels at exit: {e}"),
        Err(e) => log::warn!("clients: cannot save bucket levels at exit: {e}"),
    }
}

fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        pid_file: s.pid_file.display().to_string(),
        upgrade_sock: s.upgrade_sock.display().to_string(),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        // Pingora's timeouts on tokio's timer wheel rather than its "fast" timer, whose
        // BTreeMap, two Arcs and `Notify` per armed wait cost ~1,600 more instructions per
        // proxied request (cg-hotpath.md). HTTP/1 reads and writes and TLS handshakes no
        // longer use either (pingora-core patch 17: spare timers); this covers the rest
        // (connecting upstream, HTTP/2).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    }
}

/// Runs with Pingora's Unix signal handling until the process is told to stop.
pub fn run(built: Built) {
    built.server.run(RunArgs::default());
    built.access_log.flush();
    save_after_stop(built.clients);
}

/// Runs until `stop` fires (or its sender is dropped); for embedding and tests.
pub fn run_until(built: Built, stop: tokio::sync::oneshot::Receiver<ShutdownSignal>) {
    built.server.run(RunArgs {
        shutdown_signal: Box::new(OneShotSignal(tokio::sync::Mutex::new(Some(stop)))),
    });
    built.access_log.flush();
    save_after_stop(built.clients);
}

struct OneShotSignal(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<ShutdownSignal>>>);

#[async_trait]
impl ShutdownSignalWatch for OneShotSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().await.take();
        match rx {
            Some(rx) => rx.await.unwrap_or(ShutdownSignal::FastShutdown),
            None => std::future::pending().await,
        }
    }
}
