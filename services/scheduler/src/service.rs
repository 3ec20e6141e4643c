//! `sandpool.v1.Scheduler` over tonic.

use std::{collections::BTreeMap, sync::Arc};

use sandpool_core::{
    claim::{ClaimEvent, ClaimState},
    pool::CapacitySpec,
};
// State changes run `detached`: a claim completed for a caller who left is
// an ordinary claim (listed, expired by its TTL).
use sandpool_proto::{
    detached,
    v1::{self as pb, scheduler_server},
};
use tonic::{Request, Response, Status};
use tracing::Span;

use crate::scheduler::{ClaimRec, PoolRec, RestoreAs, Scheduler, template_from_pb, template_to_pb};

pub struct SchedulerService {
    s: Arc<Scheduler>,
}

impl SchedulerService {
    pub fn new(s: Arc<Scheduler>) -> Self {
        SchedulerService { s }
    }

    /// Run `work(scheduler, request)` as its own task (a caller who leaves
    /// does not cancel it halfway), in `span` (`Span::none()`: in the call's).
    async fn detached<Req, T, E, Fut>(
        &self,
        span: Span,
        req: Request<Req>,
        work: impl FnOnce(Arc<Scheduler>, Req) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<Status> + Send + 'static,
    {
        detached(tracing::Instrument::instrument(
            work(Arc::clone(&self.s), req.into_inner()),
            span,
        ))
        .await
    }

    /// [`Self::detached`], answered with the empty reply `Done`.
    async fn done<Req, Done, E, Fut>(
        &self,
        span: Span,
        req: Request<Req>,
        work: impl FnOnce(Arc<Scheduler>, Req) -> Fut,
    ) -> Result<Response<Done>, Status>
    where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        Done: Default,
        E: Into<Status> + Send + 'static,
    {
        self.detached(span, req, work).await?;
        Ok(Response::new(Done::default()))
    }

    /// `change(scheduler, claim id)` detached, answered with the claim.
    async fn change_claim<Fut>(
        &self,
        req: Request<pb::ClaimRef>,
        change: impl FnOnce(Arc<Scheduler>, String) -> Fut,
    ) -> Result<Response<pb::Claim>, Status>
    where
        Fut: Future<Output = crate::error::Result<ClaimRec>> + Send + 'static,
    {
        let c = self
            .detached(Span::none(), req, |s, r| change(s, r.claim_id))
            .await?;
        Ok(Response::new(claim_pb(&c)))
    }
}

pub fn claim_state_pb(s: ClaimState) -> pb::ClaimState {
    match s {
        ClaimState::Pending => pb::ClaimState::Pending,
        ClaimState::Bound => pb::ClaimState::Bound,
        ClaimState::Paused => pb::ClaimState::Paused,
        ClaimState::Released => pb::ClaimState::Released,
        ClaimState::Expired => pb::ClaimState::Expired,
        ClaimState::Failed => pb::ClaimState::Failed,
    }
}

pub fn claim_state_from_pb(s: i32) -> Result<ClaimState, Status> {
    Ok(
        match pb::ClaimState::try_from(s)
            .map_err(|_| Status::invalid_argument(format!("unknown claim state {s}")))?
        {
            pb::ClaimState::Pending => ClaimState::Pending,
            pb::ClaimState::Bound => ClaimState::Bound,
            pb::ClaimState::Paused => ClaimState::Paused,
            pb::ClaimState::Released => ClaimState::Released,
            pb::ClaimState::Expired => ClaimState::Expired,
            pb::ClaimState::Failed => ClaimState::Failed,
            pb::ClaimState::Unspecified => {
                return Err(Status::invalid_argument("unspecified claim state"));
            }
        },
    )
}

pub fn claim_pb(c: &ClaimRec) -> pb::Claim {
    pb::Claim {
        claim_id: c.id.clone(),
        pool: c.pool.clone(),
        state: claim_state_pb(c.state) as i32,
        sandbox: Some(pb::SandboxInfo {
            sandbox_id: c.sandbox.id.clone(),
            pool: c.pool.clone(),
            node: c.sandbox.node.clone(),
            state: if c.state == ClaimState::Paused {
                pb::SandboxState::Paused
            } else {
                pb::SandboxState::Claimed
            } as i32,
            ip: c.sandbox.ip.clone(),
            runtime_port: c.sandbox.port,
            runtime_class: c.sandbox.runtime_class,
            access_token: c.sandbox.token.clone(),
            created_unix_ms: c.created_ms,
            message: String::new(),
            labels: Default::default(),
            oom_kills: c.oom_kills,
            // what the claim started is its `entrypoint`
            image_command: Vec::new(),
        }),
        created_unix_ms: c.created_ms,
        expires_unix_ms: if c.state == ClaimState::Paused && c.paused_remaining_ms > 0 {
            crate::scheduler::now_ms().saturating_add(c.paused_remaining_ms)
        } else {
            c.expires_ms
        },
        metadata: c.metadata.clone().into_iter().collect(),
        cold_start: c.cold,
        message: c.failure.clone(),
        egress: c
            .egress
            .as_ref()
            .map(sandpool_proto::template::egress_to_pb),
        entrypoint: c.entrypoint.clone(),
        image: c.image.clone(),
        claim_us: c.claim_us,
        pause_on_expiry: c.pause_on_expiry,
        oom_kills: c.oom_kills,
        auto_resume: c.auto_resume,
        ttl_seconds: c.ttl_seconds,
        pause_filesystem_only: c.pause_filesystem_only,
        paused_filesystem_only: c.state == ClaimState::Paused && c.paused_filesystem,
        sandbox_env: c.sandbox_env.clone().into_iter().collect(),
    }
}

fn pool_pb(s: &Scheduler, name: &str) -> Result<pb::Pool, Status> {
    let (rec, status) = s.pool_status(name)?;
    Ok(pb::Pool {
        name: rec.name.clone(),
        template: Some(template_to_pb(&rec.template)),
        capacity: Some(pb::CapacitySpec {
            buffer_min: rec.capacity.buffer_min,
            buffer_max: rec.capacity.buffer_max,
            pool_min: rec.capacity.pool_min,
            pool_max: rec.capacity.pool_max,
        }),
        status: Some(status),
    })
}

#[tonic::async_trait]
impl scheduler_server::Scheduler for SchedulerService {
    async fn apply_pool(&self, req: Request<pb::Pool>) -> Result<Response<pb::Pool>, Status> {
        let p = req.into_inner();
        let t = p
            .template
            .ok_or_else(|| Status::invalid_argument("template is required"))?;
        let c = p
            .capacity
            .ok_or_else(|| Status::invalid_argument("capacity is required"))?;
        let rec = PoolRec {
            name: p.name.clone(),
            template: template_from_pb(&t)?,
            capacity: CapacitySpec {
                buffer_min: c.buffer_min,
                buffer_max: c.buffer_max,
                pool_min: c.pool_min,
                pool_max: c.pool_max,
            },
        };
        self.s.apply_pool(rec)?;
        Ok(Response::new(pool_pb(&self.s, &p.name)?))
    }

