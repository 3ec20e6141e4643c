//! The scheduler calls of the gateway's handlers: each traced, with the
//! scheduler's gRPC status mapped to the API error saying what was not found.

use std::collections::BTreeMap;

use sandpool_proto::v1 as pb;
use sandpool_telemetry::grpc_request as traced;

use crate::{
    Gateway, egress,
    error::ApiError,
    tenancy::{self, OWNER_KEY},
    traffic,
};

type Result<T> = std::result::Result<T, ApiError>;
type Client = pb::scheduler_client::SchedulerClient<sandpool_proto::auth::AuthChannel>;

/// Scheduler method `$method` as the `call` of `Gateway::scheduler_call`.
macro_rules! rpc {
    ($method:ident) => {
        |mut s: Client, r| async move { s.$method(r).await }
    };
}

fn claim_ref(id: &str) -> pb::ClaimRef {
    pb::ClaimRef {
        claim_id: id.to_string(),
    }
}

/// The metadata keys sandpool reserves (never shown, never the caller's).
fn reserved(k: &str) -> bool {
    k == OWNER_KEY
        || k == traffic::PRIVATE_KEY
        || k == traffic::MASK_KEY
        || k == egress::TOKEN_KEY
        || k == crate::opensandbox::credential_vault::KEY
}

/// The reserved metadata of the current caller's new claims: its owner
/// and its egress policy token (a caller's own values for the reserved keys
/// are dropped).
fn own(metadata: &mut std::collections::HashMap<String, String>) {
    metadata.retain(|k, _| !reserved(k));
    metadata.insert(egress::TOKEN_KEY.to_string(), egress::new_token());
    if let Some(p) = tenancy::current() {
        metadata.insert(OWNER_KEY.to_string(), p.id);
    }
}

/// A claim as callers see it: without the reserved metadata.
fn shown(mut c: pb::Claim) -> pb::Claim {
    c.metadata.retain(|k, _| !reserved(k));
    // the sandbox's env vars may hold secrets: its envd answers for them
    c.sandbox_env.clear();
    c
}

/// Whether the current caller may see `c`.
fn visible(c: &pb::Claim) -> bool {
    tenancy::restricted().is_none_or(|p| c.metadata.get(OWNER_KEY) == Some(&p.id))
}

