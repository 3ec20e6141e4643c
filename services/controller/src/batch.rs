//! BatchSandbox controller: allocates warm pods of a Pool (or creates pods
//! from a template), runs the per-shard tasks, publishes endpoints and status,
//! expires, and on deletion stops the tasks and deletes its pods (a used pod
//! never returns to a pool).
//!
//! Allocation is optimistic: a pod is taken with a merge patch carrying the
//! `resourceVersion` it was seen at, so when two controllers (or two
//! reconciles) race for the same pod exactly one wins and the other gets 409
//! Conflict and tries the next pod.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use serde_json::{Value, json};

use crate::context::{
    Context, delete_ignoring_missing, finalized, list_pods, now, patch_status, until,
};
use crate::crd::{
    ALLOCATED_TO_LABEL, BATCH_FINALIZER, BATCH_NAME_ANNOTATION, BatchSandbox, BatchSandboxStatus,
    ENDPOINTS_ANNOTATION, POOL_LABEL, Pool, SHARD_ANNOTATION, TASK_ANNOTATION, TENANT_LABEL,
    TaskTemplateSpec,
};
use crate::error::{Error, Result, is_already_exists, is_conflict, is_not_found};
use crate::pods::{self, controller_ref};

pub mod expire;
pub mod pause;
pub mod phase;
pub mod release;
pub mod resume;
pub mod secure_access;
pub mod shards;

/// How many times one reconcile re-lists the pool after losing races.
const ALLOCATION_ROUNDS: usize = 3;

pub async fn reconcile(batch: Arc<BatchSandbox>, ctx: Arc<Context>) -> Result<Action> {
    finalized(&ctx, BATCH_FINALIZER, batch, async |ev, ns| match ev {
        Finalizer::Apply(b) => apply(&b, &ctx, ns).await,
        Finalizer::Cleanup(b) => cleanup(&b, &ctx, ns).await,
    })
    .await
}

fn shard_of(pod: &Pod) -> Option<usize> {
    pods::annotation(pod, SHARD_ANNOTATION).and_then(|s| s.parse().ok())
}

/// The task of shard `i`: `taskTemplate` with `shardTaskPatches[i]` merged in.
pub fn shard_task(
    template: &TaskTemplateSpec,
    patches: &[Value],
    i: usize,
) -> Result<TaskTemplateSpec> {
    let mut t = serde_json::to_value(template)?;
    if let Some(p) = patches.get(i) {
        sandpool_core::batch::merge_patch(&mut t, p);
    }
    Ok(serde_json::from_value(t)?)
}

/// Upstream's `poolRef` that asks its controller to pick a pool (its
/// `poolassign` profiles); refused here, naming it.
pub const AUTO_ASSIGN: &str = "*";

/// Lowest shard indexes not in `used`.
pub fn free_shards(used: &BTreeSet<usize>, n: usize) -> Vec<usize> {
    (0..).filter(|i| !used.contains(i)).take(n).collect()
}

/// When the batch expires: its `expireTime`, or `ttlSecondsAfterFinished`
/// after its completion, whichever comes first; none while paused.
fn expiry(batch: &BatchSandbox) -> Option<k8s_openapi::jiff::Timestamp> {
    let phase = batch.status.as_ref().and_then(|s| s.phase);
    if phase == Some(crate::crd::BatchSandboxPhase::Paused) {
        return None; // a paused batch's TTL clock stops
    }
    let ttl_deadline = match (
        batch.spec.ttl_seconds_after_finished,
        batch
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref()),
    ) {
        (Some(ttl), Some(done)) => done
            .0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(ttl))
            .ok(),
        _ => None,
    };
    [batch.spec.expire_time.as_ref().map(|t| t.0), ttl_deadline]
        .into_iter()
        .flatten()
        .min()
}

