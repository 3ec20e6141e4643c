//! The scheduler against an in-process fake node agent: a tonic `NodeAgent`
//! server on 127.0.0.1 that keeps its sandboxes in a map and records every
//! call. No root, no containerd: warm and cold claims, refill, TTL expiry,
//! resync after a node restart, batch shard patches, a failed inject rolled
//! back.

// test helpers (outside #[test] fns) fail the test on a broken fixture
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use sandpool_core::claim::ClaimState;
use sandpool_proto::v1::{self as pb, node_agent_server::NodeAgent};
use sandpool_scheduler::{
    SchedError, Scheduler, SchedulerConfig,
    scheduler::{PoolRec, RestoreAs},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

const NODE: &str = "fake-node";

/// What the fake node runs and what it was asked.
#[derive(Default)]
struct Books {
    sandboxes: BTreeMap<String, pb::SandboxInfo>,
    /// sandbox ids created, in order
    created: Vec<String>,
    /// the image credentials each create carried, in order
    create_auths: Vec<Option<pb::ImageAuth>>,
    injected: Vec<pb::NodeInjectRequest>,
    /// sandbox ids released, in order
    released: Vec<String>,
    watchers: Vec<mpsc::Sender<Result<pb::NodeEvent, Status>>>,
    /// refuse every inject
    fail_inject: bool,
    /// never answer an inject
    hang_inject: bool,
    /// hold every inject until cleared (claims in flight)
    hold_inject: bool,
    /// injects being held
    injects_held: u32,
    /// hold every create until cleared (refills under way)
    hold_create: bool,
    /// creates being answered now, and the most at once
    creates_in_flight: u32,
    max_creates_in_flight: u32,
    /// never answer a recycle (a node whose reset hangs)
    hang_recycle: bool,
    /// refuse every pause (a sandbox that cannot be frozen)
    fail_pause: bool,
    /// sandbox ids paused, in order
    paused: Vec<String>,
    /// the sandboxes of those pauses that were filesystem-only
    paused_filesystem: Vec<String>,
    checkpoints: Vec<pb::CheckpointInfo>,
    /// sandbox ids restored from checkpoints, in order
    restored: Vec<String>,
    next_id: u32,
    /// images asked for by PrepareImage, in order
    prepared: Vec<String>,
    /// answer PrepareImage with this failure
    fail_prepare: Option<String>,
    /// hold every PrepareImage until cleared (an image being pulled)
    hold_prepare: bool,
    /// refuse an inject whose egress has a domain rule, as a node does for
    /// a network-less (checkpointable) sandbox
    refuse_domains: bool,
    /// the image's default process each created sandbox reports
    image_command: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeNode(Arc<Mutex<Books>>);

impl FakeNode {
    fn books(&self) -> MutexGuard<'_, Books> {
        self.0.lock().unwrap()
    }

    fn info(&self, id: &str) -> Result<pb::SandboxInfo, Status> {
        self.books()
            .sandboxes
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("sandbox {id}")))
    }

    /// A node agent restart: every watch breaks, and `change` is what the
    /// node runs afterwards.
    fn restart(&self, change: impl FnOnce(&mut BTreeMap<String, pb::SandboxInfo>)) {
        let mut b = self.books();
        b.watchers.clear();
        change(&mut b.sandboxes);
    }

    /// Send `ev` to every watcher, as the node agent does.
    fn send(&self, ev: pb::node_event::Event) {
        for w in &self.books().watchers {
            let _ = w.try_send(Ok(pb::NodeEvent {
                event: Some(ev.clone()),
            }));
        }
    }

    fn warm_of(&self, pool: &str) -> Vec<String> {
        self.books()
            .sandboxes
            .values()
            .filter(|s| s.pool == pool && s.state == pb::SandboxState::Warm as i32)
            .map(|s| s.sandbox_id.clone())
            .collect()
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl NodeAgent for FakeNode {
    async fn create_sandbox(&self, r: Request<pb::CreateSandboxRequest>) -> Reply<pb::SandboxInfo> {
        let r = r.into_inner();
        {
            let mut b = self.books();
            b.creates_in_flight += 1;
            b.max_creates_in_flight = b.max_creates_in_flight.max(b.creates_in_flight);
        }
        while self.books().hold_create {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut b = self.books();
        b.creates_in_flight -= 1;
        b.create_auths.push(r.image_auth.clone());
        b.next_id += 1;
        let id = if r.sandbox_id.is_empty() {
            format!("fake-{}", b.next_id)
        } else {
            r.sandbox_id
        };
        let info = pb::SandboxInfo {
            sandbox_id: id.clone(),
            pool: r.pool,
            node: NODE.into(),
            state: pb::SandboxState::Warm as i32,
            ip: "127.0.0.1".into(),
            runtime_port: 1,
            access_token: format!("token-{id}"),
            image_command: b.image_command.clone(),
            ..Default::default()
        };
        b.sandboxes.insert(id.clone(), info.clone());
        b.created.push(id);
        Ok(Response::new(info))
    }

    async fn prepare_image(
        &self,
        r: Request<pb::PrepareImageRequest>,
    ) -> Reply<pb::PrepareImageResponse> {
        let image = r.into_inner().image;
        self.books().prepared.push(image.clone());
        while self.books().hold_prepare {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(why) = self.books().fail_prepare.clone() {
            return Err(Status::not_found(why));
        }
        Ok(Response::new(pb::PrepareImageResponse { image }))
    }

    async fn get_sandbox(&self, r: Request<pb::SandboxRef>) -> Reply<pb::SandboxInfo> {
        self.info(&r.into_inner().sandbox_id).map(Response::new)
    }

    async fn list_sandboxes(
        &self,
        r: Request<pb::ListSandboxesRequest>,
    ) -> Reply<pb::ListSandboxesResponse> {
        let pool = r.into_inner().pool;
        let sandboxes = self
            .books()
            .sandboxes
            .values()
            .filter(|s| pool.is_empty() || s.pool == pool)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListSandboxesResponse { sandboxes }))
    }

    async fn inject(&self, r: Request<pb::NodeInjectRequest>) -> Reply<pb::NodeInjectResponse> {
        let r = r.into_inner();
        if self.books().hang_inject {
            std::future::pending::<()>().await;
        }
        if self.books().hold_inject {
            self.books().injects_held += 1;
            while self.books().hold_inject {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.books().injects_held -= 1;
        }
        let mut b = self.books();
        if b.fail_inject {
            return Err(Status::internal("inject refused by the fake node"));
        }
        let named = r.egress.as_ref().is_some_and(|e| {
            e.rules
                .iter()
                .any(|x| x.cidr.parse::<std::net::IpAddr>().is_err() && !x.cidr.contains('/'))
        });
        if b.refuse_domains && named {
            return Err(Status::invalid_argument(
                "egress rule 0: the sandbox has no network (checkpointable)",
            ));
        }
        let Some(sb) = b.sandboxes.get_mut(&r.sandbox_id) else {
            return Err(Status::not_found(r.sandbox_id));
        };
        sb.state = pb::SandboxState::Claimed as i32;
        b.injected.push(r);
        Ok(Response::new(pb::NodeInjectResponse::default()))
    }

    async fn release(&self, r: Request<pb::ReleaseRequest>) -> Reply<pb::SandboxInfo> {
        let r = r.into_inner();
        let id = r.sandbox_id;
        if r.policy == pb::ReleasePolicy::Recycle as i32 && self.books().hang_recycle {
            std::future::pending::<()>().await;
        }
        let mut b = self.books();
        b.released.push(id.clone());
        if r.policy == pb::ReleasePolicy::Recycle as i32 {
            // reset in place: warm again, same id and address, a new token
            let sb = b
                .sandboxes
                .get_mut(&id)
                .ok_or_else(|| Status::not_found(id.clone()))?;
            sb.state = pb::SandboxState::Warm as i32;
            sb.access_token = format!("{}-recycled", sb.access_token);
            return Ok(Response::new(sb.clone()));
        }
        b.sandboxes
            .remove(&id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(id))
    }

    async fn pause(&self, r: Request<pb::PauseRequest>) -> Reply<pb::SandboxInfo> {
        let (meta, ext, r) = r.into_parts();
        let id = r.sandbox_id.clone();
        if self.books().fail_pause {
            return Err(Status::failed_precondition(format!(
                "{id} cannot be frozen"
            )));
        }
        if r.filesystem_only {
            self.books().paused_filesystem.push(id.clone());
        }
        self.books().paused.push(id.clone());
        let r = pb::SandboxRef { sandbox_id: id };
        self.get_sandbox(Request::from_parts(meta, ext, r)).await
    }

    async fn resume(&self, r: Request<pb::SandboxRef>) -> Reply<pb::SandboxInfo> {
        self.get_sandbox(r).await
    }

    async fn checkpoint(&self, r: Request<pb::CheckpointRequest>) -> Reply<pb::CheckpointInfo> {
        let r = r.into_inner();
        let ck = pb::CheckpointInfo {
            checkpoint_id: format!("ck-{}", r.sandbox_id),
            pool: b_pool(self, &r.sandbox_id),
            sandbox_id: r.sandbox_id,
            owner: r.owner,
            name: r.name,
            ..Default::default()
        };
        self.books().checkpoints.push(ck.clone());
        Ok(Response::new(ck))
    }

    async fn restore(&self, r: Request<pb::RestoreRequest>) -> Reply<pb::SandboxInfo> {
        let r = r.into_inner();
        let mut b = self.books();
        let pool = b
            .checkpoints
            .iter()
            .find(|c| c.checkpoint_id == r.checkpoint_id)
            .map(|c| c.pool.clone())
            .ok_or_else(|| Status::not_found("no such checkpoint"))?;
        let info = pb::SandboxInfo {
            sandbox_id: r.sandbox_id.clone(),
            pool,
            node: NODE.into(),
            state: pb::SandboxState::Claimed as i32,
            ip: "127.0.0.1".into(),
            runtime_port: 1,
            ..Default::default()
        };
        b.restored.push(r.sandbox_id.clone());
        b.sandboxes.insert(r.sandbox_id, info.clone());
        Ok(Response::new(info))
    }

    async fn fork(&self, _: Request<pb::ForkRequest>) -> Reply<pb::ForkResponse> {
        Err(Status::unimplemented("fake node: fork"))
    }

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Reply<pb::ListCheckpointsResponse> {
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: self.books().checkpoints.clone(),
        }))
    }

    async fn delete_checkpoint(
        &self,
        r: Request<pb::CheckpointRef>,
    ) -> Reply<pb::DeleteCheckpointResponse> {
        let id = r.into_inner().checkpoint_id;
        self.books().checkpoints.retain(|c| c.checkpoint_id != id);
        Ok(Response::new(pb::DeleteCheckpointResponse {}))
    }

    async fn upgrade(&self, r: Request<pb::UpgradeRequest>) -> Reply<pb::SandboxInfo> {
        self.info(&r.into_inner().sandbox_id).map(Response::new)
    }

    async fn mount(&self, r: Request<pb::MountRequest>) -> Reply<pb::SandboxInfo> {
        self.info(&r.into_inner().sandbox_id).map(Response::new)
    }

    async fn unmount(&self, r: Request<pb::UnmountRequest>) -> Reply<pb::SandboxInfo> {
        self.info(&r.into_inner().sandbox_id).map(Response::new)
    }

    async fn commit_images(
        &self,
        _: Request<pb::CommitImagesRequest>,
    ) -> Reply<pb::CommitImagesResponse> {
        Err(Status::unimplemented("not in this fake"))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::NodeEvent, Status>> + Send>>;

    /// Capacity first, then open until the node "restarts".
    async fn watch(&self, _: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        let (tx, rx) = mpsc::channel(16);
        let capacity = pb::NodeEvent {
            event: Some(pb::node_event::Event::Capacity(pb::NodeCapacity {
                node: NODE.into(),
                max_sandboxes: 64,
                ..Default::default()
            })),
        };
        tx.try_send(Ok(capacity)).unwrap();
        self.books().watchers.push(tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A fake node served on 127.0.0.1 and a scheduler using it (store in a tempdir).
async fn platform() -> (FakeNode, Arc<Scheduler>, tempfile::TempDir) {
    let node = FakeNode::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::node_agent_server::NodeAgentServer::new(node.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let store = tempfile::tempdir().unwrap();
    let sched = Scheduler::start(SchedulerConfig {
        store_path: store.path().join("s.redb"),
        nodes: vec![format!("http://{addr}")],
        max_inflight: 4,
        tick: Duration::from_millis(50),
        idle_pause: None,
        service_token: None,
    })
    .await
    .unwrap();
    (node, sched, store)
}

fn pool(name: &str, bmin: u32, bmax: u32, pmax: u32) -> PoolRec {
    support::pool(name, &["sleep", "1000"], bmin, bmax, pmax)
}

/// Waits: look every 20 ms, give up after 10 s.
const PATIENCE: support::Patience = support::Patience {
    within: Duration::from_secs(10),
    every: Duration::from_millis(20),
};

fn status(s: &Scheduler, pool: &str) -> pb::PoolStatus {
    s.pool_status(pool).unwrap().1
}

async fn wait_available(s: &Scheduler, pool: &str, n: u32) {
    PATIENCE
        .wait_until(&format!("pool {pool} to hold {n} warm sandboxes"), || {
            status(s, pool).available == n
        })
        .await;
}

/// A platform with the pool `name` (these bounds) holding its `bmin` warm
/// sandboxes.
async fn warm_platform(
    name: &str,
    bmin: u32,
    bmax: u32,
    pmax: u32,
) -> (FakeNode, Arc<Scheduler>, tempfile::TempDir) {
    let (node, s, store) = platform().await;
    s.apply_pool(pool(name, bmin, bmax, pmax)).unwrap();
    wait_available(&s, name, bmin).await;
    (node, s, store)
}

fn claim_req(pool: &str, argv: &[&str]) -> pb::ClaimRequest {
    pb::ClaimRequest {
        pool: pool.into(),
        process: Some(support::task(argv, &[])),
        ..Default::default()
    }
}

/// Claims come first: while claims are being made, refills run one create
/// at a time (however many the buffer misses), and the claims finish while
/// that refill create is still held on the node: none waits behind it.
#[tokio::test]
async fn claims_in_flight_hold_refills_to_one_create_and_never_wait_for_them() {
    let (node, s, _store) = warm_platform("p", 4, 4, 16).await;
    {
        let mut b = node.books();
        b.hold_inject = true;
        b.hold_create = true;
        b.max_creates_in_flight = 0;
    }
    let claims: Vec<_> = (0..3)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.claim(claim_req("p", &["true"])).await })
        })
        .collect();
    PATIENCE
        .wait_until("three claims at their inject and a refill create", || {
            let b = node.books();
            b.injects_held == 3 && b.creates_in_flight >= 1
        })
        .await;
    // several refill passes (a tick is 50 ms) while the three claims are in
    // flight and the buffer misses three
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.books().max_creates_in_flight,
        1,
        "one refill create at a time while claims are in flight"
    );
    node.books().hold_inject = false;
    for c in claims {
        let c = c.await.unwrap().unwrap();
        assert!(!c.cold, "each claim took a warm sandbox");
        assert_eq!(c.state, ClaimState::Bound);
    }
    {
        let b = node.books();
        assert_eq!(b.injected.len(), 3);
        assert_eq!(b.created.len(), 4, "the claims did not wait for a refill");
        assert!(b.creates_in_flight >= 1, "the refill is still held");
    }
    node.books().hold_create = false;
    wait_available(&s, "p", 4).await;
    assert_eq!(node.books().created.len(), 7);
}

