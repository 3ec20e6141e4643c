//! A Pool's `recycleStrategy: Restart` in Kubernetes mode (issues 21, 22),
//! against the fake apiserver: a pod a BatchSandbox gives back is reset by
//! the node agent of its node (a fake here, answering with the evidence
//! the CRI node agent gives) and goes back to the pool only once the
//! kubelet (played by the test: the fake apiserver has none) reports its
//! containers restarted anew and Ready; a failed or unprovable reset
//! deletes it. The pools are upstream's e2e `pool-with-recycle` testdata
//! (rendered with `RecycleType: Restart`) and the shape of upstream's
//! `sandbox_v1alpha1_pool_restart` sample.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use kube::api::Api;
use parking_lot::Mutex;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::node_agents::NodeAgents;
use sandpool_controller::pods;
use sandpool_controller::pool::recycle::{RECORD_ANNOTATION, RECYCLING, RESET_KILLED};
use sandpool_controller::pool::restart_config::RESTART_CONFIG_ANNOTATION;
use sandpool_controller::{batch, pool};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, batches_path, make_ready, pods_path, pools_path};
use tonic::Status;

const NS: &str = "sandpool";

/// A node agent that answers every reset with `answer` (a new token and
/// the containers it killed) and records the pods it reset.
struct FakeReset {
    answer: Result<pb::SandboxInfo, Status>,
    calls: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl NodeAgents for FakeReset {
    async fn set_paused(&self, _: &str, _: &str, _: bool) -> Result<(), Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn mount(&self, _: &str, _: pb::MountRequest) -> Result<(), Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn reset(&self, node: &str, id: &str) -> Result<pb::SandboxInfo, Status> {
        self.calls.lock().push((node.into(), id.into()));
        self.answer.clone()
    }
}

fn reset_ok(killed: &str) -> Result<pb::SandboxInfo, Status> {
    Ok(pb::SandboxInfo {
        access_token: "fresh-token".into(),
        labels: [(RESET_KILLED.to_string(), killed.to_string())].into(),
        ..Default::default()
    })
}

fn setup(answer: Result<pb::SandboxInfo, Status>) -> (FakeApi, Arc<Context>, Arc<FakeReset>) {
    let api = FakeApi::new();
    let agents = Arc::new(FakeReset {
        answer,
        calls: Mutex::new(Vec::new()),
    });
    let ctx = support::context_with_agents(&api, NoTasks(Some(None)), agents.clone());
    (api, ctx, agents)
}

/// Upstream's e2e `pool-with-recycle.yaml`, rendered (Restart).
fn e2e_pool() -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool",
        "metadata": {"name": "p"},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox-container",
                    "image": "busybox", "command": ["sleep", "infinity"]}]}},
            "capacitySpec": {"bufferMax": 1, "bufferMin": 1, "poolMax": 2, "poolMin": 0},
            "recycleStrategy": {"type": "Restart"}}})
}

async fn reconcile_pool(ctx: &Arc<Context>) {
    let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
        .get("p")
        .await
        .expect("pool");
    pool::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pool reconcile");
}

async fn reconcile_batch(ctx: &Arc<Context>, name: &str) {
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("batch");
    batch::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("batch reconcile");
}

fn live_pods(api: &FakeApi) -> Vec<Value> {
    api.with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .collect()
}

fn pod(api: &FakeApi, name: &str) -> Option<Value> {
    api.with_store(|s| s.get(&pods_path(NS), name).cloned())
}

/// The kubelet's view of `name`: Running and Ready on node-a, its app
/// containers running as `id` with `restarts` restarts.
fn kubelet_reports(api: &FakeApi, name: &str, id: &str, restarts: i32) {
    api.with_store(|s| {
        make_ready(s, NS, name, "10.3.0.1", "node-a");
        s.mutate(&pods_path(NS), name, |p| {
            let statuses: Vec<Value> = p["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    json!({"name": c["name"], "containerID": format!("containerd://{id}-{}", c["name"].as_str().unwrap_or("")),
                        "restartCount": restarts, "ready": true, "image": "busybox", "imageID": "busybox",
                        "state": {"running": {"startedAt": "2026-12-07T00:00:00Z"}}})
                })
                .collect();
            p["status"]["containerStatuses"] = json!(statuses);
        });
    });
}

fn events(api: &FakeApi) -> Vec<(String, String, String)> {
    support::events_about(api, NS, "p")
}

/// A warm pod of the pool, claimed by batch `b` and then released (the
/// batch deleted). Returns the pod's name.
async fn claimed_and_released(api: &FakeApi, ctx: &Arc<Context>) -> String {
    api.with_store(|s| s.put(&pools_path(NS), e2e_pool()));
    reconcile_pool(ctx).await;
    let name = live_pods(api)[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    kubelet_reports(api, &name, "first", 0);
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"}, "spec": {"replicas": 1, "poolRef": "p"}}),
        )
    });
    reconcile_batch(ctx, "b").await;
    reconcile_batch(ctx, "b").await;
    let p = pod(api, &name).expect("pod");
    assert_eq!(p["metadata"]["labels"][ALLOCATED_TO_LABEL], "uid-b");
    api.with_store(|s| s.delete(&batches_path(NS), "b"));
    reconcile_batch(ctx, "b").await;
    name
}

