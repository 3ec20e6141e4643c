//! Issue 21 bug 3: in Kubernetes mode a claim's wait for its pod is driven by
//! a watch on the pods allocated to it, not by a poll timer. Against the fake
//! apiserver in `support`, which serves watches.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::Api;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::KubeScheduler;
use sandpool_controller::{batch, pool};
use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, cr_path, make_ready, pods_path};

const NS: &str = "sandpool";

fn setup() -> (FakeApi, Arc<Context>) {
    let api = FakeApi::new();
    let ctx = support::context(&api, NoTasks(Some(None)));
    (api, ctx)
}

/// A pool that makes all its pods at once (`scaleStrategy` 100%).
fn pool_obj(name: &str, n: i32) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox", "image": "python:3.12-slim", "command": ["sleep", "infinity"]}]}},
                 "capacitySpec": {"bufferMin": n, "bufferMax": n, "poolMin": n, "poolMax": n + 2},
                 "scaleStrategy": {"maxUnavailable": "100%"}}})
}

fn pod_names(api: &FakeApi) -> Vec<String> {
    api.with_store(|s| {
        s.list(&pods_path(NS))
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    })
}

/// A pool `name` with `n` pods, Ready when `ready`.
async fn pool_with_pods(api: &FakeApi, ctx: &Arc<Context>, name: &str, n: i32, ready: bool) {
    api.with_store(|s| {
        s.put(
            &cr_path("sandbox.opensandbox.io", "pools", NS),
            pool_obj(name, n),
        )
    });
    let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get pool");
    pool::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pool reconcile");
    if ready {
        for (i, p) in pod_names(api).iter().enumerate() {
            api.with_store(|s| make_ready(s, NS, p, &format!("10.2.0.{}", i + 10), "node-a"));
        }
    }
}

/// The batch controller as the tests run it: reconciling every batch every
/// `every`.
fn spawn_batch_controller(ctx: Arc<Context>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let all = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
                .list(&Default::default())
                .await
                .expect("list");
            for b in all.items {
                let _ = batch::reconcile(Arc::new(b), ctx.clone()).await;
            }
            tokio::time::sleep(every).await;
        }
    })
}

fn claim_req(pool: &str) -> pb::ClaimRequest {
    pb::ClaimRequest {
        pool: pool.into(),
        ..Default::default()
    }
}

/// Bench-style (run with `--ignored --nocapture`): create→Ready of 20
/// sequential warm claims with the scheduler's default settings; prints the
/// median and total. Numbers are in docs/benchmarks.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "bench: prints timings"]
async fn bench_twenty_sequential_warm_claims() {
    let (api, ctx) = setup();
    pool_with_pods(&api, &ctx, "py", 20, true).await;
    let controller = spawn_batch_controller(ctx.clone(), Duration::from_millis(1));
    let sched = KubeScheduler::new(ctx.client.clone(), NS, Arc::new(NoTasks(Some(None))));
    let mut took = Vec::new();
    let all = Instant::now();
    for _ in 0..20 {
        let t = Instant::now();
        let c = sched
            .create_claim(tonic::Request::new(claim_req("py")))
            .await
            .expect("claim")
            .into_inner();
        took.push(t.elapsed());
        assert_eq!(c.state, pb::ClaimState::Bound as i32);
    }
    let total = all.elapsed();
    controller.abort();
    took.sort();
    println!(
        "20 sequential warm claims: median {:?}, min {:?}, max {:?}, total {total:?}",
        took[10], took[0], took[19]
    );
}

/// Whether the scheduler has a watch open on the pods.
fn watching_pods(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.path == pods_path(NS) && r.query.contains("watch=true"))
        .count()
}

/// Until the scheduler has opened `n` watches on the pods (real time, as
/// the claim runs on another task).
async fn until_watching(api: &FakeApi, n: usize) {
    for _ in 0..500 {
        if watching_pods(api) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the claim never watched its pods");
}

/// A claim waits with the pool's pod not yet Ready; the pod turns Ready only
/// after the scheduler has listed (not ready) and opened its watch. With the
/// re-check interval and the claim timeout at one hour, the claim can only
/// complete because the watch woke it. (The old poll loop never watched, so
/// this failed waiting for the watch; and it would have slept the hour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_wakes_on_its_pod_turning_ready_not_on_a_timer() {
    let (api, ctx) = setup();
    pool_with_pods(&api, &ctx, "py", 1, false).await;
    // the batch controller allocates the (not yet ready) pod at once
    let controller = spawn_batch_controller(ctx.clone(), Duration::from_millis(5));
    let mut sched = KubeScheduler::new(ctx.client.clone(), NS, Arc::new(NoTasks(Some(None))));
    sched.poll = Duration::from_secs(3600);
    sched.claim_timeout = Duration::from_secs(3600);
    let sched = Arc::new(sched);
    let s = sched.clone();
    let claim =
        tokio::spawn(async move { s.create_claim(tonic::Request::new(claim_req("py"))).await });
    until_watching(&api, 1).await;
    assert!(!claim.is_finished(), "the pod is not ready yet");
    let pod = pod_names(&api).remove(0);
    api.with_store(|s| make_ready(s, NS, &pod, "10.2.0.10", "node-a"));
    let got = tokio::time::timeout(Duration::from_secs(60), claim)
        .await
        .expect("the watch woke the claim well before the 1 h re-check")
        .expect("join")
        .expect("claim")
        .into_inner();
    controller.abort();
    assert_eq!(got.state, pb::ClaimState::Bound as i32, "{got:?}");
    assert_eq!(got.sandbox.expect("sandbox").sandbox_id, pod);
}

/// The apiserver ends the claim's watch (timeout, restart) while the pod is
/// still not ready: the scheduler lists and watches again, and the pod
/// turning Ready afterwards still wakes it (re-check interval one hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_watches_again_after_its_watch_ends() {
    let (api, ctx) = setup();
    pool_with_pods(&api, &ctx, "py", 1, false).await;
    let controller = spawn_batch_controller(ctx.clone(), Duration::from_millis(5));
    let mut sched = KubeScheduler::new(ctx.client.clone(), NS, Arc::new(NoTasks(Some(None))));
    sched.poll = Duration::from_secs(3600);
    sched.claim_timeout = Duration::from_secs(3600);
    let sched = Arc::new(sched);
    let s = sched.clone();
    let claim =
        tokio::spawn(async move { s.create_claim(tonic::Request::new(claim_req("py"))).await });
    until_watching(&api, 1).await;
    let first = watching_pods(&api);
    api.end_watches();
    until_watching(&api, first + 1).await;
    assert!(!claim.is_finished(), "the pod is not ready yet");
    let pod = pod_names(&api).remove(0);
    api.with_store(|s| make_ready(s, NS, &pod, "10.2.0.10", "node-a"));
    let got = tokio::time::timeout(Duration::from_secs(60), claim)
        .await
        .expect("the new watch woke the claim")
        .expect("join")
        .expect("claim")
        .into_inner();
    controller.abort();
    assert_eq!(got.state, pb::ClaimState::Bound as i32, "{got:?}");
}
