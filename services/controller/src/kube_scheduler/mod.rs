//! `sandpool.v1.Scheduler` backed by CRDs: the gateway speaks the same gRPC
//! API in both modes, and in Kubernetes mode a claim is a one-replica
//! `BatchSandbox` (label `sandpool.io/claim`) that the batch controller fills
//! from the pool; pools are `Pool` resources.
//!
//! Waiting for allocation and readiness is driven by a watch on the pods
//! allocated to the claim (see `wait_ready`), not by a poll timer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::{Client, ResourceExt};
use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::context::{TaskRunner, list_pods};
use crate::crd::*;
use crate::error::{is_already_exists, is_not_found};
use crate::pods::{self, RUNTIME_PORT};
use sandpool_core::claim::ClaimEvent;

mod checkpoint;
mod convert;
mod egress;
pub use checkpoint::CHECKPOINT_LABEL;
pub use egress::{network_policy_name, network_policy_spec};
mod pause;
mod watch;
use convert::{
    POOL_EGRESS_UNSUPPORTED, batch_to_pb, check_pool_limits, kube_status, ms, patched_metadata,
    pool_to_pb,
};
/// The TTL patch of a pause (resume): [`PAUSED_ANNOTATION`] and `expireTime`.
pub use pause::state_patch as ttl_patch;
pub use pause::{
    AUTO_RESUME_ANNOTATION, DaemonSetAgents, NODE_AGENT_PORT, NODE_AGENT_SELECTOR, NodeAgents,
    ON_EXPIRY_ANNOTATION, PAUSED_ANNOTATION, TTL_SECONDS_ANNOTATION,
};
pub(crate) use pause::{core_state, freeze};
use watch::{Round, changed};

pub const CLAIM_LABEL: &str = "sandpool.io/claim";
pub const CLAIM_POOL_LABEL: &str = "sandpool.io/pool";
const METADATA_ANNOTATION: &str = "sandpool.io/metadata";
const ENTRYPOINT_ANNOTATION: &str = "sandpool.io/entrypoint";

pub struct KubeScheduler {
    client: Client,
    ns: String,
    tasks: Arc<dyn TaskRunner>,
    /// Pause and resume go to the node agent of the claim's node.
    nodes: Arc<dyn NodeAgents>,
    /// Longest wait for a claim to be allocated and ready.
    pub claim_timeout: Duration,
    /// Safety-net re-check interval while waiting for a claim: the wait is
    /// woken by a watch on the claim's pods, and re-reads them at least this
    /// often in case a watch goes quiet without ending.
    pub poll: Duration,
}

/// `what` ("pause is", ...) not supported on Kubernetes pool pods (yet).
fn not_in_kubernetes_mode(what: &str) -> Status {
    Status::unimplemented(format!("{what} not supported in Kubernetes mode yet"))
}

/// `name` read through `api`, Kubernetes errors as gRPC statuses.
async fn fetch<K>(api: &Api<K>, name: &str) -> Result<K, Status>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get(name).await.map_err(kube_status)
}

/// The objects `params` select through `api`, Kubernetes errors as gRPC
/// statuses.
async fn list<K>(api: &Api<K>, params: &ListParams) -> Result<Vec<K>, Status>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(params).await.map_err(kube_status)?.items)
}

