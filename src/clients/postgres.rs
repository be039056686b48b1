//! PostgreSQL store, for a fleet of edges sharing one client table (`postgres://…`).
//!
//! One `tokio-postgres` connection per edge, opened lazily and reopened after it
//! breaks. A pool (deadpool) would buy nothing here: the request path never queries,
//! admin writes are serialized by the registry, and the periodic save/sync calls are
//! one statement each, so a single connection is never the bottleneck, and a fleet
//! of N edges holds exactly N server connections.
//!
//! The connection task runs on whichever runtime made the call that opened it. If that
//! runtime goes away the connection dies with it, and the next call reconnects.
//!
//! TLS follows libpq's `sslmode` and `sslrootcert` URL parameters (see [`super::pg_tls`]).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::model::{SavedState, StoredClient};
use super::pg_tls::{self, Verify};
use super::store::{ClientStore, StoreError};

/// Default for URLs that set no `connect_timeout`, so a dead host fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound on any one call; a hung server must not wedge admin writes forever.
const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// `pg_advisory_xact_lock` key ("tollgate" in ASCII) serializing concurrent migrations.
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// Schema steps, applied in order; `tollgate_schema.version` records how many ran.
const MIGRATIONS: &[&str] = &[r"
    CREATE TABLE tollgate_clients (
        client_id    TEXT             PRIMARY KEY,
        key_hash     BYTEA            NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
        key_prefix   TEXT             NOT NULL,
        rate_per_sec DOUBLE PRECISION NOT NULL CHECK (rate_per_sec > 0),
        capacity     BIGINT           NOT NULL CHECK (capacity BETWEEN 1 AND 4294967295),
        enabled      BOOLEAN          NOT NULL,
        expires_at   TIMESTAMPTZ,
        created_at   TIMESTAMPTZ      NOT NULL,
        tokens       DOUBLE PRECISION NOT NULL,
        last_refill  TIMESTAMPTZ      NOT NULL
    );
    CREATE TABLE tollgate_meta (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        generation BIGINT  NOT NULL
    );
    INSERT INTO tollgate_meta (id, generation) VALUES (1, 0);
"];

const SELECT_COLUMNS: &str = "client_id, key_hash, key_prefix, rate_per_sec, capacity, \
     enabled, expires_at, created_at, tokens, last_refill";

const BUMP_GENERATION: &str = "UPDATE tollgate_meta SET generation = generation + 1 WHERE id = 1";

/// An error and its causes, e.g. "error performing TLS handshake: invalid peer certificate:
/// UnknownIssuer" or "db error: ERROR: new row violates check constraint ...", where the
/// `Display` of a `tokio_postgres::Error` says only the first part.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Client store in a PostgreSQL database.
pub struct PgStore {
    config: Config,
    tls: MakeRustlsConnect,
    /// TLS without a root to check the server's certificate against (`prefer`, `require`).
    unverified_tls: bool,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config's own Debug would show the password.
        f.debug_struct("PgStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish()
    }
}

impl PgStore {
    /// Parses `url` (a libpq URL, TLS parameters included); connects on first use.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let tls = pg_tls::from_url(url)?;
        let mut config: Config = tls
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("invalid postgres url: {}", chain(&e))))?;

        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tollgate");
        }
        Ok(Self {
            unverified_tls: tls.verify == Verify::Nothing
                && config.get_ssl_mode() != SslMode::Disable,
            config,
            tls: tls.connector,
            client: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        if self.unverified_tls {
            log::warn!(
                "postgres store: the server's certificate is not verified; add \
                 sslmode=verify-full&sslrootcert=PATH to the store url to verify it"
            );
        }
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("postgres connect: {}", chain(&e))))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::warn!("postgres client connection closed: {}", chain(&e));
            }
        });
        Ok(client)
    }

    /// Runs `op` on the live connection, opening one first if there is none or the
    /// last one broke. A broken or timed-out connection is dropped so the next call
    /// starts afresh instead of failing forever.
    ///
    /// Callers move owned copies of their arguments into `op`: with a borrowed
    /// capture, rustc cannot yet prove the future `Send` for every lifetime, which
    /// `async_trait` requires.
    async fn with_client<T>(
        &self,
        replay: Replay,
        op: impl AsyncFn(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.lock().await;
        let mut may_replay = replay == Replay::Safe;
        loop {
            let client = match slot.take() {
                Some(client) if !client.is_closed() => client,
                _ => self.connect().await?,
            };
            let client = slot.insert(client);
            let Ok(result) = tokio::time::timeout(OP_TIMEOUT, op(client)).await else {
                *slot = None;
                return Err(StoreError::Unavailable(format!(
                    "postgres call timed out after {OP_TIMEOUT:?}"
                )));
            };
            if client.is_closed() {
                *slot = None;
                // A connection the server closed while idle (restart, failover, idle
                // timeout) is only noticed on use; one replay on a fresh connection
                // hides that from callers whose operation is safe to repeat.
                if result.is_err() && may_replay {
                    may_replay = false;
                    continue;
                }
            }
            return result;
        }
    }
}

