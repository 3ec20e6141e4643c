//! BatchSandbox `shardPatches` and `taskResourcePolicyWhenCompleted`
//! against the stateful fake apiserver: each shard's pod carries its patch,
//! a bad patch is an `InvalidSpec` condition, and `Release` releases a
//! shard's sandbox once its task exited (never before; `Retain` keeps it).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use sandpool_controller::batch;
use sandpool_controller::conditions::reported;
use sandpool_controller::context::{Context, TaskRunner};
use sandpool_controller::crd::*;
use sandpool_controller::pool;
use serde_json::{Value, json};
use support::{FakeApi, batches_path, make_ready, pods_path, pools_path};

const NS: &str = "sandpool";
const RELEASED: &str = "sandbox.opensandbox.io/alloc-release";

/// Tasks by pod name: started ones run until the test ends them.
#[derive(Default)]
struct Tasks {
    states: Mutex<HashMap<String, Option<i32>>>,
    stopped: Mutex<Vec<String>>,
}

impl Tasks {
    fn exit(&self, pod: &str, code: i32) {
        self.states
            .lock()
            .expect("lock")
            .insert(pod.into(), Some(code));
    }
    fn started(&self) -> Vec<String> {
        let mut v: Vec<String> = self.states.lock().expect("lock").keys().cloned().collect();
        v.sort();
        v
    }
}

#[async_trait::async_trait]
impl TaskRunner for Tasks {
    async fn start(&self, pod: &Pod, _: &ProcessTask) -> sandpool_controller::Result<()> {
        self.states
            .lock()
            .expect("lock")
            .insert(pod.name_any(), None);
        Ok(())
    }
    async fn status(&self, pod: &Pod) -> Option<Option<i32>> {
        self.states
            .lock()
            .expect("lock")
            .get(&pod.name_any())
            .copied()
    }
    async fn stop(&self, pod: &Pod) -> sandpool_controller::Result<()> {
        self.stopped.lock().expect("lock").push(pod.name_any());
        Ok(())
    }
}

fn setup() -> (FakeApi, Arc<Context>, Arc<Tasks>) {
    let api = FakeApi::new();
    let tasks = Arc::new(Tasks::default());
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

fn batch_obj(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": name}, "spec": spec})
}

fn template() -> Value {
    json!({"metadata": {"labels": {"app": "shards"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1", "command": ["sleep", "infinity"],
            "env": [{"name": "SHARD", "value": "none"}, {"name": "KEEP", "value": "k"}]}]}})
}

async fn reconcile(ctx: &Arc<Context>, name: &str) -> sandpool_controller::Result<()> {
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get batch");
    reported(Arc::new(b), ctx.clone(), batch::reconcile)
        .await
        .map(drop)
}

/// Put the batch and run the reconcile that adds its finalizer.
async fn create(api: &FakeApi, ctx: &Arc<Context>, name: &str, spec: Value) {
    api.with_store(|s| s.put(&batches_path(NS), batch_obj(name, spec)));
    reconcile(ctx, name).await.expect("finalizer");
}

fn pod(api: &FakeApi, name: &str) -> Option<Value> {
    api.with_store(|s| s.get(&pods_path(NS), name).cloned())
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
}

fn batch_of(api: &FakeApi, name: &str) -> Value {
    api.with_store(|s| s.get(&batches_path(NS), name).cloned())
        .expect("batch")
}

