//! A failing store leaves the in-memory index exactly as it was.
//!
//! No mocks: SQLite is made to fail with real triggers that abort every write to the
//! client table, and PostgreSQL by dropping the database out from under the edge.

use std::time::SystemTime;

use super::{registry, sqlite_store, PgTestDb, TestRegistry};
use crate::clients::{ClientView, NewClient, Patch, RegistryError};

const BREAK_WRITES: &str = "
    CREATE TRIGGER no_insert BEFORE INSERT ON tollgate_clients
        BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
    CREATE TRIGGER no_update BEFORE UPDATE ON tollgate_clients
        BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
    CREATE TRIGGER no_delete BEFORE DELETE ON tollgate_clients
        BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
";

const MEND_WRITES: &str = "
    DROP TRIGGER no_insert; DROP TRIGGER no_update; DROP TRIGGER no_delete;
";

fn is_unavailable<T: std::fmt::Debug>(result: Result<T, RegistryError>) {
    match result {
        Err(e @ RegistryError::Unavailable(_)) => assert_eq!(e.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
}

/// The observable state a failed write must not disturb.
fn snapshot(reg: &TestRegistry, key: &str) -> (Vec<ClientView>, usize, bool) {
    let (views, total) = reg.list(0, 100);
    let authenticates = reg.authenticate(key, SystemTime::now()).is_ok();
    (views, total, authenticates)
}

/// Proves every admin write that SQLite rejects leaves the index untouched, and that
/// the same writes succeed once the store accepts them again.
#[tokio::test]
async fn sqlite_failure_leaves_index_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    let reg = registry(sqlite_store(&path)).await;
    let (_, key) = reg.create(NewClient::new("keep")).await.unwrap();
    let before = snapshot(&reg, &key);

    let saboteur = rusqlite::Connection::open(&path).unwrap();
    saboteur.execute_batch(BREAK_WRITES).unwrap();

    is_unavailable(reg.create(NewClient::new("new")).await);
    let patch = Patch {
        rate_per_sec: Some(99.0),
        enabled: Some(false),
        ..Patch::default()
    };
    is_unavailable(reg.update("keep", patch.clone()).await);
    is_unavailable(reg.rotate_key("keep").await);
    is_unavailable(reg.delete("keep").await);
    is_unavailable(reg.save_states().await);
    assert_eq!(snapshot(&reg, &key), before);
    assert_eq!(reg.get("new").unwrap_err().status(), 404);
    assert_eq!(reg.entry("keep").unwrap().bucket().config(), (5.0, 20));

    saboteur.execute_batch(MEND_WRITES).unwrap();
    assert_eq!(reg.update("keep", patch).await.unwrap().rate_per_sec, 99.0);
    reg.delete("keep").await.unwrap();
    assert!(reg.is_empty());
}

/// Proves that when the PostgreSQL database disappears, writes and syncs fail with 503
/// while the index, and so request authentication, carries on unchanged.
#[tokio::test]
async fn postgres_outage_leaves_index_serving() {
    let db = PgTestDb::create().await;
    let reg = registry(db.store()).await;
    let (_, key) = reg.create(NewClient::new("keep")).await.unwrap();
    reg.create(NewClient::new("other")).await.unwrap();
    let before = snapshot(&reg, &key);

    db.admin(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .await;

    is_unavailable(reg.create(NewClient::new("new")).await);
    let patch = Patch {
        capacity: Some(1),
        ..Patch::default()
    };
    is_unavailable(reg.update("keep", patch).await);
    is_unavailable(reg.rotate_key("keep").await);
    is_unavailable(reg.delete("other").await);
    is_unavailable(reg.save_states().await);
    is_unavailable(reg.sync().await);
    assert_eq!(snapshot(&reg, &key), before);
    assert!(before.2, "the key still authenticates");
}
