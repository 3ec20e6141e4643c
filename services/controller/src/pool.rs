//! Pool controller: keeps warm pods within the capacity spec (the same
//! `scale_decision` as the standalone scheduler) and reports status.

use std::sync::Arc;
use std::time::Duration;

use crate::conditions::failed;
use crate::context::{Context, delete_ignoring_missing, list_pods, namespace_of, patch_status};
use crate::crd::{ALLOCATED_TO_LABEL, POOL_LABEL, Pool, PoolStatus};
use crate::error::Result;
use crate::pods::{self, controller_ref};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use sandpool_core::pool::{PoolCounts, scale_decision};

pub mod recycle;
pub mod restart_config;
pub mod rollout;

/// Pods of one pool, sorted by what they are doing.
#[derive(Debug, Default)]
pub struct PoolPods {
    pub warm: Vec<Pod>,
    /// Pods being made or reset: not Ready and not allocated.
    pub creating: u32,
    /// Of those, the idle pods being made (not being reset).
    pub pending: Vec<Pod>,
    pub allocated: u32,
    /// Allocated pods that are not Ready (they count against
    /// `maxUnavailable`, as upstream counts every pod not Ready).
    pub allocated_unready: u32,
    /// Ended pods, to delete.
    pub finished: Vec<Pod>,
}

impl PoolPods {
    /// Every pod not Ready.
    pub fn unready(&self) -> u32 {
        self.creating + self.allocated_unready
    }
}

pub fn classify(pods: Vec<Pod>) -> PoolPods {
    let mut out = PoolPods::default();
    for p in pods {
        if pods::is_terminating(&p) {
            continue;
        }
        let allocation = pods::labels_of(&p).get(ALLOCATED_TO_LABEL).cloned();
        if pods::is_finished(&p) {
            out.finished.push(p);
        } else if allocation.as_deref() == Some(recycle::RECYCLING) {
            // being reset: it will be warm again, so no replacement is made
            out.creating += 1;
        } else if allocation.is_some() {
            out.allocated += 1;
            out.allocated_unready += u32::from(!pods::is_ready(&p));
        } else if pods::is_ready(&p) {
            out.warm.push(p);
        } else {
            out.creating += 1;
            out.pending.push(p);
        }
    }
    out
}

/// Why a pool cannot be made as written (event reason and message): its
/// name labels every pod, so it must be a DNS label, and its capacity must add up.
fn refusal(name: &str, cap: &sandpool_core::pool::CapacitySpec) -> Option<(&'static str, String)> {
    if let Err(e) = sandpool_core::validate_dns_label("metadata.name", name) {
        return Some(("InvalidName", e.to_string()));
    }
    cap.validate()
        .err()
        .map(|e| ("InvalidCapacity", e.to_string()))
}

const INCOMPLETE: &str =
    "spec.template (or sandboxTemplate) and spec.capacitySpec (or capacity) are required";

