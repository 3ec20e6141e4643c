//! Node watch, reconnection and resync (the books against what a node runs).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use sandpool_core::{
    claim::{ClaimEvent, ClaimState},
    node_sync::{self, NodeSandbox, NodeState},
};
use sandpool_proto::v1 as pb;

use super::{ClaimRec, PoolEntry, PoolRec, Scheduler, State, node_err, now_ms};
use crate::{error::Result, store::Table};

/// Longest wait between two reconnection attempts to a node.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Waits between reconnection attempts: 200 ms doubling up to
/// [`RECONNECT_MAX`], jittered so nodes restarted together are not all
/// redialled at the same instant; never runs out.
fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(RECONNECT_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

fn node_state(state: i32) -> NodeState {
    match pb::SandboxState::try_from(state) {
        Ok(pb::SandboxState::Creating) => NodeState::Creating,
        Ok(pb::SandboxState::Warm) => NodeState::Warm,
        Ok(pb::SandboxState::Claimed | pb::SandboxState::Paused) => NodeState::Claimed,
        _ => NodeState::Dead,
    }
}

impl Scheduler {
    /// Rebuild pools/claims from the store and the nodes' sandboxes.
    pub(super) async fn reconcile(
        &self,
        node_sandboxes: Vec<(String, Vec<pb::SandboxInfo>)>,
    ) -> Result<()> {
        let pools: Vec<PoolRec> = self.store.all(Table::Pools)?;
        let claims: Vec<ClaimRec> = self.store.all(Table::Claims)?;
        let mut orphans = Vec::new();
        let mut lost_claims = Vec::new();
        {
            let mut st = self.lock();
            for p in pools {
                st.pools.insert(p.name.clone(), PoolEntry::new(p));
            }
            let claimed: HashMap<String, String> = claims
                .iter()
                .map(|c| (c.sandbox.id.clone(), c.id.clone()))
                .collect();
            let mut alive = HashSet::new();
            for (node, sbs) in &node_sandboxes {
                *st.load.entry(node.clone()).or_default() = sbs.len() as u32;
                for sb in sbs {
                    alive.insert(sb.sandbox_id.clone());
                    let warm = sb.state == pb::SandboxState::Warm as i32;
                    if claimed.contains_key(&sb.sandbox_id) {
                        continue;
                    }
                    match st.pools.get_mut(&sb.pool) {
                        Some(p) if warm => {
                            p.warm.push(node, &sb.sandbox_id);
                            st.warm_index.insert(sb.sandbox_id.clone(), sb.pool.clone());
                            st.warm_info.insert(sb.sandbox_id.clone(), sb.clone());
                        }
                        // claimed on the node but no claim record, or a pool that no longer exists
                        _ => orphans.push((node.clone(), sb.sandbox_id.clone())),
                    }
                }
            }
            for c in claims {
                if alive.contains(&c.sandbox.id) && !c.state.is_terminal() {
                    if let Some(p) = st.pools.get_mut(&c.pool) {
                        p.allocated += 1;
                    }
                    st.claims.insert(c.id.clone(), c);
                } else {
                    lost_claims.push(c.id.clone());
                }
            }
        }
        for id in lost_claims {
            tracing::warn!(claim = %id, "claim's sandbox is gone; dropping the claim");
            self.store.delete(Table::Claims, &id)?;
        }
        for (node, id) in orphans {
            tracing::warn!(sandbox = %id, node = %node, "releasing orphaned sandbox");
            if let Ok(n) = self.node(&node) {
                let _ = n
                    .client
                    .clone()
                    .release(pb::ReleaseRequest {
                        sandbox_id: id,
                        policy: pb::ReleasePolicy::Delete as i32,
                    })
                    .await;
            }
        }
        let st = self.lock();
        tracing::info!(
            pools = st.pools.len(),
            claims = st.claims.len(),
            "scheduler state recovered"
        );
        Ok(())
    }

    /// Follow a node's events for ever: when the watch breaks (node agent
    /// restart, network), reconnect with backoff and resync the node's list.
    pub(super) async fn follow_node(&self, idx: usize, first: tonic::Streaming<pb::NodeEvent>) {
        let node = self.nodes[idx].name.clone();
        let mut watch = Some(first);
        loop {
            if let Some(w) = watch.take() {
                self.follow_events(idx, w).await;
                tracing::warn!(node = %node, "node watch ended; reconnecting");
            }
            let mut delays = reconnect_backoff();
            loop {
                tokio::time::sleep(delays.next().unwrap_or(RECONNECT_MAX)).await;
                let Ok(r) = self.nodes[idx]
                    .client
                    .clone()
                    .watch(pb::WatchRequest {})
                    .await
                else {
                    continue;
                };
                let mut w = r.into_inner();
                if !matches!(w.message().await, Ok(Some(_))) {
                    continue;
                }
                match self.resync_node(idx).await {
                    Ok(()) => {
                        tracing::info!(node = %node, "node watch re-established");
                        watch = Some(w);
                        break;
                    }
                    Err(e) => tracing::warn!(node = %node, error = %e, "node resync failed"),
                }
            }
        }
    }

    /// Bring the books in line with what a node runs (see [`node_sync::plan`]).
    pub(super) async fn resync_node(&self, idx: usize) -> Result<()> {
        let n = &self.nodes[idx];
        let listed_at = now_ms();
        let list = n
            .client
            .clone()
            .list_sandboxes(pb::ListSandboxesRequest {
                pool: String::new(),
            })
            .await
            .map_err(node_err(&n.name))?
            .into_inner()
            .sandboxes;
        let plan = {
            let mut st = self.lock();
            st.load.insert(n.name.clone(), list.len() as u32);
            st.touched.retain(|_, at| *at > listed_at - 60_000);
            let plan = {
                let node: Vec<NodeSandbox<'_>> = list
                    .iter()
                    .map(|s| NodeSandbox {
                        id: &s.sandbox_id,
                        pool: &s.pool,
                        state: node_state(s.state),
                    })
                    .collect();
                let books = node_sync::Books {
                    pools: st.pools.keys().map(String::as_str).collect(),
                    warm: st
                        .pools
                        .values()
                        .flat_map(|p| p.warm.on_node(&n.name))
                        .map(String::as_str)
                        .collect(),
                    claimed: st
                        .claims
                        .values()
                        .filter(|c| c.sandbox.node == n.name)
                        .map(|c| (c.sandbox.id.as_str(), (c.id.as_str(), c.created_ms)))
                        .collect(),
                    // the list is stale for sandboxes the books changed since it was taken
                    busy: st
                        .busy
                        .iter()
                        .map(String::as_str)
                        .chain(
                            st.touched
                                .iter()
                                .filter(|(_, at)| **at >= listed_at)
                                .map(|(id, _)| id.as_str()),
                        )
                        .collect(),
                };
                node_sync::plan(&node, &books, listed_at)
            };
            let State {
                pools,
                warm_index,
                warm_info,
                ..
            } = &mut *st;
            for (pool, id) in &plan.adopt {
                if let (Some(p), Some(info)) = (
                    pools.get_mut(pool),
                    list.iter().find(|s| &s.sandbox_id == id),
                ) {
                    tracing::info!(sandbox = %id, pool = %pool, "adopting a warm sandbox found on the node");
                    p.warm.push(&n.name, id);
                    warm_index.insert(id.clone(), pool.clone());
                    warm_info.insert(id.clone(), info.clone());
                }
            }
            for id in &plan.forget_warm {
                tracing::warn!(sandbox = %id, "warm sandbox is gone from its node");
                if let Some(pool) = warm_index.remove(id)
                    && let Some(p) = pools.get_mut(&pool)
                {
                    p.warm.remove(id);
                }
                warm_info.remove(id);
            }
            plan
        };
        for cid in &plan.fail_claims {
            tracing::warn!(claim = %cid, "claim's sandbox is gone from its node");
            let _ = self.update_claim(cid, |c| {
                c.state = c.state.on(ClaimEvent::Fail)?;
                Ok(())
            });
        }
        for id in &plan.delete {
            tracing::warn!(sandbox = %id, node = %n.name, "deleting a sandbox no claim or pool owns");
            self.release_sandbox(&n.name, id, pb::ReleasePolicy::Delete)
                .await;
        }
        if plan != node_sync::Plan::default() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Track sandboxes that disappear or fail on a node behind our back.
    pub(super) async fn follow_events(
        &self,
        idx: usize,
        mut watch: tonic::Streaming<pb::NodeEvent>,
    ) {
        let node = self.nodes[idx].name.clone();
        while let Ok(Some(ev)) = watch.message().await {
            if let Some(pb::node_event::Event::Sandbox(sb)) = &ev.event
                && sb.oom_kills > 0
            {
                self.note_oom_kills(sb);
            }
            // a failed sandbox comes with why (e.g. `OOMKilled: ...`)
            let (gone, failed, why) = match ev.event {
                Some(pb::node_event::Event::RemovedSandboxId(id)) => {
                    (Some(id), false, String::new())
                }
                Some(pb::node_event::Event::Sandbox(sb))
                    if sb.state == pb::SandboxState::Failed as i32 =>
                {
                    (Some(sb.sandbox_id), true, sb.message)
                }
                _ => (None, false, String::new()),
            };
            let Some(id) = gone else { continue };
            let (was_warm, failed_claim) = {
                let mut st = self.lock();
                st.warm_info.remove(&id);
                let mut was_warm = false;
                if let Some(pool) = st.warm_index.remove(&id)
                    && let Some(p) = st.pools.get_mut(&pool)
                {
                    was_warm = p.warm.remove(&id);
                }
                let claim = if failed {
                    st.claims
                        .values()
                        .find(|c| c.sandbox.id == id && !c.state.is_terminal())
                        .map(|c| c.id.clone())
                } else {
                    None
                };
                (was_warm, claim)
            };
            if failed && was_warm {
                // a dead warm sandbox only takes a slot: delete it, the pool refills
                self.release_sandbox(&node, &id, pb::ReleasePolicy::Delete)
                    .await;
            }
            if let Some(cid) = failed_claim {
                tracing::warn!(claim = %cid, sandbox = %id, reason = %why, "claimed sandbox failed");
                let _ = self.update_claim(&cid, |c| {
                    c.state = c.state.on(ClaimEvent::Fail)?;
                    c.failure = why.clone();
                    Ok(())
                });
            }
            if failed {
                self.wake.notify_one();
            }
        }
        tracing::debug!(node = %node, "node event stream closed");
    }

    /// The OOM kills a node reports for a sandbox, on its claim (the live
    /// one, or the one its death failed): watchers of the claim see them.
    fn note_oom_kills(&self, sb: &pb::SandboxInfo) {
        let claim = self
            .lock()
            .claims
            .values()
            .filter(|c| {
                c.sandbox.id == sb.sandbox_id
                    && c.oom_kills < sb.oom_kills
                    && (!c.state.is_terminal() || c.state == ClaimState::Failed)
            })
            .max_by_key(|c| c.created_ms)
            .map(|c| c.id.clone());
        if let Some(cid) = claim {
            tracing::warn!(claim = %cid, sandbox = %sb.sandbox_id, kills = sb.oom_kills, "OOM kill in a claimed sandbox");
            let _ = self.update_claim(&cid, |c| {
                c.oom_kills = c.oom_kills.max(sb.oom_kills);
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_jittered_up_to_the_cap_and_never_run_out() {
        let waits: Vec<Duration> = reconnect_backoff().take(50).collect();
        assert_eq!(waits.len(), 50, "the backoff never gives up");
        assert!(waits[0] >= Duration::from_millis(200), "{:?}", waits[0]);
        // jitter adds at most one more delay's worth
        assert!(waits.iter().all(|w| *w <= RECONNECT_MAX * 2), "{waits:?}");
        assert!(waits[20..].iter().all(|w| *w >= RECONNECT_MAX), "{waits:?}");
    }
}