#[tokio::test]
async fn a_warm_claim_takes_a_pool_sandbox_and_injects_into_it() {
    let (node, s, _store) = warm_platform("p", 1, 1, 4).await;
    let warm = node.warm_of("p");
    assert_eq!(warm.len(), 1);

    let c = s.claim(claim_req("p", &["echo", "hi"])).await.unwrap();
    assert!(!c.cold, "a warm sandbox was there");
    assert_eq!(c.sandbox.id, warm[0]);
    assert_eq!(c.state, ClaimState::Bound);
    assert_eq!(c.sandbox.token, format!("token-{}", warm[0]));
    assert_eq!(c.entrypoint, vec!["echo", "hi"]);
    {
        let b = node.books();
        assert_eq!(b.injected.len(), 1);
        assert_eq!(b.injected[0].sandbox_id, warm[0]);
        assert_eq!(
            b.injected[0].process.as_ref().unwrap().argv,
            vec!["echo", "hi"]
        );
    }
    assert_eq!(status(&s, "p").allocated, 1);
    assert_eq!(s.get_claim(&c.id).unwrap(), c);
}

/// A claim's egress policy and limits go to the node with its inject (set
/// there before the process starts); a bad policy is refused before a
/// sandbox is taken.
#[tokio::test]
async fn a_claims_egress_and_limits_reach_its_node_and_bad_rules_take_nothing() {
    let (node, s, _store) = warm_platform("p", 2, 2, 4).await;
    let deny = pb::EgressPolicy {
        default_action: pb::EgressAction::Deny as i32,
        rules: vec![],
    };
    let limits = pb::Resources {
        cpu: "2".into(),
        memory: "1Gi".into(),
        pids: 0,
    };
    let c = s
        .claim(pb::ClaimRequest {
            pool: "p".into(),
            egress: Some(deny.clone()),
            resources: Some(limits.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    {
        let b = node.books();
        let sent = b.injected.last().expect("an inject");
        assert_eq!(sent.sandbox_id, c.sandbox.id);
        assert_eq!(sent.egress.as_ref(), Some(&deny));
        assert_eq!(sent.resources.as_ref(), Some(&limits));
    }
    let bad = pb::EgressPolicy {
        default_action: 0,
        rules: vec![pb::EgressRule {
            action: pb::EgressAction::Allow as i32,
            cidr: "pypi..org".into(),
            port: 0,
        }],
    };
    let before = status(&s, "p").allocated;
    let err = s
        .claim(pb::ClaimRequest {
            pool: "p".into(),
            egress: Some(bad),
            ..Default::default()
        })
        .await
        .expect_err("not a name");
    assert!(err.to_string().contains("egress rule 0"), "{err}");
    assert!(matches!(err, SchedError::Invalid(_)), "{err:?}");
    assert_eq!(status(&s, "p").allocated, before, "nothing taken");
}

/// Domain egress rules pass the scheduler to the node (whose DNS proxy
/// enforces them), on a claim and live; where the node refuses them (a
/// network-less sandbox) the caller gets its InvalidArgument, the taken
/// sandbox is deleted and the allocation given back.
#[tokio::test]
async fn domain_egress_rules_reach_the_node_and_its_refusal_reaches_the_caller() {
    let (node, s, _store) = warm_platform("d", 1, 1, 4).await;
    let named = |t: &str| pb::EgressPolicy {
        default_action: pb::EgressAction::Deny as i32,
        rules: vec![pb::EgressRule {
            action: pb::EgressAction::Allow as i32,
            cidr: t.into(),
            port: 0,
        }],
    };
    let c = s
        .claim(pb::ClaimRequest {
            egress: Some(named("example.test")),
            ..claim_req("d", &["true"])
        })
        .await
        .expect("a domain rule is passed on");
    assert_eq!(
        node.books().injected.last().and_then(|r| r.egress.clone()),
        Some(named("example.test"))
    );
    let c = s
        .set_egress(&c.id, Some(named("*.example.test")))
        .await
        .expect("live");
    assert_eq!(c.egress.expect("kept").rules[0].cidr, "*.example.test");

    node.books().refuse_domains = true;
    let err = s
        .set_egress(&c.id, Some(named("other.test")))
        .await
        .expect_err("the node refuses");
    let code = Status::from(err).code();
    assert_eq!(code, tonic::Code::InvalidArgument);
    let kept = s.get_claim(&c.id).unwrap().egress.expect("kept");
    assert_eq!(kept.rules[0].cidr, "*.example.test", "unchanged");
    s.release(&c.id, sandpool_core::claim::ClaimEvent::Release)
        .await
        .unwrap();
    wait_available(&s, "d", 1).await;
    let warm = node.warm_of("d");
    let released = node.books().released.len();
    let err = s
        .claim(pb::ClaimRequest {
            claim_id: "named".into(),
            egress: Some(named("example.test")),
            ..claim_req("d", &["true"])
        })
        .await
        .expect_err("the node refuses");
    let msg = err.to_string();
    let code = Status::from(err).code();
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("no network"), "{msg}");
    assert_eq!(status(&s, "d").allocated, 0, "allocation given back");
    assert!(s.get_claim("named").is_err(), "no claim left");
    assert_eq!(
        node.books().released[released..],
        warm[..],
        "sandbox deleted"
    );
}

#[tokio::test]
async fn without_a_warm_sandbox_a_claim_starts_one_cold() {
    let (node, s, _store) = platform().await;
    s.apply_pool(pool("cold", 0, 0, 4)).unwrap();
    // pool_only refuses instead
    let err = s
        .claim(pb::ClaimRequest {
            pool_only: true,
            ..claim_req("cold", &[])
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, SchedError::Exhausted(ref p) if p == "cold"),
        "{err}"
    );
    assert!(node.books().created.is_empty());
    assert_eq!(status(&s, "cold").allocated, 0);

    let c = s.claim(claim_req("cold", &[])).await.unwrap();
    assert!(c.cold);
    assert_eq!(node.books().created, vec![c.sandbox.id.clone()]);
    // no argv in the request: the template's command is the entrypoint
    assert_eq!(c.entrypoint, vec!["sleep", "1000"]);
    assert_eq!(
        node.books().injected[0].process.as_ref().unwrap().argv,
        vec!["sleep", "1000"]
    );
    assert_eq!(status(&s, "cold").allocated, 1);
}

/// A cold claim's image credentials go to the node with its create (for
/// the pull of an absent image); pool refills carry none; the scheduler's
/// store never holds them.
#[tokio::test]
async fn a_cold_claims_image_auth_reaches_its_node_and_is_not_stored() {
    let (node, s, store) = platform().await;
    s.apply_pool(pool("w", 1, 1, 2)).unwrap();
    wait_available(&s, "w", 1).await;
    let auth = pb::ImageAuth {
        username: "ann".into(),
        password: "pw-never-stored-4711".into(),
    };
    let c = s
        .claim(pb::ClaimRequest {
            template: Some(pb::SandboxTemplate {
                image: "127.0.0.1:5000/private:1".into(),
                ..Default::default()
            }),
            image_auth: Some(auth.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(c.cold);
    {
        let b = node.books();
        assert_eq!(b.create_auths.first(), Some(&None), "a refill has none");
        assert_eq!(b.create_auths.last(), Some(&Some(auth)));
    }
    let stored = std::fs::read(store.path().join("s.redb")).unwrap();
    let needle = b"pw-never-stored-4711";
    assert!(
        !stored.windows(needle.len()).any(|w| w == needle),
        "the password is not in the store"
    );
    assert!(!format!("{c:?}").contains("pw-never-stored"));
}

#[tokio::test]
async fn a_pool_refills_to_its_buffer_after_a_claim() {
    let (node, s, _store) = warm_platform("r", 3, 3, 10).await;
    assert_eq!(node.warm_of("r").len(), 3);
    assert_eq!(node.books().created.len(), 3);

    let c = s.claim(claim_req("r", &["true"])).await.unwrap();
    assert!(!c.cold);
    PATIENCE
        .wait_until("one more create after the claim", || {
            node.books().created.len() == 4
        })
        .await;
    wait_available(&s, "r", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = status(&s, "r");
    assert_eq!((st.available, st.allocated, st.total), (3, 1, 4), "{st:?}");
    assert_eq!(node.books().created.len(), 4, "no more than the buffer");
    assert_eq!(node.warm_of("r").len(), 3);
}

#[tokio::test]
async fn an_expired_claim_is_released_and_its_sandbox_deleted() {
    let (node, s, _store) = warm_platform("t", 1, 1, 4).await;
    let c = s
        .claim(pb::ClaimRequest {
            ttl_seconds: 1,
            ..claim_req("t", &["true"])
        })
        .await
        .unwrap();
    assert!(c.expires_ms > c.created_ms);
    let forever = s.claim(claim_req("t", &["true"])).await.unwrap();
    PATIENCE
        .wait_until("the claim to expire", || s.get_claim(&c.id).is_err())
        .await;
    assert!(matches!(
        s.get_claim(&c.id),
        Err(SchedError::ClaimNotFound(_))
    ));
    PATIENCE
        .wait_until("its sandbox to be released", || {
            node.books().released.contains(&c.sandbox.id)
        })
        .await;
    assert!(!node.books().sandboxes.contains_key(&c.sandbox.id));
    // the claim without a TTL stays
    assert_eq!(s.get_claim(&forever.id).unwrap().state, ClaimState::Bound);
    assert_eq!(status(&s, "t").allocated, 1);
}

#[tokio::test]
async fn after_a_node_restart_the_books_follow_what_it_runs() {
    let (node, s, _store) = warm_platform("n", 2, 2, 10).await;
    let c = s.claim(claim_req("n", &["true"])).await.unwrap();
    wait_available(&s, "n", 2).await;
    let before: Vec<String> = node.warm_of("n");

    // the restarted node lost every sandbox, and runs one nobody owns
    node.restart(|sbs| {
        sbs.clear();
        sbs.insert(
            "stray".into(),
            pb::SandboxInfo {
                sandbox_id: "stray".into(),
                pool: "gone-pool".into(),
                state: pb::SandboxState::Claimed as i32,
                ..Default::default()
            },
        );
    });
    PATIENCE
        .wait_until("the claim on the lost sandbox to fail", || {
            s.get_claim(&c.id).unwrap().state == ClaimState::Failed
        })
        .await;
    PATIENCE
        .wait_until("the stray sandbox to be deleted", || {
            node.books().released.iter().any(|id| id == "stray")
        })
        .await;
    // the lost warm sandboxes are forgotten and replaced by new ones
    PATIENCE
        .wait_until("the pool to refill on the restarted node", || {
            let warm = node.warm_of("n");
            warm.len() == 2 && warm.iter().all(|id| !before.contains(id))
        })
        .await;
    wait_available(&s, "n", 2).await;
    // a failed claim can still be released
    s.release(&c.id, sandpool_core::claim::ClaimEvent::Release)
        .await
        .unwrap();
    assert_eq!(status(&s, "n").allocated, 0);
}

/// The OOM kills a node reports for a claimed sandbox (from containerd's
/// TaskOOM events) are counted on its claim, which stays bound.
#[tokio::test]
async fn oom_kills_a_node_reports_are_counted_on_the_claim() {
    let (node, s, _store) = warm_platform("o", 1, 1, 4).await;
    let c = s.claim(claim_req("o", &["true"])).await.unwrap();
    let mut info = node.info(&c.sandbox.id).unwrap();
    for kills in [1, 2] {
        info.oom_kills = kills;
        node.send(pb::node_event::Event::Sandbox(info.clone()));
        PATIENCE
            .wait_until(&format!("{kills} OOM kills on the claim"), || {
                s.get_claim(&c.id).unwrap().oom_kills == kills
            })
            .await;
    }
    let shown = sandpool_scheduler::service::claim_pb(&s.get_claim(&c.id).unwrap());
    assert_eq!(shown.oom_kills, 2);
    assert_eq!(shown.state, pb::ClaimState::Bound as i32, "it lives on");
    // a report of fewer (an agent restart) takes nothing back
    info.oom_kills = 1;
    node.send(pb::node_event::Event::Sandbox(info));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.get_claim(&c.id).unwrap().oom_kills, 2);
}

#[tokio::test]
async fn a_batch_runs_each_shard_with_its_patch() {
    let (node, s, _store) = warm_platform("b", 2, 2, 6).await;
    let task = support::task(&["run"], &[("A", "1")]);
    let patches = [
        r#"{"env": {"SHARD": "0"}}"#,
        r#"{"argv": ["run", "--shard", "1"], "cwd": "/work"}"#,
    ];
    let claims = s
        .create_batch(support::job("b", task, &patches))
        .await
        .unwrap();
    let ids: Vec<&str> = claims.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["job-0", "job-1", "job-2"]);
    assert!(claims.iter().all(|c| c.batch.as_deref() == Some("job")));
    assert_eq!(s.batch_claims("job").len(), 3);
    let injected: HashMap<String, pb::InjectRequest> = node
        .books()
        .injected
        .iter()
        .map(|r| (r.sandbox_id.clone(), r.process.clone().unwrap()))
        .collect();
    let task = |i: usize| &injected[&claims[i].sandbox.id];
    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(task(0).argv, vec!["run"]);
    assert_eq!(task(0).env, env(&[("A", "1"), ("SHARD", "0")]));
    assert_eq!(task(1).argv, vec!["run", "--shard", "1"]);
    assert_eq!(task(1).env, env(&[("A", "1")]));
    assert_eq!(task(1).cwd, "/work");
    // beyond the patches: the plain task
    assert_eq!(task(2).argv, vec!["run"]);
    assert_eq!(task(2).env, env(&[("A", "1")]));
    assert_eq!(claims[1].metadata["shard"], "1");

    s.delete_batch("job").await.unwrap();
    assert!(s.batch_claims("job").is_empty());
    assert_eq!(status(&s, "b").allocated, 0);
}

#[tokio::test]
async fn a_failed_inject_undoes_the_claim() {
    let (node, s, _store) = warm_platform("f", 1, 1, 4).await;
    let warm = node.warm_of("f");
    node.books().fail_inject = true;

    let claim_doomed = || {
        s.claim(pb::ClaimRequest {
            claim_id: "doomed".into(),
            ..claim_req("f", &["true"])
        })
    };
    let err = claim_doomed().await.unwrap_err();
    assert!(
        matches!(&err, SchedError::Node { node, status } if node == NODE && status.code() == tonic::Code::Internal),
        "{err:?}"
    );
    // allocation, record and sandbox are undone
    assert_eq!(status(&s, "f").allocated, 0);
    assert!(matches!(
        s.get_claim("doomed"),
        Err(SchedError::ClaimNotFound(_))
    ));
    assert!(s.list_claims("", &[], &BTreeMap::new()).is_empty());
    assert_eq!(node.books().released, warm, "the taken sandbox is deleted");
    assert!(!node.books().sandboxes.contains_key(&warm[0]));
    // the pool refills, and the same claim id can be made once injects work
    wait_available(&s, "f", 1).await;
    node.books().fail_inject = false;
    let c = claim_doomed().await.unwrap();
    assert_eq!(c.id, "doomed");
    assert_eq!(status(&s, "f").allocated, 1);
}

#[tokio::test]
async fn an_abandoned_claim_gives_its_allocation_back() {
    let (node, s, _store) = warm_platform("a", 1, 1, 4).await;
    node.books().hang_inject = true;
    // the caller gives up while the inject hangs: the claim future is dropped
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        s.claim(claim_req("a", &["true"])),
    )
    .await;
    assert!(gave_up.is_err(), "the inject hangs");
    assert_eq!(status(&s, "a").allocated, 0);
    assert!(s.list_claims("", &[], &BTreeMap::new()).is_empty());
    node.books().hang_inject = false;
    let c = s.claim(claim_req("a", &["true"])).await.unwrap();
    assert_eq!(status(&s, "a").allocated, 1);
    assert_eq!(s.get_claim(&c.id).unwrap().state, ClaimState::Bound);
}

#[tokio::test]
async fn a_checkpoint_keeps_the_metadata_of_its_claim_after_the_claim_ends() {
    let (_node, s, _store) = warm_platform("p", 1, 1, 4).await;
    let mut req = claim_req("p", &["sleep", "9"]);
    req.metadata
        .insert("sandpool.io/owner".into(), "key-1".into());
    let c = s.claim(req).await.unwrap();
    let ck = s.checkpoint_claim(&c.id, false, "n").await.unwrap();
    assert_eq!(
        ck.source_metadata
            .get("sandpool.io/owner")
            .map(String::as_str),
        Some("key-1")
    );
    assert!(
        s.get_claim(&c.id).is_err(),
        "a checkpoint without leave_running ends the claim"
    );
    let listed = s.list_checkpoints().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]
            .source_metadata
            .get("sandpool.io/owner")
            .map(String::as_str),
        Some("key-1"),
        "the scheduler, not the node, keeps who took it"
    );
    s.delete_checkpoint(&ck.checkpoint_id).await.unwrap();
    assert!(s.list_checkpoints().await.is_empty());
}

/// The pool of the fake's sandbox `id` (empty if it has none).
fn b_pool(node: &FakeNode, id: &str) -> String {
    node.books()
        .sandboxes
        .get(id)
        .map(|s| s.pool.clone())
        .unwrap_or_default()
}

/// A restore under a caller-chosen claim id is made once: a retry gets the
/// claim the first made, with no second restore on the node.
/// Standalone checkpoints hold memory and files: a filesystem-only one is
/// refused naming the field, and the claim goes on.
#[tokio::test]
async fn a_filesystem_only_checkpoint_is_refused_naming_it() {
    use sandpool_proto::v1::scheduler_server::Scheduler as _;
    let (_node, s, _store) = warm_platform("p", 1, 1, 4).await;
    let c = s.claim(claim_req("p", &["sleep", "9"])).await.unwrap();
    let svc = sandpool_scheduler::service::SchedulerService::new(s.clone());
    let e = svc
        .checkpoint_claim(Request::new(pb::CheckpointClaimRequest {
            claim_id: c.id.clone(),
            leave_running: false,
            name: String::new(),
            filesystem_only: true,
            memory_if_supported: false,
        }))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert!(e.message().starts_with("filesystem_only"), "{e:?}");
    assert!(s.get_claim(&c.id).is_ok(), "the claim goes on");
}

#[tokio::test]
async fn a_restore_under_a_claim_id_is_made_once() {
    let (node, s, _store) = warm_platform("p", 1, 1, 4).await;
    let c = s.claim(claim_req("p", &["sleep", "9"])).await.unwrap();
    let ck = s.checkpoint_claim(&c.id, true, "n").await.unwrap();
    let restore = |id: &'static str, count| {
        let s = s.clone();
        let ck = ck.checkpoint_id.clone();
        async move {
            s.restore_checkpoint(&ck, count, 60, Default::default(), id, RestoreAs::default())
                .await
        }
    };
    let first = restore("idem-1", 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, "idem-1");
    assert_eq!(first[0].state, ClaimState::Bound);
    assert_eq!(restore("idem-1", 1).await.unwrap(), first, "a retry");
    assert_eq!(node.books().restored.len(), 1, "restored once");
    let other = restore("", 1).await.unwrap();
    assert_ne!(other[0].id, first[0].id);
    assert_eq!(node.books().restored.len(), 2);
    assert!(matches!(
        restore("idem-2", 2).await,
        Err(SchedError::Invalid(_))
    ));
}

