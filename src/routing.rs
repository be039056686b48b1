//! Request routing: path normalisation and `(host, path prefix)` route lookup.
//!
//! # Path normalisation
//!
//! [`normalize_path`] turns the path component of an origin-form request
//! target (no query string, no fragment) into the single canonical spelling
//! that routing decisions are made on. The proxy should forward that same
//! normalised path upstream, so that the router and the backend can never
//! disagree about which resource was asked for.
//!
//! * The path must start with `/`; anything else is
//!   [`PathError::NotOriginForm`]. That includes the asterisk form (`OPTIONS
//!   *`), which the caller has to answer itself before routing.
//! * Percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`) are
//!   decoded, and so is `%2F`: an encoded slash would otherwise let
//!   `/public%2F..%2Fadmin` slip past a prefix check and be decoded by the
//!   backend into a path outside that prefix. The backend therefore sees a
//!   real `/` where the client sent `%2F`.
//! * Every other percent-encoding (including `%5C`, the backslash) is kept
//!   encoded, with its hex digits upper-cased so that it has one spelling.
//! * Malformed encodings (`%zz`, a truncated `%4`) are
//!   [`PathError::BadPercentEncoding`]; `%00` and raw control characters
//!   (`0x00..=0x1F`, `0x7F`) are [`PathError::EncodedNul`]. Other encoded
//!   control characters such as `%0A` stay encoded and are forwarded.
//! * Empty segments collapse (`//` becomes `/`), and `.` and `..` segments are
//!   resolved as in RFC 3986 section 5.2.4, including those that only appear
//!   after decoding (`/api/%2e%2e/admin` is `/admin`). A `..` that would
//!   climb above `/` is [`PathError::AboveRoot`] rather than being clamped,
//!   because such a request is an attack or a bug, never a real link.
//! * A trailing slash is kept (`/api/` stays `/api/`), and a path that ends
//!   in a `.` or `..` segment ends in a slash (`/a/b/..` is `/a/`), again as
//!   in RFC 3986.
//! * Paths over [`MAX_PATH_LEN`] bytes are [`PathError::TooLong`].
//! * Raw non-ASCII bytes are left alone; the HTTP parser decides whether they
//!   are acceptable at all.
//!
//! An already-normal path, the common case, is returned as
//! [`Cow::Borrowed`] without allocating.
//!
//! # Prefix matching
//!
//! A route prefix matches on path-segment boundaries only: `/api` matches
//! `/api`, `/api/` and `/api/x/y`, never `/apix`. A configured prefix is
//! normalised like a request path and a trailing slash is then dropped, so
//! `/api/` is the same prefix as `/api` (and the two are duplicates). `/`
//! matches every path. Paths are case-sensitive. Among the routes of one
//! host tier (below), the longest matching prefix wins. A route whose
//! prefix [`normalize_path`] rejects is kept (it shows up in
//! [`Router::iter`]) but never matches; reporting it is config validation's
//! job.
//!
//! # Hosts and precedence
//!
//! The request host is compared case-insensitively, after removing a port
//! (`example.com:8443`, `[::1]:8443`), the brackets of an IPv6 literal
//! (`[::1]` is the host `::1`) and one trailing dot (`example.com.` is
//! `example.com`, otherwise the dot would be a way around host-specific
//! routes). Configured hosts go through the same canonicalisation, so a port
//! in configuration is ignored. IPv6 literals are compared textually.
//! A request host that is empty, or longer than 255 bytes and so not a
//! valid DNS name, is treated like an unknown host.
//!
//! A route is in exactly one tier:
//!
//! 1. exact host (`host: Some("example.com")`);
//! 2. wildcard host (`host: Some("*.example.com")`), which matches one or
//!    more labels in front of `example.com` but not `example.com` itself;
//! 3. host-less (`host: None`).
//!
//! [`Router::lookup`] tries the exact tier, then the wildcards from the most
//! specific (`*.a.example.com`) to the least (`*.example.com`), then the
//! host-less tier, and returns the longest prefix match of the first tier
//! that has one. Host specificity therefore beats prefix length: for
//! `example.com/api/v1`, an exact route `example.com` + `/` wins over a
//! host-less `/api/v1`, while a path that none of the exact host's prefixes
//! match falls through to the wildcard and host-less routes. A request
//! without a host only matches host-less routes.
//!
//! # Cost
//!
//! A lookup never allocates and costs one hash probe per path segment and
//! per host label, both capped by the longest configured prefix or wildcard
//! suffix, independent of the number of routes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// Longest request path [`normalize_path`] accepts, in bytes.
pub const MAX_PATH_LEN: usize = 8 * 1024;

