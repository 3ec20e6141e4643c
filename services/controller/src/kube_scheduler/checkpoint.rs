//! Filesystem-only checkpoints in Kubernetes mode (`filesystem_only`, E2B
//! `memory: false`; or `memory_if_supported`, OpenSandbox's and sandpool's
//! own snapshots): a checkpoint is a `SandboxSnapshot` of the claim's
//! `BatchSandbox`, committed by the snapshot controller and the node agent
//! of the pod's node (see [`crate::snapshot`]); its id is the snapshot's
//! name. Memory checkpoints stay refused
//! ([`KUBERNETES_CHECKPOINT_UNSUPPORTED`]).
//!
//! * The snapshot is owned by nothing (a release of the claim must not
//!   garbage-collect it) and carries [`CHECKPOINT_LABEL`], by which the
//!   scheduler lists and finds checkpoints (other snapshots, e.g. a
//!   BatchSandbox pause's, are not checkpoints). Its annotations keep what
//!   outlives the claim: the claim's id, its metadata (the gateway scopes
//!   checkpoints to their owner by it, as in standalone mode), its pool, the
//!   checkpoint's name, the claim's pod template and the process the
//!   claim started (its entrypoint, env and cwd). The snapshot controller
//!   adds the committed images' size ([`SIZE_ANNOTATION`]).
//! * A checkpoint waits (a watch on the snapshot, bounded by the claim
//!   timeout) for `Succeed`; a `Failed` or timed-out snapshot is deleted and
//!   the checkpoint refused with why. Without `leave_running` the claim is
//!   then released.
//! * A restore makes `count` claims whose template is the stored one with
//!   the snapshot's images, pinned to the node holding them unless they were
//!   pushed to a registry (the batch resume's [`resumed_template`]; the
//!   request's resource limits on its sandbox container), and starts in each what the checkpointed claim
//!   started (or the request's own process instead); all are ready and
//!   started or none is kept.
//! * Deleting a checkpoint deletes the snapshot; its images stay on the node
//!   or in the registry (as for any SandboxSnapshot).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use sandpool_core::claim::KUBERNETES_CHECKPOINT_UNSUPPORTED;
use sandpool_proto::v1 as pb;
use tonic::Status;

use super::convert::{kube_status, ms, template_of};
use super::watch::{self, Round, changed};
use super::{
    CLAIM_LABEL, ENTRYPOINT_ANNOTATION, KubeScheduler, METADATA_ANNOTATION, expire_after, fetch,
    list,
};
use crate::batch::resume::resumed_template;
use crate::crd::{
    BatchSandbox, BatchSandboxSpec, ProcessTask, SandboxSnapshot, SandboxSnapshotPhase,
    SandboxSnapshotSpec,
};
pub use crate::snapshot::SIZE_ANNOTATION;

/// On a checkpoint's SandboxSnapshot: `"true"`.
pub const CHECKPOINT_LABEL: &str = "sandpool.io/checkpoint";
const SOURCE_ANNOTATION: &str = "sandpool.io/checkpoint-source";
const POOL_ANNOTATION: &str = "sandpool.io/checkpoint-pool";
const NAME_ANNOTATION: &str = "sandpool.io/checkpoint-name";
const TEMPLATE_ANNOTATION: &str = "sandpool.io/checkpoint-template";
/// On a claim's BatchSandbox and a checkpoint's snapshot: the process the
/// claim started (a [`ProcessTask`] as JSON).
const PROCESS_ANNOTATION: &str = "sandpool.io/process";

/// The annotation recording `task` as the process a claim started.
pub(super) fn process_annotation(task: &ProcessTask) -> Result<[(String, String); 1], Status> {
    let json = serde_json::to_string(task).map_err(|e| Status::internal(e.to_string()))?;
    Ok([(PROCESS_ANNOTATION.to_string(), json)])
}

/// Most claims one restore makes (as in standalone mode).
const MAX_RESTORE: u32 = 64;

fn annotation<'a>(s: &'a SandboxSnapshot, key: &str) -> &'a str {
    s.annotations().get(key).map_or("", String::as_str)
}

/// What a checkpoint's snapshot says of it (the claim's metadata included).
fn info_of(s: &SandboxSnapshot) -> pb::CheckpointInfo {
    let template: Option<PodTemplateSpec> =
        serde_json::from_str(annotation(s, TEMPLATE_ANNOTATION)).ok();
    let t = template.as_ref().map(template_of).unwrap_or_default();
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(annotation(s, METADATA_ANNOTATION)).unwrap_or_default();
    let status = s.status.clone().unwrap_or_default();
    pb::CheckpointInfo {
        checkpoint_id: s.name_any(),
        sandbox_id: status.source_pod_name.unwrap_or_default(),
        size_bytes: annotation(s, SIZE_ANNOTATION).parse().unwrap_or(0),
        created_unix_ms: s
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| ms(&t.0)),
        runtime_class: t.runtime_class,
        pool: annotation(s, POOL_ANNOTATION).to_string(),
        image: t.image,
        owner: annotation(s, SOURCE_ANNOTATION).to_string(),
        name: annotation(s, NAME_ANNOTATION).to_string(),
        source_metadata: metadata.into_iter().collect(),
        filesystem_only: true,
    }
}