    async fn get_pool(&self, req: Request<pb::PoolRef>) -> Result<Response<pb::Pool>, Status> {
        Ok(Response::new(pool_pb(&self.s, &req.into_inner().name)?))
    }

    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let pools = self
            .s
            .pools()
            .iter()
            .filter_map(|n| pool_pb(&self.s, n).ok())
            .collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn report_pool_ready(
        &self,
        req: Request<pb::PoolReadyReport>,
    ) -> Result<Response<pb::PoolReadyReportResponse>, Status> {
        let r = req.into_inner();
        self.s.report_pool_ready(&r.pool, r.ready, &r.message)?;
        Ok(Response::new(pb::PoolReadyReportResponse {}))
    }

    async fn delete_pool(
        &self,
        req: Request<pb::PoolRef>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        self.done(Span::none(), req, |s, r| async move {
            s.delete_pool(&r.name).await
        })
        .await
    }

    async fn create_claim(
        &self,
        req: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let span = tracing::info_span!("scheduler.claim");
        let c = self
            .detached(span, req, |s, r| async move { s.claim(r).await })
            .await?;
        Ok(Response::new(claim_pb(&c)))
    }

    async fn get_claim(&self, req: Request<pb::ClaimRef>) -> Result<Response<pb::Claim>, Status> {
        Ok(Response::new(claim_pb(
            &self.s.get_claim(&req.into_inner().claim_id)?,
        )))
    }

    async fn list_claims(
        &self,
        req: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<pb::ListClaimsResponse>, Status> {
        let r = req.into_inner();
        let states = r
            .states
            .iter()
            .map(|s| claim_state_from_pb(*s))
            .collect::<Result<Vec<_>, _>>()?;
        let md: BTreeMap<String, String> = r.metadata.into_iter().collect();
        let all = self.s.list_claims(&r.pool, &states, &md);
        let page = sandpool_core::page::page(all, &r.page_token, r.page_size)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ListClaimsResponse {
            claims: page.items.iter().map(claim_pb).collect(),
            next_page_token: page.next_token,
            total: page.total,
        }))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::Claim>, Status> {
        let r = req.into_inner();
        Ok(Response::new(claim_pb(
            &self.s.renew(&r.claim_id, r.expires_unix_ms)?,
        )))
    }

    async fn set_claim_egress(
        &self,
        req: Request<pb::SetClaimEgressRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let span = tracing::info_span!("scheduler.set_egress");
        let c = self
            .detached(span, req, |s, r| async move {
                s.set_egress(&r.claim_id, r.egress).await
            })
            .await?;
        Ok(Response::new(claim_pb(&c)))
    }

