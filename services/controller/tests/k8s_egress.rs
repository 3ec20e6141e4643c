//! A claim's egress policy in Kubernetes mode (issue 21): a NetworkPolicy
//! `<claim>-egress-<uid>` selecting exactly the claim's pod (the tenant
//! label, the BatchSandbox's uid), owned by the BatchSandbox, replaced by a
//! live change, removed for an allow-all policy; the policy as given is
//! read back from the claim. On release it keeps guarding the released pod
//! until the pod is gone (owned by it too, then garbage-collected) or reset
//! (deleted before the pod rejoins its pool). What a NetworkPolicy cannot
//! enforce exactly is refused (501) before anything is written. There is
//! no CNI here: this checks what is written, not what a CNI enforces.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use sandpool_controller::batch;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::KubeScheduler;
use sandpool_controller::node_agents::NodeAgents;
use sandpool_controller::pool::recycle::{RECORD_ANNOTATION, RECYCLING, RESET_KILLED};
use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, batches_path, context, make_ready, pods_path};
use tonic::{Code, Request, Status};

const NS: &str = "sandpool";

fn policies_path() -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies")
}

/// The NetworkPolicies of claims of id `claim` (`<claim>-egress-<uid>`).
fn policies_of(api: &FakeApi, claim: &str) -> Vec<Value> {
    let prefix = format!("{claim}-egress-");
    api.with_store(|s| s.list(&policies_path()))
        .into_iter()
        .filter(|np| {
            np["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect()
}

/// The one NetworkPolicy of claim `claim`, if any.
fn network_policy(api: &FakeApi, claim: &str) -> Option<Value> {
    let mut all = policies_of(api, claim);
    assert!(all.len() <= 1, "one policy per claim: {all:?}");
    all.pop()
}

/// The names of the NetworkPolicies that select pod `pod`.
fn selecting(api: &FakeApi, pod: &str) -> Vec<Value> {
    api.with_store(|s| s.list(&policies_path()))
        .iter()
        .filter(|np| selected(api, np).iter().any(|p| p == pod))
        .map(|np| np["metadata"]["name"].clone())
        .collect()
}

fn pod(api: &FakeApi, name: &str) -> Option<Value> {
    api.with_store(|s| s.get(&pods_path(NS), name).cloned())
}

fn release(id: &str) -> Request<pb::ClaimRef> {
    Request::new(pb::ClaimRef {
        claim_id: id.into(),
    })
}

/// Wait (bounded) until claim `id`'s BatchSandbox is gone (its pods
/// released by the batch controller).
async fn released(api: &FakeApi, id: &str) {
    for _ in 0..500 {
        if api.with_store(|s| s.get(&batches_path(NS), id).is_none()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("claim {id} not released");
}

fn rule(action: pb::EgressAction, cidr: &str, port: u32) -> pb::EgressRule {
    pb::EgressRule {
        action: action as i32,
        cidr: cidr.into(),
        port,
    }
}

fn policy(default: pb::EgressAction, rules: Vec<pb::EgressRule>) -> pb::EgressPolicy {
    pb::EgressPolicy {
        default_action: default as i32,
        rules,
    }
}

/// The batch controller, run until aborted: fills claims and marks their
/// pods ready on node-a.
fn batch_controller(api: &FakeApi, ctx: &Arc<Context>) -> tokio::task::JoinHandle<()> {
    support::spawn_batch_controller(api, ctx, NS)
}

fn claim_request(egress: Option<pb::EgressPolicy>) -> Request<pb::ClaimRequest> {
    Request::new(pb::ClaimRequest {
        template: Some(pb::SandboxTemplate {
            image: "python:3.12-slim".into(),
            ..Default::default()
        }),
        egress,
        ..Default::default()
    })
}

fn set(id: &str, egress: pb::EgressPolicy) -> Request<pb::SetClaimEgressRequest> {
    Request::new(pb::SetClaimEgressRequest {
        claim_id: id.into(),
        egress: Some(egress),
    })
}

/// The names of the pods `np` selects (its `matchLabels`).
fn selected(api: &FakeApi, np: &Value) -> Vec<String> {
    let labels = np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
        .clone();
    api.with_store(|s| s.list(&pods_path(NS)))
        .iter()
        .filter(|p| {
            labels
                .iter()
                .all(|(k, v)| p["metadata"]["labels"][k.as_str()] == *v)
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

fn scheduler(api: &FakeApi) -> KubeScheduler {
    let mut sched = KubeScheduler::new(api.client(), NS, Arc::new(NoTasks(Some(None))));
    sched.poll = Duration::from_millis(5);
    sched
}

/// Claim `claim`'s NetworkPolicy: default deny, 10/8 on port 443 but
/// 10.1/16, on exactly its pod, owned by its BatchSandbox.
fn check_network_policy(api: &FakeApi, claim: &pb::Claim) {
    let id = &claim.claim_id;
    let np = network_policy(api, id).expect("the claim's NetworkPolicy");
    let batch = api
        .with_store(|s| s.get(&batches_path(NS), id).cloned())
        .expect("batch");
    let uid = batch["metadata"]["uid"].as_str().expect("uid");
    assert_eq!(np["metadata"]["name"], json!(format!("{id}-egress-{uid}")));
    assert_eq!(np["metadata"]["labels"][TENANT_LABEL], json!(uid));
    assert_eq!(
        np["spec"],
        json!({
            "podSelector": {"matchLabels": {TENANT_LABEL: uid}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 443}],
            }],
        })
    );
    let pod = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    assert_eq!(selected(api, &np), vec![pod], "exactly the claim's pod");
    let owner = &np["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"]),
        (&json!("BatchSandbox"), &json!(id), &json!(uid))
    );
}

#[tokio::test]
async fn a_claims_egress_policy_is_a_network_policy_on_its_pod_alone() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let sched = scheduler(&api);
    let controller = batch_controller(&api, &ctx);
    use pb::EgressAction::{Allow, Deny};
    let given = policy(
        Deny,
        vec![rule(Deny, "10.1.0.0/16", 0), rule(Allow, "10.0.0.0/8", 443)],
    );
    let claim = sched
        .create_claim(claim_request(Some(given.clone())))
        .await
        .expect("claim")
        .into_inner();
    // another claim without a policy: not selected, no policy of its own
    let other = sched
        .create_claim(claim_request(None))
        .await
        .expect("other claim")
        .into_inner();
    controller.abort();
    let id = claim.claim_id.clone();
    assert_eq!(claim.egress.as_ref(), Some(&given), "read back as given");
    assert_eq!(other.egress, None);
    assert!(network_policy(&api, &other.claim_id).is_none());

    check_network_policy(&api, &claim);

    // a live change replaces it: everything but two networks
    let open = policy(
        Allow,
        vec![rule(Allow, "10.1.2.3", 0), rule(Deny, "10.0.0.0/8", 0)],
    );
    let changed = sched
        .set_claim_egress(set(&id, open.clone()))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(changed.egress.as_ref(), Some(&open));
    let np = network_policy(&api, &id).expect("replaced");
    assert_eq!(
        np["spec"]["egress"],
        json!([
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]},
            {"to": [{"ipBlock": {"cidr": "::/0"}}]},
            {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]},
        ])
    );
    let got = sched
        .get_claim(Request::new(pb::ClaimRef {
            claim_id: id.clone(),
        }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.egress.as_ref(), Some(&open), "GET reads it back");

    // what a NetworkPolicy cannot say: 501 naming the rule, nothing changed
    let domain = policy(Deny, vec![rule(Allow, "pypi.org", 0)]);
    let e = sched
        .set_claim_egress(set(&id, domain))
        .await
        .expect_err("a domain rule");
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message().starts_with("egress[0] (allow pypi.org)"),
        "{e:?}"
    );
    assert_eq!(network_policy(&api, &id).expect("kept")["spec"], np["spec"]);

    // allow-all: no NetworkPolicy, read back as given
    let all = sched
        .set_claim_egress(set(&id, pb::EgressPolicy::default()))
        .await
        .expect("allow all")
        .into_inner();
    // (an unspecified default action reads back as the allow it means)
    assert_eq!(all.egress, Some(policy(Allow, vec![])));
    assert!(network_policy(&api, &id).is_none());

    // released: the policy goes with the claim
    sched
        .set_claim_egress(set(&id, given))
        .await
        .expect("set again");
    assert!(network_policy(&api, &id).is_some());
    sched.release_claim(release(&id)).await.expect("release");
    // released: kept for the released pod (see the tests below)
    let np = network_policy(&api, &id).expect("not deleted on release");
    let pod = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    assert_eq!(selected(&api, &np), vec![pod]);
}

