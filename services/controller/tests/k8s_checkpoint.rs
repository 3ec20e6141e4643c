//! Filesystem-only checkpoints in Kubernetes mode (issue 21) through the
//! scheduler API: a checkpoint is a `SandboxSnapshot` of the claim's
//! BatchSandbox, committed by the snapshot controller and the node agent of
//! the pod's node (an in-process fake reached through the fake apiserver);
//! a restore makes claims whose pods run the snapshot's images on that node.
//! The batch and snapshot controllers run in a loop beside the scheduler,
//! and the test marks the pods they make ready on node-a.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::Api;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::{
    CHECKPOINT_LABEL, DaemonSetAgents, KubeScheduler, NODE_AGENT_SELECTOR,
};
use sandpool_controller::snapshot;
use sandpool_proto::auth::ServiceToken;
use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
use serde_json::{Value, json};
use support::node_agent::{Calls, FAKE_IMAGE_SIZE, put_agent_pod, serve_agent};
use support::{FakeApi, NoTasks, batches_path, context_with_agents, cr_path};
use tonic::{Code, Request, Status};

const NS: &str = "sandpool";
const TOKEN: &str = "svc-secret-0123456789";

fn agents(api: &FakeApi, port: u16) -> Arc<DaemonSetAgents> {
    Arc::new(
        DaemonSetAgents::new(
            api.client(),
            NS,
            ServiceToken::new(Some(TOKEN)).expect("token"),
        )
        .at(NODE_AGENT_SELECTOR, port),
    )
}

struct Platform {
    api: FakeApi,
    sched: KubeScheduler,
    calls: Calls,
    /// The processes the scheduler started: (pod, task).
    started: Started,
    controllers: tokio::task::JoinHandle<()>,
}

type Started = Arc<Mutex<Vec<(String, ProcessTask)>>>;

/// The scheduler's task runner: records each process it starts.
struct Recording(Started);

