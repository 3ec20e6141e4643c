//! Checkpoint, restore and fork of (runsc) sandboxes through the node's
//! checkpoint store.

use std::{
    net::Ipv4Addr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use sandpool_proto::v1 as pb;

use crate::{
    containerd::TaskState,
    error::{AgentError, Result},
};

use super::{
    Agent, Sandbox, copy_tree, labels, new_id, run_checked, state_label, template_label,
    template_of_label, unix_ms, validate_template,
};

impl Agent {
    /// Checkpoint sandbox `id`'s memory and file system into the node's
    /// checkpoint store. Only checkpointable (network-less runsc) sandboxes
    /// can; for others the answer names what this node lacks. The checkpoint
    /// stops the sandbox; with `leave_running` it is restored in place right
    /// after (same id, port and token).
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn checkpoint(
        self: &Arc<Self>,
        id: &str,
        leave_running: bool,
        owner: &str,
        name: &str,
    ) -> Result<pb::CheckpointInfo> {
        if owner.len() > 256 || name.len() > 256 {
            return Err(AgentError::InvalidTemplate(
                "checkpoint owner and name: at most 256 bytes".into(),
            ));
        }
        let sb = self.get(id)?;
        let prior = sb.state;
        checkpoint_allowed(&sb, id).await?;
        let _busy = self.busy(id);
        // its exit is ours: on_exit leaves a releasing sandbox alone
        if let Some(s) = self.lock().get_mut(id) {
            s.state = pb::SandboxState::Releasing;
        }
        self.forget_channel(id);
        self.close_tunnel(id).await;
        let checkpoint_id = format!("ck-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        let dir = self.checkpoints.dir(&checkpoint_id)?;
        let t0 = Instant::now();
        let made = match self
            .runtime_sockets(id, sb.template.run_as_root, true)
            .await
        {
            Ok(()) => self.checkpoint_to(&sb, &dir).await,
            Err(e) => Err(e),
        };
        let meta = match made {
            Ok(size) => crate::checkpoint::Meta {
                checkpoint_id: checkpoint_id.clone(),
                sandbox_id: id.to_string(),
                pool: sb.pool.clone(),
                template: template_label(&sb.template)?,
                token: sb.token.clone(),
                image: sb.template.image.clone(),
                created_unix_ms: unix_ms(),
                size_bytes: size,
                owner: owner.to_string(),
                name: name.to_string(),
            },
            Err(e) => {
                self.checkpoint_failed(&sb, id, prior, &dir).await;
                return Err(e);
            }
        };
        self.checkpoints.write(&meta)?;
        tracing::info!(checkpoint = %checkpoint_id, size = meta.size_bytes, ms = t0.elapsed().as_millis() as u64, "checkpointed");
        self.ctr.destroy(id).await?;
        if leave_running {
            if let Err(e) = self.restore_into(&meta, id, sb.port, prior).await {
                self.lock().remove(id);
                self.emit_removed(id);
                return Err(AgentError::checkpoint(
                    format!(
                        "checkpoint {checkpoint_id} was made, but sandbox {id} did not come back from it"
                    ),
                    e,
                ));
            }
        } else {
            self.lock().remove(id);
            self.emit_removed(id);
        }
        Ok(checkpoint_info(&meta))
    }

    /// A checkpoint that failed: its directory goes; the sandbox runs on if
    /// runsc refused before stopping it, otherwise it is removed.
    pub(super) async fn checkpoint_failed(
        &self,
        sb: &Sandbox,
        id: &str,
        prior: pb::SandboxState,
        dir: &Path,
    ) {
        let _ = std::fs::remove_dir_all(dir);
        // still running if runsc refused before stopping it
        if let Ok(Some((TaskState::Running, _))) = self.ctr.task_state(id).await
            && self
                .runtime_sockets(id, sb.template.run_as_root, false)
                .await
                .is_ok()
            && self
                .open_tunnel(id, sb.port, sb.template.run_as_root)
                .await
                .is_ok()
            && let Some(s) = self.lock().get_mut(id)
        {
            s.state = prior;
        } else {
            self.lock().remove(id);
            self.cleanup(id).await;
            self.emit_removed(id);
        }
    }

    /// `runsc checkpoint` into `dir/image`, then the rootfs changes into
    /// `dir/fs`; returns the bytes stored.
    pub(super) async fn checkpoint_to(&self, sb: &Sandbox, dir: &Path) -> Result<u64> {
        let image = dir.join("image");
        std::fs::create_dir_all(&image)
            .map_err(|e| AgentError::io(image.display().to_string(), e))?;
        let mut cmd = tokio::process::Command::new(&self.runsc_nonet);
        cmd.args([
            "--root",
            &self.ctr.runtime_root(),
            "checkpoint",
            "--image-path",
        ])
        .arg(&image)
        .arg(&sb.id);
        run_checked(
            cmd,
            &format!("runsc checkpoint of {}", sb.id),
            Duration::from_secs(120),
        )
        .await?;
        // the sandbox stops once its state is saved
        if !self
            .ctr
            .wait_stopped(&sb.id, Duration::from_secs(10))
            .await?
        {
            return Err(AgentError::Checkpoint(format!(
                "sandbox {} still runs after its checkpoint",
                sb.id
            )));
        }
        let upper = self.ctr.rootfs_upperdir(&sb.id).await?;
        copy_tree(&upper, &dir.join("fs")).await?;
        let d = dir.to_path_buf();
        Ok(
            tokio::task::spawn_blocking(move || crate::checkpoint::disk_usage(&d))
                .await
                .unwrap_or(0),
        )
    }

    /// A new sandbox `id` from checkpoint `meta`, its runtime on `port` (0:
    /// any), left in `state`. The caller holds `id` busy.
    pub(super) async fn restore_into(
        &self,
        meta: &crate::checkpoint::Meta,
        id: &str,
        port: u16,
        state: pb::SandboxState,
    ) -> Result<Sandbox> {
        let template = template_of_label(&meta.template).map_err(|e| {
            AgentError::checkpoint(format!("{}: unreadable template", meta.checkpoint_id), e)
        })?;
        let valid = validate_template(&template)?;
        let (image, chain, image_cfg) = self.ensure_image(&valid.image).await?;
        let port = self.open_tunnel(id, port, valid.run_as_root).await?;
        let mut sb = Sandbox {
            id: id.to_string(),
            message: String::new(),
            oom_kills: 0,
            pool: meta.pool.clone(),
            state: pb::SandboxState::Creating,
            ip: Ipv4Addr::LOCALHOST,
            port,
            token: meta.token.clone(),
            runtime_class: valid.runtime_class,
            image_command: image_cfg.default_process(template.labels.iter()),
            template,
            created_ms: unix_ms(),
        };
        let dir = self.checkpoints.dir(&meta.checkpoint_id)?;
        if let Err(e) = self
            .start_container(&sb, &image, &chain, &image_cfg, &valid, Some(&dir))
            .await
        {
            self.cleanup(id).await;
            return Err(e);
        }
        sb.state = state;
        if let Err(e) = self
            .ctr
            .set_labels(
                id,
                [(labels::STATE.to_string(), state_label(state).to_string())].into(),
            )
            .await
        {
            self.cleanup(id).await;
            return Err(e);
        }
        self.lock().insert(id.to_string(), sb.clone());
        self.emit(&sb);
        Ok(sb)
    }

    /// Restore checkpoint `checkpoint_id` into a new (claimed) sandbox.
    #[tracing::instrument(skip_all, fields(checkpoint = %checkpoint_id))]
    pub async fn restore(&self, checkpoint_id: &str, id: Option<String>) -> Result<Sandbox> {
        let meta = self.checkpoints.read(checkpoint_id)?;
        let id = new_id(id)?;
        let _busy = self.busy(&id);
        self.check_room(&id)?;
        self.restore_into(&meta, &id, 0, pb::SandboxState::Claimed)
            .await
    }

    /// Restore one checkpoint into `count` sandboxes at once (RL branching);
    /// all or none.
    #[tracing::instrument(skip_all, fields(checkpoint = %checkpoint_id, count))]
    pub async fn fork(self: &Arc<Self>, checkpoint_id: &str, count: u32) -> Result<Vec<Sandbox>> {
        if count == 0 || count > MAX_FORK {
            return Err(AgentError::InvalidTemplate(format!(
                "fork count {count}: use 1 to {MAX_FORK}"
            )));
        }
        self.checkpoints.read(checkpoint_id)?;
        let results =
            futures_util::future::join_all((0..count).map(|_| self.restore(checkpoint_id, None)))
                .await;
        let mut made = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(sb) => made.push(sb),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for sb in &made {
                let _ = self.release(&sb.id, pb::ReleasePolicy::Delete).await;
            }
            return Err(e);
        }
        Ok(made)
    }

    pub fn list_checkpoints(&self) -> Vec<pb::CheckpointInfo> {
        self.checkpoints
            .list()
            .iter()
            .map(checkpoint_info)
            .collect()
    }

    pub fn delete_checkpoint(&self, checkpoint_id: &str) -> Result<()> {
        self.checkpoints.delete(checkpoint_id)
    }
}

/// Most sandboxes one fork makes.
pub const MAX_FORK: u32 = 64;

fn checkpoint_info(m: &crate::checkpoint::Meta) -> pb::CheckpointInfo {
    pb::CheckpointInfo {
        checkpoint_id: m.checkpoint_id.clone(),
        sandbox_id: m.sandbox_id.clone(),
        size_bytes: m.size_bytes,
        created_unix_ms: m.created_unix_ms,
        runtime_class: pb::RuntimeClass::Runsc as i32,
        pool: m.pool.clone(),
        image: m.image.clone(),
        owner: m.owner.clone(),
        name: m.name.clone(),
        // the scheduler's to fill
        source_metadata: Default::default(),
        filesystem_only: false,
    }
}

/// Whether CRIU can work here (`criu check`), answered once per process.
async fn criu_check() -> std::result::Result<(), String> {
    static RESULT: tokio::sync::OnceCell<std::result::Result<(), String>> =
        tokio::sync::OnceCell::const_new();
    RESULT
        .get_or_init(|| async {
            match tokio::process::Command::new("criu")
                .arg("check")
                .output()
                .await
            {
                Err(e) => Err(format!("criu is not installed ({e})")),
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    let first = err.lines().next().unwrap_or("no output").trim().to_string();
                    Err(format!("`criu check` fails on this kernel: {first}"))
                }
            }
        })
        .await
        .clone()
}

