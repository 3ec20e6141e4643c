//! Pause and resume of a claim in Kubernetes mode (issue 21): the scheduler
//! finds the node agent DaemonSet pod on the claim pod's node through the
//! fake apiserver and calls its gRPC `Pause` / `Resume` (an in-process
//! tonic server here) with the service token; the paused state and the
//! stopped TTL live on the claim's BatchSandbox.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use sandpool_controller::batch;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::{
    DaemonSetAgents, KubeScheduler, NODE_AGENT_SELECTOR, ON_EXPIRY_ANNOTATION, PAUSED_ANNOTATION,
};
use sandpool_proto::auth::ServiceToken;
use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
use serde_json::{Value, json};
use support::node_agent::{put_agent_pod, serve_agent};
use support::{FakeApi, NoTasks, batches_path, context, make_ready, pods_path};
use tonic::{Code, Request, Status};

const NS: &str = "sandpool";
const TOKEN: &str = "svc-secret-0123456789";

/// A claim with its own template, whose pod the batch controller makes and
/// the test marks ready on node-a; the node agent DaemonSet pod of node-a
/// (on loopback) and one of another node. The claim has a one-hour TTL.
async fn claimed(api: &FakeApi, ctx: &Arc<Context>, sched: &KubeScheduler) -> (pb::Claim, String) {
    claimed_as(api, ctx, sched, pb::ClaimRequest::default()).await
}

/// [`claimed`] with what `req` asks for besides its template and TTL.
async fn claimed_as(
    api: &FakeApi,
    ctx: &Arc<Context>,
    sched: &KubeScheduler,
    req: pb::ClaimRequest,
) -> (pb::Claim, String) {
    for (name, node, ip) in [
        ("agent-a", "node-a", "127.0.0.1"),
        ("agent-b", "node-b", "10.9.9.9"),
    ] {
        api.with_store(|s| {
            put_agent_pod(s, NS, name, ip, node);
        });
    }
    let controller = support::spawn_batch_controller(api, ctx, NS);
    let claim = sched
        .create_claim(Request::new(pb::ClaimRequest {
            template: Some(pb::SandboxTemplate {
                image: "python:3.12-slim".into(),
                ..Default::default()
            }),
            ttl_seconds: 3600,
            ..req
        }))
        .await
        .expect("claim")
        .into_inner();
    controller.abort();
    let pod = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    (claim, pod)
}

fn scheduler(api: &FakeApi, port: u16) -> KubeScheduler {
    let agents = DaemonSetAgents::new(
        api.client(),
        NS,
        ServiceToken::new(Some(TOKEN)).expect("token"),
    )
    .at(NODE_AGENT_SELECTOR, port);
    let mut sched = KubeScheduler::new(api.client(), NS, Arc::new(NoTasks(Some(None))))
        .with_node_agents(Arc::new(agents));
    sched.poll = Duration::from_millis(5);
    sched
}

fn stored(api: &FakeApi, id: &str) -> Value {
    api.with_store(|s| s.get(&batches_path(NS), id).cloned())
        .expect("batch")
}

fn claim_ref(id: &str) -> Request<pb::ClaimRef> {
    Request::new(pb::ClaimRef {
        claim_id: id.into(),
    })
}

fn pause_ref(id: &str) -> Request<pb::PauseClaimRequest> {
    Request::new(pb::PauseClaimRequest {
        claim_id: id.into(),
        filesystem_only: false,
    })
}

