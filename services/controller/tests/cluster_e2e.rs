//! End to end on a real cluster: `#[ignore]`d, run with
//! `KUBECONFIG=... SANDPOOL_E2E_RUNTIME_IMAGE=<image with /sandpool-runtime> \
//!  cargo test -p sandpool-controller --test cluster_e2e -- --ignored`.
//! It applies the CRDs, runs the controllers in this process, and drives a
//! Pool, a BatchSandbox and a SandboxClaim through their lives in a fresh
//! namespace, which it deletes at the end. (No apiserver can run on the CI
//! machines, so CI runs the mock-API suite in tests/controllers.rs instead.)

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use sandpool_controller::crd::*;
use sandpool_controller::pods::RuntimeInjection;
use sandpool_controller::run::{ControllerConfig, Health};
use sandpool_controller::tasks::GrpcTaskRunner;
use serde_json::json;

async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..secs * 4 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Create `obj` through `api`, then wait up to `secs` for `what`: `ready`
/// on the object as read back.
async fn create_and_wait<K>(
    api: &Api<K>,
    obj: serde_json::Value,
    what: &str,
    secs: u64,
    ready: impl Fn(K) -> bool,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).expect("a valid object");
    let name = obj.name_any();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    wait_for(what, secs, || async {
        api.get(&name).await.ok().is_some_and(&ready)
    })
    .await;
}

/// Apply the CRDs (server-side) and create a namespace of its own.
async fn fresh_namespace(client: &Client) -> (String, Api<Namespace>) {
    let ns = format!(
        "sandpool-e2e-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let ssa = PatchParams::apply("sandpool-e2e").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in all_crds() {
        crds.patch(&crd.name_any(), &ssa, &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
    )
    .await
    .expect("namespace");

    (ns, nss)
}

#[tokio::test]
#[ignore = "needs a real cluster: set KUBECONFIG and SANDPOOL_E2E_RUNTIME_IMAGE"]
async fn pool_batch_and_claim_on_a_real_cluster() {
    let runtime_image =
        std::env::var("SANDPOOL_E2E_RUNTIME_IMAGE").expect("SANDPOOL_E2E_RUNTIME_IMAGE");
    let client = Client::try_default().await.expect("KUBECONFIG");
    let (ns, nss) = fresh_namespace(&client).await;

    let cfg = ControllerConfig {
        namespace: ns.clone(),
        injection: RuntimeInjection {
            image: runtime_image,
            image_pull_policy: Some("IfNotPresent".into()),
        },
        leader_elect: true,
        identity: "e2e".into(),
        lease_name: "sandpool-controller".into(),
        lease_duration: Duration::from_secs(15),
        idle_pause: None,
        snapshots: Default::default(),
    };
    let controllers = tokio::spawn(sandpool_controller::run::run(
        client.clone(),
        cfg,
        Arc::new(GrpcTaskRunner),
        Arc::new(Health::default()),
    ));

    let pools: Api<Pool> = Api::namespaced(client.clone(), &ns);
    let pool = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool",
        "metadata": {"name": "e2e"},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox", "image": "busybox:1.36", "command": ["sleep", "infinity"]}]}},
                 "capacitySpec": {"bufferMin": 2, "bufferMax": 2, "poolMin": 2, "poolMax": 4}}});
    create_and_wait(&pools, pool, "2 available pods", 180, |p: Pool| {
        p.status.is_some_and(|s| s.available == 2)
    })
    .await;

    let batches: Api<BatchSandbox> = Api::namespaced(client.clone(), &ns);
    let b = json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": "b"}, "spec": {"replicas": 1, "poolRef": "e2e",
        "taskTemplate": {"spec": {"process": {"command": ["sh", "-c", "exit 0"]}}}}});
    create_and_wait(
        &batches,
        b,
        "the batch's task to succeed",
        120,
        |b: BatchSandbox| {
            b.status
                .is_some_and(|s| s.allocated == 1 && s.task_succeed == 1)
        },
    )
    .await;
    let b = batches.get("b").await.expect("batch");
    let endpoints: Vec<String> =
        serde_json::from_str(&b.annotations()[ENDPOINTS_ANNOTATION]).expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    batches
        .delete("b", &DeleteParams::default())
        .await
        .expect("delete batch");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_for("the used pod deleted, none left allocated", 60, || async {
        batches.get_opt("b").await.ok().flatten().is_none()
            && pods
                .list(&ListParams::default().labels(ALLOCATED_TO_LABEL))
                .await
                .is_ok_and(|l| l.items.is_empty())
    })
    .await;

    controllers.abort();
    nss.delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
}