    async fn set_claim_credential_vault(
        &self,
        req: Request<pb::SetClaimCredentialVaultRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let span = tracing::info_span!("scheduler.set_credential_vault");
        let c = self
            .detached(span, req, |s, r| async move {
                s.set_credential_vault(&r.claim_id, r.vault).await
            })
            .await?;
        Ok(Response::new(claim_pb(&c)))
    }

    async fn patch_claim_metadata(
        &self,
        req: Request<pb::PatchClaimMetadataRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let r = req.into_inner();
        let set = r.set.into_iter().collect();
        let c = self.s.patch_metadata(&r.claim_id, set, &r.remove)?;
        Ok(Response::new(claim_pb(&c)))
    }

    async fn pause_claim(
        &self,
        req: Request<pb::PauseClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let c = self
            .detached(Span::none(), req, |s, r| async move {
                s.pause_as(&r.claim_id, r.filesystem_only).await
            })
            .await?;
        Ok(Response::new(claim_pb(&c)))
    }

    async fn resume_claim(
        &self,
        req: Request<pb::ClaimRef>,
    ) -> Result<Response<pb::Claim>, Status> {
        self.change_claim(req, |s, id| async move { s.resume(&id).await })
            .await
    }

    async fn checkpoint_claim(
        &self,
        req: Request<pb::CheckpointClaimRequest>,
    ) -> Result<Response<pb::CheckpointInfo>, Status> {
        if req.get_ref().filesystem_only {
            return Err(Status::unimplemented(
                sandpool_core::claim::STANDALONE_FS_CHECKPOINT_UNSUPPORTED,
            ));
        }
        let span = tracing::info_span!("scheduler.checkpoint");
        self.detached(span, req, |s, r| async move {
            s.checkpoint_claim(&r.claim_id, r.leave_running, &r.name)
                .await
        })
        .await
        .map(Response::new)
    }

    async fn restore_checkpoint(
        &self,
        req: Request<pb::RestoreCheckpointRequest>,
    ) -> Result<Response<pb::RestoreCheckpointResponse>, Status> {
        let span = tracing::info_span!("scheduler.restore");
        let recs = self
            .detached(span, req, |s, r| async move {
                let metadata = r.metadata.into_iter().collect();
                s.restore_checkpoint(
                    &r.checkpoint_id,
                    r.count,
                    r.ttl_seconds,
                    metadata,
                    &r.claim_id,
                    RestoreAs {
                        process: r.process,
                        resources: r.resources,
                    },
                )
                .await
            })
            .await?;
        Ok(Response::new(pb::RestoreCheckpointResponse {
            claims: recs.iter().map(claim_pb).collect(),
        }))
    }

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: self.s.list_checkpoints().await,
        }))
    }

    async fn delete_checkpoint(
        &self,
        req: Request<pb::CheckpointRef>,
    ) -> Result<Response<pb::DeleteCheckpointResponse>, Status> {
        self.s
            .delete_checkpoint(&req.into_inner().checkpoint_id)
            .await?;
        Ok(Response::new(pb::DeleteCheckpointResponse {}))
    }

    async fn release_claim(
        &self,
        req: Request<pb::ClaimRef>,
    ) -> Result<Response<pb::ReleaseClaimResponse>, Status> {
        let span = tracing::info_span!("scheduler.release");
        self.done(span, req, |s, r| async move {
            s.release(&r.claim_id, ClaimEvent::Release).await
        })
        .await
    }

    async fn create_batch(
        &self,
        req: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        let name = req.get_ref().name.clone();
        self.detached(
            Span::none(),
            req,
            |s, r| async move { s.create_batch(r).await },
        )
        .await?;
        self.get_batch(Request::new(pb::BatchRef { name })).await
    }

    async fn get_batch(&self, req: Request<pb::BatchRef>) -> Result<Response<pb::Batch>, Status> {
        let name = req.into_inner().name;
        let (claims, counts) = self.s.batch_tasks(&name).await?;
        Ok(Response::new(pb::Batch {
            name,
            pool: claims.first().map(|c| c.pool.clone()).unwrap_or_default(),
            replicas: claims.len() as u32,
            allocated: claims.len() as u32,
            ready: claims
                .iter()
                .filter(|c| c.state == ClaimState::Bound)
                .count() as u32,
            tasks: Some(pb::TaskCounts {
                running: counts.running,
                succeeded: counts.succeeded,
                failed: counts.failed,
                unknown: counts.unknown,
            }),
            claims: claims.iter().map(claim_pb).collect(),
        }))
    }

    async fn delete_batch(
        &self,
        req: Request<pb::BatchRef>,
    ) -> Result<Response<pb::DeleteBatchResponse>, Status> {
        self.done(Span::none(), req, |s, r| async move {
            s.delete_batch(&r.name).await
        })
        .await
    }
}
