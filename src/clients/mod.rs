//! API clients: who may call the proxy, with which key, at what rate.
//!
//! The [`Registry`] holds every client in an in-memory index that the request path
//! reads without locks or I/O ([`Registry::authenticate`]). The admin API writes
//! through the registry to a [`ClientStore`], SQLite for a single edge or PostgreSQL
//! for a fleet, and the index changes only after the store commits.
//!
//! Layout:
//! - `keys`: key minting (`tg_` + 256 random bits), SHA-256 hashing, masking.
//! - `model`: stored row, admin input/output shapes, validation rules.
//! - `entry`: the entries handed to the proxy, the [`BucketState`] hook, errors.
//! - `registry`: the index, admin operations, bucket persistence and fleet sync.
//! - `store`: the [`ClientStore`] contract and [`open_store`].
//! - `sqlite`, `postgres`: the two stores.
//!
//! The integrator runs three periodic jobs: [`Registry::sync`] every sync interval,
//! [`Registry::save_states`] every `save_state_interval`, and `save_states` once more
//! on shutdown.

mod bucket;
mod entry;
pub mod keys;
mod model;
mod pg_tls;
mod postgres;
mod registry;
mod service;
mod sqlite;
mod store;

#[cfg(test)]
mod tests;

pub use bucket::ClientBucket;

/// The registry the proxy and admin API use.
pub type Clients = Registry<ClientBucket>;
pub use entry::{AuthError, BucketState, ClientDefaults, ClientEntry, RegistryError};
pub use model::{rfc3339, rfc3339_opt, ClientView, NewClient, Patch, SavedState, StoredClient};
pub use postgres::PgStore;
pub use registry::Registry;
pub use service::ClientsService;
pub use sqlite::SqliteStore;
pub use store::{open_store, ClientStore, StoreError};
