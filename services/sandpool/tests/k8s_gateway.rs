//! The gateway in Kubernetes mode: its OpenSandbox API over the CRD-backed
//! scheduler (`KubeScheduler` on gRPC), the CRDs served by the controller
//! tests' fake apiserver, the batch controller running as in the cluster.

#[path = "../../controller/tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use sandpool_controller::context::{Context, TaskRunner};
use sandpool_controller::crd::{BatchSandbox, Pool, ProcessTask};
use sandpool_controller::kube_scheduler::KubeScheduler;
use sandpool_controller::pods::RuntimeInjection;
use sandpool_controller::{batch, pool};
use serde_json::{Value, json};
use support::{FakeApi, cr_path, make_ready, pods_path};

const NS: &str = "sandpool";

struct NoTasks;

#[tonic::async_trait]
impl TaskRunner for NoTasks {
    async fn start(&self, _: &Pod, _: &ProcessTask) -> sandpool_controller::Result<()> {
        Ok(())
    }
    async fn status(&self, _: &Pod) -> Option<Option<i32>> {
        Some(None)
    }
    async fn stop(&self, _: &Pod) -> sandpool_controller::Result<()> {
        Ok(())
    }
}

/// `(status, body)` of an OpenSandbox API call.
async fn call(app: &axum::Router, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let req = http::Request::builder().method(method).uri(path);
    let (status, _, bytes) = sandpool_testsupport::send(app, req, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The fake apiserver with a ready pool `py`, the batch controller
/// running (abort it when done), and the gateway's app over
/// `KubeScheduler`.
async fn platform() -> (FakeApi, tokio::task::JoinHandle<()>, axum::Router) {
    let api = FakeApi::new();
    let inj = RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    let ctx = Arc::new(Context::new(api.client(), inj, Arc::new(NoTasks), None));
    let pools = cr_path("sandbox.opensandbox.io", "pools", NS);
    api.with_store(|s| s.put(&pools, json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": "py"},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox", "image": "python:3.12-slim"}]}},
                 "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 1, "poolMax": 2}}})));
    let p: Pool = Api::namespaced(ctx.client.clone(), NS)
        .get("py")
        .await
        .expect("pool");
    pool::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pool reconcile");
    for p in api.with_store(|s| s.list(&pods_path(NS))) {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.with_store(|s| make_ready(s, NS, &name, "10.3.0.10", "node-a"));
    }
    let c2 = ctx.clone();
    let controller = tokio::spawn(async move {
        loop {
            let all = Api::<BatchSandbox>::namespaced(c2.client.clone(), NS)
                .list(&Default::default())
                .await
                .expect("list");
            for b in all.items {
                let _ = batch::reconcile(Arc::new(b), c2.clone()).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });

    let mut sched = KubeScheduler::new(ctx.client.clone(), NS, Arc::new(NoTasks));
    sched.poll = std::time::Duration::from_millis(5);
    let client = sandpool_testsupport::serve_scheduler(sched).await;
    let gw = sandpool_gateway::Gateway::new(client, &[]);
    let app = sandpool_gateway::app(gw);

    (api, controller, app)
}

#[tokio::test]
async fn an_opensandbox_sandbox_from_a_pool_shows_the_pools_image() {
    let (_api, controller, app) = platform().await;
    let (code, created) = call(
        &app,
        "POST",
        "/v1/sandboxes",
        &json!({"extensions": {"poolRef": "py"}, "timeout": 600, "entrypoint": ["sleep", "infinity"]}),
    )
    .await;
    assert!(code < 300, "{code} {created}");
    let id = created["id"].as_str().expect("id").to_string();
    let (code, got) = call(&app, "GET", &format!("/v1/sandboxes/{id}"), &Value::Null).await;
    controller.abort();
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["image"]["uri"], "python:3.12-slim", "{got}");
}

fn network_policy(api: &FakeApi, id: &str) -> Option<Value> {
    let coll = format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies");
    let prefix = format!("{id}-egress-");
    api.with_store(|s| s.list(&coll)).into_iter().find(|np| {
        np["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&prefix))
    })
}

#[tokio::test]
async fn an_opensandbox_network_policy_becomes_a_network_policy_and_reads_back() {
    let (api, controller, app) = platform().await;
    let given = json!({"defaultAction": "deny", "egress": [
        {"action": "deny", "target": "10.1.0.0/16"},
        {"action": "allow", "target": "10.0.0.0/8"}]});
    let (code, created) = call(
        &app,
        "POST",
        "/v1/sandboxes",
        &json!({"extensions": {"poolRef": "py"}, "timeout": 600,
            "entrypoint": ["sleep", "infinity"], "networkPolicy": given}),
    )
    .await;
    assert!(code < 300, "{code} {created}");
    let id = created["id"].as_str().expect("id").to_string();
    let np = network_policy(&api, &id).expect("the sandbox's NetworkPolicy");
    assert_eq!(
        np["spec"]["egress"],
        json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}])
    );
    let path = format!("/v1/sandboxes/{id}/networkpolicy");
    let (code, got) = call(&app, "GET", &path, &Value::Null).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["policy"], given, "read back as given: {got}");

    // a domain target: 501 naming the rule, the policy kept
    let domain = json!({"defaultAction": "deny", "egress": [
        {"action": "allow", "target": "10.0.0.0/8"}, {"action": "allow", "target": "pypi.org"}]});
    let (code, refused) = call(&app, "PUT", &path, &domain).await;
    assert_eq!(code, 501, "{refused}");
    assert!(
        refused.to_string().contains("egress[1] (allow pypi.org)"),
        "{refused}"
    );
    assert_eq!(network_policy(&api, &id).expect("kept")["spec"], np["spec"]);

    // PATCH: the rule appended, the NetworkPolicy replaced
    let (code, patched) = call(
        &app,
        "PATCH",
        &path,
        &json!([{"action": "allow", "target": "192.0.2.1"}]),
    )
    .await;
    assert_eq!(code, 200, "{patched}");
    let np = network_policy(&api, &id).expect("replaced");
    assert_eq!(
        np["spec"]["egress"][1],
        json!({"to": [{"ipBlock": {"cidr": "192.0.2.1/32"}}]})
    );

    // `{}` allows all: no NetworkPolicy; released: none either
    let (code, open) = call(&app, "PUT", &path, &json!({})).await;
    assert_eq!((code, &open["mode"]), (200, &json!("allow_all")), "{open}");
    assert!(network_policy(&api, &id).is_none());
    let (code, _) = call(&app, "PUT", &path, &given).await;
    assert_eq!(code, 200);
    let (code, _) = call(&app, "DELETE", &format!("/v1/sandboxes/{id}"), &Value::Null).await;
    assert!(code < 300, "{code}");
    // kept until the released pod is gone (deleted: no grace period in
    // the fake), then collected
    for _ in 0..500 {
        if network_policy(&api, &id).is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    controller.abort();
    assert!(
        network_policy(&api, &id).is_none(),
        "collected with the sandbox's pod"
    );
}

