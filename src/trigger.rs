//! What pokes one source's worker: a sync trigger (webhooks, the CLI and
//! tests wake it without waiting for the poll interval) and the queue of
//! pull requests to preview.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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

/// Pull requests waiting for a preview: number -> head SHA announced by the
/// webhook. A newer push to the same PR replaces the older request.
#[derive(Clone, Default)]
pub struct PreviewQueue(Arc<Mutex<BTreeMap<u64, String>>>);

impl PreviewQueue {
    pub fn request(&self, pr: u64, head_sha: &str) {
        self.lock().insert(pr, head_sha.to_string());
    }

    pub fn take(&self) -> Vec<(u64, String)> {
        std::mem::take(&mut *self.lock()).into_iter().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
