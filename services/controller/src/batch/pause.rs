//! OpenSandbox `spec.pause` in Kubernetes mode: every pod of the batch is
//! frozen (thawed) in place by the node agent of its node
//! ([`crate::node_agents`]), the same path as a claim's pause.
//!
//! As upstream, `status.pauseObservedGeneration` is the generation whose
//! `spec.pause` was last acknowledged: a pause (resume) is acted on once per
//! generation. The acknowledgement is written first with phase `Pausing`
//! (`Resuming`); success ends in `Paused` (`Succeed`, or what the pods
//! say), a node agent failure in a `PauseFailed` (`ResumeFailed`) condition
//! and a Warning event naming why, with the phase put back. While paused the
//! TTL clock stops as for a paused claim: `expireTime` is set aside in
//! [`crate::kube_scheduler::PAUSED_ANNOTATION`] and put back, with what was left, on resume.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use sandpool_core::claim::ClaimEvent;
use serde_json::json;

use crate::context::{Context, list_pods, now, patch_status};
use crate::crd::{ALLOCATED_TO_LABEL, BatchSandbox, BatchSandboxPhase};
use crate::error::{Error, Result};
use crate::node_agents::set_pod_paused;
use crate::pods;

/// Upstream's condition types.
pub const PAUSED: &str = "Paused";
pub const PAUSE_FAILED: &str = "PauseFailed";
pub const RESUME_FAILED: &str = "ResumeFailed";

/// How often a paused batch is looked at again.
const PAUSED_RECHECK: Duration = Duration::from_secs(300);

/// What `spec.pause` asks of the batch now.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the normal reconcile runs.
    None,
    /// Freeze the pods.
    Pause,
    /// Thaw the pods.
    Resume,
    /// Stay paused (no pod or task work), acknowledging a newer generation.
    Hold,
}

/// The step for `batch` (see the module doc). An interrupted `Pausing`
/// is undone (`Resuming` finished) unless the pause still stands; a pause
/// (resume) that failed at this generation is not retried until the spec
/// changes; `pause` unset is no intent.
pub fn step(batch: &BatchSandbox) -> Step {
    let st = batch.status.as_ref();
    let phase = st.and_then(|s| s.phase);
    let generation = batch.metadata.generation.unwrap_or(0);
    let acked = st.and_then(|s| s.pause_observed_generation).unwrap_or(0);
    let new_intent = generation > acked;
    let paused = phase == Some(BatchSandboxPhase::Paused);
    if batch.spec.pause == Some(true) {
        if phase == Some(BatchSandboxPhase::Pausing) || (new_intent && !paused) {
            return Step::Pause;
        }
        return if paused { Step::Hold } else { Step::None };
    }
    // unset is no intent, as upstream: a paused batch stays paused (the
    // upstream server's retry goes unset -> false)
    let resume = batch.spec.pause == Some(false);
    match phase {
        Some(BatchSandboxPhase::Resuming | BatchSandboxPhase::Pausing) => Step::Resume,
        Some(BatchSandboxPhase::Paused) if new_intent && resume => Step::Resume,
        Some(BatchSandboxPhase::Paused) => Step::Hold,
        _ => Step::None,
    }
}

/// Act on `spec.pause`; `Some` when the normal reconcile must not run now.
pub async fn reconcile(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<Option<Action>> {
    let step = step(batch);
    if step == Step::None {
        return Ok(None);
    }
    let api: Api<BatchSandbox> = ctx.api(ns);
    let name = batch.name_any();
    let generation = batch.metadata.generation;
    if step == Step::Hold {
        let acked = batch
            .status
            .as_ref()
            .and_then(|s| s.pause_observed_generation);
        if acked < generation {
            patch_status(&api, &name, json!({"pauseObservedGeneration": generation})).await?;
        }
        return Ok(Some(Action::requeue(PAUSED_RECHECK)));
    }
    let pause = step == Step::Pause;
    let (moving, done) = if pause {
        (BatchSandboxPhase::Pausing, "paused")
    } else {
        (BatchSandboxPhase::Resuming, "resumed")
    };
    // the acknowledgement first, as upstream: this generation is being acted on
    patch_status(
        &api,
        &name,
        json!({"phase": moving, "pauseObservedGeneration": generation}),
    )
    .await?;
    let uid = batch.uid().unwrap_or_default();
    let pod_api: Api<Pod> = ctx.api(ns);
    let mine: Vec<Pod> = list_pods(&pod_api, &format!("{ALLOCATED_TO_LABEL}={uid}"))
        .await?
        .into_iter()
        .filter(|p| !pods::is_terminating(p))
        .collect();
    if let Err(why) = set_all(ctx, &mine, pause).await {
        report_failure(ctx, batch, &api, &mine, pause, why).await?;
        return Ok(Some(Action::requeue(ctx.settle)));
    }
    let event = if pause {
        ClaimEvent::Pause
    } else {
        ClaimEvent::Resume
    };
    let ttl = crate::kube_scheduler::ttl_patch(batch, event)
        .map_err(|s| Error::invalid("BatchSandbox", &name, s.message()))?;
    let after = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(ttl))
        .await?;
    let phase = if pause {
        BatchSandboxPhase::Paused
    } else {
        let ready = mine.iter().filter(|p| pods::is_ready(p)).count() as i32;
        super::phase::phase(&mine, ready)
    };
    let old = conditions(batch);
    let failed = if pause { PAUSE_FAILED } else { RESUME_FAILED };
    let mut conds: Vec<Condition> = old.iter().filter(|c| c.type_ != failed).cloned().collect();
    let (status, reason) = if pause {
        ("True", "Paused")
    } else {
        ("False", "Resumed")
    };
    let msg = format!("{} sandboxes {done} by their node agents", mine.len());
    conds = with_condition(&conds, PAUSED, status, reason, &msg, generation);
    // the TTL patch is a spec change (a new generation): acknowledged with
    // the pause, as upstream acknowledges its own spec change of a pause (a
    // pooled batch's template), unless `spec.pause` changed meanwhile: that
    // request stays pending
    let acked = if after.spec.pause == batch.spec.pause {
        after.metadata.generation
    } else {
        generation
    };
    patch_status(
        &api,
        &name,
        json!({"phase": phase, "pauseObservedGeneration": acked, "conditions": conds}),
    )
    .await?;
    ctx.event(batch, false, reason, msg).await;
    Ok(Some(Action::requeue(ctx.settle)))
}

