//! Controller tests against kube-rs's `tower-test` mock API server (a
//! stateful fake, see `support`): claim, replenish, expiry, conflict retry,
//! deletion with finalizer, warm-pool adoption, leader election.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::Method;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use sandpool_controller::context::{Context, TaskRunner};
use sandpool_controller::crd::*;
use sandpool_controller::pods::RuntimeInjection;
use sandpool_controller::{agent_sandbox, batch, leader, pool};
use serde_json::{Value, json};
use support::{FakeApi, batches_path, cr_path, make_ready, pods_path, pools_path};

const NS: &str = "sandpool";

/// The runtime side of tasks, recorded (the runtime itself is tested for real
/// in runtime-sidecar and node-agent).
#[derive(Default)]
struct FakeTasks {
    started: Mutex<BTreeMap<String, Vec<String>>>,
    exit: Mutex<BTreeMap<String, i32>>,
    stopped: Mutex<Vec<String>>,
}

#[async_trait]
impl TaskRunner for FakeTasks {
    async fn start(&self, pod: &Pod, task: &ProcessTask) -> sandpool_controller::Result<()> {
        let argv = task.command.iter().chain(&task.args).cloned().collect();
        self.started
            .lock()
            .expect("lock")
            .insert(pod.name_any(), argv);
        Ok(())
    }
    async fn status(&self, pod: &Pod) -> Option<Option<i32>> {
        Some(
            self.exit
                .lock()
                .expect("lock")
                .get(&pod.name_any())
                .copied(),
        )
    }
    async fn stop(&self, pod: &Pod) -> sandpool_controller::Result<()> {
        self.stopped.lock().expect("lock").push(pod.name_any());
        Ok(())
    }
}

fn setup() -> (FakeApi, Arc<Context>, Arc<FakeTasks>) {
    let api = FakeApi::new();
    let tasks = Arc::new(FakeTasks::default());
    let inj = RuntimeInjection {
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

/// A pool that makes all its pods at once (`scaleStrategy` 100%; upstream's
/// default paces them, `opensandbox_fields.rs`).
fn pool_obj(name: &str, cap: [i32; 4]) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox-container", "image": "busybox", "command": ["sleep", "infinity"]}]}},
                 "capacitySpec": {"bufferMin": cap[0], "bufferMax": cap[1], "poolMin": cap[2], "poolMax": cap[3]},
                 "scaleStrategy": {"maxUnavailable": "100%"}}})
}

async fn get<
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
>(
    ctx: &Context,
    name: &str,
) -> Arc<K> {
    Arc::new(
        Api::<K>::namespaced(ctx.client.clone(), NS)
            .get(name)
            .await
            .expect("get"),
    )
}

fn pod_names(api: &FakeApi, selector: &str) -> Vec<String> {
    api.with_store(|s| {
        s.list(&pods_path(NS))
            .into_iter()
            .filter(|p| {
                support::selector_matches(
                    selector,
                    p["metadata"]["labels"]
                        .as_object()
                        .unwrap_or(&Default::default()),
                )
            })
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    })
}

fn ready_all(api: &FakeApi, selector: &str) {
    for (i, name) in pod_names(api, selector).into_iter().enumerate() {
        api.with_store(|s| {
            make_ready(
                s,
                NS,
                &name,
                &format!("10.1.0.{}", i + 10),
                if i % 2 == 0 { "node-a" } else { "node-b" },
            )
        });
    }
}

async fn reconcile_pool(ctx: &Arc<Context>, name: &str) {
    pool::reconcile(get::<Pool>(ctx, name).await, ctx.clone())
        .await
        .expect("pool reconcile");
}

/// A pool with `n` ready pods.
async fn ready_pool(api: &FakeApi, ctx: &Arc<Context>, name: &str, n: i32) {
    api.with_store(|s| s.put(&pools_path(NS), pool_obj(name, [n, n, n, n + 2])));
    reconcile_pool(ctx, name).await;
    ready_all(api, &format!("{POOL_LABEL}={name}"));
}