#[tokio::test]
async fn pause_and_resume_go_to_the_node_agent_of_the_pods_node() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let (port, calls) = serve_agent(None).await;
    let sched = scheduler(&api, port);
    let (claim, pod) = claimed(&api, &ctx, &sched).await;
    let id = claim.claim_id.clone();
    assert_eq!(claim.state, pb::ClaimState::Bound as i32);
    let ttl_before = claim.expires_unix_ms;
    assert!(ttl_before > 0);

    let paused = sched
        .pause_claim(pause_ref(&id))
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.state, pb::ClaimState::Paused as i32, "{paused:?}");
    let sb = paused.sandbox.as_ref().expect("sandbox");
    assert_eq!(sb.state, pb::SandboxState::Paused as i32);
    assert_eq!(
        calls.lock().clone(),
        vec![(
            "pause".to_string(),
            format!("{NS}/{pod}"),
            format!("Bearer {TOKEN}")
        )]
    );
    // recorded on the claim: GET (any replica) reports it, the TTL is stopped
    let b = stored(&api, &id);
    assert!(
        b["metadata"]["annotations"][PAUSED_ANNOTATION].is_string(),
        "{b}"
    );
    assert!(
        b["spec"]["expireTime"].is_null(),
        "the TTL clock stops: {b}"
    );
    let got = sched
        .get_claim(claim_ref(&id))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.state, pb::ClaimState::Paused as i32);

    // a paused claim cannot be paused again (409), and the agent is not called
    let again = sched
        .pause_claim(pause_ref(&id))
        .await
        .expect_err("pause twice");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert_eq!(calls.lock().len(), 1);

    // frozen, the pod failed its readiness probe: resume answers once the
    // kubelet sees it ready again
    api.with_store(|s| {
        s.mutate(&pods_path(NS), &pod, |p| {
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        })
    });
    let a = api.clone();
    let p = pod.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.with_store(|s| make_ready(s, NS, &p, "10.2.0.7", "node-a"));
    });
    let resumed = sched
        .resume_claim(claim_ref(&id))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.state, pb::ClaimState::Bound as i32, "{resumed:?}");
    assert_eq!(calls.lock()[1].0, "resume");
    assert_eq!(calls.lock()[1].1, format!("{NS}/{pod}"));
    let b = stored(&api, &id);
    assert!(
        b["metadata"]["annotations"]
            .get(PAUSED_ANNOTATION)
            .is_none_or(Value::is_null)
    );
    // the TTL restarts with what was left (about an hour)
    let left = resumed.expires_unix_ms - ttl_before;
    assert!(
        left.abs() < 60_000,
        "expires {} vs {ttl_before}",
        resumed.expires_unix_ms
    );

    let twice = sched
        .resume_claim(claim_ref(&id))
        .await
        .expect_err("resume a running claim");
    assert_eq!(twice.code(), Code::FailedPrecondition);
    assert_eq!(calls.lock().len(), 2);
}

#[tokio::test]
async fn a_pause_the_node_agent_refuses_leaves_the_claim_running() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let (port, calls) = serve_agent(Some(Status::not_found("no such pod"))).await;
    let sched = scheduler(&api, port);
    let (claim, _) = claimed(&api, &ctx, &sched).await;
    let e = sched
        .pause_claim(pause_ref(&claim.claim_id))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("node agent of node-a"), "{e:?}");
    assert_eq!(calls.lock().len(), 1);
    let got = sched
        .get_claim(claim_ref(&claim.claim_id))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.state, pb::ClaimState::Bound as i32);
    assert!(stored(&api, &claim.claim_id)["spec"]["expireTime"].is_string());
}

#[tokio::test]
async fn a_node_without_an_agent_is_unavailable() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let (port, calls) = serve_agent(None).await;
    let sched = scheduler(&api, port);
    let (claim, _) = claimed(&api, &ctx, &sched).await;
    api.with_store(|s| s.delete(&pods_path(NS), "agent-a"));
    let e = sched
        .pause_claim(pause_ref(&claim.claim_id))
        .await
        .expect_err("no agent");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("node-a"), "{e:?}");
    assert!(calls.lock().is_empty());
}