fn env_of(p: &Value, var: &str) -> Option<String> {
    p["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)
        .and_then(|e| e["value"].as_str())
        .map(str::to_string)
}

#[tokio::test]
async fn each_shard_pod_carries_its_patch() {
    let (api, ctx, _) = setup();
    let spec = json!({"replicas": 3, "template": template(), "shardPatches": [
        {"metadata": {"labels": {"shard-role": "leader"}}},
        {"spec": {"containers": [{"name": "main", "image": "busybox:2",
            "env": [{"name": "SHARD", "value": "1"}]}],
            "nodeSelector": {"disk": "ssd"}}},
        {"spec": {"containers": [{"name": "main", "env": [{"name": "KEEP", "$patch": "delete"}]}]}},
        {"metadata": {"labels": {"unused": "past replicas"}}}
    ]});
    create(&api, &ctx, "b", spec).await;
    reconcile(&ctx, "b").await.expect("reconcile");
    let p0 = pod(&api, "b-0").expect("shard 0");
    let p1 = pod(&api, "b-1").expect("shard 1");
    let p2 = pod(&api, "b-2").expect("shard 2");
    assert!(
        pod(&api, "b-3").is_none(),
        "patches past replicas make no pod"
    );
    assert_eq!(p0["metadata"]["labels"]["shard-role"], "leader");
    assert_eq!(p0["metadata"]["labels"]["app"], "shards");
    assert_eq!(env_of(&p0, "SHARD").as_deref(), Some("none"));
    assert_eq!(p1["spec"]["containers"][0]["image"], "busybox:2");
    assert_eq!(env_of(&p1, "SHARD").as_deref(), Some("1"));
    assert_eq!(
        env_of(&p1, "KEEP").as_deref(),
        Some("k"),
        "env merges by name"
    );
    assert_eq!(p1["spec"]["nodeSelector"]["disk"], "ssd");
    assert!(p1["metadata"]["labels"].get("shard-role").is_none());
    assert_eq!(env_of(&p2, "KEEP"), None, "$patch: delete removed it");
    assert_eq!(env_of(&p2, "SHARD").as_deref(), Some("none"));
    // the runtime still wraps every patched pod
    for p in [&p0, &p1, &p2] {
        let cmd = p["spec"]["containers"][0]["command"].to_string();
        assert!(cmd.contains("sandpool-runtime"), "{cmd}");
    }
    let cond = &batch_of(&api, "b")["status"]["conditions"];
    assert!(
        cond.as_array()
            .is_none_or(|c| c.iter().all(|c| c["status"] != "False")),
        "{cond}"
    );
}

#[tokio::test]
async fn an_invalid_shard_patch_is_a_condition_and_makes_no_pod() {
    let (api, ctx, _) = setup();
    let spec = json!({"replicas": 2, "template": template(), "shardPatches": [
        {"metadata": {"labels": {"ok": "yes"}}},
        {"spec": {"containers": [{"image": "no-name"}]}}
    ]});
    create(&api, &ctx, "bad", spec).await;
    let err = reconcile(&ctx, "bad").await.expect_err("invalid");
    assert!(err.to_string().contains("spec.shardPatches[1]"), "{err}");
    assert!(pod(&api, "bad-0").is_none() && pod(&api, "bad-1").is_none());
    let conds = batch_of(&api, "bad")["status"]["conditions"].clone();
    let ready = conds
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .expect("Ready condition");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidSpec");
    let msg = ready["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("spec.shardPatches[1]") && msg.contains("\"name\""),
        "{msg}"
    );
}

/// A pool `p` of `n` ready pods.
async fn ready_pool(api: &FakeApi, ctx: &Arc<Context>, n: i32) {
    let p = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": "p"},
        "spec": {"template": template(),
                 "capacitySpec": {"bufferMin": n, "bufferMax": n, "poolMin": n, "poolMax": n + 2},
                 "scaleStrategy": {"maxUnavailable": "100%"}}});
    api.with_store(|s| s.put(&pools_path(NS), p));
    let pl = Api::<Pool>::namespaced(ctx.client.clone(), NS)
        .get("p")
        .await
        .expect("pool");
    pool::reconcile(Arc::new(pl), ctx.clone())
        .await
        .expect("pool reconcile");
    let names: Vec<String> = api.with_store(|s| {
        s.list(&pods_path(NS))
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    });
    for (i, p) in names.iter().enumerate() {
        api.with_store(|s| make_ready(s, NS, p, &format!("10.3.0.{}", i + 10), "node-a"));
    }
}

