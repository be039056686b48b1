//! What the registry hands out: client entries with their live buckets, the
//! bucket hook the integrator implements, and the registry's error types.

use std::sync::Arc;
use std::time::SystemTime;

use super::keys::{self, KeyHash};
use super::model::{ClientView, StoredClient};
use super::store::StoreError;

/// The live per-client rate-limit bucket, supplied by the integrator.
///
/// The registry only creates buckets, reads their level for persistence and the admin
/// view, and passes on config changes; consuming tokens is the proxy's business.
pub trait BucketState: Send + Sync + 'static {
    /// A bucket resuming from a saved level (a new client passes `tokens = capacity`).
    fn new(rate_per_sec: f64, capacity: u32, tokens: f64, last_refill: SystemTime) -> Self
    where
        Self: Sized;
    /// Current `(tokens, last_refill)`, for saving and for the admin view.
    fn snapshot(&self) -> (f64, SystemTime);
    /// Applies a new rate or size without resetting the level.
    fn reconfigure(&self, rate_per_sec: f64, capacity: u32);
}

/// Rate and burst for clients created without their own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientDefaults {
    /// Tokens per second.
    pub rate_per_sec: f64,
    /// Bucket size.
    pub capacity: u32,
}

/// Why a presented key was refused; all map to 401 at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key was presented.
    #[error("missing api key")]
    Missing,
    /// The key matches no client.
    #[error("unknown api key")]
    Unknown,
    /// The client exists but is disabled.
    #[error("client disabled")]
    Disabled,
    /// The client's `expires_at` has passed.
    #[error("client expired")]
    Expired,
}

/// What the admin API can get back; [`RegistryError::status`] picks the HTTP code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// The caller's input broke a rule (bad id, rate, capacity, expiry).
    #[error("invalid client: {0}")]
    Invalid(String),
    /// No such client.
    #[error("client not found: {0}")]
    NotFound(String),
    /// The client id is taken.
    #[error("client already exists: {0}")]
    Conflict(String),
    /// The store could not be reached or refused the write.
    #[error("client store unavailable: {0}")]
    Unavailable(String),
    /// The store holds something this build cannot use.
    #[error("client store invalid: {0}")]
    Internal(String),
}

impl RegistryError {
    /// HTTP status for the admin API response.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(id) => Self::Conflict(id),
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::Unavailable(msg) => Self::Unavailable(msg),
            StoreError::Invalid(msg) => Self::Internal(msg),
        }
    }
}

/// One client as the request path sees it: immutable config plus a shared live bucket.
#[derive(Debug)]
pub struct ClientEntry<B> {
    pub(super) client_id: String,
    pub(super) key_hash: KeyHash,
    pub(super) key_prefix: String,
    pub(super) rate_per_sec: f64,
    pub(super) capacity: u32,
    pub(super) enabled: bool,
    pub(super) expires_at: Option<SystemTime>,
    pub(super) created_at: SystemTime,
    // Shared, not owned: a config edit or sync builds a new entry around the same
    // bucket, so the level survives.
    pub(super) bucket: Arc<B>,
}

impl<B: BucketState> ClientEntry<B> {
    pub(super) fn from_stored(c: &StoredClient, bucket: Arc<B>) -> Self {
        Self {
            client_id: c.client_id.clone(),
            key_hash: c.key_hash,
            key_prefix: c.key_prefix.clone(),
            rate_per_sec: c.rate_per_sec,
            capacity: c.capacity,
            enabled: c.enabled,
            expires_at: c.expires_at,
            created_at: c.created_at,
            bucket,
        }
    }

    pub(super) fn fresh_bucket(c: &StoredClient) -> Arc<B> {
        // A corrupt level must not lock a client out or grant a burst beyond capacity.
        let cap = f64::from(c.capacity);
        let tokens = if c.tokens.is_finite() {
            c.tokens.clamp(0.0, cap)
        } else {
            cap
        };
        Arc::new(B::new(c.rate_per_sec, c.capacity, tokens, c.last_refill))
    }

    pub(super) fn to_stored(&self) -> StoredClient {
        let (tokens, last_refill) = self.bucket.snapshot();
        StoredClient {
            client_id: self.client_id.clone(),
            key_hash: self.key_hash,
            key_prefix: self.key_prefix.clone(),
            rate_per_sec: self.rate_per_sec,
            capacity: self.capacity,
            enabled: self.enabled,
            expires_at: self.expires_at,
            created_at: self.created_at,
            tokens,
            last_refill,
        }
    }

    pub(super) fn same_config(&self, c: &StoredClient) -> bool {
        self.key_hash == c.key_hash
            && self.key_prefix == c.key_prefix
            && self.rate_per_sec == c.rate_per_sec
            && self.capacity == c.capacity
            && self.enabled == c.enabled
            && self.expires_at == c.expires_at
    }

    pub(super) fn view(&self, api_key: Option<String>) -> ClientView {
        let (tokens, last_refill) = self.bucket.snapshot();
        ClientView {
            client_id: self.client_id.clone(),
            api_key: api_key.unwrap_or_else(|| keys::masked(&self.key_prefix)),
            rate_per_sec: self.rate_per_sec,
            capacity: self.capacity,
            tokens,
            last_refill,
            enabled: self.enabled,
            expires_at: self.expires_at,
            created_at: self.created_at,
        }
    }

    /// The client's id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    /// Refill rate in tokens per second.
    pub fn rate_per_sec(&self) -> f64 {
        self.rate_per_sec
    }
    /// Bucket size.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
    /// Whether the key is accepted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
    /// When the key stops being accepted.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
    /// When the client was created.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }
    /// The live rate-limit bucket.
    pub fn bucket(&self) -> &B {
        &self.bucket
    }
}
