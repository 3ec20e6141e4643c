//! What a claim changes on the warm sandbox it takes, before its process
//! starts: the egress policy and the resource limits it asks for.

use sandpool_core::egress::{EgressAction, EgressPolicy};
use sandpool_proto::v1 as pb;

use crate::{
    cgroup, egress,
    error::{AgentError, Result},
    quantity,
    spec::Limits,
};

use super::{Agent, validate_template};

impl Agent {
    /// Replace sandbox `id`'s egress policy (`None`: everything allowed).
    /// A network-less sandbox has no egress: only a policy that denies
    /// everything fits it.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn set_egress(&self, id: &str, policy: Option<pb::EgressPolicy>) -> Result<()> {
        let sb = self.get(id)?;
        let policy = policy.as_ref().map(egress::parse).transpose()?;
        if sb.template.checkpointable {
            let denies_all = policy.as_ref().is_some_and(|p| {
                p.default_action == EgressAction::Deny
                    && p.rules.iter().all(|r| r.action == EgressAction::Deny)
            });
            if denies_all {
                return Ok(());
            }
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} has no network (checkpointable): it cannot be allowed any egress"
            )));
        }
        self.apply_egress(id, policy).await
    }

    /// Load `policy` into sandbox `id`'s netns (off the async threads).
    pub(super) async fn apply_egress(&self, id: &str, policy: Option<EgressPolicy>) -> Result<()> {
        let netns = self.cfg.net.netns_path(id);
        let platform: Vec<_> = self
            .cfg
            .net
            .gateway_ip()
            .map(|gw| {
                self.cfg
                    .net
                    .allow_host_ports
                    .iter()
                    .map(|p| (std::net::IpAddr::V4(gw), *p))
                    .collect()
            })
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || egress::apply(&netns, policy.as_ref(), &platform))
            .await
            .map_err(|e| AgentError::network(format!("egress task of {id}"), e))?
    }

    /// Change a running sandbox's CPU, memory and pids in place (a claim's
    /// resource limits): fields left empty keep the sandbox's own; the
    /// node's maximum holds. Returns the limits it now runs under.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn resize(&self, id: &str, asked: &pb::Resources) -> Result<Limits> {
        let sb = self.get(id)?;
        let own = validate_template(&sb.template)?.limits;
        let pick = |asked: u64, own: u64| if asked > 0 { asked } else { own };
        let merged = Limits {
            cpu_millis: pick(quantity::cpu_millis(&asked.cpu)?, own.cpu_millis),
            memory_bytes: pick(quantity::memory_bytes(&asked.memory)?, own.memory_bytes),
            pids: if asked.pids > 0 { asked.pids } else { own.pids },
        };
        let limits = self.cfg.limits.apply(&merged)?;
        let pid = match self.ctr.task_state(id).await? {
            Some((_, pid)) if pid > 0 => pid,
            _ => {
                return Err(AgentError::FailedPrecondition(format!(
                    "sandbox {id} has no running task to resize"
                )));
            }
        };
        let set = limits.clone();
        tokio::task::spawn_blocking(move || cgroup::set(pid, &set))
            .await
            .map_err(|e| AgentError::network(format!("resize task of {id}"), e))??;
        Ok(limits)
    }
}
