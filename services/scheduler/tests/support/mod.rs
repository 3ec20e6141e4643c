//! Helpers shared by the scheduler's test files (fake node and real node).

use std::time::Duration;

use sandpool_core::{Template, pool::CapacitySpec};
use sandpool_proto::v1 as pb;
use sandpool_scheduler::scheduler::PoolRec;

/// A busybox pool `name` with these buffer bounds (poolMin 0); `command`
/// empty keeps the image's.
pub fn pool(name: &str, command: &[&str], bmin: u32, bmax: u32, pmax: u32) -> PoolRec {
    PoolRec {
        name: name.into(),
        template: Template {
            image: "busybox".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        capacity: CapacitySpec {
            buffer_min: bmin,
            buffer_max: bmax,
            pool_min: 0,
            pool_max: pmax,
        },
    }
}

/// A task running `argv` with `env`.
pub fn task(argv: &[&str], env: &[(&str, &str)]) -> pb::InjectRequest {
    pb::InjectRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The batch `job`: three shards of `task` in `pool` (no TTL), with these
/// shard task patches.
pub fn job(pool: &str, task: pb::InjectRequest, patches: &[&str]) -> pb::BatchRequest {
    pb::BatchRequest {
        name: "job".into(),
        pool: pool.into(),
        replicas: 3,
        ttl_seconds: 0,
        task: Some(task),
        shard_task_patches: patches.iter().map(|p| p.to_string()).collect(),
    }
}

/// How long to wait for something, and how often to look.
pub struct Patience {
    pub within: Duration,
    pub every: Duration,
}

impl Patience {
    /// Poll `done` every `every`; panic naming `what` if it does not hold
    /// within `within`.
    pub async fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + self.within;
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {:?} waiting for {what}",
                self.within
            );
            tokio::time::sleep(self.every).await;
        }
    }
}