async fn apply(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<Action> {
    let name = batch.name_any();
    let batches: Api<BatchSandbox> = ctx.api(ns);
    let deadline = expiry(batch);
    if let Some(d) = deadline
        && d <= now()
    {
        return expire::expire(batch, ctx, ns, d).await;
    }
    if batch.spec.pool_ref.as_deref() == Some(AUTO_ASSIGN) {
        refuse_auto_assign(batch, ctx).await;
        return Ok(Action::await_change());
    }
    if let Some(action) = pause::reconcile(batch, ctx, ns).await? {
        return Ok(action);
    }
    let pod_api: Api<Pod> = ctx.api(ns);
    let released = release::Released::of(batch)?;
    let (mine, exhausted) = scale(batch, ctx, &pod_api, ns, &released).await?;
    let mut task_states = run_tasks(batch, ctx, &pod_api, &mine, &released).await?;
    let mine = release::completed(batch, ctx, &pod_api, mine, &task_states).await?;
    let held: BTreeSet<usize> = mine.iter().filter_map(shard_of).collect();
    task_states.extend(released.gone_states(&held));
    let counts = sandpool_core::batch::count_tasks(task_states.iter().copied());
    publish_endpoints(batch, &batches, &mine).await?;
    let want = usize::try_from(batch.spec.replicas).unwrap_or(0);
    let ready = mine.iter().filter(|p| pods::is_ready(p)).count() as i32;
    let finished = batch.spec.task_template.is_some()
        && want > 0
        && counts.running == 0
        && counts.unknown == 0
        && (counts.succeeded + counts.failed) as usize == want;
    let old = batch.status.clone().unwrap_or_default();
    let resuming = old.phase == Some(crate::crd::BatchSandboxPhase::Resuming);
    let (phase, conditions) = if resuming {
        resume::resuming_phase(&mine, ready, &old.conditions, batch.metadata.generation)
    } else {
        (phase::phase(&mine, ready), old.conditions.clone())
    };
    if resuming && phase == crate::crd::BatchSandboxPhase::Succeed {
        resume::finish(batch, ctx, ns).await?;
    }
    let status = BatchSandboxStatus {
        observed_generation: batch.metadata.generation,
        replicas: mine.len() as i32,
        allocated: mine.len() as i32,
        ready,
        task_running: counts.running as i32,
        task_succeed: counts.succeeded as i32,
        task_failed: counts.failed as i32,
        task_unknown: counts.unknown as i32,
        task_pending: task_pending(batch, want, &counts),
        phase: Some(phase),
        // nothing pending for `spec.pause`: this generation is acknowledged
        // (while resuming, a newer one may carry a pause for after it)
        pause_observed_generation: if resuming {
            old.pause_observed_generation
        } else {
            batch.metadata.generation
        },
        completion_time: if finished {
            old.completion_time.clone().or_else(|| Some(Time(now())))
        } else {
            None
        },
        conditions,
    };
    if batch.status.as_ref() != Some(&status) {
        patch_status(&batches, &name, serde_json::to_value(&status)?).await?;
    }
    if let Some(msg) = phase::unsupported(&batch.spec) {
        crate::conditions::failed(ctx, batch, "UnsupportedField", msg).await;
    }
    let active = release::target(batch.spec.replicas, &released.shards(), &held);
    let settling = exhausted || ready < active as i32 || counts.running > 0 || counts.unknown > 0;
    let mut next = if settling {
        ctx.settle
    } else {
        Duration::from_secs(300)
    };
    if let Some(d) = deadline {
        next = next.min(until(d).max(Duration::from_millis(100)));
    }
    if let (Some(ttl), true, None) = (
        batch.spec.ttl_seconds_after_finished,
        finished,
        &old.completion_time,
    ) {
        next = next.min(
            Duration::from_secs(u64::try_from(ttl).unwrap_or(0)).max(Duration::from_millis(100)),
        );
    }
    Ok(Action::requeue(next))
}

/// `spec.poolRef: "*"` (upstream's pool auto-assignment) is refused, naming it.
async fn refuse_auto_assign(batch: &BatchSandbox, ctx: &Context) {
    let msg = format!(
        "spec.poolRef \"{AUTO_ASSIGN}\" (upstream's pool auto-assignment) is not supported by sandpool in Kubernetes mode; name the pool. No sandbox is allocated"
    );
    crate::conditions::failed(ctx, batch, "UnsupportedField", msg).await;
}

/// Tasks not started yet: shards without a task state.
fn task_pending(batch: &BatchSandbox, want: usize, c: &sandpool_core::batch::TaskCounts) -> i32 {
    if batch.spec.task_template.is_none() {
        return 0;
    }
    let seen = (c.running + c.succeeded + c.failed + c.unknown) as usize;
    want.saturating_sub(seen) as i32
}

/// Bring the batch's live pods to `replicas`: ended pods are replaced, the
/// highest shards go first on scale down, free shards are allocated on scale
/// up. Returns the pods in shard order and whether allocation fell short.
async fn scale(
    batch: &BatchSandbox,
    ctx: &Context,
    pod_api: &Api<Pod>,
    ns: &str,
    released: &release::Released,
) -> Result<(Vec<Pod>, bool)> {
    let name = batch.name_any();
    let uid = batch.uid().unwrap_or_default();
    let mut mine: Vec<Pod> = list_pods(pod_api, &format!("{ALLOCATED_TO_LABEL}={uid}"))
        .await?
        .into_iter()
        .filter(|p| !pods::is_terminating(p))
        .collect();
    // ended pods are replaced
    for p in mine.iter().filter(|p| pods::is_finished(p)) {
        delete_ignoring_missing(pod_api, &p.name_any()).await?;
    }
    mine.retain(|p| !pods::is_finished(p));
    // a pod allocated before the tenant label existed gets it (the claim's
    // egress NetworkPolicy selects its pod by it)
    for p in mine
        .iter()
        .filter(|p| crate::tenant_egress::tenant_of(p).is_none())
    {
        crate::tenant_egress::label(pod_api, p, &uid).await?;
    }
    let gone = released.shards();
    let mut mine = release::release_pooled(batch, ctx, pod_api, mine, &gone).await?;
    let held: BTreeSet<usize> = mine.iter().filter_map(shard_of).collect();
    let want = release::target(batch.spec.replicas, &gone, &held);
    let mut exhausted = false;
    if mine.len() > want {
        // scale down: highest shards go first
        mine.sort_by_key(|p| shard_of(p).unwrap_or(usize::MAX));
        for p in mine.split_off(want) {
            release_pod(ctx, pod_api, &p).await?;
        }
    } else if mine.len() < want {
        let used: BTreeSet<usize> = held.union(&gone).copied().collect();
        let shards = free_shards(&used, want - mine.len());
        let got = match &batch.spec.pool_ref {
            Some(pool) => {
                allocate_from_pool(ctx, pod_api, ns, pool, (&name, &uid), &shards).await?
            }
            None => create_from_template(ctx, batch, pod_api, ns, &uid, &shards).await?,
        };
        exhausted = got.len() < shards.len();
        if !got.is_empty() {
            ctx.event(
                batch,
                false,
                "Allocated",
                format!("{} sandboxes allocated", got.len()),
            )
            .await;
        }
        if exhausted && batch.spec.pool_ref.is_some() {
            let msg = format!(
                "{} of {} sandboxes allocated; the pool has no more ready pods",
                mine.len() + got.len(),
                want
            );
            ctx.event(batch, true, "PoolExhausted", msg).await;
        }
        mine.extend(got);
    }
    mine.sort_by_key(|p| shard_of(p).unwrap_or(usize::MAX));
    Ok((mine, exhausted))
}

/// Start each ready shard's task once, and read the state of started ones
/// (one entry per pod, as [`sandpool_core::batch::count_tasks`] takes them).
async fn run_tasks(
    batch: &BatchSandbox,
    ctx: &Context,
    pod_api: &Api<Pod>,
    mine: &[Pod],
    released: &release::Released,
) -> Result<Vec<Option<Option<i32>>>> {
    let mut task_states = Vec::new();
    let Some(tt) = &batch.spec.task_template else {
        return Ok(task_states);
    };
    for p in mine {
        if !pods::is_ready(p) {
            task_states.push(None);
            continue;
        }
        let shard = shard_of(p).unwrap_or(0);
        if let Some(done) = released.state(shard) {
            task_states.push(done); // released: its task's recorded end
            continue;
        }
        if pods::annotation(p, TASK_ANNOTATION).is_some() {
            task_states.push(ctx.tasks.status(p).await);
            continue;
        }
        let task = shard_task(tt, &batch.spec.shard_task_patches, shard)?;
        let Some(process) = task.spec.process.as_ref() else {
            task_states.push(None);
            continue;
        };
        match ctx.tasks.start(p, process).await {
            Ok(()) => {
                let patch = json!({"metadata": {"annotations": {TASK_ANNOTATION: "started"}}});
                pod_api
                    .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                task_states.push(Some(None));
            }
            Err(e) => {
                ctx.event(
                    batch,
                    true,
                    "TaskStartFailed",
                    format!("shard {shard}: {e}"),
                )
                .await;
                task_states.push(None);
            }
        }
    }
    Ok(task_states)
}

/// The endpoints annotation: the ready pods' IPs in shard order (and the
/// upstream server's access token annotation, see [`secure_access`]).
async fn publish_endpoints(
    batch: &BatchSandbox,
    batches: &Api<BatchSandbox>,
    mine: &[Pod],
) -> Result<()> {
    let ips: Vec<&str> = mine
        .iter()
        .filter(|p| pods::is_ready(p))
        .filter_map(pods::pod_ip)
        .collect();
    let endpoints = serde_json::to_string(&ips)?;
    let mut changed = serde_json::Map::new();
    if batch.annotations().get(ENDPOINTS_ANNOTATION) != Some(&endpoints) {
        changed.insert(ENDPOINTS_ANNOTATION.into(), endpoints.into());
    }
    if let Some(token) = secure_access::update(batch, mine) {
        changed.insert(secure_access::SECURE_ACCESS_ANNOTATION.into(), token.into());
    }
    if !changed.is_empty() {
        let patch = json!({"metadata": {"annotations": changed}});
        batches
            .patch(
                &batch.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
    }
    Ok(())
}

/// Take up to `shards.len()` ready, unallocated pods of `pool`, each with a
/// resourceVersion-conditioned patch. Returns the pods won.
async fn allocate_from_pool(
    ctx: &Context,
    pod_api: &Api<Pod>,
    ns: &str,
    pool: &str,
    (batch_name, uid): (&str, &str),
    shards: &[usize],
) -> Result<Vec<Pod>> {
    match ctx.api::<Pool>(ns).get(pool).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            return Err(Error::NotFound {
                kind: "Pool",
                name: pool.to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let mut won = Vec::new();
    let mut next_shard = shards.iter().copied();
    let mut shard = next_shard.next();
    for _round in 0..ALLOCATION_ROUNDS {
        let Some(_) = shard else { break };
        let candidates: Vec<Pod> = list_pods(
            pod_api,
            &format!("{POOL_LABEL}={pool},!{ALLOCATED_TO_LABEL}"),
        )
        .await?
        .into_iter()
        .filter(pods::is_ready)
        .collect();
        if candidates.is_empty() {
            break;
        }
        let nodes: Vec<&str> = candidates.iter().map(pods::node_name).collect();
        let mut lost = 0;
        for i in pods::spread_pick(&nodes, shards.len() - won.len()) {
            let Some(s) = shard else { break };
            let p = &candidates[i];
            let patch = json!({"metadata": {
                "resourceVersion": p.resource_version(),
                "labels": {ALLOCATED_TO_LABEL: uid, TENANT_LABEL: uid},
                "annotations": {SHARD_ANNOTATION: s.to_string(), BATCH_NAME_ANNOTATION: batch_name},
            }});
            match pod_api
                .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(pod) => {
                    won.push(pod);
                    shard = next_shard.next();
                }
                Err(e) if is_conflict(&e) || is_not_found(&e) => {
                    tracing::debug!(pod = %p.name_any(), "lost the race for a warm pod; trying another");
                    lost += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if lost == 0 {
            break; // every pick was won or the list was exhausted
        }
    }
    Ok(won)
}

async fn create_from_template(
    ctx: &Context,
    batch: &BatchSandbox,
    pod_api: &Api<Pod>,
    ns: &str,
    uid: &str,
    shards: &[usize],
) -> Result<Vec<Pod>> {
    let name = batch.name_any();
    let Some(template) = &batch.spec.pod_template() else {
        return Err(Error::invalid(
            "BatchSandbox",
            &name,
            "spec.template is required without spec.poolRef",
        ));
    };
    let owner = controller_ref(
        "sandbox.opensandbox.io/v1alpha1",
        "BatchSandbox",
        &name,
        uid,
    );
    shards::validate(&batch.spec, &name, template)?;
    let mut out = Vec::new();
    for &s in shards {
        let template = &shards::template(&batch.spec, &name, template, s)?;
        let meta = ObjectMeta {
            name: Some(format!("{name}-{s}")),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([
                (ALLOCATED_TO_LABEL.to_string(), uid.to_string()),
                (TENANT_LABEL.to_string(), uid.to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                (SHARD_ANNOTATION.to_string(), s.to_string()),
                (BATCH_NAME_ANNOTATION.to_string(), name.clone()),
            ])),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        };
        let pod = ctx.runtime_pod(template, meta)?;
        match pod_api.create(&PostParams::default(), &pod).await {
            Ok(p) => out.push(p),
            Err(e) if is_already_exists(&e) => {} // the watch brings it back
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Release one of a batch's pods: stop its task, then delete it, unless
/// its pool recycles (`recycleStrategy: Restart`): then the pool controller
/// resets it and returns it only once the reset is proven
/// ([`crate::pool::recycle`]). A used pod never goes back to its pool
/// otherwise: its file system and its runtime token belong to the previous
/// tenant. docs/compatibility.md says where this differs from upstream.
/// The tenant's egress NetworkPolicies are first handed over to the pod
/// ([`crate::tenant_egress`]): they keep guarding it until it is reset or
/// gone.
pub(crate) async fn release_pod(ctx: &Context, pod_api: &Api<Pod>, pod: &Pod) -> Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    crate::tenant_egress::hand_over(&ctx.api(&ns), pod).await?;
    if pods::annotation(pod, TASK_ANNOTATION).is_some()
        && let Err(e) = ctx.tasks.stop(pod).await
    {
        tracing::warn!(pod = %pod.name_any(), error = %e, "stopping the task failed");
    }
    if crate::pool::recycle::release(ctx, pod_api, pod).await? {
        return Ok(());
    }
    delete_ignoring_missing(pod_api, &pod.name_any()).await
}

async fn cleanup(batch: &BatchSandbox, ctx: &Context, ns: &str) -> Result<Action> {
    let uid = batch.uid().unwrap_or_default();
    let pod_api: Api<Pod> = ctx.api(ns);
    let mine = list_pods(&pod_api, &format!("{ALLOCATED_TO_LABEL}={uid}")).await?;
    let n = mine.len();
    for p in &mine {
        release_pod(ctx, &pod_api, p).await?;
    }
    ctx.event(batch, false, "Released", format!("{n} sandboxes released"))
        .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ProcessTask, TaskSpec};

    #[test]
    fn shard_patches_apply_per_index() {
        let tt = TaskTemplateSpec {
            spec: TaskSpec {
                process: Some(ProcessTask {
                    command: vec!["echo".into(), "Default task".into()],
                    ..Default::default()
                }),
                timeout_seconds: None,
            },
        };
        let patches = vec![
            json!({"spec": {"process": {"command": ["echo", "Custom task for sandbox 1"]}}}),
            json!({"spec": {"process": {"command": ["echo", "Custom task for sandbox 2"], "args": ["with", "additional", "arguments"]}}}),
        ];
        let t0 = shard_task(&tt, &patches, 0).expect("0");
        assert_eq!(
            t0.spec.process.as_ref().expect("p").command,
            ["echo", "Custom task for sandbox 1"]
        );
        let t1 = shard_task(&tt, &patches, 1).expect("1");
        assert_eq!(
            t1.spec.process.as_ref().expect("p").args,
            ["with", "additional", "arguments"]
        );
        let t2 = shard_task(&tt, &patches, 2).expect("2");
        assert_eq!(t2, tt, "shards past the patch list run the template");
        let bad = vec![json!({"spec": {"process": {"command": "not-a-list"}}})];
        assert!(
            shard_task(&tt, &bad, 0).is_err(),
            "a patch producing an invalid task is an error"
        );
    }

    #[test]
    fn free_shards_fill_gaps() {
        let used: BTreeSet<usize> = [0, 2].into();
        assert_eq!(free_shards(&used, 3), [1, 3, 4]);
        assert!(free_shards(&used, 0).is_empty());
    }
}
