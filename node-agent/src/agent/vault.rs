//! A sandbox's credential vault: registered with the node's credential
//! proxy ([`crate::credproxy`]), and its new port-80 connections redirected
//! there (a host nat rule for its address) while the vault has bindings.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use sandpool_core::credential_vault::Vault;

use crate::{
    credproxy::{CredProxy, OriginalDst},
    error::{AgentError, Result},
};

use super::Agent;

impl Agent {
    /// Give sandbox `id` the vault `json` (a `Vault` as JSON, secrets
    /// included; one without bindings, or that does not exist, removes it).
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn set_credential_vault(&self, id: &str, json: &[u8]) -> Result<()> {
        // the error never quotes the input: it holds secrets
        let vault: Vault = serde_json::from_slice(json).map_err(|e| {
            AgentError::InvalidArgument(format!(
                "the credential vault is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let sb = self.get(id)?;
        if sb.template.checkpointable {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} has no network (checkpointable): it has no credential proxy"
            )));
        }
        let proxy = self.cred_proxy(id).await?;
        let at = match proxy.local_addr() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => {
                return Err(AgentError::Network(
                    "the credential proxy is not IPv4".into(),
                ));
            }
        };
        let on = vault.has_bindings();
        if on {
            proxy.set_client(id, IpAddr::V4(sb.ip), vault);
        } else {
            proxy.remove_client(id);
        }
        self.redirect(id, sb.ip, at, on).await
    }

    async fn redirect(
        &self,
        id: &str,
        ip: std::net::Ipv4Addr,
        at: SocketAddrV4,
        on: bool,
    ) -> Result<()> {
        let net = self.cfg.net.clone();
        tokio::task::spawn_blocking(move || net.redirect_http(ip, at, on))
            .await
            .map_err(|e| AgentError::network(format!("credential redirect task of {id}"), e))?
    }

    /// The node's credential proxy, started on first use (with an empty
    /// redirect chain).
    async fn cred_proxy(&self, id: &str) -> Result<&CredProxy> {
        let net = &self.cfg.net;
        let (Some(gw), port @ 1..) = (net.gateway_ip(), net.cred_proxy_port) else {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id}: the node's credential proxy is off"
            )));
        };
        self.cred
            .get_or_try_init(|| async {
                let n = net.clone();
                tokio::task::spawn_blocking(move || n.reset_cred_chain())
                    .await
                    .map_err(|e| AgentError::network("credential redirect chain", e))??;
                CredProxy::start(SocketAddr::from((gw, port)), Box::new(OriginalDst)).await
            })
            .await
    }

    /// Sandbox `id` (address `ip`) no longer has a vault.
    pub(super) async fn forget_cred(&self, id: &str, ip: std::net::Ipv4Addr) {
        let Some(p) = self.cred.get().filter(|p| p.serves(id)) else {
            return;
        };
        p.remove_client(id);
        if let SocketAddr::V4(at) = p.local_addr()
            && let Err(e) = self.redirect(id, ip, at, false).await
        {
            tracing::warn!(sandbox = %id, error = %e, "removing the credential redirect failed");
        }
    }
}
