//! OpenSandbox BatchSandbox `spec.pause` in Kubernetes mode (issue 21), as
//! upstream's controller does it: a pause creates the SandboxSnapshot
//! `<batch>-pause` (committed by the node agent DaemonSet pod of the pod's
//! node, an in-process fake here reached through the fake apiserver with
//! the service token), then deletes the pod (`Paused`); a resume makes the
//! pod again from the snapshot's images on that node. The phases,
//! `pauseObservedGeneration`, conditions and events are upstream's; the
//! writes go through the generated CRDs' schemas.

mod support;

use std::sync::Arc;

use kube::api::Api;
use sandpool_controller::batch;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::PAUSED_ANNOTATION;
use sandpool_controller::snapshot;
use serde_json::{Value, json};
use support::node_agent::{
    AGENT_TOKEN, Calls, context_with_daemonset, context_with_snapshot_registry, put_agent_pod,
    serve_agent,
};
use support::{FakeApi, NoTasks, batches_path, cr_path, make_ready, pods_path, pools_path};
use tonic::Status;

const NS: &str = "sandpool";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/sandpool/events";
const EXPIRE: &str = "2099-01-01T00:00:00Z";

async fn reconcile(ctx: &Arc<Context>, name: &str) {
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get batch");
    batch::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("batch reconcile");
}

fn stored(api: &FakeApi, name: &str) -> Value {
    api.with_store(|s| s.get(&batches_path(NS), name).cloned())
        .expect("batch")
}

