//! Rate-limit keys and the allocation-free lookup path for keyed tables.
//!
//! A table stores [`StoredKey`]s (owned, so `Str` keys are copied once, on insert) but is
//! probed with a borrowed [`Key`]. std's `HashMap::get` only accepts a `Q` that the stored key
//! can `Borrow` as, and an owned enum cannot lend out a `Key<'a>` by reference, so both sides
//! are viewed through the `Lookup` trait object instead (the classic "borrowed compound key"
//! trick). The 64-bit hash is computed once per decision with the table's random seed and
//! stored next to the key; the map itself uses a pass-through hasher, so lookups neither
//! allocate nor hash twice.

use std::borrow::Borrow;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;

/// A rate-limit key produced by the caller (`ip`, `client`, `header:NAME`, ...).
///
/// `Key::Ip` and `Key::Str` never compare equal, even for `Str("192.0.2.1")`: a policy should
/// extract its keys in one form. `Str` keys are stored verbatim when first seen, so callers
/// should bound their length (e.g. hash very long header values themselves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// Client IP; the hot path, stored inline without allocation.
    Ip(IpAddr),
    /// Any other caller-extracted string (API client id, header value, ...).
    Str(&'a str),
}

impl Hash for Key<'_> {
    // Hand-written so that an IPv4 key is one tag byte plus one u32 write, which keeps the
    // per-decision hash cheap; the tag keeps the three shapes in separate hash spaces.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::Ip(IpAddr::V4(a)) => {
                state.write_u8(4);
                state.write_u32(u32::from(*a));
            }
            Key::Ip(IpAddr::V6(a)) => {
                state.write_u8(6);
                state.write_u128(u128::from(*a));
            }
            Key::Str(s) => {
                state.write_u8(0);
                state.write(s.as_bytes());
            }
        }
    }
}

impl From<IpAddr> for Key<'_> {
    fn from(ip: IpAddr) -> Self {
        Key::Ip(ip)
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Self {
        Key::Str(s)
    }
}

#[derive(Debug)]
enum OwnedKey {
    Ip(IpAddr),
    Str(Box<str>),
}

/// A key as stored in a table, with its precomputed seeded hash.
#[derive(Debug)]
pub(crate) struct StoredKey {
    hash: u64,
    key: OwnedKey,
}

impl StoredKey {
    pub(crate) fn hash64(&self) -> u64 {
        self.hash
    }
}

/// A borrowed key plus its hash, used to probe a table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe<'a> {
    pub(crate) hash: u64,
    pub(crate) key: Key<'a>,
}

impl Probe<'_> {
    /// The only allocation on the keyed path, and only for a `Str` key not yet in the table.
    pub(crate) fn to_stored(self) -> StoredKey {
        let key = match self.key {
            Key::Ip(ip) => OwnedKey::Ip(ip),
            Key::Str(s) => OwnedKey::Str(s.into()),
        };
        StoredKey {
            hash: self.hash,
            key,
        }
    }

    pub(crate) fn as_lookup(&self) -> &dyn Lookup {
        self
    }
}

/// Common view of stored and probing keys; see the module docs for why this is a trait.
pub(crate) trait Lookup {
    fn hash64(&self) -> u64;
    fn key(&self) -> Key<'_>;
}

impl Lookup for StoredKey {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn key(&self) -> Key<'_> {
        match &self.key {
            OwnedKey::Ip(ip) => Key::Ip(*ip),
            OwnedKey::Str(s) => Key::Str(s),
        }
    }
}

impl Lookup for Probe<'_> {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn key(&self) -> Key<'_> {
        self.key
    }
}

impl Hash for dyn Lookup + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash64());
    }
}

impl PartialEq for dyn Lookup + '_ {
    fn eq(&self, other: &Self) -> bool {
        // Comparing the hashes first rejects almost every non-match without touching strings.
        self.hash64() == other.hash64() && self.key() == other.key()
    }
}

impl Eq for dyn Lookup + '_ {}

// Must agree with `Hash for dyn Lookup`, or `get` through the borrow would miss.
impl Hash for StoredKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for StoredKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn Lookup) == (other as &dyn Lookup)
    }
}

impl Eq for StoredKey {}

impl<'a> Borrow<dyn Lookup + 'a> for StoredKey {
    fn borrow(&self) -> &(dyn Lookup + 'a) {
        self
    }
}

/// Hasher for maps keyed by [`StoredKey`]: the key already carries a seeded 64-bit hash.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    // Never reached through `StoredKey`/`Lookup`; kept total (FNV-1a) rather than panicking.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub(crate) type PassThroughBuild = BuildHasherDefault<PassThrough>;
