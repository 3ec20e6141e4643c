//! OpenSandbox `SandboxSnapshot` in Kubernetes mode (issue 21): the
//! snapshot controller finds the BatchSandbox's running pod and its node,
//! asks that node's agent (an in-process fake here, the chart's DaemonSet
//! pod found through the fake apiserver, called with the service token) to
//! commit the pod's containers, and reports upstream's phases, status
//! fields, conditions and events. The status writes go through the
//! generated CRD's schema (pruned and validated as the apiserver would).

mod support;

use std::sync::Arc;

use kube::api::Api;
use sandpool_controller::batch;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::snapshot;
use sandpool_controller::snapshot_registry::SnapshotRegistry;
use serde_json::{Value, json};
use support::node_agent::{
    AGENT_TOKEN, Calls, context_with_daemonset, context_with_snapshot_registry, put_agent_pod,
    serve_agent,
};
use support::{FakeApi, NoTasks, batches_path, cr_path, make_ready, pods_path};
use tonic::Status;

const NS: &str = "sandpool";
/// The chart's push secret (the only Secret its Role lets the controller read).
const PUSH: &str = "sandpool-snapshot-push";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/sandpool/events";

fn snapshots_path() -> String {
    cr_path("sandbox.opensandbox.io", "sandboxsnapshots", NS)
}

/// A fake apiserver enforcing the generated CRDs, and a fake node agent.
async fn setup(fail: Option<Status>) -> (FakeApi, Arc<Context>, Calls) {
    let api = FakeApi::new();
    api.enforce_schemas(&all_crds());
    let (port, calls) = serve_agent(fail).await;
    let ctx = context_with_daemonset(&api, NS, port, NoTasks(None));
    (api, ctx, calls)
}

async fn reconcile_batch(ctx: &Arc<Context>) {
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get("b")
        .await
        .expect("get batch");
    batch::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("batch reconcile");
}

/// The node agent pod of node-a, and a two-pod batch `b` (container `c`)
/// whose pods run on node-a (`running` of them Ready and Running).
async fn batch(api: &FakeApi, ctx: &Arc<Context>, running: usize) {
    api.with_store(|s| {
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a");
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"},
                "spec": {"replicas": 2,
                    "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        );
    });
    reconcile_batch(ctx).await;
    reconcile_batch(ctx).await;
    for (i, p) in ["b-1", "b-0"].iter().enumerate().take(running) {
        api.with_store(|s| make_ready(s, NS, p, &format!("10.2.0.{}", i + 1), "node-a"));
    }
}

/// User `kubectl apply`s a snapshot of `b` (the apiserver sets generation 1).
fn create_snapshot(api: &FakeApi, name: &str, owner: Option<Value>) {
    let mut meta = json!({"name": name, "generation": 1});
    if let Some(o) = owner {
        meta["ownerReferences"] = json!([o]);
    }
    api.with_store(|s| {
        s.put(
            &snapshots_path(),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "SandboxSnapshot",
                "metadata": meta, "spec": {"sandboxName": "b"}}),
        );
    });
}

async fn reconcile(ctx: &Arc<Context>, name: &str) {
    let s = Api::<SandboxSnapshot>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get snapshot");
    snapshot::reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("snapshot reconcile");
}

fn stored(api: &FakeApi, name: &str) -> Value {
    api.with_store(|s| s.get(&snapshots_path(), name).cloned())
        .expect("snapshot")
}

fn events(api: &FakeApi, name: &str) -> Vec<(String, String)> {
    api.with_store(|s| s.list(EVENTS))
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"))
        })
        .collect()
}

