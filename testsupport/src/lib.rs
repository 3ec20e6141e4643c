//! Test helpers shared by sandpool's test suites (a dev-dependency only; no
//! production code uses it): an in-memory scheduler, [`FakeScheduler`],
//! served on a loopback port by [`serve`], and [`send`] for JSON calls to
//! a REST router.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use sandpool_proto::{
    auth::AuthChannel,
    v1::{
        self as pb,
        scheduler_client::SchedulerClient,
        scheduler_server::{Scheduler, SchedulerServer},
    },
};
use serde_json::Value;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// Claims in a map (each new one starts a second after the previous one),
/// checkpoints, and pools that can be looked up and deleted: the calls the
/// gateway's sandbox routes and `sandpool pool delete` make.
#[derive(Default, Clone)]
pub struct FakeScheduler {
    claims: Arc<Mutex<HashMap<String, pb::Claim>>>,
    checkpoints: Arc<Mutex<Vec<pb::CheckpointInfo>>>,
    /// the pools `get_pool`/`delete_pool` know, by name
    pub pools: Arc<Mutex<BTreeMap<String, pb::Pool>>>,
    /// the names `delete_pool` removed, in order
    pub deleted_pools: Arc<Mutex<Vec<String>>>,
    /// the pool readiness reports gateways made, in order
    pub ready_reports: Arc<Mutex<Vec<pb::PoolReadyReport>>>,
    /// the runtime port every sandbox answers on (127.0.0.1)
    pub runtime_port: u32,
    /// how many more sandboxes `restore_checkpoint` may make (None: no
    /// limit); past it, a restore fails as the node's capacity would
    pub restores_left: Arc<Mutex<Option<u32>>>,
    /// every checkpoint request gateways made, in order
    pub checkpoint_requests: Arc<Mutex<Vec<pb::CheckpointClaimRequest>>>,
    /// every restore request gateways made, in order
    pub restore_requests: Arc<Mutex<Vec<pb::RestoreCheckpointRequest>>>,
}

impl FakeScheduler {
    /// Sandboxes answering on `runtime_port` of 127.0.0.1.
    pub fn with_runtime_port(runtime_port: u32) -> Self {
        FakeScheduler {
            runtime_port,
            ..Default::default()
        }
    }

    /// A pool named `name` (else default) the fake knows.
    pub fn add_pool(&self, name: &str) {
        let pool = pb::Pool {
            name: name.into(),
            ..Default::default()
        };
        self.pools.lock().insert(name.into(), pool);
    }

    /// `claim` as if it had been created (by its id).
    pub fn add_claim(&self, claim: pb::Claim) {
        self.claims.lock().insert(claim.claim_id.clone(), claim);
    }

    /// Change claim `id` as the scheduler would (false: no such claim).
    pub fn update_claim(&self, id: &str, f: impl FnOnce(&mut pb::Claim)) -> bool {
        self.claims.lock().get_mut(id).map(f).is_some()
    }
}

/// When the fake's first claim starts.
pub const T0_MS: i64 = 1_700_000_000_000;

type R<T> = Result<Response<T>, Status>;

fn no<T>() -> R<T> {
    Err(Status::unimplemented("not in the fake"))
}

impl FakeScheduler {
    fn with_claim(&self, id: &str, f: impl FnOnce(&mut pb::Claim)) -> R<pb::Claim> {
        let mut m = self.claims.lock();
        let c = m
            .get_mut(id)
            .ok_or_else(|| Status::not_found(format!("claim {id}")))?;
        f(c);
        Ok(Response::new(c.clone()))
    }
}

