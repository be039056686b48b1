//! One registry's life: create, authenticate, read, patch, rotate, delete, restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{registry, sqlite_store, PgTestDb, TestRegistry, DEFAULTS};
use crate::clients::model::truncate_to_micros;
use crate::clients::{
    AuthError, ClientDefaults, ClientStore, NewClient, Patch, RegistryError, StoreError,
};

async fn exercise_lifecycle(store: Arc<dyn ClientStore>) {
    let reg = registry(store).await;
    let now = SystemTime::now();
    let (view, key) = reg
        .create(NewClient {
            rate_per_sec: Some(2.5),
            capacity: Some(10),
            ..NewClient::new("alpha")
        })
        .await
        .unwrap();
    assert_eq!(view.api_key, key, "create shows the plaintext once");
    assert_eq!((view.rate_per_sec, view.capacity), (2.5, 10));
    assert_eq!(view.tokens, 10.0, "a new bucket starts full");
    assert!(view.enabled && view.expires_at.is_none());
    assert_eq!(reg.authenticate(&key, now).unwrap().client_id(), "alpha");

    let (beta, _) = reg.create(NewClient::new("beta")).await.unwrap();
    assert_eq!(
        (beta.rate_per_sec, beta.capacity, beta.tokens),
        (5.0, 20, 20.0)
    );
    reg.create(NewClient::new("gamma")).await.unwrap();

    let got = reg.get("alpha").unwrap();
    assert_eq!(
        got.api_key,
        format!("{}…", &key[..8]),
        "reads show the mask"
    );
    assert_eq!(got.created_at, view.created_at);
    let ids = |page: Vec<crate::clients::ClientView>| -> Vec<String> {
        page.into_iter().map(|v| v.client_id).collect()
    };
    let (page, total) = reg.list(0, 2);
    assert_eq!((ids(page), total), (vec!["alpha".into(), "beta".into()], 3));
    let (page, total) = reg.list(2, 2);
    assert_eq!((ids(page), total), (vec!["gamma".into()], 3));
    assert_eq!(reg.list(7, 2).0.len(), 0);

    let expiry = now + Duration::from_secs(3600);
    let patched = reg
        .update(
            "alpha",
            Patch {
                rate_per_sec: Some(7.0),
                capacity: Some(3),
                expires_at: Some(Some(expiry)),
                ..Patch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((patched.rate_per_sec, patched.capacity), (7.0, 3));
    assert_eq!(patched.expires_at, Some(truncate_to_micros(expiry)));
    assert_eq!(patched.tokens, 3.0, "bucket was reconfigured, not replaced");
    assert_eq!(reg.entry("alpha").unwrap().bucket().config(), (7.0, 3));
    assert!(reg.authenticate(&key, now).is_ok());

    let (rotated, new_key) = reg.rotate_key("alpha").await.unwrap();
    assert_eq!(rotated.api_key, new_key);
    assert_ne!(new_key, key);
    assert_eq!(reg.authenticate(&key, now).unwrap_err(), AuthError::Unknown);
    assert_eq!(
        reg.authenticate(&new_key, now).unwrap().client_id(),
        "alpha"
    );
    assert_eq!(rotated.rate_per_sec, 7.0, "rotation keeps the config");

    reg.delete("alpha").await.unwrap();
    assert_eq!(
        reg.authenticate(&new_key, now).unwrap_err(),
        AuthError::Unknown
    );
    assert_eq!(reg.get("alpha").unwrap_err().status(), 404);
    assert_eq!(reg.list(0, 10).1, 2);
    for result in [
        reg.delete("alpha").await.map(drop),
        reg.update("alpha", Patch::default()).await.map(drop),
        reg.rotate_key("alpha").await.map(drop),
    ] {
        assert_eq!(result, Err(RegistryError::NotFound("alpha".into())));
    }
}

/// Proves the full client lifecycle against a SQLite file.
#[tokio::test]
async fn sqlite_lifecycle_create_auth_patch_rotate_delete() {
    let dir = tempfile::tempdir().unwrap();
    exercise_lifecycle(sqlite_store(&dir.path().join("l.db"))).await;
}

/// Proves the full client lifecycle against PostgreSQL.
#[tokio::test]
async fn postgres_lifecycle_create_auth_patch_rotate_delete() {
    let db = PgTestDb::create().await;
    exercise_lifecycle(db.store()).await;
}

async fn exercise_duplicate(store: Arc<dyn ClientStore>) {
    let reg = registry(Arc::clone(&store)).await;
    let (_, key) = reg.create(NewClient::new("dup")).await.unwrap();
    let err = reg.create(NewClient::new("dup")).await.unwrap_err();
    assert_eq!(err, RegistryError::Conflict("dup".into()));
    assert_eq!(err.status(), 409);
    assert_eq!(reg.list(0, 10).1, 1);
    assert_eq!(
        reg.authenticate(&key, SystemTime::now())
            .unwrap()
            .client_id(),
        "dup"
    );
    // The store's own check, for a writer the registry cannot see coming.
    let mut row = store.list().await.unwrap().remove(0);
    row.key_hash = crate::clients::keys::generate().hash;
    assert_eq!(
        store.insert(&row).await,
        Err(StoreError::Conflict("dup".into()))
    );
}

/// Proves a duplicate client_id is a 409 Conflict on SQLite, at both layers.
#[tokio::test]
async fn sqlite_duplicate_id_is_conflict() {
    let dir = tempfile::tempdir().unwrap();
    exercise_duplicate(sqlite_store(&dir.path().join("d.db"))).await;
}

/// Proves a duplicate client_id is a 409 Conflict on PostgreSQL, at both layers.
#[tokio::test]
async fn postgres_duplicate_id_is_conflict() {
    let db = PgTestDb::create().await;
    exercise_duplicate(db.store()).await;
}

/// Proves bad ids, rates and capacities are 400 Invalid and change nothing.
#[tokio::test]
async fn invalid_input_is_rejected_with_400() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(sqlite_store(&dir.path().join("v.db"))).await;
    let long = "x".repeat(65);
    let bad_creates = [
        NewClient::new(""),
        NewClient::new(long.as_str()),
        NewClient::new("white space"),
        NewClient::new("semi;colon"),
        NewClient {
            rate_per_sec: Some(-1.0),
            ..NewClient::new("ok")
        },
        NewClient {
            rate_per_sec: Some(f64::NAN),
            ..NewClient::new("ok")
        },
        NewClient {
            rate_per_sec: Some(f64::INFINITY),
            ..NewClient::new("ok")
        },
        NewClient {
            rate_per_sec: Some(0.0),
            ..NewClient::new("ok")
        },
        NewClient {
            capacity: Some(0),
            ..NewClient::new("ok")
        },
        NewClient {
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40)),
            ..NewClient::new("ok")
        },
    ];
    for new in bad_creates {
        let err = reg.create(new.clone()).await.unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(_)), "{new:?}: {err:?}");
        assert_eq!(err.status(), 400);
    }
    assert!(reg.is_empty());

    reg.create(NewClient::new("ok")).await.unwrap();
    for patch in [
        Patch {
            rate_per_sec: Some(f64::NAN),
            ..Patch::default()
        },
        Patch {
            capacity: Some(0),
            ..Patch::default()
        },
        Patch {
            expires_at: Some(Some(SystemTime::UNIX_EPOCH - Duration::from_secs(1))),
            ..Patch::default()
        },
    ] {
        let err = reg.update("ok", patch).await.unwrap_err();
        assert_eq!(err.status(), 400, "{err:?}");
    }
    assert_eq!(reg.get("ok").unwrap().rate_per_sec, DEFAULTS.rate_per_sec);

    let store = sqlite_store(&dir.path().join("v2.db"));
    for defaults in [
        ClientDefaults {
            rate_per_sec: -5.0,
            capacity: 1,
        },
        ClientDefaults {
            rate_per_sec: 1.0,
            capacity: 0,
        },
    ] {
        assert!(matches!(
            TestRegistry::new(Arc::clone(&store), defaults),
            Err(RegistryError::Invalid(_))
        ));
    }
}

