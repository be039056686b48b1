//! Two edges sharing one PostgreSQL database.

use std::time::{Duration, SystemTime};

use super::{registry, PgTestDb};
use crate::clients::model::truncate_to_micros;
use crate::clients::{AuthError, NewClient, Patch, RegistryError};

/// Proves creates, edits, rotations and deletes made on one edge reach the other on
/// `sync()`, and that the other edge's live bucket level survives each sync.
#[tokio::test]
async fn changes_on_one_edge_reach_the_other_after_sync() {
    let db = PgTestDb::create().await;
    let a = registry(db.store()).await;
    let b = registry(db.store()).await;
    let now = SystemTime::now();

    let (_, key) = a.create(NewClient::new("shared")).await.unwrap();
    assert_eq!(b.authenticate(&key, now).unwrap_err(), AuthError::Unknown);
    assert!(b.sync().await.unwrap(), "b saw a change");
    assert!(!b.sync().await.unwrap(), "nothing new the second time");
    assert_eq!(b.authenticate(&key, now).unwrap().client_id(), "shared");

    let spent_at = truncate_to_micros(now);
    b.entry("shared").unwrap().bucket().set(3.0, spent_at);

    let patch = Patch {
        rate_per_sec: Some(9.0),
        enabled: Some(true),
        ..Patch::default()
    };
    a.update("shared", patch).await.unwrap();
    b.sync().await.unwrap();
    let seen = b.get("shared").unwrap();
    assert_eq!(seen.rate_per_sec, 9.0);
    assert_eq!(
        (seen.tokens, seen.last_refill),
        (3.0, spent_at),
        "level kept"
    );
    assert_eq!(b.entry("shared").unwrap().bucket().config(), (9.0, 20));

    let (_, rotated) = a.rotate_key("shared").await.unwrap();
    assert!(
        b.authenticate(&key, now).is_ok(),
        "old key lives until sync"
    );
    b.sync().await.unwrap();
    assert_eq!(b.authenticate(&key, now).unwrap_err(), AuthError::Unknown);
    assert_eq!(b.authenticate(&rotated, now).unwrap().client_id(), "shared");
    assert_eq!(
        b.get("shared").unwrap().tokens,
        3.0,
        "rotation keeps the level"
    );

    a.delete("shared").await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(
        b.authenticate(&rotated, now).unwrap_err(),
        AuthError::Unknown
    );
    assert!(b.is_empty());

    let (_, from_b) = b.create(NewClient::new("from-b")).await.unwrap();
    a.sync().await.unwrap();
    assert!(
        a.authenticate(&from_b, now).is_ok(),
        "works in both directions"
    );
}

/// Proves a client deleted and re-created elsewhere gets a fresh bucket, not the old level.
#[tokio::test]
async fn recreated_client_starts_with_a_full_bucket_elsewhere() {
    let db = PgTestDb::create().await;
    let a = registry(db.store()).await;
    let b = registry(db.store()).await;
    a.create(NewClient::new("again")).await.unwrap();
    b.sync().await.unwrap();
    b.entry("again")
        .unwrap()
        .bucket()
        .set(0.0, SystemTime::now());

    a.delete("again").await.unwrap();
    // created_at must differ from the first incarnation's.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (_, key) = a.create(NewClient::new("again")).await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.get("again").unwrap().tokens, 20.0);
    assert!(b.authenticate(&key, SystemTime::now()).is_ok());
}

/// Proves admin writes on a lagging edge act on the fleet's latest state: it sees a
/// client another edge created (no spurious 404) and its id (409, not a duplicate).
#[tokio::test]
async fn writes_on_a_lagging_edge_see_the_latest_state() {
    let db = PgTestDb::create().await;
    let a = registry(db.store()).await;
    let b = registry(db.store()).await;
    a.create(NewClient::new("made-on-a")).await.unwrap();

    let err = b.create(NewClient::new("made-on-a")).await.unwrap_err();
    assert_eq!(err, RegistryError::Conflict("made-on-a".into()));
    let patch = Patch {
        capacity: Some(5),
        ..Patch::default()
    };
    assert_eq!(b.update("made-on-a", patch).await.unwrap().capacity, 5);
    a.sync().await.unwrap();
    assert_eq!(a.get("made-on-a").unwrap().capacity, 5);
}