#[async_trait::async_trait]
impl sandpool_controller::context::TaskRunner for Recording {
    async fn start(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        task: &ProcessTask,
    ) -> sandpool_controller::Result<()> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.0.lock().expect("lock").push((name, task.clone()));
        Ok(())
    }
    async fn status(&self, _: &k8s_openapi::api::core::v1::Pod) -> Option<Option<i32>> {
        Some(None)
    }
    async fn stop(&self, _: &k8s_openapi::api::core::v1::Pod) -> sandpool_controller::Result<()> {
        Ok(())
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

/// The batch and snapshot controllers, once; pods without an IP made ready
/// on node-a.
async fn reconcile_all(api: &FakeApi, ctx: &Arc<Context>) {
    support::reconcile_batches(ctx, NS).await;
    let snaps = Api::<SandboxSnapshot>::namespaced(ctx.client.clone(), NS)
        .list(&Default::default())
        .await
        .expect("list snapshots");
    for s in snaps.items {
        let _ = snapshot::reconcile(Arc::new(s), ctx.clone()).await;
    }
    support::make_pending_ready(api, NS, "10.2.0.7", "node-a");
}

/// A fake apiserver enforcing the CRDs, the node agent of node-a (refusing
/// every call with `fail`), the controllers running, and the scheduler.
async fn platform(fail: Option<Status>) -> Platform {
    let api = FakeApi::new();
    api.enforce_schemas(&all_crds());
    let (port, calls) = serve_agent(fail).await;
    api.with_store(|s| {
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a");
    });
    let ctx = context_with_agents(&api, NoTasks(Some(None)), agents(&api, port));
    let a = api.clone();
    let controllers = tokio::spawn(async move {
        loop {
            reconcile_all(&a, &ctx).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let started = Started::default();
    let mut sched = KubeScheduler::new(api.client(), NS, Arc::new(Recording(started.clone())))
        .with_node_agents(agents(&api, port));
    sched.poll = Duration::from_millis(20);
    sched.claim_timeout = Duration::from_secs(20);
    Platform {
        api,
        sched,
        calls,
        started,
        controllers,
    }
}

/// The gateway's owner key: it shows a non-admin key only the checkpoints
/// whose `source_metadata` names it.
const OWNER_KEY: &str = "sandpool.io/owner";

fn owned(owner: &str) -> HashMap<String, String> {
    HashMap::from([(OWNER_KEY.to_string(), owner.to_string())])
}

async fn claim(p: &Platform, owner: &str) -> pb::Claim {
    p.sched
        .create_claim(Request::new(pb::ClaimRequest {
            template: Some(pb::SandboxTemplate {
                image: "python:3.12-slim".into(),
                ..Default::default()
            }),
            ttl_seconds: 3600,
            metadata: owned(owner),
            ..Default::default()
        }))
        .await
        .expect("claim")
        .into_inner()
}

async fn checkpoint(
    p: &Platform,
    id: &str,
    leave_running: bool,
    filesystem_only: bool,
) -> Result<pb::CheckpointInfo, Status> {
    p.sched
        .checkpoint_claim(Request::new(pb::CheckpointClaimRequest {
            claim_id: id.into(),
            leave_running,
            name: "before".into(),
            filesystem_only,
            memory_if_supported: false,
        }))
        .await
        .map(|r| r.into_inner())
}

async fn listed(p: &Platform) -> Vec<pb::CheckpointInfo> {
    p.sched
        .list_checkpoints(Request::new(pb::ListCheckpointsRequest {}))
        .await
        .expect("list")
        .into_inner()
        .checkpoints
}

fn snapshots_path() -> String {
    cr_path("sandbox.opensandbox.io", "sandboxsnapshots", NS)
}

fn stored(api: &FakeApi, coll: &str, name: &str) -> Option<Value> {
    api.with_store(|s| s.get(coll, name).cloned())
}

#[tokio::test]
async fn a_filesystem_checkpoint_is_a_sandbox_snapshot_restored_on_its_node() {
    let p = platform(None).await;
    let c = claim(&p, "alice").await;
    let pod = c.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    let ck = checkpoint(&p, &c.claim_id, true, true)
        .await
        .expect("checkpoint");
    assert!(ck.filesystem_only, "{ck:?}");
    assert!(ck.checkpoint_id.starts_with("ckpt-"), "{ck:?}");
    assert_eq!(
        (ck.owner.as_str(), ck.sandbox_id.as_str(), ck.name.as_str()),
        (c.claim_id.as_str(), pod.as_str(), "before")
    );
    assert_eq!(ck.image, "python:3.12-slim");
    // the claim's metadata (its owner) goes with it: the gateway scopes by it
    assert_eq!(
        ck.source_metadata.get(OWNER_KEY).map(String::as_str),
        Some("alice")
    );
    // the node agent committed the pod; the snapshot is owned by nothing
    assert!(
        p.calls
            .lock()
            .iter()
            .any(|(call, id, _)| call == "commit" && *id == format!("{NS}/{pod}")),
        "{:?}",
        p.calls.lock()
    );
    let snap = stored(&p.api, &snapshots_path(), &ck.checkpoint_id).expect("snapshot");
    assert_eq!(snap["spec"]["sandboxName"], json!(c.claim_id));
    assert_eq!(snap["status"]["phase"], "Succeed");
    assert_eq!(snap["metadata"]["labels"][CHECKPOINT_LABEL], "true");
    assert!(snap["metadata"]["ownerReferences"].is_null(), "{snap}");
    // leave_running: the claim goes on
    assert!(stored(&p.api, &batches_path(NS), &c.claim_id).is_some());
    let all = listed(&p).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].checkpoint_id, ck.checkpoint_id);
    assert_eq!(all[0].source_metadata, ck.source_metadata);
    restore(&p, &ck, &snap).await;
    delete(&p, &ck).await;
}

/// Restore `ck` (whose snapshot is `snap`) into a claim, then again under its id.
async fn restore(p: &Platform, ck: &pb::CheckpointInfo, snap: &Value) {
    let restored = p
        .sched
        .restore_checkpoint(Request::new(pb::RestoreCheckpointRequest {
            checkpoint_id: ck.checkpoint_id.clone(),
            count: 1,
            ttl_seconds: 600,
            metadata: owned("alice"),
            claim_id: "sbx-restored".into(),
            ..Default::default()
        }))
        .await
        .expect("restore")
        .into_inner()
        .claims;
    assert_eq!(restored.len(), 1);
    let r = &restored[0];
    assert_eq!(r.claim_id, "sbx-restored");
    assert_eq!(r.state, pb::ClaimState::Bound as i32, "{r:?}");
    assert!(r.expires_unix_ms > 0, "{r:?}");
    assert_eq!(r.metadata.get(OWNER_KEY).map(String::as_str), Some("alice"));
    let b = stored(&p.api, &batches_path(NS), "sbx-restored").expect("batch");
    let image = snap["status"]["containers"][0]["imageUri"].clone();
    assert!(
        image
            .as_str()
            .unwrap_or_default()
            .starts_with("sandpool.local/snapshots/"),
        "{snap}"
    );
    let spec = &b["spec"]["template"]["spec"];
    assert_eq!(spec["nodeName"], "node-a", "{b}");
    assert_eq!(spec["containers"][0]["image"], image, "{b}");
    assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert!(b["spec"]["poolRef"].is_null(), "{b}");
    // a retry under the same claim id gets the same claim
    let again = p
        .sched
        .restore_checkpoint(Request::new(pb::RestoreCheckpointRequest {
            checkpoint_id: ck.checkpoint_id.clone(),
            claim_id: "sbx-restored".into(),
            ..Default::default()
        }))
        .await
        .expect("retry")
        .into_inner()
        .claims;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].claim_id, "sbx-restored");
    assert_eq!(
        p.api.with_store(|s| s.list(&batches_path(NS)).len()),
        2,
        "the source claim and one restored"
    );
    // a fork: two claims, both on the snapshot's node
    let forked = p
        .sched
        .restore_checkpoint(Request::new(pb::RestoreCheckpointRequest {
            checkpoint_id: ck.checkpoint_id.clone(),
            count: 2,
            ..Default::default()
        }))
        .await
        .expect("fork")
        .into_inner()
        .claims;
    assert_eq!(forked.len(), 2);
    assert_ne!(forked[0].claim_id, forked[1].claim_id);
    for c in &forked {
        let b = stored(&p.api, &batches_path(NS), &c.claim_id).expect("batch");
        assert_eq!(b["spec"]["template"]["spec"]["nodeName"], "node-a", "{b}");
    }
}

