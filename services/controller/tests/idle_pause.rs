//! Idle auto-pause in Kubernetes mode (issue 21; `sandpool controller
//! --idle-pause-after`): a round asks each running claim's runtime for its
//! activity (a fake runtime here, by pod) and pauses the idle ones through
//! the node agent of the pod's node (an in-process fake reached through the
//! fake apiserver with the service token), as a REST pause does: the pod's
//! containers frozen, what is left of the TTL set aside, a `PausedIdle`
//! event. Busy claims, paused ones and batches that are no claims are left
//! alone.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use parking_lot::Mutex;
use sandpool_controller::context::{Context, TaskRunner};
use sandpool_controller::crd::{ALLOCATED_TO_LABEL, ProcessTask};
use sandpool_controller::idle;
use sandpool_controller::kube_scheduler::{
    CLAIM_LABEL, DaemonSetAgents, NODE_AGENT_SELECTOR, PAUSED_ANNOTATION,
};
use sandpool_controller::pods::RuntimeInjection;
use sandpool_proto::auth::ServiceToken;
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};
use support::node_agent::{AGENT_TOKEN, put_agent_pod, serve_agent};
use support::{FakeApi, batches_path, events_about, make_ready, pods_path};

const NS: &str = "sandpool";
const LIMIT: Duration = Duration::from_secs(60);

/// Runtimes that report, by pod name, (running commands, idle ms); a pod
/// not listed does not answer. Records which pods were asked.
#[derive(Default)]
struct Activity {
    by_pod: BTreeMap<String, (u32, u64)>,
    asked: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TaskRunner for Activity {
    async fn start(&self, _: &Pod, _: &ProcessTask) -> sandpool_controller::Result<()> {
        Ok(())
    }
    async fn status(&self, _: &Pod) -> Option<Option<i32>> {
        Some(None)
    }
    async fn stop(&self, _: &Pod) -> sandpool_controller::Result<()> {
        Ok(())
    }
    async fn health(&self, pod: &Pod) -> Option<pb::HealthResponse> {
        self.asked.lock().push(pod.name_any());
        let (running_commands, idle_ms) = *self.by_pod.get(&pod.name_any())?;
        Some(pb::HealthResponse {
            running_commands,
            idle_ms,
            ..Default::default()
        })
    }
}

/// Batch `name` (a claim when `claim`, with `annotations`) whose pod
/// `<name>-pod` is Ready on node-a; its one-hour `expireTime`.
fn put_batch(api: &FakeApi, name: &str, claim: bool, annotations: Value) {
    api.with_store(|s| {
        let labels = if claim {
            json!({CLAIM_LABEL: "true"})
        } else {
            json!({})
        };
        let b = s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
                "spec": {"replicas": 1, "expireTime": "2099-01-01T00:00:00Z",
                    "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        );
        let uid = b["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pod = format!("{name}-pod");
        s.put(
            &pods_path(NS),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "labels": {ALLOCATED_TO_LABEL: uid}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        );
        make_ready(s, NS, &pod, "10.2.0.7", "node-a");
    });
}

fn context(api: &FakeApi, port: u16, activity: Arc<Activity>) -> Arc<Context> {
    let token = ServiceToken::new(Some(AGENT_TOKEN)).expect("token");
    let agents = DaemonSetAgents::new(api.client(), NS, token).at(NODE_AGENT_SELECTOR, port);
    let inj = RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    Arc::new(
        Context::new(api.client(), inj, activity, Some("test".into()))
            .with_node_agents(Arc::new(agents)),
    )
}

fn stored(api: &FakeApi, name: &str) -> Value {
    api.with_store(|s| s.get(&batches_path(NS), name).cloned())
        .expect("batch")
}

#[tokio::test]
async fn idle_claims_are_paused_through_their_nodes_agent_and_busy_ones_left_running() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(None).await;
    api.with_store(|s| put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a"));
    let activity = Arc::new(Activity {
        by_pod: BTreeMap::from([
            ("idle-pod".to_string(), (0, 61_000)),
            ("busy-pod".to_string(), (1, 61_000)),
            ("recent-pod".to_string(), (0, 5_000)),
            ("batch-pod".to_string(), (0, 61_000)),
            ("paused-pod".to_string(), (0, 61_000)),
        ]),
        ..Default::default()
    });
    put_batch(&api, "idle", true, json!({}));
    put_batch(&api, "busy", true, json!({}));
    put_batch(&api, "recent", true, json!({}));
    put_batch(&api, "batch", false, json!({}));
    put_batch(&api, "paused", true, json!({PAUSED_ANNOTATION: "1000"}));
    let ctx = context(&api, port, activity.clone());

    let paused = idle::sweep(&ctx, NS, LIMIT).await.expect("round");
    assert_eq!(paused, ["idle"]);
    // frozen by the node agent of its node, with the service token
    let seen = calls.lock().clone();
    assert_eq!(
        seen,
        [(
            "pause".to_string(),
            format!("{NS}/idle-pod"),
            format!("Bearer {AGENT_TOKEN}")
        )]
    );
    // paused as a REST pause records it: the TTL's rest set aside
    let b = stored(&api, "idle");
    let left: i64 = b["metadata"]["annotations"][PAUSED_ANNOTATION]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("TTL set aside");
    assert!(left > 0, "{b}");
    assert!(b["spec"]["expireTime"].is_null(), "{b}");
    assert!(
        events_about(&api, NS, "idle")
            .iter()
            .any(|(t, r, n)| t == "Normal" && r == "PausedIdle" && n.contains("61 s")),
        "{:?}",
        events_about(&api, NS, "idle")
    );
    // a paused claim's frozen runtime is not asked; a batch that is no claim is not a candidate
    let asked = activity.asked.lock().clone();
    assert!(!asked.contains(&"paused-pod".to_string()), "{asked:?}");
    assert!(!asked.contains(&"batch-pod".to_string()), "{asked:?}");
    for busy in ["busy", "recent", "batch"] {
        let b = stored(&api, busy);
        assert!(
            b["metadata"]["annotations"][PAUSED_ANNOTATION].is_null(),
            "{b}"
        );
    }

    // the next round: nothing more to pause
    calls.lock().clear();
    assert!(
        idle::sweep(&ctx, NS, LIMIT)
            .await
            .expect("round")
            .is_empty()
    );
    assert!(calls.lock().is_empty());
}

#[tokio::test]
async fn a_claim_whose_node_agent_refuses_stays_running() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(Some(tonic::Status::failed_precondition(
        "gVisor (runsc) pod",
    )))
    .await;
    api.with_store(|s| put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a"));
    let activity = Arc::new(Activity {
        by_pod: BTreeMap::from([("idle-pod".to_string(), (0, 61_000))]),
        ..Default::default()
    });
    put_batch(&api, "idle", true, json!({}));
    let ctx = context(&api, port, activity);
    assert!(
        idle::sweep(&ctx, NS, LIMIT)
            .await
            .expect("round")
            .is_empty()
    );
    assert_eq!(calls.lock().len(), 1);
    let b = stored(&api, "idle");
    assert!(
        b["metadata"]["annotations"][PAUSED_ANNOTATION].is_null(),
        "{b}"
    );
    assert!(b["spec"]["expireTime"].is_string(), "{b}");
}