fn phase(s: &SandboxSnapshot) -> Option<SandboxSnapshotPhase> {
    s.status.as_ref().and_then(|st| st.phase)
}

/// Why a snapshot failed, from its `Failed` condition.
fn failure(s: &SandboxSnapshot) -> String {
    s.status
        .as_ref()
        .and_then(|st| st.conditions.first())
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("Failed"),
                c.message.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "the commit failed".into())
}

impl KubeScheduler {
    fn snapshots(&self) -> Api<SandboxSnapshot> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The pod template claim `b`'s pod was made from: its pool's or its own.
    pub(super) async fn claim_pod_template(
        &self,
        b: &BatchSandbox,
    ) -> Result<Option<PodTemplateSpec>, Status> {
        Ok(match &b.spec.pool_ref {
            Some(pool) => match self.pools().get_opt(pool).await.map_err(kube_status)? {
                Some(p) => p.spec.pod_template(),
                None => None,
            },
            None => b.spec.pod_template(),
        })
    }

    /// Checkpoint `r.claim_id` (see the module doc).
    pub(super) async fn checkpoint(
        &self,
        r: pb::CheckpointClaimRequest,
    ) -> Result<pb::CheckpointInfo, Status> {
        if !r.filesystem_only && !r.memory_if_supported {
            return Err(Status::unimplemented(KUBERNETES_CHECKPOINT_UNSUPPORTED));
        }
        let id = &r.claim_id;
        let b = self.get_claim_batch(id).await?;
        let pod = self.pod_of(&b).await?;
        if super::pause::claim_state(&b, pod.as_ref()) != pb::ClaimState::Bound {
            return Err(Status::failed_precondition(format!(
                "claim {id} is not running: only a running sandbox can be checkpointed (resume it first)"
            )));
        }
        let template = self.claim_pod_template(&b).await?.ok_or_else(|| {
            Status::failed_precondition(format!("claim {id}: its pool's template is gone"))
        })?;
        let name = format!("ckpt-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let mut snap = SandboxSnapshot::new(
            &name,
            SandboxSnapshotSpec {
                sandbox_name: id.clone(),
            },
        );
        snap.metadata.labels = Some(BTreeMap::from([(
            CHECKPOINT_LABEL.to_string(),
            "true".to_string(),
        )]));
        let mut annotations = BTreeMap::from([
            (SOURCE_ANNOTATION.to_string(), id.clone()),
            (NAME_ANNOTATION.to_string(), r.name.clone()),
            (
                TEMPLATE_ANNOTATION.to_string(),
                serde_json::to_string(&template).map_err(|e| Status::internal(e.to_string()))?,
            ),
            (
                POOL_ANNOTATION.to_string(),
                b.spec.pool_ref.clone().unwrap_or_default(),
            ),
        ]);
        for key in [
            METADATA_ANNOTATION,
            PROCESS_ANNOTATION,
            ENTRYPOINT_ANNOTATION,
        ] {
            if let Some(v) = b.annotations().get(key) {
                annotations.insert(key.to_string(), v.clone());
            }
        }
        snap.metadata.annotations = Some(annotations);
        self.snapshots()
            .create(&PostParams::default(), &snap)
            .await
            .map_err(kube_status)?;
        let done = match self.wait_committed(&name, self.claim_timeout).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.snapshots().delete(&name, &Default::default()).await;
                return Err(e);
            }
        };
        if !r.leave_running {
            self.batches()
                .delete(id, &Default::default())
                .await
                .map_err(kube_status)?;
        }
        Ok(info_of(&done))
    }

    /// Wait for snapshot `name` to succeed: read it, then watch it (a field
    /// selector on its name) from its resourceVersion until it changes,
    /// again until the timeout.
    async fn wait_committed(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<SandboxSnapshot, Status> {
        let read = || async move {
            let s = self.snapshots().get_opt(name).await.map_err(kube_status)?;
            let s = s.ok_or_else(|| Status::aborted(format!("checkpoint {name} was deleted")))?;
            match phase(&s) {
                Some(SandboxSnapshotPhase::Succeed) => Ok(Round::Done(s)),
                Some(SandboxSnapshotPhase::Failed) => Err(Status::failed_precondition(format!(
                    "filesystem checkpoint of claim {}: {}",
                    s.spec.sandbox_name,
                    failure(&s)
                ))),
                _ => Ok(Round::Watch(s.resource_version().unwrap_or_default())),
            }
        };
        let params = WatchParams::default().fields(&format!("metadata.name={name}"));
        let params = &params;
        let watch = |rv: String| async move { changed(&self.snapshots(), params, &rv).await };
        watch::rounds(timeout, self.poll, read, watch)
            .await?
            .ok_or_else(|| {
                Status::deadline_exceeded(format!(
                    "checkpoint {name}: the commit did not finish within {timeout:?}"
                ))
            })
    }

    /// Checkpoint `id`'s snapshot (a checkpoint's only).
    async fn checkpoint_snapshot(&self, id: &str) -> Result<SandboxSnapshot, Status> {
        let not_found = || Status::not_found(format!("checkpoint {id} not found"));
        let s = fetch(&self.snapshots(), id).await.map_err(|e| {
            if e.code() == tonic::Code::NotFound {
                not_found()
            } else {
                e
            }
        })?;
        if s.labels().get(CHECKPOINT_LABEL).map(String::as_str) != Some("true")
            || phase(&s) != Some(SandboxSnapshotPhase::Succeed)
        {
            return Err(not_found());
        }
        Ok(s)
    }

    /// The committed checkpoints, oldest first.
    pub(super) async fn checkpoints(&self) -> Result<Vec<pb::CheckpointInfo>, Status> {
        let selector = format!("{CHECKPOINT_LABEL}=true");
        let mut all: Vec<pb::CheckpointInfo> =
            list(&self.snapshots(), &ListParams::default().labels(&selector))
                .await?
                .iter()
                .filter(|s| phase(s) == Some(SandboxSnapshotPhase::Succeed))
                .map(info_of)
                .collect();
        all.sort_by(|a, b| {
            (a.created_unix_ms, &a.checkpoint_id).cmp(&(b.created_unix_ms, &b.checkpoint_id))
        });
        Ok(all)
    }

    pub(super) async fn delete_checkpoint_snapshot(&self, id: &str) -> Result<(), Status> {
        self.checkpoint_snapshot(id).await?;
        self.snapshots()
            .delete(id, &Default::default())
            .await
            .map_err(kube_status)?;
        Ok(())
    }

    /// Restore checkpoint `r.checkpoint_id` into `r.count` new claims.
    pub(super) async fn restore(
        &self,
        r: pb::RestoreCheckpointRequest,
    ) -> Result<Vec<pb::Claim>, Status> {
        let count = r.count.max(1);
        if count > MAX_RESTORE {
            return Err(Status::invalid_argument(format!(
                "count {count}: at most {MAX_RESTORE} claims per restore"
            )));
        }
        if !r.claim_id.is_empty() && count != 1 {
            return Err(Status::invalid_argument(
                "a claim id names the claim of a single restore (count 1)",
            ));
        }
        if !r.claim_id.is_empty()
            && let Ok(b) = self.get_claim_batch(&r.claim_id).await
        {
            return Ok(vec![self.claim_of(&b).await?]);
        }
        let snap = self.checkpoint_snapshot(&r.checkpoint_id).await?;
        let stored: PodTemplateSpec = serde_json::from_str(annotation(&snap, TEMPLATE_ANNOTATION))
            .map_err(|e| {
                Status::internal(format!("checkpoint {}: its template: {e}", r.checkpoint_id))
            })?;
        let mut template = resumed_template(&stored, &snap.status.clone().unwrap_or_default());
        if let Some(asked) = &r.resources {
            set_limits(&mut template, asked)?;
        }
        let (task, annotations) = restored_annotations(&snap, &r)?;
        let mut ids = Vec::new();
        for i in 0..count {
            let id = if i == 0 && !r.claim_id.is_empty() {
                r.claim_id.clone()
            } else {
                super::new_claim_id()
            };
            let b = claim_batch(&id, &template, &annotations, r.ttl_seconds);
            match self.batches().create(&PostParams::default(), &b).await {
                Ok(_) => ids.push(id),
                Err(e) => {
                    self.give_back(&ids).await;
                    return Err(kube_status(e));
                }
            }
        }
        let mut claims = Vec::new();
        for id in &ids {
            match self.ready_and_started(id, task.as_ref()).await {
                Ok(b) => claims.push(self.claim_of(&b).await?),
                Err(e) => {
                    self.give_back(&ids).await;
                    return Err(e);
                }
            }
        }
        Ok(claims)
    }

    /// Wait for restored claim `id`'s pod, then start `task` in it (what
    /// the checkpointed claim started, as a create starts its process).
    async fn ready_and_started(
        &self,
        id: &str,
        task: Option<&ProcessTask>,
    ) -> Result<BatchSandbox, Status> {
        let (b, pod) = self.wait_ready(id, self.claim_timeout).await?;
        if let Some(t) = task.filter(|t| !t.command.is_empty()) {
            self.tasks.start(&pod, t).await.map_err(|e| {
                Status::unavailable(format!("claim {id}: starting the restored process: {e}"))
            })?;
        }
        Ok(b)
    }

    /// Delete the claims `ids` (a restore that did not make them all).
    async fn give_back(&self, ids: &[String]) {
        for id in ids {
            let _ = self.batches().delete(id, &Default::default()).await;
        }
    }
}

