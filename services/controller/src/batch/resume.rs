//! The resume half of OpenSandbox `spec.pause` (see [`super::pause`]):
//!
//! * `spec.pause: false` at a new generation of a `Paused` batch: the
//!   acknowledgement with phase `Resuming` (`ResumeFailed` cleared).
//! * `Resuming`: the pause snapshot `<batch>-pause` must have `Succeed`
//!   (else back to `Paused` with `ResumeFailed=True`, `SnapshotNotFound` or
//!   `SnapshotNotReady`; when the snapshot is gone but a pod is Ready the
//!   resume is complete). Each container of `spec.template` named in the
//!   snapshot gets the snapshot's image, as upstream; as the images stay on
//!   the node that committed them (nothing is pushed), the template is also
//!   pinned to that node (`nodeName`) with `imagePullPolicy: IfNotPresent`.
//!   `spec.poolRef` is cleared and the TTL clock restarts. The normal
//!   reconcile then makes the pod from the template.
//! * While `Resuming` the phase follows the pod as upstream's: a stuck
//!   container (image pull, crash loop, config) fails the resume
//!   (`ResumeFailed=True` and `PodFailed=True`, phase `Failed`); a Ready pod
//!   ends it (`Succeed`) and the pause snapshot is deleted.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use sandpool_core::claim::ClaimEvent;
use serde_json::json;

use super::pause::{
    PAUSED, POD_FAILED, RESUME_FAILED, ack, conditions, internal_snapshot_name, live_pods,
    with_condition, without,
};
use crate::context::{Context, delete_ignoring_missing};
use crate::crd::{
    BatchSandbox, BatchSandboxPhase, SandboxSnapshot, SandboxSnapshotPhase, SandboxSnapshotStatus,
};
use crate::error::{Error, Result};
use crate::kube_scheduler::PAUSED_ANNOTATION;
use crate::pods;
use crate::snapshot_registry::is_node_local;

/// Acknowledge the resume.
pub(super) async fn handle_resume(
    batch: &BatchSandbox,
    ctx: &Context,
    _ns: &str,
) -> Result<Action> {
    let conds = without(&without(conditions(batch), RESUME_FAILED), PAUSED);
    ack(ctx, batch, BatchSandboxPhase::Resuming, &conds).await?;
    ctx.event(
        batch,
        false,
        "Resuming",
        "resuming from the pause snapshot".into(),
    )
    .await;
    Ok(Action::requeue(std::time::Duration::from_secs(1)))
}

/// `template` resumed from `snap`: the snapshot's images; node-local ones
/// ([`is_node_local`]: not pushed) pinned to the committing node with
/// `imagePullPolicy: IfNotPresent`, pushed ones pulled from their registry
/// on any node.
pub fn resumed_template(
    template: &PodTemplateSpec,
    snap: &SandboxSnapshotStatus,
) -> PodTemplateSpec {
    let mut t = template.clone();
    let spec = t.spec.get_or_insert_with(Default::default);
    let mut local = false;
    for c in &mut spec.containers {
        if let Some(s) = snap.containers.iter().find(|s| s.container_name == c.name) {
            c.image = Some(s.image_uri.clone());
            if is_node_local(&s.image_uri) {
                c.image_pull_policy = Some("IfNotPresent".into());
                local = true;
            }
        }
    }
    if let Some(node) = snap.source_node_name.as_ref().filter(|n| !n.is_empty())
        && local
    {
        spec.node_name = Some(node.clone());
    }
    t
}

