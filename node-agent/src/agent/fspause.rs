//! Filesystem-only pause (E2B's `memory: false`): the sandbox's task (its
//! runtime and every process in it) is stopped and deleted, its container,
//! root file system snapshot and network kept; resume starts a new task on
//! that same root file system, as a fresh boot (nothing of its memory or
//! processes comes back). Works for runc and runsc alike: no checkpoint.

use sandpool_proto::v1 as pb;

use crate::error::{AgentError, Result};

use super::{Agent, Sandbox, labels};

/// The label value of a sandbox paused filesystem-only (its task is gone).
const FILESYSTEM: &str = "filesystem";

impl Agent {
    /// Stop sandbox `id`'s processes and keep its root file system. A frozen
    /// (paused) sandbox may be paused this way too: its memory is dropped.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn pause_filesystem(&self, id: &str) -> Result<Sandbox> {
        let sb = self.get(id)?;
        if self.is_paused_filesystem(id) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is already paused (filesystem only)"
            )));
        }
        // (a claim that started nothing leaves its sandbox labelled warm)
        if !matches!(
            sb.state,
            pb::SandboxState::Warm | pb::SandboxState::Claimed | pb::SandboxState::Paused
        ) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is {}: it cannot be paused",
                super::state_label(sb.state)
            )));
        }
        if sb.runtime_class == pb::RuntimeClass::Runsc {
            // measured: a new runsc task on the same rootfs lacks the files
            // the sandbox wrote (gVisor keeps them in its own overlay)
            return Err(AgentError::Unsupported(
                "a filesystem-only pause needs a runc sandbox: gVisor keeps what a runsc sandbox writes to its root file system in its own memory, which ends with its task".into(),
            ));
        }
        let _busy = self.busy(id);
        // its exit is ours: not a failure
        self.fs_paused.lock().insert(id.to_string());
        self.forget_channel(id);
        let stopped = async {
            self.ctr
                .set_labels(
                    id,
                    [(labels::PAUSED.to_string(), FILESYSTEM.to_string())].into(),
                )
                .await?;
            self.ctr.stop_task(id).await
        };
        if let Err(e) = stopped.await {
            self.fs_paused.lock().remove(id);
            return Err(e);
        }
        self.set_state(id, pb::SandboxState::Paused).await
    }

    /// Whether sandbox `id` is paused filesystem-only (no task).
    pub fn is_paused_filesystem(&self, id: &str) -> bool {
        self.fs_paused.lock().contains(id)
    }

    /// Resume a filesystem-only paused sandbox: a new task on its kept root
    /// file system, ready once its runtime answers (its entrypoint is the
    /// caller's to start again, as after a create).
    pub(super) async fn resume_filesystem(&self, sb: Sandbox) -> Result<Sandbox> {
        let id = sb.id.as_str();
        let _busy = self.busy(id);
        let mounts = self.ctr.rootfs_mounts(id).await?;
        self.forget_channel(id);
        self.ctr
            .start_task(id, mounts, &self.log_path(id), None)
            .await?;
        if let Err(e) = self.wait_ready(&sb).await {
            // leave it paused: stop what started, a later resume tries again
            if let Err(stop) = self.ctr.stop_task(id).await {
                tracing::warn!(sandbox = %id, error = %stop, "stopping a failed resume");
            }
            return Err(e);
        }
        self.ctr
            .set_labels(id, [(labels::PAUSED.to_string(), String::new())].into())
            .await?;
        self.fs_paused.lock().remove(id);
        self.set_state(id, pb::SandboxState::Claimed).await
    }

    /// Whether container labels `l` mark a filesystem-only paused sandbox.
    pub(super) fn labels_paused_filesystem(l: &std::collections::HashMap<String, String>) -> bool {
        l.get(labels::PAUSED).map(String::as_str) == Some(FILESYSTEM)
    }
}
