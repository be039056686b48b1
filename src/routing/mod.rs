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
mod tests;
