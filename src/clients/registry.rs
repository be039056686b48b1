//! The client registry: an in-memory index the request path reads without locks,
//! kept in step with a [`ClientStore`] that the admin API writes through.
//!
//! Rule for every write: the store commits first, and only then is a new index
//! swapped in. A failed write therefore leaves memory exactly as it was.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::entry::{AuthError, BucketState, ClientDefaults, ClientEntry, RegistryError};
use super::keys::{self, KeyHash};
use super::model::{
    truncate_to_micros, validate_capacity, validate_client_id, validate_expiry, validate_rate,
    ClientView, NewClient, Patch, SavedState, StoredClient,
};
use super::store::{open_store, ClientStore};

/// One immutable snapshot of all clients, swapped whole on every change.
struct Index<B> {
    by_hash: HashMap<KeyHash, Arc<ClientEntry<B>>>,
    // Ordered so `list` pages are stable.
    by_id: BTreeMap<String, Arc<ClientEntry<B>>>,
}

impl<B> Index<B> {
    fn empty() -> Self {
        Self {
            by_hash: HashMap::new(),
            by_id: BTreeMap::new(),
        }
    }

    fn insert(&mut self, entry: Arc<ClientEntry<B>>) {
        if let Some(old) = self
            .by_id
            .insert(entry.client_id.clone(), Arc::clone(&entry))
        {
            self.by_hash.remove(&old.key_hash);
        }
        self.by_hash.insert(entry.key_hash, entry);
    }

    fn remove(&mut self, client_id: &str) {
        if let Some(old) = self.by_id.remove(client_id) {
            self.by_hash.remove(&old.key_hash);
        }
    }
}

// Derive would demand `B: Clone`; only the `Arc`s are cloned.
impl<B> Clone for Index<B> {
    fn clone(&self) -> Self {
        Self {
            by_hash: self.by_hash.clone(),
            by_id: self.by_id.clone(),
        }
    }
}

/// State only writers touch, behind the write lock.
struct WriterState {
    /// Store generation the index reflects; `None` forces a full reload.
    seen_generation: Option<u64>,
}

/// The client registry. Cheap to share behind an `Arc`.
pub struct Registry<B> {
    store: Arc<dyn ClientStore>,
    defaults: ClientDefaults,
    index: ArcSwap<Index<B>>,
    // Serializes writes and syncs so two index swaps never race and lose an edit.
    writer: tokio::sync::Mutex<WriterState>,
}

impl<B: BucketState> Registry<B> {
    /// An empty registry over `store`; call [`Registry::load`] before serving.
    pub fn new(
        store: Arc<dyn ClientStore>,
        defaults: ClientDefaults,
    ) -> Result<Self, RegistryError> {
        validate_rate(defaults.rate_per_sec).map_err(RegistryError::Invalid)?;
        validate_capacity(defaults.capacity).map_err(RegistryError::Invalid)?;
        Ok(Self {
            store,
            defaults,
            index: ArcSwap::from_pointee(Index::empty()),
            writer: tokio::sync::Mutex::new(WriterState {
                seen_generation: None,
            }),
        })
    }

    /// Opens the store at `url`, then [`Registry::load`]s it.
    pub async fn open(url: &str, defaults: ClientDefaults) -> Result<Self, RegistryError> {
        let registry = Self::new(open_store(url)?, defaults)?;
        registry.load().await?;
        Ok(registry)
    }

    /// Migrates the store and reads every client with its saved bucket level, so a
    /// restart resumes buckets where they were. Returns the number of clients.
    pub async fn load(&self) -> Result<usize, RegistryError> {
        self.store.migrate().await?;
        let mut writer = self.writer.lock().await;
        writer.seen_generation = None;
        self.sync_locked(&mut writer).await?;
        Ok(self.len())
    }

    /// Number of clients in the index.
    pub fn len(&self) -> usize {
        self.index.load().by_id.len()
    }

