//! Test harness: a real Tollgate server on loopback, real demo backends, real HTTPS clients.
#![allow(dead_code)]

use pingora::server::ShutdownSignal;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tollgate::reload::Reloader;
use tollgate::runtime::SharedRuntime;
use tollgate::{build_server, Config, StartOptions};

pub use tollgate_demo_backend::{Backend, Mode};

pub mod accept_any;
pub mod raw;

/// A port that was free a moment ago, for Pingora (which binds by address itself).
///
/// Picked at random below the kernel's ephemeral range (32768+), where port-0 binds (demo
/// backends, outgoing connections) never land, so a backend stopped by one test cannot hand
/// its port to another test's edge. Test processes run in parallel, so the port is also
/// reserved across processes (see [`reserve`]): otherwise two edges could pick the same free
/// port, one bind would fail, and its test would talk to the other test's edge.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(7919) ^ (rand_u16() & 0x0fff);
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + (seed.wrapping_add(n.wrapping_mul(37)) % 12000);
        if reserve(port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// Reserves `port` for the rest of this process by holding a UDP socket on the same number:
/// TCP is untouched (Pingora binds it), another test process's reservation fails, and the
/// socket closes when the process exits, however it exits.
fn reserve(port: u16) -> bool {
    static HELD: std::sync::Mutex<Vec<std::net::UdpSocket>> = std::sync::Mutex::new(Vec::new());
    match std::net::UdpSocket::bind(("127.0.0.1", port)) {
        Ok(socket) => {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(socket);
            true
        }
        Err(_) => false,
    }
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (t >> 16)) as u16
}

/// A running edge; stops (fast shutdown) when dropped.
pub struct Edge {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub runtime: SharedRuntime,
    pub reloader: Arc<Reloader>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    thread: Option<JoinHandle<()>>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// Pingora's no-steal runtime keeps a process-wide thread-local registry of runtime handles;
/// a second server started after one stopped in the same process can spawn its listeners on a
/// dead runtime and never listen. Test configs therefore use `work_stealing: true`, and the
/// edges of one test binary take turns (the real binary runs one server per process, as does
/// `cargo nextest`).
static ONE_EDGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fills the placeholders of a config body: `{https}`, `{http}`, `{dir}`.
pub struct Placeholders {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
}

/// The listener and server sections every test config shares; append `upstreams` and `routes`.
pub fn base_config(p: &Placeholders) -> String {
    format!(
        r#"
server:
  threads: 2
  work_stealing: true
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: {dir}/tollgate.pid
  upgrade_sock: {dir}/upgrade.sock
  header_read_timeout: 2s
listeners:
  - name: https
    address: "{https}"
    tls:
      certificates:
        - {{ cert: {dir}/localhost.crt, key: {dir}/localhost.key, self_signed_if_missing: true }}
  - name: http
    address: "{http}"
logging: {{ level: warn, access_log: false }}
"#,
        dir = p.dir.display(),
        https = p.https,
        http = p.http,
    )
}

/// `base_config` with one more `server` setting (`key: value`).
pub fn base_config_with(p: &Placeholders, setting: &str) -> String {
    let anchor = "  header_read_timeout: 2s\n";
    let base = base_config(p);
    assert!(base.contains(anchor), "base config changed shape");
    base.replacen(anchor, &format!("{anchor}  {setting}\n"), 1)
}

impl Edge {
    /// Starts an edge whose config is `base_config` + `body` (upstreams, routes, ...).
    pub fn start(body: &str) -> Edge {
        Self::start_with(|p| format!("{}{body}", base_config(p)))
    }

    /// Starts an edge with one more `server` setting (`key: value`) than `start`.
    pub fn start_with_server(setting: &str, body: &str) -> Edge {
        Self::start_with(|p| base_config_with(p, setting) + body)
    }

    /// Starts an edge from a whole config built from the placeholders.
    pub fn start_with(make: impl FnOnce(&Placeholders) -> String) -> Edge {
        let guard = ONE_EDGE.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Placeholders {
            https: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: dir.path().to_path_buf(),
        };
        let yaml = make(&p);
        let config_path = dir.path().join("tollgate.yaml");
        std::fs::write(&config_path, &yaml).expect("write config");
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let listening = every_address(&config);
        let opts = StartOptions {
            config_path: config_path.clone(),
            ..StartOptions::default()
        };
        let built = build_server(config, &opts).expect("build server");
        let runtime = built.runtime.clone();
        let reloader = built.reloader.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || tollgate::server::run_until(built, rx));
        listening.into_iter().for_each(wait_listening);
        Edge {
            https: p.https,
            http: p.http,
            runtime,
            reloader,
            dir,
            config_path,
            stop: Some(tx),
            thread: Some(thread),
            _one_at_a_time: guard,
        }
    }

    /// `https://localhost:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// `GET {path}` on the edge with a fresh [`Self::client`].
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client()
            .get(self.url(path))
            .send()
            .await
            .expect("send")
    }

    /// An HTTPS client that trusts the demo certificate and resolves localhost to the edge.
    pub fn client(&self) -> reqwest::Client {
        client_builder(self.https).build().expect("client")
    }

    /// The placeholders this edge's config was filled with.
    pub fn placeholders(&self) -> Placeholders {
        Placeholders {
            https: self.https,
            http: self.http,
            dir: self.dir.path().to_path_buf(),
        }
    }

    /// Rewrites the config file (for reload tests).
    pub fn write_config(&self, body: &str) {
        let config = format!("{}{body}", base_config(&self.placeholders()));
        std::fs::write(&self.config_path, config).expect("write config");
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(ShutdownSignal::FastShutdown);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn client_builder(https: SocketAddr) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", https)
        .timeout(Duration::from_secs(10))
}

/// Every address the config serves on: Pingora binds its services one after another, so a
/// test must not assume the plaintext or admin listener is up because the HTTPS one is.
fn every_address(config: &Config) -> Vec<SocketAddr> {
    let public = config.listeners.iter().map(|l| l.address);
    let admin = config.admin.as_ref().map(|a| a.address);
    let metrics = config.metrics.as_ref().map(|m| m.address);
    public.chain(admin).chain(metrics).collect()
}

/// Blocks until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for tests without a runtime: polls `cond` every 50 ms until it holds or
/// `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The `X-Backend` header of a response.
pub fn served_by(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// YAML list of backend addresses.
pub fn backend_list(backends: &[&Backend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr()))
        .collect();
    format!("[{}]", items.join(", "))
}
