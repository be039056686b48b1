//! Configuration rejections: every problem is reported with its YAML path, all at once.

use tollgate::config::{ConfigError, FieldError, HeaderCase};
use tollgate::Config;

/// A minimal valid file (no TLS, so no certificate files are needed).
const VALID: &str = r#"
listeners:
  - { name: http, address: "127.0.0.1:18080" }
upstreams:
  api:
    backends: ["127.0.0.1:19001", "127.0.0.1:19002"]
routes:
  - { name: api, match: { prefix: /api }, upstream: api }
"#;

/// The errors of a file that must be refused.
fn errors(yaml: &str) -> Vec<FieldError> {
    match Config::from_yaml(yaml) {
        Ok(_) => panic!("config was accepted:\n{yaml}"),
        Err(ConfigError::Invalid(errors)) => errors,
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

/// Asserts the file is refused with an error at exactly `path` whose message contains
/// `fragment`; `want` is `"path: fragment"`, as the errors are printed.
fn assert_rejected(yaml: &str, want: &str) {
    let (path, fragment) = want.split_once(": ").expect("path: fragment");
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| e.path == path && e.message.contains(fragment)),
        "want `{path}: ...{fragment}...`, got {errs:#?}\n{yaml}"
    );
}

/// `VALID` with `from` replaced by `to` (the replacement must apply).
fn edit(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} not in the base config");
    VALID.replacen(from, to, 1)
}

/// `VALID` with `line` added to the `api` upstream group.
fn group_with(line: &str) -> String {
    edit(
        "\"127.0.0.1:19002\"]\n",
        &format!("\"127.0.0.1:19002\"]\n    {line}\n"),
    )
}

/// The base file used by every rejection test is itself accepted.
#[test]
fn minimal_config_is_accepted() {
    let c = Config::from_yaml(VALID).expect("valid");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.upstreams["api"].backends.len(), 2);
}

/// An unknown top-level key is refused, naming the key.
#[test]
fn unknown_top_level_key_is_rejected() {
    let yaml = format!("{VALID}colour: blue\n");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].path.ends_with("colour"), "{errs:#?}");
    assert!(
        errs[0].message.contains("unknown field `colour`"),
        "{errs:#?}"
    );
}

/// A top-level key's error path is the key itself, like every nested path (`colour`, not `(root).colour`).
#[test]
fn top_level_error_path_is_the_bare_key() {
    let yaml = format!("{VALID}colour: blue\n");
    assert_rejected(&yaml, "colour: unknown field `colour`");
}

/// An unknown key inside one upstream group is refused at its own path.
#[test]
fn unknown_key_in_upstream_is_rejected() {
    let yaml = edit(
        "    backends: [\"127.0.0.1:19001\", \"127.0.0.1:19002\"]\n",
        "    backends: [\"127.0.0.1:19001\", \"127.0.0.1:19002\"]\n    max_fails: 3\n",
    );
    assert_rejected(&yaml, "upstreams.api.max_fails: unknown field `max_fails`");
}

/// An unknown key inside a route's match block is refused at its own path.
#[test]
fn unknown_key_in_route_is_rejected() {
    let yaml = edit("{ prefix: /api }", "{ prefix: /api, method: GET }");
    assert_rejected(&yaml, "routes[0].match.method: unknown field `method`");
}

/// A value of the wrong type is refused at its own path.
#[test]
fn wrong_type_is_rejected_at_its_path() {
    let yaml = format!("server: {{ threads: many }}\n{VALID}");
    assert_rejected(&yaml, "server.threads: invalid type");
}

/// A certificate file that does not exist is refused (without `self_signed_if_missing`).
#[test]
fn missing_certificate_file_is_rejected() {
    let yaml = edit(
        "  - { name: http, address: \"127.0.0.1:18080\" }\n",
        "  - name: https\n    address: \"127.0.0.1:18443\"\n    tls:\n      certificates:\n        \
         - { cert: /nonexistent/tollgate/a.crt, key: /nonexistent/tollgate/a.key }\n",
    );
    assert_rejected(
        &yaml,
        "listeners[0].tls.certificates[0].cert: file not found: /nonexistent/tollgate/a.crt",
    );
    assert_rejected(
        &yaml,
        "listeners[0].tls.certificates[0].key: file not found",
    );
}

/// A header limit outside 1 KiB..=1 MiB, or not a size, is refused at its path.
#[test]
fn bad_header_size_limit_is_rejected() {
    for (value, want) in [
        ("512", "must be 1KiB..=1MiB"),
        ("2MiB", "must be 1KiB..=1MiB"),
        ("lots", "invalid size \"lots\""),
    ] {
        let yaml = format!("server: {{ max_request_header_size: {value} }}\n{VALID}");
        assert_rejected(&yaml, &format!("server.max_request_header_size: {want}"));
    }
    let ok = format!("server: {{ max_request_header_size: 16KiB }}\n{VALID}");
    let c = Config::from_yaml(&ok).expect("16 KiB is accepted");
    assert_eq!(c.server.max_request_header_size, 16 * 1024);
}