/// Proves missing, malformed, disabled and expired keys each get their own AuthError.
#[tokio::test]
async fn disabled_and_expired_clients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(sqlite_store(&dir.path().join("a.db"))).await;
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(60);
    let (_, key) = reg
        .create(NewClient {
            enabled: false,
            expires_at: Some(expires),
            ..NewClient::new("c")
        })
        .await
        .unwrap();
    assert_eq!(reg.authenticate("", now).unwrap_err(), AuthError::Missing);
    assert_eq!(
        reg.authenticate("Bearer x", now).unwrap_err(),
        AuthError::Unknown
    );
    let stranger = crate::clients::keys::generate().plaintext;
    assert_eq!(
        reg.authenticate(&stranger, now).unwrap_err(),
        AuthError::Unknown
    );
    assert_eq!(
        reg.authenticate(&key, now).unwrap_err(),
        AuthError::Disabled
    );

    let enable = Patch {
        enabled: Some(true),
        ..Patch::default()
    };
    reg.update("c", enable).await.unwrap();
    assert!(reg.authenticate(&key, now).is_ok());
    let at = truncate_to_micros(expires);
    assert_eq!(reg.authenticate(&key, at).unwrap_err(), AuthError::Expired);
    let later = now + Duration::from_secs(61);
    assert_eq!(
        reg.authenticate(&key, later).unwrap_err(),
        AuthError::Expired
    );

    let never = Patch {
        expires_at: Some(None),
        ..Patch::default()
    };
    assert_eq!(reg.update("c", never).await.unwrap().expires_at, None);
    assert!(reg.authenticate(&key, later).is_ok());
}

