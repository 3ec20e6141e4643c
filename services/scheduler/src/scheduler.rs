//! Scheduler state and I/O.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use sandpool_core::{
    Template, batch,
    claim::{ClaimEvent, ClaimState, is_expired},
    node_sync::{self, NodeSandbox, NodeState},
    pool::{CapacitySpec, PoolCounts, WarmSet, pick_node, scale_decision},
};
use sandpool_proto::{
    auth::{AuthChannel, ServiceToken},
    v1::{self as pb, node_agent_client::NodeAgentClient},
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{
    error::{Result, SchedError},
    store::{Store, Table},
    traced,
};

/// Most claims one restore (fork) makes.
pub const MAX_RESTORE: u32 = 64;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub store_path: PathBuf,
    /// gRPC addresses of node agents (`http://host:port`).
    pub nodes: Vec<String>,
    /// Concurrent warm creations per pool.
    pub max_inflight: u32,
    pub tick: Duration,
    /// Pause a bound claim whose runtime has served no request (and runs no
    /// command) for this long; `None` = never.
    pub idle_pause: Option<Duration>,
    /// Bearer token for the node agents (`None`: they require none).
    pub service_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolRec {
    pub name: String,
    pub template: Template,
    pub capacity: CapacitySpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxRef {
    pub id: String,
    pub node: String,
    pub ip: String,
    pub port: u32,
    pub token: String,
    pub runtime_class: i32,
}

/// When a claim made at `now_ms` with a TTL of `ttl_seconds` expires (0: no
/// TTL, never). A TTL too long for the clock saturates to never as well
/// instead of overflowing.
pub fn expiry_ms(now_ms: i64, ttl_seconds: u64) -> i64 {
    if ttl_seconds == 0 {
        return 0;
    }
    i64::try_from(ttl_seconds).map_or(i64::MAX, |t| now_ms.saturating_add(t.saturating_mul(1000)))
}

impl SandboxRef {
    /// Where node `node`'s sandbox `info` is reached.
    pub fn of(node: &str, info: &pb::SandboxInfo) -> SandboxRef {
        SandboxRef {
            id: info.sandbox_id.clone(),
            node: node.to_string(),
            ip: info.ip.clone(),
            port: info.runtime_port,
            token: info.access_token.clone(),
            runtime_class: info.runtime_class,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClaimRec {
    pub id: String,
    pub pool: String,
    pub state: ClaimState,
    pub sandbox: SandboxRef,
    pub created_ms: i64,
    pub expires_ms: i64,
    #[serde(default)]
    pub paused_remaining_ms: i64,
    pub metadata: BTreeMap<String, String>,
    pub cold: bool,
    pub entrypoint: Vec<String>,
    pub image: String,
    pub claim_us: u64,
    #[serde(default)]
    pub batch: Option<String>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn template_to_pb(t: &Template) -> pb::SandboxTemplate {
    pb::SandboxTemplate {
        image: t.image.clone(),
        command: t.command.clone(),
        env: t.env.clone().into_iter().collect(),
        resources: Some(pb::Resources {
            cpu: t.cpu.clone(),
            memory: t.memory.clone(),
            pids: t.pids,
        }),
        runtime_class: match t.runtime_class.as_str() {
            "runsc" => pb::RuntimeClass::Runsc as i32,
            _ => pb::RuntimeClass::Runc as i32,
        },
        release_policy: match t.release_policy.as_str() {
            "recycle" => pb::ReleasePolicy::Recycle as i32,
            _ => pb::ReleasePolicy::Delete as i32,
        },
        labels: Default::default(),
        run_as_root: t.run_as_root,
        checkpointable: t.checkpointable,
    }
}

pub fn template_from_pb(t: &pb::SandboxTemplate) -> Result<Template> {
    let r = t.resources.clone().unwrap_or_default();
    Ok(Template {
        image: t.image.clone(),
        command: t.command.clone(),
        env: t.env.clone().into_iter().collect(),
        cpu: r.cpu,
        memory: r.memory,
        pids: r.pids,
        runtime_class: match pb::RuntimeClass::try_from(t.runtime_class) {
            Ok(pb::RuntimeClass::Runsc) => "runsc".into(),
            Ok(_) => "runc".into(),
            Err(_) => {
                return Err(SchedError::Invalid(format!(
                    "unknown runtime class {}",
                    t.runtime_class
                )));
            }
        },
        release_policy: match pb::ReleasePolicy::try_from(t.release_policy) {
            Ok(pb::ReleasePolicy::Recycle) => "recycle".into(),
            Ok(_) => "delete".into(),
            Err(_) => {
                return Err(SchedError::Invalid(format!(
                    "unknown release policy {}",
                    t.release_policy
                )));
            }
        },
        run_as_root: t.run_as_root,
        checkpointable: t.checkpointable,
    })
}

struct Node {
    name: String,
    client: NodeAgentClient<AuthChannel>,
    max: u32,
}

struct PoolEntry {
    rec: PoolRec,
    warm: WarmSet,
    creating: u32,
    allocated: u32,
    last_error: Option<(Instant, String)>,
}

impl PoolEntry {
    fn counts(&self) -> PoolCounts {
        PoolCounts {
            warm: self.warm.len() as u32,
            creating: self.creating,
            allocated: self.allocated,
        }
    }
}

#[derive(Default)]
struct State {
    pools: BTreeMap<String, PoolEntry>,
    claims: HashMap<String, ClaimRec>,
    /// sandboxes per node (all states), for placement
    load: HashMap<String, u32>,
    /// warm sandbox id -> pool (to find them on watch removals)
    warm_index: HashMap<String, String>,
    /// what the node said about each warm sandbox (saves a round trip per claim)
    warm_info: HashMap<String, pb::SandboxInfo>,
    /// sandboxes an in-flight claim, create or release is working on: a
    /// node resync leaves them alone
    busy: HashSet<String>,
    /// when the books last changed for a sandbox (ms): a resync ignores
    /// sandboxes changed after its node list was taken (the list is stale for them)
    touched: HashMap<String, i64>,
    /// caller-chosen claim ids being made (a retry must not make a second one)
    claiming: HashSet<String>,
}

impl State {
    fn touch(&mut self, id: &str) {
        self.touched.insert(id.to_string(), now_ms());
    }
}

/// Marks a sandbox busy until dropped.
struct Busy<'a> {
    st: &'a Mutex<State>,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        st.busy.remove(&self.id);
        st.touch(&self.id);
    }
}

/// A caller-chosen claim id being made, until dropped.
struct Claiming<'a> {
    st: &'a Mutex<State>,
    id: String,
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.st
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claiming
            .remove(&self.id);
    }
}

fn new_sandbox_id() -> String {
    format!("sb-{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}

fn node_state(state: i32) -> NodeState {
    match pb::SandboxState::try_from(state) {
        Ok(pb::SandboxState::Creating) => NodeState::Creating,
        Ok(pb::SandboxState::Warm) => NodeState::Warm,
        Ok(pb::SandboxState::Claimed | pb::SandboxState::Paused) => NodeState::Claimed,
        _ => NodeState::Dead,
    }
}

pub struct Scheduler {
    store: Arc<Store>,
    nodes: Vec<Node>,
    st: Mutex<State>,
    wake: Notify,
    cfg: SchedulerConfig,
}

fn node_err(node: &str) -> impl Fn(tonic::Status) -> SchedError + '_ {
    move |status| SchedError::Node {
        node: node.to_string(),
        status,
    }
}

impl Scheduler {
    /// Connect to the nodes, load the store and reconcile with what the nodes run.
    pub async fn start(cfg: SchedulerConfig) -> Result<Arc<Scheduler>> {
        let store = Arc::new(Store::open(&cfg.store_path)?);
        let token = ServiceToken::new(cfg.service_token.as_deref())
            .map_err(|e| SchedError::Invalid(e.to_string()))?;
        let mut nodes = Vec::new();
        let mut node_sandboxes = Vec::new();
        for addr in &cfg.nodes {
            let ch = tonic::transport::Endpoint::from_shared(addr.clone())
                .map_err(|e| SchedError::Invalid(format!("node address {addr}: {e}")))?
                .tcp_nodelay(true)
                // a dead peer breaks calls and the watch instead of hanging them
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect()
                .await
                .map_err(|e| SchedError::Node { node: addr.clone(), status: tonic::Status::unavailable(e.to_string()) })?;
            let mut client = NodeAgentClient::with_interceptor(ch, token.clone());
            let mut watch = client
                .watch(pb::WatchRequest {})
                .await
                .map_err(node_err(addr))?
                .into_inner();
            let cap = match watch.message().await.map_err(node_err(addr))? {
                Some(pb::NodeEvent {
                    event: Some(pb::node_event::Event::Capacity(c)),
                }) => c,
                _ => {
                    return Err(SchedError::Node {
                        node: addr.clone(),
                        status: tonic::Status::internal("watch did not start with capacity"),
                    });
                }
            };
            let list = client
                .list_sandboxes(pb::ListSandboxesRequest {
                    pool: String::new(),
                })
                .await
                .map_err(node_err(addr))?
                .into_inner();
            node_sandboxes.push((cap.node.clone(), list.sandboxes));
            nodes.push((
                Node {
                    name: cap.node.clone(),
                    client,
                    max: cap.max_sandboxes,
                },
                watch,
            ));
        }
        let (nodes, watches): (Vec<Node>, Vec<_>) = nodes.into_iter().unzip();
        let sched = Arc::new(Scheduler {
            store,
            nodes,
            st: Mutex::new(State::default()),
            wake: Notify::new(),
            cfg,
        });
        sched.reconcile(node_sandboxes).await?;
        for (i, w) in watches.into_iter().enumerate() {
            let s = Arc::clone(&sched);
            tokio::spawn(async move { s.follow_node(i, w).await });
        }
        let s = Arc::clone(&sched);
        tokio::spawn(async move { s.replenish_loop().await });
        let s = Arc::clone(&sched);
        tokio::spawn(async move { s.reap_loop().await });
        Ok(sched)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| SchedError::Invalid(format!("unknown node {name}")))
    }

    /// Rebuild pools/claims from the store and the nodes' sandboxes.
    async fn reconcile(&self, node_sandboxes: Vec<(String, Vec<pb::SandboxInfo>)>) -> Result<()> {
        let pools: Vec<PoolRec> = self.store.all(Table::Pools)?;
        let claims: Vec<ClaimRec> = self.store.all(Table::Claims)?;
        let mut orphans = Vec::new();
        let mut lost_claims = Vec::new();
        {
            let mut st = self.lock();
            for p in pools {
                st.pools.insert(
                    p.name.clone(),
                    PoolEntry {
                        rec: p,
                        warm: WarmSet::default(),
                        creating: 0,
                        allocated: 0,
                        last_error: None,
                    },
                );
            }
            let claimed: HashMap<String, String> = claims
                .iter()
                .map(|c| (c.sandbox.id.clone(), c.id.clone()))
                .collect();
            let mut alive = std::collections::HashSet::new();
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
    async fn follow_node(&self, idx: usize, first: tonic::Streaming<pb::NodeEvent>) {
        let node = self.nodes[idx].name.clone();
        let mut watch = Some(first);
        loop {
            if let Some(w) = watch.take() {
                self.follow_events(idx, w).await;
                tracing::warn!(node = %node, "node watch ended; reconnecting");
            }
            let mut backoff = Duration::from_millis(200);
            loop {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
    async fn resync_node(&self, idx: usize) -> Result<()> {
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
    async fn follow_events(&self, idx: usize, mut watch: tonic::Streaming<pb::NodeEvent>) {
        let node = self.nodes[idx].name.clone();
        while let Ok(Some(ev)) = watch.message().await {
            let (gone, failed) = match ev.event {
                Some(pb::node_event::Event::RemovedSandboxId(id)) => (Some(id), false),
                Some(pb::node_event::Event::Sandbox(sb))
                    if sb.state == pb::SandboxState::Failed as i32 =>
                {
                    (Some(sb.sandbox_id), true)
                }
                _ => (None, false),
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
                tracing::warn!(claim = %cid, sandbox = %id, "claimed sandbox failed");
                let _ = self.update_claim(&cid, |c| {
                    c.state = c.state.on(ClaimEvent::Fail)?;
                    Ok(())
                });
            }
            if failed {
                self.wake.notify_one();
            }
        }
        tracing::debug!(node = %node, "node event stream closed");
    }

    /// Mark `id` busy (see [`State::busy`]) until the guard drops.
    fn busy(&self, id: &str) -> Busy<'_> {
        let mut st = self.lock();
        st.busy.insert(id.to_string());
        st.touch(id);
        drop(st);
        Busy {
            st: &self.st,
            id: id.to_string(),
        }
    }

    // ----------------------------------------------------------------- pools

    pub fn apply_pool(&self, rec: PoolRec) -> Result<PoolRec> {
        if rec.name.is_empty()
            || rec.name.len() > 63
            || !rec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(SchedError::Invalid(format!("bad pool name {:?}", rec.name)));
        }
        if rec.template.image.trim().is_empty() {
            return Err(SchedError::Invalid("pool template needs an image".into()));
        }
        rec.capacity.validate()?;
        self.store.put(Table::Pools, &rec.name, &rec)?;
        {
            let mut st = self.lock();
            match st.pools.get_mut(&rec.name) {
                Some(p) => p.rec = rec.clone(),
                None => {
                    st.pools.insert(
                        rec.name.clone(),
                        PoolEntry {
                            rec: rec.clone(),
                            warm: WarmSet::default(),
                            creating: 0,
                            allocated: 0,
                            last_error: None,
                        },
                    );
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
        Ok((
            p.rec.clone(),
            pb::PoolStatus {
                total: c.warm + c.allocated,
                allocated: c.allocated,
                available: c.warm,
            },
        ))
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

    async fn release_sandbox(&self, node: &str, id: &str, policy: pb::ReleasePolicy) {
        let _busy = self.busy(id);
        {
            let mut st = self.lock();
            st.touch(id);
            st.warm_index.remove(id);
            st.warm_info.remove(id);
            if policy == pb::ReleasePolicy::Delete
                && let Some(l) = st.load.get_mut(node)
            {
                *l = l.saturating_sub(1);
            }
        }
        if let Ok(n) = self.node(node)
            && let Err(e) = n
                .client
                .clone()
                .release(traced(pb::ReleaseRequest {
                    sandbox_id: id.to_string(),
                    policy: policy as i32,
                }))
                .await
        {
            tracing::warn!(sandbox = id, error = %e, "release failed");
        }
    }

    // ------------------------------------------------------------ replenish

    async fn replenish_loop(self: Arc<Self>) {
        loop {
            self.replenish_once();
            tokio::select! {
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(self.cfg.tick) => {},
            }
        }
    }

    /// One pass of the pool-sizing decision over every pool.
    fn replenish_once(self: &Arc<Self>) {
        let mut creates = Vec::new();
        let mut deletes = Vec::new();
        {
            let mut st = self.lock();
            let mut st_busy_ids = Vec::new();
            let names: Vec<String> = st.pools.keys().cloned().collect();
            for name in names {
                let Some(p) = st.pools.get_mut(&name) else {
                    continue;
                };
                if p.last_error
                    .as_ref()
                    .is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(2))
                {
                    continue; // back off after a failed create
                }
                let c = p.counts();
                sandpool_telemetry::metrics::set_pool(&name, c.total(), c.allocated, c.warm);
                let d = scale_decision(&p.rec.capacity, c, self.cfg.max_inflight);
                if d > 0 {
                    sandpool_telemetry::metrics::refilled(&name, d as u64);
                    p.creating += d as u32;
                    for _ in 0..d {
                        creates.push((name.clone(), p.rec.template.clone()));
                    }
                } else if d < 0 {
                    for _ in 0..(-d) {
                        if let Some((node, id)) = p.warm.take_idle_for_delete() {
                            st_busy_ids.push(id.clone());
                            deletes.push((node, id));
                        }
                    }
                }
            }
            st.busy.extend(st_busy_ids);
        }
        for (pool, template) in creates {
            let s = Arc::clone(self);
            tokio::spawn(async move { s.create_warm(&pool, &template).await });
        }
        for (node, id) in deletes {
            let s = Arc::clone(self);
            tokio::spawn(async move {
                s.release_sandbox(&node, &id, pb::ReleasePolicy::Delete)
                    .await
            });
        }
    }

    fn place(&self) -> Result<String> {
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
    async fn create_on_node(
        &self,
        pool: &str,
        template: &Template,
        id: &str,
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

    async fn create_warm(&self, pool: &str, template: &Template) {
        let id = new_sandbox_id();
        let _busy = self.busy(&id);
        let res = self.create_on_node(pool, template, &id).await;
        let mut orphan = None;
        {
            let mut st = self.lock();
            let State {
                pools,
                warm_index,
                warm_info,
                ..
            } = &mut *st;
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

    // ---------------------------------------------------------------- claims

    /// Assign a sandbox: a warm one from the pool in O(1), else a cold start
    /// (unless `pool_only`); then inject the process and record the claim.
    #[tracing::instrument(name = "claim", skip_all, fields(pool = %req.pool))]
    pub async fn claim(&self, req: pb::ClaimRequest) -> Result<ClaimRec> {
        let t0 = Instant::now();
        let pool = if req.pool.is_empty() {
            "-".to_string()
        } else {
            req.pool.clone()
        };
        let res = self.claim_inner(req, t0).await;
        let outcome = match &res {
            Ok(c) if c.cold => "cold",
            Ok(_) => "warm",
            Err(SchedError::Exhausted(_)) => "exhausted",
            Err(_) => "error",
        };
        sandpool_telemetry::metrics::observe_claim(&pool, outcome, t0.elapsed());
        if let Err(e) = &res {
            sandpool_telemetry::metrics::error("scheduler", e.kind());
        }
        res
    }

    async fn claim_inner(&self, req: pb::ClaimRequest, t0: Instant) -> Result<ClaimRec> {
        let mut _claiming = None;
        if !req.claim_id.is_empty() {
            if req.claim_id.len() > 64
                || !req
                    .claim_id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(SchedError::Invalid(format!(
                    "bad claim id {:?}",
                    req.claim_id
                )));
            }
            let mut st = self.lock();
            if let Some(c) = st.claims.get(&req.claim_id) {
                return Ok(c.clone()); // idempotent retry
            }
            // a retry while the first attempt is still running must not make a second claim
            if !st.claiming.insert(req.claim_id.clone()) {
                return Err(SchedError::Conflict(format!(
                    "claim {} is still being made; retry",
                    req.claim_id
                )));
            }
            _claiming = Some(Claiming {
                st: &self.st,
                id: req.claim_id.clone(),
            });
        }
        let claim_id = if req.claim_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            req.claim_id.clone()
        };
        let (template, taken) = if req.pool.is_empty() {
            let t = req
                .template
                .as_ref()
                .ok_or_else(|| SchedError::Invalid("either pool or template is required".into()))?;
            (template_from_pb(t)?, None)
        } else {
            let mut st = self.lock();
            let State {
                pools,
                warm_index,
                warm_info,
                busy,
                touched,
                ..
            } = &mut *st;
            let p = pools
                .get_mut(&req.pool)
                .ok_or_else(|| SchedError::PoolNotFound(req.pool.clone()))?;
            let taken = p.warm.take().map(|(node, id)| {
                busy.insert(id.clone());
                touched.insert(id.clone(), now_ms());
                warm_index.remove(&id);
                let info = warm_info.remove(&id);
                (node, id, info)
            });
            if taken.is_none() && req.pool_only {
                return Err(SchedError::Exhausted(req.pool.clone()));
            }
            p.allocated += 1;
            (p.rec.template.clone(), taken)
        };
        self.wake.notify_one();
        // the sandbox stays busy (no resync touches it) until the claim is booked
        let cold_id = new_sandbox_id();
        let _busy = match &taken {
            Some((_, id, _)) => Busy {
                st: &self.st,
                id: id.clone(),
            },
            None => self.busy(&cold_id),
        };
        let tracing_span = tracing::info_span!("scheduler.assign", warm = taken.is_some());
        let assigned = tracing::Instrument::instrument(
            async {
                match taken {
                    Some((node, _, Some(info))) => Ok::<_, SchedError>((node, info, false)),
                    Some((node, id, None)) => {
                        let n = self.node(&node)?;
                        let info = n
                            .client
                            .clone()
                            .get_sandbox(traced(pb::SandboxRef {
                                sandbox_id: id.clone(),
                            }))
                            .await
                            .map_err(node_err(&node))?
                            .into_inner();
                        Ok::<_, SchedError>((node, info, false))
                    }
                    None => {
                        let (node, info) =
                            self.create_on_node(&req.pool, &template, &cold_id).await?;
                        Ok((node, info, true))
                    }
                }
            },
            tracing_span,
        )
        .await;
        let (node, info, cold) = match assigned {
            Ok(a) => a,
            Err(e) => {
                self.unallocate(&req.pool);
                return Err(e);
            }
        };
        // in-place image upgrade: the same sandbox, restarted on another image
        let (info, image) = if req.image.is_empty() || req.image == template.image {
            (info, template.image.clone())
        } else {
            let upgrade = async {
                let n = self.node(&node)?;
                let span = tracing::info_span!("scheduler.upgrade", image = %req.image);
                let up = pb::UpgradeRequest {
                    sandbox_id: info.sandbox_id.clone(),
                    image: req.image.clone(),
                };
                tracing::Instrument::instrument(n.client.clone().upgrade(traced(up)), span)
                    .await
                    .map_err(node_err(&node))
            };
            match upgrade.await {
                Ok(r) => (r.into_inner(), req.image.clone()),
                Err(e) => {
                    self.unallocate(&req.pool);
                    self.release_sandbox(&node, &info.sandbox_id, pb::ReleasePolicy::Delete)
                        .await;
                    return Err(e);
                }
            }
        };
        let sandbox = SandboxRef::of(&node, &info);
        // Inject the entrypoint (request's, else the template's default),
        // while the claim record is written durably in parallel.
        let mut process = req.process.clone().unwrap_or_default();
        if process.argv.is_empty() {
            process.argv = template.command.clone();
        }
        let now = now_ms();
        let rec = ClaimRec {
            id: claim_id.clone(),
            pool: req.pool.clone(),
            state: ClaimState::Pending.on(ClaimEvent::Bind)?,
            sandbox,
            created_ms: now,
            expires_ms: expiry_ms(now, req.ttl_seconds),
            paused_remaining_ms: 0,
            metadata: req.metadata.clone().into_iter().collect(),
            cold,
            entrypoint: process.argv.clone(),
            image,
            claim_us: 0,
            batch: None,
        };
        let inject = async {
            if process.argv.is_empty() {
                return Ok(());
            }
            let n = self.node(&node)?;
            let span = tracing::info_span!("scheduler.inject");
            tracing::Instrument::instrument(
                n.client.clone().inject(traced(pb::NodeInjectRequest {
                    sandbox_id: rec.sandbox.id.clone(),
                    process: Some(process),
                })),
                span,
            )
            .await
            .map(|_| ())
            .map_err(|status| SchedError::Node {
                node: node.clone(),
                status,
            })
        };
        let persist = {
            let s = Arc::clone(&self.store);
            let r = rec.clone();
            async move {
                tokio::task::spawn_blocking(move || s.put(Table::Claims, &r.id, &r))
                    .await
                    .map_err(|e| SchedError::Store(e.to_string()))?
            }
        };
        let (injected, persisted) = tokio::join!(inject, persist);
        let mut result = injected.and(persisted);
        if result.is_ok() && !req.mounts.is_empty() {
            let n = self.node(&node)?;
            for m in &req.mounts {
                let mr = pb::MountRequest {
                    sandbox_id: rec.sandbox.id.clone(),
                    host_path: m.volume.clone(),
                    mount_path: m.mount_path.clone(),
                    read_only: m.read_only,
                };
                if let Err(status) = n.client.clone().mount(traced(mr)).await {
                    result = Err(SchedError::Node {
                        node: node.clone(),
                        status,
                    });
                    break;
                }
            }
        }
        if let Err(e) = result {
            let _ = self.store.delete(Table::Claims, &claim_id);
            self.unallocate(&req.pool);
            self.release_sandbox(&node, &rec.sandbox.id, pb::ReleasePolicy::Delete)
                .await;
            return Err(e);
        }
        let mut rec = rec;
        rec.claim_us = t0.elapsed().as_micros() as u64;
        self.lock().claims.insert(claim_id, rec.clone());
        Ok(rec)
    }

    fn unallocate(&self, pool: &str) {
        if let Some(p) = self.lock().pools.get_mut(pool) {
            p.allocated = p.allocated.saturating_sub(1);
        }
        self.wake.notify_one();
    }

    pub fn get_claim(&self, id: &str) -> Result<ClaimRec> {
        self.lock()
            .claims
            .get(id)
            .cloned()
            .ok_or_else(|| SchedError::ClaimNotFound(id.to_string()))
    }

    /// Claims matching the filters, ordered by creation time.
    pub fn list_claims(
        &self,
        pool: &str,
        states: &[ClaimState],
        metadata: &BTreeMap<String, String>,
    ) -> Vec<ClaimRec> {
        let mut v: Vec<ClaimRec> = self
            .lock()
            .claims
            .values()
            .filter(|c| pool.is_empty() || c.pool == pool)
            .filter(|c| states.is_empty() || states.contains(&c.state))
            .filter(|c| {
                metadata
                    .iter()
                    .all(|(k, val)| c.metadata.get(k) == Some(val))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        v
    }

    fn update_claim(
        &self,
        id: &str,
        f: impl FnOnce(&mut ClaimRec) -> Result<()>,
    ) -> Result<ClaimRec> {
        let mut rec = self.get_claim(id)?;
        f(&mut rec)?;
        self.store.put(Table::Claims, id, &rec)?;
        self.lock().claims.insert(id.to_string(), rec.clone());
        Ok(rec)
    }

    pub fn renew(&self, id: &str, expires_ms: i64) -> Result<ClaimRec> {
        if expires_ms <= now_ms() {
            return Err(SchedError::Invalid(
                "expiresAt must be in the future".into(),
            ));
        }
        self.update_claim(id, |c| {
            if c.state == ClaimState::Paused {
                c.paused_remaining_ms = expires_ms - now_ms();
            } else {
                c.expires_ms = expires_ms;
            }
            Ok(())
        })
    }

    /// Pause: freeze the sandbox; the TTL clock stops (the remaining time is kept).
    pub async fn pause(&self, id: &str) -> Result<ClaimRec> {
        self.freeze_or_thaw(id, ClaimEvent::Pause).await
    }

    /// Resume: thaw the sandbox; the TTL clock restarts with what was left.
    pub async fn resume(&self, id: &str) -> Result<ClaimRec> {
        self.freeze_or_thaw(id, ClaimEvent::Resume).await
    }

    async fn freeze_or_thaw(&self, id: &str, event: ClaimEvent) -> Result<ClaimRec> {
        let c = self.get_claim(id)?;
        let next = c.state.on(event)?;
        let mut node = self.node(&c.sandbox.node)?.client.clone();
        let sb = traced(pb::SandboxRef {
            sandbox_id: c.sandbox.id.clone(),
        });
        match event {
            ClaimEvent::Pause => node.pause(sb).await,
            _ => node.resume(sb).await,
        }
        .map_err(node_err(&c.sandbox.node))?;
        self.update_claim(id, |c| {
            c.state = next;
            if event == ClaimEvent::Pause && c.expires_ms > 0 {
                c.paused_remaining_ms = (c.expires_ms - now_ms()).max(1);
            } else if event == ClaimEvent::Resume && c.paused_remaining_ms > 0 {
                c.expires_ms = now_ms().saturating_add(c.paused_remaining_ms);
                c.paused_remaining_ms = 0;
            }
            Ok(())
        })
    }

    /// Release (or expire) a claim: the sandbox goes back per the pool's
    /// release policy (deleted by default) and the pool refills.
    #[tracing::instrument(skip_all, fields(claim = %id))]
    pub async fn release(&self, id: &str, event: ClaimEvent) -> Result<()> {
        let c = {
            let mut st = self.lock();
            let c = st
                .claims
                .get(id)
                .cloned()
                .ok_or_else(|| SchedError::ClaimNotFound(id.to_string()))?;
            // a failed claim can always be cleaned up
            if c.state != ClaimState::Failed {
                c.state.on(event)?;
            }
            st.claims.remove(id);
            if let Some(p) = st.pools.get_mut(&c.pool) {
                p.allocated = p.allocated.saturating_sub(1);
            }
            // busy from this moment (release_sandbox clears it when done)
            st.busy.insert(c.sandbox.id.clone());
            c
        };
        self.store.delete(Table::Claims, id)?;
        self.release_sandbox(&c.sandbox.node, &c.sandbox.id, pb::ReleasePolicy::Delete)
            .await;
        self.wake.notify_one();
        Ok(())
    }

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
        let info = {
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
        all
    }

    /// The node holding checkpoint `id`, a client for it, and the checkpoint.
    async fn find_checkpoint(
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
    ) -> Result<Vec<ClaimRec>> {
        let count = count.max(1);
        if count > MAX_RESTORE {
            return Err(SchedError::Invalid(format!(
                "restore count {count}: at most {MAX_RESTORE}"
            )));
        }
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
        let now = now_ms();
        let recs: Vec<ClaimRec> = made
            .iter()
            .map(|info| ClaimRec {
                id: uuid::Uuid::new_v4().to_string(),
                pool: ck.pool.clone(),
                state: ClaimState::Bound,
                sandbox: SandboxRef::of(&node, info),
                created_ms: now,
                expires_ms: expiry_ms(now, ttl_seconds),
                paused_remaining_ms: 0,
                metadata: metadata.clone(),
                cold: true,
                entrypoint: vec![],
                image: ck.image.clone(),
                claim_us: 0,
                batch: None,
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

    async fn reap_loop(self: Arc<Self>) {
        let mut round: u64 = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            round += 1;
            if round.is_multiple_of(40) {
                // every 10 s: creates that finished while nobody listened, lost sandboxes
                for idx in 0..self.nodes.len() {
                    // a hung node must not stall expiry and idle pauses
                    match tokio::time::timeout(Duration::from_secs(5), self.resync_node(idx)).await
                    {
                        Ok(Err(e)) => tracing::debug!(error = %e, "periodic node resync failed"),
                        Err(_) => {
                            tracing::warn!(node = %self.nodes[idx].name, "periodic node resync timed out")
                        }
                        Ok(Ok(())) => {}
                    }
                }
            }
            if let Some(limit) = self.cfg.idle_pause
                && round.is_multiple_of(4)
            {
                self.pause_idle(limit).await;
            }
            let now = now_ms();
            let due: Vec<String> = self
                .lock()
                .claims
                .values()
                .filter(|c| is_expired(c.state, c.expires_ms, now))
                .map(|c| c.id.clone())
                .collect();
            for id in due {
                tracing::info!(claim = %id, "claim expired");
                if let Err(e) = self.release(&id, ClaimEvent::Expire).await {
                    tracing::warn!(claim = %id, error = %e, "expiry failed");
                }
            }
        }
    }

    /// Idle auto-pause: every bound claim whose runtime reports at least
    /// `limit` without activity is paused (TTL stops, as for a user pause).
    async fn pause_idle(&self, limit: Duration) {
        let bound: Vec<ClaimRec> = self
            .lock()
            .claims
            .values()
            .filter(|c| c.state == ClaimState::Bound)
            .cloned()
            .collect();
        for c in bound {
            let Some(h) = self.runtime_health(&c).await else {
                continue;
            };
            if h.running_commands == 0 && h.idle_ms >= limit.as_millis() as u64 {
                tracing::info!(claim = %c.id, idle_ms = h.idle_ms, "pausing idle sandbox");
                if let Err(e) = self.pause(&c.id).await {
                    tracing::warn!(claim = %c.id, error = %e, "idle pause failed");
                }
            }
        }
    }

    async fn runtime_health(&self, c: &ClaimRec) -> Option<pb::HealthResponse> {
        let ch = tonic::transport::Endpoint::from_shared(format!(
            "http://{}:{}",
            c.sandbox.ip, c.sandbox.port
        ))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()?;
        let mut client = pb::runtime_client::RuntimeClient::new(ch);
        let mut r = tonic::Request::new(pb::HealthRequest {});
        r.metadata_mut().insert(
            sandpool_proto::ACCESS_TOKEN_METADATA,
            c.sandbox.token.parse().ok()?,
        );
        Some(client.health(r).await.ok()?.into_inner())
    }

    // --------------------------------------------------------------- batches

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

    async fn entrypoint_state(&self, c: &ClaimRec) -> Option<Option<i32>> {
        let ch = tonic::transport::Endpoint::from_shared(format!(
            "http://{}:{}",
            c.sandbox.ip, c.sandbox.port
        ))
        .ok()?
        .connect()
        .await
        .ok()?;
        let mut client = pb::runtime_client::RuntimeClient::new(ch);
        let mut r = tonic::Request::new(pb::EntrypointStatusRequest {});
        r.metadata_mut().insert(
            sandpool_proto::ACCESS_TOKEN_METADATA,
            c.sandbox.token.parse().ok()?,
        );
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

#[cfg(test)]
mod tests {
    use super::expiry_ms;

    #[test]
    fn expiry_is_now_plus_ttl_and_never_overflows() {
        assert_eq!(expiry_ms(1_000, 0), 0, "no TTL: never");
        assert_eq!(expiry_ms(1_000, 5), 6_000);
        // TTLs past the clock's range mean never, not a wrapped (past) time
        assert_eq!(expiry_ms(1_000, u64::MAX), i64::MAX);
        assert_eq!(expiry_ms(1_000, i64::MAX as u64), i64::MAX);
        assert_eq!(expiry_ms(1_000, (i64::MAX / 1000) as u64 + 1), i64::MAX);
    }
}
