//! The `ClientStore` contract, run on both backends, plus backend-specific duties:
//! concurrent migrations, reconnecting, and keeping keys out of the tables.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{registry, sqlite_store, PgTestDb};
use crate::clients::keys;
use crate::clients::model::truncate_to_micros;
use crate::clients::{ClientStore, NewClient, PgStore, SavedState, StoreError, StoredClient};

fn sample(id: &str) -> StoredClient {
    let key = keys::generate();
    let now = truncate_to_micros(SystemTime::now());
    StoredClient {
        client_id: id.to_owned(),
        key_hash: key.hash,
        key_prefix: key.display_prefix,
        rate_per_sec: 2.5,
        capacity: 4_000_000_000,
        enabled: true,
        expires_at: Some(now + Duration::from_secs(3600)),
        created_at: now,
        tokens: 7.25,
        last_refill: now,
    }
}

async fn exercise_contract(store: Arc<dyn ClientStore>) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
    assert_eq!(store.generation().await.unwrap(), 0);

    let a = sample("a");
    store.insert(&a).await.unwrap();
    assert_eq!(store.list().await.unwrap(), vec![a.clone()], "round trip");
    assert_eq!(store.generation().await.unwrap(), 1);

    let mut dup = sample("a");
    dup.rate_per_sec = 9.0;
    assert_eq!(
        store.insert(&dup).await,
        Err(StoreError::Conflict("a".into()))
    );
    assert_eq!(
        store.generation().await.unwrap(),
        1,
        "failed write bumps nothing"
    );

    let ghost = sample("ghost");
    assert_eq!(
        store.update(&ghost).await,
        Err(StoreError::NotFound("ghost".into()))
    );
    assert_eq!(
        store.delete("ghost").await,
        Err(StoreError::NotFound("ghost".into()))
    );

    let mut changed = a.clone();
    changed.rate_per_sec = 1.0;
    changed.capacity = 3;
    changed.enabled = false;
    changed.expires_at = None;
    changed.tokens = 0.0;
    store.update(&changed).await.unwrap();
    assert_eq!(store.generation().await.unwrap(), 2);
    let listed = store.list().await.unwrap();
    assert_eq!(listed[0].rate_per_sec, 1.0);
    assert_eq!(listed[0].expires_at, None);
    assert_eq!(
        listed[0].tokens, 7.25,
        "update leaves the bucket level alone"
    );

    let later = a.last_refill + Duration::from_millis(1500);
    let states = [
        SavedState {
            client_id: "a".into(),
            tokens: 1.5,
            last_refill: later,
        },
        SavedState {
            client_id: "ghost".into(),
            tokens: 1.0,
            last_refill: later,
        },
    ];
    store.save_states(&states).await.unwrap();
    assert_eq!(
        store.generation().await.unwrap(),
        2,
        "levels are not config"
    );
    let listed = store.list().await.unwrap();
    assert_eq!((listed[0].tokens, listed[0].last_refill), (1.5, later));

    store.insert(&sample("b")).await.unwrap();
    store.delete("a").await.unwrap();
    let ids: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["b"]);
    assert_eq!(store.generation().await.unwrap(), 4);
}

/// Proves the SQLite store keeps the contract: conflicts, not-found, generation, batch levels.
#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    exercise_contract(sqlite_store(&dir.path().join("c.db"))).await;
}

/// Proves the PostgreSQL store keeps the same contract.
#[tokio::test]
async fn postgres_store_keeps_the_contract() {
    let db = PgTestDb::create().await;
    exercise_contract(db.store()).await;
}