#[tonic::async_trait]
impl Scheduler for FakeScheduler {
    async fn apply_pool(&self, r: Request<pb::Pool>) -> R<pb::Pool> {
        let p = r.into_inner();
        self.pools.lock().insert(p.name.clone(), p.clone());
        Ok(Response::new(p))
    }
    async fn get_pool(&self, r: Request<pb::PoolRef>) -> R<pb::Pool> {
        let name = r.into_inner().name;
        let p = self.pools.lock().get(&name).cloned();
        p.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("pool {name} not found")))
    }
    async fn list_pools(&self, _: Request<pb::ListPoolsRequest>) -> R<pb::ListPoolsResponse> {
        let pools = self.pools.lock().values().cloned().collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }
    async fn report_pool_ready(
        &self,
        r: Request<pb::PoolReadyReport>,
    ) -> R<pb::PoolReadyReportResponse> {
        self.ready_reports.lock().push(r.into_inner());
        Ok(Response::new(pb::PoolReadyReportResponse {}))
    }
    async fn delete_pool(&self, r: Request<pb::PoolRef>) -> R<pb::DeletePoolResponse> {
        let name = r.into_inner().name;
        self.pools
            .lock()
            .remove(&name)
            .ok_or_else(|| Status::not_found(format!("pool {name} not found")))?;
        self.deleted_pools.lock().push(name);
        Ok(Response::new(pb::DeletePoolResponse {}))
    }
    async fn create_claim(&self, r: Request<pb::ClaimRequest>) -> R<pb::Claim> {
        let r = r.into_inner();
        if r.metadata.contains_key("slow") {
            // a create that takes a while (a cold start): others run meanwhile
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        // a checkpoint's id or name is no pool (E2B creates from snapshots by them)
        if self
            .checkpoints
            .lock()
            .iter()
            .any(|c| c.checkpoint_id == r.pool || c.name == r.pool)
        {
            return Err(Status::not_found(format!("pool {}", r.pool)));
        }
        let mut m = self.claims.lock();
        // as the scheduler: a caller-chosen claim id already made is returned
        if let Some(c) = m.get(&r.claim_id) {
            return Ok(Response::new(c.clone()));
        }
        let n = m.len() + 1;
        let id = if r.claim_id.is_empty() {
            format!("sb-{n}")
        } else {
            r.claim_id.clone()
        };
        let c = pb::Claim {
            claim_id: id.clone(),
            pool: r.pool,
            state: pb::ClaimState::Bound as i32,
            sandbox: Some(pb::SandboxInfo {
                sandbox_id: id.clone(),
                ip: "127.0.0.1".into(),
                runtime_port: self.runtime_port,
                ..Default::default()
            }),
            created_unix_ms: T0_MS + 1000 * n as i64,
            expires_unix_ms: chrono::Utc::now().timestamp_millis() + 1000 * r.ttl_seconds as i64,
            metadata: r.metadata,
            pause_on_expiry: r.pause_on_expiry,
            auto_resume: r.auto_resume,
            ttl_seconds: r.ttl_seconds,
            ..Default::default()
        };
        m.insert(id, c.clone());
        Ok(Response::new(c))
    }
    async fn get_claim(&self, r: Request<pb::ClaimRef>) -> R<pb::Claim> {
        self.with_claim(&r.into_inner().claim_id, |_| {})
    }
    async fn set_claim_egress(&self, r: Request<pb::SetClaimEgressRequest>) -> R<pb::Claim> {
        let r = r.into_inner();
        self.with_claim(&r.claim_id, |c| {
            c.egress = Some(r.egress.unwrap_or_default())
        })
    }
    async fn set_claim_credential_vault(
        &self,
        r: Request<pb::SetClaimCredentialVaultRequest>,
    ) -> R<pb::Claim> {
        let r = r.into_inner();
        self.with_claim(&r.claim_id, |_| {})
    }
    async fn list_claims(&self, r: Request<pb::ListClaimsRequest>) -> R<pb::ListClaimsResponse> {
        let r = r.into_inner();
        let mut claims: Vec<pb::Claim> = self
            .claims
            .lock()
            .values()
            .filter(|c| r.pool.is_empty() || c.pool == r.pool)
            .filter(|c| r.metadata.iter().all(|(k, v)| c.metadata.get(k) == Some(v)))
            .cloned()
            .collect();
        claims.sort_by(|a, b| a.claim_id.cmp(&b.claim_id));
        Ok(Response::new(pb::ListClaimsResponse {
            total: claims.len() as u32,
            claims,
            ..Default::default()
        }))
    }
    async fn patch_claim_metadata(
        &self,
        r: Request<pb::PatchClaimMetadataRequest>,
    ) -> R<pb::Claim> {
        let r = r.into_inner();
        self.with_claim(&r.claim_id, |c| {
            c.metadata.extend(r.set);
            for k in &r.remove {
                c.metadata.remove(k);
            }
        })
    }
    async fn renew(&self, r: Request<pb::RenewRequest>) -> R<pb::Claim> {
        let r = r.into_inner();
        self.with_claim(&r.claim_id, |c| c.expires_unix_ms = r.expires_unix_ms)
    }
    async fn pause_claim(&self, r: Request<pb::PauseClaimRequest>) -> R<pb::Claim> {
        let r = r.into_inner();
        self.with_claim(&r.claim_id, |c| {
            c.state = pb::ClaimState::Paused as i32;
            c.paused_filesystem_only = r.filesystem_only;
        })
    }
    async fn resume_claim(&self, r: Request<pb::ClaimRef>) -> R<pb::Claim> {
        self.with_claim(&r.into_inner().claim_id, |c| {
            c.state = pb::ClaimState::Bound as i32;
            c.paused_filesystem_only = false;
        })
    }
    async fn release_claim(&self, r: Request<pb::ClaimRef>) -> R<pb::ReleaseClaimResponse> {
        let id = r.into_inner().claim_id;
        self.claims
            .lock()
            .remove(&id)
            .map(|_| Response::new(pb::ReleaseClaimResponse {}))
            .ok_or_else(|| Status::not_found(format!("claim {id}")))
    }
    async fn checkpoint_claim(
        &self,
        r: Request<pb::CheckpointClaimRequest>,
    ) -> R<pb::CheckpointInfo> {
        let r = r.into_inner();
        self.checkpoint_requests.lock().push(r.clone());
        let id = r.claim_id;
        let c = self.with_claim(&id, |_| {})?.into_inner();
        // as a node agent answers for a sandbox of a pool that is not
        // checkpointable; a filesystem-only one is taken as in Kubernetes
        // mode (also for `memory_if_supported`, as there)
        let filesystem_only = r.filesystem_only || (c.pool == "runc" && r.memory_if_supported);
        if c.pool == "runc" && !filesystem_only {
            return Err(Status::unimplemented(format!(
                "checkpoint of sandbox {id} (unsupported on this node: use a checkpointable runsc template)"
            )));
        }
        let mut cks = self.checkpoints.lock();
        // as the scheduler does: the source claim's metadata kept with it
        let ck = pb::CheckpointInfo {
            checkpoint_id: format!("ck-{}", cks.len() + 1),
            sandbox_id: id.clone(),
            owner: id,
            name: r.name,
            source_metadata: c.metadata,
            filesystem_only,
            ..Default::default()
        };
        cks.push(ck.clone());
        Ok(Response::new(ck))
    }
    async fn restore_checkpoint(
        &self,
        r: Request<pb::RestoreCheckpointRequest>,
    ) -> R<pb::RestoreCheckpointResponse> {
        let r = r.into_inner();
        self.restore_requests.lock().push(r.clone());
        if !self
            .checkpoints
            .lock()
            .iter()
            .any(|c| c.checkpoint_id == r.checkpoint_id)
        {
            return Err(Status::not_found(r.checkpoint_id));
        }
        // as the scheduler: a claim id already used returns its claim
        if let Some(c) = self.claims.lock().get(&r.claim_id).cloned() {
            return Ok(Response::new(pb::RestoreCheckpointResponse {
                claims: vec![c],
            }));
        }
        if let Some(left) = self.restores_left.lock().as_mut() {
            *left = left
                .checked_sub(r.count.max(1))
                .ok_or_else(|| Status::resource_exhausted("no room for the restore"))?;
        }
        let mut claims = Vec::new();
        for _ in 0..r.count.max(1) {
            let req = pb::ClaimRequest {
                pool: "ck".into(),
                ttl_seconds: r.ttl_seconds,
                metadata: r.metadata.clone(),
                ..Default::default()
            };
            let mut c = self.create_claim(Request::new(req)).await?.into_inner();
            if !r.claim_id.is_empty() {
                let mut m = self.claims.lock();
                m.remove(&c.claim_id);
                c.claim_id = r.claim_id.clone();
                m.insert(c.claim_id.clone(), c.clone());
            }
            claims.push(c);
        }
        Ok(Response::new(pb::RestoreCheckpointResponse { claims }))
    }
    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> R<pb::ListCheckpointsResponse> {
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: self.checkpoints.lock().clone(),
        }))
    }
    async fn delete_checkpoint(
        &self,
        r: Request<pb::CheckpointRef>,
    ) -> R<pb::DeleteCheckpointResponse> {
        let id = r.into_inner().checkpoint_id;
        self.checkpoints.lock().retain(|c| c.checkpoint_id != id);
        Ok(Response::new(pb::DeleteCheckpointResponse {}))
    }
    async fn create_batch(&self, _: Request<pb::BatchRequest>) -> R<pb::Batch> {
        no()
    }
    async fn get_batch(&self, _: Request<pb::BatchRef>) -> R<pb::Batch> {
        no()
    }
    async fn delete_batch(&self, _: Request<pb::BatchRef>) -> R<pb::DeleteBatchResponse> {
        no()
    }
}

