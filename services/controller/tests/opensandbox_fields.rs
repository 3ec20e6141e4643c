//! OpenSandbox Pool and BatchSandbox fields beyond the basics, against the
//! stateful fake apiserver: template revisions and `updateStrategy`,
//! `scaleStrategy`, BatchSandbox `status.phase`, and fields accepted but not
//! honoured (reported with an `UnsupportedField` event and condition).

mod support;

use std::sync::Arc;

use kube::api::Api;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::{batch, pool};
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, batches_path, make_ready, pods_path, pools_path};

const NS: &str = "sandpool";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/sandpool/events";
const REVISION: &str = "sandbox.opensandbox.io/pool-revision";

fn setup() -> (FakeApi, Arc<Context>) {
    let api = FakeApi::new();
    let ctx = support::context(&api, NoTasks(Some(None)));
    (api, ctx)
}

fn pool_obj(name: &str, image: &str, cap: [i32; 4], extra: Value) -> Value {
    let mut p = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}},
                 "capacitySpec": {"bufferMin": cap[0], "bufferMax": cap[1], "poolMin": cap[2], "poolMax": cap[3]}}});
    sandpool_core::batch::merge_patch(&mut p, &json!({ "spec": extra }));
    p
}

async fn reconcile_pool(ctx: &Arc<Context>, name: &str) {
    let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get pool");
    pool::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pool reconcile");
}

async fn reconcile_batch(ctx: &Arc<Context>, name: &str) {
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get batch");
    batch::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("batch reconcile");
}

/// Live pods of the pool: (name, revision label, ready).
fn live_pods(api: &FakeApi) -> Vec<(String, String, bool)> {
    api.with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["labels"][REVISION]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["status"]["podIP"].is_string(),
            )
        })
        .collect()
}

fn ready_all(api: &FakeApi) {
    for (i, (name, _, ready)) in live_pods(api).into_iter().enumerate() {
        if !ready {
            api.with_store(|s| make_ready(s, NS, &name, &format!("10.2.0.{}", i + 10), "node-a"));
        }
    }
}

fn status(api: &FakeApi, coll: &str, name: &str) -> Value {
    api.with_store(|s| s.get(coll, name).cloned())
        .expect("object")["status"]
        .clone()
}

fn warnings(api: &FakeApi, name: &str) -> Vec<(String, String)> {
    api.with_store(|s| s.list(EVENTS))
        .iter()
        .filter(|e| e["type"] == "Warning" && e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn ready_condition(api: &FakeApi, coll: &str, name: &str) -> Value {
    status(api, coll, name)["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_new_template_replaces_idle_pods_within_max_unavailable() {
    let (api, ctx) = setup();
    let strategy = json!({"updateStrategy": {"maxUnavailable": 1},
        "scaleStrategy": {"maxUnavailable": "100%"}});
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox:1", [3, 3, 3, 5], strategy.clone()),
        )
    });
    reconcile_pool(&ctx, "p").await;
    ready_all(&api);
    reconcile_pool(&ctx, "p").await;
    let old = status(&api, &pools_path(NS), "p");
    assert_eq!(
        (old["available"].clone(), old["updated"].clone()),
        (json!(3), json!(3))
    );
    let old_rev = old["revision"].as_str().expect("revision").to_string();
    assert!(live_pods(&api).iter().all(|(_, r, _)| *r == old_rev));

    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox:2", [3, 3, 3, 5], strategy),
        )
    });
    reconcile_pool(&ctx, "p").await;
    let st = status(&api, &pools_path(NS), "p");
    let new_rev = st["revision"].as_str().expect("revision").to_string();
    assert_ne!(new_rev, old_rev, "the revision follows the template");
    let pods = live_pods(&api);
    let stale = pods.iter().filter(|(_, r, _)| *r == old_rev).count();
    let fresh = pods.iter().filter(|(_, r, _)| *r == new_rev).count();
    assert_eq!((stale, fresh), (2, 1), "one pod at a time: {pods:?}");
    assert_eq!(st["updated"], 1);
    // the replacement is not Ready yet: no further pod goes
    reconcile_pool(&ctx, "p").await;
    assert_eq!(live_pods(&api).len(), 3);
    // as replacements become Ready, the rest follow
    for _ in 0..4 {
        ready_all(&api);
        reconcile_pool(&ctx, "p").await;
    }
    ready_all(&api);
    reconcile_pool(&ctx, "p").await;
    let pods = live_pods(&api);
    assert!(
        pods.iter().all(|(_, r, ready)| *r == new_rev && *ready),
        "{pods:?}"
    );
    assert_eq!(pods.len(), 3);
    assert_eq!(status(&api, &pools_path(NS), "p")["updated"], 3);
    // the pod the apiserver would create carries the new image
    let images: Vec<Value> = api
        .with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| p["spec"]["containers"][0]["image"].clone())
        .collect();
    assert!(images.iter().all(|i| i == "busybox:2"), "{images:?}");
}

