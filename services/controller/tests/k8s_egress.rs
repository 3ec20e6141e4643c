//! A claim's egress policy in Kubernetes mode (issue 21): a NetworkPolicy
//! `<claim>-egress` selecting exactly the claim's pod (the allocated-to
//! label, the BatchSandbox's uid), owned by the BatchSandbox, replaced by a
//! live change, removed for an allow-all policy and on release; the policy
//! as given is read back from the claim. What a NetworkPolicy cannot
//! enforce exactly is refused (501) before anything is written. There is
//! no CNI here: this checks what is written, not what a CNI enforces.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use sandpool_controller::batch;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::KubeScheduler;
use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, batches_path, context, make_ready, pods_path};
use tonic::{Code, Request};

const NS: &str = "sandpool";

fn policies_path() -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies")
}

fn network_policy(api: &FakeApi, claim: &str) -> Option<Value> {
    api.with_store(|s| s.get(&policies_path(), &format!("{claim}-egress")).cloned())
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
    let (c, a) = (ctx.clone(), api.clone());
    tokio::spawn(async move {
        loop {
            let all = Api::<BatchSandbox>::namespaced(c.client.clone(), NS)
                .list(&Default::default())
                .await
                .expect("list");
            for b in all.items {
                let _ = batch::reconcile(Arc::new(b), c.clone()).await;
            }
            let pending: Vec<String> = a.with_store(|s| {
                s.list(&pods_path(NS))
                    .iter()
                    .filter(|p| p["status"]["podIP"].is_null())
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                    .collect()
            });
            for p in pending {
                a.with_store(|s| make_ready(s, NS, &p, "10.2.0.7", "node-a"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
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
    assert_eq!(
        np["spec"],
        json!({
            "podSelector": {"matchLabels": {ALLOCATED_TO_LABEL: uid}},
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
    sched
        .release_claim(Request::new(pb::ClaimRef {
            claim_id: id.clone(),
        }))
        .await
        .expect("release");
    assert!(network_policy(&api, &id).is_none(), "deleted on release");
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

/// A Restart pool of one ready pod on node-a.
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
    let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
        .get("p")
        .await
        .expect("pool");
    sandpool_controller::pool::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("pool reconcile");
}

#[tokio::test]
async fn a_pooled_pod_given_back_is_no_longer_selected_by_the_claims_policy() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let sched = scheduler(&api);
    recycling_pool(&api, &ctx).await;
    let controller = batch_controller(&api, &ctx);
    let closed = policy(pb::EgressAction::Deny, vec![]);
    let claim = sched
        .create_claim(Request::new(pb::ClaimRequest {
            pool: "p".into(),
            egress: Some(closed),
            ..Default::default()
        }))
        .await
        .expect("pool claim")
        .into_inner();
    let pod = claim.sandbox.as_ref().expect("sandbox").sandbox_id.clone();
    let np = network_policy(&api, &claim.claim_id).expect("policy");
    assert_eq!(selected(&api, &np), vec![pod.clone()], "the allocated pod");
    sched
        .release_claim(Request::new(pb::ClaimRef {
            claim_id: claim.claim_id.clone(),
        }))
        .await
        .expect("release");
    assert!(network_policy(&api, &claim.claim_id).is_none());
    // the batch controller gives the pod back (relabelled for its reset):
    // even a policy left behind would select nothing
    for _ in 0..500 {
        if api.with_store(|s| s.get(&batches_path(NS), &claim.claim_id).is_none()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    controller.abort();
    let back = api
        .with_store(|s| s.get(&pods_path(NS), &pod).cloned())
        .expect("the pod is kept for its pool");
    assert_eq!(
        back["metadata"]["labels"][ALLOCATED_TO_LABEL],
        json!(sandpool_controller::pool::recycle::RECYCLING),
        "{back}"
    );
    assert!(selected(&api, &np).is_empty());
}

#[tokio::test]
async fn a_policy_left_by_an_earlier_claim_of_the_id_becomes_the_new_claims() {
    let api = FakeApi::new();
    let ctx = context(&api, NoTasks(Some(None)));
    let sched = scheduler(&api);
    // not yet collected: its owner, an earlier claim `c-1`, is gone
    api.with_store(|s| {
        s.put(
            &policies_path(),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "c-1-egress", "ownerReferences": [{"apiVersion":
                    "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox", "name": "c-1",
                    "uid": "uid-gone", "controller": true}]},
                "spec": {"podSelector": {"matchLabels": {ALLOCATED_TO_LABEL: "uid-gone"}},
                    "policyTypes": ["Egress"], "egress": []}}),
        )
    });
    let controller = batch_controller(&api, &ctx);
    let mut r = claim_request(Some(policy(
        pb::EgressAction::Deny,
        vec![rule(pb::EgressAction::Allow, "192.0.2.0/24", 0)],
    )));
    r.get_mut().claim_id = "c-1".into();
    sched.create_claim(r).await.expect("claim");
    controller.abort();
    let uid = api
        .with_store(|s| s.get(&batches_path(NS), "c-1").cloned())
        .expect("batch")["metadata"]["uid"]
        .clone();
    let np = network_policy(&api, "c-1").expect("policy");
    assert_eq!(np["metadata"]["ownerReferences"][0]["uid"], uid, "{np}");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"][ALLOCATED_TO_LABEL],
        uid
    );
    assert_eq!(
        np["spec"]["egress"],
        json!([{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}])
    );
}