/// A claim paused through its BatchSandbox's `spec.pause` (kubectl,
/// upstream's server: snapshotted, its pod deleted) reports paused; a REST
/// pause of it is a conflict, and a REST resume asks the batch controller
/// through `spec.pause: false` (no node agent freeze or thaw) and answers
/// once the new pod is ready.
#[tokio::test]
async fn a_claim_paused_by_its_spec_is_resumed_through_its_spec() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let (port, calls) = serve_agent(None).await;
    let sched = Arc::new(scheduler(&api, port));
    let (claim, pod) = claimed(&api, &ctx, &sched).await;
    let id = claim.claim_id.clone();
    // as the batch controller leaves a paused batch: no pod, phase Paused
    let old_pod = api
        .with_store(|s| {
            s.mutate(&batches_path(NS), &id, |b| {
                b["spec"]["pause"] = json!(true);
                b["status"]["phase"] = json!("Paused");
            });
            s.delete(&pods_path(NS), &pod)
        })
        .expect("the claim's pod");
    let got = sched.get_claim(claim_ref(&id)).await.expect("get");
    assert_eq!(got.get_ref().state, pb::ClaimState::Paused as i32);
    let e = sched.pause_claim(pause_ref(&id)).await.expect_err("paused");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    let s = sched.clone();
    let rid = id.clone();
    let resume = tokio::spawn(async move { s.resume_claim(claim_ref(&rid)).await });
    for _ in 0..500 {
        if stored(&api, &id)["spec"]["pause"] == json!(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stored(&api, &id)["spec"]["pause"], json!(false));
    // the batch controller's new pod (same allocation), ready
    let mut new_pod = old_pod;
    new_pod["metadata"]["name"] = json!(format!("{pod}-resumed"));
    new_pod["status"] = json!({});
    api.with_store(|s| {
        s.put(&pods_path(NS), new_pod);
        make_ready(s, NS, &format!("{pod}-resumed"), "10.2.0.8", "node-a");
    });
    let resumed = resume.await.expect("joined").expect("resume").into_inner();
    assert_eq!(resumed.state, pb::ClaimState::Bound as i32, "{resumed:?}");
    assert_eq!(
        resumed.sandbox.expect("sandbox").sandbox_id,
        format!("{pod}-resumed")
    );
    assert!(calls.lock().is_empty(), "no freeze or thaw");
}

/// The controller's node agents: the fake one on loopback, with the token.
fn agents(api: &FakeApi, port: u16) -> Arc<DaemonSetAgents> {
    let token = ServiceToken::new(Some(TOKEN)).expect("token");
    Arc::new(DaemonSetAgents::new(api.client(), NS, token).at(NODE_AGENT_SELECTOR, port))
}

/// The claim's timeout ends now: its `expireTime` moved to the past, and
/// the batch controller reconciles it once.
async fn expire_now(api: &FakeApi, ctx: &Arc<Context>, id: &str) {
    api.with_store(|s| {
        s.mutate(&batches_path(NS), id, |b| {
            b["spec"]["expireTime"] = json!("2020-01-01T00:00:00Z");
        })
    });
    let b: BatchSandbox = Api::namespaced(ctx.client.clone(), NS)
        .get(id)
        .await
        .expect("claim");
    batch::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("reconcile");
}

fn pause_at_expiry() -> pb::ClaimRequest {
    pb::ClaimRequest {
        pause_on_expiry: true,
        auto_resume: true,
        ..Default::default()
    }
}