#[tokio::test]
async fn pool_creates_runtime_pods_and_replenishes_after_a_claim() {
    let (api, ctx, _) = setup();
    api.with_store(|s| s.put(&pools_path(NS), pool_obj("agent-pool", [2, 3, 2, 5])));
    reconcile_pool(&ctx, "agent-pool").await;
    let created = pod_names(&api, &format!("{POOL_LABEL}=agent-pool"));
    assert_eq!(created.len(), 2, "buffer filled to the middle of [2,3]");
    let pod = api
        .with_store(|s| s.get(&pods_path(NS), &created[0]).cloned())
        .expect("pod");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Pool");
    assert_eq!(
        pod["spec"]["containers"][0]["command"][0],
        "/opt/sandpool/sandpool-runtime"
    );
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"],
        "ghcr.io/sandpool/sandpool:test"
    );
    let status = api
        .with_store(|s| s.get(&pools_path(NS), "agent-pool").cloned())
        .expect("pool")["status"]
        .clone();
    let revision = status["revision"].as_str().unwrap_or_default().to_string();
    assert_eq!(revision.len(), 8, "the template's hash: {status}");
    assert_eq!(
        status,
        json!({"observedGeneration": 1, "total": 2, "allocated": 0, "available": 0,
            "revision": revision, "updated": 2})
    );
    assert_eq!(
        pod["metadata"]["labels"]["sandbox.opensandbox.io/pool-revision"],
        revision.as_str()
    );

    ready_all(&api, &format!("{POOL_LABEL}=agent-pool"));
    reconcile_pool(&ctx, "agent-pool").await;
    let status = api
        .with_store(|s| s.get(&pools_path(NS), "agent-pool").cloned())
        .expect("pool")["status"]
        .clone();
    assert_eq!(
        (status["total"].clone(), status["available"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(
        pod_names(&api, &format!("{POOL_LABEL}=agent-pool")).len(),
        2,
        "steady: nothing created"
    );

    // a claim takes one: the buffer (1) is under bufferMin, so one is created
    api.with_store(|s| {
        s.mutate(&pods_path(NS), &created[0], |p| {
            p["metadata"]["labels"][ALLOCATED_TO_LABEL] = json!("someone")
        })
    });
    reconcile_pool(&ctx, "agent-pool").await;
    assert_eq!(
        pod_names(&api, &format!("{POOL_LABEL}=agent-pool")).len(),
        3
    );
    let status = api
        .with_store(|s| s.get(&pools_path(NS), "agent-pool").cloned())
        .expect("pool")["status"]
        .clone();
    assert_eq!(status["allocated"], 1);

    // failed pods are deleted and replaced
    api.with_store(|s| {
        s.mutate(&pods_path(NS), &created[1], |p| {
            p["status"]["phase"] = json!("Failed")
        })
    });
    reconcile_pool(&ctx, "agent-pool").await;
    let names = pod_names(&api, &format!("{POOL_LABEL}=agent-pool"));
    assert!(!names.contains(&created[1]), "the failed pod is gone");
    assert_eq!(names.len(), 3);
}

#[tokio::test]
async fn invalid_capacity_is_reported_not_acted_on() {
    let (api, ctx, _) = setup();
    api.with_store(|s| s.put(&pools_path(NS), pool_obj("bad", [5, 2, 0, 5])));
    reconcile_pool(&ctx, "bad").await;
    assert!(pod_names(&api, "").is_empty());
    let ev = api
        .requests()
        .into_iter()
        .find(|r| r.path.contains("/events"))
        .expect("an event");
    assert_eq!(ev.body["reason"], "InvalidCapacity");
    assert_eq!(ev.body["type"], "Warning");
}

fn batch_obj(name: &str, replicas: i32, extra: Value) -> Value {
    let mut b = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox", "metadata": {"name": name},
        "spec": {"replicas": replicas, "poolRef": "p"}});
    sandpool_core::batch::merge_patch(&mut b, &json!({ "spec": extra }));
    b
}

/// Reconcile a batch until it stops changing its finalizers (first pass adds one).
async fn reconcile_batch(ctx: &Arc<Context>, name: &str) {
    batch::reconcile(get::<BatchSandbox>(ctx, name).await, ctx.clone())
        .await
        .expect("batch reconcile");
}

