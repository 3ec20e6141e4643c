//! Recycling a released claim's sandbox (its pool's release policy is
//! `recycle`): the node resets it and it goes back to its pool's warm set,
//! keeping its id and address, in the background of the release. While the
//! node resets it, it counts as one
//! of the pool's creations (the refill does not start a replacement next to
//! it). Anything else (the pool gone, changed or with a full buffer, the
//! claim on another image, the node refusing or failing the reset) deletes
//! it instead.

use sandpool_core::ReleasePolicy;
use sandpool_proto::v1 as pb;

use super::{ClaimRec, Scheduler, State};
use crate::traced;

impl State {
    /// Whether claim `c`'s sandbox is to be recycled (its pool still exists,
    /// recycles, has room in its buffer, and the claim ran the pool's
    /// image); if so it counts as a creation of the pool until
    /// [`Scheduler::recycle_sandbox`] ends.
    pub(super) fn begin_recycle(&mut self, c: &ClaimRec) -> bool {
        let Some(p) = self.pools.get_mut(&c.pool) else {
            return false;
        };
        let buffer = p.warm.len() as u64 + u64::from(p.creating);
        let recycle = p.rec.template.release_policy == ReleasePolicy::Recycle
            && (c.image.is_empty() || c.image == p.rec.template.image)
            && buffer < u64::from(p.rec.capacity.buffer_max);
        if recycle {
            p.creating += 1;
        }
        recycle
    }
}

impl Scheduler {
    /// Recycle claim `c`'s sandbox (after [`State::begin_recycle`]) in a
    /// task of its own, deleting it when that fails: the release that
    /// started it does not wait for the node's reset. The sandbox stays busy
    /// (see [`State::busy`]) until the task is done.
    pub(super) async fn recycle_in_background(&self, c: ClaimRec) {
        let Some(me) = self.me.upgrade() else {
            // shutting down: no task to outlive us, so do it here
            if !self.recycle_sandbox(&c).await {
                self.release_sandbox(&c.sandbox.node, &c.sandbox.id, pb::ReleasePolicy::Delete)
                    .await;
            }
            return;
        };
        tokio::spawn(async move {
            if !me.recycle_sandbox(&c).await {
                me.release_sandbox(&c.sandbox.node, &c.sandbox.id, pb::ReleasePolicy::Delete)
                    .await;
            }
            me.wake.notify_one();
        });
    }

    /// Recycle claim `c`'s sandbox (after [`State::begin_recycle`]) back
    /// into its pool; false when it was not (the caller then deletes it).
    pub(super) async fn recycle_sandbox(&self, c: &ClaimRec) -> bool {
        let (node, id) = (c.sandbox.node.as_str(), c.sandbox.id.as_str());
        let info = {
            let _busy = self.busy(id);
            self.reset_on_node(node, id).await
        };
        let mut st = self.lock();
        let Some(p) = st.pools.get_mut(&c.pool) else {
            return false;
        };
        p.creating = p.creating.saturating_sub(1);
        let Some(info) = info else { return false };
        p.warm.push(node, id);
        st.warm_index.insert(id.to_string(), c.pool.clone());
        st.warm_info.insert(id.to_string(), info);
        st.touch(id);
        tracing::info!(sandbox = id, pool = %c.pool, "recycled into its pool");
        true
    }

    /// Ask `node` to recycle sandbox `id`: what it is now when it came back
    /// warm.
    async fn reset_on_node(&self, node: &str, id: &str) -> Option<pb::SandboxInfo> {
        {
            let mut st = self.lock();
            st.touch(id);
            st.warm_index.remove(id);
            st.warm_info.remove(id);
        }
        let n = self.node(node).ok()?;
        let req = pb::ReleaseRequest {
            sandbox_id: id.to_string(),
            policy: pb::ReleasePolicy::Recycle as i32,
        };
        match n.client.clone().release(traced(req)).await {
            Ok(r) if r.get_ref().state == pb::SandboxState::Warm as i32 => Some(r.into_inner()),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "recycle failed; deleting");
                None
            }
        }
    }
}
