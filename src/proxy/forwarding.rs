//! Who the client is, and the forwarding headers we tell the backend.
//!
//! [`TrustedProxies::client_ip`] is the one client-ip function: everything that keys on the
//! client (logs, consistent hashing, rate limits) uses it, so a spoofed `X-Forwarded-For` from
//! an untrusted peer is ignored everywhere at once.

use super::names;
use crate::logging::IpText;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;

/// Peers allowed to tell us who the client is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address: the socket peer, unless it is a trusted proxy, in which case the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (the standard
    /// right-to-left walk, so a client cannot prepend a fake address). `headers` are looked
    /// at only for a trusted peer.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let Some(xff) = incoming_forwarded_for(headers) else {
            return peer;
        };
        let mut client = peer;
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = canonical(ip);
                    if !self.contains(client) {
                        return client;
                    }
                }
                // A malformed hop ends what we can trust.
                Err(_) => return client,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The `X-Forwarded-For` value to send upstream: the trusted chain plus the peer, or only the
/// client when the peer is not trusted (its claims are dropped, not passed on).
pub fn forwarded_for(trusted: &TrustedProxies, peer: IpAddr, headers: &HeaderMap) -> HeaderValue {
    let peer = canonical(peer);
    let prev = trusted
        .contains(peer)
        .then(|| incoming_forwarded_for(headers))
        .flatten()
        .map(str::trim)
        .filter(|prev| !prev.is_empty());
    let ip = IpText::new(peer);
    // Exactly as long as the value, so that `Bytes` takes the vector over without a second
    // allocation for its shared state.
    let mut out = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + ip.as_bytes().len());
    if let Some(prev) = prev {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip.as_bytes());
    // Cannot fail: `incoming` came from a header value and an address is ASCII.
    HeaderValue::from_maybe_shared(Bytes::from(out)).unwrap_or(EMPTY)
}

/// The request's `X-Forwarded-For`, when it is text.
fn incoming_forwarded_for(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(names::X_FORWARDED_FOR.name())?;
    std::str::from_utf8(value.as_bytes()).ok()
}

/// An incoming request id we keep: short, visible ASCII, from a trusted peer.
fn acceptable_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 128 && value.iter().all(|b| b.is_ascii_graphic())
}

/// A request's id: kept from a trusted peer or generated. It is visible ASCII, so it is both
/// a `str` (logs) and a header value, shared (not copied) by the upstream request and the
/// response, and marked never-indexed for HTTP/2 ([`names::never_indexed`]): it differs on
/// every request.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A new random id (128 bits, hex), formatted without `fmt` machinery.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut n = rand::random::<u128>();
        let mut out = [0u8; 32];
        for b in out.iter_mut().rev() {
            *b = HEX[(n & 0xf) as usize];
            n >>= 4;
        }
        // Owned by its one shared allocation: clones (upstream request, response) only count
        // references, where a copied slice would be moved to a shared one on its first clone.
        let id = HeaderValue::from_maybe_shared(Bytes::from_owner(out)).unwrap_or(EMPTY);
        RequestId(names::never_indexed(id))
    }

    /// The id a client sent, if it is acceptable as one.
    pub fn keep(value: &HeaderValue) -> Option<Self> {
        acceptable_request_id(value.as_bytes())
            .then(|| RequestId(names::never_indexed(value.clone())))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }

    /// The id as a header value (a reference-counted copy).
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

const EMPTY: HeaderValue = HeaderValue::from_static("");

impl Default for RequestId {
    /// No id yet (before the request header was read).
    fn default() -> Self {
        RequestId(EMPTY)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// Request headers with this `X-Forwarded-For`, or none.
    fn xff(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(names::X_FORWARDED_FOR.name(), v.parse().expect("value"));
        }
        headers
    }

    /// An untrusted peer's X-Forwarded-For is ignored: the client is the peer.
    #[test]
    fn spoofed_forwarded_for_from_untrusted_peer_is_ignored() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), &xff(Some("1.2.3.4"))),
            ip("203.0.113.9")
        );
    }

    /// Behind trusted proxies, the right-most untrusted hop is the client.
    #[test]
    fn trusted_chain_yields_rightmost_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let chain = xff(Some("6.6.6.6, 198.51.100.7, 10.1.1.1"));
        assert_eq!(t.client_ip(ip("10.0.0.2"), &chain), ip("198.51.100.7"));
    }

    /// A malformed entry stops the walk at the last address we could trust.
    #[test]
    fn malformed_hop_stops_the_walk() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), &xff(Some("junk, 10.3.3.3"))),
            ip("10.3.3.3")
        );
    }

    /// IPv4-mapped IPv6 peers match IPv4 CIDRs.
    #[test]
    fn mapped_ipv6_matches_ipv4_cidr() {
        let t = trusted(&["127.0.0.0/8"]);
        assert!(t.contains(ip("::ffff:127.0.0.1")));
    }

    /// The forwarded chain is extended for trusted peers and reset for untrusted ones.
    #[test]
    fn forwarded_for_extends_only_trusted_chains() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            forwarded_for(&t, ip("10.0.0.2"), &xff(Some("1.1.1.1"))),
            "1.1.1.1, 10.0.0.2"
        );
        assert_eq!(
            forwarded_for(&t, ip("8.8.8.8"), &xff(Some("1.1.1.1"))),
            "8.8.8.8"
        );
        assert_eq!(
            forwarded_for(&t, ip("10.0.0.2"), &xff(Some("  "))),
            "10.0.0.2"
        );
        assert_eq!(forwarded_for(&t, ip("10.0.0.2"), &xff(None)), "10.0.0.2");
        assert_eq!(
            forwarded_for(&t, ip("2001:db8::1"), &xff(None)),
            "2001:db8::1"
        );
        assert_eq!(
            forwarded_for(&t, ip("::ffff:10.0.0.2"), &xff(None)),
            "10.0.0.2"
        );
    }

    /// Request ids are 32 hex chars and kept only when well-formed.
    #[test]
    fn request_ids_are_validated() {
        let id = RequestId::generate();
        assert_eq!(id.as_str().len(), 32, "{id}");
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id.as_str(), RequestId::generate().as_str());
        assert!(RequestId::keep(&HeaderValue::from_static("abc-123")).is_some());
        assert!(RequestId::keep(&HeaderValue::from_static("has space")).is_none());
        assert!(acceptable_request_id(b"abc-123"));
        assert!(!acceptable_request_id(b"has space"));
        assert!(!acceptable_request_id(&[b'a'; 200]));
    }
}
