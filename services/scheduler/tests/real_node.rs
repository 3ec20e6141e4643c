//! The scheduler against a real node agent (private containerd + runc):
//! pool_only exhaustion, TTL expiry, batches with shard patches and task
//! counts, pool deletion. Gated like the node-agent tests
//! (`SANDPOOL_REQUIRE_CONTAINERD=1` in CI makes a missing prerequisite fail).

// test helpers (outside #[test] fns) fail the test on a broken fixture
#![allow(clippy::unwrap_used)]

mod support;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sandpool_node_agent::{
    service::NodeAgentService,
    testkit::{TestNode, gate},
};
use sandpool_proto::v1 as pb;
use sandpool_scheduler::{SchedError, Scheduler, SchedulerConfig, scheduler::PoolRec};

async fn platform(n: u8) -> Option<(TestNode, Arc<Scheduler>, tempfile::TempDir)> {
    platform_with(n, None).await
}

const SERVICE_TOKEN: &str = "test-service-token-0123456789";

/// A real node agent behind the service-token check, as `sandpool serve` runs it.
async fn serve_node(node: &TestNode) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = pb::node_agent_server::NodeAgentServer::new(NodeAgentService::new(Arc::clone(
        node.agent(),
    )));
    let auth = sandpool_proto::auth::RequireToken::new(Some(SERVICE_TOKEN)).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(auth))
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn config(store: &tempfile::TempDir, addr: std::net::SocketAddr, token: &str) -> SchedulerConfig {
    SchedulerConfig {
        store_path: store.path().join("s.redb"),
        nodes: vec![format!("http://{addr}")],
        max_inflight: 4,
        tick: Duration::from_millis(100),
        idle_pause: None,
        service_token: Some(token.to_string()),
    }
}

async fn platform_with(
    n: u8,
    idle_pause: Option<Duration>,
) -> Option<(TestNode, Arc<Scheduler>, tempfile::TempDir)> {
    let runtime = gate()?;
    let node = TestNode::start(runtime, n).await;
    let addr = serve_node(&node).await;
    let store = tempfile::tempdir().unwrap();
    let sched = Scheduler::start(SchedulerConfig {
        idle_pause,
        ..config(&store, addr, SERVICE_TOKEN)
    })
    .await
    .unwrap();
    Some((node, sched, store))
}

#[tokio::test]
async fn node_agents_refuse_a_scheduler_without_the_service_token() {
    let Some(runtime) = gate() else { return };
    let node = TestNode::start(runtime, 15).await;
    let addr = serve_node(&node).await;
    let store = tempfile::tempdir().unwrap();
    let wrong = Scheduler::start(config(&store, addr, "not-the-service-token-42"))
        .await
        .err()
        .expect("a wrong token is refused");
    assert!(
        matches!(&wrong, SchedError::Node { status, .. } if status.code() == tonic::Code::Unauthenticated),
        "{wrong}"
    );
    let mut none = config(&store, addr, SERVICE_TOKEN);
    none.service_token = None;
    let missing = Scheduler::start(none)
        .await
        .err()
        .expect("no token is refused");
    assert!(
        missing.to_string().contains("missing service token"),
        "{missing}"
    );
}

fn pool(name: &str, bmin: u32, bmax: u32, pmax: u32) -> PoolRec {
    support::pool(name, &[], bmin, bmax, pmax)
}

/// Waits: look every 50 ms, give up after 30 s.
const PATIENCE: support::Patience = support::Patience {
    within: Duration::from_secs(30),
    every: Duration::from_millis(50),
};

/// A platform (node `n`) with the pool `name` (these bounds) holding its
/// `bmin` warm sandboxes; `None` without containerd.
async fn warm_platform(
    n: u8,
    name: &str,
    bmin: u32,
    bmax: u32,
    pmax: u32,
) -> Option<(TestNode, Arc<Scheduler>, tempfile::TempDir)> {
    let (node, s, store) = platform(n).await?;
    s.apply_pool(pool(name, bmin, bmax, pmax)).unwrap();
    wait_available(&s, name, bmin).await;
    Some((node, s, store))
}

/// A claim in `pool` with no entrypoint.
fn claim_in(pool: &str) -> pb::ClaimRequest {
    pb::ClaimRequest {
        pool: pool.into(),
        ..Default::default()
    }
}