#[tokio::test]
async fn a_released_pod_goes_back_only_after_the_proven_reset() {
    let (api, ctx, agents) = setup(reset_ok("sandbox-container"));
    let name = claimed_and_released(&api, &ctx).await;
    // released: not free, not deleted, its batch annotations gone
    let p = pod(&api, &name).expect("kept for the reset");
    assert_eq!(p["metadata"]["labels"][ALLOCATED_TO_LABEL], RECYCLING);
    assert!(
        p["metadata"]["annotations"]
            .get(BATCH_NAME_ANNOTATION)
            .is_none()
    );
    let old_token = pods::access_token(&serde_json::from_value(p).expect("pod"))
        .expect("token")
        .to_string();

    // the pool has its node agent reset it; it stays out of the pool
    reconcile_pool(&ctx).await;
    assert_eq!(
        agents.calls.lock().clone(),
        [("node-a".to_string(), format!("{NS}/{name}"))]
    );
    let p = pod(&api, &name).expect("pod");
    assert_eq!(p["metadata"]["labels"][ALLOCATED_TO_LABEL], RECYCLING);
    assert!(p["metadata"]["annotations"][RECORD_ANNOTATION].is_string());
    let pool = api
        .with_store(|s| s.get(&pools_path(NS), "p").cloned())
        .expect("pool");
    // counted as being created: not available, and no replacement is made
    assert_eq!(pool["status"]["available"], 0);
    assert_eq!(pool["status"]["allocated"], 0);
    assert_eq!(live_pods(&api).len(), 1, "{pool}");
    // a claim meanwhile cannot take it
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "c"}, "spec": {"replicas": 1, "poolRef": "p"}}),
        )
    });
    reconcile_batch(&ctx, "c").await;
    reconcile_batch(&ctx, "c").await;
    assert_ne!(
        pod(&api, &name).expect("pod")["metadata"]["labels"][ALLOCATED_TO_LABEL],
        "uid-c"
    );
    api.with_store(|s| s.delete(&batches_path(NS), "c"));
    reconcile_batch(&ctx, "c").await;

    // the same containers still reported (the kubelet has not restarted them): still out
    reconcile_pool(&ctx).await;
    assert_eq!(
        pod(&api, &name).expect("pod")["metadata"]["labels"][ALLOCATED_TO_LABEL],
        RECYCLING
    );
    // the kubelet restarted them: new containers, ready -> back, with the new token
    kubelet_reports(&api, &name, "second", 1);
    reconcile_pool(&ctx).await;
    let p = pod(&api, &name).expect("pod");
    assert!(
        p["metadata"]["labels"].get(ALLOCATED_TO_LABEL).is_none(),
        "{p}"
    );
    assert!(
        p["metadata"]["annotations"]
            .get(RECORD_ANNOTATION)
            .is_none()
    );
    let token = pods::access_token(&serde_json::from_value(p).expect("pod"))
        .expect("token")
        .to_string();
    assert_eq!(token, "fresh-token");
    assert_ne!(token, old_token);
    assert!(
        events(&api)
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "Recycled")
    );
    assert_eq!(agents.calls.lock().len(), 1, "one reset per release");
    // and runtime pods of a Restart pool read the rotated token's file
    let main = &pod(&api, &name).expect("pod")["spec"]["containers"][0];
    assert!(
        main["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == "EXECD_ACCESS_TOKEN_FILE"),
        "{main}"
    );
}

#[tokio::test]
async fn a_failed_reset_deletes_the_pod_with_a_warning() {
    let (api, ctx, agents) = setup(Err(Status::failed_precondition(
        "pod sandpool/x cannot be reset in place: processes [42] survived the kill",
    )));
    let name = claimed_and_released(&api, &ctx).await;
    reconcile_pool(&ctx).await;
    assert_eq!(agents.calls.lock().len(), 1);
    assert!(
        live_pods(&api)
            .iter()
            .all(|p| p["metadata"]["name"] != name.as_str()),
        "the pod is deleted"
    );
    let ev = events(&api);
    assert!(
        ev.iter().any(|(t, r, n)| t == "Warning"
            && r == "RecycleFailed"
            && n.contains(&name)
            && n.contains("survived the kill")),
        "{ev:?}"
    );
}

#[tokio::test]
async fn a_reset_without_full_evidence_deletes_the_pod() {
    // the node agent answers but names no killed container
    let (api, ctx, _) = setup(reset_ok(""));
    let name = claimed_and_released(&api, &ctx).await;
    reconcile_pool(&ctx).await;
    assert!(pod(&api, &name).is_none_or(|p| p["metadata"].get("deletionTimestamp").is_some()));
    assert!(
        events(&api).iter().any(|(_, r, n)| r == "RecycleFailed"
            && n.contains("does not name container sandbox-container"))
    );
}

