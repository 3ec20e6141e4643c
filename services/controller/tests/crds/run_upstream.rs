//! Every upstream OpenSandbox sample and e2e testdata rendering (Pool and
//! BatchSandbox) applied unchanged to the fake apiserver and run by our
//! controllers: a Pool makes its template's pods (or says why not), a
//! BatchSandbox gets `replicas` sandboxes from its pool or its template (or
//! says why not). The strategies' detailed behaviour is in
//! `opensandbox_fields.rs`, `pool_recycle.rs`, `batch_pause.rs` and
//! `sandbox_snapshot.rs`.

use std::sync::Arc;

use kube::api::Api;
use sandpool_controller::crd::{ALLOCATED_TO_LABEL, BatchSandbox, POOL_LABEL, Pool};
use sandpool_controller::{batch, pool};
use serde_json::{Value, json};

use super::gotmpl::render;
use super::opensandbox::{docs, is_ours, renderings, upstream_dir, yaml_files};
use super::support::{self, FakeApi, NoTasks, batches_path, make_ready, pods_path, pools_path};

/// The chart's namespace (the controller's Role is granted there).
const NS: &str = "sandpool";

fn in_ns(mut v: Value) -> Value {
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    v
}

async fn reconcile_pool(api: &FakeApi, name: &str) {
    let ctx = support::context(api, NoTasks(Some(None)));
    let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get pool");
    pool::reconcile(Arc::new(p), ctx)
        .await
        .expect("pool reconcile");
}

async fn reconcile_batch(api: &FakeApi, name: &str) {
    let ctx = support::context(api, NoTasks(Some(None)));
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get batch");
    batch::reconcile(Arc::new(b), ctx)
        .await
        .expect("batch reconcile");
}

fn live_pods(api: &FakeApi, selector: impl Fn(&Value) -> bool) -> Vec<Value> {
    api.with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none() && selector(p))
        .collect()
}

fn ready_condition(api: &FakeApi, coll: &str, name: &str) -> Value {
    let obj = api
        .with_store(|s| s.get(coll, name).cloned())
        .expect("object");
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or(Value::Null)
}

fn container_names(template: &Value) -> Vec<Value> {
    template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].clone())
        .collect()
}

/// A Pool: its pods carry its template's containers (and node selector).
async fn run_pool(v: Value, what: &str) {
    let api = FakeApi::new();
    let name = v["metadata"]["name"].as_str().expect("name").to_string();
    api.with_store(|s| s.put(&pools_path(NS), in_ns(v.clone())));
    reconcile_pool(&api, &name).await;
    let mine = |p: &Value| p["metadata"]["labels"][POOL_LABEL] == name.as_str();
    if v["spec"]["recycleStrategy"]["type"] == "Noop" {
        let ready = ready_condition(&api, &pools_path(NS), &name);
        assert_eq!(ready["reason"], "UnsupportedField", "{what}: {ready}");
        return;
    }
    let pods = live_pods(&api, mine);
    assert!(!pods.is_empty(), "{what}: no pod made");
    for p in &pods {
        let names = container_names(p);
        for c in container_names(&v["spec"]["template"]) {
            assert!(names.contains(&c), "{what}: container {c} missing in {p}");
        }
        let selector = &v["spec"]["template"]["spec"]["nodeSelector"];
        if !selector.is_null() {
            assert_eq!(&p["spec"]["nodeSelector"], selector, "{what}");
        }
    }
    let status = api
        .with_store(|s| s.get(&pools_path(NS), &name).cloned())
        .expect("pool")["status"]
        .clone();
    assert_eq!(status["total"], json!(pods.len()), "{what}: {status}");
    assert!(status["revision"].is_string(), "{what}: {status}");
}

