//! API keys: how they are minted, hashed for storage and masked for display.
//!
//! A key is `tg_` followed by 32 random bytes in unpadded base64url (46 characters,
//! 256 bits of entropy). Only its SHA-256 digest and its first few characters are
//! ever stored; the plaintext exists once, in the response that created or rotated it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Fixed prefix of every key, so leaked keys are easy to recognise in logs and scanners.
pub const KEY_PREFIX: &str = "tg_";

/// Random bytes per key; 256 bits keeps guessing hopeless even without rate limits.
pub const SECRET_BYTES: usize = 32;

/// Length of an encoded key: the prefix plus 43 base64url characters.
pub const KEY_LEN: usize = KEY_PREFIX.len() + (SECRET_BYTES * 4).div_ceil(3);

/// Characters of the key kept in the clear for the masked view (`tg_ab12c…`).
pub const DISPLAY_PREFIX_LEN: usize = 8;

/// SHA-256 digest of a presented key; the only form in which keys are indexed and stored.
pub type KeyHash = [u8; 32];

/// A freshly minted key: the plaintext to hand out once, and what gets stored.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The full key, returned to the caller exactly once.
    pub plaintext: String,
    /// SHA-256 of `plaintext`.
    pub hash: KeyHash,
    /// The first [`DISPLAY_PREFIX_LEN`] characters of `plaintext`.
    pub display_prefix: String,
}

/// Mints a new key from the thread-local CSPRNG (ChaCha seeded from the OS).
pub fn generate() -> GeneratedKey {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let plaintext = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = hash_key(&plaintext);
    let display_prefix = plaintext.chars().take(DISPLAY_PREFIX_LEN).collect();
    GeneratedKey {
        plaintext,
        hash,
        display_prefix,
    }
}

/// Hashes a presented key for index lookup.
///
/// A plain (unsalted) digest is enough: keys carry 256 random bits, so there is no
/// dictionary to precompute, and a fixed digest is what lets the request path find a
/// client with one hash-map lookup instead of a scan.
pub fn hash_key(presented: &str) -> KeyHash {
    Sha256::digest(presented.as_bytes()).into()
}

/// Cheap shape check done before hashing, so junk headers cost no SHA-256.
pub fn looks_like_key(presented: &str) -> bool {
    presented.len() == KEY_LEN && presented.starts_with(KEY_PREFIX)
}

/// The masked form shown by `get`/`list`: the stored prefix and an ellipsis.
pub fn masked(display_prefix: &str) -> String {
    format!("{display_prefix}…")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Proves keys have the documented shape and carry at least 128 bits of entropy.
    #[test]
    fn generated_key_has_prefix_and_256_random_bits() {
        let key = generate();
        assert_eq!(key.plaintext.len(), KEY_LEN);
        assert!(key.plaintext.starts_with(KEY_PREFIX));
        let secret = URL_SAFE_NO_PAD
            .decode(&key.plaintext[KEY_PREFIX.len()..])
            .expect("base64url body");
        assert_eq!(secret.len(), SECRET_BYTES);
        assert!(secret.len() * 8 >= 128);
        assert!(looks_like_key(&key.plaintext));
    }

    /// Proves two keys never repeat and the stored hash is the SHA-256 of the plaintext.
    #[test]
    fn keys_are_unique_and_hash_matches_plaintext() {
        let a = generate();
        let b = generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.hash, hash_key(&a.plaintext));
        assert_eq!(a.display_prefix, a.plaintext[..DISPLAY_PREFIX_LEN]);
        assert_eq!(masked(&a.display_prefix), format!("{}…", a.display_prefix));
    }

    /// Proves the shape check rejects wrong prefixes and lengths without hashing.
    #[test]
    fn shape_check_rejects_foreign_strings() {
        assert!(!looks_like_key(""));
        assert!(!looks_like_key("Bearer abc"));
        let key = generate().plaintext;
        assert!(!looks_like_key(&key[1..]));
        assert!(!looks_like_key(&format!("xx_{}", &key[3..])));
    }
}
