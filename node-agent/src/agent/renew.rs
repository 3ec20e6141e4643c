//! Recycling a released sandbox in place: its network namespace, address
//! and container record stay; its task (shim, runtime and every tenant
//! process), writable layer, tmpfs mounts, environment and access token are
//! new. A sandbox that cannot be renewed provably clean is started afresh
//! instead ([`Agent::restart_as`]).

use std::sync::atomic::Ordering;

use sandpool_proto::v1 as pb;

use crate::error::Result;

use super::{Agent, Sandbox, state_label, validate_template};

impl Agent {
    /// Bring `sb` (released, with its new token) back warm: renewed in
    /// place when it can be, else started afresh.
    pub(super) async fn recycle_as(&self, sb: Sandbox) -> Result<Sandbox> {
        // a network-less sandbox's runtime tunnel belongs to its task
        if sb.template.checkpointable {
            return self.restart_as(sb).await;
        }
        match self.renew_as(&sb).await {
            Ok(()) => {
                self.renewed.fetch_add(1, Ordering::Relaxed);
                self.lock().insert(sb.id.clone(), sb.clone());
                self.emit(&sb);
                Ok(sb)
            }
            Err(e) => {
                tracing::warn!(sandbox = %sb.id, error = %e, "in-place reset failed; starting afresh");
                self.restart_as(sb).await
            }
        }
    }

    /// How many recycles renewed their sandbox in place (rather than
    /// falling back to a fresh start).
    pub fn renewed_in_place(&self) -> u64 {
        self.renewed.load(Ordering::Relaxed)
    }

    /// Renew `sb`'s task and rootfs in place (see [`crate::containerd::Ctr::renew`])
    /// and wait until its new runtime answers.
    async fn renew_as(&self, sb: &Sandbox) -> Result<()> {
        let id = sb.id.as_str();
        let valid = validate_template(&sb.template)?;
        if let Some(s) = self.lock().get_mut(id) {
            s.state = pb::SandboxState::Releasing;
        }
        self.forget_channel(id);
        self.forget_incarnation(id);
        let (image, chain, env) = self.ensure_image(&valid.image).await?;
        let creating = Sandbox {
            state: pb::SandboxState::Creating,
            ..sb.clone()
        };
        let spec = self
            .sandbox_spec(&creating, &image, &chain, &env, &valid)
            .await?;
        let mounts = self
            .ctr
            .renew(id, &chain, &spec, creating.label_map()?)
            .await?;
        self.ctr
            .start_task(id, mounts, &self.log_path(id), None)
            .await?;
        self.wait_ready(sb).await?;
        self.ctr
            .set_labels(
                id,
                [(
                    super::labels::STATE.to_string(),
                    state_label(sb.state).to_string(),
                )]
                .into(),
            )
            .await
    }
}