/// DNS names are at most 253 characters, so a longer request host cannot
/// equal a valid configured one; the bound also sizes the stack buffer used
/// to lower-case hosts without allocating.
const MAX_HOST_LEN: usize = 255;

/// Why a request path was refused; the proxy answers all of them with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotOriginForm,
    /// A `%` is not followed by two hex digits.
    BadPercentEncoding,
    /// `%00` or a raw control character.
    EncodedNul,
    /// A `..` segment climbs above `/`.
    AboveRoot,
    /// The path is longer than [`MAX_PATH_LEN`].
    TooLong,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotOriginForm => "request path does not start with '/'",
            Self::BadPercentEncoding => "invalid percent-encoding in request path",
            Self::EncodedNul => "request path contains a nul or control character",
            Self::AboveRoot => "request path climbs above the root",
            Self::TooLong => "request path is longer than 8192 bytes",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalizes the path part (no query) of a request target before routing.
///
/// See the [module documentation](self) for the rules. Returns
/// [`Cow::Borrowed`] when `raw_path` is already normal.
pub fn normalize_path(raw_path: &str) -> Result<Cow<'_, str>, PathError> {
    if raw_path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw_path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(raw_path.as_bytes()) {
        return Ok(Cow::Borrowed(raw_path));
    }
    let normal = resolve_dot_segments(&decode(raw_path)?)?;
    // `is_normal` is deliberately conservative; a path that only looked
    // suspicious still comes back borrowed.
    if normal == raw_path {
        Ok(Cow::Borrowed(raw_path))
    } else {
        Ok(Cow::Owned(normal))
    }
}

/// Single pass over a path that starts with `/`: true when normalisation
/// would return it unchanged. False sends the path to the slow path, which
/// also does the error reporting, so this only has to be exact for the
/// common case.
fn is_normal(b: &[u8]) -> bool {
    let mut segment_start = 1;
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'/' => {
                if is_empty_or_dot_segment(&b[segment_start..i]) {
                    return false;
                }
                segment_start = i + 1;
                i += 1;
            }
            b'%' => {
                let (Some(&hi), Some(&lo)) = (b.get(i + 1), b.get(i + 2)) else {
                    return false;
                };
                if !is_upper_hex(hi) || !is_upper_hex(lo) {
                    return false;
                }
                let byte = (hex_value(hi) << 4) | hex_value(lo);
                if byte == 0 || byte == b'/' || is_unreserved(byte) {
                    return false;
                }
                i += 3;
            }
            c if is_control(c) => return false,
            _ => i += 1,
        }
    }
    // An empty last segment is the trailing slash, which is kept.
    let last = &b[segment_start..];
    last != b"." && last != b".."
}

fn is_empty_or_dot_segment(segment: &[u8]) -> bool {
    segment.is_empty() || segment == b"." || segment == b".."
}

/// Decodes what must be decoded and upper-cases the hex of the rest, so that
/// dot segments and slashes hidden behind encodings become visible to
/// [`resolve_dot_segments`].
fn decode(raw: &str) -> Result<String, PathError> {
    const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // Untouched text is copied in runs; `%` and control characters are
    // ASCII, so every run boundary is a char boundary.
    let mut run_start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            out.push_str(&raw[run_start..i]);
            let hi = b.get(i + 1).copied().and_then(hex_digit);
            let lo = b.get(i + 2).copied().and_then(hex_digit);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadPercentEncoding);
            };
            let byte = (hi << 4) | lo;
            if byte == 0 {
                return Err(PathError::EncodedNul);
            }
            if byte == b'/' || is_unreserved(byte) {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push(char::from(HEX_DIGITS[usize::from(hi)]));
                out.push(char::from(HEX_DIGITS[usize::from(lo)]));
            }
            i += 3;
            run_start = i;
        } else if is_control(c) {
            return Err(PathError::EncodedNul);
        } else {
            i += 1;
        }
    }
    out.push_str(&raw[run_start..]);
    Ok(out)
}

