//! E2B `autoPause` / `autoResume` through the gateway in Kubernetes mode
//! (issue 21): the E2B API over the CRD-backed scheduler (`KubeScheduler`
//! on gRPC), the controller tests' fake apiserver, the batch controller
//! running as in the cluster and a fake node agent (on loopback) that
//! freezes and thaws the claim's pod.

#[path = "../../controller/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use sandpool_controller::context::Context;
use sandpool_controller::crd::{BatchSandbox, Pool};
use sandpool_controller::kube_scheduler::{DaemonSetAgents, KubeScheduler, NODE_AGENT_SELECTOR};
use sandpool_controller::{batch, pool};
use sandpool_proto::auth::ServiceToken;
use serde_json::{Value, json};
use support::node_agent::{Calls, put_agent_pod, serve_agent};
use support::{FakeApi, NoTasks, batches_path, cr_path, make_ready, pods_path};

const NS: &str = "sandpool";
const TOKEN: &str = "svc-secret-0123456789";

/// `(status, body)` of an API call.
async fn call(app: &axum::Router, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let req = http::Request::builder().method(method).uri(path);
    let (status, _, bytes) = sandpool_testsupport::send(app, req, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A "sandbox" port on loopback answering every request with `hello`.
async fn sandbox_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(|| async { "hello" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Pool `py` of ready pods on node-a (at loopback), the node agent of
/// node-a (the fake, on loopback), the batch controller running with it,
/// and the gateway over the Kubernetes scheduler.
async fn cluster() -> (FakeApi, axum::Router, Calls, tokio::task::JoinHandle<()>) {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(None).await;
    let token = ServiceToken::new(Some(TOKEN)).expect("token");
    let agents =
        Arc::new(DaemonSetAgents::new(api.client(), NS, token).at(NODE_AGENT_SELECTOR, port));
    let ctx: Arc<Context> = support::context_with_agents(&api, NoTasks(Some(None)), agents.clone());
    api.with_store(|s| {
        s.put(&cr_path("sandbox.opensandbox.io", "pools", NS), json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": "py"},
            "spec": {"template": {"spec": {"containers": [{"name": "sandbox", "image": "python:3.12-slim"}]}},
                     "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 1, "poolMax": 2}}}));
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a");
    });
    let p: Pool = Api::namespaced(ctx.client.clone(), NS)
        .get("py")
        .await
        .expect("pool");
    pool::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pool reconcile");
    for p in api.with_store(|s| s.list(&pods_path(NS))) {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        if name != "agent-a" {
            let name = name.to_string();
            api.with_store(|s| make_ready(s, NS, &name, "127.0.0.1", "node-a"));
        }
    }
    let c = ctx.clone();
    let controller = tokio::spawn(async move {
        loop {
            let all = Api::<BatchSandbox>::namespaced(c.client.clone(), NS)
                .list(&Default::default())
                .await
                .expect("list");
            for b in all.items {
                let _ = batch::reconcile(Arc::new(b), c.clone()).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut sched = KubeScheduler::new(ctx.client.clone(), NS, Arc::new(NoTasks(Some(None))))
        .with_node_agents(agents);
    sched.poll = Duration::from_millis(5);
    let client = sandpool_testsupport::serve_scheduler(sched).await;
    let app = sandpool_gateway::app(sandpool_gateway::Gateway::new(client, &[]));
    (api, app, calls, controller)
}

fn calls_of(calls: &Calls) -> Vec<String> {
    calls.lock().iter().map(|(c, _, _)| c.clone()).collect()
}

async fn state(app: &axum::Router, id: &str) -> Value {
    let (code, got) = call(app, "GET", &format!("/sandboxes/{id}"), &Value::Null).await;
    assert_eq!(code, 200, "{got}");
    got
}

/// `autoPause` with `autoResume`: created (no longer 501), shown in the
/// lifecycle; paused (frozen by the node agent) when its timeout ends,
/// not deleted; a request routed to it by E2B's headers resumes it first.
#[tokio::test]
async fn an_auto_pause_sandbox_pauses_at_its_timeout_and_traffic_resumes_it() {
    let (api, app, calls, controller) = cluster().await;
    let (code, created) = call(
        &app,
        "POST",
        "/sandboxes",
        &json!({"templateID": "py", "timeout": 600, "autoPause": true, "autoResume": {"enabled": true}}),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let id = created["sandboxID"].as_str().expect("id").to_string();
    let got = state(&app, &id).await;
    assert_eq!(got["lifecycle"]["onTimeout"], "pause", "{got}");
    assert_eq!(got["lifecycle"]["autoResume"], true, "{got}");

    // the timeout ends: the batch controller pauses it
    api.with_store(|s| {
        s.mutate(&batches_path(NS), &id, |b| {
            b["spec"]["expireTime"] = json!("2020-01-01T00:00:00Z");
        })
    });
    for _ in 0..500 {
        if calls_of(&calls).contains(&"pause".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls_of(&calls), ["pause"]);
    let got = state(&app, &id).await;
    assert_eq!(got["state"], "paused", "{got}");

    // traffic through E2B's routing resumes it, then goes through
    let port = sandbox_port().await;
    let req = http::Request::builder()
        .method("GET")
        .uri("/")
        .header("e2b-sandbox-id", &id)
        .header("e2b-sandbox-port", port.to_string());
    let (code, _, body) = sandpool_testsupport::send(&app, req, &Value::Null).await;
    controller.abort();
    assert_eq!((code, &body[..]), (200, &b"hello"[..]));
    assert_eq!(calls_of(&calls), ["pause", "resume"]);
    let got = state(&app, &id).await;
    assert_eq!(got["state"], "running", "{got}");
}

/// `set_timeout(0)` of an `autoPause` sandbox pauses it now (its timeout
/// action); `connect` resumes it for the timeout it asks for.
#[tokio::test]
async fn a_timeout_of_zero_pauses_an_auto_pause_sandbox_and_connect_resumes_it() {
    let (_api, app, calls, controller) = cluster().await;
    let (code, created) = call(
        &app,
        "POST",
        "/sandboxes",
        &json!({"templateID": "py", "timeout": 600, "autoPause": true}),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let id = created["sandboxID"].as_str().expect("id").to_string();
    let path = format!("/sandboxes/{id}/timeout");
    let (code, v) = call(&app, "POST", &path, &json!({"timeout": 0})).await;
    assert_eq!(code, 204, "{v}");
    assert_eq!(state(&app, &id).await["state"], "paused");
    assert_eq!(calls_of(&calls), ["pause"]);
    let path = format!("/sandboxes/{id}/connect");
    let (code, v) = call(&app, "POST", &path, &json!({"timeout": 60})).await;
    controller.abort();
    assert_eq!(code, 201, "{v}");
    assert_eq!(calls_of(&calls), ["pause", "resume"]);
    assert_eq!(state(&app, &id).await["state"], "running");
}
