//! OpenSandbox `SandboxSnapshot`: the root file systems of a BatchSandbox's
//! pod committed into images, with upstream's phases and status.
//!
//! * An observed generation is acknowledged first (`Pending`).
//! * `Pending`: the BatchSandbox `spec.sandboxName` (same namespace) is
//!   read and its running pod found (the lowest shard among the pods
//!   allocated to it); the snapshot records `sourcePodName`,
//!   `sourceNodeName` and one `containers[]` entry per container of the
//!   batch's template (else of the pod), each with the image it is
//!   committed into, and goes to `Committing`.
//! * `Committing`: the node agent of the pod's node (the chart's DaemonSet,
//!   reached as pause is) commits each container's root file system into
//!   that image in the node's containerd `k8s.io` namespace (pausing the
//!   pod meanwhile) and answers the manifest digests and content sizes:
//!   `Succeed`, with `imageDigest` set and `Ready=True`; the images' total
//!   size goes in annotation [`SIZE_ANNOTATION`] (upstream's CRD has no
//!   size field), written before the phase. Upstream runs a commit Job with
//!   `nerdctl` on the node instead; sandpool's node agent is already there.
//!   A controller restarted mid-commit commits again (the image is
//!   replaced).
//! * `Failed` (with a `Failed=True` condition naming why): the sandbox or
//!   its running pod is missing, the commit failed (e.g. a gVisor pod, whose
//!   writes are not in containerd's snapshot), or the node has no agent.
//! * `Succeed` and `Failed` are final: nothing is done again.
//!
//! Images are named as upstream names them, `<repository>/<batch>-<container>:<tag>`
//! with tag `snap-gen<batch generation>` for a snapshot a BatchSandbox
//! controls and `snap-<hash of the snapshot's name>` otherwise. Where they
//! go is [`crate::snapshot_registry`]'s: by default they are not pushed
//! (the repository is [`SNAPSHOT_REPOSITORY`] and the image stays on the
//! source node, so a pod started from it must run there); with
//! `--snapshot-registry` the repository is that registry and the node agent
//! pushes each image after the commit (`imageDigest` is then the pushed
//! manifest's; a push that fails fails the snapshot, `CommitFailed`; a bad
//! push secret, `PushSecretInvalid`). Deleting a snapshot leaves its images
//! where they are (docs/compatibility.md).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sandpool_proto::v1 as pb;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::context::{Context, namespace_of, now, patch_status};
use crate::crd::{
    ALLOCATED_TO_LABEL, BatchSandbox, ContainerSnapshot, SHARD_ANNOTATION, SandboxSnapshot,
    SandboxSnapshotCondition, SandboxSnapshotPhase as Phase, SnapshotConditionStatus,
    SnapshotConditionType,
};
use crate::error::{Result, is_not_found};
use crate::pods;

pub use crate::snapshot_registry::SNAPSHOT_REPOSITORY;

/// On a committed snapshot: the total content size in bytes of its images
/// (manifests, configs and layers, as the node agent reports them).
pub const SIZE_ANNOTATION: &str = "sandpool.io/size-bytes";

/// The conditions of `phase` as upstream keeps them: only a condition that
/// is `True` is listed (`Ready` once succeeded, `Failed` with its reason);
/// a listed one keeps its transition time while it stays.
pub fn conditions_for(
    phase: Phase,
    old: &[SandboxSnapshotCondition],
    failure: Option<(&str, &str)>,
    at: Time,
) -> Vec<SandboxSnapshotCondition> {
    let (type_, reason, message) = match (phase, failure) {
        (Phase::Succeed, _) => (
            SnapshotConditionType::Ready,
            "SnapshotReady",
            "Snapshot is ready",
        ),
        (Phase::Failed, Some((r, m))) => (SnapshotConditionType::Failed, r, m),
        (Phase::Failed, None) => (SnapshotConditionType::Failed, "Failed", "Snapshot failed"),
        _ => return Vec::new(),
    };
    let kept = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == SnapshotConditionStatus::True)
        .and_then(|c| c.last_transition_time.clone());
    vec![SandboxSnapshotCondition {
        type_,
        status: SnapshotConditionStatus::True,
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(kept.unwrap_or(at)),
    }]
}