#[tokio::test]
async fn batch_claims_pool_pods_with_resource_version_preconditions() {
    let (api, ctx, _) = setup();
    ready_pool(&api, &ctx, "p", 3).await;
    api.with_store(|s| s.put(&batches_path(NS), batch_obj("b1", 2, json!({}))));
    reconcile_batch(&ctx, "b1").await;
    let b = api
        .with_store(|s| s.get(&batches_path(NS), "b1").cloned())
        .expect("batch");
    assert_eq!(
        b["metadata"]["finalizers"],
        json!([BATCH_FINALIZER]),
        "first pass adds the finalizer"
    );
    reconcile_batch(&ctx, "b1").await;

    let allocated = pod_names(&api, &format!("{ALLOCATED_TO_LABEL}=uid-b1"));
    assert_eq!(allocated.len(), 2);
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PATCH && r.path.contains("/pods/") && r.status == 200)
        .collect();
    assert_eq!(patches.len(), 2);
    for p in &patches {
        assert!(
            p.body["metadata"]["resourceVersion"].is_string(),
            "allocation is conditional: {:?}",
            p.body
        );
        assert_eq!(p.body["metadata"]["labels"][ALLOCATED_TO_LABEL], "uid-b1");
    }
    let b = api
        .with_store(|s| s.get(&batches_path(NS), "b1").cloned())
        .expect("batch");
    let endpoints: Vec<String> = serde_json::from_str(
        b["metadata"]["annotations"][ENDPOINTS_ANNOTATION]
            .as_str()
            .expect("endpoints"),
    )
    .expect("json");
    assert_eq!(endpoints.len(), 2);
    assert_eq!(b["status"]["allocated"], 2);
    assert_eq!(b["status"]["ready"], 2);
    let nodes: Vec<String> = allocated
        .iter()
        .map(|n| {
            api.with_store(|s| s.get(&pods_path(NS), n).cloned())
                .expect("pod")["spec"]["nodeName"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_ne!(nodes[0], nodes[1], "spread across nodes");

    // a second reconcile is a no-op for allocation
    let before = api.requests().len();
    reconcile_batch(&ctx, "b1").await;
    assert!(
        api.requests()[before..]
            .iter()
            .all(|r| r.method == Method::GET),
        "steady state only reads"
    );
}

#[tokio::test]
async fn a_pod_taken_concurrently_is_never_handed_out_twice() {
    let (api, ctx, _) = setup();
    ready_pool(&api, &ctx, "p", 3).await;
    api.with_store(|s| s.put(&batches_path(NS), batch_obj("b1", 2, json!({}))));
    reconcile_batch(&ctx, "b1").await; // finalizer
    // Another controller wins the first pod b1 tries to take: right before
    // b1's first pod PATCH, that pod gets allocated elsewhere (its
    // resourceVersion changes).
    let stolen: Arc<Mutex<Option<String>>> = Arc::default();
    let s2 = stolen.clone();
    api.on_request(Box::new(move |m, path, store| {
        if m == Method::PATCH && path.contains("/pods/") {
            let mut st = s2.lock().expect("lock");
            if st.is_none() {
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                store.mutate(&pods_path(NS), &name, |p| {
                    p["metadata"]["labels"][ALLOCATED_TO_LABEL] = json!("uid-other")
                });
                *st = Some(name);
            }
        }
    }));
    reconcile_batch(&ctx, "b1").await;
    let stolen = stolen
        .lock()
        .expect("lock")
        .clone()
        .expect("a pod was stolen");
    let conflicts = api.requests().iter().filter(|r| r.status == 409).count();
    assert_eq!(conflicts, 1, "the stale write was refused");
    let mine = pod_names(&api, &format!("{ALLOCATED_TO_LABEL}=uid-b1"));
    assert_eq!(mine.len(), 2, "the conflict was retried with another pod");
    assert!(!mine.contains(&stolen));
    let other = api
        .with_store(|s| s.get(&pods_path(NS), &stolen).cloned())
        .expect("pod");
    assert_eq!(
        other["metadata"]["labels"][ALLOCATED_TO_LABEL], "uid-other",
        "the winner keeps it"
    );
}

#[tokio::test]
async fn two_batches_racing_for_a_small_pool_split_it_without_overlap() {
    let (api, ctx, _) = setup();
    ready_pool(&api, &ctx, "p", 3).await;
    for n in ["b1", "b2"] {
        api.with_store(|s| s.put(&batches_path(NS), batch_obj(n, 2, json!({}))));
        reconcile_batch(&ctx, n).await; // finalizers
    }
    let (b1, b2) = (
        get::<BatchSandbox>(&ctx, "b1").await,
        get::<BatchSandbox>(&ctx, "b2").await,
    );
    let (r1, r2) = tokio::join!(
        batch::reconcile(b1, ctx.clone()),
        batch::reconcile(b2, ctx.clone())
    );
    r1.expect("b1");
    r2.expect("b2");
    let (m1, m2) = (
        pod_names(&api, &format!("{ALLOCATED_TO_LABEL}=uid-b1")),
        pod_names(&api, &format!("{ALLOCATED_TO_LABEL}=uid-b2")),
    );
    assert_eq!(
        m1.len() + m2.len(),
        3,
        "all three pods handed out, b1={m1:?} b2={m2:?}"
    );
    assert!(m1.iter().all(|p| !m2.contains(p)), "no pod in both");
    let exhausted = api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/events") && r.body["reason"] == "PoolExhausted")
        .count();
    assert_eq!(exhausted, 1, "the short batch says why");
}

#[tokio::test]
async fn expiry_deletes_and_the_finalizer_stops_tasks_and_deletes_used_pods() {
    let (api, ctx, tasks) = setup();
    ready_pool(&api, &ctx, "p", 2).await;
    let task = json!({"taskTemplate": {"spec": {"process": {"command": ["sleep", "100"]}}}});
    api.with_store(|s| s.put(&batches_path(NS), batch_obj("b1", 2, task)));
    reconcile_batch(&ctx, "b1").await;
    reconcile_batch(&ctx, "b1").await;
    assert_eq!(tasks.started.lock().expect("lock").len(), 2);
    let mine = pod_names(&api, &format!("{ALLOCATED_TO_LABEL}=uid-b1"));

    // expire it
    api.with_store(|s| {
        s.mutate(&batches_path(NS), "b1", |b| {
            b["spec"]["expireTime"] = json!("2020-01-01T00:00:00Z")
        })
    });
    reconcile_batch(&ctx, "b1").await;
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == Method::DELETE && r.path.ends_with("/batchsandboxes/b1"))
    );
    let b = api
        .with_store(|s| s.get(&batches_path(NS), "b1").cloned())
        .expect("held by the finalizer");
    assert!(b["metadata"]["deletionTimestamp"].is_string());

    // cleanup: tasks stopped, used pods deleted, finalizer removed, object gone
    reconcile_batch(&ctx, "b1").await;
    let mut stopped = tasks.stopped.lock().expect("lock").clone();
    stopped.sort();
    let mut want = mine.clone();
    want.sort();
    assert_eq!(stopped, want);
    assert!(
        api.with_store(|s| s.get(&batches_path(NS), "b1").is_none()),
        "deleted after cleanup"
    );
    for p in &mine {
        assert!(
            api.with_store(|s| s.get(&pods_path(NS), p).is_none()),
            "used pod {p} deleted, never returned to the pool"
        );
    }
    assert!(
        pod_names(&api, &format!("{POOL_LABEL}=p,!{ALLOCATED_TO_LABEL}")).is_empty(),
        "no used pod is free for the next claim"
    );
    // the pool makes fresh pods in their place
    reconcile_pool(&ctx, "p").await;
    let fresh = pod_names(&api, &format!("{POOL_LABEL}=p,!{ALLOCATED_TO_LABEL}"));
    assert_eq!(fresh.len(), 2, "refilled: {fresh:?}");
    assert!(
        fresh.iter().all(|p| !mine.contains(p)),
        "{fresh:?} vs {mine:?}"
    );
}

