//! Draining: once the process is handing its sockets to a new one (`SIGQUIT`) or terminating
//! (`SIGTERM`), every response says `Connection: close`.
//!
//! After `SIGQUIT`, Pingora keeps the old process serving for a few seconds, then drops the
//! keep-alive connections that are idle at that moment; a client that sends its next request
//! just then sees a reset. Closing each connection after its current response moves keep-alive
//! clients onto fresh connections, which the new process accepts, before that happens.

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Set once the process starts leaving.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Follows Pingora's execution phases and sets [`Draining`] when the process starts leaving.
pub struct DrainWatch {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    draining: Draining,
}

impl DrainWatch {
    /// `phases` comes from `Server::watch_execution_phase` (a channel, so it survives the
    /// daemon fork; the task that reads it starts after).
    pub fn new(phases: broadcast::Receiver<ExecutionPhase>, draining: Draining) -> Self {
        DrainWatch {
            phases: Mutex::new(Some(phases)),
            draining,
        }
    }
}

#[async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.phases.lock().map(|mut p| p.take()).unwrap_or(None);
        let Some(mut phases) = taken else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.draining.set();
                    return;
                }
                phase = phases.recv() => match phase {
                    Ok(
                        ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulUpgradeCloseTimeout
                        | ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::ShutdownStarted,
                    ) => self.draining.set(),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
