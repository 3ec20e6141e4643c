//! Recycling a released claim's sandbox (its pool's release policy is
//! `recycle`): the node resets it and it goes back to its pool's warm set,
//! keeping its id and address. Anything else (the pool gone or changed, the
//! claim on another image, the node refusing or failing the reset) deletes
//! it instead.

use sandpool_core::ReleasePolicy;
use sandpool_proto::v1 as pb;

use super::{ClaimRec, Scheduler};
use crate::traced;

impl Scheduler {
    /// Whether claim `c`'s sandbox may be recycled: its pool still exists,
    /// recycles, has room in its buffer (a full one would delete the surplus
    /// at once), and the claim ran the pool's image.
    pub(super) fn recyclable(&self, c: &ClaimRec) -> bool {
        let st = self.lock();
        st.pools.get(&c.pool).is_some_and(|p| {
            let buffer = p.warm.len() as u64 + u64::from(p.creating);
            p.rec.template.release_policy == ReleasePolicy::Recycle
                && (c.image.is_empty() || c.image == p.rec.template.image)
                && buffer < u64::from(p.rec.capacity.buffer_max)
        })
    }

    /// Recycle claim `c`'s sandbox back into its pool; false when it was not
    /// (the caller then deletes it).
    pub(super) async fn recycle_sandbox(&self, c: &ClaimRec) -> bool {
        let (node, id) = (c.sandbox.node.as_str(), c.sandbox.id.as_str());
        let _busy = self.busy(id);
        {
            let mut st = self.lock();
            st.touch(id);
            st.warm_index.remove(id);
            st.warm_info.remove(id);
        }
        let Ok(n) = self.node(node) else { return false };
        let req = pb::ReleaseRequest {
            sandbox_id: id.to_string(),
            policy: pb::ReleasePolicy::Recycle as i32,
        };
        let info = match n.client.clone().release(traced(req)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "recycle failed; deleting");
                return false;
            }
        };
        if info.state != pb::SandboxState::Warm as i32 {
            return false;
        }
        let mut st = self.lock();
        let Some(p) = st.pools.get_mut(&c.pool) else {
            return false;
        };
        p.warm.push(node, id);
        st.warm_index.insert(id.to_string(), c.pool.clone());
        st.warm_info.insert(id.to_string(), info);
        tracing::info!(sandbox = id, pool = %c.pool, "recycled into its pool");
        true
    }
}