/// Whether an operation may run twice if the connection dies under it. Inserts and
/// deletes may not: the first attempt may have committed, and a replay would turn
/// that success into a spurious conflict or not-found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    Safe,
    Never,
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::CHECK_VIOLATION) {
        StoreError::Invalid(format!("postgres: {}", chain(&e)))
    } else {
        StoreError::Unavailable(format!("postgres: {}", chain(&e)))
    }
}

/// Maps a write error, turning uniqueness violations into a conflict on `client_id`.
fn write_error(e: tokio_postgres::Error, client_id: &str) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(client_id.to_owned())
    } else {
        pg_error(e)
    }
}

fn read_row(row: &Row) -> Result<StoredClient, StoreError> {
    let get_err =
        |e: tokio_postgres::Error| StoreError::Invalid(format!("postgres row: {}", chain(&e)));
    let client_id: String = row.try_get(0).map_err(get_err)?;
    let key_hash: Vec<u8> = row.try_get(1).map_err(get_err)?;
    let capacity: i64 = row.try_get(4).map_err(get_err)?;
    Ok(StoredClient {
        key_hash: key_hash
            .try_into()
            .map_err(|_| StoreError::Invalid(format!("{client_id}: key_hash is not 32 bytes")))?,
        key_prefix: row.try_get(2).map_err(get_err)?,
        rate_per_sec: row.try_get(3).map_err(get_err)?,
        capacity: u32::try_from(capacity).map_err(|_| {
            StoreError::Invalid(format!("{client_id}: capacity {capacity} out of range"))
        })?,
        enabled: row.try_get(5).map_err(get_err)?,
        expires_at: row.try_get(6).map_err(get_err)?,
        created_at: row.try_get(7).map_err(get_err)?,
        tokens: row.try_get(8).map_err(get_err)?,
        last_refill: row.try_get(9).map_err(get_err)?,
        client_id,
    })
}

