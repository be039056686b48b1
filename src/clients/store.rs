//! The storage contract shared by the SQLite and PostgreSQL backends.
//!
//! Fleet sync works on a whole-table diff gated by a generation counter: every
//! config write (insert, update, delete) bumps a single `generation` row in the
//! same transaction, and `save_states` does not. An edge reads the counter on
//! each sync and lists the table only when it moved. This needs no tombstones and
//! cannot miss a change the way a "rows with version > N" scan can when
//! concurrent transactions commit out of sequence order.
//!
//! A consequence for operators: a hand edit of `tollgate_clients` reaches running
//! edges only once `tollgate_meta.generation` is bumped as well
//! (`UPDATE tollgate_meta SET generation = generation + 1`).

use std::sync::Arc;

use async_trait::async_trait;

use super::model::{SavedState, StoredClient};
use super::postgres::PgStore;
use super::sqlite::SqliteStore;

/// What a store can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// A client with this id (or key hash) already exists.
    #[error("client already exists: {0}")]
    Conflict(String),
    /// No client with this id.
    #[error("client not found: {0}")]
    NotFound(String),
    /// The database could not be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bad store URL, a newer schema than this build knows, or a corrupt row.
    #[error("invalid store: {0}")]
    Invalid(String),
}

/// Persistent home of the client table. Implementations must be safe to share
/// between edges: every write is one transaction.
#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Creates or upgrades the schema; idempotent and safe to run concurrently.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Every client, ordered by `client_id`.
    async fn list(&self) -> Result<Vec<StoredClient>, StoreError>;

    /// Counter bumped by every config write; unchanged means `list` would be too.
    async fn generation(&self) -> Result<u64, StoreError>;

    /// Adds a client; [`StoreError::Conflict`] if the id is taken.
    async fn insert(&self, client: &StoredClient) -> Result<(), StoreError>;

    /// Replaces a client's config and key (not its bucket level, which
    /// `save_states` owns); [`StoreError::NotFound`] if absent.
    async fn update(&self, client: &StoredClient) -> Result<(), StoreError>;

    /// Removes a client; [`StoreError::NotFound`] if absent.
    async fn delete(&self, client_id: &str) -> Result<(), StoreError>;

    /// Writes bucket levels in one transaction; ids that no longer exist are skipped.
    async fn save_states(&self, states: &[SavedState]) -> Result<(), StoreError>;
}

/// Opens the store named by `url`: `sqlite://PATH` or `postgres://…`/`postgresql://…`.
///
/// SQLite opens (and creates) its file here; PostgreSQL connects lazily on first use,
/// so an edge can start while the database is still coming up. Neither migrates:
/// `Registry::load` does that.
pub fn open_store(url: &str) -> Result<Arc<dyn ClientStore>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Invalid(
                "sqlite url needs a path, e.g. sqlite://data/tollgate.db".to_owned(),
            ));
        }
        return Ok(Arc::new(SqliteStore::open(path)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgStore::new(url)?));
    }
    Err(StoreError::Invalid(format!(
        "unsupported store url {:?}: expected sqlite://PATH or postgres://USER@HOST/DB",
        redact(url)
    )))
}

/// Hides a password in a URL echoed back in an error message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Proves unknown schemes and empty paths are rejected as Invalid with a hint.
    #[test]
    fn open_store_rejects_bad_urls() {
        for url in ["", "mysql://db/x", "sqlite://", "data/tollgate.db"] {
            match open_store(url) {
                Err(StoreError::Invalid(msg)) => assert!(msg.contains("sqlite"), "{msg}"),
                Err(other) => panic!("{url}: unexpected error {other}"),
                Ok(_) => panic!("{url}: accepted"),
            }
        }
        assert!(matches!(
            open_store("postgres://u@h:notaport/db"),
            Err(StoreError::Invalid(_))
        ));
    }

    /// Proves a password in a rejected URL does not reach the error message.
    #[test]
    fn rejected_url_hides_password() {
        let Err(StoreError::Invalid(msg)) = open_store("mysql://app:s3cret@db/x") else {
            panic!("accepted");
        };
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(msg.contains("app:***@db/x"), "{msg}");
    }
}
