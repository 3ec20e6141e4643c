//! OpenSandbox BatchSandbox `spec.pause` in Kubernetes mode (issue 21): the
//! batch controller freezes (thaws) every pod of the batch through the node
//! agent DaemonSet pod of the pod's node (an in-process fake here, reached
//! through the fake apiserver with the service token), and reports the
//! phases, `pauseObservedGeneration`, conditions and events as upstream.

mod support;

use std::sync::Arc;

use kube::api::Api;
use sandpool_controller::batch;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::{
    DaemonSetAgents, NODE_AGENT_SELECTOR, PAUSED_ANNOTATION,
};
use sandpool_controller::pods::RuntimeInjection;
use sandpool_proto::auth::ServiceToken;
use serde_json::{Value, json};
use support::node_agent::{Calls, serve_agent};
use support::{FakeApi, NoTasks, batches_path, make_ready, pods_path};
use tonic::Status;

const NS: &str = "sandpool";
const TOKEN: &str = "svc-secret-0123456789";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/sandpool/events";
const EXPIRE: &str = "2099-01-01T00:00:00Z";

/// A controller context whose node agents are the chart's DaemonSet pods,
/// on `port` of loopback, called with [`TOKEN`].
fn context(api: &FakeApi, port: u16) -> Arc<Context> {
    let agents = DaemonSetAgents::new(
        api.client(),
        NS,
        ServiceToken::new(Some(TOKEN)).expect("token"),
    )
    .at(NODE_AGENT_SELECTOR, port);
    let inj = RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    Arc::new(
        Context::new(
            api.client(),
            inj,
            Arc::new(NoTasks(Some(None))),
            Some("test".into()),
        )
        .with_node_agents(Arc::new(agents)),
    )
}

async fn reconcile(ctx: &Arc<Context>, name: &str) {
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await
        .expect("get batch");
    batch::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("batch reconcile");
}

fn stored(api: &FakeApi, name: &str) -> Value {
    api.with_store(|s| s.get(&batches_path(NS), name).cloned())
        .expect("batch")
}