    /// Whether the index has no clients.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves a presented key on the request path: one SHA-256 and one hash-map
    /// lookup, never the database.
    ///
    /// The lookup is by digest, so its timing can only reveal how a digest compares
    /// with stored digests, which tells an attacker nothing about any key; a
    /// constant-time comparison would add nothing.
    pub fn authenticate(
        &self,
        presented: &str,
        now: SystemTime,
    ) -> Result<Arc<ClientEntry<B>>, AuthError> {
        if presented.is_empty() {
            return Err(AuthError::Missing);
        }
        if !keys::looks_like_key(presented) {
            return Err(AuthError::Unknown);
        }
        let index = self.index.load();
        let entry = index
            .by_hash
            .get(&keys::hash_key(presented))
            .ok_or(AuthError::Unknown)?;
        if !entry.enabled {
            return Err(AuthError::Disabled);
        }
        if entry.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired);
        }
        Ok(Arc::clone(entry))
    }

    /// The entry for `client_id`, if present in the index.
    pub fn entry(&self, client_id: &str) -> Option<Arc<ClientEntry<B>>> {
        self.index.load().by_id.get(client_id).cloned()
    }

    /// Creates a client; returns its view and the plaintext key, shown only this once.
    pub async fn create(&self, new: NewClient) -> Result<(ClientView, String), RegistryError> {
        validate_client_id(&new.client_id).map_err(RegistryError::Invalid)?;
        let rate_per_sec = new.rate_per_sec.unwrap_or(self.defaults.rate_per_sec);
        let capacity = new.capacity.unwrap_or(self.defaults.capacity);
        validate_rate(rate_per_sec).map_err(RegistryError::Invalid)?;
        validate_capacity(capacity).map_err(RegistryError::Invalid)?;
        if let Some(expires_at) = new.expires_at {
            validate_expiry(expires_at).map_err(RegistryError::Invalid)?;
        }

        let mut writer = self.writer.lock().await;
        self.sync_locked(&mut writer).await?;
        if self.index.load().by_id.contains_key(&new.client_id) {
            return Err(RegistryError::Conflict(new.client_id));
        }
        let key = keys::generate();
        let now = truncate_to_micros(SystemTime::now());
        let stored = StoredClient {
            client_id: new.client_id,
            key_hash: key.hash,
            key_prefix: key.display_prefix,
            rate_per_sec,
            capacity,
            enabled: new.enabled,
            expires_at: new.expires_at.map(truncate_to_micros),
            created_at: now,
            tokens: f64::from(capacity),
            last_refill: now,
        };
        self.store.insert(&stored).await?;
        let entry = Arc::new(ClientEntry::from_stored(
            &stored,
            ClientEntry::fresh_bucket(&stored),
        ));
        self.swap_in(&mut writer, |index| index.insert(Arc::clone(&entry)));
        Ok((entry.view(Some(key.plaintext.clone())), key.plaintext))
    }

    /// The client's view, key masked.
    pub fn get(&self, client_id: &str) -> Result<ClientView, RegistryError> {
        self.current(client_id).map(|entry| entry.view(None))
    }

    /// One page of clients ordered by id, keys masked, plus the total count.
    pub fn list(&self, offset: usize, limit: usize) -> (Vec<ClientView>, usize) {
        let index = self.index.load();
        let page = index
            .by_id
            .values()
            .skip(offset)
            .take(limit)
            .map(|entry| entry.view(None))
            .collect();
        (page, index.by_id.len())
    }

    /// Changes the fields present in `patch`; the bucket keeps its level.
    pub async fn update(&self, client_id: &str, patch: Patch) -> Result<ClientView, RegistryError> {
        if let Some(rate) = patch.rate_per_sec {
            validate_rate(rate).map_err(RegistryError::Invalid)?;
        }
        if let Some(capacity) = patch.capacity {
            validate_capacity(capacity).map_err(RegistryError::Invalid)?;
        }
        if let Some(Some(expires_at)) = patch.expires_at {
            validate_expiry(expires_at).map_err(RegistryError::Invalid)?;
        }
        let mut writer = self.writer.lock().await;
        self.sync_locked(&mut writer).await?;
        let current = self.current(client_id)?;
        let mut stored = current.to_stored();
        stored.rate_per_sec = patch.rate_per_sec.unwrap_or(stored.rate_per_sec);
        stored.capacity = patch.capacity.unwrap_or(stored.capacity);
        stored.enabled = patch.enabled.unwrap_or(stored.enabled);
        if let Some(expires_at) = patch.expires_at {
            stored.expires_at = expires_at.map(truncate_to_micros);
        }
        self.store.update(&stored).await?;
        if stored.rate_per_sec != current.rate_per_sec || stored.capacity != current.capacity {
            current
                .bucket
                .reconfigure(stored.rate_per_sec, stored.capacity);
        }
        let entry = Arc::new(ClientEntry::from_stored(
            &stored,
            Arc::clone(&current.bucket),
        ));
        self.swap_in(&mut writer, |index| index.insert(Arc::clone(&entry)));
        Ok(entry.view(None))
    }

    /// Replaces the client's key; the old one stops working as soon as this returns.
    pub async fn rotate_key(&self, client_id: &str) -> Result<(ClientView, String), RegistryError> {
        let mut writer = self.writer.lock().await;
        self.sync_locked(&mut writer).await?;
        let current = self.current(client_id)?;
        let key = keys::generate();
        let mut stored = current.to_stored();
        stored.key_hash = key.hash;
        stored.key_prefix = key.display_prefix;
        self.store.update(&stored).await?;
        let entry = Arc::new(ClientEntry::from_stored(
            &stored,
            Arc::clone(&current.bucket),
        ));
        self.swap_in(&mut writer, |index| index.insert(Arc::clone(&entry)));
        Ok((entry.view(Some(key.plaintext.clone())), key.plaintext))
    }

    /// Removes the client; its key stops working as soon as this returns.
    pub async fn delete(&self, client_id: &str) -> Result<(), RegistryError> {
        let mut writer = self.writer.lock().await;
        self.sync_locked(&mut writer).await?;
        self.current(client_id)?;
        self.store.delete(client_id).await?;
        self.swap_in(&mut writer, |index| index.remove(client_id));
        Ok(())
    }

    /// Writes every bucket's level to the store in one batch. Returns how many.
    ///
    /// Takes no lock: it writes only bucket columns, which no config write touches,
    /// and a client deleted meanwhile is simply skipped by the store.
    pub async fn save_states(&self) -> Result<usize, RegistryError> {
        let index = self.index.load_full();
        let states: Vec<SavedState> = index
            .by_id
            .values()
            .map(|entry| {
                let (tokens, last_refill) = entry.bucket.snapshot();
                SavedState {
                    client_id: entry.client_id.clone(),
                    tokens,
                    last_refill,
                }
            })
            .collect();
        self.store.save_states(&states).await?;
        Ok(states.len())
    }

    /// Pulls config changes other edges committed (creates, edits, rotations,
    /// deletes) and swaps in a new index. Clients that stay keep their live buckets.
    /// Returns whether the store had changed since the last sync.
    pub async fn sync(&self) -> Result<bool, RegistryError> {
        let mut writer = self.writer.lock().await;
        self.sync_locked(&mut writer).await
    }

    async fn sync_locked(&self, writer: &mut WriterState) -> Result<bool, RegistryError> {
        // Generation first, rows second: a write landing in between is in the rows
        // now and re-read next time, never missed.
        let generation = self.store.generation().await?;
        if writer.seen_generation == Some(generation) {
            return Ok(false);
        }
        let rows = self.store.list().await?;
        let current = self.index.load_full();
        let mut next = Index::empty();
        for row in rows {
            if let Err(msg) = validate_row(&row) {
                // One hand-edited bad row must not take every other client offline.
                log::warn!("skipping stored client {:?}: {msg}", row.client_id);
                continue;
            }
            let entry = match current.by_id.get(&row.client_id) {
                // Same created_at: the same client, so its live bucket carries over.
                // A different one means it was deleted and re-created elsewhere.
                Some(old) if old.created_at == row.created_at => {
                    if old.same_config(&row) {
                        Arc::clone(old)
                    } else {
                        if old.rate_per_sec != row.rate_per_sec || old.capacity != row.capacity {
                            old.bucket.reconfigure(row.rate_per_sec, row.capacity);
                        }
                        Arc::new(ClientEntry::from_stored(&row, Arc::clone(&old.bucket)))
                    }
                }
                _ => Arc::new(ClientEntry::from_stored(
                    &row,
                    ClientEntry::fresh_bucket(&row),
                )),
            };
            next.insert(entry);
        }
        self.index.store(Arc::new(next));
        writer.seen_generation = Some(generation);
        Ok(true)
    }

    fn current(&self, client_id: &str) -> Result<Arc<ClientEntry<B>>, RegistryError> {
        self.entry(client_id)
            .ok_or_else(|| RegistryError::NotFound(client_id.to_owned()))
    }

    /// Publishes a modified copy of the index. Borrowing the writer state proves the
    /// caller holds the write lock, so no other swap can interleave and drop an edit.
    fn swap_in(&self, _writer: &mut WriterState, change: impl FnOnce(&mut Index<B>)) {
        let mut next = Index::clone(&self.index.load());
        change(&mut next);
        self.index.store(Arc::new(next));
    }
}

fn validate_row(row: &StoredClient) -> Result<(), String> {
    validate_client_id(&row.client_id)?;
    validate_rate(row.rate_per_sec)?;
    validate_capacity(row.capacity)
}
