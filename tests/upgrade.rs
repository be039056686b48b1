//! The real binary's process life cycle: the `--upgrade` + `SIGQUIT` socket hand-off under load,
//! and `SIGTERM` draining an in-flight request.
//!
//! Backends run in this test process (`Backend::start`); the edge is `tollgate` itself.

#[allow(unused_imports)] // the harness exports more than this file uses
mod common;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Pingora's fixed wait (`CLOSE_TIMEOUT`) between sending the sockets and starting the graceful
/// shutdown of the old process; not configurable.
const PINGORA_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// `grace_period` + `graceful_shutdown_timeout` of `base_config`.
const DRAIN: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(10);

/// A `tollgate` process, killed if the test ends without stopping it.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start tollgate");
        Proc { child, log }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Waits for the exit; `None` if still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A config file (the harness's `base_config`: https + plaintext listeners on free ports,
/// pid file and upgrade socket in the tempdir, work stealing) proxying `/api` to `backend`.
fn write_config(backend: &Backend) -> (tempfile::TempDir, PathBuf, Placeholders) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Placeholders {
        https: SocketAddr::from(([127, 0, 0, 1], free_port())),
        http: SocketAddr::from(([127, 0, 0, 1], free_port())),
        dir: dir.path().to_path_buf(),
    };
    let body = format!(
        "upstreams:\n  api: {{ backends: {} }}\nroutes:\n  \
         - {{ name: api, match: {{ prefix: /api }}, upstream: api }}\n",
        backend_list(&[backend])
    );
    let file = dir.path().join("tollgate.yaml");
    std::fs::write(&file, format!("{}{body}", base_config(&p))).expect("write config");
    (dir, file, p)
}

/// A client with its own connection pool (no public root store: nothing to verify).
fn new_client(https: SocketAddr) -> reqwest::Client {
    client_builder(https)
        .tls_built_in_root_certs(false)
        .build()
        .expect("client")
}

/// Polls until `url` answers 200 through `https`.
async fn wait_serving(https: SocketAddr, url: &str, proc: &Proc) {
    let client = new_client(https);
    let ok = eventually(
        Duration::from_secs(30),
        async || matches!(client.get(url).send().await, Ok(r) if r.status() == 200),
    );
    assert!(
        ok.await,
        "tollgate never served {url}; log:\n{}",
        proc.log()
    );
}

/// A `tollgate` process started as `name` on [`write_config`]'s config, already serving
/// `url` (`/api/x` over HTTPS).
struct Serving {
    /// Holds the config, logs and sockets; removed on drop.
    dir: tempfile::TempDir,
    file: String,
    p: Placeholders,
    url: String,
    proc: Proc,
}

async fn start_serving(backend: &Backend, name: &str) -> Serving {
    let (dir, file, p) = write_config(backend);
    let file = file.to_str().expect("utf-8 path").to_string();
    let url = format!("https://localhost:{}/api/x", p.https.port());
    let proc = Proc::spawn(dir.path(), name, &["-c", &file]);
    wait_serving(p.https, &url, &proc).await;
    Serving {
        dir,
        file,
        p,
        url,
        proc,
    }
}

/// How a load task talks to the edge.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// HTTPS, one client for the whole run: HTTP/2 (ALPN), one connection.
    H2KeepAlive,
    /// HTTPS, one HTTP/1.1-only client for the whole run: keep-alive connection(s).
    TlsH1KeepAlive,
    /// Plaintext, one client for the whole run: HTTP/1.1 keep-alive.
    PlainKeepAlive,
    /// HTTPS, a new client (new connection) per request.
    TlsNew,
    /// Plaintext, a new client (new connection) per request.
    PlainNew,
}

impl Kind {
    fn client(self, https: SocketAddr) -> reqwest::Client {
        match self {
            Kind::TlsH1KeepAlive | Kind::PlainKeepAlive => client_builder(https)
                .tls_built_in_root_certs(false)
                .http1_only()
                .build()
                .expect("client"),
            _ => new_client(https),
        }
    }
}

