//! Micro-benchmarks of Tollgate's own per-request work (criterion 0.7).
//!
//! Run: `cargo bench --bench hot_path` (all), or with a filter, e.g.
//! `cargo bench --bench hot_path -- routing/` or `-- request_path/`.
//! Results and their reading: bench/README.md and bench/results/.
//!
//! Groups:
//! - `routing/lookup`, `routing/normalize`: the router with 10 and 10,000 prefix routes
//!   (adapted from the routing module author's bench).
//! - `breaker/*`: the circuit-breaker fast path (closed breaker, one backend and a 16-backend
//!   group).
//! - `request_path/*`: the pieces the proxy runs on every request (request id, client ip,
//!   X-Forwarded-For, header insertion, metrics, access-log line, backend selection), each
//!   next to a cheaper variant where one exists, so the saving of a change is measured.
//!
//! - `ratelimit/*`: one limiter decision per algorithm, for one key and among 100k keys, and a
//!   client's own token bucket.
//! - `clients/*`: authenticating an API key (SHA-256 + in-memory index) among 10k clients.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pingora::http::{RequestHeader, ResponseHeader};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tollgate::routing::{normalize_path, RouteSpec, Router};

// ---------------------------------------------------------------------------------------------
// Routing

fn routes(n: usize) -> Vec<RouteSpec<usize>> {
    let mut specs = vec![RouteSpec {
        host: None,
        prefix: "/".to_owned(),
        value: 0,
    }];
    for i in 1..n {
        let (host, prefix) = match i % 4 {
            0 => (None, format!("/svc{i}")),
            1 => (None, format!("/svc{i}/v1/items")),
            2 => (Some(format!("h{}.example.com", i % 100)), format!("/p{i}")),
            _ => (
                Some(format!("*.t{}.example.net", i % 50)),
                format!("/w{i}/x"),
            ),
        };
        specs.push(RouteSpec {
            host,
            prefix,
            value: i,
        });
    }
    specs
}

/// The largest `i < n` with `i % 4 == r` (a route that exists, deep in the table).
fn last_with_residue(n: usize, r: usize) -> usize {
    (1..n).rev().find(|i| i % 4 == r).unwrap_or(0)
}