#[async_trait]
impl ClientStore for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.with_client(Replay::Safe, async |client: &mut Client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            // Held until commit: edges starting together take turns, and each one
            // after the first finds the schema current and does nothing.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(pg_error)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS tollgate_schema (\
                     id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
            )
            .await
            .map_err(pg_error)?;
            let applied: i32 = tx
                .query_opt("SELECT version FROM tollgate_schema WHERE id = 1", &[])
                .await
                .map_err(pg_error)?
                .map(|row| row.try_get(0))
                .transpose()
                .map_err(pg_error)?
                .unwrap_or(0);
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
                tx.batch_execute(step).await.map_err(pg_error)?;
            }
            let known = i32::try_from(known)
                .map_err(|_| StoreError::Invalid("too many migrations".to_owned()))?;
            tx.execute(
                "INSERT INTO tollgate_schema (id, version) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                &[&known],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<StoredClient>, StoreError> {
        self.with_client(Replay::Safe, async |client: &mut Client| {
            let rows = client
                .query(
                    &format!("SELECT {SELECT_COLUMNS} FROM tollgate_clients ORDER BY client_id"),
                    &[],
                )
                .await
                .map_err(pg_error)?;
            rows.iter().map(read_row).collect()
        })
        .await
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        self.with_client(Replay::Safe, async |client: &mut Client| {
            let row = client
                .query_opt("SELECT generation FROM tollgate_meta WHERE id = 1", &[])
                .await
                .map_err(pg_error)?
                .ok_or_else(|| StoreError::Invalid("tollgate_meta row missing".to_owned()))?;
            let generation: i64 = row.try_get(0).map_err(pg_error)?;
            u64::try_from(generation)
                .map_err(|_| StoreError::Invalid(format!("negative generation {generation}")))
        })
        .await
    }

    async fn insert(&self, c: &StoredClient) -> Result<(), StoreError> {
        let c = c.clone();
        self.with_client(Replay::Never, async move |client: &mut Client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute(
                &format!(
                    "INSERT INTO tollgate_clients ({SELECT_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ),
                &[
                    &c.client_id,
                    &c.key_hash.as_slice(),
                    &c.key_prefix,
                    &c.rate_per_sec,
                    &i64::from(c.capacity),
                    &c.enabled,
                    &c.expires_at,
                    &c.created_at,
                    &c.tokens,
                    &c.last_refill,
                ],
            )
            .await
            .map_err(|e| write_error(e, &c.client_id))?;
            tx.execute(BUMP_GENERATION, &[]).await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    async fn update(&self, c: &StoredClient) -> Result<(), StoreError> {
        let c = c.clone();
        self.with_client(Replay::Safe, async move |client: &mut Client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            let changed = tx
                .execute(
                    "UPDATE tollgate_clients SET key_hash = $2, key_prefix = $3, \
                     rate_per_sec = $4, capacity = $5, enabled = $6, expires_at = $7 \
                     WHERE client_id = $1",
                    &[
                        &c.client_id,
                        &c.key_hash.as_slice(),
                        &c.key_prefix,
                        &c.rate_per_sec,
                        &i64::from(c.capacity),
                        &c.enabled,
                        &c.expires_at,
                    ],
                )
                .await
                .map_err(|e| write_error(e, &c.client_id))?;
            if changed == 0 {
                return Err(StoreError::NotFound(c.client_id.clone()));
            }
            tx.execute(BUMP_GENERATION, &[]).await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    async fn delete(&self, client_id: &str) -> Result<(), StoreError> {
        let client_id = client_id.to_owned();
        self.with_client(Replay::Never, async move |client: &mut Client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            let changed = tx
                .execute(
                    "DELETE FROM tollgate_clients WHERE client_id = $1",
                    &[&client_id.as_str()],
                )
                .await
                .map_err(pg_error)?;
            if changed == 0 {
                return Err(StoreError::NotFound(client_id.clone()));
            }
            tx.execute(BUMP_GENERATION, &[]).await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    async fn save_states(&self, states: &[SavedState]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = states.iter().map(|s| s.client_id.clone()).collect();
        let tokens: Vec<f64> = states.iter().map(|s| s.tokens).collect();
        let refills: Vec<SystemTime> = states.iter().map(|s| s.last_refill).collect();
        // One statement over parallel arrays: a single round trip and a single
        // (implicit) transaction however many clients there are.
        self.with_client(Replay::Safe, async move |client: &mut Client| {
            client
                .execute(
                    "UPDATE tollgate_clients AS c \
                     SET tokens = s.tokens, last_refill = s.last_refill \
                     FROM UNNEST($1::text[], $2::float8[], $3::timestamptz[]) \
                          AS s(client_id, tokens, last_refill) \
                     WHERE c.client_id = s.client_id",
                    &[&ids, &tokens, &refills],
                )
                .await
                .map(drop)
                .map_err(pg_error)
        })
        .await
    }
}