#[tokio::test]
async fn a_policy_a_network_policy_cannot_enforce_makes_no_claim() {
    let api = FakeApi::new();
    let sched = scheduler(&api);
    use pb::EgressAction::{Allow, Deny};
    // a deny with a port under a default allow: `except` has no ports
    let p = policy(
        Allow,
        vec![rule(Deny, "10.0.0.0/8", 0), rule(Deny, "192.0.2.0/24", 22)],
    );
    let e = sched
        .create_claim(claim_request(Some(p)))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message()
            .starts_with("egress[1] (deny 192.0.2.0/24 port 22)"),
        "{e:?}"
    );
    assert!(api.with_store(|s| s.list(&batches_path(NS))).is_empty());
    assert!(api.with_store(|s| s.list(&policies_path())).is_empty());
}

#[tokio::test]
async fn the_network_policy_is_garbage_collected_with_its_batch_sandbox() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let sched = scheduler(&api);
    let controller = batch_controller(&api, &ctx);
    let closed = policy(pb::EgressAction::Deny, vec![]);
    let claim = sched
        .create_claim(claim_request(Some(closed)))
        .await
        .expect("claim")
        .into_inner();
    let id = claim.claim_id;
    let np = network_policy(&api, &id).expect("policy");
    assert_eq!(np["spec"]["egress"], json!([]), "nothing allowed: {np}");
    // the BatchSandbox deleted by someone else (kubectl): its finalizer
    // released by the batch controller, then owner GC
    api.with_store(|s| s.delete(&batches_path(NS), &id));
    for _ in 0..500 {
        if network_policy(&api, &id).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    controller.abort();
    assert!(network_policy(&api, &id).is_none(), "collected");
}