/// E2B `autoPause` in Kubernetes mode (issue 21): at its expiry the batch
/// controller pauses the claim through the node agent, as a REST pause
/// does, instead of deleting it; it stays paused with no timeout (a new
/// timeout is set aside for the resume), and a resume gives it 300 s.
#[tokio::test]
async fn a_pause_on_expiry_claim_is_paused_at_its_expiry_not_deleted() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(None).await;
    let ctx = support::context_with_agents(&api, NoTasks(Some(None)), agents(&api, port));
    let sched = scheduler(&api, port);
    let (claim, pod) = claimed_as(&api, &ctx, &sched, pause_at_expiry()).await;
    let id = claim.claim_id.clone();
    assert!(claim.pause_on_expiry && claim.auto_resume, "{claim:?}");
    assert_eq!(claim.ttl_seconds, 3600);
    assert_eq!(
        stored(&api, &id)["metadata"]["annotations"][ON_EXPIRY_ANNOTATION],
        "pause"
    );

    expire_now(&api, &ctx, &id).await;
    assert_eq!(
        calls.lock().clone(),
        vec![(
            "pause".to_string(),
            format!("{NS}/{pod}"),
            format!("Bearer {TOKEN}")
        )]
    );
    let b = stored(&api, &id);
    assert!(b["metadata"]["deletionTimestamp"].is_null(), "{b}");
    assert!(
        b["spec"]["expireTime"].is_null(),
        "no timeout while paused: {b}"
    );
    assert_eq!(
        b["metadata"]["annotations"][PAUSED_ANNOTATION], "300000",
        "a resume gets E2B's default timeout: {b}"
    );
    let events = support::events_about(&api, NS, &id);
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "PausedOnExpiry"),
        "{events:?}"
    );
    let got = sched.get_claim(claim_ref(&id)).await.expect("get");
    assert_eq!(got.get_ref().state, pb::ClaimState::Paused as i32);

    // reconciled again, paused, it is left alone (no timeout runs)
    let again: BatchSandbox = Api::namespaced(ctx.client.clone(), NS)
        .get(&id)
        .await
        .expect("claim");
    batch::reconcile(Arc::new(again), ctx.clone())
        .await
        .expect("reconcile");
    assert!(stored(&api, &id)["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(calls.lock().len(), 1);

    // a new timeout (E2B set_timeout) of the paused claim is set aside
    let at = chrono_ms() + 120_000;
    let renewed = sched
        .renew(Request::new(pb::RenewRequest {
            claim_id: id.clone(),
            expires_unix_ms: at,
        }))
        .await
        .expect("renew")
        .into_inner();
    assert_eq!(renewed.state, pb::ClaimState::Paused as i32);
    let b = stored(&api, &id);
    assert!(b["spec"]["expireTime"].is_null(), "still no timeout: {b}");
    let left: i64 = b["metadata"]["annotations"][PAUSED_ANNOTATION]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("set aside");
    assert!((60_000..=120_000).contains(&left), "{left}");

    let resumed = sched
        .resume_claim(claim_ref(&id))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.state, pb::ClaimState::Bound as i32, "{resumed:?}");
    assert_eq!(calls.lock()[1].0, "resume");
    let ends_in = resumed.expires_unix_ms - chrono_ms();
    assert!((60_000..=120_000).contains(&ends_in), "{ends_in}");
}

/// A pause-on-expiry claim whose pause fails (here the node agent refuses
/// it, as on gVisor) is deleted at its expiry as before, with a Warning
/// event naming why.
#[tokio::test]
async fn a_pause_on_expiry_claim_that_cannot_pause_is_deleted_with_a_warning() {
    let api = FakeApi::new();
    let (port, calls) = serve_agent(Some(Status::unimplemented("runsc cannot freeze"))).await;
    let ctx = support::context_with_agents(&api, NoTasks(Some(None)), agents(&api, port));
    let sched = scheduler(&api, port);
    let (claim, _) = claimed_as(&api, &ctx, &sched, pause_at_expiry()).await;
    let id = claim.claim_id.clone();
    expire_now(&api, &ctx, &id).await;
    assert_eq!(calls.lock().len(), 1);
    let b = stored(&api, &id);
    assert!(
        b["metadata"]["deletionTimestamp"].is_string(),
        "deleted: {b}"
    );
    let events = support::events_about(&api, NS, &id);
    let warned = events
        .iter()
        .find(|(t, r, _)| t == "Warning" && r == "PauseOnExpiryFailed");
    let (_, _, note) = warned.unwrap_or_else(|| panic!("no warning: {events:?}"));
    assert!(note.contains("runsc cannot freeze"), "{note}");
}

/// A filesystem-only pause at expiry is refused at create, naming the field.
#[tokio::test]
async fn a_filesystem_pause_on_expiry_is_refused_naming_it() {
    let api = FakeApi::new();
    let sched = scheduler(&api, 1);
    let e = sched
        .create_claim(Request::new(pb::ClaimRequest {
            pool: "p".into(),
            pause_on_expiry: true,
            pause_filesystem_only: true,
            ..Default::default()
        }))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("pause_filesystem_only"), "{e:?}");
    assert!(api.with_store(|s| s.list(&batches_path(NS))).is_empty());
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
