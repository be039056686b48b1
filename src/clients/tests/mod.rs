//! Registry and store tests against real SQLite files and a real PostgreSQL server.
//!
//! PostgreSQL tests create a database of their own (`tg_test_<random>`) through the
//! maintenance database named by `TOLLGATE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and drop it when done, even on panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contract;
mod failure;
mod fleet;
mod lifecycle;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rand::RngCore as _;
use tokio_postgres::NoTls;

use super::{BucketState, ClientDefaults, ClientStore, PgStore, Registry, SqliteStore};

/// Defaults the tests' registries run with.
pub const DEFAULTS: ClientDefaults = ClientDefaults {
    rate_per_sec: 5.0,
    capacity: 20,
};

/// A registry over the test bucket.
pub type TestRegistry = Registry<TestBucket>;

/// Minimal mutex-based bucket: enough to observe what the registry does with levels.
#[derive(Debug)]
pub struct TestBucket(Mutex<Level>);

#[derive(Debug, Clone, Copy)]
struct Level {
    rate_per_sec: f64,
    capacity: u32,
    tokens: f64,
    last_refill: SystemTime,
}

impl BucketState for TestBucket {
    fn new(rate_per_sec: f64, capacity: u32, tokens: f64, last_refill: SystemTime) -> Self {
        Self(Mutex::new(Level {
            rate_per_sec,
            capacity,
            tokens,
            last_refill,
        }))
    }

    fn snapshot(&self) -> (f64, SystemTime) {
        let level = self.0.lock().unwrap();
        (level.tokens, level.last_refill)
    }

    fn reconfigure(&self, rate_per_sec: f64, capacity: u32) {
        let mut level = self.0.lock().unwrap();
        level.rate_per_sec = rate_per_sec;
        level.capacity = capacity;
        level.tokens = level.tokens.min(f64::from(capacity));
    }
}

impl TestBucket {
    /// Stands in for the proxy spending tokens.
    pub fn set(&self, tokens: f64, last_refill: SystemTime) {
        let mut level = self.0.lock().unwrap();
        level.tokens = tokens;
        level.last_refill = last_refill;
    }

    /// The `(rate_per_sec, capacity)` the bucket was last told.
    pub fn config(&self) -> (f64, u32) {
        let level = self.0.lock().unwrap();
        (level.rate_per_sec, level.capacity)
    }
}

/// A loaded registry over `store`.
pub async fn registry(store: Arc<dyn ClientStore>) -> TestRegistry {
    let registry = TestRegistry::new(store, DEFAULTS).unwrap();
    registry.load().await.unwrap();
    registry
}

/// A SQLite store on `path`.
pub fn sqlite_store(path: &std::path::Path) -> Arc<dyn ClientStore> {
    Arc::new(SqliteStore::open(path).unwrap())
}

fn admin_url() -> String {
    std::env::var("TOLLGATE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A throwaway PostgreSQL database, dropped (connections and all) when this drops.
pub struct PgTestDb {
    /// Database name.
    pub name: String,
    /// URL of the database, for `open_store` / `PgStore::new`.
    pub url: String,
}

impl PgTestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> Self {
        let mut suffix = [0u8; 6];
        rand::rng().fill_bytes(&mut suffix);
        let name = format!(
            "tg_test_{}",
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let admin = admin_url();
        let (client, conn) = tokio_postgres::connect(&admin, NoTls)
            .await
            .expect("tests need PostgreSQL at TOLLGATE_TEST_PG or 127.0.0.1:5432");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Self { name, url }
    }

    /// A new store (and so a new connection) on this database.
    pub fn store(&self) -> Arc<dyn ClientStore> {
        Arc::new(PgStore::new(&self.url).unwrap())
    }

    /// A direct connection for inspecting tables.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// Runs `sql` on the maintenance database.
    pub async fn admin(&self, sql: &str) {
        let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
    }

    /// Terminates every session on this database and waits until they are gone,
    /// from another thread, without yielding to this test's runtime: connection tasks
    /// on it get no chance to notice, as when a server dies between two calls.
    pub fn kill_sessions_unnoticed(&self) {
        let sql = format!(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            self.name
        );
        admin_blocking(sql).unwrap();
    }
}

/// Runs `sql` on the maintenance database from a thread with its own runtime.
fn admin_blocking(sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&admin_url(), NoTls).await?;
            tokio::spawn(conn);
            client.batch_execute(&sql).await
        })
        .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "admin thread panicked".to_owned())?
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be the one unwinding.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin_blocking(sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