/// A claim's one-replica BatchSandbox from `template`.
fn claim_batch(
    id: &str,
    template: &PodTemplateSpec,
    annotations: &BTreeMap<String, String>,
    ttl_seconds: u64,
) -> BatchSandbox {
    let mut b = BatchSandbox::new(
        id,
        BatchSandboxSpec {
            replicas: 1,
            pool_ref: None,
            template: Some(template.clone()),
            sandbox_template: None,
            expire_time: expire_after(ttl_seconds),
            ttl_seconds_after_finished: None,
            task_template: None,
            shard_task_patches: Vec::new(),
            shard_patches: None,
            pause: None,
            task_resource_policy_when_completed: None,
        },
    );
    b.metadata.labels = Some(BTreeMap::from([(
        CLAIM_LABEL.to_string(),
        "true".to_string(),
    )]));
    if !annotations.is_empty() {
        b.metadata.annotations = Some(annotations.clone());
    }
    b
}

/// The process restored claims start and their annotations: the request's
/// metadata, and the request's process or else the checkpointed claim's.
fn restored_annotations(
    snap: &SandboxSnapshot,
    r: &pb::RestoreCheckpointRequest,
) -> Result<(Option<ProcessTask>, BTreeMap<String, String>), Status> {
    let mut annotations = BTreeMap::new();
    if !r.metadata.is_empty() {
        let m: BTreeMap<&String, &String> = r.metadata.iter().collect();
        let m = serde_json::to_string(&m).map_err(|e| Status::internal(e.to_string()))?;
        annotations.insert(METADATA_ANNOTATION.to_string(), m);
    }
    let task = match &r.process {
        Some(p) => {
            if p.uid.is_some() || p.gid.is_some() {
                return Err(Status::unimplemented(
                    "a restore's process uid/gid is not supported in Kubernetes mode",
                ));
            }
            if p.argv.is_empty() {
                return Err(Status::invalid_argument("a restore's process needs argv"));
            }
            let argv =
                serde_json::to_string(&p.argv).map_err(|e| Status::internal(e.to_string()))?;
            annotations.insert(ENTRYPOINT_ANNOTATION.to_string(), argv);
            Some(super::task_of(p))
        }
        None => {
            if let Some(argv) = snap.annotations().get(ENTRYPOINT_ANNOTATION) {
                annotations.insert(ENTRYPOINT_ANNOTATION.to_string(), argv.clone());
            }
            match snap.annotations().get(PROCESS_ANNOTATION) {
                Some(t) => Some(serde_json::from_str(t).map_err(|e| {
                    Status::internal(format!("checkpoint {}: its process: {e}", snap.name_any()))
                })?),
                None => None,
            }
        }
    };
    if let Some(t) = &task {
        annotations.extend(process_annotation(t)?);
    }
    Ok((task, annotations))
}

/// The restored pods' limits: `asked`'s non-empty fields on the template's
/// sandbox container (named `sandbox`, else its first).
fn set_limits(template: &mut PodTemplateSpec, asked: &pb::Resources) -> Result<(), Status> {
    if asked.pids > 0 {
        return Err(Status::unimplemented(
            "a pids limit on a restore is not supported in Kubernetes mode",
        ));
    }
    let containers = template
        .spec
        .as_mut()
        .map(|s| &mut s.containers)
        .ok_or_else(|| Status::failed_precondition("the checkpoint's template has no pod spec"))?;
    let i = containers
        .iter()
        .position(|c| c.name == "sandbox")
        .unwrap_or(0);
    let c = containers
        .get_mut(i)
        .ok_or_else(|| Status::failed_precondition("the checkpoint's template has no container"))?;
    let limits = c
        .resources
        .get_or_insert_with(Default::default)
        .limits
        .get_or_insert_with(Default::default);
    for (name, want) in [("cpu", &asked.cpu), ("memory", &asked.memory)] {
        if !want.is_empty() {
            limits.insert(name.to_string(), Quantity(want.clone()));
        }
    }
    Ok(())
}