/// `Resuming` (see the module doc); `None` when the normal reconcile
/// makes the pod now.
pub(super) async fn continue_resume(
    batch: &BatchSandbox,
    ctx: &Context,
    ns: &str,
) -> Result<Option<Action>> {
    let name = batch.name_any();
    let snap = ctx
        .api::<SandboxSnapshot>(ns)
        .get_opt(&internal_snapshot_name(&name))
        .await?;
    let Some(snap) = snap else {
        let mine = live_pods(batch, ctx, ns).await?;
        if mine.iter().any(pods::is_ready) {
            let conds = without(&without(conditions(batch), RESUME_FAILED), POD_FAILED);
            ack(ctx, batch, BatchSandboxPhase::Succeed, &conds).await?;
            return Ok(Some(Action::requeue(ctx.settle)));
        }
        let msg = "SandboxSnapshot not found";
        return rollback(batch, ctx, "SnapshotNotFound", msg.into()).await;
    };
    let status = snap.status.unwrap_or_default();
    if status.phase != Some(SandboxSnapshotPhase::Succeed) {
        let phase = status.phase.map_or_else(String::new, |p| format!("{p:?}"));
        let msg = format!("snapshot not ready: phase={phase}");
        return rollback(batch, ctx, "SnapshotNotReady", msg).await;
    }
    let Some(template) = batch.spec.pod_template() else {
        let msg = "the batch has no spec.template to resume into".to_string();
        return rollback(batch, ctx, "NoTemplate", msg).await;
    };
    let resumed = resumed_template(&template, &status);
    let paused_ttl = batch.annotations().contains_key(PAUSED_ANNOTATION);
    if batch.spec.template.as_ref() == Some(&resumed)
        && batch.spec.pool_ref.is_none()
        && !paused_ttl
    {
        return Ok(None);
    }
    let mut patch = json!({"spec": {"template": resumed, "poolRef": null}});
    if paused_ttl {
        let ttl = crate::kube_scheduler::ttl_patch(batch, ClaimEvent::Resume)
            .map_err(|s| Error::invalid("BatchSandbox", &name, s.message()))?;
        super::pause::combine(&mut patch, ttl);
    }
    ctx.api::<BatchSandbox>(ns)
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    // the next round (the spec change wakes it) makes the pod from it
    Ok(Some(Action::requeue(std::time::Duration::from_millis(200))))
}

/// The resume cannot go on: back to `Paused`, `ResumeFailed=True`.
async fn rollback(
    batch: &BatchSandbox,
    ctx: &Context,
    reason: &str,
    msg: String,
) -> Result<Option<Action>> {
    let generation = batch.metadata.generation;
    let conds = with_condition(
        conditions(batch),
        RESUME_FAILED,
        "True",
        reason,
        &msg,
        generation,
    );
    let conds = with_condition(
        &conds,
        PAUSED,
        "True",
        "Paused",
        "Sandbox is paused",
        generation,
    );
    ack(ctx, batch, BatchSandboxPhase::Paused, &conds).await?;
    ctx.event(batch, true, RESUME_FAILED, format!("resume failed: {msg}"))
        .await;
    Ok(Some(Action::requeue(ctx.settle)))
}

/// Why a pod will not come up by itself (upstream's waiting reasons, or
/// the pod ended `Failed`).
fn failure_reason(pod: &Pod) -> Option<String> {
    if !super::phase::pod_failed(pod) {
        return None;
    }
    let st = pod.status.as_ref()?;
    st.container_statuses
        .iter()
        .chain(st.init_container_statuses.iter())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .find(|r| super::phase::STUCK.contains(&r.as_str()))
        .or_else(|| Some("Failed".into()))
}

/// The phase and conditions of a `Resuming` batch whose pods are `mine`
/// (upstream's): a failed pod fails the resume, a Ready one ends it.
pub fn resuming_phase(
    mine: &[Pod],
    ready: i32,
    old: &[Condition],
    generation: Option<i64>,
) -> (BatchSandboxPhase, Vec<Condition>) {
    let failed: Vec<(String, String)> = mine
        .iter()
        .filter_map(|p| failure_reason(p).map(|r| (r, p.name_any())))
        .collect();
    if let Some((reason, _)) = primary(&failed) {
        let sample = failed
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, p)| p.clone())
            .unwrap_or_default();
        let say = |scope: &str| {
            format!(
                "{}/{} {scope}; primary reason={reason}; sample pod={sample}",
                failed.len(),
                mine.len()
            )
        };
        let during = say("observed pods failed during resume");
        let conds = with_condition(old, RESUME_FAILED, "True", &reason, &during, generation);
        let conds = with_condition(
            &conds,
            POD_FAILED,
            "True",
            &reason,
            &say("observed pods failed"),
            generation,
        );
        return (BatchSandboxPhase::Failed, conds);
    }
    if ready > 0 {
        return (BatchSandboxPhase::Succeed, without(old, POD_FAILED));
    }
    (BatchSandboxPhase::Resuming, old.to_vec())
}

/// The most frequent reason (the first seen among equals).
fn primary(failed: &[(String, String)]) -> Option<(String, usize)> {
    let mut best: Option<(String, usize)> = None;
    for (r, _) in failed {
        let n = failed.iter().filter(|(x, _)| x == r).count();
        if best.as_ref().is_none_or(|(_, m)| n > *m) {
            best = Some((r.clone(), n));
        }
    }
    best
}