/// A pod template from the proto template (one container).
pub fn pod_template(t: &pb::SandboxTemplate) -> Result<PodTemplateSpec, Status> {
    if t.image.is_empty() {
        return Err(Status::invalid_argument("template.image is required"));
    }
    if t.egress.is_some() {
        return Err(Status::unimplemented(POOL_EGRESS_UNSUPPORTED));
    }
    let limits = convert::container_limits(t.resources.as_ref())?;
    let env: Vec<EnvVar> = t
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    let runtime_class = match pb::RuntimeClass::try_from(t.runtime_class) {
        Ok(pb::RuntimeClass::Runsc) => Some("gvisor".to_string()),
        _ => None,
    };
    Ok(PodTemplateSpec {
        metadata: (!t.labels.is_empty()).then(|| ObjectMeta {
            labels: Some(t.labels.clone().into_iter().collect()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            runtime_class_name: runtime_class,
            containers: vec![Container {
                name: "sandbox".into(),
                image: Some(t.image.clone()),
                command: (!t.command.is_empty()).then(|| t.command.clone()),
                env: (!env.is_empty()).then_some(env),
                resources: Some(ResourceRequirements {
                    limits: Some(limits),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    })
}

/// The pod claim `b` runs in (allocated to its BatchSandbox, not
/// terminating), if any.
pub(crate) async fn claim_pod(pods: &Api<Pod>, b: &BatchSandbox) -> Result<Option<Pod>, Status> {
    let uid = b.uid().unwrap_or_default();
    let all = list_pods(pods, &format!("{ALLOCATED_TO_LABEL}={uid}"))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(all.into_iter().find(|p| !pods::is_terminating(p)))
}

/// What a claim asks for that Kubernetes mode does not do.
fn refuse_unsupported(r: &pb::ClaimRequest) -> Result<(), Status> {
    if r.image_auth.is_some() {
        return Err(not_in_kubernetes_mode(
            "image.auth (use imagePullSecrets on the pool's pod template) is",
        ));
    }
    Ok(())
}

/// `ttl_seconds` from now (0 = never).
fn expire_after(ttl_seconds: u64) -> Option<Time> {
    if ttl_seconds == 0 {
        return None;
    }
    let ttl = k8s_openapi::jiff::SignedDuration::from_secs(
        i64::try_from(ttl_seconds).unwrap_or(i64::MAX),
    );
    Timestamp::now().checked_add(ttl).ok().map(Time)
}

fn task_of(p: &pb::InjectRequest) -> ProcessTask {
    ProcessTask {
        command: p.argv.clone(),
        args: Vec::new(),
        env: p
            .env
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            })
            .collect(),
        working_dir: (!p.cwd.is_empty()).then(|| p.cwd.clone()),
    }
}

impl KubeScheduler {
    pub fn new(client: Client, ns: &str, tasks: Arc<dyn TaskRunner>) -> Self {
        KubeScheduler {
            client: client.clone(),
            ns: ns.to_string(),
            tasks,
            nodes: Arc::new(DaemonSetAgents::new(client.clone(), ns, Default::default())),
            claim_timeout: Duration::from_secs(120),
            poll: Duration::from_secs(5),
        }
    }

    fn batches(&self) -> Api<BatchSandbox> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Where a claim's pod comes from: its pool (whose pods' limits it must
    /// not change), or its own template (with the claim's limits).
    async fn claim_source(
        &self,
        r: &pb::ClaimRequest,
    ) -> Result<(Option<String>, Option<PodTemplateSpec>), Status> {
        if r.pool.is_empty() {
            let mut t = r
                .template
                .clone()
                .ok_or_else(|| Status::invalid_argument("a pool or a template is required"))?;
            if let Some(asked) = &r.resources {
                let own = t.resources.get_or_insert_with(Default::default);
                for (mine, theirs) in [(&mut own.cpu, &asked.cpu), (&mut own.memory, &asked.memory)]
                {
                    if !theirs.is_empty() {
                        mine.clone_from(theirs);
                    }
                }
            }
            return Ok((None, Some(pod_template(&t)?)));
        }
        let pool = self.pools().get(&r.pool).await.map_err(|e| {
            if is_not_found(&e) {
                Status::not_found(format!("pool {} not found", r.pool))
            } else {
                kube_status(e)
            }
        })?;
        if let Some(asked) = &r.resources {
            check_pool_limits(&r.pool, pool.spec.pod_template().as_ref(), asked)?;
        }
        Ok((Some(r.pool.clone()), None))
    }

    fn pools(&self) -> Api<Pool> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn pod_of(&self, b: &BatchSandbox) -> Result<Option<Pod>, Status> {
        claim_pod(&self.pods(), b).await
    }

    async fn claim_of(&self, b: &BatchSandbox) -> Result<pb::Claim, Status> {
        let pod = self.pod_of(b).await?;
        let ready = pod.as_ref().is_some_and(pods::is_ready);
        let state = pause::claim_state(b, pod.as_ref());
        let metadata: BTreeMap<String, String> = b
            .annotations()
            .get(METADATA_ANNOTATION)
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let entrypoint: Vec<String> = b
            .annotations()
            .get(ENTRYPOINT_ANNOTATION)
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let pool = b.spec.pool_ref.clone().unwrap_or_default();
        let (pause_on_expiry, auto_resume, ttl_seconds) = pause::on_expiry(b);
        let sandbox = pod.as_ref().map(|p| pb::SandboxInfo {
            sandbox_id: p.name_any(),
            pool: pool.clone(),
            node: pods::node_name(p).to_string(),
            state: if state == pb::ClaimState::Paused {
                pb::SandboxState::Paused as i32
            } else if ready {
                pb::SandboxState::Claimed as i32
            } else {
                pb::SandboxState::Creating as i32
            },
            ip: pods::pod_ip(p).unwrap_or_default().to_string(),
            runtime_port: RUNTIME_PORT as u32,
            access_token: pods::access_token(p).unwrap_or_default().to_string(),
            created_unix_ms: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| ms(&t.0))
                .unwrap_or(0),
            ..Default::default()
        });
        Ok(pb::Claim {
            claim_id: b.name_any(),
            pool,
            state: state as i32,
            sandbox,
            created_unix_ms: b
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| ms(&t.0))
                .unwrap_or(0),
            expires_unix_ms: pause::reported_expiry(b),
            metadata: metadata.into_iter().collect(),
            cold_start: b.spec.pool_ref.is_none(),
            entrypoint,
            image: self.claim_template(b).await?.image,
            pause_on_expiry,
            auto_resume,
            ttl_seconds,
            egress: egress::read_back(b),
            ..Default::default()
        })
    }

    async fn get_claim_batch(&self, id: &str) -> Result<BatchSandbox, Status> {
        let b = fetch(&self.batches(), id).await?;
        if b.labels().get(CLAIM_LABEL).map(String::as_str) != Some("true") {
            return Err(Status::not_found(format!("claim {id} not found")));
        }
        Ok(b)
    }

    /// Wait until the claim's pod is ready (or the timeout). Each round
    /// reads the claim and the pods allocated to it (its uid in
    /// [`ALLOCATED_TO_LABEL`]), then watches those pods from the list's
    /// resourceVersion and reads again as soon as one changes. A watch that
    /// ends or fails starts a new round (list, then watch again); `poll` is
    /// only a safety net for a watch that stays open but quiet.
    async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<(BatchSandbox, Pod), Status> {
        let read = || async move {
            let b = fetch(&self.batches(), id).await?;
            let selector = format!("{ALLOCATED_TO_LABEL}={}", b.uid().unwrap_or_default());
            let listed = self
                .pods()
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let pod = listed.items.into_iter().find(|p| !pods::is_terminating(p));
            Ok(match pod {
                Some(p) if pods::is_ready(&p) => Round::Done((b, p)),
                _ => Round::Watch((selector, listed.metadata.resource_version)),
            })
        };
        let watch = |(selector, rv): (String, Option<String>)| async move {
            let params = WatchParams::default().labels(&selector);
            changed(&self.pods(), &params, &rv.unwrap_or_default()).await
        };
        watch::rounds(timeout, self.poll, read, watch)
            .await?
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "claim {id}: no sandbox became ready within {timeout:?}"
                ))
            })
    }
}