/// Counts of the load generator.
struct Load {
    /// Failures are stamped with the time since this instant.
    t0: Instant,
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Starts one request loop per entry of `kinds`.
fn start_load(p: &Placeholders, load: &Arc<Load>, kinds: &[Kind]) -> Vec<JoinHandle<()>> {
    let https_url = format!("https://localhost:{}/api/load", p.https.port());
    let http_url = format!("http://{}/api/load", p.http);
    kinds
        .iter()
        .map(|&kind| {
            let (load, https) = (load.clone(), p.https);
            let url = match kind {
                Kind::PlainKeepAlive | Kind::PlainNew => http_url.clone(),
                _ => https_url.clone(),
            };
            tokio::spawn(async move {
                let shared = kind.client(https);
                while !load.stop.load(Ordering::Relaxed) {
                    let client = match kind {
                        Kind::TlsNew | Kind::PlainNew => kind.client(https),
                        _ => shared.clone(),
                    };
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => load.ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            let at = load.t0.elapsed().as_secs_f64();
                            let what =
                                format!("+{at:.2}s {kind:?}: {:?}", other.map(|r| r.status()));
                            load.errors.lock().expect("errors").push(what);
                            load.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect()
}

/// Runs the documented hand-off under load from `kinds` and checks the processes: the old one
/// exits in time, the new one serves, then stops cleanly on `SIGTERM`. Returns the failed
/// requests (time since load start, kind, error).
async fn hand_off_under_load(kinds: &[Kind]) -> Vec<String> {
    let backend = Backend::start("b1");
    let Serving {
        dir,
        file,
        p,
        url,
        proc: mut old,
    } = start_serving(&backend, "old").await;

    let load = Arc::new(Load {
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });
    let tasks = start_load(&p, &load, kinds);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Order matters (pingora-core server/transfer_fd): the new process, started with
    // --upgrade, binds the upgrade socket and waits (about 6 s) for the listening fds; only
    // then is the old one sent SIGQUIT, which connects to that socket, sends its fds, keeps
    // accepting for CLOSE_TIMEOUT (5 s), then drains. The reverse order works only if the new
    // process appears within the old one's ~5 s connect retries, and is not the documented way.
    let sock = dir.path().join("upgrade.sock");
    let mut new = Proc::spawn(dir.path(), "new", &["--upgrade", "-c", &file]);
    let bound = eventually(Duration::from_secs(10), async || sock.exists());
    assert!(bound.await, "new process never opened {}", sock.display());
    old.signal("-QUIT");
    let quit_at = load.t0.elapsed();

    let exited = tokio::task::spawn_blocking(move || {
        let status = old.wait_exit(PINGORA_CLOSE_TIMEOUT + DRAIN + SLACK);
        (status, old)
    });
    let (status, old) = exited.await.expect("join");
    let old_took = load.t0.elapsed() - quit_at;
    assert!(
        status.is_some_and(|s| s.success()),
        "old process: {status:?} {old_took:?} after SIGQUIT; log:\n{}",
        old.log()
    );
    // The new process alone now; keep the load on it a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let elapsed = load.t0.elapsed().as_secs_f64();
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    let rate = (ok + failed) as f64 / elapsed;
    eprintln!(
        "{ok} ok, {failed} failed in {elapsed:.1}s ({rate:.0} req/s); SIGQUIT at +{:.2}s, old \
         exited {old_took:?} later",
        quit_at.as_secs_f64()
    );
    assert!(
        rate >= 200.0,
        "load too low to prove anything: {rate:.0} req/s"
    );

    assert!(
        new.child.try_wait().expect("try_wait").is_none(),
        "new process exited"
    );
    let resp = new_client(p.https)
        .get(&url)
        .send()
        .await
        .expect("new serves");
    assert_eq!(resp.status(), 200);
    assert_eq!(served_by(&resp), "b1");
    new.signal("-TERM");
    let status = tokio::task::spawn_blocking(move || (new.wait_exit(DRAIN + SLACK), new));
    let (status, new) = status.await.expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        new.log()
    );
    let errors = load.errors.lock().expect("errors").clone();
    if !errors.is_empty() {
        eprintln!("old log:\n{}\nnew log:\n{}", old.log(), new.log());
    }
    errors
}

/// upgrade-is-hitless: --upgrade + SIGQUIT under h2 and new-connection load fails nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hand_off_under_load_fails_no_request() {
    use Kind::*;
    let kinds = [H2KeepAlive, TlsNew, PlainNew, H2KeepAlive, TlsNew, PlainNew];
    let errors = hand_off_under_load(&kinds).await;
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

// Pingora keeps the old process serving keep-alive connections for CLOSE_TIMEOUT (5 s) after
// SIGQUIT, then drops every HTTP/1.1 connection parked between requests. Tollgate answers with
// `Connection: close` from SIGQUIT on (src/proxy/drain.rs), so keep-alive clients move to new
// connections, taken by the new process, before that.
/// upgrade-is-hitless-h1: the hand-off fails no HTTP/1.1 keep-alive request either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hand_off_fails_no_http1_keep_alive_request() {
    use Kind::*;
    let kinds = [
        TlsH1KeepAlive,
        PlainKeepAlive,
        TlsH1KeepAlive,
        PlainKeepAlive,
    ];
    let errors = hand_off_under_load(&kinds).await;
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// sigterm-drains: a slow request in flight at SIGTERM still gets its 200, then the exit.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_request_finish() {
    let backend = Backend::start("slow");
    let Serving {
        dir: _dir,
        p,
        url,
        mut proc,
        ..
    } = start_serving(&backend, "edge").await;
    backend.set_mode(Mode::Delay(Duration::from_secs(1)));

    let before = backend.requests();
    let client = new_client(p.https);
    let slow = tokio::spawn(async move { client.get(&url).send().await });
    let arrived = eventually(Duration::from_secs(10), async || {
        backend.requests() > before
    });
    assert!(arrived.await, "slow request never reached the backend");
    proc.signal("-TERM");
    let signalled = Instant::now();

    let resp = slow.await.expect("join").expect("in-flight request failed");
    assert_eq!(resp.status(), 200);
    assert_eq!(served_by(&resp), "slow");
    let status = tokio::task::spawn_blocking(move || (proc.wait_exit(DRAIN + SLACK), proc));
    let (status, proc) = status.await.expect("join");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        proc.log()
    );
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

/// A keep-alive connection idle at SIGTERM is closed during the drain,
/// while the edge still runs, not left open until the process exits.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_idle_keep_alive_connection_while_draining() {
    let backend = Backend::start("b1");
    let Serving {
        dir: _dir,
        p,
        mut proc,
        ..
    } = start_serving(&backend, "edge").await;
    let http = p.http;
    let checked = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut client = common::raw::KeepAlive::new(http);
        assert_eq!(client.get("/api/x").map(|r| r.status()), Some(200));
        proc.signal("-TERM");
        let mut rest = Vec::new();
        let read = client.reader.read_to_end(&mut rest);
        assert!(
            matches!(read, Ok(0)),
            "idle connection not closed: {read:?}"
        );
        // The drain (DRAIN) outlasts the connection's close by far more than this.
        std::thread::sleep(Duration::from_millis(300));
        let running = proc.child.try_wait().expect("try_wait").is_none();
        (running, proc)
    });
    let (running, proc) = checked.await.expect("join");
    assert!(running, "closed only by the exit; log:\n{}", proc.log());
}