impl Gateway {
    /// One traced scheduler `call` with `req`; `not_found` says what a
    /// NOT_FOUND means to this API.
    async fn scheduler_call<Q, T, F>(
        &self,
        req: Q,
        not_found: impl FnOnce(String) -> ApiError,
        call: impl FnOnce(Client, tonic::Request<Q>) -> F,
    ) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        call(self.scheduler.clone(), traced(req))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ApiError::from_status(s, not_found))
    }

    /// A new claim; `not_found` says what a NOT_FOUND means to this API.
    pub async fn create_claim(
        &self,
        req: pb::ClaimRequest,
        not_found: impl FnOnce(String) -> ApiError,
    ) -> Result<pb::Claim> {
        self.create_claim_marked(req, &[], not_found).await
    }

    /// [`Self::create_claim`] with reserved metadata `marks` the gateway
    /// itself sets (after the caller's reserved keys are dropped), e.g. its
    /// E2B ingress ([`traffic::Ingress::marks`]).
    pub async fn create_claim_marked(
        &self,
        mut req: pb::ClaimRequest,
        marks: &[(&str, &str)],
        not_found: impl FnOnce(String) -> ApiError,
    ) -> Result<pb::Claim> {
        let _held = self.check_quota(1).await?;
        own(&mut req.metadata);
        for (k, v) in marks {
            req.metadata.insert((*k).to_string(), (*v).to_string());
        }
        self.scheduler_call(req, not_found, rpc!(create_claim))
            .await
            .map(shown)
    }

    /// 429 when a non-admin caller's live sandboxes (and those being
    /// created) plus `more` exceed its quota; else `more` places held until
    /// the returned reservation drops.
    async fn check_quota(&self, more: u32) -> Result<Option<tenancy::Reservation>> {
        let Some(p) = tenancy::restricted() else {
            return Ok(None);
        };
        let live = self
            .claims_with_metadata(BTreeMap::from([(OWNER_KEY.to_string(), p.id.clone())]))
            .await?
            .iter()
            .filter(|c| {
                matches!(
                    pb::ClaimState::try_from(c.state),
                    Ok(pb::ClaimState::Pending | pb::ClaimState::Bound | pb::ClaimState::Paused)
                )
            })
            .count();
        let max = self.max_sandboxes_per_key;
        let live = u32::try_from(live).unwrap_or(u32::MAX);
        self.creating
            .reserve(&p.id, more, live, max)
            .map(Some)
            .ok_or(ApiError::QuotaExceeded(max))
    }

    /// The claim, 404 when it is not the caller's (non-admin keys).
    pub async fn get_claim(&self, id: &str) -> Result<pb::Claim> {
        self.get_claim_traffic(id).await.map(|(c, _)| c)
    }

    /// The claim and its E2B ingress (private traffic, host mask), 404
    /// when it is not the caller's (non-admin keys).
    pub async fn get_claim_traffic(&self, id: &str) -> Result<(pb::Claim, traffic::Ingress)> {
        let c = self.visible_claim(id).await?;
        let ingress = traffic::Ingress::of(&c.metadata);
        Ok((shown(c), ingress))
    }

    /// The claim and its egress policy token (`None`: it was created
    /// before sandpool gave claims one), 404 when it is not the caller's.
    pub async fn get_claim_egress_token(&self, id: &str) -> Result<(pb::Claim, Option<String>)> {
        let mut c = self.visible_claim(id).await?;
        let token = c.metadata.remove(egress::TOKEN_KEY);
        Ok((shown(c), token))
    }

    /// The claim with its reserved metadata, 404 when it is not the
    /// caller's (non-admin keys).
    async fn visible_claim(&self, id: &str) -> Result<pb::Claim> {
        let c = self
            .scheduler_call(
                claim_ref(id),
                ApiError::sandbox_not_found(id),
                rpc!(get_claim),
            )
            .await?;
        if !visible(&c) {
            return Err(ApiError::SandboxNotFound(id.to_string()));
        }
        Ok(c)
    }

    /// 404 unless the current caller may act on claim `id`.
    async fn check_owner(&self, id: &str) -> Result<()> {
        if tenancy::restricted().is_some() {
            self.get_claim(id).await?;
        }
        Ok(())
    }

    /// `call` with `req` about claim `id` once the caller may act on it; a
    /// NOT_FOUND is the sandbox's.
    async fn on_own_claim<Q, T, F>(
        &self,
        id: &str,
        req: Q,
        call: impl FnOnce(Client, tonic::Request<Q>) -> F,
    ) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.check_owner(id).await?;
        self.scheduler_call(req, ApiError::sandbox_not_found(id), call)
            .await
    }

    pub async fn release_claim(&self, id: &str) -> Result<()> {
        self.on_own_claim(id, claim_ref(id), rpc!(release_claim))
            .await?;
        self.vaults.lock().remove(id);
        Ok(())
    }

    /// The claim and whether it was created with `credentialProxy`
    /// enabled, 404 when it is not the caller's.
    pub async fn get_claim_credential_proxy(&self, id: &str) -> Result<(pb::Claim, bool)> {
        let c = self.visible_claim(id).await?;
        let on = c
            .metadata
            .get(crate::opensandbox::credential_vault::KEY)
            .is_some_and(|v| v == "true");
        Ok((shown(c), on))
    }

    /// Hand claim `id`'s sandbox its credential vault (JSON, secrets
    /// included: never logged).
    pub async fn set_claim_credential_vault(&self, id: &str, vault: Vec<u8>) -> Result<()> {
        let req = pb::SetClaimCredentialVaultRequest {
            claim_id: id.to_string(),
            vault,
        };
        self.on_own_claim(id, req, rpc!(set_claim_credential_vault))
            .await
            .map(|_| ())
    }

    /// Replace the egress policy of claim `id`'s sandbox, live. A policy
    /// that no longer explicitly allows a host of the sandbox's credential
    /// vault bindings is refused (400).
    pub async fn set_claim_egress(&self, id: &str, egress: pb::EgressPolicy) -> Result<pb::Claim> {
        crate::opensandbox::credential_vault::check_policy(self, id, &egress)?;
        let req = pb::SetClaimEgressRequest {
            claim_id: id.to_string(),
            egress: Some(egress),
        };
        self.on_own_claim(id, req, rpc!(set_claim_egress))
            .await
            .map(shown)
    }

    /// Merge-patch claim `id`'s metadata: `set` adds or replaces keys,
    /// `remove` deletes keys. The reserved keys are not the caller's to set
    /// or delete (400).
    pub async fn patch_claim_metadata(
        &self,
        id: &str,
        set: std::collections::HashMap<String, String>,
        remove: Vec<String>,
    ) -> Result<pb::Claim> {
        if let Some(k) = set.keys().chain(&remove).find(|k| reserved(k)) {
            return Err(ApiError::Invalid(format!(
                "metadata key {k} is reserved by sandpool"
            )));
        }
        let req = pb::PatchClaimMetadataRequest {
            claim_id: id.to_string(),
            set,
            remove,
        };
        self.on_own_claim(id, req, rpc!(patch_claim_metadata))
            .await
            .map(shown)
    }

    /// Pause claim `id`: frozen in place, or with `filesystem_only` its
    /// processes stopped and only its root file system kept (a frozen
    /// claim may be paused that way too: its memory is dropped).
    pub async fn pause_claim(&self, id: &str, filesystem_only: bool) -> Result<()> {
        let req = pb::PauseClaimRequest {
            claim_id: id.to_string(),
            filesystem_only,
        };
        self.on_own_claim(id, req, rpc!(pause_claim)).await?;
        Ok(())
    }

    /// Resume claim `id`. A sandbox paused filesystem-only starts afresh:
    /// its envd gets the claim's default env vars again (as E2B's does on
    /// boot).
    pub async fn resume_claim(&self, id: &str) -> Result<()> {
        let was_filesystem_only = self.visible_claim(id).await?.paused_filesystem_only;
        let c = self
            .scheduler_call(
                claim_ref(id),
                ApiError::sandbox_not_found(id),
                rpc!(resume_claim),
            )
            .await?;
        crate::e2b::envd_init::after_resume(self, was_filesystem_only, &c).await
    }

    /// Move the claim's expiry to `expires_unix_ms`.
    pub async fn renew(&self, id: &str, expires_unix_ms: i64) -> Result<pb::Claim> {
        let req = pb::RenewRequest {
            claim_id: id.to_string(),
            expires_unix_ms,
        };
        self.on_own_claim(id, req, rpc!(renew)).await.map(shown)
    }

    /// All claims whose metadata contains `metadata`, oldest first (of a
    /// non-admin caller: only its own).
    pub async fn claims_with_metadata(
        &self,
        mut metadata: BTreeMap<String, String>,
    ) -> Result<Vec<pb::Claim>> {
        if metadata.contains_key(egress::TOKEN_KEY) {
            return Err(ApiError::Invalid(format!(
                "metadata key {} is reserved by sandpool",
                egress::TOKEN_KEY
            )));
        }
        if let Some(p) = tenancy::restricted() {
            metadata.insert(OWNER_KEY.to_string(), p.id);
        }
        let req = pb::ListClaimsRequest {
            metadata: metadata.into_iter().collect(),
            ..Default::default()
        };
        let listed = self
            .scheduler_call(req, ApiError::Invalid, rpc!(list_claims))
            .await?;
        Ok(listed.claims.into_iter().map(shown).collect())
    }

    pub async fn checkpoint_claim(
        &self,
        req: pb::CheckpointClaimRequest,
    ) -> Result<pb::CheckpointInfo> {
        let id = req.claim_id.clone();
        self.on_own_claim(&id, req, rpc!(checkpoint_claim)).await
    }

    /// The claims restored from a checkpoint.
    pub async fn restore_checkpoint(
        &self,
        mut req: pb::RestoreCheckpointRequest,
    ) -> Result<Vec<pb::Claim>> {
        let id = req.checkpoint_id.clone();
        let _held = if tenancy::restricted().is_some() {
            self.check_checkpoint_owner(&id).await?;
            self.check_quota(req.count.max(1)).await?
        } else {
            None
        };
        own(&mut req.metadata);
        let restored = self
            .scheduler_call(
                req,
                |_| ApiError::SnapshotNotFound(id),
                rpc!(restore_checkpoint),
            )
            .await?;
        Ok(restored.claims.into_iter().map(shown).collect())
    }

    /// 404 unless checkpoint `id` is among the caller's.
    async fn check_checkpoint_owner(&self, id: &str) -> Result<()> {
        if self
            .list_checkpoints()
            .await?
            .iter()
            .any(|c| c.checkpoint_id == id)
        {
            Ok(())
        } else {
            Err(ApiError::SnapshotNotFound(id.to_string()))
        }
    }

    /// The checkpoints; of a non-admin caller only those taken of its
    /// sandboxes (recorded by the scheduler; else: of its live sandboxes).
    pub async fn list_checkpoints(&self) -> Result<Vec<pb::CheckpointInfo>> {
        let all = self
            .scheduler_call(
                pb::ListCheckpointsRequest {},
                ApiError::Internal,
                rpc!(list_checkpoints),
            )
            .await?
            .checkpoints;
        let Some(p) = tenancy::restricted() else {
            return Ok(all);
        };
        let mine: std::collections::HashSet<String> = self
            .claims_with_metadata(BTreeMap::new())
            .await?
            .into_iter()
            .map(|c| c.claim_id)
            .collect();
        Ok(all
            .into_iter()
            .filter(|c| match c.source_metadata.get(OWNER_KEY) {
                Some(owner) => *owner == p.id,
                None => mine.contains(&c.owner) || mine.contains(&c.sandbox_id),
            })
            .collect())
    }

    pub async fn delete_checkpoint(&self, id: &str) -> Result<()> {
        if tenancy::restricted().is_some() {
            self.check_checkpoint_owner(id).await?;
        }
        let req = pb::CheckpointRef {
            checkpoint_id: id.to_string(),
        };
        let not_found = |_| ApiError::SnapshotNotFound(id.to_string());
        self.scheduler_call(req, not_found, rpc!(delete_checkpoint))
            .await?;
        Ok(())
    }

    pub async fn get_pool(&self, name: &str) -> Result<pb::Pool> {
        let req = pb::PoolRef {
            name: name.to_string(),
        };
        let not_found = |_| ApiError::PoolNotFound(name.to_string());
        self.scheduler_call(req, not_found, rpc!(get_pool)).await
    }

    /// Tell the scheduler whether a sandbox of pool `name` became ready (its
    /// readyCmd; `Err(why)`: it did not): the pool's status shows a failure
    /// until a later success. A report that cannot be made is logged only:
    /// the create's own answer does not depend on it.
    pub async fn report_pool_ready(&self, name: &str, outcome: std::result::Result<(), &str>) {
        let req = pb::PoolReadyReport {
            pool: name.to_string(),
            ready: outcome.is_ok(),
            message: outcome.err().unwrap_or_default().to_string(),
        };
        let not_found = |_| ApiError::PoolNotFound(name.to_string());
        if let Err(e) = self
            .scheduler_call(req, not_found, rpc!(report_pool_ready))
            .await
        {
            tracing::debug!(pool = name, error = %e, "pool readiness not reported");
        }
    }

    /// Remove a pool (an E2B template whose readyCmd never succeeds).
    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        let req = pb::PoolRef {
            name: name.to_string(),
        };
        let not_found = |_| ApiError::PoolNotFound(name.to_string());
        self.scheduler_call(req, not_found, rpc!(delete_pool))
            .await
            .map(|_| ())
    }

    pub async fn list_pools(&self) -> Result<Vec<pb::Pool>> {
        let listed = self
            .scheduler_call(pb::ListPoolsRequest {}, ApiError::Invalid, rpc!(list_pools))
            .await?;
        Ok(listed.pools)
    }

    /// Create or replace a pool (E2B template builds make theirs).
    pub async fn apply_pool(&self, pool: pb::Pool) -> Result<pb::Pool> {
        self.scheduler_call(pool, ApiError::Invalid, rpc!(apply_pool))
            .await
    }
}
