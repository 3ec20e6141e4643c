//! OpenSandbox `taskResourcePolicyWhenCompleted: Release`: once a shard's
//! task completed (exited: succeeded or failed), its sandbox is released.
//! As upstream, the released pods are listed on the batch in the
//! `sandbox.opensandbox.io/alloc-release` annotation (`{"pods": [...]}`)
//! and their shards are never filled again; the tasks keep counting in
//! `status.taskSucceed` / `taskFailed`.
//!
//! A pooled batch's released pod leaves the batch through the one release
//! path ([`super::release_pod`]): a used pod never goes back to its pool
//! without a reset, so it is deleted and the pool refills. A pod the batch
//! made from its template stays until the batch is deleted (upstream keeps
//! it too: its controller only releases the task).
//!
//! sandpool adds the released shards and their exit codes to the same
//! annotation (`tasks`), since it keeps no task state in memory.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::Context;
use crate::crd::{BatchSandbox, TaskResourcePolicy};
use crate::error::{Error, Result};

/// Upstream's annotation of released pods.
pub const RELEASE_ANNOTATION: &str = "sandbox.opensandbox.io/alloc-release";

/// The `alloc-release` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Released {
    /// Upstream's field: the released pods' names.
    #[serde(default)]
    pub pods: Vec<String>,
    /// sandpool's: each released shard and how its task ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<ReleasedTask>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleasedTask {
    pub shard: usize,
    pub pod: String,
    pub exit_code: i32,
}

impl Released {
    /// The batch's record (none yet: empty). A record that does not parse
    /// is an error: guessing would refill released shards.
    pub fn of(batch: &BatchSandbox) -> Result<Self> {
        match batch.annotations().get(RELEASE_ANNOTATION) {
            None => Ok(Self::default()),
            Some(raw) => serde_json::from_str(raw).map_err(|e| {
                Error::invalid(
                    "BatchSandbox",
                    &batch.name_any(),
                    format!("annotation {RELEASE_ANNOTATION} is not valid JSON: {e}"),
                )
            }),
        }
    }

    pub fn shards(&self) -> BTreeSet<usize> {
        self.tasks.iter().map(|t| t.shard).collect()
    }

    /// The recorded end of shard `shard`'s task, as a task state.
    pub fn state(&self, shard: usize) -> Option<Option<Option<i32>>> {
        self.tasks
            .iter()
            .find(|t| t.shard == shard)
            .map(|t| Some(Some(t.exit_code)))
    }

    /// The states of released shards no pod in `held` carries any more.
    pub fn gone_states(&self, held: &BTreeSet<usize>) -> Vec<Option<Option<i32>>> {
        self.tasks
            .iter()
            .filter(|t| !held.contains(&t.shard))
            .map(|t| Some(Some(t.exit_code)))
            .collect()
    }
}

/// How many pods the batch holds at most: `replicas`, less the released
/// shards no pod holds any more (a released shard is never filled again).
pub fn target(replicas: i32, released: &BTreeSet<usize>, held: &BTreeSet<usize>) -> usize {
    let want = usize::try_from(replicas).unwrap_or(0);
    let gone = released
        .iter()
        .filter(|s| **s < want && !held.contains(s))
        .count();
    want - gone
}

/// Whether the batch releases a shard's sandbox once its task completed.
pub fn releases(batch: &BatchSandbox) -> bool {
    batch.spec.task_resource_policy_when_completed == Some(TaskResourcePolicy::Release)
        && batch.spec.task_template.is_some()
}

/// Release the sandboxes of `mine` whose task completed (`states` holds one
/// task state per pod). The record is written first, so a release that
/// fails half way is finished by the next reconcile. Returns the pods the
/// batch still holds.
pub async fn completed(
    batch: &BatchSandbox,
    ctx: &Context,
    pod_api: &Api<Pod>,
    mine: Vec<Pod>,
    states: &[Option<Option<i32>>],
) -> Result<Vec<Pod>> {
    if !releases(batch) {
        return Ok(mine);
    }
    let mut record = Released::of(batch)?;
    let known = record.shards();
    let mut newly = Vec::new();
    for (p, state) in mine.iter().zip(states) {
        let (Some(shard), Some(Some(code))) = (super::shard_of(p), state) else {
            continue; // no task yet, or still running, or unknown
        };
        if !known.contains(&shard) {
            newly.push(ReleasedTask {
                shard,
                pod: p.name_any(),
                exit_code: *code,
            });
        }
    }
    if newly.is_empty() {
        return Ok(mine);
    }
    for t in &newly {
        record.pods.push(t.pod.clone());
    }
    record.tasks.extend(newly.iter().cloned());
    let raw = serde_json::to_string(&record)?;
    let patch = json!({"metadata": {"annotations": {RELEASE_ANNOTATION: raw}}});
    ctx.api::<BatchSandbox>(&batch.namespace().unwrap_or_default())
        .patch(
            &batch.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    let msg = newly
        .iter()
        .map(|t| format!("shard {} ({}, exit {})", t.shard, t.pod, t.exit_code))
        .collect::<Vec<_>>()
        .join(", ");
    ctx.event(
        batch,
        false,
        "TaskResourceReleased",
        format!("task completed; released {msg}"),
    )
    .await;
    release_pooled(batch, ctx, pod_api, mine, &record.shards()).await
}

/// A pooled batch gives up its pods of released shards (see the module
/// docs); a batch made from its template keeps them.
pub async fn release_pooled(
    batch: &BatchSandbox,
    ctx: &Context,
    pod_api: &Api<Pod>,
    mine: Vec<Pod>,
    released: &BTreeSet<usize>,
) -> Result<Vec<Pod>> {
    if batch.spec.pool_ref.is_none() || released.is_empty() {
        return Ok(mine);
    }
    let mut kept = Vec::with_capacity(mine.len());
    for p in mine {
        if super::shard_of(&p).is_some_and(|s| released.contains(&s)) {
            super::release_pod(ctx, pod_api, &p).await?;
        } else {
            kept.push(p);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_upstreams_shape() {
        let r = Released {
            pods: vec!["p-1".into()],
            tasks: vec![ReleasedTask {
                shard: 1,
                pod: "p-1".into(),
                exit_code: 3,
            }],
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["pods"], json!(["p-1"]));
        assert_eq!(v["tasks"][0]["exitCode"], 3);
        // upstream's own record (pods only) reads back with no tasks
        let up: Released = serde_json::from_str(r#"{"pods":["a"]}"#).expect("upstream");
        assert!(up.shards().is_empty());
        assert_eq!(r.state(1), Some(Some(Some(3))));
        assert_eq!(r.state(0), None);
        assert_eq!(r.gone_states(&[1].into()), vec![]);
        assert_eq!(r.gone_states(&BTreeSet::new()), vec![Some(Some(3))]);
        // 3 replicas, shard 1 released and gone, shard 2 released but kept
        assert_eq!(target(3, &[1, 2].into(), &[0, 2].into()), 2);
        assert_eq!(target(1, &[1, 2].into(), &BTreeSet::new()), 1);
    }
}
