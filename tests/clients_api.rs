//! The `/clients` admin API end to end: real admin and HTTPS sockets, a real SQLite file, a
//! real PostgreSQL database per test, and the proxy's `auth: api_key` routes checked with the
//! keys the API hands out.
//!
//! PostgreSQL tests create `tg_api_<random>` on 127.0.0.1:5432 (user postgres, trust auth) and
//! drop it when done, even when the test fails. Where two edges must run at once (fleet sync),
//! or an edge must be stopped the way an operator stops it (SIGTERM), the second edge is the
//! real `tollgate` binary in a child process; the harness runs one in-process edge at a time.

#[allow(unused_imports)] // the harness re-exports `Mode`, unused here
mod common;
use common::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One HTTP reply: status, headers, raw body and the body as JSON (`Null` when empty).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    raw: String,
    body: Value,
}

impl Reply {
    async fn from(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.expect("read body");
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::Null)
        };
        Reply {
            status,
            headers,
            raw,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error reply: the status and a `{"code":..,"message":..}` body whose message
    /// contains `needle`.
    #[track_caller]
    fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.raw);
        assert_eq!(self.body["code"], status, "{}", self.raw);
        let message = self.body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", self.raw));
        assert!(
            message.contains(needle),
            "message {message:?} lacks {needle:?}"
        );
    }
}

/// A client of an edge's admin API. Sends bodies without `Content-Type`, as the curl scripts
/// of the gateways Tollgate replaces do.
struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(port: u16) -> Admin {
        Admin {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<String>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.body(body);
        }
        Reply::from(req.send().await.expect("admin request")).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send("POST", path, Some(body.to_string())).await
    }

    async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send("PATCH", path, Some(body.to_string())).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, None).await
    }
}

/// One edge as a test sees it: its admin API and its HTTPS listener.
struct Node {
    admin: Admin,
    proxy: reqwest::Client,
    https_port: u16,
}

impl Node {
    fn new(https: SocketAddr, admin_port: u16) -> Node {
        wait_listening(SocketAddr::from(([127, 0, 0, 1], admin_port)));
        Node {
            admin: Admin::new(admin_port),
            proxy: client_builder(https).build().expect("client"),
            https_port: https.port(),
        }
    }

    /// `GET https://localhost/app/echo` on the `auth: api_key` route, with
    /// `Authorization: Bearer <key>` when a key is given.
    async fn app(&self, key: Option<&str>) -> Reply {
        let mut req = self
            .proxy
            .get(format!("https://localhost:{}/app/echo", self.https_port));
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        Reply::from(req.send().await.expect("proxy request")).await
    }
}

/// Edge config: `base_config` plus one `auth: api_key` route, the admin API and the clients.
fn edge_config(
    p: &Placeholders,
    backend: SocketAddr,
    admin_port: u16,
    store: &str,
    save_state_interval: &str,
) -> String {
    format!(
        r#"{base}
upstreams:
  app:
    backends: ["{backend}"]
routes:
  - {{ name: app, match: {{ prefix: /app }}, upstream: app, auth: api_key }}
admin: {{ address: "127.0.0.1:{admin_port}" }}
clients:
  store: "{store}"
  defaults: {{ rate_per_sec: 5, capacity: 20 }}
  save_state_interval: {save_state_interval}
  sync_interval: 1s
"#,
        base = base_config(p),
    )
}

/// `sqlite://` URL of `clients.db` in `dir`.
fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("clients.db").display())
}

/// An in-process edge on `store` (the harness's `Edge`), with its admin port.
fn start_edge(backend: &Backend, store: &str, save_state_interval: &str) -> (Edge, Node) {
    let admin_port = free_port();
    // `build_server` opens the client store with a `block_on` of its own, which tokio refuses
    // inside a runtime; `block_in_place` steps out of this test's runtime for the start.
    let edge = tokio::task::block_in_place(|| {
        Edge::start_with(|p| edge_config(p, backend.addr(), admin_port, store, save_state_interval))
    });
    let node = Node::new(edge.https, admin_port);
    (edge, node)
}