/// A `Resuming` batch reached `Succeed`: its pause snapshot goes, with a
/// `Resumed` event.
pub(super) async fn finish(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<()> {
    delete_pause_snapshot(batch, ctx, ns).await?;
    ctx.event(
        batch,
        false,
        "Resumed",
        "resumed from the pause snapshot".into(),
    )
    .await;
    Ok(())
}

/// A resume ended: the pause snapshot (its images stay on the node) goes.
async fn delete_pause_snapshot(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<()> {
    let api: Api<SandboxSnapshot> = ctx.api(ns);
    let name = internal_snapshot_name(&batch.name_any());
    let done = api
        .get_opt(&name)
        .await?
        .and_then(|s| s.status)
        .and_then(|s| s.phase)
        == Some(SandboxSnapshotPhase::Succeed);
    if done {
        delete_ignoring_missing(&api, &name).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ContainerSnapshot;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status})).expect("pod")
    }

    fn waiting(reason: &str) -> serde_json::Value {
        json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason}}}]})
    }

    #[test]
    fn the_template_gets_the_snapshots_images_on_its_node() {
        let t: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "main", "image": "busybox", "imagePullPolicy": "Always"},
            {"name": "side", "image": "nginx"}]}}))
        .expect("template");
        let snap = SandboxSnapshotStatus {
            source_node_name: Some("node-a".into()),
            containers: vec![ContainerSnapshot {
                container_name: "main".into(),
                image_uri: "sandpool.local/snapshots/b-main:snap-gen2".into(),
                image_digest: None,
            }],
            ..Default::default()
        };
        let r = resumed_template(&t, &snap);
        let spec = r.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        let main = &spec.containers[0];
        assert_eq!(
            main.image.as_deref(),
            Some("sandpool.local/snapshots/b-main:snap-gen2")
        );
        assert_eq!(main.image_pull_policy.as_deref(), Some("IfNotPresent"));
        // a container the snapshot does not name keeps its image
        assert_eq!(spec.containers[1].image.as_deref(), Some("nginx"));
        assert_eq!(spec.containers[1].image_pull_policy, None);
    }

    #[test]
    fn pushed_snapshot_images_are_not_pinned_to_a_node() {
        let t: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "main", "image": "busybox", "imagePullPolicy": "Always"}]}}))
        .expect("template");
        let snap = SandboxSnapshotStatus {
            source_node_name: Some("node-a".into()),
            containers: vec![ContainerSnapshot {
                container_name: "main".into(),
                image_uri: "reg.io:5000/snaps/b-main:snap-gen2".into(),
                image_digest: Some("sha256:ab".into()),
            }],
            ..Default::default()
        };
        let spec = resumed_template(&t, &snap).spec.expect("spec");
        assert_eq!(spec.node_name, None, "any node pulls it");
        let main = &spec.containers[0];
        assert_eq!(
            main.image.as_deref(),
            Some("reg.io:5000/snaps/b-main:snap-gen2")
        );
        assert_eq!(main.image_pull_policy.as_deref(), Some("Always"), "kept");
    }

    #[test]
    fn a_resuming_batch_follows_its_pod() {
        let (phase, conds) = resuming_phase(&[], 0, &[], Some(3));
        assert_eq!(phase, BatchSandboxPhase::Resuming);
        assert!(conds.is_empty());
        let pulling = pod("b-0", waiting("ErrImagePull"));
        let (phase, conds) = resuming_phase(&[pulling], 0, &[], Some(3));
        assert_eq!(phase, BatchSandboxPhase::Failed);
        let types: Vec<&str> = conds.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [RESUME_FAILED, POD_FAILED]);
        assert_eq!(conds[0].reason, "ErrImagePull");
        assert_eq!(
            conds[0].message,
            "1/1 observed pods failed during resume; primary reason=ErrImagePull; sample pod=b-0"
        );
        assert_eq!(
            conds[1].message,
            "1/1 observed pods failed; primary reason=ErrImagePull; sample pod=b-0"
        );
        let ready = pod("b-0", json!({"phase": "Running"}));
        let (phase, conds) = resuming_phase(&[ready], 1, &conds[1..], Some(3));
        assert_eq!(phase, BatchSandboxPhase::Succeed);
        assert!(conds.is_empty(), "PodFailed goes: {conds:?}");
    }
}
