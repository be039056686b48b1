//! The metrics listener and the admin API end to end: families, label bounds, promtool,
//! backend gauges across reloads and failures, authentication, readiness and the endpoints.

#[allow(unused_imports)] // `Mode` is unused here
mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Health check fields shared by the groups below.
const CHECK: &str = "health_check: { kind: http, path: /healthz, interval: 200ms, timeout: 300ms, \
                     healthy_after: 2, unhealthy_after: 2 }";
const INTERVAL: Duration = Duration::from_millis(200);
const UNHEALTHY_AFTER: u32 = 2;
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_secs(5);

/// Admin and metrics listener ports of one edge, and the admin token's env var if any.
struct Ports {
    admin: u16,
    metrics: u16,
    token_env: &'static str,
}

impl Ports {
    fn new(token_env: &'static str) -> Ports {
        let (admin, metrics) = (free_port(), free_port());
        Ports {
            admin,
            metrics,
            token_env,
        }
    }

    /// Sections `admin` and `metrics`, groups `api` (backends `api`, fields `more`) and `spare`
    /// (backends `spare`, health checked), and one route to each.
    fn config(&self, api: &str, more: &str, spare: &str) -> String {
        let (a, m, var) = (self.admin, self.metrics, self.token_env);
        let token = (!var.is_empty()).then(|| format!(", token_env: {var}"));
        let token = token.unwrap_or_default();
        format!(
            "admin: {{ address: \"127.0.0.1:{a}\"{token} }}\nmetrics: {{ address: \"127.0.0.1:{m}\" }}\n\
             upstreams:\n  api: {{ backends: {api}, {more} }}\n  spare: {{ backends: {spare}, {CHECK} }}\n\
             routes:\n  - {{ name: api, match: {{ prefix: /api }}, upstream: api }}\n  \
             - {{ name: spare, match: {{ prefix: /spare }}, upstream: spare }}\n"
        )
    }
}

fn plain() -> reqwest::Client {
    let builder = reqwest::Client::builder().no_proxy();
    builder
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn scrape(ports: &Ports) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", ports.metrics);
    let resp = plain().get(url).send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics body")
}

/// One sample of the text exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the samples (not the comments) of a text exposition.
fn samples(text: &str) -> Vec<Sample> {
    let lines = text.lines().filter(|l| !l.starts_with('#'));
    lines
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let labels = labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|kv| !kv.is_empty());
            let labels = labels.map(|kv| kv.split_once("=\"").expect("label"));
            let labels = labels.map(|(k, v)| (k.into(), v.trim_end_matches('"').into()));
            (name.into(), labels.collect(), value.parse().expect("value"))
        })
        .collect()
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
    rest.and_then(|v| v.trim().parse().ok())
}

/// An edge that has served some traffic (one unique path, one 404, a spoofed
/// X-Forwarded-For) and applied one reload; returns it with its backends and metrics text.
async fn busy_edge() -> (Edge, Vec<Backend>, String) {
    let b: Vec<Backend> = ["b1", "b2", "s1"].into_iter().map(Backend::start).collect();
    let ports = Ports::new("");
    let body = ports.config(
        &backend_list(&[&b[0], &b[1]]),
        CHECK,
        &backend_list(&[&b[2]]),
    );
    let edge = Edge::start(&body);
    let client = edge.client();
    for path in [
        "/api/a",
        "/api/b",
        "/spare/c",
        "/api/zzz-unique-123",
        "/nowhere-unique-456",
    ] {
        let req = client
            .get(edge.url(path))
            .header("x-forwarded-for", "203.0.113.77");
        let status = req.send().await.expect("send").status();
        assert_eq!(
            status,
            if path.starts_with("/no") { 404 } else { 200 },
            "{path}"
        );
    }
    edge.write_config(&body.replace("/spare }", "/spare/ }"));
    let outcome = edge.reloader.reload();
    assert!(outcome.applied, "{outcome:?}");
    let text = scrape(&ports).await;
    (edge, b, text)
}