fn events(api: &FakeApi, name: &str) -> Vec<(String, String, String)> {
    api.with_store(|s| s.list(EVENTS))
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

fn condition(b: &Value, kind: &str) -> Value {
    b["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

fn calls_of(calls: &Calls) -> Vec<(String, String, String)> {
    let mut c = calls.lock().clone();
    c.sort();
    c
}

const SNAP: &str = "b-pause";
const IMAGE: &str = "sandpool.local/snapshots/b-c:snap-gen2";

fn snapshots_path() -> String {
    cr_path("sandbox.opensandbox.io", "sandboxsnapshots", NS)
}

/// A fake apiserver enforcing the generated CRDs, and the fake node agent
/// (refusing every call with `fail`).
async fn setup(fail: Option<Status>) -> (FakeApi, Arc<Context>, Calls) {
    let api = FakeApi::new();
    api.enforce_schemas(&all_crds());
    let (port, calls) = serve_agent(fail).await;
    let ctx = context_with_daemonset(&api, NS, port, NoTasks(Some(None)));
    (api, ctx, calls)
}

/// The node agent pod of node-a (on loopback), and a batch of `replicas`
/// from a template with an `expireTime`, its pods Ready on node-a and the
/// batch `Succeed`.
async fn running_batch(api: &FakeApi, ctx: &Arc<Context>, replicas: usize) {
    api.with_store(|s| {
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a");
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"},
                "spec": {"replicas": replicas, "expireTime": EXPIRE,
                    "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        );
    });
    reconcile(ctx, "b").await;
    reconcile(ctx, "b").await;
    for i in 0..replicas {
        api.with_store(|s| {
            make_ready(
                s,
                NS,
                &format!("b-{i}"),
                &format!("10.2.0.{}", i + 1),
                "node-a",
            )
        });
    }
    reconcile(ctx, "b").await;
    assert_eq!(stored(api, "b")["status"]["phase"], "Succeed");
}

/// `spec.pause` set to `pause` by a user: the apiserver bumps the
/// generation (returned).
fn set_pause(api: &FakeApi, pause: Value) -> i64 {
    let mut generation = 0;
    api.with_store(|s| {
        s.mutate(&batches_path(NS), "b", |b| {
            generation = b["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            b["spec"]["pause"] = pause.clone();
            b["metadata"]["generation"] = json!(generation);
        })
    });
    generation
}

async fn reconcile_snapshot(ctx: &Arc<Context>) {
    let s = Api::<SandboxSnapshot>::namespaced(ctx.client.clone(), NS)
        .get(SNAP)
        .await
        .expect("the pause snapshot");
    snapshot::reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("snapshot reconcile");
}

fn pod_names(api: &FakeApi) -> Vec<String> {
    api.with_store(|s| s.list(&pods_path(NS)))
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .filter(|n| n != "agent-a")
        .collect()
}

fn snapshot_obj(api: &FakeApi) -> Option<Value> {
    api.with_store(|s| s.get(&snapshots_path(), SNAP).cloned())
}

/// Pause `b` to `Paused` (snapshot committed by the fake agent).
async fn paused(api: &FakeApi, ctx: &Arc<Context>) -> i64 {
    let generation = set_pause(api, json!(true));
    reconcile(ctx, "b").await;
    reconcile_snapshot(ctx).await;
    reconcile(ctx, "b").await;
    assert_eq!(stored(api, "b")["status"]["phase"], "Paused");
    generation
}

/// `b` is paused: no pod, no endpoints, `Paused=True`, the TTL set aside.
fn assert_paused(api: &FakeApi) {
    let b = stored(api, "b");
    assert_eq!(b["status"]["phase"], "Paused", "{b}");
    assert!(
        pod_names(api).is_empty(),
        "the pod is deleted: {:?}",
        pod_names(api)
    );
    assert_eq!(condition(&b, "Paused")["status"], "True", "{b}");
    assert_eq!(b["status"]["ready"], 0, "{b}");
    assert_eq!(
        b["metadata"]["annotations"][ENDPOINTS_ANNOTATION], "[]",
        "{b}"
    );
    // the TTL clock stops as for a paused claim
    assert!(b["spec"]["expireTime"].is_null(), "{b}");
    assert!(
        b["metadata"]["annotations"][PAUSED_ANNOTATION]
            .as_str()
            .is_some_and(|ms| ms.parse::<i64>().is_ok_and(|ms| ms > 0)),
        "{b}"
    );
}

#[tokio::test]
async fn pause_commits_a_snapshot_and_deletes_the_pod_and_resume_makes_it_again_from_the_images() {
    let (api, ctx, calls) = setup(None).await;
    running_batch(&api, &ctx, 1).await;
    let generation = set_pause(&api, json!(true));
    reconcile(&ctx, "b").await;
    // acknowledged, and the snapshot asked for, controlled by the batch
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Pausing", "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], generation, "{b}");
    let snap = snapshot_obj(&api).expect("snapshot b-pause");
    assert_eq!(snap["spec"]["sandboxName"], "b", "{snap}");
    let owner = &snap["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            &owner["kind"],
            &owner["name"],
            &owner["uid"],
            &owner["controller"]
        ),
        (
            &json!("BatchSandbox"),
            &json!("b"),
            &b["metadata"]["uid"],
            &json!(true)
        ),
        "{snap}"
    );
    // not committed yet: the batch waits with its pod
    reconcile(&ctx, "b").await;
    assert_eq!(stored(&api, "b")["status"]["phase"], "Pausing");
    assert_eq!(pod_names(&api), ["b-0"]);

    reconcile_snapshot(&ctx).await;
    let bearer = format!("Bearer {AGENT_TOKEN}");
    assert_eq!(
        calls_of(&calls),
        [("commit".to_string(), format!("{NS}/b-0"), bearer)],
        "committed by the pod's node agent, not frozen"
    );
    reconcile(&ctx, "b").await;
    assert_paused(&api);
    // paused: later reconciles make no pod
    reconcile(&ctx, "b").await;
    assert!(pod_names(&api).is_empty());
    assert_eq!(stored(&api, "b")["status"]["phase"], "Paused");

    let generation = set_pause(&api, json!(false));
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Resuming", "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], generation, "{b}");
    assert!(condition(&b, "Paused").is_null(), "{b}");
    // the template runs the snapshot's image on the node that holds it
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    let t = &b["spec"]["template"]["spec"];
    assert_eq!(t["containers"][0]["image"], IMAGE, "{b}");
    assert_eq!(t["containers"][0]["imagePullPolicy"], "IfNotPresent", "{b}");
    assert_eq!(t["nodeName"], "node-a", "{b}");
    // the TTL restarts with what was left
    assert!(b["spec"]["expireTime"].is_string(), "{b}");
    reconcile(&ctx, "b").await;
    let pod = api
        .with_store(|s| s.get(&pods_path(NS), "b-0").cloned())
        .expect("the pod made again");
    assert_eq!(pod["spec"]["containers"][0]["image"], IMAGE, "{pod}");
    assert_eq!(pod["spec"]["nodeName"], "node-a", "{pod}");
    assert_eq!(stored(&api, "b")["status"]["phase"], "Resuming");
    api.with_store(|s| make_ready(s, NS, "b-0", "10.2.0.9", "node-a"));
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert_eq!(
        b["metadata"]["annotations"][ENDPOINTS_ANNOTATION],
        "[\"10.2.0.9\"]"
    );
    assert!(
        snapshot_obj(&api).is_none(),
        "the pause snapshot is deleted once resumed"
    );
    assert_eq!(calls.lock().len(), 1, "no freeze or thaw");
    let evs = events(&api, "b");
    assert!(evs.iter().all(|(t, _, _)| t == "Normal"), "{evs:?}");
    for r in ["Pausing", "Paused", "Resuming", "Resumed"] {
        assert!(evs.iter().any(|(_, e, _)| e == r), "{r}: {evs:?}");
    }
}