/// RFC 3986 `remove_dot_segments` that also drops empty segments and refuses
/// to clamp `..` at the root.
fn resolve_dot_segments(decoded: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(decoded.len());
    let mut trailing_slash = false;
    // The first piece is the empty string before the leading `/`.
    for segment in decoded.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => match out.rfind('/') {
                Some(parent) => out.truncate(parent),
                None => return Err(PathError::AboveRoot),
            },
            _ => {
                out.push('/');
                out.push_str(segment);
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

fn is_control(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn is_upper_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'A'..=b'F').contains(&c)
}

fn hex_digit(c: u8) -> Option<u8> {
    c.is_ascii_hexdigit().then(|| hex_value(c))
}

/// Only meaningful for ASCII hex digits; callers check first.
fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Path to send upstream when the route strips its prefix: "/api/x" with prefix "/api" -> "/x"; "/api" -> "/".
///
/// `prefix` is normally [`Match::prefix`]; a trailing slash on it is ignored
/// as in routing. A `path` that is not under `prefix` on a segment boundary
/// is returned unchanged.
pub fn strip_prefix<'p>(path: &'p str, prefix: &str) -> Cow<'p, str> {
    // Dropping the slash turns the root prefix into "", which strips nothing.
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some("") => Cow::Borrowed("/"),
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        _ => Cow::Borrowed(path),
    }
}

/// One configured route, as handed to [`Router::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec<T> {
    /// `None` for a host-less route, `"*.example.com"` for a wildcard.
    pub host: Option<String>,
    /// Path prefix; `"/api/"` is the same prefix as `"/api"`.
    pub prefix: String,
    /// What the proxy wants back on a match.
    pub value: T,
}

/// Two routes have the same host and, after normalisation, the same prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateRoute {
    /// Index in the `Vec` given to [`Router::new`] of the route refused.
    pub index: usize,
    /// Index of the earlier route it duplicates.
    pub first: usize,
}

impl fmt::Display for DuplicateRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {} has the same host and prefix as route {}",
            self.index, self.first
        )
    }
}

impl std::error::Error for DuplicateRoute {}

/// The route a request was sent to.
#[derive(Debug)]
pub struct Match<'a, T> {
    /// The payload of the route.
    pub value: &'a T,
    /// The route's normalised prefix (no trailing slash unless it is `/`),
    /// ready for [`strip_prefix`].
    pub prefix: &'a str,
}

// Manual impls: deriving would needlessly require `T: Clone`.
impl<T> Clone for Match<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Match<'_, T> {}

/// Immutable routing table; build a new one to change routes.
#[derive(Debug)]
pub struct Router<T> {
    /// In configuration order, for [`Router::iter`].
    routes: Vec<Entry<T>>,
    exact: HashMap<Box<str>, PrefixTable>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, PrefixTable>,
    /// Longest wildcard suffix; longer host suffixes are not probed.
    wildcard_max_len: usize,
    hostless: PrefixTable,
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    prefix: Box<str>,
}

/// The prefixes of one host (or of the host-less tier).
#[derive(Debug, Default)]
struct PrefixTable {
    /// Normalised prefixes other than `/`, without trailing slash.
    by_prefix: HashMap<Box<str>, usize>,
    root: Option<usize>,
    /// Segment count and byte length of the longest prefix: probing a
    /// longer candidate cannot hit, and skipping it bounds the hashing
    /// an adversarial path can cause.
    max_segments: usize,
    max_len: usize,
}

impl PrefixTable {
    fn insert(&mut self, prefix: &str, index: usize) -> Result<(), DuplicateRoute> {
        if prefix == "/" {
            if let Some(first) = self.root {
                return Err(DuplicateRoute { index, first });
            }
            self.root = Some(index);
            return Ok(());
        }
        if let Some(&first) = self.by_prefix.get(prefix) {
            return Err(DuplicateRoute { index, first });
        }
        self.by_prefix.insert(prefix.into(), index);
        self.max_segments = self.max_segments.max(prefix.matches('/').count());
        self.max_len = self.max_len.max(prefix.len());
        Ok(())
    }

    /// Probes `/a/b/c`, `/a/b`, `/a`, then the root.
    fn find(&self, path: &str) -> Option<usize> {
        if self.max_segments > 0 {
            let path = path.strip_suffix('/').unwrap_or(path);
            // Start at the first `max_segments` segments: deeper candidates
            // cannot be configured.
            let mut candidate = match path
                .get(1..)
                .and_then(|rest| rest.match_indices('/').nth(self.max_segments - 1))
            {
                Some((slash, _)) => &path[..=slash],
                None => path,
            };
            while candidate.len() > 1 {
                if candidate.len() <= self.max_len {
                    if let Some(&index) = self.by_prefix.get(candidate) {
                        return Some(index);
                    }
                }
                match candidate.rfind('/') {
                    Some(slash) => candidate = &candidate[..slash],
                    None => break,
                }
            }
        }
        self.root
    }
}

