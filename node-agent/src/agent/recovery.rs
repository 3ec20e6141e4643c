//! Recovery: rebuilding state from containerd labels after a restart,
//! following task exits, and sweeping resources no sandbox owns.

use std::{sync::Arc, time::Duration};

use sandpool_proto::v1 as pb;

use crate::{
    containerd::{TaskEvent, TaskState},
    error::{AgentError, Result},
};

use super::{Agent, Kill, Sandbox, auth, labels};

impl Agent {
    /// Remove what no sandbox owns: containers, netns and snapshots left by a
    /// create or release that failed half-way (containerd restarting, say).
    /// Returns how many were removed.
    pub async fn sweep(&self) -> Result<usize> {
        let containers = self.ctr.list_containers().await?;
        let mut removed = 0;
        let mut in_use = std::collections::HashSet::new();
        let mut container_ids = std::collections::HashSet::new();
        for c in containers {
            container_ids.insert(c.id.clone());
            if Sandbox::from_labels(&c.id, &c.labels).is_none() || self.owned(&c.id) {
                in_use.insert(c.snapshot_key.clone());
                continue;
            }
            tracing::warn!(sandbox = %c.id, "sweeping a container no sandbox owns");
            self.cleanup(&c.id).await;
            removed += 1;
        }
        for id in self.cfg.net.list() {
            if !container_ids.contains(&id) && !self.owned(&id) {
                tracing::warn!(sandbox = %id, "sweeping a network namespace no sandbox owns");
                let net = self.cfg.net.clone();
                let _ = tokio::task::spawn_blocking(move || net.teardown(&id)).await;
                removed += 1;
            }
        }
        // image unpacks hold active snapshots of their own: not while one runs
        if let Ok(_images) = self.image_lock.try_lock() {
            for key in self.ctr.list_active_snapshots().await? {
                let owner = key.split('.').next().unwrap_or_default();
                if !in_use.contains(&key) && !self.owned(owner) {
                    tracing::warn!(snapshot = %key, "sweeping a snapshot no sandbox owns");
                    let _ = self.ctr.remove_snapshot(&key).await;
                    removed += 1;
                }
            }
        }
        removed += self.sweep_logs();
        Ok(removed)
    }

