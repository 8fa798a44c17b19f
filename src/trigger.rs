//! A poke for one source's worker: webhooks, the CLI and tests wake it
//! without waiting for the poll interval.

use std::sync::Arc;

use tokio::sync::Notify;

/// Cheap to clone and to call from anywhere. Pokes that arrive while the
/// worker is busy coalesce into one follow-up sync (a `Notify` permit).
#[derive(Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn poke(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next poke (or at once, for one that came meanwhile).
    pub async fn poked(&self) {
        self.0.notified().await;
    }
}
