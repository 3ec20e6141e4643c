//! Helpers shared by the scheduler's test files (fake node and real node).

use std::time::Duration;

use sandpool_core::{Template, pool::CapacitySpec};
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

/// Poll `done` every `every`; panic naming `what` if it does not hold within `within`.
pub async fn wait_until(
    what: &str,
    within: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}