async fn wait_available(s: &Scheduler, pool: &str, n: u32) {
    PATIENCE
        .wait_until(&format!("pool {pool} to reach {n} warm sandboxes"), || {
            s.pool_status(pool).unwrap().1.available >= n
        })
        .await;
}

async fn wait_node_empty(node: &TestNode) {
    PATIENCE
        .wait_until("the node agent to have no sandboxes left", || {
            node.agent().list("").is_empty()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_only_ttl_and_pool_deletion() {
    let Some((node, s, _store)) = warm_platform(11, "one", 1, 1, 1).await else {
        return;
    };
    let req = |ttl: u64| pb::ClaimRequest {
        pool: "one".into(),
        pool_only: true,
        ttl_seconds: ttl,
        ..Default::default()
    };
    let c = s.claim(req(1)).await.unwrap();
    assert!(!c.cold);
    // poolMax 1 is reached: nothing refills, and pool_only fails fast.
    let e = s.claim(req(0)).await.unwrap_err();
    assert!(matches!(e, SchedError::Exhausted(_)), "{e}");
    assert_eq!(
        s.pool_status("one").unwrap().1.allocated,
        1,
        "a refused claim allocates nothing"
    );
    // The 1 s TTL expires the claim and deletes its sandbox; the pool refills.
    PATIENCE
        .wait_until(
            &format!("claim {} to expire after its 1 s TTL", c.id),
            || s.get_claim(&c.id).is_err(),
        )
        .await;
    assert!(
        matches!(s.get_claim(&c.id), Err(SchedError::ClaimNotFound(_))),
        "claim expired"
    );
    PATIENCE
        .wait_until(
            &format!(
                "the expired claim's sandbox {} to be released",
                c.sandbox.id
            ),
            || node.agent().get(&c.sandbox.id).is_err(),
        )
        .await;
    assert!(
        node.agent().get(&c.sandbox.id).is_err(),
        "expired claim's sandbox released"
    );
    wait_available(&s, "one", 1).await;
    let e = s.claim(claim_in("nope")).await.unwrap_err();
    assert!(matches!(e, SchedError::PoolNotFound(_)));
    s.delete_pool("one").await.unwrap();
    wait_node_empty(&node).await;
    node.assert_no_residue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_shard_patches_and_task_counts() {
    let Some((node, s, _store)) = warm_platform(12, "b", 3, 3, 10).await else {
        return;
    };
    let task = support::task(
        &["sh", "-c", "echo $SHARD > /tmp/shard; exit $CODE"],
        &[("CODE", "0"), ("SHARD", "template")],
    );
    let patches = [
        r#"{"env":{"SHARD":"s0"}}"#,
        r#"{"env":{"SHARD":"s1","CODE":"3"}}"#,
    ];
    let claims = s
        .create_batch(support::job("b", task, &patches))
        .await
        .unwrap();
    assert_eq!(claims.len(), 3);
    let mut ids: Vec<&str> = claims.iter().map(|c| c.sandbox.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct sandboxes");
    let mut counts = None;
    for _ in 0..600 {
        let (_, c) = s.batch_tasks("job").await.unwrap();
        if c.running == 0 && c.unknown == 0 {
            counts = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = counts.expect("tasks finished");
    assert_eq!(
        (c.succeeded, c.failed),
        (2, 1),
        "shard 1 exits 3 through its patch"
    );
    // Each shard ran its own patched task.
    for (i, want) in ["s0", "s1", "template"].iter().enumerate() {
        let claim = claims
            .iter()
            .find(|c| c.metadata.get("shard") == Some(&i.to_string()))
            .unwrap();
        let out = reqwest::Client::new()
            .get(format!(
                "http://{}:{}/files/download",
                claim.sandbox.ip, claim.sandbox.port
            ))
            .query(&[("path", "/tmp/shard")])
            .header("x-execd-access-token", &claim.sandbox.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(out.trim(), *want);
    }
    let e = s
        .create_batch(pb::BatchRequest {
            name: "bad".into(),
            pool: "b".into(),
            replicas: 1,
            shard_task_patches: vec!["[1]".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, SchedError::Invalid(_)), "{e}");
    s.delete_batch("job").await.unwrap();
    assert!(s.list_claims("", &[], &BTreeMap::new()).is_empty());
    // no refill still in flight when the pool goes
    wait_available(&s, "b", 3).await;
    s.delete_pool("b").await.unwrap();
    wait_node_empty(&node).await;
    node.assert_no_residue().await;
}

async fn kill_init(node: &TestNode, sandbox: &str) {
    let (_, pid) = node
        .agent()
        .ctr()
        .task_state(sandbox)
        .await
        .unwrap()
        .expect("task");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_sandboxes_are_replaced_or_their_claims_failed() {
    let Some((node, s, _store)) = warm_platform(13, "f", 2, 2, 10).await else {
        return;
    };
    // A claimed sandbox dies: its claim turns Failed and can still be released.
    let c = s.claim(claim_in("f")).await.unwrap();
    kill_init(&node, &c.sandbox.id).await;
    PATIENCE
        .wait_until("the dead sandbox's claim to turn Failed", || {
            s.get_claim(&c.id).unwrap().state == sandpool_core::claim::ClaimState::Failed
        })
        .await;
    s.release(&c.id, sandpool_core::claim::ClaimEvent::Release)
        .await
        .unwrap();
    // A warm sandbox dies: it is deleted and the pool refills to its buffer.
    wait_available(&s, "f", 2).await;
    let warm: Vec<String> = node
        .agent()
        .list("f")
        .into_iter()
        .map(|i| i.sandbox_id)
        .collect();
    kill_init(&node, &warm[0]).await;
    PATIENCE
        .wait_until("the dead warm sandbox to be replaced", || {
            node.agent()
                .list("f")
                .iter()
                .all(|i| i.sandbox_id != warm[0])
                && s.pool_status("f").unwrap().1.available == 2
        })
        .await;
    let after = node.agent().list("f");
    assert!(
        after.iter().all(|i| i.sandbox_id != warm[0]),
        "dead warm sandbox deleted"
    );
    assert!(
        after
            .iter()
            .all(|i| i.state == pb::SandboxState::Warm as i32)
    );
    assert_eq!(s.pool_status("f").unwrap().1.available, 2, "pool refilled");
    s.delete_pool("f").await.unwrap();
    wait_node_empty(&node).await;
    node.assert_no_residue().await;
}

/// Idle auto-pause: a claim whose runtime serves nothing for the idle limit is
/// paused (its TTL stops); while a command runs it is not; resume brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_claims_are_paused_and_busy_ones_are_not() {
    let Some((node, s, _store)) = platform_with(14, Some(Duration::from_secs(2))).await else {
        return;
    };
    s.apply_pool(pool("idle", 2, 2, 4)).unwrap();
    wait_available(&s, "idle", 2).await;
    let claim = |ttl: u64| pb::ClaimRequest {
        pool: "idle".into(),
        ttl_seconds: ttl,
        ..Default::default()
    };
    let idle = s.claim(claim(600)).await.unwrap();
    let busy = s.claim(claim(600)).await.unwrap();
    // the busy one runs a command for the whole test
    let url = format!("http://{}:{}/command", busy.sandbox.ip, busy.sandbox.port);
    let http = reqwest::Client::new();
    let bg = http
        .post(&url)
        .header("x-execd-access-token", &busy.sandbox.token)
        .json(&serde_json::json!({"command": "sleep 600", "background": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(bg.status(), 200);
    let state = |id: String| {
        let s = s.clone();
        async move { s.get_claim(&id).map(|c| c.state).unwrap() }
    };
    for _ in 0..300 {
        if state(idle.id.clone()).await == sandpool_core::claim::ClaimState::Paused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        state(idle.id.clone()).await,
        sandpool_core::claim::ClaimState::Paused,
        "idle claim paused"
    );
    assert_eq!(
        node.agent().get(&idle.sandbox.id).unwrap().state,
        pb::SandboxState::Paused
    );
    assert_eq!(
        state(busy.id.clone()).await,
        sandpool_core::claim::ClaimState::Bound,
        "a running command keeps it awake"
    );
    let paused = s.get_claim(&idle.id).unwrap();
    assert!(paused.paused_remaining_ms > 0, "TTL stopped while paused");
    s.resume(&idle.id).await.unwrap();
    assert_eq!(
        state(idle.id.clone()).await,
        sandpool_core::claim::ClaimState::Bound
    );
    for c in [&idle, &busy] {
        s.release(&c.id, sandpool_core::claim::ClaimEvent::Release)
            .await
            .unwrap();
    }
    s.delete_pool("idle").await.unwrap();
    wait_node_empty(&node).await;
    node.assert_no_residue().await;
}