/// A ready pool `name` of `n` pods (what a pooled batch claims from).
async fn ready_pool(api: &FakeApi, name: &str, n: i64) {
    let p = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox-container", "image": "busybox"}]}},
            "capacitySpec": {"bufferMin": n, "bufferMax": n, "poolMin": n, "poolMax": n + 1},
            "scaleStrategy": {"maxUnavailable": "100%"}}});
    api.with_store(|s| s.put(&pools_path(NS), p));
    reconcile_pool(api, name).await;
    for (i, p) in live_pods(api, |_| true).iter().enumerate() {
        let pod = p["metadata"]["name"]
            .as_str()
            .expect("pod name")
            .to_string();
        api.with_store(|s| make_ready(s, NS, &pod, &format!("10.3.0.{}", i + 1), "node-a"));
    }
}

/// A BatchSandbox: `replicas` sandboxes from its pool (made ready first) or
/// its template; `poolRef: "*"` refused naming it.
async fn run_batch(v: Value, what: &str) {
    let api = FakeApi::new();
    let name = v["metadata"]["name"].as_str().expect("name").to_string();
    let replicas = v["spec"]["replicas"].as_i64().unwrap_or(1);
    let pool_ref = v["spec"]["poolRef"].as_str().map(str::to_string);
    if let Some(p) = pool_ref.as_deref().filter(|p| *p != batch::AUTO_ASSIGN) {
        ready_pool(&api, p, replicas).await;
    }
    api.with_store(|s| s.put(&batches_path(NS), in_ns(v.clone())));
    reconcile_batch(&api, &name).await;
    reconcile_batch(&api, &name).await;
    let expired = v["spec"]["expireTime"]
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|t| t < k8s_openapi::jiff::Timestamp::now());
    if expired {
        // the samples' expireTime is in the past: deleted, as upstream
        let gone = api
            .with_store(|s| s.get(&batches_path(NS), &name).cloned())
            .is_none_or(|b| b["metadata"].get("deletionTimestamp").is_some());
        assert!(gone, "{what}: an expired batch is deleted");
        return;
    }
    if pool_ref.as_deref() == Some(batch::AUTO_ASSIGN) {
        let ready = ready_condition(&api, &batches_path(NS), &name);
        assert_eq!(ready["reason"], "UnsupportedField", "{what}: {ready}");
        return;
    }
    let uid = format!("uid-{name}");
    let mine = live_pods(&api, |p| {
        p["metadata"]["labels"][ALLOCATED_TO_LABEL] == uid.as_str()
    });
    assert_eq!(mine.len() as i64, replicas, "{what}: {mine:?}");
    if pool_ref.is_none() {
        for p in &mine {
            let names = container_names(p);
            for c in container_names(&v["spec"]["template"]) {
                assert!(names.contains(&c), "{what}: container {c} missing in {p}");
            }
        }
    }
}

#[tokio::test]
async fn upstream_samples_and_testdata_run_on_the_fake_apiserver() {
    let Some(dir) = upstream_dir() else {
        eprintln!("SKIP: no upstream OpenSandbox reference copy");
        return;
    };
    let (mut pools, mut batches) = (0, 0);
    for sub in ["samples", "examples"] {
        for f in yaml_files(&dir.join(sub)) {
            let text = std::fs::read_to_string(&f).expect("read");
            let what = f.display().to_string();
            let texts: Vec<String> = if text.contains("{{") {
                renderings()
                    .iter()
                    .map(|vars| render(&text, vars).unwrap_or_else(|e| panic!("{what}: {e}")))
                    .collect()
            } else {
                vec![text]
            };
            for t in texts {
                for v in docs(&t, &what).into_iter().filter(is_ours) {
                    let what = format!("{what}\n{t}");
                    match v["kind"].as_str() {
                        Some("Pool") => {
                            run_pool(v, &what).await;
                            pools += 1;
                        }
                        Some("BatchSandbox") => {
                            run_batch(v, &what).await;
                            batches += 1;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    eprintln!("{pools} upstream Pool and {batches} BatchSandbox renderings run");
    assert!(
        pools >= 20 && batches >= 30,
        "{pools} pools, {batches} batches"
    );
}