#[tokio::test]
async fn shard_tasks_run_per_pod_and_finish_with_ttl() {
    let (api, ctx, tasks) = setup();
    ready_pool(&api, &ctx, "p", 2).await;
    let spec = json!({
        "ttlSecondsAfterFinished": 0,
        "taskTemplate": {"spec": {"process": {"command": ["echo", "Default task"]}}},
        "shardTaskPatches": [
            {"spec": {"process": {"command": ["echo", "Custom task for sandbox 1"]}}},
            {"spec": {"process": {"command": ["echo", "Custom task for sandbox 2"], "args": ["with", "additional", "arguments"]}}}
        ]
    });
    api.with_store(|s| s.put(&batches_path(NS), batch_obj("b1", 2, spec)));
    reconcile_batch(&ctx, "b1").await;
    reconcile_batch(&ctx, "b1").await;
    let started = tasks.started.lock().expect("lock").clone();
    let mut cmds: Vec<String> = started.values().map(|v| v.join(" ")).collect();
    cmds.sort();
    assert_eq!(
        cmds,
        [
            "echo Custom task for sandbox 1",
            "echo Custom task for sandbox 2 with additional arguments"
        ]
    );
    let b = api
        .with_store(|s| s.get(&batches_path(NS), "b1").cloned())
        .expect("batch");
    assert_eq!(b["status"]["taskRunning"], 2);

    // one succeeds, one fails
    let names: Vec<String> = started.keys().cloned().collect();
    tasks.exit.lock().expect("lock").insert(names[0].clone(), 0);
    tasks.exit.lock().expect("lock").insert(names[1].clone(), 3);
    reconcile_batch(&ctx, "b1").await;
    let b = api
        .with_store(|s| s.get(&batches_path(NS), "b1").cloned())
        .expect("batch");
    assert_eq!(
        (
            b["status"]["taskSucceed"].clone(),
            b["status"]["taskFailed"].clone()
        ),
        (json!(1), json!(1))
    );
    assert!(b["status"]["completionTime"].is_string());
    // ttlSecondsAfterFinished: 0 -> the next pass deletes it
    reconcile_batch(&ctx, "b1").await;
    let b = api
        .with_store(|s| s.get(&batches_path(NS), "b1").cloned())
        .expect("held by finalizer");
    assert!(b["metadata"]["deletionTimestamp"].is_string());
}

