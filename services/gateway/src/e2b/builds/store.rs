//! Build records across restarts: a [`BuildStore`] (in `sandpool serve`, a
//! table of the scheduler's redb store) holds every record, written when a
//! build is registered and whenever its status changes (with its logs so
//! far). A build that was under way when the gateway stopped cannot go on:
//! it is loaded as failed, saying so.

use std::sync::Arc;

use serde_json::Value;

use super::{BuildRecord, Builds, Status};

/// Durable build records, by build id.
pub trait BuildStore: Send + Sync {
    fn put(&self, build_id: &str, record: &Value) -> Result<(), String>;
    fn delete(&self, build_id: &str) -> Result<(), String>;
    fn all(&self) -> Result<Vec<Value>, String>;
}

/// The reason a build interrupted by a restart is loaded with.
pub(crate) const INTERRUPTED: &str =
    "the build was interrupted: sandpool stopped while it ran; start it again";

impl Builds {
    /// These builds kept in `store`, with the records it already holds.
    pub fn with_store(mut self, store: Arc<dyn BuildStore>) -> Self {
        let loaded = store.all().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the template build records");
            Vec::new()
        });
        let mut interrupted = Vec::new();
        {
            let mut m = self.builds.lock();
            for v in loaded {
                let Ok(mut b) = serde_json::from_value::<BuildRecord>(v) else {
                    tracing::warn!("skipping an unreadable template build record");
                    continue;
                };
                if matches!(b.status, Status::Waiting | Status::Building) {
                    b.status = Status::Error;
                    b.reason = Some((INTERRUPTED.into(), None));
                    interrupted.push(b.clone());
                }
                m.insert(b.build_id.clone(), b);
            }
        }
        self.store = Some(store);
        for b in &interrupted {
            self.persist(b);
        }
        self
    }

    /// Write `b` to the store (a failure is logged: the record stays in memory).
    pub(super) fn persist(&self, b: &BuildRecord) {
        let Some(s) = &self.store else { return };
        let saved = serde_json::to_value(b)
            .map_err(|e| e.to_string())
            .and_then(|v| s.put(&b.build_id, &v));
        if let Err(e) = saved {
            tracing::warn!(build = %b.build_id, error = %e, "saving a template build record");
        }
    }

    /// Remove the records of builds `ids` from the store.
    pub(super) fn forget(&self, ids: &[String]) {
        let Some(s) = &self.store else { return };
        for id in ids {
            if let Err(e) = s.delete(id) {
                tracing::warn!(build = %id, error = %e, "removing a template build record");
            }
        }
    }
}