/// A memory restore resumes the checkpointed processes: it takes the
/// checkpointed claim's own entrypoint (what runs) and refuses another, or
/// an env, naming the field; its limits are set on the restored sandbox.
#[tokio::test]
async fn a_memory_restore_takes_its_own_entrypoint_and_sets_limits() {
    let (node, s, _store) = warm_platform("p", 1, 1, 4).await;
    let c = s
        .claim(claim_req("p", &["tail", "-f", "/dev/null"]))
        .await
        .unwrap();
    let ck = s.checkpoint_claim(&c.id, true, "n").await.unwrap();
    let restore = |argv: &[&str], env: &[(&str, &str)], resources| {
        let with = RestoreAs {
            process: Some(support::task(argv, env)),
            resources,
        };
        s.restore_checkpoint(&ck.checkpoint_id, 1, 60, Default::default(), "", with)
    };
    let limits = pb::Resources {
        cpu: "1".into(),
        memory: "2Gi".into(),
        pids: 0,
    };
    let made = restore(&["tail", "-f", "/dev/null"], &[], Some(limits.clone()))
        .await
        .expect("the checkpointed entrypoint is what runs");
    assert_eq!(made[0].entrypoint, ["tail", "-f", "/dev/null"]);
    let resized = node
        .books()
        .injected
        .iter()
        .find(|r| r.sandbox_id == made[0].sandbox.id)
        .cloned()
        .expect("the restored sandbox was resized");
    assert_eq!(resized.resources, Some(limits));
    assert!(resized.process.is_none(), "nothing is started");
    let restored = node.books().restored.len();
    for (argv, env, field) in [
        (&["python3", "a.py"][..], &[][..], "entrypoint"),
        (&["tail", "-f", "/dev/null"][..], &[("A", "1")][..], "env"),
    ] {
        let e = restore(argv, env, None).await.expect_err(field);
        assert!(matches!(e, SchedError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains(&format!("{field} ")), "{e}");
    }
    let pids = pb::Resources {
        pids: 5,
        ..Default::default()
    };
    let e = restore(&[], &[], Some(pids)).await.expect_err("pids");
    assert!(e.to_string().contains("pids"), "{e}");
    assert_eq!(
        node.books().restored.len(),
        restored,
        "nothing was restored"
    );
}

#[tokio::test]
async fn pool_names_must_be_dns_labels() {
    let (_node, s, _store) = platform().await;
    let long = "a".repeat(64);
    for bad in [
        "Upper",
        "under_score",
        "dot.ted",
        "-lead",
        long.as_str(),
        "",
    ] {
        let e = s.apply_pool(pool(bad, 0, 0, 1)).expect_err(bad);
        assert!(
            e.to_string().contains("pool name") && e.to_string().contains("DNS label"),
            "{bad}: {e}"
        );
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
    }
    assert!(s.pools().is_empty(), "no bad pool was stored");
    s.apply_pool(pool(&"a".repeat(63), 0, 0, 1))
        .expect("63 characters is a DNS label");
}

#[tokio::test]
async fn claims_naming_unknown_pools_are_counted_without_their_names() {
    let (_node, s, _store) = platform().await;
    for made_up in ["a\0b", "Bad_Name", "nosuch-metric-pool"] {
        let req = pb::ClaimRequest {
            pool: made_up.into(),
            ..Default::default()
        };
        assert!(s.claim(req).await.is_err(), "{made_up:?} is no pool");
    }
    let text = sandpool_telemetry::metrics::render();
    assert!(
        !text.contains('\0') && !text.contains("Bad_Name") && !text.contains("nosuch-metric-pool")
    );
    assert!(
        text.contains("sandpool_claim_duration_seconds_count{pool=\"-\",outcome=\"error\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_metadata_patch_adds_replaces_and_deletes_keys_seen_by_get_and_list() {
    let (_node, s, _store) = warm_platform("p", 1, 1, 4).await;
    let mut req = claim_req("p", &["sleep", "9"]);
    req.metadata.insert("team".into(), "a".into());
    req.metadata.insert("old".into(), "x".into());
    let c = s.claim(req).await.unwrap();
    let set = BTreeMap::from([
        ("team".to_string(), "b".to_string()),
        ("new".to_string(), "y".to_string()),
    ]);
    let removed = ["old".to_string(), "never-there".to_string()];
    let patched = s.patch_metadata(&c.id, set, &removed).unwrap();
    let want = BTreeMap::from([
        ("new".to_string(), "y".to_string()),
        ("team".to_string(), "b".to_string()),
    ]);
    assert_eq!(patched.metadata, want);
    assert_eq!(s.get_claim(&c.id).unwrap().metadata, want);
    let by = |k: &str, v: &str| {
        s.list_claims("", &[], &BTreeMap::from([(k.to_string(), v.to_string())]))
            .len()
    };
    assert_eq!(by("team", "b"), 1);
    assert_eq!(by("team", "a"), 0, "the old value no longer matches");
    assert_eq!(by("old", "x"), 0, "a deleted key no longer matches");
    assert!(matches!(
        s.patch_metadata("nope", BTreeMap::new(), &[]),
        Err(SchedError::ClaimNotFound(_))
    ));
    let both = BTreeMap::from([("k".to_string(), "v".to_string())]);
    assert!(matches!(
        s.patch_metadata(&c.id, both, &["k".to_string()]),
        Err(SchedError::Invalid(_))
    ));
}

/// Deleting a pool removes its warm sandboxes at once and keeps the claimed
/// one until its claim is released; the pool is gone (no refill, no claims)
/// and a second delete says it does not exist.
#[tokio::test]
async fn deleting_a_pool_removes_its_warm_sandboxes_and_keeps_claimed_ones() {
    let (node, s, _store) = warm_platform("d", 2, 2, 4).await;
    let c = s.claim(claim_req("d", &["true"])).await.unwrap();
    wait_available(&s, "d", 2).await;
    let warm = node.warm_of("d");
    assert_eq!(warm.len(), 2);

    s.delete_pool("d").await.unwrap();
    {
        let b = node.books();
        for id in &warm {
            assert!(b.released.contains(id), "warm {id} released");
            assert!(!b.sandboxes.contains_key(id), "warm {id} deleted");
        }
        assert!(!b.released.contains(&c.sandbox.id), "the claimed one stays");
        assert!(b.sandboxes.contains_key(&c.sandbox.id));
    }
    assert!(matches!(
        s.pool_status("d"),
        Err(SchedError::PoolNotFound(_))
    ));
    assert!(!s.pools().contains(&"d".to_string()));
    assert_eq!(s.get_claim(&c.id).unwrap().state, ClaimState::Bound);
    assert!(matches!(
        s.claim(claim_req("d", &["true"])).await,
        Err(SchedError::PoolNotFound(_))
    ));
    let created = node.books().created.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.books().created.len(),
        created,
        "a deleted pool does not refill"
    );

    s.release(&c.id, sandpool_core::claim::ClaimEvent::Release)
        .await
        .unwrap();
    PATIENCE
        .wait_until("the claimed sandbox to go with its claim", || {
            !node.books().sandboxes.contains_key(&c.sandbox.id)
        })
        .await;
    assert!(matches!(
        s.delete_pool("d").await,
        Err(SchedError::PoolNotFound(_))
    ));
}

#[tokio::test]
async fn a_pause_on_expiry_claim_is_paused_at_its_ttl_and_stays_until_resumed() {
    let (node, s, _store) = warm_platform("ap", 2, 2, 4).await;
    let short = |pause_on_expiry| pb::ClaimRequest {
        ttl_seconds: 1,
        pause_on_expiry,
        ..claim_req("ap", &["true"])
    };
    let kept = s.claim(short(true)).await.unwrap();
    let dropped = s.claim(short(false)).await.unwrap();
    PATIENCE
        .wait_until("the auto-pause claim to pause", || {
            s.get_claim(&kept.id)
                .is_ok_and(|c| c.state == ClaimState::Paused)
        })
        .await;
    PATIENCE
        .wait_until("the other claim to be released", || {
            node.books().released.contains(&dropped.sandbox.id)
        })
        .await;
    // further reaper passes leave the paused claim alone
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let c = s.get_claim(&kept.id).unwrap();
    assert_eq!(c.state, ClaimState::Paused);
    assert!(c.pause_on_expiry);
    assert_eq!(node.books().paused, vec![kept.sandbox.id.clone()]);
    assert!(!node.books().released.contains(&kept.sandbox.id));
    // resumed, it runs under a fresh TTL instead of expiring at once
    let r = s.resume(&kept.id).await.unwrap();
    assert_eq!(r.state, ClaimState::Bound);
    assert!(
        r.expires_ms > sandpool_scheduler::scheduler::now_ms() + 60_000,
        "{r:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.get_claim(&kept.id).unwrap().state, ClaimState::Bound);
}

/// A claim's default env vars (E2B `envVars`) are kept with it, through a
/// filesystem-only pause and resume (what its API sets in the new runtime
/// again); bad ones are refused before a sandbox is taken.
#[tokio::test]
async fn a_claims_sandbox_env_is_kept_through_a_filesystem_pause() {
    let (node, s, _store) = warm_platform("se", 1, 1, 4).await;
    let env: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
    let bad = pb::ClaimRequest {
        sandbox_env: [("A=B".to_string(), "1".to_string())].into(),
        ..claim_req("se", &["true"])
    };
    let e = s.claim(bad).await.unwrap_err();
    assert!(
        matches!(e, SchedError::Invalid(ref m) if m.contains("sandbox_env")),
        "{e}"
    );
    assert_eq!(status(&s, "se").allocated, 0, "nothing was taken");
    let c = s
        .claim(pb::ClaimRequest {
            sandbox_env: env.clone(),
            ..claim_req("se", &["true"])
        })
        .await
        .unwrap();
    s.pause_as(&c.id, true).await.unwrap();
    assert_eq!(node.books().paused_filesystem, vec![c.sandbox.id.clone()]);
    let r = s.resume(&c.id).await.unwrap();
    assert_eq!(r.state, ClaimState::Bound);
    let shown = sandpool_scheduler::service::claim_pb(&s.get_claim(&c.id).unwrap());
    assert_eq!(shown.sandbox_env, env);
}

#[tokio::test]
async fn a_pause_on_expiry_claim_that_cannot_pause_is_released() {
    let (node, s, _store) = warm_platform("np", 1, 1, 4).await;
    node.books().fail_pause = true;
    let c = s
        .claim(pb::ClaimRequest {
            ttl_seconds: 1,
            pause_on_expiry: true,
            ..claim_req("np", &["true"])
        })
        .await
        .unwrap();
    PATIENCE
        .wait_until("the claim to be released", || {
            node.books().released.contains(&c.sandbox.id)
        })
        .await;
    assert!(matches!(
        s.get_claim(&c.id),
        Err(SchedError::ClaimNotFound(_))
    ));
}

/// A pool whose release policy is `recycle`: a released claim's sandbox goes
/// back to the pool's warm set (same id, new token) instead of being deleted
/// and replaced; the next claim takes it. A claim on another image is
/// deleted, not recycled.
#[tokio::test]
async fn a_recycling_pool_takes_released_sandboxes_back() {
    let (node, s, _store) = platform().await;
    // room for the recycled sandbox next to the refill's while it was claimed
    let mut p = pool("rp", 1, 2, 4);
    p.template.release_policy = sandpool_core::ReleasePolicy::Recycle;
    s.apply_pool(p).unwrap();
    wait_available(&s, "rp", 1).await;
    let c = s.claim(claim_req("rp", &["true"])).await.unwrap();
    let first = c.sandbox.id.clone();
    s.release(&c.id, sandpool_core::claim::ClaimEvent::Release)
        .await
        .unwrap();
    wait_available(&s, "rp", 2).await;
    assert!(node.warm_of("rp").contains(&first), "recycled, not deleted");
    assert_eq!(node.books().created.len(), 2, "one refill, no replacement");
    let a = s.claim(claim_req("rp", &["true"])).await.unwrap();
    let b = s.claim(claim_req("rp", &["true"])).await.unwrap();
    let again = [a, b]
        .into_iter()
        .find(|c| c.sandbox.id == first)
        .expect("a claim takes the recycled sandbox");
    assert!(!again.cold);
    assert_eq!(again.sandbox.token, format!("token-{first}-recycled"));

    // a claim that ran another image is not recycled
    wait_available(&s, "rp", 1).await;
    let mut req = claim_req("rp", &["true"]);
    req.image = "other".into();
    let up = s.claim(req).await.unwrap();
    s.release(&up.id, sandpool_core::claim::ClaimEvent::Release)
        .await
        .unwrap();
    assert!(
        !node.books().sandboxes.contains_key(&up.sandbox.id),
        "deleted"
    );
}

/// A release of a recycling pool's claim answers without waiting for the
/// node's reset (here: one that never ends); the claim is gone at once and
/// the pool does not start a replacement next to the sandbox being reset.
#[tokio::test]
async fn a_release_does_not_wait_for_the_recycle() {
    let (node, s, _store) = platform().await;
    // one sandbox (poolMin 1), room for a second (poolMax 2)
    let mut p = pool("rh", 0, 1, 2);
    p.capacity.pool_min = 1;
    p.template.release_policy = sandpool_core::ReleasePolicy::Recycle;
    s.apply_pool(p).unwrap();
    wait_available(&s, "rh", 1).await;
    node.books().hang_recycle = true;
    let c = s.claim(claim_req("rh", &["true"])).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        s.release(&c.id, sandpool_core::claim::ClaimEvent::Release),
    )
    .await
    .expect("the release answered while the reset hangs")
    .unwrap();
    assert!(s.get_claim(&c.id).is_err(), "the claim is gone");
    // a few refill ticks: the sandbox being reset counts as the pool's one
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.books().created.len(), 1, "no replacement was started");
}

#[tokio::test]
async fn a_pool_says_pulling_until_its_image_is_on_the_node_then_fills() {
    let (node, s, _store) = platform().await;
    node.books().hold_prepare = true;
    s.apply_pool(pool("img", 2, 2, 10)).unwrap();
    PATIENCE
        .wait_until("the pool's image to be asked for", || {
            !node.books().prepared.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = status(&s, "img");
    assert_eq!(st.image_phase, "pulling", "{st:?}");
    assert!(
        node.books().created.is_empty(),
        "no create before the image is there"
    );

    node.books().hold_prepare = false;
    wait_available(&s, "img", 2).await;
    let st = status(&s, "img");
    assert_eq!(
        (st.image_phase.as_str(), st.message.as_str()),
        ("ready", "")
    );
    assert_eq!(node.books().prepared.len(), 1, "asked for once");
}

#[tokio::test]
async fn a_pool_whose_image_cannot_be_pulled_says_why_and_creates_nothing() {
    let (node, s, _store) = platform().await;
    node.books().fail_prepare =
        Some("pulling 127.0.0.1:1/nope:1: not found: manifest unknown".into());
    s.apply_pool(pool("bad", 2, 2, 10)).unwrap();
    PATIENCE
        .wait_until("the pool's image to fail", || {
            status(&s, "bad").image_phase == "failed"
        })
        .await;
    let st = status(&s, "bad");
    assert!(st.message.contains("manifest unknown"), "{st:?}");
    assert!(st.message.contains("on node fake-node"), "{st:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        node.books().created.is_empty(),
        "no create while the image fails"
    );
    assert_eq!(
        node.books().prepared.len(),
        1,
        "retried only after the back-off"
    );

    // a new image for the pool is asked for at once
    node.books().fail_prepare = None;
    let mut fixed = pool("bad", 2, 2, 10);
    fixed.template.image = "python".into();
    s.apply_pool(fixed).unwrap();
    wait_available(&s, "bad", 2).await;
    assert_eq!(status(&s, "bad").image_phase, "ready");
    assert_eq!(
        node.books().prepared.last().map(String::as_str),
        Some("python")
    );
}

/// A claim that names no process, of a pool whose template names none,
/// starts the image's default process (Entrypoint ++ Cmd) its node reports;
/// a claim's own argv and a template's command replace it whole.
#[tokio::test]
async fn without_a_command_a_claim_starts_the_images_entrypoint_and_cmd() {
    let (node, s, _store) = platform().await;
    let image = vec!["/entry.sh".to_string(), "serve".to_string()];
    node.books().image_command = image.clone();
    s.apply_pool(support::pool("bare", &[], 1, 1, 4)).unwrap();
    wait_available(&s, "bare", 1).await;

    let warm = s.claim(claim_req("bare", &[])).await.unwrap();
    assert!(!warm.cold);
    assert_eq!(warm.entrypoint, image);
    let cold = s.claim(claim_req("bare", &[])).await.unwrap();
    assert_eq!(cold.entrypoint, image, "the refill reports it too");
    let own = s.claim(claim_req("bare", &["python3", "app.py"])).await;
    assert_eq!(own.unwrap().entrypoint, vec!["python3", "app.py"]);
    {
        let b = node.books();
        let argv: Vec<&Vec<String>> = b
            .injected
            .iter()
            .map(|r| &r.process.as_ref().unwrap().argv)
            .collect();
        assert_eq!(
            argv,
            vec![
                &image,
                &image,
                &vec!["python3".to_string(), "app.py".to_string()]
            ]
        );
    }

    // a template's command wins over the image's
    s.apply_pool(support::pool("cmd", &["sleep", "9"], 0, 0, 4))
        .unwrap();
    let c = s.claim(claim_req("cmd", &[])).await.unwrap();
    assert_eq!(c.entrypoint, vec!["sleep", "9"]);
}

/// A gateway's report that a pool's sandbox never became ready (its
/// readyCmd) shows in the pool's status with its time, until a later
/// success or a new template clears it; a failure without its reason and a
/// report on an unknown pool are refused.
#[tokio::test]
async fn a_ready_failure_shows_in_the_pools_status_until_a_success() {
    let (_node, s, _store) = platform().await;
    s.apply_pool(pool("rc", 0, 0, 4)).unwrap();
    assert_eq!(status(&s, "rc").ready_failure, "");
    let before = sandpool_scheduler::scheduler::now_ms();
    let why = "readyCmd \"test -e /ok\" did not exit 0 within 30s (3 runs; last: exit code 1)";
    s.report_pool_ready("rc", false, why).unwrap();
    let st = status(&s, "rc");
    assert_eq!(st.ready_failure, why);
    assert!(st.ready_failure_unix_ms >= before, "{st:?}");

    let e = s.report_pool_ready("rc", false, " ").unwrap_err();
    assert!(matches!(e, SchedError::Invalid(_)), "{e}");
    assert_eq!(status(&s, "rc").ready_failure, why, "unchanged");
    let e = s.report_pool_ready("nope", false, why).unwrap_err();
    assert!(matches!(e, SchedError::PoolNotFound(_)), "{e}");

    s.report_pool_ready("rc", true, "").unwrap();
    let st = status(&s, "rc");
    assert_eq!(
        (st.ready_failure.as_str(), st.ready_failure_unix_ms),
        ("", 0)
    );

    // a new template starts clean; re-applying the same one keeps it
    s.report_pool_ready("rc", false, why).unwrap();
    s.apply_pool(pool("rc", 0, 0, 4)).unwrap();
    assert_eq!(status(&s, "rc").ready_failure, why);
    s.apply_pool(support::pool("rc", &["sleep", "2"], 0, 0, 4))
        .unwrap();
    assert_eq!(status(&s, "rc").ready_failure, "");
}