/// The tag of the snapshot's images: `snap-gen<generation>` when a
/// BatchSandbox controls the snapshot, else `snap-` and 32 hex digits (the
/// name's own when it is `osb-snap-<32 hex>`, else of its SHA-256).
pub fn image_tag(snap: &SandboxSnapshot, batch_generation: i64) -> String {
    let controlled = snap
        .owner_references()
        .iter()
        .any(|o| o.kind == "BatchSandbox" && o.controller == Some(true));
    if controlled {
        return format!("snap-gen{batch_generation}");
    }
    let name = snap.name_any();
    if let Some(hex) = name.strip_prefix("osb-snap-")
        && hex.len() == 32
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return format!("snap-{hex}");
    }
    let sum = hex(&Sha256::digest(name.as_bytes()));
    format!("snap-{}", &sum[..32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image container `container` of `batch` is committed into, under
/// `repository` ([`SNAPSHOT_REPOSITORY`] or the snapshot registry).
pub fn image_uri(repository: &str, batch: &str, container: &str, tag: &str) -> String {
    format!("{repository}/{batch}-{container}:{tag}")
}

/// The batch's running pod to commit: the lowest shard of those allocated
/// to it that run and are not being deleted.
pub fn source_pod(mut pods: Vec<Pod>) -> Option<Pod> {
    pods.retain(|p| pods::phase(p) == "Running" && !pods::is_terminating(p));
    pods.into_iter().min_by_key(|p| {
        pods::annotation(p, SHARD_ANNOTATION)
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    })
}

/// Why a snapshot fails before its commit: (reason, message).
type Refusal = (&'static str, String);

/// The batch's pod to commit and the snapshot's containers (their images
/// named), or why there is none.
async fn resolve(
    snap: &SandboxSnapshot,
    ctx: &Context,
    ns: &str,
) -> Result<std::result::Result<(Pod, Vec<ContainerSnapshot>), Refusal>> {
    let batches: Api<BatchSandbox> = ctx.api(ns);
    let bname = &snap.spec.sandbox_name;
    let batch = match batches.get(bname).await {
        Ok(b) => b,
        Err(e) if is_not_found(&e) => {
            let msg = format!("failed to get BatchSandbox {bname}: it does not exist in {ns}");
            return Ok(Err(("BatchSandboxLookupFailed", msg)));
        }
        Err(e) => return Err(e.into()),
    };
    let uid = batch.uid().unwrap_or_default();
    let mine =
        crate::context::list_pods(&ctx.api(ns), &format!("{ALLOCATED_TO_LABEL}={uid}")).await?;
    let Some(pod) = source_pod(mine) else {
        let msg = format!("source pod not found: no running pod found for BatchSandbox {bname}");
        return Ok(Err(("SourcePodNotFound", msg)));
    };
    let tag = image_tag(snap, batch.meta().generation.unwrap_or(0));
    let names: Vec<String> = match batch.spec.pod_template().and_then(|t| t.spec) {
        Some(s) => s.containers.into_iter().map(|c| c.name).collect(),
        None => pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default(),
    };
    if names.is_empty() {
        let msg = format!("no containers found in BatchSandbox {bname} template");
        return Ok(Err(("NoContainers", msg)));
    }
    let containers = names
        .iter()
        .map(|c| ContainerSnapshot {
            container_name: c.clone(),
            image_uri: image_uri(ctx.snapshots.repository(), bname, c, &tag),
            image_digest: None,
        })
        .collect();
    Ok(Ok((pod, containers)))
}

pub async fn reconcile(snap: Arc<SandboxSnapshot>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace_of(snap.as_ref())?;
    let api: Api<SandboxSnapshot> = ctx.api(&ns);
    let name = snap.name_any();
    let status = snap.status.clone().unwrap_or_default();
    if matches!(status.phase, Some(Phase::Succeed | Phase::Failed)) {
        return Ok(Action::await_change());
    }
    let generation = snap.meta().generation;
    if status.observed_generation != generation || status.phase.is_none() {
        let ack = json!({"observedGeneration": generation, "phase": status.phase.unwrap_or(Phase::Pending)});
        patch_status(&api, &name, ack).await?;
    }
    let fail = async |reason: &str, message: String| -> Result<Action> {
        let conditions = conditions_for(
            Phase::Failed,
            &status.conditions,
            Some((reason, &message)),
            Time(now()),
        );
        let body = json!({"phase": Phase::Failed, "conditions": conditions});
        patch_status(&api, &name, body).await?;
        ctx.event(snap.as_ref(), true, reason, message).await;
        Ok(Action::await_change())
    };
    let (pod, mut containers) = match resolve(&snap, &ctx, &ns).await? {
        Ok(found) => found,
        Err((reason, message)) => return fail(reason, message).await,
    };
    let node = pods::node_name(&pod).to_string();
    let committing = json!({
        "phase": Phase::Committing,
        "sourcePodName": pod.name_any(),
        "sourceNodeName": node,
        "containers": containers,
        "conditions": [],
    });
    patch_status(&api, &name, committing).await?;
    let note = format!("committing pod {} on node {node}", pod.name_any());
    ctx.event(snap.as_ref(), false, "Committing", note).await;
    if node.is_empty() {
        let msg = format!("pod {} is not scheduled on a node", pod.name_any());
        return fail("CommitFailed", msg).await;
    }
    let (push, push_auth, push_insecure) =
        match crate::snapshot_registry::push_fields(&ctx.snapshots, &ctx, &ns).await? {
            Ok(Some((auth, insecure))) => (true, auth, insecure),
            Ok(None) => (false, None, false),
            Err((reason, message)) => return fail(reason, message).await,
        };
    let req = pb::CommitImagesRequest {
        push,
        push_auth,
        push_insecure,
        sandbox_id: format!("{ns}/{}", pod.name_any()),
        containers: containers
            .iter()
            .map(|c| pb::ContainerImage {
                container_name: c.container_name.clone(),
                image: c.image_uri.clone(),
                digest: String::new(),
                size_bytes: 0,
            })
            .collect(),
    };
    let done = match ctx.nodes.commit(&node, req).await {
        Ok(done) => done,
        Err(s) => return fail("CommitFailed", s.message().to_string()).await,
    };
    for c in &mut containers {
        c.image_digest = done
            .iter()
            .find(|d| d.container_name == c.container_name && !d.digest.is_empty())
            .map(|d| d.digest.clone());
    }
    let size: u64 = done.iter().map(|d| d.size_bytes).sum();
    let sized = json!({"metadata": {"annotations": {SIZE_ANNOTATION: size.to_string()}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(sized))
        .await?;
    let conditions = conditions_for(Phase::Succeed, &status.conditions, None, Time(now()));
    let body = json!({"phase": Phase::Succeed, "containers": containers, "conditions": conditions});
    patch_status(&api, &name, body).await?;
    let note = match &ctx.snapshots.registry {
        Some(r) => format!(
            "committed {} image(s) on node {node} and pushed them to {r}",
            containers.len()
        ),
        None => format!(
            "committed into {} image(s) on node {node}",
            containers.len()
        ),
    };
    ctx.event(snap.as_ref(), false, "Succeed", note).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SandboxSnapshotSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn snap(name: &str, owned: bool) -> SandboxSnapshot {
        let mut s = SandboxSnapshot::new(
            name,
            SandboxSnapshotSpec {
                sandbox_name: "b".into(),
            },
        );
        if owned {
            s.metadata.owner_references = Some(vec![OwnerReference {
                kind: "BatchSandbox".into(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        s
    }

    #[test]
    fn image_tags_follow_upstreams_names() {
        assert_eq!(image_tag(&snap("x", true), 7), "snap-gen7");
        let digits = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            image_tag(&snap(&format!("osb-snap-{digits}"), false), 1),
            format!("snap-{digits}")
        );
        let t = image_tag(&snap("my-snap", false), 1);
        let sum = hex(&Sha256::digest(b"my-snap"));
        assert_eq!(t, format!("snap-{}", &sum[..32]));
        assert_eq!(
            image_uri(SNAPSHOT_REPOSITORY, "b", "main", "snap-gen1"),
            "sandpool.local/snapshots/b-main:snap-gen1"
        );
    }

    #[test]
    fn only_true_conditions_are_listed() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        assert!(conditions_for(Phase::Pending, &[], None, t0.clone()).is_empty());
        assert!(conditions_for(Phase::Committing, &[], None, t0.clone()).is_empty());
        let ready = conditions_for(Phase::Succeed, &[], None, t0.clone());
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].type_, SnapshotConditionType::Ready);
        assert_eq!(ready[0].reason.as_deref(), Some("SnapshotReady"));
        let later = Time(now());
        let again = conditions_for(Phase::Succeed, &ready, None, later);
        assert_eq!(again[0].last_transition_time, Some(t0.clone()), "kept");
        let failed = conditions_for(Phase::Failed, &ready, Some(("R", "m")), t0);
        assert_eq!(failed.len(), 1, "Ready is gone: {failed:?}");
        assert_eq!(failed[0].type_, SnapshotConditionType::Failed);
        assert_eq!(
            (failed[0].reason.as_deref(), failed[0].message.as_deref()),
            (Some("R"), Some("m"))
        );
    }

    #[test]
    fn the_source_pod_is_the_lowest_running_shard() {
        let pod = |name: &str, shard: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": {SHARD_ANNOTATION: shard}},
                "status": {"phase": phase}
            }))
            .expect("pod")
        };
        let got = source_pod(vec![
            pod("p2", "2", "Running"),
            pod("p0", "0", "Pending"),
            pod("p1", "1", "Running"),
        ]);
        assert_eq!(got.map(|p| p.name_any()).as_deref(), Some("p1"));
        assert!(source_pod(vec![pod("p0", "0", "Pending")]).is_none());
    }
}
