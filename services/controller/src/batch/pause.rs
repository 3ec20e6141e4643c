//! OpenSandbox `spec.pause` in Kubernetes mode, as upstream's controller
//! does it: a pause is a rootfs snapshot and the pod's deletion, a resume
//! a new pod from the snapshot's images ([`super::resume`]).
//!
//! * `status.pauseObservedGeneration` is the generation whose `spec.pause`
//!   was last acknowledged: a pause (resume) is acted on once per generation;
//!   `spec.pause` unset is no intent (a paused batch stays paused).
//! * Pause (`spec.pause: true`, a new generation): only a batch of
//!   `spec.replicas: 1` (upstream's limit: the snapshot records one pod),
//!   else `PauseFailed` (`UnsupportedReplicas`) with the phase kept. The
//!   acknowledgement comes with phase `Pausing`; the batch's tasks are
//!   stopped and the SandboxSnapshot `<batch>-pause` is created, controlled
//!   by the batch, for [`crate::snapshot`] to commit (the node agent's
//!   `CommitImages`). A terminal snapshot of that name left by an earlier
//!   pause is deleted first.
//! * `Pausing`: once the snapshot has `Succeed` the pod is released (a
//!   template pod deleted; a pooled batch is detached from its pool first:
//!   its `spec.template` becomes the pool's and `spec.poolRef` is cleared,
//!   and the pod goes back through the pool's release, reset or deleted),
//!   the endpoints are cleared and the phase is `Paused` with a
//!   `Paused=True` condition. If the snapshot `Failed`, `PauseFailed=True`
//!   (reason `SnapshotFailed`, or `PodNotFound` with phase `Failed` when
//!   the batch has no pod) carries the snapshot's message and the pod stays.
//! * While `Paused` no pod is made; the TTL clock stops as for a paused
//!   claim (`expireTime` set aside in [`crate::kube_scheduler::PAUSED_ANNOTATION`],
//!   put back with what was left on resume). A new generation that still
//!   asks for a pause is acknowledged only (upstream would delete the
//!   snapshot and fail the pause: the pod is gone).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use sandpool_core::claim::ClaimEvent;
use serde_json::json;

use crate::context::{Context, delete_ignoring_missing, list_pods, now, patch_status};
use crate::crd::{
    ALLOCATED_TO_LABEL, BatchSandbox, BatchSandboxPhase, ENDPOINTS_ANNOTATION, Pool,
    SandboxSnapshot, SandboxSnapshotPhase, SandboxSnapshotSpec, SnapshotConditionStatus,
    SnapshotConditionType, TASK_ANNOTATION,
};
use crate::error::{Error, Result, is_already_exists};
use crate::kube_scheduler::PAUSED_ANNOTATION;
use crate::pods;

/// Upstream's condition types.
pub const PAUSED: &str = "Paused";
pub const PAUSE_FAILED: &str = "PauseFailed";
pub const RESUME_FAILED: &str = "ResumeFailed";
pub const POD_FAILED: &str = "PodFailed";

/// How often a paused batch is looked at again.
const PAUSED_RECHECK: Duration = Duration::from_secs(300);

/// The SandboxSnapshot a pause of `batch` commits into (upstream's name).
pub fn internal_snapshot_name(batch: &str) -> String {
    format!("{batch}-pause")
}

/// What `spec.pause` asks of the batch now.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the normal reconcile runs.
    None,
    /// Acknowledge a pause and create the snapshot.
    Pause,
    /// `Pausing`: wait for the snapshot, then release the pod.
    SyncPause,
    /// Acknowledge a resume (`Resuming`).
    Resume,
    /// `Resuming`: point the template at the snapshot's images, then the
    /// normal reconcile makes the pod.
    ContinueResume,
    /// Stay paused (no pod or task work), acknowledging a newer generation.
    Hold,
}