/// Serve `fake` on a loopback port; its address (`http://127.0.0.1:PORT`).
pub async fn serve_addr(fake: FakeScheduler) -> String {
    serve_scheduler_addr(fake).await
}

/// Serve `fake` on a loopback port; a client of it.
pub async fn serve(fake: FakeScheduler) -> SchedulerClient<AuthChannel> {
    serve_scheduler(fake).await
}

/// Serve any `sandpool.v1.Scheduler` on a loopback port; its address.
pub async fn serve_scheduler_addr<S: Scheduler>(scheduler: S) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SchedulerServer::new(scheduler))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// Serve any `sandpool.v1.Scheduler` on a loopback port; a client of it.
pub async fn serve_scheduler<S: Scheduler>(scheduler: S) -> SchedulerClient<AuthChannel> {
    let ch = tonic::transport::Endpoint::from_shared(serve_scheduler_addr(scheduler).await)
        .expect("endpoint")
        .connect_lazy();
    SchedulerClient::with_interceptor(ch, Default::default())
}

/// `req` with `body` as JSON (`Null`: no body) sent to `app`: the answer's
/// status, headers and body.
pub async fn send(
    app: &axum::Router,
    req: http::request::Builder,
    body: &Value,
) -> (u16, http::HeaderMap, axum::body::Bytes) {
    let req = req
        .header("content-type", "application/json")
        .body(axum::body::Body::from(if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        }))
        .expect("request");
    let r = app.clone().oneshot(req).await.expect("response");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, headers, bytes)
}
