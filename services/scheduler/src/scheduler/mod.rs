//! Scheduler state and I/O, split by concern:
//! `records` (records and proto conversions), `nodes` (node watch and
//! resync), `refill` (pools and their replenishment), `claim`,
//! `checkpoints`, `reaper` (TTL and idle pause), `batches` and `recycle`.

mod batches;
mod checkpoints;
mod claim;
mod nodes;
mod reaper;
mod records;
mod recycle;
mod refill;

pub use checkpoints::{MAX_RESTORE, RestoreAs};
pub use records::{
    ClaimRec, PoolRec, SandboxRef, egress_from_pb, expiry_ms, now_ms, template_from_pb,
    template_to_pb,
};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::{Mutex, MutexGuard};
use sandpool_core::{
    pool::{ImagePhase, PoolCounts, ReadyCheck, WarmSet},
    refill::{ClaimRate, CpuSampler, CreateTime},
};
use sandpool_proto::{
    auth::{AuthChannel, ServiceToken},
    v1::{self as pb, node_agent_client::NodeAgentClient},
};
use tokio::sync::Notify;

use crate::{
    error::{Result, SchedError},
    store::Store,
    traced,
};

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
    /// The pool's image on the nodes (asked for before its first create).
    image: ImagePhase,
    /// Whether its sandboxes become ready (a gateway's readyCmd reports).
    ready: ReadyCheck,
    /// Its recent claims: the buffer follows their rate.
    demand: ClaimRate,
}

impl PoolEntry {
    fn new(rec: PoolRec) -> Self {
        PoolEntry {
            rec,
            warm: WarmSet::default(),
            creating: 0,
            allocated: 0,
            last_error: None,
            image: ImagePhase::Pending,
            ready: ReadyCheck::default(),
            demand: ClaimRate::default(),
        }
    }

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
    /// Refill pacing (see [`sandpool_core::refill`]).
    pacing: Pacing,
}

/// What paces the refills of all pools.
#[derive(Default)]
struct Pacing {
    /// refill creates under way, over all pools
    refilling: u32,
    /// claims being made: while any is, refills take one slot
    claims_in_flight: u32,
    /// how long a refill create takes, on average
    create_time: CreateTime,
    /// the machine's idle cores, from `/proc/stat`
    cpu: CpuSampler,
}

impl State {
    fn touch(&mut self, id: &str) {
        self.touched.insert(id.to_string(), now_ms());
    }
}

type Busy<'a> = sandpool_core::busy::Busy<'a, Scheduler>;

/// The scheduler's busy set is [`State::busy`]; a change to it counts as
/// a change to the sandbox's books (a resync's stale list leaves it alone).
impl sandpool_core::busy::MarkBusy for Scheduler {
    fn mark(&self, id: &str) {
        let mut st = self.lock();
        st.busy.insert(id.to_string());
        st.touch(id);
    }

    fn unmark(&self, id: &str) {
        let mut st = self.lock();
        st.busy.remove(id);
        st.touch(id);
    }
}

/// A caller-chosen claim id being made, until dropped.
struct Claiming<'a> {
    st: &'a Mutex<State>,
    id: String,
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.st.lock().claiming.remove(&self.id);
    }
}

/// A claim being made, until dropped: refills yield to it.
struct InFlight<'a> {
    sched: &'a Scheduler,
}

impl<'a> InFlight<'a> {
    fn start(sched: &'a Scheduler) -> Self {
        sched.lock().pacing.claims_in_flight += 1;
        InFlight { sched }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let none_left = {
            let mut st = self.sched.lock();
            let p = &mut st.pacing;
            p.claims_in_flight = p.claims_in_flight.saturating_sub(1);
            p.claims_in_flight == 0
        };
        if none_left {
            // refills held back for the claims may start
            self.sched.wake.notify_one();
        }
    }
}

fn new_sandbox_id() -> String {
    format!("sb-{}", &uuid::Uuid::new_v4().simple().to_string()[..20])
}

pub struct Scheduler {
    /// Itself, for work that outlives the call that started it (a recycle
    /// after the release has answered).
    me: std::sync::Weak<Scheduler>,
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
    /// The durable store (`sandpool serve` keeps the gateway's template
    /// build records in it too).
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.store)
    }

    /// Connect to the nodes, load the store and reconcile with what the nodes run.
    pub async fn start(cfg: SchedulerConfig) -> Result<Arc<Scheduler>> {
        let store = Arc::new(Store::open(&cfg.store_path)?);
        let token =
            ServiceToken::new(cfg.service_token.as_deref()).map_err(SchedError::ServiceToken)?;
        let mut nodes = Vec::new();
        let mut node_sandboxes = Vec::new();
        for addr in &cfg.nodes {
            let ch = tonic::transport::Endpoint::from_shared(addr.clone())
                .map_err(|source| SchedError::NodeAddress {
                    addr: addr.clone(),
                    source,
                })?
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
        let sched = Arc::new_cyclic(|me| Scheduler {
            me: me.clone(),
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
        self.st.lock()
    }

    fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| SchedError::UnknownNode(name.to_string()))
    }

    /// Mark `id` busy (see [`State::busy`]) until the guard drops.
    fn busy(&self, id: &str) -> Busy<'_> {
        Busy::mark(self, id)
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
}