#[tokio::test]
async fn a_released_pod_stays_under_the_policy_until_the_pod_object_is_gone() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let sched = scheduler(&api);
    let controller = batch_controller(&api, &ctx);
    let closed = policy(pb::EgressAction::Deny, vec![]);
    let claim = sched
        .create_claim(claim_request(Some(closed)))
        .await
        .expect("claim")
        .into_inner();
    let id = claim.claim_id.clone();
    let name = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    // the termination grace period (its containers still running): the
    // fake has no kubelet, a finalizer holds the deleted pod here
    api.with_store(|s| {
        s.mutate(&pods_path(NS), &name, |p| {
            p["metadata"]["finalizers"] = json!(["test/grace-period"]);
        })
    });
    sched.release_claim(release(&id)).await.expect("release");
    released(&api, &id).await;
    controller.abort();
    let p = pod(&api, &name).expect("terminating");
    assert!(p["metadata"]["deletionTimestamp"].is_string(), "{p}");
    let np = network_policy(&api, &id).expect("still guarding the terminating pod");
    assert_eq!(selecting(&api, &name), vec![np["metadata"]["name"].clone()]);
    let owned_by_pod = np["metadata"]["ownerReferences"]
        .as_array()
        .expect("owners")
        .iter()
        .any(|o| o["kind"] == "Pod" && o["uid"] == p["metadata"]["uid"]);
    assert!(owned_by_pod, "{np}");
    // the pod object gone: the policy is collected with it
    Api::<Pod>::namespaced(ctx.client.clone(), NS)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("grace period over");
    assert!(pod(&api, &name).is_none());
    assert!(policies_of(&api, &id).is_empty(), "collected with the pod");
}

/// A node agent that resets every pod, killing its `sandbox` container.
struct ResetsAll;

#[async_trait::async_trait]
impl NodeAgents for ResetsAll {
    async fn set_paused(&self, _: &str, _: &str, _: bool) -> Result<(), Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn mount(&self, _: &str, _: pb::MountRequest) -> Result<(), Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn reset(&self, _: &str, _: &str) -> Result<pb::SandboxInfo, Status> {
        Ok(pb::SandboxInfo {
            access_token: "fresh-token".into(),
            labels: [(RESET_KILLED.to_string(), "sandbox".to_string())].into(),
            ..Default::default()
        })
    }
}

/// The kubelet's view of pod `name` (the fake has none): Running and
/// Ready, its `sandbox` container running as `id` after `restarts`.
fn kubelet_reports(api: &FakeApi, name: &str, id: &str, restarts: i32) {
    api.with_store(|s| {
        make_ready(s, NS, name, "10.2.0.7", "node-a");
        s.mutate(&pods_path(NS), name, |p| {
            p["status"]["containerStatuses"] = json!([{"name": "sandbox",
                "containerID": format!("containerd://{id}"), "restartCount": restarts,
                "ready": true, "image": "busybox", "imageID": "busybox",
                "state": {"running": {"startedAt": "2026-12-07T00:00:00Z"}}}]);
        });
    });
}