pub async fn reconcile(pool: Arc<Pool>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace_of(pool.as_ref())?;
    let name = pool.name_any();
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change()); // pods go with it (owner references)
    }
    let (Some(template), Some(cap)) = (pool.spec.pod_template(), pool.spec.capacity()) else {
        failed(&ctx, pool.as_ref(), "InvalidSpec", INCOMPLETE.to_string()).await;
        return Ok(Action::await_change());
    };
    let cap = cap.to_core();
    if let Some(msg) = pool.spec.unsupported_recycle() {
        failed(&ctx, pool.as_ref(), "UnsupportedField", msg).await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    if let Some((reason, msg)) = refusal(&name, &cap) {
        failed(&ctx, pool.as_ref(), reason, msg).await;
        return Ok(Action::await_change());
    }
    let revision = rollout::revision(&template);
    let api: Api<Pod> = ctx.api(&ns);
    let all = list_pods(&api, &format!("{POOL_LABEL}={name}")).await?;
    let (recycling, recycled) = recycle::drive(&ctx, &pool, &api, &all).await?;
    let all = if recycled > 0 {
        list_pods(&api, &format!("{POOL_LABEL}={name}")).await?
    } else {
        all
    };
    let updated = all
        .iter()
        .filter(|p| !pods::is_terminating(p) && !pods::is_finished(p))
        .filter(|p| rollout::is_current(p, &revision))
        .count() as u32;
    let mut pods = classify(all);
    for p in &pods.finished {
        delete_ignoring_missing(&api, &p.name_any()).await?;
    }
    let replaced = replace_stale(&ctx, &pool, &api, &mut pods, &revision).await?;
    let unready = pods.unready();
    let PoolPods {
        mut warm,
        creating,
        allocated,
        ..
    } = pods;
    let counts = PoolCounts {
        warm: warm.len() as u32,
        creating,
        allocated,
    };
    let delta = scale_decision(&cap, counts, cap.pool_max);
    let mut created = 0u32;
    if delta > 0 {
        let wanted = u32::try_from(delta).unwrap_or(0);
        let desired_total = counts.total() + wanted;
        let n = rollout::to_create(&pool.spec, desired_total, wanted, unready);
        created = create_pods(&ctx, &pool, &api, &template, &revision, n).await?;
    } else if delta < 0 {
        scale_down(&ctx, &pool, &api, &mut warm, delta.unsigned_abs() as usize).await?;
    }
    let status = PoolStatus {
        observed_generation: pool.metadata.generation,
        total: (warm.len() as u32 + creating + created + allocated) as i32,
        allocated: allocated as i32,
        available: warm.len() as i32,
        revision,
        updated: (updated + created) as i32,
        ..pool.status.clone().unwrap_or_default()
    };
    if pool.status.as_ref() != Some(&status) {
        patch_status(&ctx.api::<Pool>(&ns), &name, serde_json::to_value(&status)?).await?;
    }
    // pod changes wake us through the watch; this is the resync
    let settling = creating + created > 0 || delta != 0 || replaced > 0 || recycling > 0;
    Ok(Action::requeue(if settling {
        ctx.settle
    } else {
        Duration::from_secs(60)
    }))
}

/// `updateStrategy`, as upstream's recreate update: idle pods of an older
/// template revision that are not Ready yet are deleted at once; Ready ones
/// within `maxUnavailable` (of all the pool's pods) less the pods not
/// Ready. The scale-up that follows makes their replacements.
async fn replace_stale(
    ctx: &Context,
    pool: &Pool,
    api: &Api<Pod>,
    pods: &mut PoolPods,
    revision: &str,
) -> Result<usize> {
    let total = pods.warm.len() as u32 + pods.creating + pods.allocated;
    // counted before the old pods not Ready go, as upstream counts them
    let unready = pods.unready();
    let (pending, stale_pending): (Vec<Pod>, Vec<Pod>) = std::mem::take(&mut pods.pending)
        .into_iter()
        .partition(|p| rollout::is_current(p, revision));
    pods.pending = pending;
    for p in &stale_pending {
        delete_ignoring_missing(api, &p.name_any()).await?;
    }
    pods.creating -= stale_pending.len() as u32;
    let (current, mut stale): (Vec<Pod>, Vec<Pod>) = std::mem::take(&mut pods.warm)
        .into_iter()
        .partition(|p| rollout::is_current(p, revision));
    pods.warm = current;
    let n = rollout::to_replace(&pool.spec, total, stale.len(), unready);
    let keep = stale.split_off(n);
    for p in &stale {
        delete_ignoring_missing(api, &p.name_any()).await?;
    }
    pods.warm.extend(keep);
    let n = n + stale_pending.len();
    if n > 0 {
        ctx.event(
            pool,
            false,
            "Updating",
            format!("replacing {n} idle pods of an older template (revision {revision})"),
        )
        .await;
    }
    Ok(n)
}