#[tokio::test]
async fn scale_strategy_limits_pods_being_created() {
    let (api, ctx) = setup();
    let strategy = json!({"scaleStrategy": {"maxUnavailable": 2}});
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox", [5, 5, 0, 8], strategy),
        )
    });
    reconcile_pool(&ctx, "p").await;
    assert_eq!(live_pods(&api).len(), 2);
    reconcile_pool(&ctx, "p").await;
    assert_eq!(live_pods(&api).len(), 2, "two are still being created");
    ready_all(&api);
    reconcile_pool(&ctx, "p").await;
    assert_eq!(live_pods(&api).len(), 4);
    ready_all(&api);
    reconcile_pool(&ctx, "p").await;
    assert_eq!(live_pods(&api).len(), 5);
    // without a scale strategy, upstream's default: 25% of the 5 wanted,
    // rounded up
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("q", "busybox", [5, 5, 0, 8], json!({})),
        )
    });
    reconcile_pool(&ctx, "q").await;
    assert_eq!(live_pods(&api).len(), 5 + 2);
}

/// Upstream's e2e `pool-with-update-strategy.yaml` (maxUnavailable as a
/// percentage) as upstream's recreate update runs it: the budget is of the
/// pool's pods (allocated ones too) less every pod not Ready, allocated
/// pods are never replaced, and idle pods of the old template that are not
/// Ready yet go at once, outside the budget.
#[tokio::test]
async fn an_update_counts_allocated_pods_and_drops_unready_old_pods_at_once() {
    let (api, ctx) = setup();
    let strategy = json!({"updateStrategy": {"maxUnavailable": "50%"},
        "scaleStrategy": {"maxUnavailable": "100%"}});
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox:1", [3, 3, 0, 8], strategy.clone()),
        )
    });
    reconcile_pool(&ctx, "p").await;
    ready_all(&api);
    reconcile_pool(&ctx, "p").await;
    // one pod is taken by a sandbox, and a fourth is still being made
    let names: Vec<String> = live_pods(&api).into_iter().map(|(n, _, _)| n).collect();
    api.with_store(|s| {
        s.mutate(&pods_path(NS), &names[0], |p| {
            p["metadata"]["labels"][ALLOCATED_TO_LABEL] = json!("uid-someone")
        })
    });
    reconcile_pool(&ctx, "p").await;
    let pods = live_pods(&api);
    assert_eq!(pods.len(), 4, "{pods:?}");
    let unready: Vec<String> = pods
        .iter()
        .filter(|(_, _, ready)| !ready)
        .map(|(n, _, _)| n.clone())
        .collect();
    assert_eq!(unready.len(), 1, "{pods:?}");

    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox:2", [3, 3, 0, 8], strategy),
        )
    });
    reconcile_pool(&ctx, "p").await;
    let left = live_pods(&api);
    let names_left: Vec<&String> = left.iter().map(|(n, _, _)| n).collect();
    // the unready old pod is gone at once; of 4 pods 50% = 2, less the one
    // not Ready: one Ready idle old pod goes; the allocated one stays
    assert!(!names_left.contains(&&unready[0]), "{left:?}");
    assert!(names_left.contains(&&names[0]), "{left:?}");
    let new_rev = status(&api, &pools_path(NS), "p")["revision"].clone();
    let old_idle_left = left
        .iter()
        .filter(|(n, r, ready)| *ready && *n != names[0] && json!(r) != new_rev)
        .count();
    assert_eq!(old_idle_left, 1, "{left:?}");
}