    /// A sandbox whose init (the runtime) exits on its own — killed, OOM,
    /// crashed — is marked FAILED and reported, so no one is handed a dead
    /// sandbox. Exits the agent caused itself (release) find no live entry.
    pub(super) async fn watch_exits(self: Arc<Self>) {
        let mut events = self.ctr.task_exits();
        while let Some(ev) = events.recv().await {
            match ev {
                TaskEvent::Exit { id, pid, status } => self.on_exit(&id, Some(pid), status).await,
                TaskEvent::Oom { id } => self.on_oom(&id).await,
                TaskEvent::Resubscribed => {
                    // containerd restarted: exits in the gap were not seen,
                    // and creates or releases it broke left debris
                    self.recheck_tasks().await;
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "sweep after containerd restart failed");
                    }
                }
            }
        }
    }

    /// Mark failed every sandbox whose task is gone or stopped (exits not
    /// seen as events).
    pub(super) async fn recheck_tasks(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            if let Ok(None | Some((TaskState::Stopped, _))) = self.ctr.task_state(&id).await {
                self.on_exit(&id, None, 0).await;
            }
        }
    }

    /// A sandbox's init exited (`pid` from the event, if any): mark it failed.
    pub(super) async fn on_exit(&self, id: &str, pid: Option<u32>, status: u32) {
        // paused filesystem-only: its task was stopped on purpose
        if self.is_paused_filesystem(id) {
            return;
        }
        // an exit of an earlier incarnation (recycle) while a new one runs
        if let Some(pid) = pid
            && let Ok(Some((TaskState::Running | TaskState::Paused, current))) =
                self.ctr.task_state(id).await
            && current != pid
        {
            return;
        }
        let failed = {
            let mut g = self.lock();
            match g.get_mut(id) {
                Some(sb)
                    if !matches!(
                        sb.state,
                        pb::SandboxState::Releasing
                            | pb::SandboxState::Creating
                            | pb::SandboxState::Failed
                    ) =>
                {
                    sb.state = pb::SandboxState::Failed;
                    sb.message = self.exit_reason(id, status);
                    Some(sb.clone())
                }
                _ => None,
            }
        };
        if let Some(sb) = failed {
            tracing::warn!(sandbox = %id, ?pid, status, "sandbox init exited; marked failed");
            self.forget_channel(id);
            let _ = self
                .ctr
                .set_labels(
                    id,
                    [(labels::STATE.to_string(), "failed".to_string())].into(),
                )
                .await;
            self.emit(&sb);
        }
    }

    /// Why sandbox `id`'s init exited, for its FAILED report.
    fn exit_reason(&self, id: &str, status: u32) -> String {
        if let Some(kill) = self.kills.lock().get(id) {
            return kill.message();
        }
        if status == 0 {
            "the sandbox's runtime exited".into()
        } else {
            format!("the sandbox's runtime exited with status {status}")
        }
    }

    /// The OOM killer hit sandbox `id`: counted and reported (watchers see
    /// each kill, the sandbox may live on), and remembered for its exit
    /// report; a sandbox already FAILED (the exit came first) gets its reason.
    pub(super) async fn on_oom(&self, id: &str) {
        tracing::warn!(sandbox = %id, "a process of the sandbox was OOM-killed");
        self.record_kill(id, Kill::Oom);
        let hit = {
            let mut g = self.lock();
            g.get_mut(id).map(|sb| {
                sb.oom_kills = sb.oom_kills.saturating_add(1);
                if sb.state == pb::SandboxState::Failed {
                    sb.message = self.exit_reason(id, 0);
                }
                sb.clone()
            })
        };
        if let Some(sb) = hit {
            self.emit(&sb);
        }
    }

    /// Rebuild state from containerd: running sandboxes are adopted, dead
    /// ones and orphaned netns/snapshots are cleaned up.
    pub async fn recover(&self) -> Result<()> {
        let containers = self.ctr.list_containers().await?;
        let mut adopted = 0;
        let mut cleaned = 0;
        for c in containers {
            let Some(mut sb) = Sandbox::from_labels(&c.id, &c.labels) else {
                continue;
            };
            // paused filesystem-only: no task, on purpose
            let fs_paused =
                sb.state == pb::SandboxState::Paused && Self::labels_paused_filesystem(&c.labels);
            let alive = fs_paused
                || matches!(
                    self.ctr.task_state(&c.id).await?,
                    Some((TaskState::Running | TaskState::Paused, _))
                );
            let netns_ok = self.cfg.net.netns_path(&c.id).exists();
            let reachable = if sb.template.checkpointable && alive {
                // a new tunnel, on the same port when it is free
                match self
                    .open_tunnel(&c.id, sb.port, sb.template.run_as_root)
                    .await
                {
                    Ok(p) if p == sb.port => true,
                    Ok(p) => {
                        sb.port = p;
                        self.ctr
                            .set_labels(&c.id, [(labels::PORT.to_string(), p.to_string())].into())
                            .await
                            .is_ok()
                    }
                    Err(_) => false,
                }
            } else {
                netns_ok
            };
            if alive
                && reachable
                && matches!(
                    sb.state,
                    pb::SandboxState::Warm | pb::SandboxState::Claimed | pb::SandboxState::Paused
                )
            {
                if let Ok(Some((TaskState::Paused, _))) = self.ctr.task_state(&c.id).await {
                    sb.state = pb::SandboxState::Paused;
                }
                if sb.state == pb::SandboxState::Warm {
                    // The claimed label is written after the inject (off the
                    // claim's critical path): a crash in between leaves a used
                    // sandbox labelled warm. Its runtime knows; never hand it out again.
                    let health = async {
                        let mut c = self.runtime_client(&sb).await?;
                        c.health(auth(&sb, pb::HealthRequest {}))
                            .await
                            .map_err(|s| AgentError::runtime(&sb.id, "health check", s))
                    };
                    match tokio::time::timeout(Duration::from_secs(10), health).await {
                        Ok(Ok(h)) if !h.get_ref().used => {}
                        Ok(Ok(_)) => {
                            tracing::warn!(sandbox = %c.id, "sandbox labelled warm was used (crash before its claimed label): not warm");
                            sb.state = pb::SandboxState::Claimed;
                            let _ = self
                                .ctr
                                .set_labels(
                                    &c.id,
                                    [(labels::STATE.to_string(), "claimed".to_string())].into(),
                                )
                                .await;
                        }
                        _ => {
                            tracing::warn!(sandbox = %c.id, "warm sandbox's runtime does not answer: marked failed");
                            sb.state = pb::SandboxState::Failed;
                        }
                    }
                }
                if fs_paused {
                    self.fs_paused.lock().insert(c.id.clone());
                }
                self.lock().insert(c.id.clone(), sb);
                adopted += 1;
            } else {
                self.cleanup(&c.id).await;
                cleaned += 1;
            }
        }
        // orphaned netns and snapshots (a crash between netns setup or
        // snapshot prepare and container create, an interrupted image unpack)
        cleaned += self.sweep().await?;
        tracing::info!(adopted, cleaned, "recovered node state from containerd");
        Ok(())
    }
}