#[tokio::test]
async fn batch_from_a_template_creates_and_deletes_its_own_pods() {
    let (api, ctx, _) = setup();
    let b = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox", "metadata": {"name": "basic"},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "nginx:latest"}]}}}});
    api.with_store(|s| s.put(&batches_path(NS), b));
    reconcile_batch(&ctx, "basic").await;
    reconcile_batch(&ctx, "basic").await;
    let mut mine = pod_names(&api, &format!("{ALLOCATED_TO_LABEL}=uid-basic"));
    mine.sort();
    assert_eq!(mine, ["basic-0", "basic-1"]);
    // scale down to 1: the highest shard goes
    api.with_store(|s| {
        s.mutate(&batches_path(NS), "basic", |b| {
            b["spec"]["replicas"] = json!(1)
        })
    });
    reconcile_batch(&ctx, "basic").await;
    assert_eq!(
        pod_names(&api, &format!("{ALLOCATED_TO_LABEL}=uid-basic")),
        ["basic-0"]
    );
    // delete: the pod goes too (not a pool pod)
    api.with_store(|s| s.delete(&batches_path(NS), "basic"));
    reconcile_batch(&ctx, "basic").await;
    assert!(pod_names(&api, "").is_empty());
    assert!(api.with_store(|s| s.get(&batches_path(NS), "basic").is_none()));
}

#[tokio::test]
async fn a_missing_pool_is_an_error_that_is_retried() {
    let (api, ctx, _) = setup();
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            batch_obj("b1", 1, json!({"poolRef": "nope"})),
        )
    });
    reconcile_batch(&ctx, "b1").await;
    let err = batch::reconcile(get::<BatchSandbox>(&ctx, "b1").await, ctx.clone())
        .await
        .expect_err("no pool");
    assert!(err.to_string().contains("Pool nope not found"), "{err}");
}

// ------------------------------------------------------------------ agent-sandbox

fn ext(plural: &str) -> String {
    cr_path("extensions.agents.x-k8s.io", plural, NS)
}

fn agent_fixtures(api: &FakeApi) {
    api.with_store(|s| {
        s.put(&ext("sandboxtemplates"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxTemplate",
            "metadata": {"name": "python-runtime-template"},
            "spec": {"podTemplate": {"metadata": {"labels": {"sandbox": "python-sandbox"}},
                     "spec": {"runtimeClassName": "gvisor", "containers": [{"name": "python-runtime", "image": "python-runtime-sandbox:latest"}]}}}}));
        s.put(&ext("sandboxwarmpools"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxWarmPool",
            "metadata": {"name": "python-warmpool"},
            "spec": {"replicas": 2, "sandboxTemplateRef": {"name": "python-runtime-template"}}}));
        s.put(&ext("sandboxclaims"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxClaim",
            "metadata": {"name": "warmpool-test"},
            "spec": {"sandboxTemplateRef": {"name": "python-runtime-template"}}}));
    });
}

/// One reconcile of the SandboxClaim `name`.
async fn reconcile_claim(
    ctx: &Arc<Context>,
    name: &str,
) -> Result<kube::runtime::controller::Action, sandpool_controller::error::Error> {
    agent_sandbox::reconcile_claim(get::<SandboxClaim>(ctx, name).await, ctx.clone()).await
}