#[tokio::test]
async fn a_noop_recycle_strategy_is_a_condition_and_an_event() {
    let (api, ctx) = setup();
    let extra = json!({"recycleStrategy": {"type": "Noop"}});
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox", [1, 1, 0, 2], extra),
        )
    });
    reconcile_pool(&ctx, "p").await;
    let cond = ready_condition(&api, &pools_path(NS), "p");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "UnsupportedField");
    assert!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.recycleStrategy.type \"Noop\"")),
        "{cond}"
    );
    assert!(
        warnings(&api, "p")
            .iter()
            .any(|(r, _)| r == "UnsupportedField")
    );
}

#[tokio::test]
async fn batches_report_upstream_phases_and_unhonoured_fields() {
    let (api, ctx) = setup();
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox", [2, 2, 0, 4], json!({})),
        )
    });
    reconcile_pool(&ctx, "p").await;
    ready_all(&api);
    reconcile_pool(&ctx, "p").await;
    let batch = |name: &str, spec: Value| {
        json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
            "metadata": {"name": name}, "spec": spec})
    };
    // pooled and Ready: Succeed; shardPatches is accepted but reported
    // (spec.pause is honoured: tests/batch_pause.rs)
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            batch(
                "b",
                json!({"replicas": 1, "poolRef": "p", "shardPatches": [{"metadata": {}}]}),
            ),
        )
    });
    for _ in 0..2 {
        reconcile_batch(&ctx, "b").await;
    }
    let st = status(&api, &batches_path(NS), "b");
    assert_eq!(st["phase"], "Succeed", "{st}");
    assert_eq!(st["taskPending"], 0);
    let cond = ready_condition(&api, &batches_path(NS), "b");
    assert_eq!(cond["reason"], "UnsupportedField", "{st}");
    assert!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.shardPatches")),
        "{cond}"
    );
    assert!(
        warnings(&api, "b")
            .iter()
            .any(|(r, n)| r == "UnsupportedField" && n.contains("spec.shardPatches"))
    );
    // from a template, not Ready yet: Pending, and nothing unsupported
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            batch(
                "t",
                json!({"replicas": 1, "taskResourcePolicyWhenCompleted": "Retain",
                "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}),
            ),
        )
    });
    for _ in 0..2 {
        reconcile_batch(&ctx, "t").await;
    }
    assert_eq!(status(&api, &batches_path(NS), "t")["phase"], "Pending");
    assert!(warnings(&api, "t").is_empty(), "{:?}", warnings(&api, "t"));
}

/// Upstream's e2e `batchsandbox-auto-assign.yaml`: `poolRef: "*"` asks
/// upstream's controller to pick a pool. Not supported: said on the batch
/// (condition and Warning event naming it), and nothing is allocated
/// (before, it waited for a pool named "*" without a word).
#[tokio::test]
async fn an_auto_assigned_pool_ref_is_refused_naming_it() {
    let (api, ctx) = setup();
    let all_at_once = json!({"scaleStrategy": {"maxUnavailable": "100%"}});
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            pool_obj("p", "busybox", [1, 1, 1, 3], all_at_once),
        )
    });
    reconcile_pool(&ctx, "p").await;
    ready_all(&api);
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"}, "spec": {"replicas": 1, "poolRef": "*"}}),
        )
    });
    reconcile_batch(&ctx, "b").await;
    reconcile_batch(&ctx, "b").await;
    let ready = ready_condition(&api, &batches_path(NS), "b");
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "UnsupportedField", "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.poolRef \"*\"")),
        "{ready}"
    );
    assert!(
        warnings(&api, "b")
            .iter()
            .any(|(r, n)| r == "UnsupportedField" && n.contains("poolRef")),
        "{:?}",
        warnings(&api, "b")
    );
    let taken = api
        .with_store(|s| s.list(&pods_path(NS)))
        .iter()
        .filter(|p| p["metadata"]["labels"].get(ALLOCATED_TO_LABEL).is_some())
        .count();
    assert_eq!(taken, 0);
}