/// The live pods allocated to batch `name`.
fn allocated(api: &FakeApi, name: &str) -> Vec<String> {
    let mut v: Vec<String> = api
        .with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .filter(|p| {
            p["metadata"]["labels"][ALLOCATED_TO_LABEL].as_str() == Some(&format!("uid-{name}"))
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn pooled_batch(policy: &str) -> Value {
    json!({"replicas": 2, "poolRef": "p", "taskResourcePolicyWhenCompleted": policy,
        "taskTemplate": {"spec": {"process": {"command": ["python3", "job.py"]}}}})
}

#[tokio::test]
async fn release_gives_up_a_pooled_shard_once_its_task_exited_and_retain_keeps_it() {
    let (api, ctx, tasks) = setup();
    ready_pool(&api, &ctx, 5).await;
    // Retain (the default): the sandboxes stay after their tasks
    create(&api, &ctx, "k", pooled_batch("Retain")).await;
    reconcile(&ctx, "k").await.expect("reconcile");
    let kept = allocated(&api, "k");
    assert_eq!(kept.len(), 2);
    tasks.exit(&kept[0], 0);
    tasks.exit(&kept[1], 1);

    create(&api, &ctx, "r", pooled_batch("Release")).await;
    reconcile(&ctx, "r").await.expect("reconcile");
    let held = allocated(&api, "r");
    assert_eq!(held.len(), 2);
    let mut all = [kept.clone(), held.clone()].concat();
    all.sort();
    assert_eq!(tasks.started(), all, "every task runs");
    // running tasks: nothing is released
    reconcile(&ctx, "r").await.expect("reconcile");
    assert_eq!(allocated(&api, "r"), held);
    assert!(batch_of(&api, "r")["metadata"]["annotations"][RELEASED].is_null());

    tasks.exit(&held[0], 0);
    reconcile(&ctx, "r").await.expect("reconcile");
    assert!(pod(&api, &held[0]).is_none(), "the used pod is deleted");
    assert_eq!(allocated(&api, "r"), [held[1].clone()]);
    let b = batch_of(&api, "r");
    let rec: Value = serde_json::from_str(
        b["metadata"]["annotations"][RELEASED]
            .as_str()
            .expect("annotation"),
    )
    .expect("json");
    assert_eq!(rec["pods"], json!([held[0]]));
    // the pool has a spare ready pod, but a released shard is not refilled
    reconcile(&ctx, "r").await.expect("reconcile");
    assert_eq!(allocated(&api, "r"), [held[1].clone()]);
    let st = batch_of(&api, "r")["status"].clone();
    assert_eq!(
        (&st["taskSucceed"], &st["taskRunning"], &st["replicas"]),
        (&json!(1), &json!(1), &json!(1)),
        "{st}"
    );
    assert!(st.get("completionTime").is_none(), "{st}");

    tasks.exit(&held[1], 3);
    reconcile(&ctx, "r").await.expect("reconcile");
    reconcile(&ctx, "r").await.expect("reconcile");
    assert!(allocated(&api, "r").is_empty());
    let st = batch_of(&api, "r")["status"].clone();
    assert_eq!(
        (&st["taskSucceed"], &st["taskFailed"], &st["taskPending"]),
        (&json!(1), &json!(1), &json!(0)),
        "{st}"
    );
    assert!(st["completionTime"].is_string(), "{st}");
    let mut stopped = tasks.stopped.lock().expect("lock").clone();
    stopped.sort();
    assert_eq!(stopped, held, "released through the batch's release path");

    for _ in 0..2 {
        reconcile(&ctx, "k").await.expect("reconcile");
    }
    assert_eq!(allocated(&api, "k"), kept, "Retain keeps them");
    let k = batch_of(&api, "k");
    assert!(k["metadata"]["annotations"][RELEASED].is_null());
    assert_eq!(
        (&k["status"]["taskSucceed"], &k["status"]["taskFailed"]),
        (&json!(1), &json!(1))
    );
}

#[tokio::test]
async fn release_of_a_template_batch_records_the_shard_and_keeps_its_pod() {
    let (api, ctx, tasks) = setup();
    let spec = json!({"replicas": 1, "template": template(), "taskResourcePolicyWhenCompleted": "Release",
        "taskTemplate": {"spec": {"process": {"command": ["true"]}}}});
    create(&api, &ctx, "t", spec).await;
    reconcile(&ctx, "t").await.expect("reconcile");
    api.with_store(|s| make_ready(s, NS, "t-0", "10.4.0.1", "node-a"));
    reconcile(&ctx, "t").await.expect("reconcile");
    assert_eq!(tasks.started(), ["t-0"]);
    tasks.exit("t-0", 0);
    reconcile(&ctx, "t").await.expect("reconcile");
    assert!(pod(&api, "t-0").is_some(), "upstream keeps a template pod");
    let raw = batch_of(&api, "t")["metadata"]["annotations"][RELEASED].clone();
    assert!(raw.as_str().is_some_and(|r| r.contains("t-0")), "{raw}");
    // the recorded end counts, whatever the sandbox reports later
    tasks
        .states
        .lock()
        .expect("lock")
        .insert("t-0".into(), None);
    reconcile(&ctx, "t").await.expect("reconcile");
    let st = batch_of(&api, "t")["status"].clone();
    assert_eq!(
        (&st["taskSucceed"], &st["taskRunning"]),
        (&json!(1), &json!(0)),
        "{st}"
    );
}