/// A new claim's BatchSandbox annotations: its metadata, entrypoint and
/// egress policy as given.
fn claim_annotations(
    r: &pb::ClaimRequest,
    egress: Option<&egress::Plan>,
) -> Result<BTreeMap<String, String>, Status> {
    let internal = |e: serde_json::Error| Status::internal(e.to_string());
    let mut annotations = BTreeMap::new();
    if !r.metadata.is_empty() {
        let m: BTreeMap<_, _> = r.metadata.clone().into_iter().collect();
        let m = serde_json::to_string(&m).map_err(internal)?;
        annotations.insert(METADATA_ANNOTATION.to_string(), m);
    }
    if let Some(p) = &r.process {
        let argv = serde_json::to_string(&p.argv).map_err(internal)?;
        annotations.insert(ENTRYPOINT_ANNOTATION.to_string(), argv);
        annotations.extend(checkpoint::process_annotation(&task_of(p))?);
    }
    if let Some(e) = egress {
        annotations.insert(egress::EGRESS_ANNOTATION.into(), e.annotation.clone());
    }
    Ok(annotations)
}

/// A new claim's id.
fn new_claim_id() -> String {
    format!("sbx-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

#[tonic::async_trait]
impl Scheduler for KubeScheduler {
    async fn apply_pool(&self, req: Request<pb::Pool>) -> Result<Response<pb::Pool>, Status> {
        let p = req.into_inner();
        sandpool_core::validate_dns_label("pool name", &p.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let template = pod_template(
            p.template
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("template is required"))?,
        )?;
        let c = p.capacity.unwrap_or_default();
        let cap = sandpool_core::pool::CapacitySpec {
            buffer_min: c.buffer_min,
            buffer_max: c.buffer_max,
            pool_min: c.pool_min,
            pool_max: c.pool_max,
        };
        cap.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let i = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let spec = PoolSpec::new(
            template,
            CapacitySpec {
                buffer_min: i(c.buffer_min),
                buffer_max: i(c.buffer_max),
                pool_min: i(c.pool_min),
                pool_max: i(c.pool_max),
            },
        );
        let obj = Pool::new(&p.name, spec.clone());
        let out = match self.pools().create(&PostParams::default(), &obj).await {
            Ok(o) => o,
            Err(e) if is_already_exists(&e) => {
                let patch = json!({"spec": serde_json::to_value(&spec).map_err(|e| Status::internal(e.to_string()))?});
                self.pools()
                    .patch(&p.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(kube_status)?
            }
            Err(e) => return Err(kube_status(e)),
        };
        Ok(Response::new(pool_to_pb(&out)))
    }

    async fn get_pool(&self, req: Request<pb::PoolRef>) -> Result<Response<pb::Pool>, Status> {
        let p = fetch(&self.pools(), &req.into_inner().name).await?;
        Ok(Response::new(pool_to_pb(&p)))
    }

    async fn list_pools(
        &self,
        _: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let pools = list(&self.pools(), &ListParams::default())
            .await?
            .iter()
            .map(pool_to_pb)
            .collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    /// Pool status lives in the Pool CRD here; E2B readyCmd reports do not reach it.
    async fn report_pool_ready(
        &self,
        _: Request<pb::PoolReadyReport>,
    ) -> Result<Response<pb::PoolReadyReportResponse>, Status> {
        Err(not_in_kubernetes_mode(
            "a pool readiness report (E2B readyCmd) is",
        ))
    }

    async fn delete_pool(
        &self,
        req: Request<pb::PoolRef>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let name = req.into_inner().name;
        self.pools()
            .delete(&name, &Default::default())
            .await
            .map_err(kube_status)?;
        Ok(Response::new(pb::DeletePoolResponse {}))
    }

    /// The claim's NetworkPolicy replaced (see [`egress`]).
    async fn set_claim_egress(
        &self,
        req: Request<pb::SetClaimEgressRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        Ok(Response::new(self.set_egress(req.into_inner()).await?))
    }

    async fn set_claim_credential_vault(
        &self,
        _req: Request<pb::SetClaimCredentialVaultRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        Err(Status::unimplemented(convert::VAULT_UNSUPPORTED))
    }

    async fn create_claim(
        &self,
        req: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        refuse_unsupported(&r)?;
        let on_expiry = pause::on_expiry_annotations(&r)?;
        // checked and translated before anything is written
        let egress = r.egress.as_ref().map(egress::plan).transpose()?;
        let id = if r.claim_id.is_empty() {
            new_claim_id()
        } else {
            r.claim_id.clone()
        };
        // idempotency: an existing claim of that id is returned as is
        if let Ok(b) = self.get_claim_batch(&id).await {
            return Ok(Response::new(self.claim_of(&b).await?));
        }
        let mut labels = BTreeMap::from([(CLAIM_LABEL.to_string(), "true".to_string())]);
        let (pool_ref, template) = self.claim_source(&r).await?;
        if let Some(p) = &pool_ref {
            labels.insert(CLAIM_POOL_LABEL.to_string(), p.clone());
        }
        let mut annotations = claim_annotations(&r, egress.as_ref())?;
        annotations.extend(on_expiry);
        let expire = expire_after(r.ttl_seconds);
        let mut b = BatchSandbox::new(
            &id,
            BatchSandboxSpec {
                replicas: 1,
                pool_ref,
                template,
                sandbox_template: None,
                expire_time: expire,
                ttl_seconds_after_finished: None,
                task_template: None,
                shard_task_patches: Vec::new(),
                shard_patches: None,
                pause: None,
                task_resource_policy_when_completed: None,
            },
        );
        b.metadata.labels = Some(labels);
        b.metadata.annotations = Some(annotations);
        let b = match self.batches().create(&PostParams::default(), &b).await {
            Ok(b) => b,
            Err(e) if is_already_exists(&e) => fetch(&self.batches(), &id).await?,
            Err(e) => return Err(kube_status(e)),
        };
        // in place before the pod is ready and its entrypoint starts
        if let Some(peers) = egress.as_ref().and_then(|e| e.peers.as_deref())
            && let Err(s) = self.apply_egress(&b, Some(peers)).await
        {
            self.discard(&id).await;
            return Err(s);
        }
        let timeout = if r.pool_only {
            self.claim_timeout.min(Duration::from_secs(5))
        } else {
            self.claim_timeout
        };
        let (b, pod) = match self.wait_ready(&id, timeout).await {
            Ok(x) => x,
            Err(s) => {
                // give the pod back rather than leak a half-made claim
                self.discard(&id).await;
                return Err(s);
            }
        };
        if let Err(s) =
            crate::node_agents::mount_pod_volumes(self.nodes.as_ref(), &pod, &r.mounts).await
        {
            self.discard(&id).await;
            return Err(s);
        }
        if let Some(p) = &r.process
            && !p.argv.is_empty()
            && let Err(e) = self.tasks.start(&pod, &task_of(p)).await
        {
            self.discard(&id).await;
            return Err(Status::unavailable(format!("starting the entrypoint: {e}")));
        }
        let mut claim = self.claim_of(&b).await?;
        claim.claim_us = started.elapsed().as_micros() as u64;
        Ok(Response::new(claim))
    }

    async fn get_claim(&self, req: Request<pb::ClaimRef>) -> Result<Response<pb::Claim>, Status> {
        let b = self.get_claim_batch(&req.into_inner().claim_id).await?;
        Ok(Response::new(self.claim_of(&b).await?))
    }

    async fn list_claims(
        &self,
        req: Request<pb::ListClaimsRequest>,
    ) -> Result<Response<pb::ListClaimsResponse>, Status> {
        let r = req.into_inner();
        let mut sel = format!("{CLAIM_LABEL}=true");
        if !r.pool.is_empty() {
            sel.push_str(&format!(",{CLAIM_POOL_LABEL}={}", r.pool));
        }
        let mut items = list(&self.batches(), &ListParams::default().labels(&sel)).await?;
        items.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
                .then(a.name_any().cmp(&b.name_any()))
        });
        let mut claims = Vec::new();
        for b in &items {
            let c = self.claim_of(b).await?;
            let state_ok = r.states.is_empty() || r.states.contains(&c.state);
            let meta_ok = r.metadata.iter().all(|(k, v)| c.metadata.get(k) == Some(v));
            if state_ok && meta_ok {
                claims.push(c);
            }
        }
        let page = sandpool_core::page::page(claims, &r.page_token, r.page_size)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ListClaimsResponse {
            claims: page.items,
            next_page_token: page.next_token,
            total: page.total,
        }))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::Claim>, Status> {
        let r = req.into_inner();
        let b = self.get_claim_batch(&r.claim_id).await?;
        let t = Timestamp::from_millisecond(r.expires_unix_ms)
            .map_err(|e| Status::invalid_argument(format!("expires_unix_ms: {e}")))?;
        let patch = pause::renew_patch(&b, t);
        let b = self
            .batches()
            .patch(&r.claim_id, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_status)?;
        Ok(Response::new(self.claim_of(&b).await?))
    }

    /// Metadata lives in the claim's BatchSandbox annotation: patched there
    /// (read-modify-write, as upstream OpenSandbox does).
    async fn patch_claim_metadata(
        &self,
        req: Request<pb::PatchClaimMetadataRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let r = req.into_inner();
        let id = r.claim_id.clone();
        let b = self.get_claim_batch(&id).await?;
        let m = patched_metadata(b.annotations().get(METADATA_ANNOTATION), r);
        let patch = json!({"metadata": {"annotations": {METADATA_ANNOTATION: m}}});
        let b = self
            .batches()
            .patch(&id, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_status)?;
        Ok(Response::new(self.claim_of(&b).await?))
    }

    async fn pause_claim(
        &self,
        req: Request<pb::PauseClaimRequest>,
    ) -> Result<Response<pb::Claim>, Status> {
        let id = pause::frozen_only(req.into_inner())?;
        Ok(Response::new(
            self.set_claim_paused(&id, ClaimEvent::Pause).await?,
        ))
    }

    async fn resume_claim(
        &self,
        req: Request<pb::ClaimRef>,
    ) -> Result<Response<pb::Claim>, Status> {
        let id = req.into_inner().claim_id;
        Ok(Response::new(
            self.set_claim_paused(&id, ClaimEvent::Resume).await?,
        ))
    }

    /// Filesystem-only checkpoints only (see [`checkpoint`]).
    async fn checkpoint_claim(
        &self,
        req: Request<pb::CheckpointClaimRequest>,
    ) -> Result<Response<pb::CheckpointInfo>, Status> {
        Ok(Response::new(self.checkpoint(req.into_inner()).await?))
    }

    async fn restore_checkpoint(
        &self,
        req: Request<pb::RestoreCheckpointRequest>,
    ) -> Result<Response<pb::RestoreCheckpointResponse>, Status> {
        let claims = self.restore(req.into_inner()).await?;
        Ok(Response::new(pb::RestoreCheckpointResponse { claims }))
    }

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let checkpoints = self.checkpoints().await?;
        Ok(Response::new(pb::ListCheckpointsResponse { checkpoints }))
    }

    async fn delete_checkpoint(
        &self,
        r: Request<pb::CheckpointRef>,
    ) -> Result<Response<pb::DeleteCheckpointResponse>, Status> {
        self.delete_checkpoint_snapshot(&r.into_inner().checkpoint_id)
            .await?;
        Ok(Response::new(pb::DeleteCheckpointResponse {}))
    }

    async fn release_claim(
        &self,
        req: Request<pb::ClaimRef>,
    ) -> Result<Response<pb::ReleaseClaimResponse>, Status> {
        let id = req.into_inner().claim_id;
        self.get_claim_batch(&id).await?;
        self.batches()
            .delete(&id, &Default::default())
            .await
            .map_err(kube_status)?;
        // its NetworkPolicy stays until its pod is reset or gone (egress)
        Ok(Response::new(pb::ReleaseClaimResponse {}))
    }

    async fn create_batch(
        &self,
        req: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::Batch>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() || r.pool.is_empty() {
            return Err(Status::invalid_argument("name and pool are required"));
        }
        let patches = r
            .shard_task_patches
            .iter()
            .enumerate()
            .map(|(i, p)| {
                serde_json::from_str::<serde_json::Value>(p)
                    .map_err(|e| Status::invalid_argument(format!("shard_task_patches[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let expire = expire_after(r.ttl_seconds);
        let b = BatchSandbox::new(
            &r.name,
            BatchSandboxSpec {
                replicas: i32::try_from(r.replicas).unwrap_or(i32::MAX),
                pool_ref: Some(r.pool.clone()),
                template: None,
                sandbox_template: None,
                expire_time: expire,
                ttl_seconds_after_finished: None,
                task_template: r.task.as_ref().map(|t| TaskTemplateSpec {
                    spec: TaskSpec {
                        process: Some(task_of(t)),
                        timeout_seconds: None,
                    },
                }),
                shard_task_patches: patches,
                shard_patches: None,
                pause: None,
                task_resource_policy_when_completed: None,
            },
        );
        let b = self
            .batches()
            .create(&PostParams::default(), &b)
            .await
            .map_err(kube_status)?;
        Ok(Response::new(batch_to_pb(&b)))
    }

    async fn get_batch(&self, req: Request<pb::BatchRef>) -> Result<Response<pb::Batch>, Status> {
        let b = fetch(&self.batches(), &req.into_inner().name).await?;
        Ok(Response::new(batch_to_pb(&b)))
    }

    async fn delete_batch(
        &self,
        req: Request<pb::BatchRef>,
    ) -> Result<Response<pb::DeleteBatchResponse>, Status> {
        self.batches()
            .delete(&req.into_inner().name, &Default::default())
            .await
            .map_err(kube_status)?;
        Ok(Response::new(pb::DeleteBatchResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_auth_is_refused_naming_it() {
        assert!(refuse_unsupported(&pb::ClaimRequest::default()).is_ok());
        let r = pb::ClaimRequest {
            image_auth: Some(pb::ImageAuth::default()),
            ..Default::default()
        };
        let e = refuse_unsupported(&r).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert!(e.message().contains("image.auth"), "{e}");
    }

    #[test]
    fn a_pool_claim_may_ask_only_for_its_pool_pods_limits() {
        let pods = pod_template(&pb::SandboxTemplate {
            image: "busybox".into(),
            resources: Some(pb::Resources {
                cpu: "1".into(),
                memory: "2Gi".into(),
                pids: 0,
            }),
            ..Default::default()
        })
        .expect("pod template");
        let asked = |cpu: &str, memory: &str| pb::Resources {
            cpu: cpu.into(),
            memory: memory.into(),
            pids: 0,
        };
        for same in [asked("1", "2Gi"), asked("", "2Gi"), asked("", "")] {
            assert!(
                check_pool_limits("p", Some(&pods), &same).is_ok(),
                "{same:?}"
            );
        }
        let e = check_pool_limits("p", Some(&pods), &asked("1", "256Mi")).expect_err("other");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert!(e.message().contains("resourceLimits.memory"), "{e:?}");
    }
}
