//! Pools and their replenishment (warm creates, placement).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sandpool_core::{
    Template,
    pool::{ImagePhase, pick_node},
    refill::{CpuTimes, demand_buffer, refill_decision, refill_slots},
};
use sandpool_proto::v1 as pb;

use super::{PoolEntry, PoolRec, Scheduler, State, new_sandbox_id, now_ms, template_to_pb};
use crate::{
    error::{Result, SchedError},
    store::Table,
    traced,
};

/// What one refill pass starts.
#[derive(Default)]
struct Plan {
    /// pools whose image the nodes are asked for, and the image
    prepares: Vec<(String, String)>,
    /// refill creates (pool, template)
    creates: Vec<(String, Template)>,
    /// idle sandboxes to delete (node, id)
    deletes: Vec<(String, String)>,
}

/// Plan pool `name`'s refill into `plan`: creates up to its demand target,
/// taking from the `free` refill slots; deletes past bufferMax.
fn plan_pool(
    name: &str,
    p: &mut PoolEntry,
    create_secs: f64,
    free: &mut u32,
    max_inflight: u32,
    plan: &mut Plan,
) {
    if p.last_error
        .as_ref()
        .is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(2))
    {
        return; // back off after a failed create
    }
    let c = p.counts();
    sandpool_telemetry::metrics::set_pool(name, c.total(), c.allocated, c.warm);
    let target = demand_buffer(
        &p.rec.capacity,
        p.demand.per_sec(Instant::now()),
        create_secs,
    );
    let d = refill_decision(&p.rec.capacity, c, target, max_inflight);
    if d > 0 && !p.image.is_ready() {
        // the image first: no create before the nodes have it
        if p.image.should_prepare(Instant::now(), IMAGE_RETRY) {
            p.image = ImagePhase::Pulling;
            plan.prepares
                .push((name.to_string(), p.rec.template.image.clone()));
        }
        return;
    }
    if d > 0 {
        let n = (d as u32).min(*free);
        *free -= n;
        if n > 0 {
            sandpool_telemetry::metrics::refilled(name, u64::from(n));
        }
        p.creating += n;
        for _ in 0..n {
            plan.creates
                .push((name.to_string(), p.rec.template.clone()));
        }
    } else if d < 0 {
        for _ in 0..(-d) {
            if let Some(taken) = p.warm.take_idle_for_delete() {
                plan.deletes.push(taken);
            }
        }
    }
}