#[tokio::test]
async fn e2b_network_options_become_a_network_policy_or_501_for_hostnames() {
    let (api, controller, app) = platform().await;
    let (code, created) = call(
        &app,
        "POST",
        "/sandboxes",
        &json!({"templateID": "py", "allow_internet_access": false}),
    )
    .await;
    assert!(code < 300, "{code} {created}");
    let id = created["sandboxID"]
        .as_str()
        .expect("sandboxID")
        .to_string();
    let np = network_policy(&api, &id).expect("the sandbox's NetworkPolicy");
    assert_eq!(np["spec"]["egress"], json!([]), "nothing allowed: {np}");
    // allowOut wins over denyOut, as upstream: the address and all IPv6
    // (E2B's ALL_TRAFFIC is 0.0.0.0/0)
    let net = format!("/sandboxes/{id}/network");
    let open = json!({"allowOut": ["10.9.0.1"], "denyOut": ["0.0.0.0/0"]});
    let (code, body) = call(&app, "PUT", &net, &open).await;
    assert_eq!(code, 204, "{body}");
    let np = network_policy(&api, &id).expect("replaced");
    assert_eq!(
        np["spec"]["egress"],
        json!([{"to": [{"ipBlock": {"cidr": "::/0"}}]}, {"to": [{"ipBlock": {"cidr": "10.9.0.1/32"}}]}])
    );
    let (_, got) = call(&app, "GET", &format!("/sandboxes/{id}"), &Value::Null).await;
    assert_eq!(got["network"], open, "{got}");
    // a hostname is a domain rule: 501 naming it, the policy kept
    let names = json!({"allowOut": ["pypi.org"], "denyOut": ["0.0.0.0/0"]});
    let (code, refused) = call(&app, "PUT", &net, &names).await;
    controller.abort();
    assert_eq!(code, 501, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("egress[0] (allow pypi.org port 80)"),
        "{refused}"
    );
    assert_eq!(network_policy(&api, &id).expect("kept")["spec"], np["spec"]);
}