impl<T> Router<T> {
    /// Fails on a duplicate (host, prefix) pair (returns its index) — config validation also checks, this is the last guard.
    ///
    /// Hosts and prefixes are compared after canonicalisation, so
    /// `("Example.com", "/api/")` duplicates `("example.com", "/api")`.
    pub fn new(routes: Vec<RouteSpec<T>>) -> Result<Self, DuplicateRoute> {
        let mut router = Router {
            routes: Vec::with_capacity(routes.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            wildcard_max_len: 0,
            hostless: PrefixTable::default(),
        };
        for (index, spec) in routes.into_iter().enumerate() {
            let Some(prefix) = canonical_prefix(&spec.prefix) else {
                // Kept for `iter`/`len` but unreachable, see the module docs.
                router.routes.push(Entry {
                    value: spec.value,
                    prefix: spec.prefix.into(),
                });
                continue;
            };
            let table = match spec.host.as_deref() {
                None => &mut router.hostless,
                Some(host) => match host.strip_prefix("*.") {
                    Some(suffix) => {
                        let suffix = canonical_config_host(suffix);
                        router.wildcard_max_len = router.wildcard_max_len.max(suffix.len());
                        router.wildcard.entry(suffix.into()).or_default()
                    }
                    None => router
                        .exact
                        .entry(canonical_config_host(host).into())
                        .or_default(),
                },
            };
            table.insert(&prefix, index)?;
            router.routes.push(Entry {
                value: spec.value,
                prefix: prefix.into(),
            });
        }
        Ok(router)
    }

    /// Longest prefix match on segment boundaries; `path` must already be normalized.
    ///
    /// `host` is the raw Host header or `:authority`, port and all. See the
    /// [module documentation](self) for the precedence of host tiers.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<Match<'_, T>> {
        if !path.starts_with('/') {
            return None;
        }
        let index = host
            .filter(|_| !(self.exact.is_empty() && self.wildcard.is_empty()))
            .and_then(|raw| self.find_with_host(raw, path))
            .or_else(|| self.hostless.find(path))?;
        let entry = self.routes.get(index)?;
        Some(Match {
            value: &entry.value,
            prefix: &entry.prefix,
        })
    }

    /// Exact tier, then wildcard tier, for the raw request host.
    fn find_with_host(&self, raw_host: &str, path: &str) -> Option<usize> {
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = canonical_request_host(raw_host, &mut buf)?;
        if let Some(index) = self.exact.get(host).and_then(|t| t.find(path)) {
            return Some(index);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Left to right gives the longest suffix, i.e. the most specific
        // wildcard, first; a dot at 0 would mean an empty first label.
        host.match_indices('.')
            .filter(|&(dot, _)| dot > 0)
            .map(|(dot, _)| &host[dot + 1..])
            .filter(|suffix| suffix.len() <= self.wildcard_max_len)
            .find_map(|suffix| self.wildcard.get(suffix).and_then(|t| t.find(path)))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes, so every lookup misses.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Route payloads in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|entry| &entry.value)
    }
}

fn canonical_prefix(raw: &str) -> Option<String> {
    let path = normalize_path(raw).ok()?;
    if path == "/" {
        return Some(path.into_owned());
    }
    Some(path.strip_suffix('/').unwrap_or(&path).to_owned())
}

fn canonical_config_host(raw: &str) -> String {
    let host = strip_port(raw);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Lower-cases into `buf` only when needed, so lookups never allocate.
fn canonical_request_host<'a>(raw: &'a str, buf: &'a mut [u8; MAX_HOST_LEN]) -> Option<&'a str> {
    let host = strip_port(raw);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let lower = &mut buf[..host.len()];
    lower.copy_from_slice(host.as_bytes());
    lower.make_ascii_lowercase();
    std::str::from_utf8(lower).ok()
}

/// `host:port` -> `host`, `[v6]:port` -> `v6`. A bare IPv6 literal (several
/// colons, no brackets) has no port to strip, and a non-numeric "port" means
/// a malformed host, which is left whole so that it matches no host.
fn strip_port(raw: &str) -> &str {
    if let Some(bracketed) = raw.strip_prefix('[') {
        return match bracketed.split_once(']') {
            Some((addr, "")) => addr,
            Some((addr, tail)) if tail.strip_prefix(':').is_some_and(is_port) => addr,
            _ => raw,
        };
    }
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && is_port(port) => host,
        _ => raw,
    }
}

/// Empty is allowed: RFC 3986 permits `host:`.
fn is_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
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
                let p =
                    canonical_prefix(&gen_path(&mut rng, 4)).expect("generated prefixes are valid");
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
}