/// How long a pool whose image failed waits before asking again.
const IMAGE_RETRY: Duration = Duration::from_secs(10);
/// The longest one node may take to pull or build a pool's image.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl Scheduler {
    pub fn apply_pool(&self, rec: PoolRec) -> Result<PoolRec> {
        sandpool_core::validate_dns_label("pool name", &rec.name)
            .map_err(|e| SchedError::Invalid(e.to_string()))?;
        if rec.template.image.trim().is_empty() {
            return Err(SchedError::Invalid("pool template needs an image".into()));
        }
        rec.capacity.validate()?;
        self.store.put(Table::Pools, &rec.name, &rec)?;
        {
            let mut st = self.lock();
            match st.pools.get_mut(&rec.name) {
                Some(p) => {
                    if p.rec.template.image != rec.template.image {
                        p.image = ImagePhase::Pending;
                    }
                    if p.rec.template != rec.template {
                        // a new template's sandboxes have not failed yet
                        p.ready = Default::default();
                    }
                    p.rec = rec.clone();
                }
                None => {
                    st.pools
                        .insert(rec.name.clone(), PoolEntry::new(rec.clone()));
                }
            }
        }
        self.wake.notify_one();
        Ok(rec)
    }

    pub fn pool_status(&self, name: &str) -> Result<(PoolRec, pb::PoolStatus)> {
        let st = self.lock();
        let p = st
            .pools
            .get(name)
            .ok_or_else(|| SchedError::PoolNotFound(name.to_string()))?;
        let c = p.counts();
        let (ready_failure, ready_failure_unix_ms) = p.ready.failure().unwrap_or_default();
        Ok((
            p.rec.clone(),
            pb::PoolStatus {
                total: c.warm + c.allocated,
                allocated: c.allocated,
                available: c.warm,
                image_phase: p.image.shown(c.warm + c.allocated).into(),
                // why the image failed, else why the last create did
                message: match (p.image.message(), &p.last_error) {
                    ("", Some((_, e))) => e.clone(),
                    (m, _) => m.to_string(),
                },
                ready_failure: ready_failure.to_string(),
                ready_failure_unix_ms,
            },
        ))
    }

    /// A gateway's report on whether a sandbox of pool `name` became ready
    /// (its readyCmd): a failure shows in the pool's status until a later
    /// success clears it.
    pub fn report_pool_ready(&self, name: &str, ready: bool, message: &str) -> Result<()> {
        let mut st = self.lock();
        let p = st
            .pools
            .get_mut(name)
            .ok_or_else(|| SchedError::PoolNotFound(name.to_string()))?;
        if !ready {
            tracing::warn!(
                pool = name,
                message,
                "a sandbox of the pool did not become ready"
            );
        }
        Ok(p.ready.report(ready, message, now_ms())?)
    }

    pub fn pools(&self) -> Vec<String> {
        self.lock().pools.keys().cloned().collect()
    }

    /// Delete a pool: its warm sandboxes go; claimed ones stay until released.
    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        let warm: Vec<(String, String)> = {
            let mut st = self.lock();
            let mut p = st
                .pools
                .remove(name)
                .ok_or_else(|| SchedError::PoolNotFound(name.to_string()))?;
            let warm: Vec<(String, String)> = std::iter::from_fn(|| p.warm.take()).collect();
            // busy from this moment (release_sandbox clears it when done)
            st.busy.extend(warm.iter().map(|(_, id)| id.clone()));
            warm
        };
        self.store.delete(Table::Pools, name)?;
        for (node, id) in warm {
            self.release_sandbox(&node, &id, pb::ReleasePolicy::Delete)
                .await;
        }
        Ok(())
    }

    pub(super) async fn replenish_loop(self: Arc<Self>) {
        loop {
            self.replenish_once();
            tokio::select! {
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.cfg.tick) => {},
            }
        }
    }

    /// The machine's idle cores (`None` until known, or off Linux): the
    /// refill concurrency follows them.
    fn idle_cores(&self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let now = CpuTimes::parse_proc_stat(&text)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        self.lock().pacing.cpu.sample(now, cores)
    }

    /// One pass of the pool-sizing decision over every pool: each pool's
    /// buffer target follows its claim rate; refill creates over all pools
    /// are bounded by free CPU, and by one while claims are in flight.
    pub(super) fn replenish_once(self: &Arc<Self>) {
        let idle = self.idle_cores();
        let mut plan = Plan::default();
        {
            let mut st = self.lock();
            let slots = refill_slots(idle, self.cfg.max_inflight, st.pacing.claims_in_flight);
            let mut free = slots.saturating_sub(st.pacing.refilling);
            let create_secs = st.pacing.create_time.secs();
            let names: Vec<String> = st.pools.keys().cloned().collect();
            for name in names {
                if let Some(p) = st.pools.get_mut(&name) {
                    plan_pool(
                        &name,
                        p,
                        create_secs,
                        &mut free,
                        self.cfg.max_inflight,
                        &mut plan,
                    );
                }
            }
            st.pacing.refilling += plan.creates.len() as u32;
            st.busy
                .extend(plan.deletes.iter().map(|(_, id)| id.clone()));
        }
        for (pool, image) in plan.prepares {
            let s = Arc::clone(self);
            tokio::spawn(async move { s.prepare_image(&pool, &image).await });
        }
        for (pool, template) in plan.creates {
            let s = Arc::clone(self);
            tokio::spawn(async move { s.create_warm(&pool, &template).await });
        }
        for (node, id) in plan.deletes {
            let s = Arc::clone(self);
            tokio::spawn(async move {
                s.release_sandbox(&node, &id, pb::ReleasePolicy::Delete)
                    .await
            });
        }
    }

    pub(super) fn place(&self) -> Result<String> {
        let st = self.lock();
        let loads: Vec<(&str, u32, u32)> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    st.load.get(&n.name).copied().unwrap_or(0),
                    n.max,
                )
            })
            .collect();
        pick_node(loads)
            .map(str::to_string)
            .ok_or(SchedError::NoCapacity)
    }

    /// Create a sandbox on the least loaded node. Its id is chosen here and
    /// marked busy by the caller's guard, so no resync adopts it half-way.
    pub(super) async fn create_on_node(
        &self,
        pool: &str,
        template: &Template,
        id: &str,
        image_auth: Option<pb::ImageAuth>,
    ) -> Result<(String, pb::SandboxInfo)> {
        let node = self.place()?;
        *self.lock().load.entry(node.clone()).or_default() += 1;
        let n = self.node(&node)?;
        let res = n
            .client
            .clone()
            .create_sandbox(traced(pb::CreateSandboxRequest {
                pool: pool.to_string(),
                template: Some(template_to_pb(template)),
                sandbox_id: id.to_string(),
                image_auth,
            }))
            .await;
        match res {
            Ok(r) => Ok((node, r.into_inner())),
            Err(status) => {
                if let Some(l) = self.lock().load.get_mut(&node) {
                    *l = l.saturating_sub(1);
                }
                Err(SchedError::Node { node, status })
            }
        }
    }

    /// Ask every node for a pool's `image` (pulled or built when absent),
    /// then mark the pool's image ready, or failed with the first node's
    /// reason. A node without the call (it pulls on create) counts as ready.
    pub(super) async fn prepare_image(&self, pool: &str, image: &str) {
        let mut failure = None;
        for n in &self.nodes {
            let mut client = n.client.clone();
            let call = client.prepare_image(traced(pb::PrepareImageRequest {
                image: image.to_string(),
            }));
            let why = match tokio::time::timeout(PREPARE_TIMEOUT, call).await {
                Ok(Ok(_)) => continue,
                Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => continue,
                Ok(Err(s)) => s.message().to_string(),
                Err(_) => format!("no answer within {PREPARE_TIMEOUT:?}"),
            };
            failure = Some(format!("image {image} on node {}: {why}", n.name));
            break;
        }
        {
            let mut st = self.lock();
            if let Some(p) = st.pools.get_mut(pool)
                && p.rec.template.image == image
            {
                p.image = match failure {
                    None => ImagePhase::Ready,
                    Some(message) => {
                        tracing::warn!(pool, %message, "pool image not available");
                        ImagePhase::Failed {
                            message,
                            at: Instant::now(),
                        }
                    }
                };
            }
        }
        self.wake.notify_one();
    }

    /// A refill create (counted in [`State::pacing`] by the pass that
    /// started it).
    pub(super) async fn create_warm(&self, pool: &str, template: &Template) {
        let id = new_sandbox_id();
        let _busy = self.busy(&id);
        let started = Instant::now();
        let res = self.create_on_node(pool, template, &id, None).await;
        let mut orphan = None;
        {
            let mut st = self.lock();
            let State {
                pools,
                warm_index,
                warm_info,
                pacing,
                ..
            } = &mut *st;
            pacing.refilling = pacing.refilling.saturating_sub(1);
            if res.is_ok() {
                pacing.create_time.observe(started.elapsed());
            }
            match (pools.get_mut(pool), res) {
                (Some(p), Ok((node, sb))) => {
                    p.creating = p.creating.saturating_sub(1);
                    p.last_error = None;
                    p.warm.push(&node, &sb.sandbox_id);
                    warm_index.insert(sb.sandbox_id.clone(), pool.to_string());
                    warm_info.insert(sb.sandbox_id.clone(), sb);
                }
                (Some(p), Err(e)) => {
                    p.creating = p.creating.saturating_sub(1);
                    tracing::warn!(pool, error = %e, "warm create failed");
                    p.last_error = Some((Instant::now(), e.to_string()));
                }
                (None, Ok((node, sb))) => orphan = Some((node, sb.sandbox_id)),
                (None, Err(_)) => {}
            }
        }
        if let Some((node, id)) = orphan {
            self.release_sandbox(&node, &id, pb::ReleasePolicy::Delete)
                .await;
        }
        self.wake.notify_one();
    }
}