/// Delete `ck`: gone from the list, and neither deleted nor restored again.
async fn delete(p: &Platform, ck: &pb::CheckpointInfo) {
    p.sched
        .delete_checkpoint(Request::new(pb::CheckpointRef {
            checkpoint_id: ck.checkpoint_id.clone(),
        }))
        .await
        .expect("delete");
    assert!(listed(p).await.is_empty());
    assert!(stored(&p.api, &snapshots_path(), &ck.checkpoint_id).is_none());
    let e = p
        .sched
        .delete_checkpoint(Request::new(pb::CheckpointRef {
            checkpoint_id: ck.checkpoint_id.clone(),
        }))
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = p
        .sched
        .restore_checkpoint(Request::new(pb::RestoreCheckpointRequest {
            checkpoint_id: ck.checkpoint_id.clone(),
            ..Default::default()
        }))
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn without_leave_running_the_claim_ends_after_the_commit() {
    let p = platform(None).await;
    let c = claim(&p, "bob").await;
    let ck = checkpoint(&p, &c.claim_id, false, true)
        .await
        .expect("checkpoint");
    let gone = p
        .sched
        .get_claim(Request::new(pb::ClaimRef {
            claim_id: c.claim_id.clone(),
        }))
        .await;
    assert!(
        gone.is_err() || gone.expect("claim").into_inner().state == pb::ClaimState::Released as i32,
        "the claim was released"
    );
    // the checkpoint outlives it
    assert_eq!(listed(&p).await[0].checkpoint_id, ck.checkpoint_id);
}

#[tokio::test]
async fn memory_checkpoints_stay_refused_and_other_snapshots_are_no_checkpoints() {
    let p = platform(None).await;
    let c = claim(&p, "carol").await;
    let e = checkpoint(&p, &c.claim_id, true, false)
        .await
        .expect_err("memory");
    assert_eq!(e.code(), Code::Unimplemented);
    assert_eq!(
        e.message(),
        sandpool_core::claim::KUBERNETES_CHECKPOINT_UNSUPPORTED
    );
    // a SandboxSnapshot a user (or a pause) made is not a checkpoint
    p.api.with_store(|s| {
        s.put(
            &snapshots_path(),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "SandboxSnapshot",
                "metadata": {"name": "theirs", "generation": 1},
                "spec": {"sandboxName": c.claim_id}}),
        );
    });
    for _ in 0..200 {
        let phase = stored(&p.api, &snapshots_path(), "theirs")
            .map(|s| s["status"]["phase"].clone())
            .unwrap_or_default();
        if phase == "Succeed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(listed(&p).await.is_empty());
    let e = p
        .sched
        .delete_checkpoint(Request::new(pb::CheckpointRef {
            checkpoint_id: "theirs".into(),
        }))
        .await
        .expect_err("not a checkpoint");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(stored(&p.api, &snapshots_path(), "theirs").is_some());
}