fn bench_routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing/lookup");
    for n in [10usize, 10_000] {
        let router = match Router::new(routes(n)) {
            Ok(r) => r,
            Err(e) => panic!("duplicate route {e:?}"),
        };
        let deep = last_with_residue(n, 1);
        let exact = last_with_residue(n, 2);
        let deep_path = format!("/svc{deep}/v1/items/12345/details");
        let exact_host = format!("h{}.example.com:8443", exact % 100);
        let exact_path = format!("/p{exact}/a/b");
        // Sanity: each case hits the route it is meant to.
        let hit = |h: Option<&str>, p: &str| router.lookup(h, p).map(|m| *m.value);
        assert_eq!(
            hit(Some("WWW.Unknown.Example.org:443"), &deep_path),
            Some(deep)
        );
        assert_eq!(hit(None, &deep_path), Some(deep));
        assert_eq!(hit(Some(&exact_host), &exact_path), Some(exact));

        g.bench_with_input(BenchmarkId::new("fallthrough", n), &n, |b, _| {
            b.iter(|| {
                router.lookup(
                    black_box(Some("WWW.Unknown.Example.org:443")),
                    black_box(&deep_path),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("nohost", n), &n, |b, _| {
            b.iter(|| router.lookup(black_box(None), black_box(&deep_path)))
        });
        g.bench_with_input(BenchmarkId::new("exact", n), &n, |b, _| {
            b.iter(|| router.lookup(black_box(Some(&exact_host)), black_box(&exact_path)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("routing/normalize");
    g.bench_function("clean", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/users/12345/orders/recent")))
    });
    g.bench_function("dirty", |b| {
        b.iter(|| {
            normalize_path(black_box(
                "/api//v1/./users/%2e%2e/Users/%7ejohn%2Forders/%3fq/",
            ))
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker
//
// The closed fast path: what every request pays when breakers are configured
// (`circuit_breaker:` on an upstream).
fn bench_breaker(c: &mut Criterion) {
    use std::time::Instant;
    use tollgate::breaker::{Breaker, BreakerPolicy, GroupBreakers};
    let policy = Arc::new(BreakerPolicy::default());
    let breaker = Breaker::new(Arc::clone(&policy));
    let group = GroupBreakers::new((0..16).map(|i| format!("10.0.0.{i}:443")), policy);
    let now = Instant::now();
    let mut g = c.benchmark_group("breaker");
    g.bench_function("would_admit", |b| {
        b.iter(|| breaker.would_admit(black_box(now)))
    });
    g.bench_function("group_allows", |b| {
        b.iter(|| group.allows(black_box(7), black_box(now)))
    });
    g.bench_function("admit", |b| {
        b.iter(|| breaker.admit(black_box(now)).0.is_rejected())
    });
    g.bench_function("record_success", |b| {
        b.iter(|| breaker.record_success(None, black_box(now)))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Per-request work of the proxy (src/proxy/*), piece by piece.

/// A wrk-like request header as Pingora hands it to the proxy.
fn wrk_request() -> RequestHeader {
    let mut req = match RequestHeader::build("GET", b"/", None) {
        Ok(r) => r,
        Err(e) => panic!("request header: {e}"),
    };
    let _ = req.insert_header("host", "127.0.0.1:8443");
    req
}

/// The two-backend, one-route runtime of bench/conf/tollgate.yaml (no listeners are opened).
fn bench_runtime() -> tollgate::runtime::Runtime {
    let yaml = r#"
listeners:
  - { name: http, address: "127.0.0.1:18080" }
trusted_proxies: ["10.0.0.0/8"]
upstreams:
  web:
    backends: ["127.0.0.1:18081", "127.0.0.1:18082"]
    selection: round_robin
    timeouts: { connect: 1s, read: 5s, write: 5s, idle: 60s }
    circuit_breaker: { consecutive_failures: 5, open_for: 10s, max_open_for: 2m, half_open_probes: 2 }
  nobreaker:
    backends: ["127.0.0.1:18081", "127.0.0.1:18082"]
    selection: round_robin
routes:
  - { name: web, match: { prefix: / }, upstream: web }
  - { name: nobreaker, match: { prefix: /nb }, upstream: nobreaker }
"#;
    let config = match tollgate::Config::from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {:?}", e.errors()),
    };
    let metrics = std::sync::Arc::new(tollgate::metrics::Metrics::new());
    match tollgate::runtime::Runtime::build(config, None, &metrics) {
        Ok(r) => r,
        Err(e) => panic!("bench runtime: {e}"),
    }
}

/// Installs Tollgate's logger once (level info, access lines to a temporary file).
fn access_logger() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let cfg = tollgate::config::Logging {
            level: log::LevelFilter::Info,
            file: Some(dir.path().join("access.log")),
            access_log: true,
        };
        if let Err(e) = tollgate::logging::init(&cfg) {
            panic!("logger: {e}");
        }
        dir
    })
}

fn bench_request_path(c: &mut Criterion) {
    use http::HeaderValue;
    use tollgate::proxy::ctx::RequestMeta;
    use tollgate::proxy::forwarding::{self, RequestId, TrustedProxies};
    use tollgate::proxy::names;

    let mut g = c.benchmark_group("request_path");
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let trusted = TrustedProxies::new(vec![match "10.0.0.0/8".parse() {
        Ok(n) => n,
        Err(e) => panic!("cidr: {e}"),
    }]);
    let req = wrk_request();

    // request_filter: identity (client ip + a new request id), as RequestMeta::read does it.
    g.bench_function("request_id_generate", |b| b.iter(RequestId::generate));
    g.bench_function("request_meta_read", |b| {
        b.iter(|| RequestMeta::read(black_box(&req), loopback, &trusted))
    });
    g.bench_function("route_lookup_host_slash", |b| {
        let rt = bench_runtime();
        b.iter(|| {
            rt.router
                .lookup(black_box(Some("127.0.0.1:8443")), black_box("/"))
                .map(|m| m.value.clone())
        })
    });

    // upstream_peer: group.select(healthy && not tried) + peer clone.
    {
        let rt = bench_runtime();
        let group = match rt.groups.get("web") {
            Some(g) => g.clone(),
            None => panic!("group web"),
        };
        let now = std::time::Instant::now();
        assert!(
            group.select(&[], now, |_| true).is_some(),
            "backends start healthy"
        );
        g.bench_function("group_select", |b| {
            let tried: Vec<SocketAddr> = Vec::new();
            b.iter(|| group.select(black_box(&[]), now, |s| !tried.contains(&s.addr)))
        });
        g.bench_function("group_select_and_peer", |b| {
            let tried: Vec<SocketAddr> = Vec::new();
            b.iter(|| {
                let backend = group.select(black_box(&[]), now, |s| !tried.contains(&s.addr));
                backend.map(|(s, _)| group.peer(&s))
            })
        });
        let plain = match rt.groups.get("nobreaker") {
            Some(g) => g.clone(),
            None => panic!("group nobreaker"),
        };
        g.bench_function("group_select_no_breaker", |b| {
            let tried: Vec<SocketAddr> = Vec::new();
            b.iter(|| plain.select(black_box(&[]), now, |s| !tried.contains(&s.addr)))
        });
        // For comparison: Pingora's own round robin, select() (also via UniqueIterator).
        let lb =
            match pingora::lb::LoadBalancer::<pingora::lb::selection::RoundRobin>::try_from_iter([
                "127.0.0.1:18081",
                "127.0.0.1:18082",
            ]) {
                Ok(lb) => lb,
                Err(e) => panic!("lb: {e}"),
            };
        g.bench_function("pingora_lb_select_no_ext", |b| {
            b.iter(|| lb.select(black_box(b""), 256))
        });
    }

    // upstream_request_filter: X-Forwarded-For + four header insertions; response_filter: one.
    g.bench_function("forwarded_for", |b| {
        b.iter(|| forwarding::forwarded_for(&trusted, black_box(loopback), &req.headers))
    });
    g.bench_function("upstream_headers_insert4", |b| {
        let id = RequestId::generate();
        b.iter_batched(
            || req.clone(),
            |mut up| {
                let xff = forwarding::forwarded_for(&trusted, loopback, &up.headers);
                let _ = up.insert_header(&names::X_FORWARDED_FOR, xff);
                let _ =
                    up.insert_header(&names::X_FORWARDED_PROTO, HeaderValue::from_static("https"));
                let _ = up.insert_header(&names::X_FORWARDED_HOST, "127.0.0.1:8443");
                let _ = up.insert_header(&names::X_REQUEST_ID, id.header());
                up
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("upstream_headers_clone_only", |b| {
        b.iter_batched(|| (), |_| req.clone(), criterion::BatchSize::SmallInput)
    });
    g.bench_function("response_header_insert_request_id", |b| {
        let id = RequestId::generate();
        let resp = match ResponseHeader::build(200, None) {
            Ok(r) => r,
            Err(e) => panic!("response: {e}"),
        };
        b.iter_batched(
            || resp.clone(),
            |mut r| {
                let _ = r.insert_header(&names::X_REQUEST_ID, id.header());
                r
            },
            criterion::BatchSize::SmallInput,
        )
    });

    // logging + upstream_response_filter: the four metric updates of one proxied request.
    let metrics = tollgate::metrics::Metrics::new();
    g.bench_function("metrics_4_with_label_values", |b| {
        b.iter(|| {
            let mut code = itoa::Buffer::new();
            metrics
                .upstream_duration
                .with_label_values(&["web"])
                .observe(black_box(0.0002));
            metrics
                .upstream_requests
                .with_label_values(&["web", "127.0.0.1:18081", "response"])
                .inc();
            metrics
                .requests
                .with_label_values(&["web", code.format(black_box(200u16))])
                .inc();
            metrics
                .request_duration
                .with_label_values(&["web"])
                .observe(black_box(0.0003));
        })
    });
    {
        // The same four updates on handles resolved once (what caching per route/backend gives).
        let up_dur = metrics.upstream_duration.with_label_values(&["web"]);
        let up_req =
            metrics
                .upstream_requests
                .with_label_values(&["web", "127.0.0.1:18081", "response"]);
        let req_ok = metrics.requests.with_label_values(&["web", "200"]);
        let req_dur = metrics.request_duration.with_label_values(&["web"]);
        g.bench_function("metrics_4_cached_handles", |b| {
            b.iter(|| {
                up_dur.observe(black_box(0.0002));
                up_req.inc();
                req_ok.inc();
                req_dur.observe(black_box(0.0003));
            })
        });
    }

    // logging: the access line as the proxy writes it (timestamp, JSON, buffered file writer).
    let dir = access_logger();
    let access_log = match tollgate::logging::AccessLog::open(&tollgate::config::Logging {
        level: log::LevelFilter::Info,
        file: Some(dir.path().join("access-buffered.log")),
        access_log: true,
    }) {
        Ok(l) => l,
        Err(e) => panic!("access log: {e}"),
    };
    let tried = [Arc::new(tollgate::upstream::BackendState::new(
        0,
        SocketAddr::from(([127, 0, 0, 1], 18081)),
    ))];
    let web = tollgate::logging::JsonString::new("web");
    let line = tollgate::logging::AccessLine {
        request_id: "0123456789abcdef0123456789abcdef",
        client_ip: loopback,
        method: &http::Method::GET,
        path: "/",
        route: Some(&web),
        upstream: Some(&web),
        status: 200,
        bytes: 64,
        latency: Duration::from_micros(412),
        upstream_latency: Some(Duration::from_micros(201)),
        tried: &tried,
    };
    g.bench_function("access_line_write_to_file", |b| {
        b.iter(|| access_log.write(black_box(&line)))
    });
    access_log.flush();
    let mut buf = Vec::with_capacity(512);
    g.bench_function("access_line_format_only", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&line).write_json(std::time::SystemTime::now(), &mut buf);
        })
    });
    g.finish();
}

fn bench_ratelimit(c: &mut Criterion) {
    use tollgate::ratelimit::{Algorithm, Key, Limiter, Policy, TokenBucket};
    let mut g = c.benchmark_group("ratelimit");
    let now = std::time::Instant::now();
    let limiter = |algorithm| match Limiter::try_new(Policy {
        name: "bench".into(),
        algorithm,
        max_keys: 200_000,
        dry_run: false,
    }) {
        Ok(l) => l,
        Err(e) => panic!("policy: {e}"),
    };
    let window = Duration::from_secs(3600);
    let algorithms = [
        (
            "token_bucket",
            Algorithm::TokenBucket {
                rate_per_sec: 1e9,
                burst: u32::MAX,
            },
        ),
        (
            "fixed_window",
            Algorithm::FixedWindow {
                limit: u64::from(u32::MAX),
                window,
            },
        ),
        (
            "sliding_window",
            Algorithm::SlidingWindow {
                limit: 1 << 52,
                window,
            },
        ),
    ];
    let keys: Vec<IpAddr> = (0..100_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761))))
        .collect();
    for (name, algorithm) in algorithms {
        let l = limiter(algorithm);
        let one = Key::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let _ = l.check(one, now);
        g.bench_function(format!("{name}/1_key"), |b| {
            b.iter(|| black_box(l.check(black_box(one), now)))
        });
        for k in &keys {
            let _ = l.check(Key::Ip(*k), now);
        }
        let mut i = 0;
        g.bench_function(format!("{name}/100k_keys"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(l.check(Key::Ip(keys[i]), now))
            })
        });
    }
    let bucket = match TokenBucket::new(1e9, u32::MAX, now) {
        Ok(b) => b,
        Err(e) => panic!("bucket: {e}"),
    };
    g.bench_function("client_bucket", |b| {
        b.iter(|| black_box(bucket.try_acquire(now)))
    });
    g.finish();
}

fn bench_clients(c: &mut Criterion) {
    use tollgate::clients::{ClientDefaults, Clients, NewClient};
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let defaults = ClientDefaults {
        rate_per_sec: 5.0,
        capacity: 20,
    };
    let (registry, key) = rt.block_on(async {
        let registry = match Clients::open(&url, defaults).await {
            Ok(r) => r,
            Err(e) => panic!("registry: {e}"),
        };
        let mut last = String::new();
        for i in 0..10_000 {
            match registry.create(NewClient::new(format!("client-{i}"))).await {
                Ok((_, key)) => last = key,
                Err(e) => panic!("create: {e}"),
            }
        }
        (registry, last)
    });
    let mut g = c.benchmark_group("clients");
    let now = std::time::SystemTime::now();
    g.bench_function("authenticate/10k_clients", |b| {
        b.iter(|| black_box(registry.authenticate(black_box(&key), now).is_ok()))
    });
    g.bench_function("authenticate/unknown_key", |b| {
        b.iter(|| {
            black_box(
                registry
                    .authenticate(
                        black_box("tg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                        now,
                    )
                    .is_ok(),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = bench_routing, bench_breaker, bench_request_path, bench_ratelimit, bench_clients
}
criterion_main!(benches);