/// A Restart pool `p` of one pod, reconciled once.
async fn recycling_pool(api: &FakeApi, ctx: &Arc<Context>) {
    api.with_store(|s| {
        s.put(
            &support::pools_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool",
                "metadata": {"name": "p"},
                "spec": {"template": {"spec": {"containers": [{"name": "sandbox",
                            "image": "busybox", "command": ["sleep", "infinity"]}]}},
                    "capacitySpec": {"bufferMax": 1, "bufferMin": 1, "poolMax": 1, "poolMin": 0},
                    "recycleStrategy": {"type": "Restart"}}}),
        )
    });
    reconcile_pool(ctx).await;
}

async fn reconcile_pool(ctx: &Arc<Context>) {
    let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
        .get("p")
        .await
        .expect("pool");
    sandpool_controller::pool::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pool reconcile");
}

fn pool_claim(egress: pb::EgressPolicy) -> Request<pb::ClaimRequest> {
    Request::new(pb::ClaimRequest {
        pool: "p".into(),
        egress: Some(egress),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_recycled_pod_stays_under_the_policy_until_its_reset_then_under_the_next_claims() {
    let api = FakeApi::new();
    let ctx = support::context_with_agents(&api, NoTasks(Some(None)), Arc::new(ResetsAll));
    let sched = scheduler(&api);
    recycling_pool(&api, &ctx).await;
    let controller = batch_controller(&api, &ctx);
    let closed = policy(pb::EgressAction::Deny, vec![]);
    let first = sched
        .create_claim(pool_claim(closed))
        .await
        .expect("pool claim")
        .into_inner();
    let name = first.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    kubelet_reports(&api, &name, "first", 0);
    let np = network_policy(&api, &first.claim_id).expect("policy");
    let np_name = np["metadata"]["name"].clone();
    assert_eq!(selecting(&api, &name), vec![np_name.clone()]);

    // released: the pod is kept for its reset, still under the policy
    sched
        .release_claim(release(&first.claim_id))
        .await
        .expect("release");
    released(&api, &first.claim_id).await;
    let p = pod(&api, &name).expect("kept for its pool");
    assert_eq!(
        p["metadata"]["labels"][ALLOCATED_TO_LABEL],
        json!(RECYCLING),
        "{p}"
    );
    assert_eq!(
        selecting(&api, &name),
        vec![np_name.clone()],
        "released, the tenant's processes may still run"
    );
    // the reset started: still under it
    reconcile_pool(&ctx).await;
    let p = pod(&api, &name).expect("being reset");
    assert!(p["metadata"]["annotations"][RECORD_ANNOTATION].is_string());
    assert_eq!(selecting(&api, &name), vec![np_name.clone()]);
    // the reset proven (new containers, ready): the policy goes, then the
    // pod rejoins its pool selected by none
    kubelet_reports(&api, &name, "second", 1);
    reconcile_pool(&ctx).await;
    let p = pod(&api, &name).expect("back in its pool");
    assert!(
        p["metadata"]["labels"].get(ALLOCATED_TO_LABEL).is_none(),
        "{p}"
    );
    assert!(p["metadata"]["labels"].get(TENANT_LABEL).is_none(), "{p}");
    assert!(policies_of(&api, &first.claim_id).is_empty());
    assert!(selecting(&api, &name).is_empty());

    // claimed again under another policy: selected by that one alone
    let one = policy(
        pb::EgressAction::Deny,
        vec![rule(pb::EgressAction::Allow, "192.0.2.0/24", 0)],
    );
    let second = sched
        .create_claim(pool_claim(one))
        .await
        .expect("second claim")
        .into_inner();
    controller.abort();
    assert_eq!(second.sandbox.as_ref().expect("sandbox").sandbox_id, name);
    let np = network_policy(&api, &second.claim_id).expect("its policy");
    assert_eq!(selecting(&api, &name), vec![np["metadata"]["name"].clone()]);
}

#[tokio::test]
async fn an_earlier_claim_of_the_id_keeps_its_policy_on_its_released_pod() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let sched = scheduler(&api);
    // earlier claim `c-1` (uid-gone) released: its pod still terminating,
    // its policy owned by the pod
    api.with_store(|s| {
        s.put(
            &pods_path(NS),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "old", "uid": "uid-old", "finalizers": ["test/grace-period"],
                    "labels": {TENANT_LABEL: "uid-gone"}},
                "spec": {"containers": [{"name": "sandbox", "image": "busybox"}]}}),
        );
        s.delete(&pods_path(NS), "old");
        s.put(
            &policies_path(),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "c-1-egress-uid-gone", "labels": {TENANT_LABEL: "uid-gone"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "old",
                        "uid": "uid-old"}]},
                "spec": {"podSelector": {"matchLabels": {TENANT_LABEL: "uid-gone"}},
                    "policyTypes": ["Egress"], "egress": []}}),
        )
    });
    let before = api
        .with_store(|s| s.get(&policies_path(), "c-1-egress-uid-gone").cloned())
        .expect("earlier policy");
    let controller = batch_controller(&api, &ctx);
    let mut r = claim_request(Some(policy(
        pb::EgressAction::Deny,
        vec![rule(pb::EgressAction::Allow, "192.0.2.0/24", 0)],
    )));
    r.get_mut().claim_id = "c-1".into();
    let claim = sched.create_claim(r).await.expect("claim").into_inner();
    controller.abort();
    let after = api
        .with_store(|s| s.get(&policies_path(), "c-1-egress-uid-gone").cloned())
        .expect("earlier policy kept");
    assert_eq!(after, before, "untouched");
    assert_eq!(selecting(&api, "old"), vec![json!("c-1-egress-uid-gone")]);
    let uid = api
        .with_store(|s| s.get(&batches_path(NS), "c-1").cloned())
        .expect("batch")["metadata"]["uid"]
        .clone();
    let name = format!("c-1-egress-{}", uid.as_str().expect("uid"));
    let np = api
        .with_store(|s| s.get(&policies_path(), &name).cloned())
        .expect("the new claim's own");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"][TENANT_LABEL], uid);
    let pod = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    assert_eq!(selecting(&api, &pod), vec![json!(name)]);
}