async fn reconcile_python_warm_pool(ctx: &Arc<Context>) {
    agent_sandbox::reconcile_warm_pool(
        get::<SandboxWarmPool>(ctx, "python-warmpool").await,
        ctx.clone(),
    )
    .await
    .expect("wp");
}

fn claim_obj(api: &FakeApi, name: &str) -> Option<Value> {
    api.with_store(|s| s.get(&ext("sandboxclaims"), name).cloned())
}

fn sandbox_obj(api: &FakeApi, name: &str) -> Option<Value> {
    api.with_store(|s| {
        s.get(&cr_path("agents.x-k8s.io", "sandboxes", NS), name)
            .cloned()
    })
}

/// The names of the warm pool's Sandboxes (its members).
fn warm_sandboxes(api: &FakeApi) -> Vec<String> {
    api.with_store(|s| s.list(&cr_path("agents.x-k8s.io", "sandboxes", NS)))
        .into_iter()
        .filter(|o| o["metadata"]["labels"].get(WARM_POOL_LABEL).is_some())
        .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
        .collect()
}

async fn reconcile_sandbox(ctx: &Arc<Context>, name: &str) {
    agent_sandbox::reconcile_sandbox(get::<Sandbox>(ctx, name).await, ctx.clone())
        .await
        .expect("sb");
}