fn events(api: &FakeApi, name: &str) -> Vec<(String, String, String)> {
    api.with_store(|s| s.list(EVENTS))
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

fn condition(b: &Value, kind: &str) -> Value {
    b["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The node agent pod of node-a (on loopback), a two-pod batch from a
/// template with an `expireTime`, its pods Ready on node-a and the batch
/// `Succeed`.
async fn running_batch(api: &FakeApi, ctx: &Arc<Context>) {
    api.with_store(|s| {
        s.put(
            &pods_path(NS),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "agent-a", "labels": {"app.kubernetes.io/component": "node-agent"}},
                "spec": {"containers": [{"name": "node-agent", "image": "x"}]}}),
        );
        make_ready(s, NS, "agent-a", "127.0.0.1", "node-a");
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"},
                "spec": {"replicas": 2, "expireTime": EXPIRE,
                    "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        );
    });
    reconcile(ctx, "b").await;
    reconcile(ctx, "b").await;
    for (i, p) in ["b-0", "b-1"].iter().enumerate() {
        api.with_store(|s| make_ready(s, NS, p, &format!("10.2.0.{}", i + 1), "node-a"));
    }
    reconcile(ctx, "b").await;
    assert_eq!(stored(api, "b")["status"]["phase"], "Succeed");
}

/// `spec.pause` set to `pause` by a user (the fake bumps the generation, as
/// the apiserver does).
fn set_pause(api: &FakeApi, pause: bool) {
    api.with_store(|s| {
        s.mutate(&batches_path(NS), "b", |b| {
            b["spec"]["pause"] = json!(pause);
        })
    });
}

fn calls_of(calls: &Calls) -> Vec<(String, String, String)> {
    let mut c = calls.lock().clone();
    c.sort();
    c
}

#[tokio::test]
async fn pause_freezes_every_pod_and_resume_thaws_them() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(None).await;
    let ctx = context(&api, port);
    running_batch(&api, &ctx).await;
    assert!(calls.lock().is_empty());

    set_pause(&api, true);
    reconcile(&ctx, "b").await;
    let bearer = format!("Bearer {TOKEN}");
    let want = |call: &str| {
        ["b-0", "b-1"]
            .iter()
            .map(|p| (call.to_string(), format!("{NS}/{p}"), bearer.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(calls_of(&calls), want("pause"));
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Paused", "{b}");
    // generation 2 asked for the pause; setting the TTL aside (a spec
    // change: 3) is acknowledged with it, as upstream acknowledges its own
    // spec change of a pause (a pooled batch's template rewrite)
    assert_eq!(b["metadata"]["generation"], 3, "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], 3, "{b}");
    assert_eq!(condition(&b, "Paused")["status"], "True", "{b}");
    // the TTL clock stops as for a paused claim
    assert!(b["spec"]["expireTime"].is_null(), "{b}");
    assert!(
        b["metadata"]["annotations"][PAUSED_ANNOTATION]
            .as_str()
            .is_some_and(|ms| ms.parse::<i64>().is_ok_and(|ms| ms > 0)),
        "{b}"
    );
    // paused: later reconciles neither call the agents again nor change the phase
    reconcile(&ctx, "b").await;
    assert_eq!(calls.lock().len(), 2);
    assert_eq!(stored(&api, "b")["status"]["phase"], "Paused");

    set_pause(&api, false);
    calls.lock().clear();
    reconcile(&ctx, "b").await;
    assert_eq!(calls_of(&calls), want("resume"));
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    // resume asked at 4, the TTL put back at 5
    assert_eq!(b["status"]["pauseObservedGeneration"], 5, "{b}");
    assert_eq!(condition(&b, "Paused")["status"], "False", "{b}");
    assert!(
        b["metadata"]["annotations"]
            .get(PAUSED_ANNOTATION)
            .is_none_or(Value::is_null),
        "{b}"
    );
    // the TTL restarts with what was left
    assert!(b["spec"]["expireTime"].is_string(), "{b}");
    reconcile(&ctx, "b").await;
    assert_eq!(calls.lock().len(), 2, "a resumed batch is left running");
    let evs = events(&api, "b");
    assert!(
        evs.iter()
            .all(|(t, r, _)| t == "Normal" && r != "UnsupportedField"),
        "{evs:?}"
    );
    assert!(evs.iter().any(|(_, r, _)| r == "Paused"), "{evs:?}");
    assert!(evs.iter().any(|(_, r, _)| r == "Resumed"), "{evs:?}");
    assert!(
        condition(&stored(&api, "b"), "Ready").is_null(),
        "no UnsupportedField condition"
    );
}

#[tokio::test]
async fn a_pause_the_node_agent_refuses_is_reported_not_silently_ignored() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(Some(Status::not_found("no such sandbox"))).await;
    let ctx = context(&api, port);
    running_batch(&api, &ctx).await;

    set_pause(&api, true);
    reconcile(&ctx, "b").await;
    assert_eq!(calls.lock().len(), 1, "stops at the first refusal");
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], 2, "{b}");
    let failed = condition(&b, "PauseFailed");
    assert_eq!(failed["status"], "True", "{b}");
    let msg = failed["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("node agent of node-a") && msg.contains("no such sandbox"),
        "{msg}"
    );
    assert!(
        b["spec"]["expireTime"].is_string(),
        "the TTL still runs: {b}"
    );
    assert!(
        b["metadata"]["annotations"]
            .get(PAUSED_ANNOTATION)
            .is_none_or(Value::is_null)
    );
    let evs = events(&api, "b");
    assert!(
        evs.iter()
            .any(|(t, r, n)| t == "Warning" && r == "PauseFailed" && n.contains("no such sandbox")),
        "{evs:?}"
    );
    // acknowledged: not retried until the spec changes
    reconcile(&ctx, "b").await;
    assert_eq!(calls.lock().len(), 1);
    assert_eq!(stored(&api, "b")["status"]["phase"], "Succeed");
}

#[tokio::test]
async fn a_node_without_an_agent_fails_the_pause_naming_the_node() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(None).await;
    let ctx = context(&api, port);
    running_batch(&api, &ctx).await;
    api.with_store(|s| s.delete(&pods_path(NS), "agent-a"));
    set_pause(&api, true);
    reconcile(&ctx, "b").await;
    assert!(calls.lock().is_empty());
    let b = stored(&api, "b");
    assert_ne!(b["status"]["phase"], "Paused", "{b}");
    let msg = condition(&b, "PauseFailed")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("no node agent") && msg.contains("node-a"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_paused_batch_is_thawed_before_its_pods_are_deleted() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(None).await;
    let ctx = context(&api, port);
    running_batch(&api, &ctx).await;
    set_pause(&api, true);
    reconcile(&ctx, "b").await;
    assert_eq!(stored(&api, "b")["status"]["phase"], "Paused");
    calls.lock().clear();
    api.with_store(|s| s.delete(&batches_path(NS), "b"));
    reconcile(&ctx, "b").await;
    let resumed: Vec<String> = calls_of(&calls)
        .into_iter()
        .filter(|(c, _, _)| c == "resume")
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(resumed, [format!("{NS}/b-0"), format!("{NS}/b-1")]);
    let live = api
        .with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .filter(|p| p["metadata"]["name"] != "agent-a")
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .count();
    assert_eq!(live, 0, "the batch's pods are deleted");
}

#[tokio::test]
async fn a_resume_the_node_agent_refuses_keeps_the_batch_paused_and_says_why() {
    let api = FakeApi::new();
    let (port, _) = serve_agent(None).await;
    let ctx = context(&api, port);
    running_batch(&api, &ctx).await;
    set_pause(&api, true);
    reconcile(&ctx, "b").await;
    assert_eq!(stored(&api, "b")["status"]["phase"], "Paused");
    // the node agent now refuses
    let (bad_port, calls) = serve_agent(Some(Status::internal("thaw failed"))).await;
    let bad = context(&api, bad_port);
    set_pause(&api, false);
    reconcile(&bad, "b").await;
    assert_eq!(calls.lock().len(), 1);
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Paused", "{b}");
    // paused at 3 (the TTL set aside), the resume asked at 4
    assert_eq!(b["status"]["pauseObservedGeneration"], 4, "{b}");
    let failed = condition(&b, "ResumeFailed");
    assert_eq!(failed["status"], "True", "{b}");
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("thaw failed") && m.contains("node-a")),
        "{failed}"
    );
    assert!(
        events(&api, "b")
            .iter()
            .any(|(t, r, n)| t == "Warning" && r == "ResumeFailed" && n.contains("thaw failed"))
    );
    // the TTL stays stopped while the batch is paused
    assert!(b["spec"]["expireTime"].is_null(), "{b}");
    // the upstream server's retry: spec.pause unset (no intent: the batch
    // stays paused, the generation is acknowledged), then false
    api.with_store(|s| {
        s.mutate(&batches_path(NS), "b", |b| {
            b["spec"]["pause"] = Value::Null;
        })
    });
    let (ok_port, ok_calls) = serve_agent(None).await;
    let ctx = context(&api, ok_port);
    reconcile(&ctx, "b").await;
    assert!(ok_calls.lock().is_empty());
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Paused", "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], 5, "{b}");
    // a later resume that succeeds clears the failure
    set_pause(&api, false);
    reconcile(&ctx, "b").await;
    assert_eq!(ok_calls.lock().len(), 2);
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert!(condition(&b, "ResumeFailed").is_null(), "{b}");
}

#[tokio::test]
async fn a_resume_asked_while_the_pause_runs_is_not_acknowledged_away() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(None).await;
    let ctx = context(&api, port);
    running_batch(&api, &ctx).await;
    set_pause(&api, true);
    // the user asks for the resume just before the controller sets the TTL
    // aside (its patch of the batch itself)
    let mut asked = false;
    let main = format!("{}/b", batches_path(NS));
    api.on_request(Box::new(move |method, path, store| {
        if !asked && method == http::Method::PATCH && path == main {
            asked = true;
            store.mutate(&batches_path(NS), "b", |b| {
                b["spec"]["pause"] = json!(false)
            });
        }
    }));
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Paused", "{b}");
    assert_eq!(b["spec"]["pause"], false, "{b}");
    // acknowledged: the pause (2), not the resume (3) nor the TTL patch (4)
    assert_eq!(b["metadata"]["generation"], 4, "{b}");
    assert_eq!(b["status"]["pauseObservedGeneration"], 2, "{b}");
    // so the next round resumes
    reconcile(&ctx, "b").await;
    let b = stored(&api, "b");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert_eq!(calls.lock().len(), 4, "two pauses, two resumes");
}
