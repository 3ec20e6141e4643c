//! The scheduler calls of the gateway's handlers: each traced, with the
//! scheduler's gRPC status mapped to the API error saying what was not found.

use std::collections::BTreeMap;

use sandpool_proto::v1 as pb;
use sandpool_telemetry::grpc_request as traced;

use crate::{
    Gateway,
    error::ApiError,
    tenancy::{self, OWNER_KEY},
};

type Result<T> = std::result::Result<T, ApiError>;

fn claim_ref(id: &str) -> pb::ClaimRef {
    pb::ClaimRef {
        claim_id: id.to_string(),
    }
}

/// The owner metadata of the current caller's new claims (a caller's own
/// value for the reserved key is dropped).
fn own(metadata: &mut std::collections::HashMap<String, String>) {
    metadata.remove(OWNER_KEY);
    if let Some(p) = tenancy::current() {
        metadata.insert(OWNER_KEY.to_string(), p.id);
    }
}

/// A claim as callers see it: without the owner record.
fn shown(mut c: pb::Claim) -> pb::Claim {
    c.metadata.remove(OWNER_KEY);
    c
}

/// Whether the current caller may see `c`.
fn visible(c: &pb::Claim) -> bool {
    tenancy::restricted().is_none_or(|p| c.metadata.get(OWNER_KEY) == Some(&p.id))
}

impl Gateway {
    /// A new claim; `not_found` says what a NOT_FOUND means to this API.
    pub async fn create_claim(
        &self,
        mut req: pb::ClaimRequest,
        not_found: impl FnOnce(String) -> ApiError,
    ) -> Result<pb::Claim> {
        let _held = self.check_quota(1).await?;
        own(&mut req.metadata);
        Ok(shown(
            self.scheduler
                .clone()
                .create_claim(traced(req))
                .await
                .map_err(|s| ApiError::from_status(s, not_found))?
                .into_inner(),
        ))
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
        let c = self
            .scheduler
            .clone()
            .get_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?
            .into_inner();
        if !visible(&c) {
            return Err(ApiError::SandboxNotFound(id.to_string()));
        }
        Ok(shown(c))
    }

    /// 404 unless the current caller may act on claim `id`.
    async fn check_owner(&self, id: &str) -> Result<()> {
        if tenancy::restricted().is_some() {
            self.get_claim(id).await?;
        }
        Ok(())
    }

    pub async fn release_claim(&self, id: &str) -> Result<()> {
        self.check_owner(id).await?;
        self.scheduler
            .clone()
            .release_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?;
        Ok(())
    }

    pub async fn pause_claim(&self, id: &str) -> Result<()> {
        self.check_owner(id).await?;
        self.scheduler
            .clone()
            .pause_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?;
        Ok(())
    }

    pub async fn resume_claim(&self, id: &str) -> Result<()> {
        self.check_owner(id).await?;
        self.scheduler
            .clone()
            .resume_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?;
        Ok(())
    }

    /// Move the claim's expiry to `expires_unix_ms`.
    pub async fn renew(&self, id: &str, expires_unix_ms: i64) -> Result<pb::Claim> {
        self.check_owner(id).await?;
        Ok(shown(
            self.scheduler
                .clone()
                .renew(traced(pb::RenewRequest {
                    claim_id: id.to_string(),
                    expires_unix_ms,
                }))
                .await
                .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?
                .into_inner(),
        ))
    }

    /// All claims whose metadata contains `metadata`, oldest first (of a
    /// non-admin caller: only its own).
    pub async fn claims_with_metadata(
        &self,
        mut metadata: BTreeMap<String, String>,
    ) -> Result<Vec<pb::Claim>> {
        if let Some(p) = tenancy::restricted() {
            metadata.insert(OWNER_KEY.to_string(), p.id);
        }
        let claims = self
            .scheduler
            .clone()
            .list_claims(traced(pb::ListClaimsRequest {
                metadata: metadata.into_iter().collect(),
                ..Default::default()
            }))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::Invalid))?
            .into_inner()
            .claims;
        Ok(claims.into_iter().map(shown).collect())
    }

    pub async fn checkpoint_claim(
        &self,
        req: pb::CheckpointClaimRequest,
    ) -> Result<pb::CheckpointInfo> {
        let id = req.claim_id.clone();
        self.check_owner(&id).await?;
        Ok(self
            .scheduler
            .clone()
            .checkpoint_claim(traced(req))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(&id)))?
            .into_inner())
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
        let claims = self
            .scheduler
            .clone()
            .restore_checkpoint(traced(req))
            .await
            .map_err(|s| ApiError::from_status(s, |_| ApiError::SnapshotNotFound(id)))?
            .into_inner()
            .claims;
        Ok(claims.into_iter().map(shown).collect())
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
            .scheduler
            .clone()
            .list_checkpoints(traced(pb::ListCheckpointsRequest {}))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::Internal))?
            .into_inner()
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
        self.scheduler
            .clone()
            .delete_checkpoint(traced(pb::CheckpointRef {
                checkpoint_id: id.to_string(),
            }))
            .await
            .map_err(|s| {
                ApiError::from_status(s, |_| ApiError::SnapshotNotFound(id.to_string()))
            })?;
        Ok(())
    }

    pub async fn get_pool(&self, name: &str) -> Result<pb::Pool> {
        Ok(self
            .scheduler
            .clone()
            .get_pool(traced(pb::PoolRef {
                name: name.to_string(),
            }))
            .await
            .map_err(|s| ApiError::from_status(s, |_| ApiError::PoolNotFound(name.to_string())))?
            .into_inner())
    }

    pub async fn list_pools(&self) -> Result<Vec<pb::Pool>> {
        Ok(self
            .scheduler
            .clone()
            .list_pools(traced(pb::ListPoolsRequest {}))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::Invalid))?
            .into_inner()
            .pools)
    }
}