/// Proves several edges migrating one fresh database at once all succeed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_postgres_migrations_all_succeed() {
    let db = PgTestDb::create().await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = PgStore::new(&db.url).unwrap();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let client = db.connect().await;
    let version: i32 = client
        .query_one("SELECT version FROM tollgate_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
    let meta_rows: i64 = client
        .query_one("SELECT count(*) FROM tollgate_meta", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(meta_rows, 1);
}

/// Proves the PostgreSQL store notices a connection the server closed while idle and
/// opens a new one before the next call.
#[tokio::test]
async fn postgres_store_reconnects_after_idle_drop() {
    let db = PgTestDb::create().await;
    let store = db.store();
    store.migrate().await.unwrap();
    db.admin(&format!(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.generation().await, Ok(0));
}

/// Proves a repeatable call that hits a dead connection is replayed once on a fresh
/// one, while a non-repeatable write reports 503 and leaves the next call working.
#[tokio::test]
async fn postgres_store_replays_only_repeatable_calls_after_connection_loss() {
    let db = PgTestDb::create().await;
    let store = db.store();
    store.migrate().await.unwrap();

    db.kill_sessions_unnoticed();
    assert_eq!(store.generation().await, Ok(0), "read replayed");

    db.kill_sessions_unnoticed();
    let row = sample("once");
    assert!(matches!(
        store.insert(&row).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        store.list().await.unwrap().is_empty(),
        "insert was not replayed"
    );
    store.insert(&row).await.unwrap();
}

/// Proves a PostgreSQL database that is down yields Unavailable, not a hang or panic.
#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    let store = PgStore::new("postgres://postgres@127.0.0.1:1/none?connect_timeout=2").unwrap();
    assert!(matches!(
        store.generation().await,
        Err(StoreError::Unavailable(_))
    ));
}

/// Proves SQLite holds only the hash and short prefix: the plaintext of every key ever
/// issued is absent from the database and its WAL, byte for byte.
#[tokio::test]
async fn sqlite_file_never_contains_plaintext_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let reg = registry(sqlite_store(&path)).await;
    let (_, first) = reg.create(NewClient::new("k1")).await.unwrap();
    let (_, second) = reg.rotate_key("k1").await.unwrap();
    reg.save_states().await.unwrap();

    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::fs::read(dir.path().join("keys.db-wal")).unwrap_or_default());
    for key in [&first, &second] {
        let secret = &key[keys::KEY_PREFIX.len()..];
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (hash, prefix): (Vec<u8>, String) = conn
        .query_row(
            "SELECT key_hash, key_prefix FROM tollgate_clients",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(hash, keys::hash_key(&second));
    assert_eq!(prefix, second[..keys::DISPLAY_PREFIX_LEN]);
}

/// Proves PostgreSQL holds only the hash and short prefix of keys, never the plaintext.
#[tokio::test]
async fn postgres_table_never_contains_plaintext_keys() {
    let db = PgTestDb::create().await;
    let reg = registry(db.store()).await;
    let (_, first) = reg.create(NewClient::new("k1")).await.unwrap();
    let (_, second) = reg.rotate_key("k1").await.unwrap();
    reg.save_states().await.unwrap();

    let client = db.connect().await;
    let row = client
        .query_one(
            "SELECT row_to_json(c)::text, encode(key_hash, 'hex'), key_hash \
             FROM tollgate_clients c",
            &[],
        )
        .await
        .unwrap();
    let (json, hex, hash): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
    for key in [&first, &second] {
        let secret = &key[keys::KEY_PREFIX.len()..];
        assert!(!json.contains(secret), "plaintext key in row: {json}");
        assert!(!hex.contains(secret));
    }
    assert_eq!(hash, keys::hash_key(&second));
}

/// `url` with more query parameters.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Whether the connection named `app` (its application_name) runs over TLS, per the server.
async fn server_sees_tls(db: &PgTestDb, app: &str) -> Option<bool> {
    let admin = db.connect().await;
    let row = admin
        .query_opt(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    row.map(|r| r.get(0))
}

/// Proves `sslmode=require` encrypts the store's connection (the server says so).
#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    let db = PgTestDb::create().await;
    let app = format!("tg_tls_{}", db.name);
    let url = with_params(&db.url, &format!("sslmode=require&application_name={app}"));
    let store = PgStore::new(&url).unwrap();
    store.migrate().await.unwrap();
    assert_eq!(server_sees_tls(&db, &app).await, Some(true));
    let plain = format!("tg_plain_{}", db.name);
    let url = with_params(
        &db.url,
        &format!("sslmode=disable&application_name={plain}"),
    );
    let store = PgStore::new(&url).unwrap();
    store.generation().await.unwrap();
    assert_eq!(server_sees_tls(&db, &plain).await, Some(false));
}

/// Proves `verify-full` refuses a server whose certificate another CA signed, and that
/// `verify-ca` accepts it against its own root (the server's self-signed certificate).
#[tokio::test]
async fn verifying_modes_check_the_server_certificate() {
    let db = PgTestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let other_ca = rcgen::generate_simple_self_signed(vec!["elsewhere.test".into()]).unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, other_ca.cert.pem()).unwrap();
    let url = with_params(
        &db.url,
        &format!("sslmode=verify-full&sslrootcert={}", other.display()),
    );
    let refused = PgStore::new(&url).unwrap().generation().await;
    let Err(StoreError::Unavailable(message)) = refused else {
        panic!("connected with an untrusted certificate: {refused:?}");
    };
    assert!(message.contains("certificate"), "{message}");

    // The test server's certificate is self-signed (Debian's snakeoil), so it is its own root;
    // it does not name 127.0.0.1, so verify-ca passes where verify-full would not.
    let admin = db.connect().await;
    let cert_file: String = admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let url = with_params(
        &db.url,
        &format!("sslmode=verify-ca&sslrootcert={cert_file}"),
    );
    PgStore::new(&url).unwrap().migrate().await.unwrap();
    let url = with_params(
        &db.url,
        &format!("sslmode=verify-full&sslrootcert={cert_file}"),
    );
    let wrong_host = PgStore::new(&url).unwrap().generation().await;
    assert!(
        matches!(wrong_host, Err(StoreError::Unavailable(_))),
        "verify-full accepted a certificate for another host: {wrong_host:?}"
    );
}

/// Proves a row PostgreSQL refuses comes back as Invalid with the server's own reason, not
/// just tokio-postgres's "db error".
#[tokio::test]
async fn postgres_refusal_carries_the_servers_reason() {
    let db = PgTestDb::create().await;
    let store = db.store();
    store.migrate().await.unwrap();
    let mut row = sample("bad-rate");
    row.rate_per_sec = 0.0;
    let Err(StoreError::Invalid(message)) = store.insert(&row).await else {
        panic!("a zero rate was stored");
    };
    assert!(message.contains("violates check constraint"), "{message}");
}
