//! What a claim changes on the warm sandbox it takes, before its process
//! starts: the egress policy and the resource limits it asks for.

use std::{
    net::{IpAddr, SocketAddrV4},
    sync::Arc,
};

use sandpool_core::egress::{EgressAction, EgressPolicy};
use sandpool_proto::v1 as pb;

use crate::{
    cgroup,
    dnsproxy::{
        TtlClamp,
        server::{DnsProxy, NetnsSets, resolv_conf_upstream},
    },
    egress,
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
        let names = self.cfg.net.dns_proxy_port != 0 && !sb.template.checkpointable;
        let policy = policy
            .as_ref()
            .map(|p| {
                if names {
                    egress::parse_with_names(p)
                } else if sb.template.checkpointable && egress::parse_with_names(p).is_ok() {
                    egress::parse(p).map_err(|_| {
                        AgentError::InvalidTemplate(format!(
                            "sandbox {id} has no network (checkpointable): domain egress rules cannot be enforced on it"
                        ))
                    })
                } else {
                    egress::parse(p)
                }
            })
            .transpose()?;
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
    /// Domain rules register the sandbox with the node's DNS proxy.
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
                    .map(|p| (IpAddr::V4(gw), *p))
                    .collect()
            })
            .unwrap_or_default();
        let dns = match policy.as_ref().filter(|p| egress::has_domain_rules(p)) {
            Some(p) => Some(self.register_dns(id, p.clone()).await?),
            None => {
                self.forget_dns(id);
                None
            }
        };
        tokio::task::spawn_blocking(move || {
            egress::apply_with_dns(&netns, policy.as_ref(), &platform, dns)
        })
        .await
        .map_err(|e| AgentError::network(format!("egress task of {id}"), e))?
    }

    /// Start the node's DNS proxy if needed and have it answer sandbox
    /// `id` by `policy`; returns the address its DNS goes to.
    async fn register_dns(&self, id: &str, policy: EgressPolicy) -> Result<SocketAddrV4> {
        let net = &self.cfg.net;
        let (Some(gw), port @ 1..) = (net.gateway_ip(), net.dns_proxy_port) else {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id}: domain egress rules need the node's DNS proxy, which is off"
            )));
        };
        let at = SocketAddrV4::new(gw, port);
        let proxy = self
            .dns
            .get_or_try_init(|| async {
                let upstream = match net.dns_upstream {
                    Some(u) => u,
                    None => std::fs::read_to_string("/etc/resolv.conf")
                        .ok()
                        .as_deref()
                        .and_then(resolv_conf_upstream)
                        .ok_or_else(|| {
                            AgentError::Network(
                                "the DNS proxy has no upstream: no nameserver in /etc/resolv.conf"
                                    .into(),
                            )
                        })?,
                };
                DnsProxy::start(at.into(), upstream, TtlClamp::default()).await
            })
            .await?;
        let ip = self.get(id)?.ip;
        let sets = Arc::new(NetnsSets(net.netns_path(id)));
        proxy.set_client(id, IpAddr::V4(ip), policy, sets);
        Ok(at)
    }

    /// Sandbox `id` no longer uses the DNS proxy.
    pub(super) fn forget_dns(&self, id: &str) {
        if let Some(p) = self.dns.get() {
            p.remove_client(id);
        }
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