#[tokio::test]
async fn a_pause_pushed_to_a_registry_resumes_from_it_on_any_node() {
    let api = FakeApi::new();
    api.enforce_schemas(&all_crds());
    let (port, calls) = serve_agent(None).await;
    let cfg = sandpool_controller::snapshot_registry::SnapshotRegistry::new(
        Some("reg.example:5000/snaps"),
        false,
        None,
    )
    .expect("flags");
    let ctx = context_with_snapshot_registry(&api, NS, port, NoTasks(Some(None)), cfg);
    running_batch(&api, &ctx, 1).await;
    paused(&api, &ctx).await;
    assert_paused(&api);
    let pushed = "reg.example:5000/snaps/b-c:snap-gen2";
    assert!(
        calls_of(&calls)[0].0.contains(&format!("{pushed:?}")),
        "{:?}",
        calls_of(&calls)
    );
    set_pause(&api, json!(false));
    reconcile(&ctx, "b").await;
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    let t = &b["spec"]["template"]["spec"];
    assert_eq!(t["containers"][0]["image"], pushed, "{b}");
    assert!(t["nodeName"].is_null(), "not pinned: {b}");
    assert!(t["containers"][0]["imagePullPolicy"].is_null(), "{b}");
    reconcile(&ctx, "b").await;
    let pod = api
        .with_store(|s| s.get(&pods_path(NS), "b-0").cloned())
        .expect("the pod made again");
    assert_eq!(pod["spec"]["containers"][0]["image"], pushed, "{pod}");
    assert!(pod["spec"]["nodeName"].is_null(), "{pod}");
}

#[tokio::test]
async fn a_pause_of_more_than_one_replica_fails_as_upstreams_and_the_pods_stay() {
    let (api, ctx, calls) = setup(None).await;
    running_batch(&api, &ctx, 2).await;
    let generation = set_pause(&api, json!(true));
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], generation, "{b}");
    let c = condition(&b, "PauseFailed");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("True"), &json!("UnsupportedReplicas")),
        "{b}"
    );
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.replicas=1; got spec.replicas=2")),
        "{c}"
    );
    assert!(snapshot_obj(&api).is_none());
    // not retried until the spec changes; the pods run on
    reconcile(&ctx, "b").await;
    assert_eq!(pod_names(&api).len(), 2);
    assert!(calls.lock().is_empty());
    assert!(
        events(&api, "b")
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "PauseFailed")
    );
}

#[tokio::test]
async fn a_snapshot_the_node_agent_refuses_fails_the_pause_and_keeps_the_pod() {
    let (api, ctx, calls) = setup(Some(Status::failed_precondition("gVisor (runsc) pod"))).await;
    running_batch(&api, &ctx, 1).await;
    let generation = set_pause(&api, json!(true));
    reconcile(&ctx, "b").await;
    reconcile_snapshot(&ctx).await;
    assert_eq!(calls.lock().len(), 1);
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], generation, "{b}");
    let c = condition(&b, "PauseFailed");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("True"), &json!("SnapshotFailed")),
        "{b}"
    );
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("gVisor (runsc) pod")),
        "{c}"
    );
    assert_eq!(pod_names(&api), ["b-0"]);
    assert!(
        events(&api, "b")
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == "PauseFailed" && n.contains("gVisor")),
    );
    // a new pause (the upstream server's retry) deletes the failed snapshot and commits again
    set_pause(&api, Value::Null);
    reconcile(&ctx, "b").await;
    set_pause(&api, json!(true));
    reconcile(&ctx, "b").await;
    assert!(
        snapshot_obj(&api).is_none(),
        "the failed snapshot is deleted first"
    );
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Pausing", "{b}");
    assert!(condition(&b, "PauseFailed").is_null(), "{b}");
    assert!(snapshot_obj(&api).is_some());
}