/// The real `tollgate` binary as a child process, for a second edge running alongside the
/// harness's and for stopping an edge with a signal. Killed (by its pid) if still running
/// when dropped.
struct EdgeProcess {
    child: Child,
    node: Node,
    dir: tempfile::TempDir,
}

impl EdgeProcess {
    fn start(backend: &Backend, store: &str, save_state_interval: &str) -> EdgeProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Placeholders {
            https: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: dir.path().to_path_buf(),
        };
        let admin_port = free_port();
        let config = dir.path().join("tollgate.yaml");
        std::fs::write(
            &config,
            edge_config(&p, backend.addr(), admin_port, store, save_state_interval),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("edge.log")).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tollgate");
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [p.https, SocketAddr::from(([127, 0, 0, 1], admin_port))] {
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "tollgate exited with {status}:\n{}",
                        std::fs::read_to_string(dir.path().join("edge.log")).unwrap_or_default()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "tollgate not listening on {addr}"
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        let node = Node::new(p.https, admin_port);
        EdgeProcess { child, node, dir }
    }

    /// Sends `signal` (e.g. `TERM`) to the process and waits for it to exit; returns whether
    /// it exited successfully.
    fn stop_with(&mut self, signal: &str) -> bool {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "tollgate did not exit on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fresh PostgreSQL database for one test, dropped (sessions and all) when this drops,
/// also when the test panics.
struct PgDb {
    name: String,
    url: String,
}

const PG_MAINTENANCE: &str = "host=127.0.0.1 user=postgres dbname=postgres";

impl PgDb {
    async fn create() -> PgDb {
        let name = format!("tg_api_{:016x}", rand::random::<u64>());
        let (client, conn) = tokio_postgres::connect(PG_MAINTENANCE, NoTls)
            .await
            .expect("these tests need PostgreSQL on 127.0.0.1:5432 (user postgres, trust)");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        PgDb { name, url }
    }

    /// Runs `sql` on the maintenance database.
    async fn admin(&self, sql: &str) {
        let (client, conn) = tokio_postgres::connect(PG_MAINTENANCE, NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client.batch_execute(sql).await.expect(sql);
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be the one unwinding: a thread of its
        // own with its own runtime does the drop.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(PG_MAINTENANCE, NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await
            })
            .map_err(|e| e.to_string())
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {done:?}", self.name);
        }
    }
}

/// Asserts the `ClientView` shape and values shared by every response.
#[track_caller]
fn assert_view(v: &Value, id: &str, rate: f64, capacity: u64) {
    assert_eq!(v["client_id"], id, "{v}");
    assert_eq!(v["rate_per_sec"].as_f64(), Some(rate), "{v}");
    assert_eq!(v["capacity"].as_u64(), Some(capacity), "{v}");
    assert!(v["tokens"].is_number(), "{v}");
    assert!(v["enabled"].is_boolean(), "{v}");
    for field in ["last_refill", "created_at"] {
        let text = v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {v}"));
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{field} {text:?} is not RFC 3339: {e}"));
    }
    assert!(v.get("expires_at").is_some(), "{v}");
}

fn tokens(v: &Value) -> f64 {
    v["tokens"]
        .as_f64()
        .unwrap_or_else(|| panic!("no tokens in {v}"))
}

fn api_key(v: &Value) -> String {
    v["api_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no api_key in {v}"))
        .to_owned()
}