async fn exercise_restart(first: Arc<dyn ClientStore>, second: Arc<dyn ClientStore>) {
    let spent_at = truncate_to_micros(SystemTime::now()) - Duration::from_secs(2);
    let (created, key) = {
        let reg = registry(first).await;
        let created = reg.create(NewClient::new("r1")).await.unwrap();
        reg.create(NewClient::new("r2")).await.unwrap();
        reg.entry("r1").unwrap().bucket().set(4.5, spent_at);
        assert_eq!(reg.save_states().await.unwrap(), 2);
        created
    };
    let reg = registry(second).await;
    assert_eq!(reg.len(), 2);
    let entry = reg.authenticate(&key, SystemTime::now()).unwrap();
    assert_eq!(entry.client_id(), "r1");
    let view = reg.get("r1").unwrap();
    assert_eq!(
        (view.tokens, view.last_refill),
        (4.5, spent_at),
        "level restored"
    );
    assert_eq!(view.created_at, created.created_at);
    assert_eq!(
        (view.rate_per_sec, view.capacity),
        (created.rate_per_sec, created.capacity)
    );
    assert_eq!(reg.get("r2").unwrap().tokens, 20.0);
}

/// Proves a restarted SQLite-backed registry keeps clients, keys and bucket levels.
#[tokio::test]
async fn sqlite_restart_keeps_clients_and_levels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    exercise_restart(sqlite_store(&path), sqlite_store(&path)).await;
}

/// Proves a restarted PostgreSQL-backed registry keeps clients, keys and bucket levels.
#[tokio::test]
async fn postgres_restart_keeps_clients_and_levels() {
    let db = PgTestDb::create().await;
    exercise_restart(db.store(), db.store()).await;
}

/// Proves `Registry::open` dispatches on the URL and a bad one is a clear error.
#[tokio::test]
async fn open_by_url_loads_or_explains() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("u/tg.db").display());
    let reg = TestRegistry::open(&url, DEFAULTS).await.unwrap();
    reg.create(NewClient::new("u")).await.unwrap();
    assert_eq!(TestRegistry::open(&url, DEFAULTS).await.unwrap().len(), 1);
    let Err(err) = TestRegistry::open("redis://x", DEFAULTS).await else {
        panic!("redis url accepted");
    };
    assert!(err.to_string().contains("unsupported store url"), "{err}");
}

/// Proves concurrent admin writes from many tasks all land: the write lock keeps
/// index swaps from racing, and the registry's futures are `Send` for spawning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_all_land_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Arc::new(registry(sqlite_store(&dir.path().join("c.db"))).await);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let reg = Arc::clone(&reg);
            tokio::spawn(async move {
                let id = format!("c{i:02}");
                let (_, key) = reg.create(NewClient::new(id.as_str())).await.unwrap();
                let patch = Patch {
                    capacity: Some(i + 1),
                    ..Patch::default()
                };
                reg.update(&id, patch).await.unwrap();
                reg.sync().await.unwrap();
                reg.save_states().await.unwrap();
                key
            })
        })
        .collect();
    let mut keys = Vec::new();
    for task in tasks {
        keys.push(task.await.unwrap());
    }
    assert_eq!(reg.len(), 16);
    for (i, key) in keys.iter().enumerate() {
        let entry = reg.authenticate(key, SystemTime::now()).unwrap();
        assert_eq!(entry.capacity(), u32::try_from(i + 1).unwrap());
    }
}