/// The header case is `normalize` unless set; another word is refused at its path.
#[test]
fn header_case_is_normalize_preserve_or_refused() {
    let c = Config::from_yaml(VALID).expect("valid");
    assert_eq!(c.server.header_case, HeaderCase::Normalize);
    let yaml = format!("server: {{ header_case: preserve }}\n{VALID}");
    let c = Config::from_yaml(&yaml).expect("preserve is accepted");
    assert_eq!(c.server.header_case, HeaderCase::Preserve);
    let yaml = format!("server: {{ header_case: Title }}\n{VALID}");
    assert_rejected(
        &yaml,
        "server.header_case: unknown header case \"Title\" (expected normalize or preserve)",
    );
}

/// A PostgreSQL store URL whose TLS parameters cannot work is refused up front, at its path.
#[test]
fn bad_postgres_tls_parameters_are_rejected() {
    for (query, want) in [
        ("sslmode=verify-full", "needs sslrootcert"),
        (
            "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
        ("sslmode=sometimes", "unknown sslmode"),
    ] {
        let yaml = format!(
            "clients: {{ store: \"postgres://edge@db.internal/tollgate?{query}\" }}\n{VALID}"
        );
        assert_rejected(&yaml, &format!("clients.store: {want}"));
    }
    let ok = format!(
        "clients: {{ store: \"postgres://edge@db.internal/tollgate?sslmode=require\" }}\n{VALID}"
    );
    Config::from_yaml(&ok).expect("sslmode=require is accepted");
}

/// Two listeners with one name are refused at the second.
#[test]
fn duplicate_listener_name_is_rejected() {
    let yaml = edit(
        "  - { name: http, address: \"127.0.0.1:18080\" }\n",
        "  - { name: http, address: \"127.0.0.1:18080\" }\n  - { name: http, address: \"127.0.0.1:18081\" }\n",
    );
    assert_rejected(&yaml, "listeners[1].name: duplicate listener name \"http\"");
}

/// Two routes with one name are refused at the second.
#[test]
fn duplicate_route_name_is_rejected() {
    let yaml = format!("{VALID}  - {{ name: api, match: {{ prefix: /other }}, upstream: api }}\n");
    assert_rejected(&yaml, "routes[1].name: duplicate route name \"api\"");
}

/// The same backend address twice in one group is refused at the repeat.
#[test]
fn duplicate_backend_is_rejected() {
    let yaml = edit("\"127.0.0.1:19002\"]", "\"127.0.0.1:19001\"]");
    assert_rejected(
        &yaml,
        "upstreams.api.backends[1]: duplicate backend 127.0.0.1:19001",
    );
}

/// A route naming an upstream that does not exist is refused.
#[test]
fn route_to_unknown_upstream_is_rejected() {
    let yaml = edit("upstream: api }", "upstream: apii }");
    assert_rejected(&yaml, "routes[0].upstream: unknown upstream \"apii\"");
}

/// A prefix must be an absolute path.
#[test]
fn prefix_without_leading_slash_is_rejected() {
    let yaml = edit("prefix: /api", "prefix: api");
    assert_rejected(&yaml, "routes[0].match.prefix: must start with '/'");
}

/// A prefix must be written in normal form, and the message suggests it.
#[test]
fn non_normal_prefix_is_rejected() {
    let yaml = edit("prefix: /api", "prefix: /api//v1/../v2");
    assert_rejected(&yaml, "routes[0].match.prefix: not in normal form");
    assert_rejected(&yaml, "routes[0].match.prefix: \"/api/v2\"");
}

/// A zero health-check interval is refused.
#[test]
fn zero_interval_is_rejected() {
    let yaml = group_with("health_check: { kind: tcp, interval: 0s }");
    assert_rejected(
        &yaml,
        "upstreams.api.health_check.interval: must be greater than zero",
    );
}

/// A zero upstream timeout is refused.
#[test]
fn zero_timeout_is_rejected() {
    let yaml = group_with("timeouts: { read: 0ms }");
    assert_rejected(
        &yaml,
        "upstreams.api.timeouts.read: must be greater than zero",
    );
}

/// A duration that humantime cannot parse is refused at its path.
#[test]
fn bad_duration_string_is_rejected() {
    let yaml = group_with("timeouts: { connect: soon }");
    assert_rejected(
        &yaml,
        "upstreams.api.timeouts.connect: invalid duration \"soon\"",
    );
}

/// An unknown selection algorithm is refused, listing the valid ones.
#[test]
fn bad_selection_is_rejected() {
    let yaml = group_with("selection: fastest");
    assert_rejected(
        &yaml,
        "upstreams.api.selection: unknown selection \"fastest\"",
    );
    assert_rejected(&yaml, "upstreams.api.selection: least_conn");
}

/// A consistent-hash key that is not ip, header:NAME or cookie:NAME is refused.
#[test]
fn bad_hash_key_is_rejected() {
    for key in ["body", "header:", "header:bad name", "cookie:"] {
        let yaml = group_with(&format!(
            "selection: {{ consistent_hash: {{ key: \"{key}\" }} }}"
        ));
        assert_rejected(
            &yaml,
            "upstreams.api.selection.consistent_hash.key: invalid hash key",
        );
    }
}

/// A health check kind other than tcp or http is refused.
#[test]
fn bad_health_check_kind_is_rejected() {
    let yaml = group_with("health_check: { kind: grpc }");
    assert_rejected(
        &yaml,
        "upstreams.api.health_check.kind: unknown health check kind \"grpc\"",
    );
}

/// A trusted proxy that is neither a CIDR nor an address is refused at its index.
#[test]
fn bad_cidr_is_rejected() {
    let yaml = format!("trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n{VALID}");
    assert_rejected(
        &yaml,
        "trusted_proxies[1]: invalid CIDR or IP address \"10.0.0.0/33\"",
    );
}

/// An unknown log level is refused.
#[test]
fn bad_log_level_is_rejected() {
    let yaml = format!("logging: {{ level: loud }}\n{VALID}");
    assert_rejected(&yaml, "logging.level: unknown level \"loud\"");
}

/// Backend weights outside 1..=1000 are refused at the weight.
#[test]
fn weight_out_of_range_is_rejected() {
    for w in [0, 1001] {
        let yaml = edit(
            "[\"127.0.0.1:19001\", \"127.0.0.1:19002\"]",
            &format!("[{{ address: \"127.0.0.1:19001\", weight: {w} }}, \"127.0.0.1:19002\"]"),
        );
        assert_rejected(
            &yaml,
            "upstreams.api.backends[0].weight: must be between 1 and 1000",
        );
    }
}

/// A plaintext listener cannot redirect when there is no https listener to redirect to.
#[test]
fn redirect_without_https_listener_is_rejected() {
    let yaml = edit(
        "{ name: http, address: \"127.0.0.1:18080\" }",
        "{ name: http, address: \"127.0.0.1:18080\", redirect_https: true }",
    );
    assert_rejected(
        &yaml,
        "listeners[0].redirect_https: no https listener to redirect to",
    );
}

/// Two routes with the same host and (normalized) prefix are refused.
#[test]
fn duplicate_route_match_is_rejected() {
    let yaml = format!("{VALID}  - {{ name: api2, match: {{ prefix: /api/ }}, upstream: api }}\n");
    assert_rejected(&yaml, "routes[1].match: same host and prefix as routes[0]");
}

/// Broken YAML is reported with its line and column.
#[test]
fn yaml_syntax_error_is_located() {
    let errs = errors("listeners: [\n  - { name: http\n");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].path.starts_with("line "), "{errs:#?}");
    assert!(errs[0].message.contains("invalid YAML"), "{errs:#?}");
}