/// metrics-complete-and-bounded: every family present; no path or client address in labels.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_expected_families_and_bounded_labels() {
    let (_edge, b, text) = busy_edge().await;
    let all = samples(&text);
    let names: BTreeSet<&str> = all.iter().map(|s| s.0.as_str()).collect();
    for family in [
        "tollgate_requests_total",
        "tollgate_request_duration_seconds_bucket",
        "tollgate_upstream_requests_total",
        "tollgate_backend_healthy",
        "tollgate_downstream_connections",
        "tollgate_tls_handshakes_total",
        "tollgate_tls_cert_not_after_seconds",
        "tollgate_config_reloads_total",
        "tollgate_config_info",
        "tollgate_build_info",
    ] {
        assert!(names.contains(family), "no {family} in:\n{text}");
    }
    for leak in ["zzz-unique-123", "nowhere-unique-456", "203.0.113.77"] {
        assert!(!text.contains(leak), "{leak} leaked into /metrics:\n{text}");
    }
    let backends: BTreeSet<String> = b.iter().map(|b| b.addr().to_string()).collect();
    let allowed = |k: &str, v: &str| match k {
        "route" => ["api", "spare", "none"].contains(&v),
        "upstream" => ["api", "spare"].contains(&v),
        "backend" => backends.contains(v),
        "code" | "le" | "version" | "hash" | "result" | "name" | "outcome" => !v.is_empty(),
        _ => false,
    };
    for s in &all {
        for (k, v) in &s.1 {
            assert!(allowed(k, v), "unbounded label {k}={v:?} on {s:?}");
            assert_ne!(v, "127.0.0.1", "client address as a label on {s:?}");
        }
    }
    let api_200 = value(&text, r#"tollgate_requests_total{code="200",route="api"}"#);
    assert!(api_200 >= Some(3.0), "{api_200:?}");
    let none_404 = value(&text, r#"tollgate_requests_total{code="404",route="none"}"#);
    assert_eq!(none_404, Some(1.0));
    let reloads = value(&text, r#"tollgate_config_reloads_total{result="success"}"#);
    assert_eq!(reloads, Some(1.0));
    let build = format!(
        r#"tollgate_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &build), Some(1.0));
    let now = std::time::UNIX_EPOCH
        .elapsed()
        .expect("clock")
        .as_secs_f64();
    let not_after = value(
        &text,
        r#"tollgate_tls_cert_not_after_seconds{name="localhost"}"#,
    );
    assert!(not_after.is_some_and(|t| t > now), "{not_after:?}");
    let tls13 = value(&text, r#"tollgate_tls_handshakes_total{version="TLSv1_3"}"#);
    assert!(tls13 >= Some(1.0), "{tls13:?}");
}

/// metrics-valid-format: `promtool check metrics` accepts the output (skipped without it).
#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_metrics() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("note: promtool not on PATH (Debian package prometheus); skipping");
        return;
    }
    let (_edge, _b, text) = busy_edge().await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool output");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "promtool refused the metrics:\n{o}{e}\n{text}"
    );
}

/// backend-gauge-follows: a backend removed by reload vanishes; a stopped one reads 0 in time.
#[tokio::test(flavor = "multi_thread")]
async fn backend_gauge_follows_reload_and_failure() {
    let b: Vec<Backend> = ["b1", "b2", "b3", "s1"]
        .into_iter()
        .map(Backend::start)
        .collect();
    let ports = Ports::new("");
    let spare = backend_list(&[&b[3]]);
    let edge = Edge::start(&ports.config(&backend_list(&[&b[0], &b[1], &b[2]]), CHECK, &spare));
    let healthy = |text: &str, b: &Backend| {
        let series = format!(
            r#"tollgate_backend_healthy{{backend="{}",upstream="api"}}"#,
            b.addr()
        );
        value(text, &series)
    };
    assert_eq!(healthy(&scrape(&ports).await, &b[2]), Some(1.0));

    edge.write_config(&ports.config(&backend_list(&[&b[0], &b[1]]), CHECK, &spare));
    let outcome = edge.reloader.reload();
    assert!(outcome.applied, "{outcome:?}");
    let text = scrape(&ports).await;
    let gone = b[2].addr().to_string();
    assert!(
        !text.contains(&gone),
        "removed backend still there:\n{text}"
    );
    assert_eq!(healthy(&text, &b[1]), Some(1.0));

    b[1].stop();
    let stopped = Instant::now();
    let limit = INTERVAL * UNHEALTHY_AFTER + SLACK;
    let down = eventually(limit, async || {
        healthy(&scrape(&ports).await, &b[1]) == Some(0.0)
    });
    assert!(
        down.await,
        "stopped backend not reported unhealthy within {limit:?}"
    );
    eprintln!(
        "stopped backend reported unhealthy after {:?}",
        stopped.elapsed()
    );
    assert_eq!(healthy(&scrape(&ports).await, &b[0]), Some(1.0));
}

/// An admin API request; `token` is sent as a bearer token. Returns (status, JSON body).
async fn admin(ports: &Ports, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{}{path}", ports.admin);
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = plain().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// admin-api-contract: token on all but /healthz; readyz, upstreams, routes, config, reload.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_authenticates_and_reports() {
    const VAR: &str = "TOLLGATE_TEST_ADMIN_TOKEN_METRICS_ADMIN_RS";
    const TOKEN: &str = "s3cret-token-for-metrics-admin";
    std::env::set_var(VAR, TOKEN);
    let b: Vec<Backend> = ["b1", "b2", "s1"].into_iter().map(Backend::start).collect();
    let ports = Ports::new(VAR);
    let more = format!("{CHECK}, circuit_breaker: {{ consecutive_failures: 5 }}");
    let body = ports.config(
        &backend_list(&[&b[0], &b[1]]),
        &more,
        &backend_list(&[&b[2]]),
    );
    let edge = Edge::start(&body);
    let t = Some(TOKEN);

    assert_eq!(admin(&ports, "GET", "/healthz", None).await.0, 200);
    for (method, path) in [
        ("GET", "/readyz"),
        ("GET", "/admin/upstreams"),
        ("GET", "/admin/routes"),
        ("GET", "/admin/config"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/nope"),
    ] {
        for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let (status, body) = admin(&ports, method, path, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
        }
    }

    let ready = eventually(Duration::from_secs(10), async || {
        admin(&ports, "GET", "/readyz", t).await.0 == 200
    });
    assert!(ready.await, "never ready with healthy backends");
    let (status, ups) = admin(&ports, "GET", "/admin/upstreams", t).await;
    assert_eq!(status, 200);
    let groups = ups["upstreams"].as_array().expect("upstreams array");
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["api", "spare"]);
    let backends = groups[0]["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    for (entry, backend) in backends.iter().zip(&b) {
        assert_eq!(entry["address"], backend.addr().to_string());
        assert_eq!(entry["healthy"], true);
        assert_eq!(entry["weight"], 1);
        assert_eq!(entry["in_flight"], 0);
        assert_eq!(entry["breaker"], "closed");
    }
    assert_eq!(groups[1]["backends"][0]["breaker"], Value::Null);
    let (status, routes) = admin(&ports, "GET", "/admin/routes", t).await;
    assert_eq!(status, 200);
    assert_eq!(routes["routes"][0]["name"], "api");
    assert_eq!(routes["routes"][1]["upstream"], "spare");

    // /admin/config's hash is the one tollgate_config_info exposes; the JSON has the routes.
    let config_hash = async || {
        let (status, config) = admin(&ports, "GET", "/admin/config", t).await;
        assert_eq!(status, 200);
        let all = samples(&scrape(&ports).await);
        let info = all
            .iter()
            .find(|s| s.0 == "tollgate_config_info")
            .expect("config_info");
        assert_eq!(config["hash"].as_str(), Some(info.1["hash"].as_str()));
        assert_eq!(config["config"]["routes"][1]["name"], "spare", "{config}");
        info.1["hash"].clone()
    };
    let first = config_hash().await;

    edge.write_config(&body.replace("prefix: /spare }", "prefix: /spare2 }"));
    let (status, outcome) = admin(&ports, "POST", "/admin/reload", t).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["applied"], true);
    assert_eq!(outcome["errors"], serde_json::json!([]));
    assert_ne!(config_hash().await, first, "hash unchanged after a reload");
    edge.write_config(&body.replace("upstream: spare }", "upstream: nope }"));
    let (status, outcome) = admin(&ports, "POST", "/admin/reload", t).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["applied"], false);
    let first_error = outcome["errors"][0].as_str().unwrap_or("");
    assert!(first_error.contains("routes[1].upstream"), "{outcome}");

    assert_eq!(admin(&ports, "DELETE", "/admin/upstreams", t).await.0, 405);
    assert_eq!(admin(&ports, "GET", "/admin/reload", t).await.0, 405);
    assert_eq!(admin(&ports, "GET", "/admin/nope", t).await.0, 404);

    b[2].stop();
    let limit = INTERVAL * UNHEALTHY_AFTER + SLACK;
    let not_ready = eventually(limit, async || {
        admin(&ports, "GET", "/readyz", t).await.0 == 503
    });
    assert!(
        not_ready.await,
        "still ready {limit:?} after the spare backend stopped"
    );
    let (_, body) = admin(&ports, "GET", "/readyz", t).await;
    assert_eq!(body["code"], 503);
    assert_eq!(body["upstreams"], serde_json::json!(["spare"]));
}
