//! SQLite store, the single-edge default (`sqlite://PATH`).
//!
//! One connection behind a mutex is plenty: the request path never reads the
//! database, and admin writes are already serialized by the registry. Every call runs
//! on tokio's blocking pool so disk I/O never stalls a proxy worker. WAL mode lets a
//! second process (a hand-off upgrade, or `sqlite3` in a shell) read while we write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension as _, Row, TransactionBehavior};

use super::model::{from_unix_micros, to_unix_micros, SavedState, StoredClient};
use super::store::{ClientStore, StoreError};

/// How long a write waits for another process's lock before reporting unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema steps, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r"
    CREATE TABLE tollgate_clients (
        client_id      TEXT    NOT NULL PRIMARY KEY,
        key_hash       BLOB    NOT NULL UNIQUE CHECK (length(key_hash) = 32),
        key_prefix     TEXT    NOT NULL,
        rate_per_sec   REAL    NOT NULL CHECK (rate_per_sec > 0),
        capacity       INTEGER NOT NULL CHECK (capacity BETWEEN 1 AND 4294967295),
        enabled        INTEGER NOT NULL,
        expires_at_us  INTEGER,
        created_at_us  INTEGER NOT NULL,
        tokens         REAL    NOT NULL,
        last_refill_us INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE tollgate_meta (
        id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL
    ) STRICT;
    INSERT INTO tollgate_meta (id, generation) VALUES (1, 0);
"];

const SELECT_COLUMNS: &str = "client_id, key_hash, key_prefix, rate_per_sec, capacity, \
     enabled, expires_at_us, created_at_us, tokens, last_refill_us";

/// Client store in a local SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens `path`, creating the file and its parent directories on first start.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        // journal_mode answers with the mode it settled on; anything but WAL means the
        // file lives somewhere WAL cannot work (e.g. some network filesystems).
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{}: sqlite refused WAL mode (got {mode})",
                path.display()
            )));
        }
        // NORMAL is durable across process crashes in WAL mode; only an OS crash can
        // lose the last commits, which for bucket levels and admin edits is acceptable.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the connection from the blocking pool.
    async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| {
                StoreError::Unavailable("sqlite connection poisoned by a panic".to_owned())
            })?;
            op(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite task failed: {e}")))?
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// Maps a write error, turning uniqueness violations into a conflict on `client_id`.
fn write_error(e: rusqlite::Error, client_id: &str) -> StoreError {
    match e.sqlite_error() {
        Some(err)
            if err.code == ErrorCode::ConstraintViolation
                && (err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || err.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) =>
        {
            StoreError::Conflict(client_id.to_owned())
        }
        _ => unavailable(e),
    }
}

fn bump_generation(tx: &rusqlite::Transaction<'_>) -> Result<(), rusqlite::Error> {
    tx.execute(
        "UPDATE tollgate_meta SET generation = generation + 1 WHERE id = 1",
        [],
    )
    .map(drop)
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<Result<StoredClient, StoreError>> {
    let client_id: String = row.get(0)?;
    let key_hash: Vec<u8> = row.get(1)?;
    let capacity: i64 = row.get(4)?;
    let expires_at: Option<i64> = row.get(6)?;
    let decoded = (|| {
        let key_hash = key_hash
            .try_into()
            .map_err(|_| StoreError::Invalid(format!("{client_id}: key_hash is not 32 bytes")))?;
        let capacity = u32::try_from(capacity).map_err(|_| {
            StoreError::Invalid(format!("{client_id}: capacity {capacity} out of range"))
        })?;
        Ok((key_hash, capacity))
    })();
    let (key_hash, capacity) = match decoded {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(StoredClient {
        key_hash,
        key_prefix: row.get(2)?,
        rate_per_sec: row.get(3)?,
        capacity,
        enabled: row.get(5)?,
        expires_at: expires_at.map(from_unix_micros),
        created_at: from_unix_micros(row.get(7)?),
        tokens: row.get(8)?,
        last_refill: from_unix_micros(row.get(9)?),
        client_id,
    }))
}

#[async_trait]
impl ClientStore for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            // IMMEDIATE takes the write lock up front, so two processes starting on
            // the same file cannot both decide to run the same step.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let applied: i64 = tx
                .query_row("PRAGMA user_version", [], |row| row.get(0))
                .map_err(unavailable)?;
            let known = MIGRATIONS.len();
            let applied = usize::try_from(applied)
                .ok()
                .filter(|&n| n <= known)
                .ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "database schema version {applied} is newer than this build ({known})"
                    ))
                })?;
            for step in &MIGRATIONS[applied..] {
                tx.execute_batch(step).map_err(unavailable)?;
            }
            tx.pragma_update(None, "user_version", known as i64)
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<StoredClient>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLUMNS} FROM tollgate_clients ORDER BY client_id"
                ))
                .map_err(unavailable)?;
            let rows = stmt.query_map([], read_row).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(unavailable)??);
            }
            Ok(out)
        })
        .await
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        self.run(|conn| {
            let generation: Option<i64> = conn
                .query_row(
                    "SELECT generation FROM tollgate_meta WHERE id = 1",
                    [],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            generation
                .and_then(|g| u64::try_from(g).ok())
                .ok_or_else(|| StoreError::Invalid("tollgate_meta row missing".to_owned()))
        })
        .await
    }

    async fn insert(&self, client: &StoredClient) -> Result<(), StoreError> {
        let c = client.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            tx.execute(
                &format!(
                    "INSERT INTO tollgate_clients ({SELECT_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    c.client_id,
                    c.key_hash.as_slice(),
                    c.key_prefix,
                    c.rate_per_sec,
                    i64::from(c.capacity),
                    c.enabled,
                    c.expires_at.map(to_unix_micros),
                    to_unix_micros(c.created_at),
                    c.tokens,
                    to_unix_micros(c.last_refill),
                ],
            )
            .map_err(|e| write_error(e, &c.client_id))?;
            bump_generation(&tx).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn update(&self, client: &StoredClient) -> Result<(), StoreError> {
        let c = client.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let changed = tx
                .execute(
                    "UPDATE tollgate_clients SET key_hash = ?2, key_prefix = ?3, \
                     rate_per_sec = ?4, capacity = ?5, enabled = ?6, expires_at_us = ?7 \
                     WHERE client_id = ?1",
                    params![
                        c.client_id,
                        c.key_hash.as_slice(),
                        c.key_prefix,
                        c.rate_per_sec,
                        i64::from(c.capacity),
                        c.enabled,
                        c.expires_at.map(to_unix_micros),
                    ],
                )
                .map_err(|e| write_error(e, &c.client_id))?;
            if changed == 0 {
                return Err(StoreError::NotFound(c.client_id));
            }
            bump_generation(&tx).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn delete(&self, client_id: &str) -> Result<(), StoreError> {
        let id = client_id.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let changed = tx
                .execute("DELETE FROM tollgate_clients WHERE client_id = ?1", [&id])
                .map_err(unavailable)?;
            if changed == 0 {
                return Err(StoreError::NotFound(id));
            }
            bump_generation(&tx).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn save_states(&self, states: &[SavedState]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let states = states.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE tollgate_clients SET tokens = ?2, last_refill_us = ?3 \
                         WHERE client_id = ?1",
                    )
                    .map_err(unavailable)?;
                for s in &states {
                    stmt.execute(params![
                        s.client_id,
                        s.tokens,
                        to_unix_micros(s.last_refill)
                    ])
                    .map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Proves the store creates missing parent directories and the file, in WAL mode,
    /// and that migrating twice is harmless.
    #[tokio::test]
    async fn open_creates_file_in_wal_mode_and_migrates_idempotently() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/deeper/tollgate.db");
        let store = SqliteStore::open(&path).expect("open");
        assert!(path.exists());
        store.migrate().await.expect("first migrate");
        store.migrate().await.expect("second migrate");
        assert_eq!(store.generation().await.expect("generation"), 0);

        let probe = Connection::open(&path).expect("probe");
        let mode: String = probe
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let version: i64 = probe
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    /// Proves a file written by a newer build is refused instead of being downgraded.
    #[tokio::test]
    async fn migrate_refuses_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).expect("open");
        store.migrate().await.expect("migrate");
        Connection::open(&path)
            .expect("probe")
            .pragma_update(None, "user_version", 99)
            .expect("bump");
        assert!(matches!(
            store.migrate().await,
            Err(StoreError::Invalid(msg)) if msg.contains("newer")
        ));
    }
}
