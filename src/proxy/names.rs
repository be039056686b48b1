//! The header names Tollgate sets or reads, parsed once.
//!
//! Inserting a name given as a string makes Pingora parse it into a new `HeaderName` and copy
//! it twice (value map and case map): two allocations per header, seven headers per request.
//! A [`StaticHeaderName`] (a patch to Pingora's header types, vendor/README.md) is inserted as
//! is, and sent in the conventional case on HTTP/1.

use http::HeaderValue;
use pingora::http::StaticHeaderName;

pub static X_FORWARDED_FOR: StaticHeaderName =
    StaticHeaderName::new("x-forwarded-for", "X-Forwarded-For");
pub static X_FORWARDED_PROTO: StaticHeaderName =
    StaticHeaderName::new("x-forwarded-proto", "X-Forwarded-Proto");
pub static X_FORWARDED_HOST: StaticHeaderName =
    StaticHeaderName::new("x-forwarded-host", "X-Forwarded-Host");
pub static X_REQUEST_ID: StaticHeaderName = StaticHeaderName::new("x-request-id", "X-Request-Id");
pub static X_CLIENT_ID: StaticHeaderName = StaticHeaderName::new("x-client-id", "X-Client-Id");
pub static RATELIMIT_POLICY: StaticHeaderName =
    StaticHeaderName::new("ratelimit-policy", "RateLimit-Policy");
pub static RATELIMIT: StaticHeaderName = StaticHeaderName::new("ratelimit", "RateLimit");
pub static RETRY_AFTER: StaticHeaderName = StaticHeaderName::new("retry-after", "Retry-After");

/// Marks a response header value that differs on every response (the request id, the
/// remaining quota) as never indexed. HTTP/1 ignores the mark; HTTP/2's HPACK encoder then
/// sends it as a literal instead of inserting it into the connection's dynamic table, where it
/// would never be referenced again and would only evict entries that repeat (each insertion
/// also costs the client's decoder an eviction).
pub fn never_indexed(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    /// A static name is found by its lowercase name and written in its own case on HTTP/1,
    /// replacing any value the client sent under another case.
    #[test]
    fn static_names_insert_replace_and_keep_their_case() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.append_header("x-REQUEST-id", "from-client")
            .expect("header");
        req.insert_header(&X_REQUEST_ID, "abc").expect("header");
        req.insert_header(&X_FORWARDED_FOR, "192.0.2.1")
            .expect("header");
        assert_eq!(req.headers.get(X_REQUEST_ID.name()).unwrap(), "abc");
        assert_eq!(req.headers.get_all("x-request-id").iter().count(), 1);
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("ascii");
        assert!(wire.contains("X-Request-Id: abc\r\n"), "{wire}");
        assert!(wire.contains("X-Forwarded-For: 192.0.2.1\r\n"), "{wire}");
        assert!(!wire.contains("from-client"), "{wire}");
    }
}