#[tokio::test]
async fn a_resume_without_its_snapshot_stays_paused_and_says_why() {
    let (api, ctx, _calls) = setup(None).await;
    running_batch(&api, &ctx, 1).await;
    paused(&api, &ctx).await;
    api.with_store(|s| s.delete(&snapshots_path(), SNAP));
    let generation = set_pause(&api, json!(false));
    reconcile(&ctx, "b").await;
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Paused", "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], generation, "{b}");
    let c = condition(&b, "ResumeFailed");
    assert_eq!(
        (&c["status"], &c["reason"], &c["message"]),
        (
            &json!("True"),
            &json!("SnapshotNotFound"),
            &json!("SandboxSnapshot not found")
        ),
        "{b}"
    );
    assert_eq!(condition(&b, "Paused")["status"], "True", "{b}");
    assert!(pod_names(&api).is_empty());
    // the TTL stays stopped while the batch is paused
    assert!(b["spec"]["expireTime"].is_null(), "{b}");
}

#[tokio::test]
async fn a_resumed_pod_that_cannot_start_fails_the_resume_as_upstreams() {
    let (api, ctx, _calls) = setup(None).await;
    running_batch(&api, &ctx, 1).await;
    paused(&api, &ctx).await;
    set_pause(&api, json!(false));
    for _ in 0..3 {
        reconcile(&ctx, "b").await;
    }
    // the image is gone from the node: the kubelet cannot pull it
    api.with_store(|s| {
        s.mutate(&pods_path(NS), "b-0", |p| {
            p["spec"]["nodeName"] = json!("node-a");
            p["status"] = json!({"phase": "Pending", "containerStatuses": [{"name": "c",
                "image": IMAGE, "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]});
        })
    });
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Failed", "{b}");
    let c = condition(&b, "ResumeFailed");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("True"), &json!("ErrImagePull")),
        "{b}"
    );
    assert_eq!(
        c["message"],
        "1/1 observed pods failed during resume; primary reason=ErrImagePull; sample pod=b-0"
    );
    assert_eq!(condition(&b, "PodFailed")["reason"], "ErrImagePull", "{b}");
    assert!(snapshot_obj(&api).is_some(), "kept: the resume did not end");
}

#[tokio::test]
async fn a_pooled_batch_is_detached_from_its_pool_on_pause_and_resumes_from_the_pools_template() {
    let (api, ctx, calls) = setup(None).await;
    api.with_store(|s| {
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a");
        s.put(
            &pools_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool",
                "metadata": {"name": "py"},
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "python:3.12-slim"}]}},
                    "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 1, "poolMax": 2}}}),
        );
        s.put(
            &pods_path(NS),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "py-abc", "labels": {POOL_LABEL: "py"}},
                "spec": {"containers": [{"name": "c", "image": "python:3.12-slim"}]}}),
        );
        make_ready(s, NS, "py-abc", "10.2.0.5", "node-a");
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"}, "spec": {"replicas": 1, "poolRef": "py"}}),
        );
    });
    reconcile(&ctx, "b").await;
    reconcile(&ctx, "b").await;
    assert_eq!(stored(&api, "b")["status"]["phase"], "Succeed");
    paused(&api, &ctx).await;
    assert_eq!(calls.lock()[0].1, format!("{NS}/py-abc"));
    let b = stored(&api, "b");
    assert!(b["spec"]["poolRef"].is_null(), "detached: {b}");
    assert_eq!(
        b["spec"]["template"]["spec"]["containers"][0]["image"], "python:3.12-slim",
        "{b}"
    );
    assert!(
        !pod_names(&api).contains(&"py-abc".to_string()),
        "the used pool pod is released"
    );
    set_pause(&api, json!(false));
    for _ in 0..3 {
        reconcile(&ctx, "b").await;
    }
    let pod = api
        .with_store(|s| s.get(&pods_path(NS), "b-0").cloned())
        .expect("the pod made from the snapshot");
    assert_eq!(
        pod["spec"]["containers"][0]["image"], "sandpool.local/snapshots/b-c:snap-gen2",
        "{pod}"
    );
    assert!(pod["metadata"]["labels"].get(POOL_LABEL).is_none(), "{pod}");
}