/// Upstream's `sandbox_v1alpha1_pool_restart` sample: init containers copy
/// the task executor and execd into the emptyDir `opensandbox-bin`, which
/// the tenant's container mounts writable. Emptying it would break the
/// restarted container, keeping it would hand the next tenant what the
/// previous one changed: its released pods are deleted, never reused.
#[tokio::test]
async fn the_upstream_restart_sample_pods_are_deleted_naming_why() {
    let (api, ctx, agents) = setup(reset_ok("sandbox"));
    let mut p = e2e_pool();
    p["spec"]["template"] = json!({"metadata": {"labels": {"app": "example"}}, "spec": {
        "containers": [{"name": "sandbox", "image": "busybox",
            "volumeMounts": [{"mountPath": "/var/lib/sandbox", "name": "sandbox-storage"},
                {"mountPath": "/opt/opensandbox", "name": "opensandbox-bin"}]}],
        "initContainers": [{"name": "execd-installer", "image": "busybox",
            "command": ["/bin/sh", "-c"], "args": ["cp ./execd /opt/opensandbox/execd"],
            "volumeMounts": [{"mountPath": "/opt/opensandbox", "name": "opensandbox-bin"}]}],
        "tolerations": [{"operator": "Exists"}],
        "volumes": [{"emptyDir": {}, "name": "sandbox-storage"}, {"emptyDir": {}, "name": "opensandbox-bin"}]}});
    api.with_store(|s| s.put(&pools_path(NS), p));
    reconcile_pool(&ctx).await;
    let name = live_pods(&api)[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    kubelet_reports(&api, &name, "first", 0);
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"}, "spec": {"replicas": 1, "poolRef": "p"}}),
        );
    });
    reconcile_batch(&ctx, "b").await;
    reconcile_batch(&ctx, "b").await;
    api.with_store(|s| s.delete(&batches_path(NS), "b"));
    reconcile_batch(&ctx, "b").await;
    reconcile_pool(&ctx).await;
    assert!(agents.calls.lock().is_empty(), "no reset is tried");
    assert!(pod(&api, &name).is_none_or(|p| p["metadata"].get("deletionTimestamp").is_some()));
    assert!(
        events(&api)
            .iter()
            .any(|(_, r, n)| r == "RecycleFailed" && n.contains("emptyDir opensandbox-bin"))
    );
}

/// Upstream's Pool annotation `sandbox.opensandbox.io/restart-config`:
/// `blacklist` cannot be honoured (a container left running keeps the
/// tenant's processes), so the released pod is deleted naming it.
#[tokio::test]
async fn a_restart_config_blacklist_deletes_the_pod_naming_it() {
    let (api, ctx, agents) = setup(reset_ok("sandbox-container"));
    let name = claimed_and_released(&api, &ctx).await;
    api.with_store(|s| {
        s.mutate(&pools_path(NS), "p", |p| {
            p["metadata"]["annotations"] =
                json!({RESTART_CONFIG_ANNOTATION: r#"{"blacklist": ["sandbox-container"]}"#});
        })
    });
    reconcile_pool(&ctx).await;
    assert!(agents.calls.lock().is_empty(), "no reset is tried");
    assert!(pod(&api, &name).is_none_or(|p| p["metadata"].get("deletionTimestamp").is_some()));
    let ev = events(&api);
    assert!(
        ev.iter().any(|(t, r, n)| t == "Warning"
            && r == "RecycleFailed"
            && n.contains(RESTART_CONFIG_ANNOTATION)
            && n.contains("blacklist")),
        "{ev:?}"
    );
}

/// Its `maxRetries` × `retryInterval` is the time the reset pod has to come
/// back (sandpool's reset kills every process once; the kubelet's restart
/// is what is waited for).
#[tokio::test]
async fn a_restart_config_gives_the_reset_pod_its_tries_time() {
    let (api, ctx, agents) = setup(reset_ok("sandbox-container"));
    let name = claimed_and_released(&api, &ctx).await;
    api.with_store(|s| {
        s.mutate(&pools_path(NS), "p", |p| {
            p["metadata"]["annotations"] =
                json!({RESTART_CONFIG_ANNOTATION: r#"{"maxRetries": 2, "retryInterval": "1ms"}"#});
        })
    });
    reconcile_pool(&ctx).await;
    assert_eq!(agents.calls.lock().len(), 1);
    let p = pod(&api, &name).expect("pod");
    assert_eq!(p["metadata"]["labels"][ALLOCATED_TO_LABEL], RECYCLING);
    // the kubelet has not restarted the containers when the 2 ms are over
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    reconcile_pool(&ctx).await;
    assert!(pod(&api, &name).is_none_or(|p| p["metadata"].get("deletionTimestamp").is_some()));
    let ev = events(&api);
    assert!(
        ev.iter()
            .any(|(t, r, n)| t == "Warning" && r == "RecycleFailed" && n.contains("within 2ms")),
        "{ev:?}"
    );
}
