//! OpenSandbox snapshots through the real router against the in-memory
//! scheduler, whose pool `runc` sandboxes keep no memory (as in Kubernetes
//! mode): the snapshot route asks for the best checkpoint the platform can
//! take, and a create from the snapshot hands its entrypoint and limits on.

use serde_json::{Value, json};

mod support;
use support::FakeScheduler;

const KEY: &str = "platform-key";

async fn call(app: &axum::Router, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = http::Request::builder().method(method).uri(path);
    let (status, _, v) = support::call_full(app, req, KEY, &body).await;
    (status, v)
}

#[tokio::test]
async fn a_snapshot_is_the_best_checkpoint_and_a_restore_carries_entrypoint_and_limits() {
    let fake = FakeScheduler::default();
    let client = support::serve(fake.clone()).await;
    let app = sandpool_gateway::app(sandpool_gateway::Gateway::new(client, &[KEY.to_string()]));
    let create =
        json!({"extensions": {"poolRef": "runc"}, "entrypoint": ["sleep", "9"], "timeout": 600});
    let (s, sb) = call(&app, "POST", "/v1/sandboxes", create).await;
    assert_eq!(s, 202, "{sb}");
    let id = sb["id"].as_str().expect("id");
    // it was 501: a memory checkpoint, which such a platform cannot take
    let (s, snap) = call(
        &app,
        "POST",
        &format!("/v1/sandboxes/{id}/snapshots"),
        json!({"name": "before"}),
    )
    .await;
    assert_eq!(s, 202, "{snap}");
    let asked = fake.checkpoint_requests.lock().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].memory_if_supported && !asked[0].filesystem_only,
        "{asked:?}"
    );
    // the SDK's shape
    for k in ["id", "sandboxId", "status", "createdAt"] {
        assert!(snap.get(k).is_some(), "{k}: {snap}");
    }
    assert_eq!(
        (snap["sandboxId"].as_str(), snap["name"].as_str()),
        (Some(id), Some("before"))
    );
    let ck = snap["id"].as_str().expect("snapshot id");
    let (s, got) = call(&app, "GET", &format!("/v1/snapshots/{ck}"), Value::Null).await;
    assert_eq!((s, &got["id"]), (200, &snap["id"]), "{got}");
    // what the SDK sends with a snapshotId: its default entrypoint and limits
    let restore = json!({"snapshotId": ck, "timeout": 600, "entrypoint": ["tail", "-f", "/dev/null"],
                         "resourceLimits": {"cpu": "1", "memory": "2Gi"}});
    let (s, v) = call(&app, "POST", "/v1/sandboxes", restore).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["snapshotId"].as_str(), Some(ck), "{v}");
    let r = fake.restore_requests.lock().clone();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        r[0].process.as_ref().map(|p| p.argv.clone()),
        Some(vec!["tail".to_string(), "-f".into(), "/dev/null".into()])
    );
    let limits = r[0].resources.clone().expect("limits");
    assert_eq!((limits.cpu.as_str(), limits.memory.as_str()), ("1", "2Gi"));
    // an env goes with the entrypoint (a filesystem restore starts it so;
    // a memory restore's scheduler refuses it naming env)
    let restore = json!({"snapshotId": ck, "entrypoint": ["python3", "a.py"], "env": {"A": "1"}});
    let (s, v) = call(&app, "POST", "/v1/sandboxes", restore).await;
    assert_eq!(s, 202, "{v}");
    let r = fake.restore_requests.lock().clone();
    let p = r.last().and_then(|r| r.process.clone()).expect("process");
    assert_eq!(p.env.get("A").map(String::as_str), Some("1"), "{p:?}");
    let (s, _) = call(&app, "DELETE", &format!("/v1/snapshots/{ck}"), Value::Null).await;
    assert_eq!(s, 204);
}
