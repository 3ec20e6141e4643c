//! Sandbox lifecycle: image, create, start, readiness, inject, pause and
//! resume, host mounts, release, upgrade, and the cleanup behind them.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use sandpool_proto::v1 as pb;

use crate::{
    containerd::{NewContainer, TaskState},
    error::{AgentError, Result},
    imageconfig::ImageConfig,
    registry::Credentials,
    spec::{self, SandboxSpec},
};

use super::{
    Agent, Sandbox, ValidTemplate, auth, copy_tree, labels, new_id, state_label, unix_ms,
    validate_template,
};

impl Agent {
    /// Create and start a warm sandbox; it is ready when its runtime answers.
    pub async fn create(
        self: &Arc<Self>,
        pool: &str,
        template: pb::SandboxTemplate,
        id: Option<String>,
    ) -> Result<Sandbox> {
        self.create_with(pool, template, id, None).await
    }

    /// [`Self::create`], an absent image pulled with `creds` (used for that
    /// pull only: never logged nor stored).
    #[tracing::instrument(name = "create", skip_all, fields(pool = %pool))]
    pub async fn create_with(
        self: &Arc<Self>,
        pool: &str,
        template: pb::SandboxTemplate,
        id: Option<String>,
        creds: Option<Credentials>,
    ) -> Result<Sandbox> {
        let valid = validate_template(&template)?;
        // a template above the node's maximum is refused before anything is made
        self.cfg.limits.apply(&valid.limits)?;
        let id = new_id(id)?;
        let _busy = self.busy(&id);
        let (image, chain, image_cfg) = self.ensure_image_with(&valid.image, creds).await?;
        self.check_room(&id)?;
        let (ip, port) = if valid.checkpointable {
            (
                Ipv4Addr::LOCALHOST,
                self.open_tunnel(&id, 0, valid.run_as_root).await?,
            )
        } else {
            let net = self.cfg.net.clone();
            let id2 = id.clone();
            (
                tokio::task::spawn_blocking(move || net.setup(&id2))
                    .await
                    .map_err(|e| AgentError::network(format!("network setup task of {id}"), e))??,
                spec::RUNTIME_PORT,
            )
        };
        if !valid.checkpointable
            && let Some(p) = valid.egress.clone().filter(|p| !p.allows_all())
            && let Err(e) = self.apply_egress(&id, Some(p)).await
        {
            self.cleanup(&id).await;
            return Err(e);
        }
        let mut sb = Sandbox {
            id: id.clone(),
            message: String::new(),
            oom_kills: 0,
            pool: pool.to_string(),
            state: pb::SandboxState::Creating,
            ip,
            port,
            token: uuid::Uuid::new_v4().simple().to_string(),
            runtime_class: valid.runtime_class,
            template: template.clone(),
            created_ms: unix_ms(),
            image_command: image_cfg.default_process(template.labels.iter()),
        };
        match self
            .start_container(&sb, &image, &chain, &image_cfg, &valid, None)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                self.cleanup(&id).await;
                return Err(e);
            }
        }
        sb.state = pb::SandboxState::Warm;
        if let Err(e) = self
            .ctr
            .set_labels(
                &id,
                [(labels::STATE.to_string(), "warm".to_string())].into(),
            )
            .await
        {
            self.cleanup(&id).await;
            return Err(e);
        }
        self.lock().insert(id.clone(), sb.clone());
        self.emit(&sb);
        Ok(sb)
    }

    /// Refuse a second sandbox `id` or one past the node's maximum.
    pub(super) fn check_room(&self, id: &str) -> Result<()> {
        let g = self.lock();
        if g.contains_key(id) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} already exists"
            )));
        }
        if g.len() as u32 >= self.cfg.max_sandboxes {
            return Err(AgentError::Exhausted(format!(
                "{} sandboxes (max {})",
                g.len(),
                self.cfg.max_sandboxes
            )));
        }
        Ok(())
    }

    /// The `BinaryName` the runc v2 shim runs a sandbox of `class` with:
    /// runsc through its wrapper, the configured runc-compatible runtime
    /// (crun) for the runc class, or empty for the shim's own runc.
    fn shim_binary(&self, class: pb::RuntimeClass, checkpointable: bool) -> String {
        match class {
            pb::RuntimeClass::Runsc if checkpointable => self.runsc_nonet.display().to_string(),
            pb::RuntimeClass::Runsc => self.runsc_wrapper.display().to_string(),
            _ => self
                .cfg
                .runc_bin
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }
    }

    /// The runtime spec of sandbox `sb` from `valid` on `image`.
    pub(super) async fn sandbox_spec(
        &self,
        sb: &Sandbox,
        image: &str,
        chain: &str,
        image_cfg: &ImageConfig,
        valid: &ValidTemplate,
    ) -> Result<serde_json::Value> {
        let user = if valid.run_as_root {
            None
        } else {
            Some(self.image_user(image, chain, image_cfg).await?)
        };
        let mut env: Vec<(String, String)> = image_cfg
            .env
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        env.extend(valid.env.iter().cloned());
        env.extend(spec::sandbox_otel_env(
            |k| std::env::var(k).ok(),
            self.cfg.net.gateway_ip(),
        ));
        Ok(SandboxSpec {
            id: sb.id.clone(),
            env,
            netns_path: if valid.checkpointable {
                String::new()
            } else {
                self.cfg.net.netns_path(&sb.id).display().to_string()
            },
            runtime_bin: self.cfg.runtime_bin.display().to_string(),
            limits: self.cfg.limits.apply(&valid.limits)?,
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            access_token: sb.token.clone(),
            user,
            cwd: image_cfg.working_dir.clone(),
        }
        .to_json())
    }

    pub(super) async fn start_container(
        &self,
        sb: &Sandbox,
        image: &str,
        chain: &str,
        image_cfg: &ImageConfig,
        valid: &ValidTemplate,
        restore: Option<&Path>,
    ) -> Result<()> {
        let spec = self
            .sandbox_spec(sb, image, chain, image_cfg, valid)
            .await?;
        let binary = self.shim_binary(sb.runtime_class, valid.checkpointable);
        let log = self.log_path(&sb.id);
        // A fresh snapshot key per incarnation (recycle re-creates the same id).
        let snapshot_key = format!(
            "{}.{}",
            sb.id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mounts = self
            .ctr
            .create_container(NewContainer {
                id: &sb.id,
                snapshot_key: &snapshot_key,
                image,
                parent_snapshot: chain,
                labels: sb.label_map()?,
                spec: &spec,
                runtime_binary: &binary,
            })
            .await?;
        let image_dir = match restore {
            Some(dir) => {
                // the restored kernel re-opens files by path: give it the
                // root file system it had at the checkpoint
                let upper = crate::containerd::upperdir(&mounts).ok_or_else(|| {
                    AgentError::Checkpoint(format!(
                        "sandbox {}'s rootfs has no overlay upper directory",
                        sb.id
                    ))
                })?;
                copy_tree(&dir.join("fs"), &upper).await?;
                Some(dir.join("image"))
            }
            None => None,
        };
        self.ctr
            .start_task(
                &sb.id,
                mounts,
                &log,
                image_dir.as_deref().map(|d| (binary.as_str(), d)),
            )
            .await?;
        if restore.is_some() {
            // it was checkpointed without sockets: listen again
            self.runtime_sockets(&sb.id, valid.run_as_root, false)
                .await?;
        }
        self.wait_ready(sb).await
    }

    /// Wait until sandbox `id`'s runtime answers its health check (after a
    /// resume, say).
    pub async fn runtime_health(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        self.wait_ready(&sb).await
    }

    /// Poll the runtime's gRPC health until it answers.
    pub(super) async fn wait_ready(&self, sb: &Sandbox) -> Result<()> {
        let deadline = Instant::now() + self.cfg.ready_timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.runtime_client(sb).await {
                Ok(mut c) => match c.health(auth(sb, pb::HealthRequest {})).await {
                    Ok(_) => return Ok(()),
                    Err(s) => last = s.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            if let Ok(Some((TaskState::Stopped, _))) = self.ctr.task_state(&sb.id).await {
                let log = std::fs::read_to_string(self.log_path(&sb.id)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(AgentError::Runtime {
                    id: sb.id.clone(),
                    message: format!("sandbox exited during start: {}", tail.join(" | ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(AgentError::Runtime {
            id: sb.id.clone(),
            message: format!(
                "runtime not ready after {:?}: {last}",
                self.cfg.ready_timeout
            ),
        })
    }

    /// A client for the sandbox's runtime, on a cached channel when there is one.
    pub async fn runtime_client(
        &self,
        sb: &Sandbox,
    ) -> Result<pb::runtime_client::RuntimeClient<tonic::transport::Channel>> {
        let cached = self.channels.lock().get(&sb.id).cloned();
        if let Some(ch) = cached {
            return Ok(pb::runtime_client::RuntimeClient::new(ch));
        }
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{}:{}", sb.ip, sb.port))
            .map_err(|e| AgentError::runtime(&sb.id, "runtime endpoint", e))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let ch = ep
            .connect()
            .await
            .map_err(|e| AgentError::runtime(&sb.id, "connecting", e))?;
        self.channels.lock().insert(sb.id.clone(), ch.clone());
        Ok(pb::runtime_client::RuntimeClient::new(ch))
    }

    pub(super) fn forget_channel(&self, id: &str) {
        self.channels.lock().remove(id);
    }

    /// Start the claimed sandbox's entrypoint through its runtime.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn inject(
        &self,
        id: &str,
        mut process: pb::InjectRequest,
    ) -> Result<(pb::ProcessState, Duration)> {
        let sb = self.get(id)?;
        // No argv: the template's command, else the image's default process.
        if process.argv.is_empty() {
            process.argv =
                sandpool_core::start::start_argv(&[], &sb.template.command, &sb.image_command);
            if process.argv.is_empty() {
                return Err(AgentError::InvalidTemplate(
                    "inject needs argv (neither the template nor the image has a default command)"
                        .into(),
                ));
            }
            for (k, v) in &sb.template.env {
                process.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if sb.state == pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is paused"
            )));
        }
        let t0 = Instant::now();
        let mut c = self.runtime_client(&sb).await?;
        let st = c
            .inject(auth(&sb, process))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::InvalidArgument => {
                    AgentError::InvalidTemplate(s.message().to_string())
                }
                tonic::Code::AlreadyExists => {
                    AgentError::FailedPrecondition(s.message().to_string())
                }
                _ => {
                    self.forget_channel(id);
                    AgentError::runtime(id, "inject", s)
                }
            })?;
        let took = t0.elapsed();
        // In memory now; the recovery label (a containerd metadata write with
        // fsync) follows off the claim's critical path. The scheduler's store
        // is the durable record of the claim.
        let sb = {
            let mut g = self.lock();
            let sb = g
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
            sb.state = pb::SandboxState::Claimed;
            sb.clone()
        };
        self.emit(&sb);
        let ctr = self.ctr.clone();
        let id2 = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = ctr
                .set_labels(
                    &id2,
                    [(labels::STATE.to_string(), "claimed".to_string())].into(),
                )
                .await
            {
                tracing::warn!(sandbox = %id2, error = %e, "recording claimed state failed");
            }
        });
        Ok((st.into_inner(), took))
    }

    pub(super) async fn set_state(&self, id: &str, state: pb::SandboxState) -> Result<Sandbox> {
        self.ctr
            .set_labels(
                id,
                [(labels::STATE.to_string(), state_label(state).to_string())].into(),
            )
            .await?;
        let sb = {
            let mut g = self.lock();
            let sb = g
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
            sb.state = state;
            sb.clone()
        };
        self.emit(&sb);
        Ok(sb)
    }

    pub async fn pause(&self, id: &str) -> Result<Sandbox> {
        let sb = self.get(id)?;
        if sb.state == pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is already paused"
            )));
        }
        self.ctr.pause(id).await?;
        self.set_state(id, pb::SandboxState::Paused).await
    }

    pub async fn resume(&self, id: &str) -> Result<Sandbox> {
        let sb = self.get(id)?;
        if sb.state != pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is not paused"
            )));
        }
        if self.is_paused_filesystem(id) {
            return self.resume_filesystem(sb).await;
        }
        self.ctr.resume(id).await?;
        self.set_state(id, pb::SandboxState::Claimed).await
    }

    /// Mount a host directory or file (under a mount root) into a running runc
    /// sandbox. Mounts live in the sandbox's mount namespace, so they end with
    /// the container on release (recycle starts a fresh one).
    pub async fn mount(
        &self,
        id: &str,
        host_path: &str,
        mount_path: &str,
        read_only: bool,
    ) -> Result<Sandbox> {
        let (sb, pid, source) = self.mount_target(id, Some(host_path), mount_path).await?;
        let target = mount_path.to_string();
        tokio::task::spawn_blocking(move || {
            crate::mounts::mount_into(pid, &source.unwrap_or_default(), &target, read_only)
        })
        .await
        .map_err(|e| AgentError::network("mount worker", e))??;
        tracing::info!(sandbox = %id, host_path, mount_path, read_only, "mounted");
        Ok(sb)
    }

    pub async fn unmount(&self, id: &str, mount_path: &str) -> Result<Sandbox> {
        let (sb, pid, _) = self.mount_target(id, None, mount_path).await?;
        let target = mount_path.to_string();
        tokio::task::spawn_blocking(move || crate::mounts::unmount_from(pid, &target))
            .await
            .map_err(|e| AgentError::network("unmount worker", e))?
            .map_err(|e| {
                AgentError::precondition(format!("{mount_path} is not a mount in sandbox {id}"), e)
            })?;
        Ok(sb)
    }

    pub(super) async fn mount_target(
        &self,
        id: &str,
        host_path: Option<&str>,
        mount_path: &str,
    ) -> Result<(Sandbox, u32, Option<PathBuf>)> {
        let sb = self.get(id)?;
        if sb.runtime_class == pb::RuntimeClass::Runsc {
            return Err(AgentError::Unsupported(
                "dynamic mounts need a runc sandbox (gVisor keeps its own file system)".into(),
            ));
        }
        if sb.state == pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is paused"
            )));
        }
        let source = crate::mounts::source_of(
            host_path,
            mount_path,
            &self.cfg.mount_roots,
            &self.cfg.node_name,
        )?;
        match self.ctr.task_state(id).await? {
            Some((TaskState::Running, pid)) => Ok((sb, pid, source)),
            _ => Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is not running"
            ))),
        }
    }

    /// Release: delete, or recycle (fresh task, rootfs and runtime, same
    /// network and container; see [`Agent::recycle_as`]) back to warm.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn release(
        self: &Arc<Self>,
        id: &str,
        policy: pb::ReleasePolicy,
    ) -> Result<Option<Sandbox>> {
        let sb = self.get(id)?;
        let _busy = self.busy(id);
        let policy = match policy {
            pb::ReleasePolicy::Unspecified => validate_template(&sb.template)
                .map(|v| v.release_policy)
                .unwrap_or(pb::ReleasePolicy::Delete),
            p => p,
        };
        if policy == pb::ReleasePolicy::Recycle {
            let fresh = Sandbox {
                token: uuid::Uuid::new_v4().simple().to_string(),
                message: String::new(),
                oom_kills: 0,
                state: pb::SandboxState::Warm,
                ..sb
            };
            let fresh = self.recycle_as(fresh).await?;
            // a claim's own egress policy and vault go with the claim
            self.forget_cred(id, fresh.ip).await;
            if !fresh.template.checkpointable {
                let pools = validate_template(&fresh.template)?.egress;
                self.apply_egress(id, pools).await?;
            }
            return Ok(Some(fresh));
        }
        {
            let mut g = self.lock();
            if let Some(s) = g.get_mut(id) {
                s.state = pb::SandboxState::Releasing;
            }
        }
        let res = self.destroy_all(id).await;
        self.lock().remove(id);
        self.emit_removed(id);
        res.map(|_| None)
    }

    /// In-place image upgrade: restart sandbox `id` on `image`, keeping its
    /// id, address, token and state (its processes start over). The caller
    /// holds nothing busy.
    #[tracing::instrument(skip_all, fields(sandbox = %id, image))]
    pub async fn upgrade(&self, id: &str, image: &str) -> Result<Sandbox> {
        let sb = self.get(id)?;
        match sb.state {
            pb::SandboxState::Warm | pb::SandboxState::Claimed => {}
            s => {
                return Err(AgentError::FailedPrecondition(format!(
                    "sandbox {id} is {}: only a running sandbox can change its image",
                    state_label(s)
                )));
            }
        }
        let image = image.trim();
        if image.is_empty() {
            return Err(AgentError::InvalidTemplate("the new image is empty".into()));
        }
        // an unknown image is refused before the sandbox is touched
        self.ensure_image(image).await?;
        let _busy = self.busy(id);
        let template = pb::SandboxTemplate {
            image: image.to_string(),
            ..sb.template.clone()
        };
        self.restart_as(Sandbox { template, ..sb }).await
    }

    /// Start `sb` afresh (same id, netns or tunnel): its container is
    /// replaced by one from `sb.template`, and it ends in `sb.state`. A
    /// sandbox that fails to come back is removed.
    pub(super) async fn restart_as(&self, mut sb: Sandbox) -> Result<Sandbox> {
        let id = sb.id.clone();
        let valid = validate_template(&sb.template)?;
        if let Some(s) = self.lock().get_mut(&id) {
            s.state = pb::SandboxState::Releasing;
        }
        self.forget_channel(&id);
        self.forget_incarnation(&id);
        let started = async {
            self.ctr.destroy(&id).await?;
            let (image, chain, image_cfg) = self.ensure_image(&valid.image).await?;
            // an upgrade's new image brings its own default process
            let creating = Sandbox {
                state: pb::SandboxState::Creating,
                image_command: image_cfg.default_process(sb.template.labels.iter()),
                ..sb.clone()
            };
            self.start_container(&creating, &image, &chain, &image_cfg, &valid, None)
                .await?;
            self.ctr
                .set_labels(
                    &id,
                    [(labels::STATE.to_string(), state_label(sb.state).to_string())].into(),
                )
                .await?;
            Ok::<_, AgentError>(creating.image_command)
        };
        match started.await {
            Ok(cmd) => sb.image_command = cmd,
            Err(e) => {
                self.lock().remove(&id);
                self.cleanup(&id).await;
                self.emit_removed(&id);
                return Err(e);
            }
        }
        self.lock().insert(id, sb.clone());
        self.emit(&sb);
        Ok(sb)
    }

    pub(super) async fn destroy_all(&self, id: &str) -> Result<()> {
        self.forget_channel(id);
        self.forget_incarnation(id);
        self.remove_log(id);
        self.forget_dns(id);
        if let Ok(sb) = self.get(id) {
            self.forget_cred(id, sb.ip).await;
        }
        if self.close_tunnel(id).await {
            // a network-less sandbox: no netns, no address
            return self.ctr.destroy(id).await;
        }
        self.ctr.destroy(id).await?;
        let net = self.cfg.net.clone();
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || net.teardown(&id2))
            .await
            .map_err(|e| AgentError::network(format!("network teardown task of {id}"), e))?
    }

    /// Best-effort removal of everything a sandbox id may own.
    pub(super) async fn cleanup(&self, id: &str) {
        if let Err(e) = self.destroy_all(id).await {
            tracing::warn!(sandbox = id, error = %e, "cleanup incomplete");
        }
    }
}
