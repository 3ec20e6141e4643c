//! Upstream's `opensandbox-server` (PyPI 1.1.1, Kubernetes runtime, BatchSandbox
//! workload provider) on sandpool's controllers: the BatchSandboxes it
//! creates, in pool mode and in template mode, exactly as its
//! `batchsandbox_provider` writes them, against the fake apiserver. They must
//! reach `Succeed` with an endpoint, run the server's task through
//! `/opt/opensandbox/bootstrap.sh` (provided in sandpool's pods), and carry
//! the pod's runtime token where the server looks for a sandbox's access
//! token (`opensandbox.io/secure-access-token`), so that the endpoint
//! headers it hands its SDK open the runtime's execd API.

mod support;

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use sandpool_controller::context::{Context, TaskRunner};
use sandpool_controller::crd::*;
use sandpool_controller::{batch, pool};
use serde_json::{Value, json};
use support::{FakeApi, batches_path, make_ready, pods_path, pools_path};

const NS: &str = "opensandbox";
/// Where the server reads a sandbox's access token (its constants.py).
const SECURE_ACCESS_ANNOTATION: &str = "opensandbox.io/secure-access-token";
const ID: &str = "0f5c1d2e-4b6a-4c3e-9a1b-2d3e4f5a6b7c";

/// Records the tasks started; every task runs.
#[derive(Default)]
struct Recorder(Mutex<Vec<ProcessTask>>);

#[async_trait::async_trait]
impl TaskRunner for Recorder {
    async fn start(&self, _: &Pod, task: &ProcessTask) -> sandpool_controller::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.clone());
        Ok(())
    }
    async fn status(&self, _: &Pod) -> Option<Option<i32>> {
        Some(None)
    }
    async fn stop(&self, _: &Pod) -> sandpool_controller::Result<()> {
        Ok(())
    }
}

fn setup() -> (FakeApi, Arc<Context>, Arc<Recorder>) {
    let api = FakeApi::new();
    let tasks = Arc::new(Recorder::default());
    let inj = sandpool_controller::pods::RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    let ctx = Arc::new(Context::new(
        api.client(),
        inj,
        tasks.clone(),
        Some("test".into()),
    ));
    (api, ctx, tasks)
}

/// The BatchSandbox the server creates for `extensions.poolRef` (its
/// `_create_workload_from_pool` and `_build_task_template`, entrypoint
/// `["tail", "-f", "/dev/null"]`, timeout set, no `execd_run_as_init`).
fn pooled_batch(pool: &str) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": ID, "namespace": NS, "labels": {"opensandbox.io/id": ID}},
        "spec": {"replicas": 1, "poolRef": pool,
            "taskTemplate": {"spec": {"process": {
                "command": ["/bin/sh", "-c", "exec /opt/opensandbox/bootstrap.sh tail -f /dev/null"],
                "env": [{"name": "OPENSANDBOX_ID", "value": ID}]}}},
            "expireTime": "2099-01-01T00:00:00+00:00"}})
}

/// The BatchSandbox the server creates without a pool (template mode: its
/// execd installer copies upstream's execd and bootstrap.sh into
/// `/opt/opensandbox`, and the container runs that bootstrap.sh).
fn template_batch() -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": ID, "namespace": NS, "labels": {"opensandbox.io/id": ID}},
        "spec": {"replicas": 1, "template": {
            "metadata": {"labels": {"opensandbox.io/id": ID}, "annotations": {}},
            "spec": {"automountServiceAccountToken": false,
                "initContainers": [{"name": "execd-installer", "image": "opensandbox/execd:v1.0.18",
                    "command": ["/bin/sh", "-c"],
                    "args": ["cp ./execd /opt/opensandbox/execd && cp ./bootstrap.sh /opt/opensandbox/bootstrap.sh"],
                    "volumeMounts": [{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}]}],
                "containers": [{"name": "sandbox", "image": "python:3.12-slim",
                    "command": ["/opt/opensandbox/bootstrap.sh", "tail", "-f", "/dev/null"],
                    "env": [{"name": "OPENSANDBOX_ID", "value": ID}, {"name": "EXECD", "value": "/opt/opensandbox/execd"}],
                    "volumeMounts": [{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}]}],
                "volumes": [{"name": "opensandbox-bin", "emptyDir": {}}]}},
            "expireTime": "2099-01-01T00:00:00+00:00"}})
}

fn pool_obj(name: &str) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox", "image": "python:3.12-slim",
            "command": ["sleep", "infinity"]}]}},
            "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 1, "poolMax": 2}}})
}

