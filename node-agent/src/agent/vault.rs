//! A sandbox's credential vault: registered with the node's credential
//! proxy ([`crate::credproxy`]), and its port-80 traffic redirected there
//! while the vault has bindings.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use sandpool_core::credential_vault::Vault;
use sandpool_proto::v1 as pb;

use crate::{
    credproxy::{CredProxy, OriginalDst},
    error::{AgentError, Result},
};

use super::{Agent, validate_template};

impl Agent {
    /// Give sandbox `id` the vault `json` (a `Vault` as JSON, secrets
    /// included; one that does not exist removes it), then load its egress
    /// policy again (`egress`, else its pool's) with or without the redirect.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn set_credential_vault(
        &self,
        id: &str,
        json: &[u8],
        egress: Option<pb::EgressPolicy>,
    ) -> Result<()> {
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
        if vault.has_bindings() {
            let proxy = self.cred_proxy(id).await?;
            proxy.set_client(id, IpAddr::V4(sb.ip), vault);
        } else {
            self.forget_cred(id);
        }
        match egress {
            Some(p) => self.set_egress(id, Some(p)).await,
            None => {
                let pools = validate_template(&sb.template)?.egress;
                self.apply_egress(id, pools).await
            }
        }
    }

    /// The node's credential proxy, started on first use.
    async fn cred_proxy(&self, id: &str) -> Result<&CredProxy> {
        let net = &self.cfg.net;
        let (Some(gw), port @ 1..) = (net.gateway_ip(), net.cred_proxy_port) else {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id}: the node's credential proxy is off"
            )));
        };
        self.cred
            .get_or_try_init(|| async {
                CredProxy::start(SocketAddr::from((gw, port)), Box::new(OriginalDst)).await
            })
            .await
    }

    /// Where sandbox `id`'s port-80 traffic goes (its vault has bindings).
    pub(super) fn cred_redirect(&self, id: &str) -> Option<SocketAddrV4> {
        let p = self.cred.get().filter(|p| p.serves(id))?;
        match p.local_addr() {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        }
    }

    /// Sandbox `id` no longer has a vault.
    pub(super) fn forget_cred(&self, id: &str) {
        if let Some(p) = self.cred.get() {
            p.remove_client(id);
        }
    }
}
