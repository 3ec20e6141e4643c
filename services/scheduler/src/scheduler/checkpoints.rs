//! Checkpoints: take, list, delete, restore (fork).

use std::collections::BTreeMap;

use sandpool_core::claim::ClaimState;
use sandpool_proto::{
    auth::AuthChannel,
    v1::{self as pb, node_agent_client::NodeAgentClient},
};

use super::{
    Busy, ClaimRec, SandboxRef, Scheduler, claim::Begin, expiry_ms, new_sandbox_id, node_err,
    now_ms,
};
use crate::{
    error::{Result, SchedError},
    store::Table,
    traced,
};

/// The metadata and start process of the claim a checkpoint was taken of.
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointSource {
    checkpoint_id: String,
    metadata: BTreeMap<String, String>,
    /// The argv the claim started (empty: none, or a checkpoint recorded
    /// before sandpool kept it).
    #[serde(default)]
    entrypoint: Vec<String>,
}

/// What a restore asks of its claims beyond the checkpoint
/// (`RestoreCheckpointRequest.process` and `resources`).
#[derive(Debug, Default, Clone)]
pub struct RestoreAs {
    /// The start process: a memory checkpoint's processes resume as they
    /// were, so only the checkpointed claim's own argv is taken (it is what
    /// runs); any other is refused naming the field.
    pub process: Option<pb::InjectRequest>,
    /// Limits set on each restored sandbox's cgroups once it runs (empty
    /// fields keep the checkpointed sandbox's; pids refused).
    pub resources: Option<pb::Resources>,
}

/// Most claims one restore (fork) makes.
pub const MAX_RESTORE: u32 = 64;

impl Scheduler {
    /// Checkpoint claim `id`'s sandbox (a checkpointable pool's). With
    /// `leave_running` the claim goes on; otherwise its sandbox stops and the
    /// claim ends, as a release does.
    #[tracing::instrument(skip_all, fields(claim = %id))]
    pub async fn checkpoint_claim(
        &self,
        id: &str,
        leave_running: bool,
        name: &str,
    ) -> Result<pb::CheckpointInfo> {
        let c = self.get_claim(id)?;
        if c.state != ClaimState::Bound {
            return Err(SchedError::Conflict(format!(
                "claim {id} is {:?}: only a running sandbox can be checkpointed (resume it first)",
                c.state
            )));
        }
        let mut info = {
            let _busy = self.busy(&c.sandbox.id);
            let mut node = self.node(&c.sandbox.node)?.client.clone();
            let req = traced(pb::CheckpointRequest {
                sandbox_id: c.sandbox.id.clone(),
                leave_running,
                owner: id.to_string(),
                name: name.to_string(),
            });
            node.checkpoint(req)
                .await
                .map_err(node_err(&c.sandbox.node))?
                .into_inner()
        };
        // who took it outlives the claim (the gateway scopes snapshots by it)
        self.store.put(
            Table::CheckpointSources,
            &info.checkpoint_id,
            &CheckpointSource {
                checkpoint_id: info.checkpoint_id.clone(),
                metadata: c.metadata.clone(),
                entrypoint: c.entrypoint.clone(),
            },
        )?;
        info.source_metadata = c.metadata.clone().into_iter().collect();
        if !leave_running {
            self.lock().claims.remove(id);
            self.unallocate(&c.pool);
            self.store.delete(Table::Claims, id)?;
        }
        Ok(info)
    }

