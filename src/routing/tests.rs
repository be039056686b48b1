use super::*;

fn route(host: Option<&str>, prefix: &str, value: &'static str) -> RouteSpec<&'static str> {
    RouteSpec {
        host: host.map(str::to_owned),
        prefix: prefix.to_owned(),
        value,
    }
}

/// Minimal xorshift so the property tests are reproducible without crates.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Behaviour `normalization_table_matches_expected_outputs`: every documented rewrite rule produces the expected path.
#[test]
fn normalization_table_matches_expected_outputs() {
    let cases = [
        ("/", "/"),
        ("/api", "/api"),
        ("/api/", "/api/"),
        ("//", "/"),
        ("//api//v1//", "/api/v1/"),
        ("/./a", "/a"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/../c", "/a/c"),
        ("/.", "/"),
        ("/a/..", "/"),
        ("/%61pi", "/api"),
        ("/a%2fb", "/a/b"),
        ("/a%2Fb", "/a/b"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2e/admin", "/admin"),
        ("/api%2F..%2Fadmin", "/admin"),
        ("/api%2f%2e%2e%2fadmin", "/admin"),
        ("/a%5cb", "/a%5Cb"),
        ("/a%5Cb", "/a%5Cb"),
        ("/a%3fb%3Db", "/a%3Fb%3Db"),
        ("/%7euser/%7E", "/~user/~"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/%2541", "/%2541"),
        ("/a%0ab", "/a%0Ab"),
        ("/..a/a../.../", "/..a/a../.../"),
        ("/caf\u{e9}", "/caf\u{e9}"),
        ("/a\\b", "/a\\b"),
        ("/api%2F", "/api/"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "input {raw:?}");
    }
}

/// Behaviour `invalid_paths_are_rejected_with_specific_errors`: each malformed input maps to the error the proxy reports.
#[test]
fn invalid_paths_are_rejected_with_specific_errors() {
    let cases = [
        ("", PathError::NotOriginForm),
        ("*", PathError::NotOriginForm),
        ("api", PathError::NotOriginForm),
        ("http://example.com/", PathError::NotOriginForm),
        ("/a%zz", PathError::BadPercentEncoding),
        ("/a%4", PathError::BadPercentEncoding),
        ("/a%", PathError::BadPercentEncoding),
        ("/a%g0", PathError::BadPercentEncoding),
        ("/a%\u{e9}", PathError::BadPercentEncoding),
        ("/a%00", PathError::EncodedNul),
        ("/a\0b", PathError::EncodedNul),
        ("/a\nb", PathError::EncodedNul),
        ("/a\tb", PathError::EncodedNul),
        ("/a\x7fb", PathError::EncodedNul),
        ("/..", PathError::AboveRoot),
        ("/../a", PathError::AboveRoot),
        ("/a/../..", PathError::AboveRoot),
        ("/%2e%2e/etc/passwd", PathError::AboveRoot),
        ("/a%2F..%2F..%2Fb", PathError::AboveRoot),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw), Err(want), "input {raw:?}");
    }
}

/// Behaviour `already_normal_path_is_borrowed`: the common case returns the input without allocating.
#[test]
fn already_normal_path_is_borrowed() {
    for raw in [
        "/",
        "/api",
        "/api/",
        "/api/v1/users/42",
        "/a%20b%5C",
        "/%C3%A9",
        "/..a/",
    ] {
        assert!(
            matches!(normalize_path(raw), Ok(Cow::Borrowed(_))),
            "input {raw:?}"
        );
    }
    assert!(matches!(normalize_path("/a//b"), Ok(Cow::Owned(_))));
}

/// Behaviour `path_over_8_kib_is_too_long`: 8192 bytes is accepted, 8193 is refused.
#[test]
fn path_over_8_kib_is_too_long() {
    let limit = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
    assert!(matches!(normalize_path(&limit), Ok(Cow::Borrowed(_))));
    let over = format!("{limit}b");
    assert_eq!(normalize_path(&over), Err(PathError::TooLong));
}

/// Behaviour `normalization_is_idempotent_and_clean`: for generated paths, normalising twice equals once (and is borrowed the second time), and the result has no empty or dot segments.
#[test]
fn normalization_is_idempotent_and_clean() {
    const PIECES: [&str; 22] = [
        "/", "/", "//", ".", "..", "a", "b", "api", "%2e", "%2E", "%2f", "%2F", "%61", "%5c",
        "%7e", "%20", "%3f", "-", "~", "%", "%4", "\u{e9}",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut raw = String::from("/");
        for _ in 0..rng.below(12) {
            raw.push_str(PIECES[rng.below(PIECES.len())]);
        }
        let Ok(once) = normalize_path(&raw) else {
            continue;
        };
        accepted += 1;
        let twice = normalize_path(&once);
        assert!(
            matches!(twice, Ok(Cow::Borrowed(p)) if p == once),
            "not idempotent: {raw:?} -> {once:?} -> {twice:?}"
        );
        assert!(once.starts_with('/'), "{raw:?} -> {once:?}");
        for bad in ["//", "/./", "/../"] {
            assert!(!once.contains(bad), "{raw:?} -> {once:?}");
        }
        assert!(
            !once.ends_with("/.") && !once.ends_with("/.."),
            "{raw:?} -> {once:?}"
        );
        let lower_hex = once
            .match_indices('%')
            .any(|(i, _)| once[i + 1..i + 3].bytes().any(|b| b.is_ascii_lowercase()));
        assert!(!lower_hex, "{raw:?} -> {once:?}");
    }
    assert!(accepted > 5_000, "generator rejected too much: {accepted}");
}

fn table() -> Router<&'static str> {
    let routes = vec![
        route(None, "/", "root"),
        route(None, "/api", "api"),
        route(None, "/api/v1", "api-v1"),
        route(None, "/static/", "static"),
        route(Some("example.com"), "/", "ex-root"),
        route(Some("example.com"), "/shop", "ex-shop"),
        route(Some("*.example.com"), "/", "wild-root"),
        route(Some("*.example.com"), "/img", "wild-img"),
        route(Some("*.eu.example.com"), "/", "wild-eu"),
        route(Some("only-api.test"), "/api", "only-api"),
        route(Some("[::1]"), "/", "v6"),
        route(Some("127.0.0.1"), "/", "v4"),
    ];
    Router::new(routes).expect("table has no duplicates")
}

/// Behaviour `routing_table_picks_expected_route`: host tiers, longest prefix, segment boundaries and fallbacks all resolve as documented.
#[test]
fn routing_table_picks_expected_route() {
    let router = table();
    let cases = [
        // Host-less tier: segment boundaries, longest wins, root fallback.
        (None, "/", Some(("root", "/"))),
        (None, "/api", Some(("api", "/api"))),
        (None, "/api/", Some(("api", "/api"))),
        (None, "/api/x/y", Some(("api", "/api"))),
        (None, "/apix", Some(("root", "/"))),
        (None, "/api/v1", Some(("api-v1", "/api/v1"))),
        (None, "/api/v1/users", Some(("api-v1", "/api/v1"))),
        (None, "/api/v10", Some(("api", "/api"))),
        (None, "/static", Some(("static", "/static"))),
        (None, "/static/app.js", Some(("static", "/static"))),
        (None, "/API", Some(("root", "/"))),
        // Exact host, any case, with or without port or trailing dot.
        (
            Some("example.com"),
            "/shop/cart",
            Some(("ex-shop", "/shop")),
        ),
        (Some("EXAMPLE.com"), "/shop", Some(("ex-shop", "/shop"))),
        (
            Some("example.com:8443"),
            "/shop",
            Some(("ex-shop", "/shop")),
        ),
        (Some("Example.Com:443"), "/x", Some(("ex-root", "/"))),
        (Some("example.com."), "/x", Some(("ex-root", "/"))),
        // Exact host root beats a longer host-less prefix.
        (Some("example.com"), "/api/v1", Some(("ex-root", "/"))),
        // Wildcards: one or more labels, most specific first.
        (
            Some("www.example.com"),
            "/img/a.png",
            Some(("wild-img", "/img")),
        ),
        (Some("a.b.example.com"), "/x", Some(("wild-root", "/"))),
        (Some("WWW.Example.COM:80"), "/", Some(("wild-root", "/"))),
        (Some("fr.eu.example.com"), "/img", Some(("wild-eu", "/"))),
        (Some("eu.example.com"), "/img", Some(("wild-img", "/img"))),
        // Host whose prefixes do not match falls through to host-less.
        (Some("only-api.test"), "/api/x", Some(("only-api", "/api"))),
        (
            Some("only-api.test"),
            "/static/x",
            Some(("static", "/static")),
        ),
        // IP literals.
        (Some("[::1]:8443"), "/a", Some(("v6", "/"))),
        (Some("[::1]"), "/a", Some(("v6", "/"))),
        (Some("127.0.0.1:8080"), "/a", Some(("v4", "/"))),
        // Unknown, empty and malformed hosts use the host-less tier.
        (Some("other.test"), "/api", Some(("api", "/api"))),
        (Some(""), "/api", Some(("api", "/api"))),
        (Some("example.com:abc"), "/shop", Some(("root", "/"))),
        (Some("[::1"), "/a", Some(("root", "/"))),
        // Not a normalised path: no route.
        (None, "*", None),
    ];
    for (host, path, want) in cases {
        let got = router.lookup(host, path).map(|m| (*m.value, m.prefix));
        assert_eq!(got, want, "host {host:?} path {path:?}");
    }
}

/// Behaviour `prefix_does_not_match_partial_segment`: `/api` never matches `/apix`, and without a root route that is a miss.
#[test]
fn prefix_does_not_match_partial_segment() {
    let router = Router::new(vec![route(None, "/api", "api")]).expect("valid");
    assert!(router.lookup(None, "/apix").is_none());
    assert!(router.lookup(None, "/ap").is_none());
    assert!(router.lookup(None, "/").is_none());
    assert!(router.lookup(None, "/api/x").is_some());
}

/// Behaviour `trailing_slash_prefix_equals_bare_prefix`: a configured `/api/` matches `/api` and reports the prefix as `/api`.
#[test]
fn trailing_slash_prefix_equals_bare_prefix() {
    let router = Router::new(vec![route(None, "/api/", "api")]).expect("valid");
    for path in ["/api", "/api/", "/api/x"] {
        let m = router.lookup(None, path).expect("matches");
        assert_eq!(m.prefix, "/api", "path {path}");
    }
    assert!(router.lookup(None, "/apix").is_none());
}

/// Behaviour `request_without_host_matches_only_hostless_routes`: host-specific routes are invisible to a request that has no host.
#[test]
fn request_without_host_matches_only_hostless_routes() {
    let router = Router::new(vec![
        route(Some("example.com"), "/", "exact"),
        route(Some("*.example.com"), "/", "wild"),
    ])
    .expect("valid");
    assert!(router.lookup(None, "/").is_none());
    assert!(router.lookup(Some("example.com"), "/").is_some());
}

/// Behaviour `wildcard_does_not_match_apex_domain`: `*.example.com` needs at least one label in front.
#[test]
fn wildcard_does_not_match_apex_domain() {
    let router = Router::new(vec![route(Some("*.example.com"), "/", "wild")]).expect("valid");
    assert!(router.lookup(Some("example.com"), "/").is_none());
    assert!(router.lookup(Some(".example.com"), "/").is_none());
    assert!(router.lookup(Some("badexample.com"), "/").is_none());
    assert!(router.lookup(Some("a.example.com"), "/").is_some());
    assert!(router.lookup(Some("a.b.c.example.com"), "/").is_some());
}

/// Behaviour `invalid_configured_prefix_never_matches`: a route whose prefix normalize_path rejects is kept but is unreachable, even by an unnormalised path.
#[test]
fn invalid_configured_prefix_never_matches() {
    let router = Router::new(vec![
        route(None, "api", "a"),
        route(None, "/../x", "b"),
        route(None, "/../x", "c"),
    ])
    .expect("unreachable routes are not duplicates");
    assert_eq!(router.len(), 3);
    for path in ["/api", "/x", "/", "/../x", "api"] {
        assert!(router.lookup(None, path).is_none(), "path {path}");
    }
}

/// Behaviour `configured_prefix_is_normalized`: a prefix written with encodings or empty segments matches the normalised request path.
#[test]
fn configured_prefix_is_normalized() {
    let router = Router::new(vec![route(None, "//%61pi//v1/", "api")]).expect("valid");
    let m = router.lookup(None, "/api/v1/x").expect("matches");
    assert_eq!(m.prefix, "/api/v1");
}

/// Behaviour `duplicate_host_prefix_pair_is_rejected_with_index`: duplicates are detected after canonicalisation; different tiers are not duplicates.
#[test]
fn duplicate_host_prefix_pair_is_rejected_with_index() {
    let dup = |routes| Router::new(routes).err();
    assert_eq!(
        dup(vec![
            route(None, "/a", "1"),
            route(None, "/b", "2"),
            route(None, "/a/", "3")
        ]),
        Some(DuplicateRoute { index: 2, first: 0 })
    );
    assert_eq!(
        dup(vec![route(None, "/", "1"), route(None, "//", "2")]),
        Some(DuplicateRoute { index: 1, first: 0 })
    );
    assert_eq!(
        dup(vec![
            route(Some("Example.com"), "/x", "1"),
            route(Some("example.com:443"), "/x", "2")
        ]),
        Some(DuplicateRoute { index: 1, first: 0 })
    );
    assert_eq!(
        dup(vec![
            route(Some("*.example.com"), "/", "1"),
            route(Some("*.EXAMPLE.com"), "/", "2")
        ]),
        Some(DuplicateRoute { index: 1, first: 0 })
    );
    assert_eq!(
        dup(vec![
            route(None, "/x", "1"),
            route(Some("example.com"), "/x", "2"),
            route(Some("*.example.com"), "/x", "3"),
            route(Some("other.com"), "/x", "4"),
        ]),
        None
    );
}

/// Behaviour `strip_prefix_keeps_rooted_remainder`: the upstream path keeps its leading slash and never becomes empty.
#[test]
fn strip_prefix_keeps_rooted_remainder() {
    let cases = [
        ("/api/x", "/api", "/x"),
        ("/api/x/y/", "/api", "/x/y/"),
        ("/api", "/api", "/"),
        ("/api/", "/api", "/"),
        ("/api/x", "/api/", "/x"),
        ("/api/x", "/", "/api/x"),
        ("/", "/", "/"),
        ("/apix", "/api", "/apix"),
        ("/other", "/api", "/other"),
    ];
    for (path, prefix, want) in cases {
        assert_eq!(strip_prefix(path, prefix), want, "{path} - {prefix}");
    }
}

/// Behaviour `hash_walk_agrees_with_linear_scan`: for generated tables and paths, lookup equals a brute-force longest segment-prefix search.
#[test]
fn hash_walk_agrees_with_linear_scan() {
    const SEGMENTS: [&str; 4] = ["a", "b", "ab", "c"];
    let mut rng = Rng(42);
    let gen_path = |rng: &mut Rng, max: usize| {
        let mut p = String::new();
        for _ in 0..rng.below(max) {
            p.push('/');
            p.push_str(SEGMENTS[rng.below(SEGMENTS.len())]);
        }
        if p.is_empty() || rng.below(4) == 0 {
            p.push('/');
        }
        p
    };
    for _ in 0..200 {
        let mut prefixes: Vec<String> = Vec::new();
        for _ in 0..rng.below(12) {
            let p = canonical_prefix(&gen_path(&mut rng, 4)).expect("generated prefixes are valid");
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
        let specs = prefixes
            .iter()
            .map(|p| RouteSpec {
                host: None,
                prefix: p.clone(),
                value: p.clone(),
            })
            .collect();
        let router = Router::new(specs).expect("deduplicated");
        for _ in 0..50 {
            let path = gen_path(&mut rng, 7);
            let want = prefixes
                .iter()
                .filter(|p| {
                    p.as_str() == "/"
                        || path
                            .strip_prefix(p.as_str())
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                })
                .max_by_key(|p| p.len());
            let got = router.lookup(None, &path).map(|m| m.value);
            assert_eq!(got, want, "path {path:?} prefixes {prefixes:?}");
        }
    }
}

/// Behaviour `iter_and_len_follow_configuration_order`: iteration yields payloads in the order given to `new`.
#[test]
fn iter_and_len_follow_configuration_order() {
    let router = table();
    assert_eq!(router.len(), 12);
    assert!(!router.is_empty());
    assert_eq!(router.iter().next(), Some(&"root"));
    assert_eq!(router.iter().last(), Some(&"v4"));
    let empty = Router::<()>::new(Vec::new()).expect("valid");
    assert!(empty.is_empty());
    assert!(empty.lookup(None, "/").is_none());
}

/// Behaviour `error_messages_are_lower_case`: Display output starts lower-case so it can be embedded in log lines.
#[test]
fn error_messages_are_lower_case() {
    let errors = [
        PathError::NotOriginForm,
        PathError::BadPercentEncoding,
        PathError::EncodedNul,
        PathError::AboveRoot,
        PathError::TooLong,
    ];
    let messages = errors
        .iter()
        .map(ToString::to_string)
        .chain([DuplicateRoute { index: 1, first: 0 }.to_string()]);
    for message in messages {
        assert!(
            message.starts_with(|c: char| c.is_ascii_lowercase()),
            "{message}"
        );
    }
}