/// A batch being deleted while (being) paused: its pods are thawed first
/// (best effort, failures logged), so that stopping their tasks does not
/// wait on a frozen runtime and a frozen cgroup does not hold the pod's end.
pub async fn thaw_before_deletion(ctx: &Context, batch: &BatchSandbox, mine: &[Pod]) {
    let phase = batch.status.as_ref().and_then(|s| s.phase);
    if !matches!(
        phase,
        Some(BatchSandboxPhase::Pausing | BatchSandboxPhase::Paused | BatchSandboxPhase::Resuming)
    ) {
        return;
    }
    for p in mine {
        if let Err(e) = set_pod_paused(ctx.nodes.as_ref(), p, false).await {
            tracing::warn!(pod = %p.name_any(), error = %e, "thawing a paused pod before its deletion failed");
        }
    }
}

/// Pause (resume) every pod; on the first failure the pods already paused
/// are resumed again (best effort) and the failure is returned, naming the pod.
async fn set_all(ctx: &Context, mine: &[Pod], pause: bool) -> std::result::Result<(), String> {
    if pause && mine.is_empty() {
        return Err("the batch has no sandboxes to pause".into());
    }
    for (i, p) in mine.iter().enumerate() {
        if let Err(s) = set_pod_paused(ctx.nodes.as_ref(), p, pause).await {
            if pause {
                for done in &mine[..i] {
                    if let Err(e) = set_pod_paused(ctx.nodes.as_ref(), done, false).await {
                        tracing::warn!(pod = %done.name_any(), error = %e, "undoing a partial pause failed");
                    }
                }
            }
            return Err(format!("pod {}: {}", p.name_any(), s.message()));
        }
    }
    Ok(())
}

/// A node agent refused: the phase goes back, a `PauseFailed`
/// (`ResumeFailed`) condition and a Warning event say why.
async fn report_failure(
    ctx: &Context,
    batch: &BatchSandbox,
    api: &Api<BatchSandbox>,
    mine: &[Pod],
    pause: bool,
    why: String,
) -> Result<()> {
    let (kind, verb) = if pause {
        (PAUSE_FAILED, "pause")
    } else {
        (RESUME_FAILED, "resume")
    };
    let msg = format!("{verb} failed: {why}");
    let phase = if pause {
        let ready = mine.iter().filter(|p| pods::is_ready(p)).count() as i32;
        super::phase::phase(mine, ready)
    } else {
        BatchSandboxPhase::Paused
    };
    let conds = with_condition(
        conditions(batch),
        kind,
        "True",
        "NodeAgentFailed",
        &msg,
        batch.metadata.generation,
    );
    patch_status(
        api,
        &batch.name_any(),
        json!({"phase": phase, "conditions": conds}),
    )
    .await?;
    ctx.event(batch, true, kind, msg).await;
    Ok(())
}

fn conditions(batch: &BatchSandbox) -> &[Condition] {
    batch.status.as_ref().map_or(&[], |s| &s.conditions)
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
    let mut out: Vec<Condition> = old.iter().filter(|c| c.type_ != type_).cloned().collect();
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
    fn steps_follow_the_intent_and_the_acknowledged_generation() {
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
        assert_eq!(step(&b(json!(true), 2, 2, "Pausing")), Step::Pause);
        // failed at this generation: not retried until the spec changes
        assert_eq!(step(&b(json!(true), 2, 2, "Succeed")), Step::None);
        assert_eq!(step(&b(json!(true), 3, 2, "Paused")), Step::Hold);
        assert_eq!(step(&b(json!(false), 3, 2, "Paused")), Step::Resume);
        assert_eq!(step(&b(json!(false), 3, 3, "Resuming")), Step::Resume);
        assert_eq!(step(&b(json!(false), 3, 3, "Paused")), Step::Hold);
        assert_eq!(step(&b(json!(null), 3, 1, "Succeed")), Step::None);
        // unset: no intent; a paused batch stays paused
        assert_eq!(step(&b(json!(null), 4, 3, "Paused")), Step::Hold);
        assert_eq!(step(&b(json!(false), 3, 1, "Succeed")), Step::None);
    }
}