fn names(api: &FakeApi, coll: &str) -> Vec<String> {
    api.with_store(|s| s.list(coll))
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Pods Ready (the kubelet) and a few rounds of the Pool and BatchSandbox
/// controllers.
async fn settle(api: &FakeApi, ctx: &Arc<Context>) {
    for _ in 0..4 {
        for n in names(api, &pools_path(NS)) {
            let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
                .get(&n)
                .await;
            let _ = pool::reconcile(Arc::new(p.expect("pool")), ctx.clone()).await;
        }
        for (i, n) in names(api, &pods_path(NS)).iter().enumerate() {
            api.with_store(|s| make_ready(s, NS, n, &format!("10.3.0.{}", i + 10), "node-a"));
        }
        for n in names(api, &batches_path(NS)) {
            let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
                .get(&n)
                .await;
            let _ = batch::reconcile(Arc::new(b.expect("batch")), ctx.clone()).await;
        }
    }
}

/// The pod of the batch (its shard 0).
fn pod_of(api: &FakeApi) -> Value {
    api.with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .find(|p| p["metadata"]["annotations"][BATCH_NAME_ANNOTATION] == ID)
        .expect("the batch's pod")
}

fn token_of(pod: &Value) -> String {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "EXECD_ACCESS_TOKEN")
        .and_then(|e| e["value"].as_str())
        .expect("the runtime token")
        .to_string()
}

/// Where the pod's first container mounts `path`.
fn mount_at<'a>(pod: &'a Value, path: &str) -> Vec<&'a Value> {
    pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["mountPath"] == path)
        .collect()
}

#[tokio::test]
async fn the_servers_pooled_batchsandbox_runs_its_bootstrap_task_and_carries_the_token() {
    let (api, ctx, tasks) = setup();
    api.with_store(|s| s.put(&pools_path(NS), pool_obj("py")));
    settle(&api, &ctx).await;
    api.with_store(|s| s.put(&batches_path(NS), pooled_batch("py")));
    settle(&api, &ctx).await;

    let b = api
        .with_store(|s| s.get(&batches_path(NS), ID).cloned())
        .expect("batch");
    // what the server's create waits for, and reads the endpoint from
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert_eq!(b["status"]["taskFailed"], 0, "{b}");
    let pod = pod_of(&api);
    let ip = pod["status"]["podIP"].as_str().expect("ip");
    assert_eq!(
        b["metadata"]["annotations"][ENDPOINTS_ANNOTATION],
        json!([ip]).to_string()
    );
    // the server hands its SDK this as the `OpenSandbox-Secure-Access` header
    assert_eq!(
        b["metadata"]["annotations"][SECURE_ACCESS_ANNOTATION],
        token_of(&pod),
        "{b}"
    );
    // the task is the server's, unchanged; its bootstrap.sh is in the pod
    let started = tasks.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        started.first().map(|t| t.command.clone()),
        Some(vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "exec /opt/opensandbox/bootstrap.sh tail -f /dev/null".into()
        ])
    );
    let install = &pod["spec"]["initContainers"][0];
    assert_eq!(install["name"], "sandpool-runtime-install");
    assert!(
        install["command"]
            .as_array()
            .expect("command")
            .contains(&json!(
                "--install-bootstrap-to=/opt/sandpool/opensandbox/bootstrap.sh"
            )),
        "{install}"
    );
    assert_eq!(
        mount_at(&pod, "/opt/opensandbox"),
        vec![
            &json!({"name": "sandpool-runtime", "mountPath": "/opt/opensandbox",
            "subPath": "opensandbox", "readOnly": true})
        ],
        "{pod}"
    );
}

#[tokio::test]
async fn the_servers_template_batchsandbox_keeps_its_own_bootstrap_and_carries_the_token() {
    let (api, ctx, _) = setup();
    api.with_store(|s| s.put(&batches_path(NS), template_batch()));
    settle(&api, &ctx).await;
    let b = api
        .with_store(|s| s.get(&batches_path(NS), ID).cloned())
        .expect("batch");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    let pod = pod_of(&api);
    assert_eq!(
        b["metadata"]["annotations"][SECURE_ACCESS_ANNOTATION],
        token_of(&pod),
        "{b}"
    );
    // the template's own /opt/opensandbox (upstream's execd and bootstrap.sh) stays
    assert_eq!(
        mount_at(&pod, "/opt/opensandbox"),
        vec![&json!({"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"})],
        "{pod}"
    );
    // its bootstrap.sh runs under the runtime, which holds 44772 first
    let cmd = pod["spec"]["containers"][0]["command"]
        .as_array()
        .expect("command");
    assert_eq!(cmd[0], "/opt/sandpool/sandpool-runtime");
    assert!(cmd.ends_with(&[
        json!("--"),
        json!("/opt/opensandbox/bootstrap.sh"),
        json!("tail"),
        json!("-f"),
        json!("/dev/null")
    ]));
}

#[tokio::test]
async fn no_token_annotation_for_several_replicas() {
    let (api, ctx, _) = setup();
    api.with_store(|s| s.put(&pools_path(NS), pool_obj("py")));
    settle(&api, &ctx).await;
    let mut b = pooled_batch("py");
    b["spec"]["replicas"] = json!(2);
    api.with_store(|s| s.put(&batches_path(NS), b));
    settle(&api, &ctx).await;
    let b = api
        .with_store(|s| s.get(&batches_path(NS), ID).cloned())
        .expect("batch");
    assert_eq!(b["status"]["ready"], 2, "{b}");
    // one annotation cannot hold two pods' tokens
    assert!(
        b["metadata"]["annotations"]
            .get(SECURE_ACCESS_ANNOTATION)
            .is_none(),
        "{b}"
    );
}