async fn create_pods(
    ctx: &Context,
    pool: &Pool,
    api: &Api<Pod>,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    revision: &str,
    n: u32,
) -> Result<u32> {
    let name = pool.name_any();
    let ns = namespace_of(pool)?;
    let owner = controller_ref(
        "sandbox.opensandbox.io/v1alpha1",
        "Pool",
        &name,
        &pool.uid().unwrap_or_default(),
    );
    let mut created = 0u32;
    for _ in 0..n {
        let meta = ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(ns.clone()),
            labels: Some(
                [
                    (POOL_LABEL.to_string(), name.clone()),
                    (rollout::REVISION_LABEL.to_string(), revision.to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        };
        let mut pod = ctx.runtime_pod(template, meta)?;
        recycle::prepare(&pool.spec, &mut pod);
        api.create(&PostParams::default(), &pod).await?;
        created += 1;
    }
    if created > 0 {
        ctx.event(
            pool,
            false,
            "ScaledUp",
            format!("created {created} warm pods"),
        )
        .await;
    }
    Ok(created)
}

/// Drop the newest `n` idle pods (older ones have warmed caches).
async fn scale_down(
    ctx: &Context,
    pool: &Pool,
    api: &Api<Pod>,
    warm: &mut Vec<Pod>,
    n: usize,
) -> Result<()> {
    warm.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    for p in warm.split_off(warm.len().saturating_sub(n)) {
        delete_ignoring_missing(api, &p.name_any()).await?;
    }
    ctx.event(pool, false, "ScaledDown", format!("deleted {n} idle pods"))
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pool_named_beyond_a_dns_label_is_refused() {
        let cap = sandpool_core::pool::CapacitySpec {
            buffer_min: 1,
            buffer_max: 1,
            pool_min: 0,
            pool_max: 2,
        };
        assert_eq!(refusal("py-pool", &cap), None);
        for bad in ["a.b", "Big", &"a".repeat(64)] {
            let (reason, msg) = refusal(bad, &cap).expect(bad);
            assert_eq!(reason, "InvalidName");
            assert!(msg.contains("metadata.name"), "{msg}");
        }
    }

    #[test]
    fn classify_sorts_pods() {
        let ready = serde_json::json!({"metadata": {"name": "w"}, "status": {"phase": "Running", "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        let mut taken = ready.clone();
        taken["metadata"]["labels"] = json!({ALLOCATED_TO_LABEL: "u"});
        let pending = json!({"metadata": {"name": "c"}, "status": {"phase": "Pending"}});
        let failed = json!({"metadata": {"name": "f"}, "status": {"phase": "Failed"}});
        let mut gone = ready.clone();
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let pods: Vec<Pod> = [ready, taken, pending, failed, gone]
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("pod"))
            .collect();
        let c = classify(pods);
        assert_eq!(
            (c.warm.len(), c.creating, c.allocated, c.finished.len()),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn a_noop_recycle_strategy_is_refused() {
        let spec = |strategy: serde_json::Value| -> crate::crd::PoolSpec {
            serde_json::from_value(json!({
                "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 0, "poolMax": 2},
                "recycleStrategy": strategy,
            }))
            .expect("pool spec")
        };
        assert_eq!(spec(json!({"type": "Delete"})).unsupported_recycle(), None);
        assert_eq!(spec(json!({})).unsupported_recycle(), None);
        assert_eq!(spec(json!({"type": "Restart"})).unsupported_recycle(), None);
        let msg = spec(json!({"type": "Noop"}))
            .unsupported_recycle()
            .expect("Noop");
        assert!(msg.contains("spec.recycleStrategy.type \"Noop\""), "{msg}");
        assert!(
            serde_json::from_value::<crate::crd::PoolSpec>(
                json!({"recycleStrategy": {"type": "Bogus"}})
            )
            .is_err(),
            "unknown types are not accepted"
        );
    }
}
