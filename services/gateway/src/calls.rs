//! The scheduler calls of the gateway's handlers: each traced, with the
//! scheduler's gRPC status mapped to the API error saying what was not found.

use std::collections::BTreeMap;

use sandpool_proto::v1 as pb;
use sandpool_telemetry::grpc_request as traced;

use crate::{Gateway, error::ApiError};

type Result<T> = std::result::Result<T, ApiError>;

fn claim_ref(id: &str) -> pb::ClaimRef {
    pb::ClaimRef {
        claim_id: id.to_string(),
    }
}

impl Gateway {
    /// A new claim; `not_found` says what a NOT_FOUND means to this API.
    pub async fn create_claim(
        &self,
        req: pb::ClaimRequest,
        not_found: impl FnOnce(String) -> ApiError,
    ) -> Result<pb::Claim> {
        Ok(self
            .scheduler
            .clone()
            .create_claim(traced(req))
            .await
            .map_err(|s| ApiError::from_status(s, not_found))?
            .into_inner())
    }

    pub async fn get_claim(&self, id: &str) -> Result<pb::Claim> {
        Ok(self
            .scheduler
            .clone()
            .get_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?
            .into_inner())
    }

    pub async fn release_claim(&self, id: &str) -> Result<()> {
        self.scheduler
            .clone()
            .release_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?;
        Ok(())
    }

    pub async fn pause_claim(&self, id: &str) -> Result<()> {
        self.scheduler
            .clone()
            .pause_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?;
        Ok(())
    }

    pub async fn resume_claim(&self, id: &str) -> Result<()> {
        self.scheduler
            .clone()
            .resume_claim(traced(claim_ref(id)))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?;
        Ok(())
    }

    /// Move the claim's expiry to `expires_unix_ms`.
    pub async fn renew(&self, id: &str, expires_unix_ms: i64) -> Result<pb::Claim> {
        Ok(self
            .scheduler
            .clone()
            .renew(traced(pb::RenewRequest {
                claim_id: id.to_string(),
                expires_unix_ms,
            }))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::sandbox_not_found(id)))?
            .into_inner())
    }

    /// All claims whose metadata contains `metadata`, oldest first.
    pub async fn claims_with_metadata(
        &self,
        metadata: BTreeMap<String, String>,
    ) -> Result<Vec<pb::Claim>> {
        Ok(self
            .scheduler
            .clone()
            .list_claims(traced(pb::ListClaimsRequest {
                metadata: metadata.into_iter().collect(),
                ..Default::default()
            }))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::Invalid))?
            .into_inner()
            .claims)
    }

    pub async fn checkpoint_claim(
        &self,
        req: pb::CheckpointClaimRequest,
    ) -> Result<pb::CheckpointInfo> {
        let id = req.claim_id.clone();
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
        req: pb::RestoreCheckpointRequest,
    ) -> Result<Vec<pb::Claim>> {
        let id = req.checkpoint_id.clone();
        Ok(self
            .scheduler
            .clone()
            .restore_checkpoint(traced(req))
            .await
            .map_err(|s| ApiError::from_status(s, |_| ApiError::SnapshotNotFound(id)))?
            .into_inner()
            .claims)
    }

    pub async fn list_checkpoints(&self) -> Result<Vec<pb::CheckpointInfo>> {
        Ok(self
            .scheduler
            .clone()
            .list_checkpoints(traced(pb::ListCheckpointsRequest {}))
            .await
            .map_err(|s| ApiError::from_status(s, ApiError::Internal))?
            .into_inner()
            .checkpoints)
    }

    pub async fn delete_checkpoint(&self, id: &str) -> Result<()> {
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