/// The phases the snapshot's status went through, in order.
fn phases(api: &FakeApi, name: &str) -> Vec<String> {
    let path = format!("{}/{name}/status", snapshots_path());
    api.requests()
        .iter()
        .filter(|r| r.path == path && r.status < 300)
        .filter_map(|r| r.body["status"]["phase"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_snapshot_commits_the_batchs_pod_on_its_node_and_reports_the_images() {
    let (api, ctx, calls) = setup(None).await;
    batch(&api, &ctx, 2).await;
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;

    let s = stored(&api, "s");
    let st = &s["status"];
    assert_eq!(phases(&api, "s"), ["Pending", "Committing", "Succeed"]);
    assert_eq!(st["observedGeneration"], 1);
    // the lowest shard's pod, on its node
    assert_eq!(st["sourcePodName"], "b-0");
    assert_eq!(st["sourceNodeName"], "node-a");
    let tag = snapshot::image_tag(&serde_json::from_value(s.clone()).expect("snapshot"), 0);
    assert!(tag.starts_with("snap-") && tag.len() == 37, "{tag}");
    assert_eq!(
        st["containers"],
        json!([{"containerName": "c", "imageUri": format!("sandpool.local/snapshots/b-c:{tag}"),
            "imageDigest": "sha256:fake-c"}])
    );
    let conds = st["conditions"].as_array().expect("conditions");
    assert_eq!(conds.len(), 1, "{conds:?}");
    assert_eq!(
        (&conds[0]["type"], &conds[0]["status"], &conds[0]["reason"]),
        (&json!("Ready"), &json!("True"), &json!("SnapshotReady"))
    );
    assert_eq!(
        calls.lock().clone(),
        [(
            "commit".to_string(),
            "sandpool/b-0".to_string(),
            format!("Bearer {AGENT_TOKEN}")
        )]
    );
    assert_eq!(
        events(&api, "s"),
        [
            ("Normal".to_string(), "Committing".to_string()),
            ("Normal".to_string(), "Succeed".to_string())
        ]
    );
    // Succeed is final: nothing is committed again
    reconcile(&ctx, "s").await;
    assert_eq!(calls.lock().len(), 1);
}

#[tokio::test]
async fn a_snapshot_a_batch_controls_is_tagged_with_the_batchs_generation() {
    let (api, ctx, _calls) = setup(None).await;
    batch(&api, &ctx, 1).await;
    api.with_store(|s| {
        s.mutate(&batches_path(NS), "b", |b| {
            b["metadata"]["generation"] = json!(4)
        })
    });
    let owner = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "name": "b", "uid": "u", "controller": true});
    create_snapshot(&api, "s", Some(owner));
    reconcile(&ctx, "s").await;
    let st = &stored(&api, "s")["status"];
    assert_eq!(st["phase"], "Succeed");
    // b-1 is the only running pod
    assert_eq!(st["sourcePodName"], "b-1");
    assert_eq!(
        st["containers"][0]["imageUri"],
        "sandpool.local/snapshots/b-c:snap-gen4"
    );
}

/// The snapshot failed with `reason`; its one condition is `Failed=True`.
fn assert_failed(api: &FakeApi, reason: &str, message_has: &str) {
    let st = stored(api, "s")["status"].clone();
    assert_eq!(st["phase"], "Failed", "{st}");
    let conds = st["conditions"].as_array().expect("conditions").clone();
    assert_eq!(conds.len(), 1, "{conds:?}");
    assert_eq!(conds[0]["type"], "Failed");
    assert_eq!(conds[0]["status"], "True");
    assert_eq!(conds[0]["reason"], reason);
    let msg = conds[0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(message_has), "{msg}");
    assert!(
        events(api, "s").contains(&("Warning".to_string(), reason.to_string())),
        "{:?}",
        events(api, "s")
    );
}

#[tokio::test]
async fn a_snapshot_of_a_missing_batch_fails_naming_it() {
    let (api, ctx, calls) = setup(None).await;
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;
    assert_failed(&api, "BatchSandboxLookupFailed", "BatchSandbox b");
    assert!(calls.lock().is_empty());
    // Failed is final
    reconcile(&ctx, "s").await;
    assert_eq!(phases(&api, "s"), ["Pending", "Failed"]);
}

#[tokio::test]
async fn a_snapshot_of_a_batch_without_a_running_pod_fails() {
    let (api, ctx, calls) = setup(None).await;
    batch(&api, &ctx, 0).await;
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;
    assert_failed(
        &api,
        "SourcePodNotFound",
        "no running pod found for BatchSandbox b",
    );
    assert!(calls.lock().is_empty());
}

#[tokio::test]
async fn a_commit_the_node_agent_refuses_fails_the_snapshot_with_its_reason() {
    let refusal =
        Status::unimplemented("snapshots need a runc pod; sandpool/b-0 runs on gVisor (runsc)");
    let (api, ctx, calls) = setup(Some(refusal)).await;
    batch(&api, &ctx, 2).await;
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;
    assert_failed(&api, "CommitFailed", "runs on gVisor (runsc)");
    assert_eq!(calls.lock().len(), 1);
    let st = stored(&api, "s")["status"].clone();
    // what was resolved stays, without digests
    assert_eq!(st["sourcePodName"], "b-0");
    assert_eq!(st["containers"][0]["containerName"], "c");
    assert!(st["containers"][0].get("imageDigest").is_none(), "{st}");
    assert_eq!(phases(&api, "s"), ["Pending", "Committing", "Failed"]);
}

#[tokio::test]
async fn a_node_without_an_agent_fails_the_snapshot_naming_the_node() {
    let (api, ctx, calls) = setup(None).await;
    batch(&api, &ctx, 2).await;
    api.with_store(|s| s.delete(&pods_path(NS), "agent-a"));
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;
    assert_failed(&api, "CommitFailed", "node-a");
    assert!(calls.lock().is_empty());
}

/// The push secret (a `kubernetes.io/dockerconfigjson` Secret) giving
/// `registry`'s credentials.
fn put_push_secret(api: &FakeApi, name: &str, registry: &str) {
    use base64::Engine as _;
    let cfg = json!({"auths": {registry: {"auth":
        base64::engine::general_purpose::STANDARD.encode("ann:s3cret")}}});
    let data = base64::engine::general_purpose::STANDARD.encode(cfg.to_string());
    api.with_store(|s| {
        s.put(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": data}}),
        );
    });
}

async fn setup_registry(push_secret: Option<&str>) -> (FakeApi, Arc<Context>, Calls) {
    let api = FakeApi::new();
    api.enforce_schemas(&all_crds());
    let (port, calls) = serve_agent(None).await;
    let cfg =
        SnapshotRegistry::new(Some("reg.example:5000/snaps"), true, push_secret).expect("flags");
    let ctx = context_with_snapshot_registry(&api, NS, port, NoTasks(None), cfg);
    (api, ctx, calls)
}

#[tokio::test]
async fn with_a_registry_images_are_named_under_it_and_pushed_with_the_push_secret() {
    let (api, ctx, calls) = setup_registry(Some(PUSH)).await;
    put_push_secret(&api, PUSH, "reg.example:5000");
    batch(&api, &ctx, 2).await;
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;

    let s = stored(&api, "s");
    let st = &s["status"];
    assert_eq!(st["phase"], "Succeed", "{s}");
    let tag = snapshot::image_tag(&serde_json::from_value(s.clone()).expect("snapshot"), 0);
    let uri = format!("reg.example:5000/snaps/b-c:{tag}");
    assert_eq!(
        st["containers"],
        json!([{"containerName": "c", "imageUri": uri, "imageDigest": "sha256:fake-c"}])
    );
    // the node agent is asked to push, with the Secret's credentials for
    // the registry's host and the insecure flag
    assert_eq!(
        calls.lock().clone(),
        [(
            format!("commit push ann:s3cret insecure=true [{uri:?}]"),
            "sandpool/b-0".to_string(),
            format!("Bearer {AGENT_TOKEN}")
        )]
    );
}

#[tokio::test]
async fn with_a_registry_and_no_push_secret_the_push_is_anonymous() {
    let (api, ctx, calls) = setup_registry(None).await;
    batch(&api, &ctx, 1).await;
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;
    assert_eq!(stored(&api, "s")["status"]["phase"], "Succeed");
    let got = calls.lock().clone();
    assert!(
        got[0].0.starts_with("commit push : insecure=true"),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_push_secret_that_is_missing_or_lacks_the_registry_fails_the_snapshot_uncommitted() {
    let (api, ctx, calls) = setup_registry(Some(PUSH)).await;
    batch(&api, &ctx, 1).await;
    create_snapshot(&api, "s", None);
    reconcile(&ctx, "s").await;
    assert_failed(
        &api,
        "PushSecretInvalid",
        "sandpool/sandpool-snapshot-push: not found",
    );
    put_push_secret(&api, PUSH, "other.example");
    create_snapshot(&api, "s2", None);
    reconcile(&ctx, "s2").await;
    let st = &stored(&api, "s2")["status"];
    assert_eq!(st["phase"], "Failed", "{st}");
    assert_eq!(st["conditions"][0]["reason"], "PushSecretInvalid");
    let msg = st["conditions"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no entry for reg.example:5000"), "{msg}");
    assert!(calls.lock().is_empty(), "nothing committed");
}
