//! BatchSandbox: sharded claims from one pool.

use std::collections::BTreeMap;

use sandpool_core::{batch, claim::ClaimEvent};
use sandpool_proto::v1 as pb;

use super::reaper::{runtime_client, runtime_request};
use super::{ClaimRec, Scheduler};
use crate::error::{Result, SchedError};

impl Scheduler {
    /// BatchSandbox: `replicas` claims from one pool; shard i runs the task
    /// template with `shard_task_patches[i]` merged in.
    pub async fn create_batch(&self, req: pb::BatchRequest) -> Result<Vec<ClaimRec>> {
        if req.name.is_empty() {
            return Err(SchedError::Invalid("batch name is required".into()));
        }
        if req.replicas == 0 || req.replicas > 1000 {
            return Err(SchedError::Invalid(format!(
                "replicas must be 1..=1000, got {}",
                req.replicas
            )));
        }
        if !self
            .list_claims("", &[], &BTreeMap::new())
            .iter()
            .all(|c| c.batch.as_deref() != Some(req.name.as_str()))
        {
            return Err(SchedError::Conflict(format!("batch {} exists", req.name)));
        }
        let task = req.task.clone().unwrap_or_default();
        let task_json = serde_json::json!({ "argv": task.argv, "env": task.env, "cwd": task.cwd });
        let mut shards = Vec::new();
        for i in 0..req.replicas as usize {
            let t = batch::shard_task(&task_json, &req.shard_task_patches, i)?;
            let process = pb::InjectRequest {
                argv: serde_json::from_value(t["argv"].clone()).unwrap_or_default(),
                env: serde_json::from_value(t["env"].clone()).unwrap_or_default(),
                cwd: t["cwd"].as_str().unwrap_or_default().to_string(),
                ..Default::default()
            };
            shards.push(process);
        }
        let mut out = Vec::new();
        for (i, process) in shards.into_iter().enumerate() {
            let r = self
                .claim(pb::ClaimRequest {
                    pool: req.pool.clone(),
                    ttl_seconds: req.ttl_seconds,
                    process: Some(process),
                    metadata: [
                        ("batch".to_string(), req.name.clone()),
                        ("shard".to_string(), i.to_string()),
                    ]
                    .into(),
                    claim_id: format!("{}-{i}", req.name),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(c) => {
                    let c = self.update_claim(&c.id, |c| {
                        c.batch = Some(req.name.clone());
                        Ok(())
                    })?;
                    out.push(c);
                }
                Err(e) => {
                    for c in &out {
                        let _ = self.release(&c.id, ClaimEvent::Release).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    pub fn batch_claims(&self, name: &str) -> Vec<ClaimRec> {
        let mut v: Vec<ClaimRec> = self
            .lock()
            .claims
            .values()
            .filter(|c| c.batch.as_deref() == Some(name))
            .cloned()
            .collect();
        v.sort_by_key(|c| c.id.clone());
        v
    }

    /// Task states of a batch (entrypoint status from each sandbox).
    pub async fn batch_tasks(&self, name: &str) -> Result<(Vec<ClaimRec>, batch::TaskCounts)> {
        let claims = self.batch_claims(name);
        if claims.is_empty() {
            return Err(SchedError::ClaimNotFound(format!("batch {name}")));
        }
        let mut states = Vec::new();
        for c in &claims {
            let st = self.entrypoint_state(c).await;
            states.push(st);
        }
        Ok((claims, batch::count_tasks(states)))
    }

    pub(super) async fn entrypoint_state(&self, c: &ClaimRec) -> Option<Option<i32>> {
        let mut client = runtime_client(c, |e| e).await?;
        let r = runtime_request(c, pb::EntrypointStatusRequest {})?;
        let s = client.entrypoint_status(r).await.ok()?.into_inner();
        match pb::ProcessPhase::try_from(s.phase).ok()? {
            pb::ProcessPhase::Running => Some(None),
            pb::ProcessPhase::Exited => Some(s.exit_code),
            _ => None,
        }
    }

    pub async fn delete_batch(&self, name: &str) -> Result<()> {
        let claims = self.batch_claims(name);
        if claims.is_empty() {
            return Err(SchedError::ClaimNotFound(format!("batch {name}")));
        }
        for c in claims {
            self.release(&c.id, ClaimEvent::Release).await?;
        }
        Ok(())
    }
}