/// Errors in different sections are all reported by one load, each at its own path.
#[test]
fn errors_in_several_sections_are_reported_together() {
    let yaml = r#"
server: { threads: 0 }
logging: { level: loud }
trusted_proxies: ["not-an-ip"]
listeners:
  - { name: http, address: "127.0.0.1:18080" }
  - { name: http, address: "127.0.0.1:18081" }
upstreams:
  api:
    backends: ["127.0.0.1:19001", { address: "127.0.0.1:19002", weight: 0 }]
    selection: fastest
  web:
    backends: ["localhost"]
routes:
  - { name: api, match: { prefix: api }, upstream: api }
  - { name: web, match: { prefix: /web }, upstream: nowhere }
"#;
    let errs = errors(yaml);
    let want = [
        "server.threads",
        "logging.level",
        "trusted_proxies[0]",
        "listeners[1].name",
        "upstreams.api.backends[1].weight",
        "upstreams.api.selection",
        "upstreams.web.backends[0]",
        "routes[0].match.prefix",
        "routes[1].upstream",
    ];
    for path in want {
        assert!(
            errs.iter().any(|e| e.path == path),
            "missing {path}: {errs:#?}"
        );
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    let text = ConfigError::Invalid(errs).to_string();
    assert!(text.starts_with("9 error(s) in configuration:"), "{text}");
}