/// Whether sandbox `id` can be checkpointed now: a checkpointable template
/// (the answer names what this node lacks otherwise) in a running state.
async fn checkpoint_allowed(sb: &Sandbox, id: &str) -> Result<()> {
    let prior = sb.state;
    if !sb.template.checkpointable {
        let reason = match sb.runtime_class {
            pb::RuntimeClass::Runsc => "this runsc sandbox uses gVisor host networking inside its netns (this runsc cannot attach its netstack to a veth on this kernel), and gVisor cannot checkpoint host networking (google/gvisor#6243); create it from a checkpointable template (runsc without a network)".to_string(),
            _ => match criu_check().await {
                Err(why) => format!("runc checkpoint needs CRIU, and {why}"),
                Ok(()) => "runc checkpoint through CRIU is not implemented yet (CRIU works on this node); use a checkpointable runsc template".to_string(),
            },
        };
        return Err(AgentError::Unsupported(format!(
            "checkpoint of sandbox {id} (unsupported on this node: {reason})"
        )));
    }
    match prior {
        pb::SandboxState::Warm | pb::SandboxState::Claimed => {}
        pb::SandboxState::Paused => {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is paused: resume it before a checkpoint"
            )));
        }
        s => {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is {}: only a running sandbox can be checkpointed",
                state_label(s)
            )));
        }
    }
    Ok(())
}