    /// Every node's checkpoints (nodes that do not answer are skipped), oldest first.
    pub async fn list_checkpoints(&self) -> Vec<pb::CheckpointInfo> {
        let mut all = Vec::new();
        for n in &self.nodes {
            if let Ok(list) = n
                .client
                .clone()
                .list_checkpoints(traced(pb::ListCheckpointsRequest {}))
                .await
            {
                all.extend(list.into_inner().checkpoints);
            }
        }
        all.sort_by(|a, b| {
            (a.created_unix_ms, &a.checkpoint_id).cmp(&(b.created_unix_ms, &b.checkpoint_id))
        });
        let sources: std::collections::HashMap<String, BTreeMap<String, String>> = self
            .store
            .all::<CheckpointSource>(Table::CheckpointSources)
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.checkpoint_id, s.metadata))
            .collect();
        for c in &mut all {
            if let Some(m) = sources.get(&c.checkpoint_id) {
                c.source_metadata = m.clone().into_iter().collect();
            }
        }
        all
    }

    /// The node holding checkpoint `id`, a client for it, and the checkpoint.
    pub(super) async fn find_checkpoint(
        &self,
        id: &str,
    ) -> Result<(String, NodeAgentClient<AuthChannel>, pb::CheckpointInfo)> {
        for n in &self.nodes {
            let mut client = n.client.clone();
            let Ok(list) = client
                .list_checkpoints(traced(pb::ListCheckpointsRequest {}))
                .await
            else {
                continue;
            };
            if let Some(ck) = list
                .into_inner()
                .checkpoints
                .into_iter()
                .find(|c| c.checkpoint_id == id)
            {
                return Ok((n.name.clone(), client, ck));
            }
        }
        Err(SchedError::CheckpointNotFound(id.to_string()))
    }

    pub async fn delete_checkpoint(&self, id: &str) -> Result<()> {
        let (node, mut client, _) = self.find_checkpoint(id).await?;
        client
            .delete_checkpoint(traced(pb::CheckpointRef {
                checkpoint_id: id.to_string(),
            }))
            .await
            .map_err(node_err(&node))?;
        self.store.delete(Table::CheckpointSources, id)?;
        Ok(())
    }

    /// Restore checkpoint `checkpoint_id` into `count` new claims (a fork
    /// when more than one) on the node that holds it; all or none.
    #[tracing::instrument(skip_all, fields(checkpoint = %checkpoint_id, count))]
    pub async fn restore_checkpoint(
        &self,
        checkpoint_id: &str,
        count: u32,
        ttl_seconds: u64,
        metadata: BTreeMap<String, String>,
        claim_id: &str,
        with: RestoreAs,
    ) -> Result<Vec<ClaimRec>> {
        let count = count.max(1);
        if count > MAX_RESTORE {
            return Err(SchedError::RestoreCount {
                count,
                max: MAX_RESTORE,
            });
        }
        if !claim_id.is_empty() && count != 1 {
            return Err(SchedError::Invalid(
                "a claim id names the claim of a single restore (count 1)".into(),
            ));
        }
        // a caller-chosen id: a retry gets the claim the first attempt made
        let named = pb::ClaimRequest {
            claim_id: claim_id.to_string(),
            ..Default::default()
        };
        let (first_id, _claiming) = match self.begin_claim(&named)? {
            Begin::Existing(c) => return Ok(vec![*c]),
            Begin::New(id, claiming) => (id, claiming),
        };
        let entrypoint = self.restore_start(checkpoint_id, &with)?;
        let mut claim_ids = std::iter::once(first_id);
        let (node, client, ck) = self.find_checkpoint(checkpoint_id).await?;
        let ids: Vec<String> = (0..count).map(|_| new_sandbox_id()).collect();
        let _busy: Vec<Busy<'_>> = ids.iter().map(|id| self.busy(id)).collect();
        let restores = ids.iter().map(|id| {
            let mut c = client.clone();
            let req = traced(pb::RestoreRequest {
                checkpoint_id: checkpoint_id.to_string(),
                sandbox_id: id.clone(),
            });
            async move { c.restore(req).await.map(|r| r.into_inner()) }
        });
        let results = futures_util::future::join_all(restores).await;
        let (mut made, mut failed) = (Vec::new(), None);
        for r in results {
            match r {
                Ok(info) => made.push(info),
                Err(status) => {
                    failed.get_or_insert(SchedError::Node {
                        node: node.clone(),
                        status,
                    });
                }
            }
        }
        if failed.is_none() {
            failed = self.resize_restored(&node, &made, with.resources).await;
        }
        let recs: Vec<ClaimRec> = made
            .iter()
            .map(|info| {
                let id = claim_ids
                    .next()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let mut rec = restored_claim(id, &ck, SandboxRef::of(&node, info), ttl_seconds);
                rec.metadata = metadata.clone();
                rec.entrypoint = entrypoint.clone();
                rec
            })
            .collect();
        if failed.is_none() {
            for r in &recs {
                if let Err(e) = self.store.put(Table::Claims, &r.id, r) {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            for r in &recs {
                let _ = self.store.delete(Table::Claims, &r.id);
            }
            for info in &made {
                self.release_sandbox(&node, &info.sandbox_id, pb::ReleasePolicy::Delete)
                    .await;
            }
            return Err(e);
        }
        let mut st = self.lock();
        if let Some(p) = st.pools.get_mut(&ck.pool) {
            p.allocated += recs.len() as u32;
        }
        for r in &recs {
            st.claims.insert(r.id.clone(), r.clone());
        }
        Ok(recs)
    }

    /// The argv checkpoint `id`'s claim started, once the restore's own
    /// process and limits are known to be ones a memory restore can take.
    fn restore_start(&self, id: &str, with: &RestoreAs) -> Result<Vec<String>> {
        if with.resources.as_ref().is_some_and(|r| r.pids > 0) {
            return Err(SchedError::Invalid(
                "resources.pids on a restore: a restored sandbox keeps its pids limit".into(),
            ));
        }
        let checkpointed = self
            .store
            .all::<CheckpointSource>(Table::CheckpointSources)?
            .into_iter()
            .find(|s| s.checkpoint_id == id)
            .map(|s| s.entrypoint)
            .unwrap_or_default();
        if let Some(p) = &with.process {
            let mut also_set = Vec::new();
            for (set, field) in [
                (!p.env.is_empty(), "env"),
                (!p.cwd.is_empty(), "cwd"),
                (p.uid.is_some(), "uid"),
                (p.gid.is_some(), "gid"),
                (p.replace, "replace"),
            ] {
                if set {
                    also_set.push(field);
                }
            }
            sandpool_core::start::memory_restore_start(&p.argv, &also_set, &checkpointed)
                .map_err(SchedError::Invalid)?;
        }
        Ok(checkpointed)
    }

    /// Set `resources` on each restored sandbox's cgroups (they run
    /// already); the first failure, if any.
    async fn resize_restored(
        &self,
        node: &str,
        made: &[pb::SandboxInfo],
        resources: Option<pb::Resources>,
    ) -> Option<SchedError> {
        let resources = resources.filter(|r| !r.cpu.is_empty() || !r.memory.is_empty())?;
        let client = match self.node(node) {
            Ok(n) => n.client.clone(),
            Err(e) => return Some(e),
        };
        let resizes = made.iter().map(|info| {
            let mut c = client.clone();
            let req = traced(pb::NodeInjectRequest {
                sandbox_id: info.sandbox_id.clone(),
                resources: Some(resources.clone()),
                ..Default::default()
            });
            async move { c.inject(req).await }
        });
        futures_util::future::join_all(resizes)
            .await
            .into_iter()
            .find_map(|r| r.err())
            .map(|status| SchedError::Node {
                node: node.to_string(),
                status,
            })
    }
}

/// The claim of a sandbox restored from checkpoint `ck`, bound now.
fn restored_claim(
    id: String,
    ck: &pb::CheckpointInfo,
    sandbox: SandboxRef,
    ttl_seconds: u64,
) -> ClaimRec {
    let now = now_ms();
    ClaimRec {
        id,
        pool: ck.pool.clone(),
        state: ClaimState::Bound,
        sandbox,
        created_ms: now,
        expires_ms: expiry_ms(now, ttl_seconds),
        paused_remaining_ms: 0,
        metadata: BTreeMap::new(),
        cold: true,
        entrypoint: vec![],
        image: ck.image.clone(),
        claim_us: 0,
        batch: None,
        failure: String::new(),
        egress: None,
        pause_on_expiry: false,
        auto_resume: false,
        pause_filesystem_only: false,
        paused_filesystem: false,
        // a restored sandbox's processes came with its memory: after a
        // filesystem-only pause nothing is started again
        restart: Vec::new(),
        sandbox_env: BTreeMap::new(),
        ttl_seconds,
        oom_kills: 0,
    }
}