/// The step for `batch` (see the module doc): the phases under way come
/// first, then a new generation's intent.
pub fn step(batch: &BatchSandbox) -> Step {
    let st = batch.status.as_ref();
    let phase = st.and_then(|s| s.phase);
    match phase {
        Some(BatchSandboxPhase::Resuming) => return Step::ContinueResume,
        Some(BatchSandboxPhase::Pausing) => return Step::SyncPause,
        _ => {}
    }
    let generation = batch.metadata.generation.unwrap_or(0);
    let acked = st.and_then(|s| s.pause_observed_generation).unwrap_or(0);
    let new_intent = generation > acked;
    let paused = phase == Some(BatchSandboxPhase::Paused);
    match batch.spec.pause {
        Some(true) if new_intent && !paused => Step::Pause,
        Some(false) if new_intent && paused => Step::Resume,
        _ if paused => Step::Hold,
        _ => Step::None,
    }
}

/// Act on `spec.pause`; `Some` when the normal reconcile must not run now.
pub async fn reconcile(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<Option<Action>> {
    match step(batch) {
        Step::None => Ok(None),
        Step::Hold => {
            let st = batch.status.as_ref();
            if st.and_then(|s| s.pause_observed_generation) < batch.metadata.generation {
                let ack = json!({"pauseObservedGeneration": batch.metadata.generation});
                patch_status(&ctx.api::<BatchSandbox>(ns), &batch.name_any(), ack).await?;
            }
            Ok(Some(Action::requeue(PAUSED_RECHECK)))
        }
        Step::Pause => handle_pause(batch, ctx, ns).await.map(Some),
        Step::SyncPause => sync_pause(batch, ctx, ns).await.map(Some),
        Step::Resume => super::resume::handle_resume(batch, ctx, ns).await.map(Some),
        Step::ContinueResume => super::resume::continue_resume(batch, ctx, ns).await,
    }
}

/// The batch's pods that are not being deleted.
pub(super) async fn live_pods(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<Vec<Pod>> {
    let uid = batch.uid().unwrap_or_default();
    Ok(
        list_pods(&ctx.api(ns), &format!("{ALLOCATED_TO_LABEL}={uid}"))
            .await?
            .into_iter()
            .filter(|p| !pods::is_terminating(p))
            .collect(),
    )
}

/// Write `phase` and the acknowledgement of this generation, with `conds`.
pub(super) async fn ack(
    ctx: &Context,
    batch: &BatchSandbox,
    phase: BatchSandboxPhase,
    conds: &[Condition],
) -> Result<()> {
    let api: Api<BatchSandbox> = ctx.api(&crate::context::namespace_of(batch)?);
    let body = json!({"phase": phase, "pauseObservedGeneration": batch.metadata.generation,
        "conditions": conds});
    patch_status(&api, &batch.name_any(), body).await
}

async fn handle_pause(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<Action> {
    let name = batch.name_any();
    let generation = batch.metadata.generation;
    if batch.spec.replicas != 1 {
        let msg = format!(
            "pause/resume currently supports only BatchSandbox spec.replicas=1; got spec.replicas={}",
            batch.spec.replicas
        );
        let phase = batch
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(BatchSandboxPhase::Succeed);
        let conds = with_condition(
            conditions(batch),
            PAUSE_FAILED,
            "True",
            "UnsupportedReplicas",
            &msg,
            generation,
        );
        ack(ctx, batch, phase, &conds).await?;
        ctx.event(batch, true, PAUSE_FAILED, msg).await;
        return Ok(Action::requeue(ctx.settle));
    }
    let snaps: Api<SandboxSnapshot> = ctx.api(ns);
    let snap_name = internal_snapshot_name(&name);
    let existing = snaps.get_opt(&snap_name).await?;
    if let Some(s) = &existing {
        if s.metadata.deletion_timestamp.is_some() {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let phase = s.status.as_ref().and_then(|st| st.phase);
        if matches!(
            phase,
            Some(SandboxSnapshotPhase::Succeed | SandboxSnapshotPhase::Failed)
        ) {
            // an earlier pause's: a new one commits again
            delete_ignoring_missing(&snaps, &snap_name).await?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    let conds = without(&without(conditions(batch), PAUSE_FAILED), PAUSED);
    ack(ctx, batch, BatchSandboxPhase::Pausing, &conds).await?;
    if existing.is_none() {
        create_snapshot(batch, ctx, ns, &snap_name).await?;
    }
    Ok(Action::requeue(ctx.settle))
}

/// Stop the batch's tasks (best effort), then create its pause snapshot,
/// controlled by the batch.
async fn create_snapshot(batch: &BatchSandbox, ctx: &Context, ns: &str, name: &str) -> Result<()> {
    for p in live_pods(batch, ctx, ns).await? {
        if pods::annotation(&p, TASK_ANNOTATION).is_some()
            && let Err(e) = ctx.tasks.stop(&p).await
        {
            tracing::warn!(pod = %p.name_any(), error = %e, "stopping the task before a pause failed");
        }
    }
    let owner = pods::controller_ref(
        "sandbox.opensandbox.io/v1alpha1",
        "BatchSandbox",
        &batch.name_any(),
        &batch.uid().unwrap_or_default(),
    );
    let snap = SandboxSnapshot {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: SandboxSnapshotSpec {
            sandbox_name: batch.name_any(),
        },
        status: None,
    };
    match ctx
        .api::<SandboxSnapshot>(ns)
        .create(&PostParams::default(), &snap)
        .await
    {
        Ok(_) => {
            let note = format!("committing the sandbox into SandboxSnapshot {name}");
            ctx.event(batch, false, "Pausing", note).await;
            Ok(())
        }
        Err(e) if is_already_exists(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `Pausing`: the snapshot decides (see the module doc).
async fn sync_pause(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<Action> {
    let snap_name = internal_snapshot_name(&batch.name_any());
    let Some(snap) = ctx.api::<SandboxSnapshot>(ns).get_opt(&snap_name).await? else {
        create_snapshot(batch, ctx, ns, &snap_name).await?;
        return Ok(Action::requeue(ctx.settle));
    };
    let status = snap.status.unwrap_or_default();
    match status.phase {
        Some(SandboxSnapshotPhase::Succeed) => complete_pause(batch, ctx, ns, &snap_name).await,
        Some(SandboxSnapshotPhase::Failed) => {
            let msg = status
                .conditions
                .iter()
                .find(|c| {
                    c.type_ == SnapshotConditionType::Failed
                        && c.status == SnapshotConditionStatus::True
                })
                .and_then(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "snapshot failed".into());
            let mine = live_pods(batch, ctx, ns).await?;
            let (phase, reason) = if mine.is_empty() {
                (BatchSandboxPhase::Failed, "PodNotFound")
            } else {
                let ready = mine.iter().filter(|p| pods::is_ready(p)).count() as i32;
                (super::phase::phase(&mine, ready), "SnapshotFailed")
            };
            let conds = with_condition(
                conditions(batch),
                PAUSE_FAILED,
                "True",
                reason,
                &msg,
                batch.metadata.generation,
            );
            ack(ctx, batch, phase, &conds).await?;
            ctx.event(batch, true, PAUSE_FAILED, format!("pause failed: {msg}"))
                .await;
            Ok(Action::requeue(ctx.settle))
        }
        _ => Ok(Action::requeue(Duration::from_secs(1))),
    }
}

/// The snapshot is committed: detach a pooled batch, stop the TTL clock,
/// clear the endpoints, release the pod, `Paused`.
async fn complete_pause(
    batch: &BatchSandbox,
    ctx: &Context,
    ns: &str,
    snap_name: &str,
) -> Result<Action> {
    let api: Api<BatchSandbox> = ctx.api(ns);
    let name = batch.name_any();
    let mine = live_pods(batch, ctx, ns).await?;
    let mut patch = json!({"metadata": {"annotations": {ENDPOINTS_ANNOTATION: "[]"}}});
    if !batch.annotations().contains_key(PAUSED_ANNOTATION) {
        let ttl = crate::kube_scheduler::ttl_patch(batch, ClaimEvent::Pause)
            .map_err(|s| Error::invalid("BatchSandbox", &name, s.message()))?;
        combine(&mut patch, ttl);
    }
    if let Some(pool) = &batch.spec.pool_ref {
        // the pool's template is the pod's (before the runtime injection)
        let template = ctx
            .api::<Pool>(ns)
            .get_opt(pool)
            .await?
            .and_then(|p| p.spec.pod_template())
            .ok_or_else(|| Error::NotFound {
                kind: "Pool",
                name: pool.clone(),
            })?;
        let detach = json!({"spec": {"template": template, "poolRef": null}});
        combine(&mut patch, detach);
    }
    let after = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let pod_api: Api<Pod> = ctx.api(ns);
    for p in &mine {
        super::release_pod(ctx, &pod_api, p).await?;
    }
    let conds = with_condition(
        &without(conditions(batch), PAUSE_FAILED),
        PAUSED,
        "True",
        "Paused",
        "Sandbox is paused",
        after.metadata.generation,
    );
    let mut body = json!({"phase": BatchSandboxPhase::Paused, "replicas": 0, "allocated": 0,
        "ready": 0, "conditions": conds});
    // the controller's own spec change is acknowledged while the pause stands
    if after.spec.pause == Some(true) {
        body["pauseObservedGeneration"] = json!(after.metadata.generation);
    }
    patch_status(&api, &name, body).await?;
    let msg = format!(
        "committed into SandboxSnapshot {snap_name}; {} pod(s) released",
        mine.len()
    );
    ctx.event(batch, false, PAUSED, msg).await;
    Ok(Action::requeue(ctx.settle))
}

/// Two merge patches as one: `from`'s members added to `into`'s, objects
/// combined member by member, nulls (removals) kept.
pub(super) fn combine(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(old) => combine(old, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

pub(super) fn conditions(batch: &BatchSandbox) -> &[Condition] {
    batch.status.as_ref().map_or(&[], |s| &s.conditions)
}

/// `old` without condition `type_` (upstream lists a condition only while
/// it is true).
pub fn without(old: &[Condition], type_: &str) -> Vec<Condition> {
    old.iter().filter(|c| c.type_ != type_).cloned().collect()
}

/// `old` with condition `type_` set; its transition time stays when its
/// status does not change.
pub fn with_condition(
    old: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| Time(now()), |c| c.last_transition_time.clone());
    let mut out = without(old, type_);
    out.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: generation,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(v: serde_json::Value) -> BatchSandbox {
        serde_json::from_value(v).expect("batch")
    }

    #[test]
    fn steps_follow_the_phase_then_the_intent_of_a_new_generation() {
        let b = |pause: serde_json::Value, generation: i64, acked: i64, phase: &str| {
            batch(
                json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b", "generation": generation},
                "spec": {"replicas": 1, "pause": pause},
                "status": {"replicas": 0, "allocated": 0, "ready": 0, "phase": phase,
                    "pauseObservedGeneration": acked}}),
            )
        };
        assert_eq!(step(&b(json!(true), 2, 1, "Succeed")), Step::Pause);
        assert_eq!(step(&b(json!(true), 2, 2, "Pausing")), Step::SyncPause);
        // a pause that failed at this generation is not retried until the spec changes
        assert_eq!(step(&b(json!(true), 2, 2, "Succeed")), Step::None);
        assert_eq!(step(&b(json!(true), 3, 2, "Paused")), Step::Hold);
        assert_eq!(step(&b(json!(false), 3, 2, "Paused")), Step::Resume);
        assert_eq!(
            step(&b(json!(false), 3, 3, "Resuming")),
            Step::ContinueResume
        );
        // a resume already under way goes on whatever the spec says now
        assert_eq!(
            step(&b(json!(true), 4, 3, "Resuming")),
            Step::ContinueResume
        );
        assert_eq!(step(&b(json!(false), 3, 3, "Paused")), Step::Hold);
        assert_eq!(step(&b(json!(null), 3, 1, "Succeed")), Step::None);
        // unset: no intent; a paused batch stays paused
        assert_eq!(step(&b(json!(null), 4, 3, "Paused")), Step::Hold);
        // a resume of a batch that is not paused: nothing to do
        assert_eq!(step(&b(json!(false), 3, 1, "Succeed")), Step::None);
    }

    #[test]
    fn combined_patches_keep_their_removals() {
        let mut p = json!({"metadata": {"annotations": {"a": "[]"}}});
        combine(
            &mut p,
            json!({"metadata": {"annotations": {"b": null}}, "spec": {"expireTime": null}}),
        );
        assert_eq!(
            p,
            json!({"metadata": {"annotations": {"a": "[]", "b": null}}, "spec": {"expireTime": null}})
        );
    }

    #[test]
    fn the_pause_snapshot_is_named_as_upstreams() {
        assert_eq!(internal_snapshot_name("osb-1"), "osb-1-pause");
    }
}