/// A client's own bucket and its route's policy are both in `RateLimit-Policy` and
/// `RateLimit`, the client's first.
#[tokio::test(flavor = "multi_thread")]
async fn client_and_route_policies_are_both_in_the_ratelimit_headers() {
    let backend = Backend::start("app");
    let state = tempfile::tempdir().expect("tempdir");
    let store = sqlite_url(state.path());
    let admin_port = free_port();
    let route_limit = "auth: api_key, rate_limit: \
        { name: per-ip, key: ip, algorithm: fixed_window, limit: 1000, window: 1h } }";
    let edge = tokio::task::block_in_place(|| {
        Edge::start_with(|p| {
            edge_config(p, backend.addr(), admin_port, &store, "1s")
                .replace("auth: api_key }", route_limit)
        })
    });
    let node = Node::new(edge.https, admin_port);
    let created = node
        .admin
        .post("/clients", json!({"client_id": "c1", "capacity": 3}))
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    let reply = node.app(Some(&api_key(&created.body))).await;
    assert_eq!(reply.status, 200, "{}", reply.raw);
    let header = |name: &str| reply.headers[name].to_str().expect("ascii").to_string();
    let policy = header("ratelimit-policy");
    assert!(
        policy.starts_with(r#""client";q=3;w="#) && policy.ends_with(r#", "per-ip";q=1000;w=3600"#),
        "{policy}"
    );
    let ratelimit = header("ratelimit");
    assert!(
        ratelimit.starts_with(r#""client";r=2;t="#) && ratelimit.contains(r#", "per-ip";r=999;t="#),
        "{ratelimit}"
    );
}

/// The whole client lifecycle through the admin API and the proxy, on whatever store `node`
/// runs on. Leaves `client_2` behind.
async fn lifecycle(node: &Node) {
    let admin = &node.admin;

    // Create (the seed API's body), plaintext key shown once.
    let created = admin
        .post(
            "/clients",
            json!({"client_id": "client_1", "rate_per_sec": 1.4, "capacity": 20}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    assert_eq!(created.header("location"), Some("/clients/client_1"));
    assert_eq!(
        created.header("content-type"),
        Some("application/json"),
        "{:?}",
        created.headers
    );
    assert_view(&created.body, "client_1", 1.4, 20);
    assert_eq!(created.body["enabled"], true);
    assert!(created.body["expires_at"].is_null());
    assert_eq!(tokens(&created.body), 20.0);
    let key = api_key(&created.body);
    assert!(key.starts_with("tg_") && key.len() > 40, "{key}");

    // The key opens the api_key route; the backend learns who called, never the key.
    for _ in 0..5 {
        let echo = node.app(Some(&key)).await;
        assert_eq!(echo.status, 200, "{}", echo.raw);
        let headers = &echo.body["headers"];
        assert_eq!(headers["x-client-id"], "client_1", "{}", echo.raw);
        assert!(
            headers.get("authorization").is_none(),
            "backend saw the key: {}",
            echo.raw
        );
    }
    // No key, or a wrong one: 401 in JSON.
    let refused = node.app(None).await;
    assert_eq!(refused.status, 401, "{}", refused.raw);
    assert_eq!(refused.body["code"], 401, "{}", refused.raw);
    let wrong = node.app(Some("tg_not-a-real-key")).await;
    assert_eq!(wrong.status, 401, "{}", wrong.raw);

    // Get: masked key, live bucket (5 spent at 1.4/s refill).
    let got = admin.get("/clients/client_1").await;
    assert_eq!(got.status, 200, "{}", got.raw);
    assert_view(&got.body, "client_1", 1.4, 20);
    let masked = api_key(&got.body);
    assert_ne!(masked, key);
    assert!(
        !masked.contains(&key[8..]),
        "masked key {masked:?} leaks the key"
    );
    let level = tokens(&got.body);
    assert!(
        (14.0..19.0).contains(&level),
        "tokens {level} after 5 requests"
    );

    // A second client on the configured defaults; list pages in id order.
    let second = admin
        .post("/clients", json!({"client_id": "client_2"}))
        .await;
    assert_eq!(second.status, 201, "{}", second.raw);
    assert_view(&second.body, "client_2", 5.0, 20);
    let all = admin.get("/clients").await;
    assert_eq!(all.status, 200, "{}", all.raw);
    assert_eq!(all.body["total"], 2);
    assert_eq!(all.body["offset"], 0);
    assert_eq!(all.body["limit"], 50);
    let ids: Vec<&str> = all.body["clients"]
        .as_array()
        .expect("clients array")
        .iter()
        .map(|c| c["client_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["client_1", "client_2"]);
    for c in all.body["clients"].as_array().into_iter().flatten() {
        assert_ne!(api_key(c), key, "list shows a plaintext key");
    }
    let page = admin.get("/clients?offset=1&limit=1").await;
    assert_eq!(page.status, 200, "{}", page.raw);
    assert_eq!(page.body["total"], 2);
    assert_eq!(page.body["offset"], 1);
    assert_eq!(page.body["limit"], 1);
    assert_eq!(page.body["clients"][0]["client_id"], "client_2");
    assert_eq!(page.body["clients"].as_array().map(Vec::len), Some(1));

    // Patch, the seed API's body form.
    let patched = admin
        .patch(
            "/clients",
            json!({"client_id": "client_1", "rate_per_sec": 5, "capacity": 100}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.raw);
    assert_view(&patched.body, "client_1", 5.0, 100);
    assert_ne!(api_key(&patched.body), key);
    // Patch, the path form: disabling locks the key out at once...
    let disabled = admin
        .patch("/clients/client_1", json!({"enabled": false}))
        .await;
    assert_eq!(disabled.status, 200, "{}", disabled.raw);
    assert_eq!(disabled.body["enabled"], false);
    assert_view(&disabled.body, "client_1", 5.0, 100);
    assert_eq!(node.app(Some(&key)).await.status, 401);
    // ...re-enabling (a matching client_id in the body is fine) lets it back in.
    let enabled = admin
        .patch(
            "/clients/client_1",
            json!({"client_id": "client_1", "enabled": true, "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(enabled.status, 200, "{}", enabled.raw);
    assert_eq!(enabled.body["expires_at"], "2099-01-01T00:00:00Z");
    assert_eq!(node.app(Some(&key)).await.status, 200);
    // An expiry in the past refuses the key; null clears it.
    let expired = admin
        .patch(
            "/clients/client_1",
            json!({"expires_at": "2000-01-01T00:00:00+02:00"}),
        )
        .await;
    assert_eq!(expired.status, 200, "{}", expired.raw);
    assert_eq!(expired.body["expires_at"], "1999-12-31T22:00:00Z");
    assert_eq!(node.app(Some(&key)).await.status, 401);
    let cleared = admin
        .patch("/clients/client_1", json!({"expires_at": null}))
        .await;
    assert_eq!(cleared.status, 200, "{}", cleared.raw);
    assert!(cleared.body["expires_at"].is_null());
    assert_eq!(node.app(Some(&key)).await.status, 200);

    // Rotate: a new plaintext key, the old one is dead at once.
    let rotated = admin
        .send("POST", "/clients/client_1/rotate-key", None)
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.raw);
    assert_view(&rotated.body, "client_1", 5.0, 100);
    let new_key = api_key(&rotated.body);
    assert!(new_key.starts_with("tg_"), "{new_key}");
    assert_ne!(new_key, key);
    assert_eq!(node.app(Some(&key)).await.status, 401);
    let echo = node.app(Some(&new_key)).await;
    assert_eq!(echo.status, 200, "{}", echo.raw);
    assert_eq!(echo.body["headers"]["x-client-id"], "client_1");
    assert_ne!(api_key(&admin.get("/clients/client_1").await.body), new_key);

    // Delete: 204 with no body; the key is dead and the client gone.
    let deleted = admin.delete("/clients/client_1").await;
    assert_eq!(deleted.status, 204, "{}", deleted.raw);
    assert!(deleted.raw.is_empty());
    assert_eq!(node.app(Some(&new_key)).await.status, 401);
    let gone = admin.get("/clients/client_1").await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body, json!({"code": 404, "message": "not found"}));
    assert_eq!(admin.get("/clients").await.body["total"], 1);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Create, use, get, list, patch, rotate and delete a client on SQLite, with the proxy
/// accepting exactly the keys the admin API currently vouches for.
#[tokio::test(flavor = "multi_thread")]
async fn client_lifecycle_on_sqlite_drives_the_proxy() {
    let backend = Backend::start("app");
    let state = tempfile::tempdir().expect("tempdir");
    let (edge, node) = start_edge(&backend, &sqlite_url(state.path()), "1s");
    lifecycle(&node).await;
    drop(edge);
    assert!(state.path().join("clients.db").exists());
}

/// The same lifecycle with the clients in PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn client_lifecycle_on_postgres_drives_the_proxy() {
    let db = PgDb::create().await;
    let backend = Backend::start("app");
    let (edge, node) = start_edge(&backend, &db.url, "1s");
    lifecycle(&node).await;
    drop(edge);
}

/// Bad input is a 400 saying what is wrong, unknown clients and paths 404, a taken id 409,
/// a wrong method 405 with `Allow`, an oversized body 413; none of them changes anything.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_get_precise_errors_and_change_nothing() {
    let backend = Backend::start("app");
    let state = tempfile::tempdir().expect("tempdir");
    let (_edge, node) = start_edge(&backend, &sqlite_url(state.path()), "1s");
    let admin = &node.admin;
    let created = admin
        .post("/clients", json!({"client_id": "c1", "capacity": 3}))
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);

    // Create: malformed JSON, bad values, unknown fields, bad ids, duplicates.
    let cases: &[(&str, &str)] = &[
        (r#"{"client_id": "x""#, "invalid request body"),
        ("", "invalid request body"),
        ("[]", "invalid request body"),
        (r#"{"rate_per_sec": 2}"#, "client_id"),
        (r#"{"client_id": "x", "rate_per_sec": -1}"#, "rate_per_sec"),
        (r#"{"client_id": "x", "rate_per_sec": 0}"#, "rate_per_sec"),
        (r#"{"client_id": "x", "capacity": 0}"#, "capacity"),
        (r#"{"client_id": "x", "capacity": -5}"#, "invalid value"),
        (r#"{"client_id": "x", "capacity": 2.5}"#, "invalid type"),
        (r#"{"client_id": "x", "burst": 3}"#, "unknown field `burst`"),
        (
            r#"{"client_id": "x", "expires_at": "tomorrow"}"#,
            "rfc 3339",
        ),
        (r#"{"client_id": "bad id"}"#, "client_id"),
        (r#"{"client_id": "a/b"}"#, "client_id"),
        (r#"{"client_id": ""}"#, "client_id"),
        (r#"{"client_id": 7}"#, "invalid type"),
    ];
    for (body, needle) in cases {
        let reply = admin
            .send("POST", "/clients", Some((*body).to_owned()))
            .await;
        assert_eq!(reply.status, 400, "POST {body}: {}", reply.raw);
        reply.assert_error(400, needle);
    }
    let long = "a".repeat(65);
    admin
        .post("/clients", json!({ "client_id": long }))
        .await
        .assert_error(400, "1 to 64");
    admin
        .post("/clients", json!({"client_id": "c1"}))
        .await
        .assert_error(409, "c1");

    // Unknown clients and paths that cannot name one.
    let not_found = json!({"code": 404, "message": "not found"});
    for (method, path) in [
        ("GET", "/clients/nope"),
        ("DELETE", "/clients/nope"),
        ("POST", "/clients/nope/rotate-key"),
        ("GET", "/clients/a/b/c"),
        ("GET", "/clients/c1/rotate-key/x"),
        ("GET", "/clients/bad%20id"),
        ("GET", "/clients/"),
        ("DELETE", &format!("/clients/{long}")),
        ("GET", "/clientsx"),
    ] {
        let reply = admin.send(method, path, None).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.raw);
        assert_eq!(reply.body, not_found, "{method} {path}");
    }
    let reply = admin
        .patch("/clients/nope", json!({"enabled": false}))
        .await;
    assert_eq!(reply.body, not_found);
    let reply = admin
        .patch("/clients", json!({"client_id": "nope", "enabled": false}))
        .await;
    assert_eq!(reply.body, not_found);

    // Wrong methods on known paths.
    for (method, path, allow) in [
        ("PUT", "/clients", "GET, POST, PATCH"),
        ("DELETE", "/clients", "GET, POST, PATCH"),
        ("POST", "/clients/c1", "GET, PATCH, DELETE"),
        ("PUT", "/clients/c1", "GET, PATCH, DELETE"),
        ("GET", "/clients/c1/rotate-key", "POST"),
        ("DELETE", "/clients/c1/rotate-key", "POST"),
    ] {
        let reply = admin.send(method, path, Some("{}".into())).await;
        reply.assert_error(405, "method not allowed");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }

    // Patch: the id is required in the body form, must be a string and agree with the path;
    // fields are checked like on create.
    let patch_cases: &[(&str, &str, &str)] = &[
        (
            "/clients",
            r#"{"rate_per_sec": 2}"#,
            "missing field `client_id`",
        ),
        ("/clients", r#"{}"#, "missing field `client_id`"),
        (
            "/clients",
            r#"{"client_id": 1, "capacity": 2}"#,
            "client_id must be a string",
        ),
        (
            "/clients",
            r#"{"client_id": null}"#,
            "client_id must be a string",
        ),
        ("/clients", r#"{"client_id": "bad id"}"#, "client_id"),
        (
            "/clients",
            r#"{"client_id": "c1", "api_key": "tg_x"}"#,
            "unknown field `api_key`",
        ),
        ("/clients", "[1]", "JSON object"),
        ("/clients", "", "invalid request body"),
        ("/clients/c1", r#"{"client_id": "c2"}"#, "does not match"),
        ("/clients/c1", r#"{"rate_per_sec": -0.5}"#, "rate_per_sec"),
        ("/clients/c1", r#"{"capacity": 0}"#, "capacity"),
        ("/clients/c1", r#"{"enabled": "yes"}"#, "invalid type"),
        ("/clients/c1", r#"{"expires_at": "2030-13-01"}"#, "rfc 3339"),
        (
            "/clients/c1",
            r#"{"expires_at": "10000-01-01T00:00:00Z"}"#,
            "rfc 3339",
        ),
        ("/clients/c1", r#"{"burst": 1}"#, "unknown field `burst`"),
        ("/clients/c1", "not json", "invalid request body"),
    ];
    for (path, body, needle) in patch_cases {
        let reply = admin.send("PATCH", path, Some((*body).to_owned())).await;
        assert_eq!(reply.status, 400, "PATCH {path} {body}: {}", reply.raw);
        reply.assert_error(400, needle);
    }

    // List: paging numbers must be integers in range.
    for query in [
        "limit=abc",
        "limit=",
        "offset=-1",
        "offset=1.5",
        "limit=0",
        "limit=501",
    ] {
        let reply = admin.get(&format!("/clients?{query}")).await;
        assert_eq!(reply.status, 400, "?{query}: {}", reply.raw);
        assert_eq!(reply.body["code"], 400);
    }
    let paged = admin.get("/clients?limit=500&offset=7&other=1").await;
    assert_eq!(paged.status, 200, "{}", paged.raw);
    assert_eq!(paged.body["total"], 1);
    assert_eq!(paged.body["clients"], json!([]));

    // Bodies over 64 KiB are refused before parsing.
    let huge = format!(
        r#"{{"client_id": "big", "pad": "{}"}}"#,
        "x".repeat(64 * 1024)
    );
    admin
        .send("POST", "/clients", Some(huge))
        .await
        .assert_error(413, "too large");

    // A Content-Type is not required, and a non-JSON one does not matter either.
    let typed = admin
        .http
        .post(format!("{}/clients", admin.base))
        .header("content-type", "text/plain")
        .body(r#"{"client_id": "c2"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(typed.status(), 201);

    // Nothing above changed c1.
    let c1 = admin.get("/clients/c1").await;
    assert_eq!(c1.status, 200, "{}", c1.raw);
    assert_view(&c1.body, "c1", 5.0, 3);
    assert_eq!(c1.body["enabled"], true);
    assert!(c1.body["expires_at"].is_null());
    assert_eq!(admin.get("/clients").await.body["total"], 2);
}

/// A restarted edge resumes every client's bucket where it was (periodic saves to SQLite),
/// instead of handing everyone a full burst.
#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_clients_and_bucket_levels() {
    let backend = Backend::start("app");
    let state = tempfile::tempdir().expect("tempdir");
    let store = sqlite_url(state.path());

    let (edge, node) = start_edge(&backend, &store, "1s");
    let created = node
        .admin
        .post(
            "/clients",
            json!({"client_id": "steady", "rate_per_sec": 0.1, "capacity": 10}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    let key = api_key(&created.body);
    for i in 0..8 {
        let reply = node.app(Some(&key)).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.raw);
    }
    // Let one periodic save (every 1s) see the spent bucket.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(node);
    drop(edge);

    let (_edge, node) = start_edge(&backend, &store, "1s");
    let got = node.admin.get("/clients/steady").await;
    assert_eq!(got.status, 200, "{}", got.raw);
    assert_view(&got.body, "steady", 0.1, 10);
    let level = tokens(&got.body);
    assert!(
        (1.5..3.0).contains(&level),
        "tokens {level} after restart, expected about 2"
    );
    assert_eq!(node.app(Some(&key)).await.status, 200);
    assert_eq!(node.app(Some(&key)).await.status, 200);
    let limited = node.app(Some(&key)).await;
    assert_eq!(limited.status, 429, "{}", limited.raw);
}

/// Stopping an edge with SIGTERM writes the bucket levels on the way out: with periodic saves
/// an hour apart, only the shutdown save can explain the level a restart finds.
#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_saves_bucket_levels() {
    let backend = Backend::start("app");
    let state = tempfile::tempdir().expect("tempdir");
    let store = sqlite_url(state.path());

    let mut first = EdgeProcess::start(&backend, &store, "1h");
    let created = first
        .node
        .admin
        .post(
            "/clients",
            json!({"client_id": "steady", "rate_per_sec": 0.1, "capacity": 10}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    let key = api_key(&created.body);
    for i in 0..8 {
        let reply = first.node.app(Some(&key)).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.raw);
    }
    assert!(first.stop_with("TERM"), "unclean exit:\n{}", first.log());

    let (_edge, node) = start_edge(&backend, &store, "1h");
    let level = tokens(&node.admin.get("/clients/steady").await.body);
    assert!(
        (1.5..3.0).contains(&level),
        "tokens {level} after restart, expected about 2"
    );
    assert_eq!(node.app(Some(&key)).await.status, 200);
    assert_eq!(node.app(Some(&key)).await.status, 200);
    assert_eq!(node.app(Some(&key)).await.status, 429);
}

/// Ctrl-C (SIGINT, Pingora's fast shutdown) also writes the bucket levels. Fails today: on a
/// fast shutdown Pingora never signals background services, so `ClientsService` gets no chance
/// to save, and a restart hands every client a full bucket. Needs a final
/// `Registry::save_states` in `src/server.rs` after `server.run` returns.
#[tokio::test(flavor = "multi_thread")]
async fn fast_shutdown_saves_bucket_levels() {
    let backend = Backend::start("app");
    let state = tempfile::tempdir().expect("tempdir");
    let store = sqlite_url(state.path());

    let mut first = EdgeProcess::start(&backend, &store, "1h");
    let created = first
        .node
        .admin
        .post(
            "/clients",
            json!({"client_id": "steady", "rate_per_sec": 0.1, "capacity": 10}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    let key = api_key(&created.body);
    for i in 0..8 {
        let reply = first.node.app(Some(&key)).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.raw);
    }
    assert!(first.stop_with("INT"), "unclean exit:\n{}", first.log());

    let (_edge, node) = start_edge(&backend, &store, "1h");
    let level = tokens(&node.admin.get("/clients/steady").await.body);
    assert!(
        (1.5..3.0).contains(&level),
        "tokens {level} after restart, expected about 2"
    );
}

/// Two edges on one PostgreSQL database: a client created on one works on the other within
/// the sync interval, and a key rotated (or a client deleted) on one stops working on the
/// other after the next sync.
#[tokio::test(flavor = "multi_thread")]
async fn fleet_edges_share_clients_through_postgres() {
    let db = PgDb::create().await;
    let backend = Backend::start("app");
    let (_edge, a) = start_edge(&backend, &db.url, "1s");
    let b = EdgeProcess::start(&backend, &db.url, "1s");
    let b = &b.node;

    // Created on A: B serves it within sync_interval (1s) plus slack.
    let created = a
        .admin
        .post("/clients", json!({"client_id": "fleet_1"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    let key = api_key(&created.body);
    let started = Instant::now();
    let mut seen = false;
    while started.elapsed() < Duration::from_secs(3) {
        if b.app(Some(&key)).await.status == 200 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "B did not accept A's new client within 3s");
    let on_b = b.admin.get("/clients/fleet_1").await;
    assert_eq!(on_b.status, 200, "{}", on_b.raw);
    assert_view(&on_b.body, "fleet_1", 5.0, 20);

    // Rotated on B: B refuses the old key at once, A after its next sync.
    let rotated = b
        .admin
        .send("POST", "/clients/fleet_1/rotate-key", None)
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.raw);
    let new_key = api_key(&rotated.body);
    assert_eq!(b.app(Some(&key)).await.status, 401);
    assert_eq!(b.app(Some(&new_key)).await.status, 200);
    let started = Instant::now();
    let mut refused = false;
    while started.elapsed() < Duration::from_secs(3) {
        if a.app(Some(&key)).await.status == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "A still accepts the rotated-out key after 3s");
    assert_eq!(a.app(Some(&new_key)).await.status, 200);

    // An edit on A reaches B's view; a delete on A locks the key out on B.
    let patched = a
        .admin
        .patch("/clients/fleet_1", json!({"capacity": 7}))
        .await;
    assert_eq!(patched.status, 200, "{}", patched.raw);
    assert!(
        eventually(Duration::from_secs(3), async || {
            b.admin.get("/clients/fleet_1").await.body["capacity"] == 7
        })
        .await,
        "B never saw capacity 7"
    );
    assert_eq!(a.admin.delete("/clients/fleet_1").await.status, 204);
    assert!(
        eventually(Duration::from_secs(3), async || {
            b.app(Some(&new_key)).await.status == 401
        })
        .await,
        "B still accepts a deleted client's key"
    );
    assert_eq!(b.admin.get("/clients/fleet_1").await.status, 404);
}

/// When PostgreSQL refuses connections, writes are a 503 and change nothing, while reads and
/// the proxy keep serving the clients already in memory; writes work again once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn store_outage_is_503_for_writes_only() {
    let db = PgDb::create().await;
    let backend = Backend::start("app");
    let (_edge, node) = start_edge(&backend, &db.url, "1s");
    let created = node
        .admin
        .post("/clients", json!({"client_id": "c1"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    let key = api_key(&created.body);

    db.admin(&format!(
        "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';",
        name = db.name
    ))
    .await;

    node.admin
        .post("/clients", json!({"client_id": "c2"}))
        .await
        .assert_error(503, "unavailable");
    node.admin
        .patch("/clients/c1", json!({"capacity": 2}))
        .await
        .assert_error(503, "unavailable");
    node.admin
        .send("POST", "/clients/c1/rotate-key", None)
        .await
        .assert_error(503, "unavailable");
    node.admin
        .delete("/clients/c1")
        .await
        .assert_error(503, "unavailable");
    let got = node.admin.get("/clients/c1").await;
    assert_eq!(got.status, 200, "{}", got.raw);
    assert_view(&got.body, "c1", 5.0, 20);
    assert_eq!(node.admin.get("/clients").await.body["total"], 1);
    assert_eq!(node.app(Some(&key)).await.status, 200);

    db.admin(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
        db.name
    ))
    .await;
    let created = node
        .admin
        .post("/clients", json!({"client_id": "c2"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.raw);
    assert_eq!(node.admin.get("/clients").await.body["total"], 2);
}