#[tokio::test]
async fn a_template_ref_claim_adopts_a_warm_sandbox_and_the_warm_pool_replenishes() {
    let (api, ctx, _) = setup();
    agent_fixtures(&api);
    reconcile_python_warm_pool(&ctx).await;
    let warm = warm_sandboxes(&api);
    assert_eq!(warm.len(), 2);
    for n in &warm {
        reconcile_sandbox(&ctx, n).await; // its pod
    }
    ready_all(&api, WARM_POOL_LABEL);
    for n in &warm {
        reconcile_sandbox(&ctx, n).await; // Ready
    }
    reconcile_python_warm_pool(&ctx).await;
    let wp = api
        .with_store(|s| s.get(&ext("sandboxwarmpools"), "python-warmpool").cloned())
        .expect("wp");
    assert_eq!(wp["status"]["replicas"], 2);
    assert_eq!(wp["status"]["readyReplicas"], 2);

    // v1alpha1's sandboxTemplateRef: any pool of the template
    let claim = || reconcile_claim(&ctx, "warmpool-test");
    claim().await.expect("finalizer");
    claim().await.expect("claim");
    let c = claim_obj(&api, "warmpool-test").expect("claim");
    let name = c["metadata"]["annotations"][CLAIM_SANDBOX_ANNOTATION]
        .as_str()
        .expect("the claim names its Sandbox")
        .to_string();
    assert!(warm.contains(&name));
    let sb = sandbox_obj(&api, &name).expect("sandbox");
    assert_eq!(sb["metadata"]["ownerReferences"][0]["kind"], "SandboxClaim");
    let pod = api
        .with_store(|s| s.get(&pods_path(NS), &name).cloned())
        .expect("pod");
    assert!(
        pod["metadata"]["labels"].get(WARM_POOL_LABEL).is_none(),
        "left the pool"
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Sandbox");

    // the warm pool makes a replacement
    reconcile_python_warm_pool(&ctx).await;
    assert_eq!(warm_sandboxes(&api).len(), 2);

    claim().await.expect("claim");
    let c = claim_obj(&api, "warmpool-test").expect("claim");
    assert_eq!(c["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(c["status"]["conditions"][0]["status"], "True");
    assert_eq!(c["status"]["sandbox"]["name"], name.as_str());

    // deleting the claim removes its sandbox (and the pod), then the claim
    api.with_store(|s| s.delete(&ext("sandboxclaims"), "warmpool-test"));
    claim().await.expect("cleanup");
    assert!(api.with_store(|s| s.get(&ext("sandboxclaims"), "warmpool-test").is_none()));
    assert!(sandbox_obj(&api, &name).is_none());
    assert!(
        api.with_store(|s| s.get(&pods_path(NS), &name).is_none()),
        "the adopted pod went with its claim"
    );
}

#[tokio::test]
async fn claim_without_warm_pods_starts_a_cold_sandbox() {
    let (api, ctx, _) = setup();
    agent_fixtures(&api);
    let claim = || reconcile_claim(&ctx, "warmpool-test");
    claim().await.expect("finalizer");
    claim().await.expect("claim");
    let sb = sandbox_obj(&api, "warmpool-test").expect("sandbox");
    assert!(
        sb["metadata"]["annotations"]
            .get(POD_NAME_ANNOTATION)
            .is_none()
    );
    agent_sandbox::reconcile_sandbox(get::<Sandbox>(&ctx, "warmpool-test").await, ctx.clone())
        .await
        .expect("sb");
    let pod = api
        .with_store(|s| s.get(&pods_path(NS), "warmpool-test").cloned())
        .expect("cold pod named after the sandbox");
    assert_eq!(pod["spec"]["runtimeClassName"], "gvisor");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Sandbox");
    let sb = sandbox_obj(&api, "warmpool-test").expect("sandbox");
    assert_eq!(sb["status"]["conditions"][0]["status"], "False");
}

#[tokio::test]
async fn claim_shutdown_time_expires_it() {
    let (api, ctx, _) = setup();
    agent_fixtures(&api);
    api.with_store(|s| {
        s.mutate(&ext("sandboxclaims"), "warmpool-test", |c| {
            c["spec"]["shutdownTime"] = json!("2020-01-01T00:00:00Z")
        })
    });
    let claim = || reconcile_claim(&ctx, "warmpool-test");
    claim().await.expect("finalizer");
    claim().await.expect("expire");
    claim().await.expect("cleanup");
    assert!(api.with_store(|s| s.get(&ext("sandboxclaims"), "warmpool-test").is_none()));
}

#[tokio::test]
async fn claim_of_an_unknown_template_reports_it() {
    let (api, ctx, _) = setup();
    api.with_store(|s| {
        s.put(
            &ext("sandboxclaims"),
            json!({"metadata": {"name": "c"}, "spec": {"sandboxTemplateRef": {"name": "missing"}}}),
        )
    });
    let claim = || reconcile_claim(&ctx, "c");
    claim().await.expect("finalizer");
    claim().await.expect("claim");
    let c = claim_obj(&api, "c").expect("claim");
    assert_eq!(c["status"]["conditions"][0]["reason"], "TemplateNotFound");
    assert_eq!(c["status"]["conditions"][0]["status"], "False");
}

// ------------------------------------------------------------------ leader election

#[tokio::test]
async fn leader_election_takes_free_or_expired_leases_only() {
    let (api, ctx, _) = setup();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(ctx.client.clone(), NS);
    let cfg = |id: &str| leader::LeaseConfig {
        name: "sandpool-controller".into(),
        identity: id.into(),
        duration: std::time::Duration::from_secs(15),
    };
    let acquire = async |id: &str| {
        leader::try_acquire_or_renew(&leases, &cfg(id))
            .await
            .expect(id)
    };
    let path = "/apis/coordination.k8s.io/v1/namespaces/sandpool/leases";
    let expire_lease = || {
        api.with_store(|s| {
            s.mutate(path, "sandpool-controller", |l| {
                l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z")
            })
        })
    };
    let lease = || {
        api.with_store(|s| s.get(path, "sandpool-controller").cloned())
            .expect("lease")
    };
    assert!(acquire("a").await, "a creates the lease");
    assert!(!acquire("b").await, "b waits while a's lease is live");
    assert!(acquire("a").await, "a renews");
    expire_lease();
    assert!(acquire("b").await, "b takes the expired lease");
    let l = lease();
    assert_eq!(l["spec"]["holderIdentity"], "b");
    assert_eq!(l["spec"]["leaseTransitions"], 1);

    // a stale replace (someone wrote in between) loses with 409
    expire_lease();
    let racer = Arc::new(Mutex::new(false));
    let r2 = racer.clone();
    api.on_request(Box::new(move |m, p, store| {
        if m == Method::PUT
            && p.ends_with("/leases/sandpool-controller")
            && !*r2.lock().expect("lock")
        {
            *r2.lock().expect("lock") = true;
            store.mutate(path, "sandpool-controller", |l| {
                l["spec"]["holderIdentity"] = json!("c")
            });
        }
    }));
    assert!(!acquire("a").await, "a lost the race to c");
    let l = lease();
    assert_eq!(l["spec"]["holderIdentity"], "c");
}

// ------------------------------------------------------------------ CRD-backed Scheduler (gateway in cluster mode)

/// The batch controller, running as it would in the cluster.
fn spawn_batch_controller(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let all = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
                .list(&Default::default())
                .await
                .expect("list");
            for b in all.items {
                let _ = batch::reconcile(Arc::new(b), ctx.clone()).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
}

/// Errors: unknown pool, unknown claim, pause unsupported here.
async fn assert_scheduler_errors(
    sched: &sandpool_controller::kube_scheduler::KubeScheduler,
    claim_id: &str,
) {
    use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
    let e = sched
        .create_claim(tonic::Request::new(pb::ClaimRequest {
            pool: "nope".into(),
            ..Default::default()
        }))
        .await
        .expect_err("no pool");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = sched
        .get_claim(tonic::Request::new(pb::ClaimRef {
            claim_id: "missing".into(),
        }))
        .await
        .expect_err("missing");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = sched
        .pause_claim(tonic::Request::new(pb::PauseClaimRequest {
            claim_id: claim_id.to_string(),
            filesystem_only: false,
        }))
        .await
        .expect_err("pause");
    // pause goes to the node agent of the pod's node (tests/k8s_pause.rs);
    // this fake cluster runs none
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn kube_scheduler_claims_through_a_batch_sandbox() {
    use sandpool_controller::kube_scheduler::KubeScheduler;
    use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
    let (api, ctx, tasks) = setup();
    ready_pool(&api, &ctx, "p", 2).await;
    let controller = spawn_batch_controller(ctx.clone());
    let mut sched = KubeScheduler::new(ctx.client.clone(), NS, tasks.clone());
    sched.poll = std::time::Duration::from_millis(5);
    let req = pb::ClaimRequest {
        pool: "p".into(),
        ttl_seconds: 600,
        process: Some(pb::InjectRequest {
            argv: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        }),
        metadata: [("team".to_string(), "a".to_string())].into(),
        ..Default::default()
    };
    let claim = sched
        .create_claim(tonic::Request::new(req))
        .await
        .expect("claim")
        .into_inner();
    assert_eq!(claim.state, pb::ClaimState::Bound as i32);
    assert_eq!(claim.pool, "p");
    let sb = claim.sandbox.clone().expect("sandbox");
    assert!(sb.ip.starts_with("10.1.0."), "{sb:?}");
    assert_eq!(sb.runtime_port, 44772);
    assert_eq!(sb.access_token.len(), 32, "each pod has its own token");
    assert!(claim.expires_unix_ms > 0);
    assert_eq!(
        tasks
            .started
            .lock()
            .expect("lock")
            .get(&sb.sandbox_id)
            .cloned(),
        Some(vec!["sleep".to_string(), "1000".to_string()])
    );

    let listed = sched
        .list_claims(tonic::Request::new(pb::ListClaimsRequest {
            metadata: [("team".to_string(), "a".to_string())].into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.claims[0].claim_id, claim.claim_id);

    assert_scheduler_errors(&sched, &claim.claim_id).await;

    // release deletes the used pod; it never returns to the pool
    sched
        .release_claim(tonic::Request::new(pb::ClaimRef {
            claim_id: claim.claim_id.clone(),
        }))
        .await
        .expect("release");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if api.with_store(|s| s.get(&batches_path(NS), &claim.claim_id).is_none()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    controller.abort();
    assert!(
        api.with_store(|s| s.get(&batches_path(NS), &claim.claim_id).is_none()),
        "claim gone"
    );
    assert!(
        api.with_store(|s| s.get(&pods_path(NS), &sb.sandbox_id).is_none()),
        "the used pod {} is deleted",
        sb.sandbox_id
    );
    assert!(
        !pod_names(&api, &format!("{POOL_LABEL}=p,!{ALLOCATED_TO_LABEL}")).contains(&sb.sandbox_id),
        "the used pod is not free for the next claim"
    );
}

#[tokio::test]
async fn kube_scheduler_pool_only_claim_fails_fast_and_leaves_nothing() {
    use sandpool_controller::kube_scheduler::KubeScheduler;
    use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
    let (api, ctx, tasks) = setup();
    api.with_store(|s| s.put(&pools_path(NS), pool_obj("empty", [0, 0, 0, 1])));
    let mut sched = KubeScheduler::new(ctx.client.clone(), NS, tasks);
    sched.claim_timeout = std::time::Duration::from_millis(100);
    let e = sched
        .create_claim(tonic::Request::new(pb::ClaimRequest {
            pool: "empty".into(),
            pool_only: true,
            ..Default::default()
        }))
        .await
        .expect_err("exhausted");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(
        api.with_store(|s| s.list(&batches_path(NS)).is_empty()),
        "the half-made claim was removed"
    );
}
