//! Periodic work of the client registry: fleet sync, and saving bucket levels (also on
//! shutdown, so a restart does not hand everyone a full bucket).

use super::Clients;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

pub struct ClientsService {
    registry: Arc<Clients>,
    sync_every: Duration,
    save_every: Duration,
}

impl ClientsService {
    pub fn new(registry: Arc<Clients>, sync_every: Duration, save_every: Duration) -> Self {
        ClientsService {
            registry,
            sync_every,
            save_every,
        }
    }

    async fn save(&self) {
        if let Err(e) = self.registry.save_states().await {
            log::warn!("clients: cannot save bucket levels: {e}");
        }
    }
}

#[async_trait]
impl BackgroundService for ClientsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut sync = tokio::time::interval(self.sync_every);
        let mut save = tokio::time::interval(self.save_every);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Both fire at once; the registry was just loaded, so skip the first ticks.
        sync.tick().await;
        save.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.save().await;
                    return;
                }
                _ = sync.tick() => {
                    if let Err(e) = self.registry.sync().await {
                        log::warn!("clients: sync with the store failed, serving the last known clients: {e}");
                    }
                }
                _ = save.tick() => self.save().await,
            }
        }
    }
}