#[tokio::test]
async fn a_failed_commit_refuses_the_checkpoint_and_leaves_no_snapshot() {
    let p = platform(Some(Status::failed_precondition(
        "a gVisor pod's writes are not in containerd's snapshot",
    )))
    .await;
    let c = claim(&p, "dave").await;
    let e = checkpoint(&p, &c.claim_id, false, true)
        .await
        .expect_err("failed");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("gVisor"), "{e:?}");
    assert!(p.api.with_store(|s| s.list(&snapshots_path()).is_empty()));
    // a refused checkpoint does not end the claim
    assert!(stored(&p.api, &batches_path(NS), &c.claim_id).is_some());
}

/// A claim of the image that starts `argv` with an env var and a cwd.
async fn claim_running(p: &Platform, argv: &[&str]) -> pb::Claim {
    p.sched
        .create_claim(Request::new(pb::ClaimRequest {
            template: Some(pb::SandboxTemplate {
                image: "python:3.12-slim".into(),
                ..Default::default()
            }),
            ttl_seconds: 3600,
            metadata: owned("erin"),
            process: Some(pb::InjectRequest {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                env: HashMap::from([("STAGE".to_string(), "2".to_string())]),
                cwd: "/work".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("claim")
        .into_inner()
}

/// What OpenSandbox's and sandpool's own snapshot routes ask for: the
/// best checkpoint the platform can take, here a filesystem-only one,
/// with its images' size (it was 501, and the size 0).
#[tokio::test]
async fn memory_if_supported_takes_a_filesystem_checkpoint_of_the_images_size() {
    let p = platform(None).await;
    let c = claim(&p, "frank").await;
    let ck = p
        .sched
        .checkpoint_claim(Request::new(pb::CheckpointClaimRequest {
            claim_id: c.claim_id.clone(),
            leave_running: true,
            memory_if_supported: true,
            ..Default::default()
        }))
        .await
        .expect("checkpoint")
        .into_inner();
    assert!(ck.filesystem_only, "{ck:?}");
    // one container (the template's) committed by the fake node agent
    assert_eq!(ck.size_bytes, FAKE_IMAGE_SIZE, "{ck:?}");
    assert_eq!(listed(&p).await[0].size_bytes, FAKE_IMAGE_SIZE);
    let snap = stored(&p.api, &snapshots_path(), &ck.checkpoint_id).expect("snapshot");
    assert_eq!(
        snap["metadata"]["annotations"][snapshot::SIZE_ANNOTATION],
        FAKE_IMAGE_SIZE.to_string(),
        "{snap}"
    );
}

/// The commit wait reads the snapshot by its name (a get, a watch with a
/// field selector on it), not every labelled checkpoint each round.
#[tokio::test]
async fn the_commit_wait_reads_only_its_snapshot() {
    let p = platform(None).await;
    let c = claim(&p, "gina").await;
    let before = p.api.requests().len();
    let ck = checkpoint(&p, &c.claim_id, true, true)
        .await
        .expect("checkpoint");
    let snaps = snapshots_path();
    let during: Vec<_> = p.api.requests()[before..]
        .iter()
        .filter(|r| r.path.starts_with(&snaps))
        .cloned()
        .collect();
    let labelled: Vec<_> = during
        .iter()
        .filter(|r| r.query.contains("labelSelector"))
        .map(|r| (r.method.clone(), r.query.clone()))
        .collect();
    assert!(labelled.is_empty(), "{labelled:?}");
    let by_name = format!("{snaps}/{}", ck.checkpoint_id);
    assert!(
        during
            .iter()
            .any(|r| r.method == http::Method::GET && r.path == by_name),
        "no read of {by_name}"
    );
}

/// A restore starts what the checkpointed claim started (its entrypoint
/// with env and cwd), as a create does; a restore's own process and limits
/// replace the checkpointed claim's (OpenSandbox `entrypoint` and
/// `resourceLimits` with a `snapshotId`).
#[tokio::test]
async fn a_restore_starts_the_checkpointed_claims_process() {
    let p = platform(None).await;
    let c = claim_running(&p, &["python3", "-m", "http.server"]).await;
    let first = p.started.lock().expect("lock").clone();
    assert_eq!(first.len(), 1, "the create started it: {first:?}");
    let ck = checkpoint(&p, &c.claim_id, true, true)
        .await
        .expect("checkpoint");
    let r = p
        .sched
        .restore_checkpoint(Request::new(pb::RestoreCheckpointRequest {
            checkpoint_id: ck.checkpoint_id.clone(),
            ..Default::default()
        }))
        .await
        .expect("restore")
        .into_inner()
        .claims
        .remove(0);
    assert_eq!(r.entrypoint, ["python3", "-m", "http.server"], "{r:?}");
    let started = p.started.lock().expect("lock").clone();
    assert_eq!(started.len(), 2, "{started:?}");
    let pod = r.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    assert_eq!(started[1], (pod, first[0].1.clone()));
    let task = &started[1].1;
    assert_eq!(task.command, ["python3", "-m", "http.server"]);
    assert_eq!(task.working_dir.as_deref(), Some("/work"));
    assert_eq!(task.env[0].name, "STAGE");
    // its own process and limits instead
    let r = p
        .sched
        .restore_checkpoint(Request::new(pb::RestoreCheckpointRequest {
            checkpoint_id: ck.checkpoint_id.clone(),
            process: Some(pb::InjectRequest {
                argv: vec!["tail".into(), "-f".into(), "/dev/null".into()],
                ..Default::default()
            }),
            resources: Some(pb::Resources {
                cpu: "1".into(),
                memory: "2Gi".into(),
                pids: 0,
            }),
            ..Default::default()
        }))
        .await
        .expect("restore with a process")
        .into_inner()
        .claims
        .remove(0);
    assert_eq!(r.entrypoint, ["tail", "-f", "/dev/null"]);
    let started = p.started.lock().expect("lock").clone();
    assert_eq!(started.len(), 3, "{started:?}");
    assert_eq!(started[2].1.command, ["tail", "-f", "/dev/null"]);
    assert!(started[2].1.env.is_empty(), "{started:?}");
    let b = stored(&p.api, &batches_path(NS), &r.claim_id).expect("batch");
    let limits = &b["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(
        (&limits["cpu"], &limits["memory"]),
        (&json!("1"), &json!("2Gi"))
    );
    // what Kubernetes mode cannot do is refused naming it
    for (process, resources, says) in [
        (
            Some(pb::InjectRequest {
                argv: vec!["id".into()],
                uid: Some(0),
                ..Default::default()
            }),
            None,
            "uid",
        ),
        (
            None,
            Some(pb::Resources {
                pids: 64,
                ..Default::default()
            }),
            "pids",
        ),
    ] {
        let e = p
            .sched
            .restore_checkpoint(Request::new(pb::RestoreCheckpointRequest {
                checkpoint_id: ck.checkpoint_id.clone(),
                process,
                resources,
                ..Default::default()
            }))
            .await
            .expect_err(says);
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
}