#[tokio::test]
async fn a_pod_allocated_before_the_tenant_label_existed_gets_it() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let sched = scheduler(&api);
    let controller = batch_controller(&api, &ctx);
    let closed = policy(pb::EgressAction::Deny, vec![]);
    let claim = sched
        .create_claim(claim_request(Some(closed)))
        .await
        .expect("claim")
        .into_inner();
    controller.abort();
    let _ = controller.await;
    let name = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    api.with_store(|s| {
        s.mutate(&pods_path(NS), &name, |p| {
            if let Some(l) = p["metadata"]["labels"].as_object_mut() {
                l.remove(TENANT_LABEL);
            }
        })
    });
    assert!(selecting(&api, &name).is_empty());
    let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
        .get(&claim.claim_id)
        .await
        .expect("batch");
    batch::reconcile(Arc::new(b), ctx.clone())
        .await
        .expect("reconcile");
    let np = network_policy(&api, &claim.claim_id).expect("policy");
    assert_eq!(selecting(&api, &name), vec![np["metadata"]["name"].clone()]);
}

#[tokio::test]
async fn a_live_claims_policy_outlives_the_reset_of_a_pod_it_gave_back() {
    let api = FakeApi::new();
    let ctx = support::context_with_agents(&api, NoTasks(Some(None)), Arc::new(ResetsAll));
    let sched = scheduler(&api);
    recycling_pool(&api, &ctx).await;
    let controller = batch_controller(&api, &ctx);
    let claim = sched
        .create_claim(pool_claim(policy(pb::EgressAction::Deny, vec![])))
        .await
        .expect("pool claim")
        .into_inner();
    let name = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    kubelet_reports(&api, &name, "first", 0);
    // the claim gives its pod back but lives on (as a pause does)
    api.with_store(|s| {
        s.mutate(&batches_path(NS), &claim.claim_id, |b| {
            b["spec"]["replicas"] = json!(0);
        })
    });
    for _ in 0..500 {
        let p = pod(&api, &name).expect("pod");
        if p["metadata"]["labels"][ALLOCATED_TO_LABEL] == json!(RECYCLING) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    controller.abort();
    let _ = controller.await;
    let np = network_policy(&api, &claim.claim_id).expect("policy");
    let owners = |np: &Value| -> Vec<Value> {
        np["metadata"]["ownerReferences"]
            .as_array()
            .expect("owners")
            .iter()
            .map(|o| o["kind"].clone())
            .collect()
    };
    assert_eq!(owners(&np), vec![json!("BatchSandbox"), json!("Pod")]);
    assert_eq!(selecting(&api, &name), vec![np["metadata"]["name"].clone()]);
    reconcile_pool(&ctx).await;
    kubelet_reports(&api, &name, "second", 1);
    reconcile_pool(&ctx).await;
    // reset: the pod is out of it, the claim keeps its policy
    let np = network_policy(&api, &claim.claim_id).expect("kept for the claim");
    assert_eq!(owners(&np), vec![json!("BatchSandbox")]);
    assert!(selecting(&api, &name).is_empty());
    let p = pod(&api, &name).expect("back in its pool");
    assert!(p["metadata"]["labels"].get(TENANT_LABEL).is_none(), "{p}");
}
