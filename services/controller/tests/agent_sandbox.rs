//! agent-sandbox at v1beta1 against the fake apiserver: claims by
//! `warmPoolRef`, the Sandbox's address (`podIPs`, headless Service,
//! `serviceFQDN`), suspension, and fields sandpool refuses by condition.

mod support;

use std::sync::Arc;

use kube::api::Api;
use sandpool_controller::agent_sandbox;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::pods::short_hash;
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, make_ready, pods_path};

const NS: &str = "sandpool";

fn setup() -> (FakeApi, Arc<Context>) {
    let api = FakeApi::new();
    let ctx = support::context(&api, NoTasks(None));
    (api, ctx)
}

fn ext(plural: &str) -> String {
    format!("/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/{NS}/{plural}")
}

fn sandboxes() -> String {
    format!("/apis/agents.x-k8s.io/v1beta1/namespaces/{NS}/sandboxes")
}

fn services() -> String {
    format!("/api/v1/namespaces/{NS}/services")
}

async fn get<
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
>(
    ctx: &Context,
    name: &str,
) -> Arc<K> {
    Arc::new(
        Api::<K>::namespaced(ctx.client.clone(), NS)
            .get(name)
            .await
            .expect("get"),
    )
}

fn pod_template() -> Value {
    json!({"metadata": {"labels": {"sandbox": "python-sandbox"}},
           "spec": {"containers": [{"name": "python-runtime", "image": "python-runtime-sandbox:latest",
                    "ports": [{"containerPort": 8888}, {"containerPort": 9090, "name": "grpc"}]}]}})
}

/// A template with `service: true` and two warm pools of it.
fn fixtures(api: &FakeApi) {
    api.with_store(|s| {
        s.put(&ext("sandboxtemplates"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": "python-template"},
            "spec": {"service": true, "podTemplate": pod_template()}}));
        for pool in ["python-pool", "other-pool"] {
            s.put(&ext("sandboxwarmpools"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
                "metadata": {"name": pool},
                "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "python-template"}}}));
        }
    });
}

fn put_claim(api: &FakeApi, name: &str, spec: Value) {
    api.with_store(|s| {
        s.put(
            &ext("sandboxclaims"),
            json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim",
            "metadata": {"name": name}, "spec": spec}),
        )
    });
}

fn put_sandbox(api: &FakeApi, name: &str, extra: Value) {
    let mut spec = json!({"podTemplate": pod_template()});
    if let (Some(m), Some(x)) = (spec.as_object_mut(), extra.as_object()) {
        m.extend(x.clone());
    }
    api.with_store(|s| {
        s.put(
            &sandboxes(),
            json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": name}, "spec": spec}),
        )
    });
}

async fn reconcile_pool(ctx: &Arc<Context>, name: &str) {
    agent_sandbox::reconcile_warm_pool(get::<SandboxWarmPool>(ctx, name).await, ctx.clone())
        .await
        .expect("warm pool");
}

/// The pool's Sandboxes (labelled as its members).
fn members(api: &FakeApi, pool: &str) -> Vec<Value> {
    let hash = short_hash(pool);
    api.with_store(|s| s.list(&sandboxes()))
        .into_iter()
        .filter(|o| o["metadata"]["labels"][WARM_POOL_LABEL] == hash.as_str())
        .collect()
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"].as_str().expect("name").to_string()
}

/// Fill the pool `pool` and make its Sandboxes Ready (their pods running
/// at 10.1.0.10, ...); their names.
async fn warm_up(api: &FakeApi, ctx: &Arc<Context>, pool: &str) -> Vec<String> {
    reconcile_pool(ctx, pool).await;
    let names: Vec<String> = members(api, pool).iter().map(name_of).collect();
    for (i, n) in names.iter().enumerate() {
        reconcile_sandbox(ctx, n).await;
        api.with_store(|s| make_ready(s, NS, n, &format!("10.1.0.{}", 10 + i), "node-a"));
        reconcile_sandbox(ctx, n).await;
    }
    reconcile_pool(ctx, pool).await;
    names
}

/// The Sandbox serving the claim `claim` (its status names it).
fn claimed(api: &FakeApi, claim: &str) -> Option<Value> {
    let c = obj(api, &ext("sandboxclaims"), claim)?;
    let name = c["metadata"]["annotations"][CLAIM_SANDBOX_ANNOTATION]
        .as_str()
        .unwrap_or(claim)
        .to_string();
    obj(api, &sandboxes(), &name)
}

async fn reconcile_claim(ctx: &Arc<Context>, name: &str) {
    agent_sandbox::reconcile_claim(get::<SandboxClaim>(ctx, name).await, ctx.clone())
        .await
        .expect("claim");
}

async fn reconcile_sandbox(ctx: &Arc<Context>, name: &str) {
    agent_sandbox::reconcile_sandbox(get::<Sandbox>(ctx, name).await, ctx.clone())
        .await
        .expect("sandbox");
}

fn obj(api: &FakeApi, coll: &str, name: &str) -> Option<Value> {
    api.with_store(|s| s.get(coll, name).cloned())
}

fn ready_condition(v: &Value) -> Value {
    v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or(Value::Null)
}

fn pods(api: &FakeApi) -> Vec<Value> {
    api.with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .collect()
}

#[tokio::test]
async fn a_warm_pool_holds_sandboxes_and_a_claim_adopts_one() {
    let (api, ctx) = setup();
    fixtures(&api);
    reconcile_pool(&ctx, "python-pool").await;
    // the pool's members are Sandboxes, as upstream's (the Sandbox
    // controller runs their pods)
    assert!(pods(&api).is_empty(), "no pods of the pool's own");
    let warm = members(&api, "python-pool");
    assert_eq!(warm.len(), 1);
    let w = &warm[0];
    assert_eq!(w["metadata"]["generateName"], "python-pool-");
    let labels = &w["metadata"]["labels"];
    assert_eq!(labels[TEMPLATE_HASH_LABEL], short_hash("python-template"));
    assert_eq!(labels[LAUNCH_TYPE_LABEL], "warm");
    assert_eq!(
        w["metadata"]["annotations"][TEMPLATE_REF_ANNOTATION],
        "python-template"
    );
    let owner = &w["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "SandboxWarmPool");
    assert_eq!(owner["name"], "python-pool");
    assert_eq!(owner["controller"], true);
    assert_eq!(w["spec"]["service"], true, "the template's blueprint");
    let warm_name = name_of(w);
    warm_up(&api, &ctx, "python-pool").await;
    warm_up(&api, &ctx, "other-pool").await;
    let pod = obj(&api, &pods_path(NS), &warm_name).expect("the warm Sandbox's pod");
    assert_eq!(
        pod["metadata"]["labels"][WARM_POOL_LABEL],
        short_hash("python-pool")
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Sandbox");
    let wp = obj(&api, &ext("sandboxwarmpools"), "python-pool").expect("pool");
    assert_eq!(wp["status"]["replicas"], 1);
    assert_eq!(wp["status"]["readyReplicas"], 1, "its Sandbox is Ready");

    assert_eq!(claim_c1(&api, &ctx).await, warm_name, "the claim names it");
    assert!(
        obj(&api, &sandboxes(), "c1").is_none(),
        "adopted, not created"
    );
    let sb = obj(&api, &sandboxes(), &warm_name).expect("sandbox");
    let owner = &sb["metadata"]["ownerReferences"];
    assert_eq!(owner.as_array().map(Vec::len), Some(1));
    assert_eq!(owner[0]["kind"], "SandboxClaim");
    assert_eq!(owner[0]["name"], "c1");
    assert_eq!(owner[0]["apiVersion"], "extensions.agents.x-k8s.io/v1beta1");
    assert!(sb["metadata"]["labels"].get(WARM_POOL_LABEL).is_none());
    assert!(
        sb["spec"]["podTemplate"]["metadata"]["labels"]
            .get(WARM_POOL_LABEL)
            .is_none()
    );
    let pod = obj(&api, &pods_path(NS), &warm_name).expect("pod");
    assert!(
        pod["metadata"]["labels"].get(WARM_POOL_LABEL).is_none(),
        "its pod left the pool too"
    );
    let adopt = api
        .requests()
        .into_iter()
        .find(|r| {
            r.method == http::Method::PATCH && r.path.ends_with(&format!("/sandboxes/{warm_name}"))
        })
        .expect("adoption patch");
    assert!(
        adopt.body["metadata"]["resourceVersion"].is_string(),
        "adoption is conditional"
    );
    // the pool refills
    reconcile_pool(&ctx, "python-pool").await;
    let refill = members(&api, "python-pool");
    assert_eq!(refill.len(), 1);
    assert_ne!(name_of(&refill[0]), warm_name);
}

/// The claim `c1` of `python-pool`, reconciled until it has its Sandbox;
/// that Sandbox's name (as the claim's annotation gives it).
async fn claim_c1(api: &FakeApi, ctx: &Arc<Context>) -> String {
    put_claim(api, "c1", json!({"warmPoolRef": {"name": "python-pool"}}));
    reconcile_claim(ctx, "c1").await; // finalizer
    reconcile_claim(ctx, "c1").await;
    let claim = obj(api, &ext("sandboxclaims"), "c1").expect("claim");
    claim["metadata"]["annotations"][CLAIM_SANDBOX_ANNOTATION]
        .as_str()
        .expect("the claim names its Sandbox")
        .to_string()
}

#[tokio::test]
async fn an_adopted_sandbox_reports_the_address_and_the_claim_forwards_it() {
    let (api, ctx) = setup();
    fixtures(&api);
    warm_up(&api, &ctx, "python-pool").await;
    warm_up(&api, &ctx, "other-pool").await;
    let warm_name = claim_c1(&api, &ctx).await;
    assert!(warm_name.starts_with("python-pool-"), "{warm_name}");
    let c1 = warm_name.as_str();
    reconcile_sandbox(&ctx, c1).await;
    let sb = obj(&api, &sandboxes(), c1).expect("sandbox");
    let pod_name = warm_name.clone();
    let pod = obj(&api, &pods_path(NS), &pod_name).expect("pod");
    let ip = pod["status"]["podIP"].clone();
    let hash = short_hash(c1);
    assert_eq!(sb["status"]["podIPs"], json!([ip]));
    assert_eq!(sb["status"]["nodeName"], "node-a");
    assert_eq!(
        sb["status"]["selector"],
        format!("agents.x-k8s.io/sandbox-name-hash={hash}")
    );
    assert_eq!(sb["status"]["service"], c1);
    assert_eq!(
        sb["status"]["serviceFQDN"],
        format!("{c1}.sandpool.svc.cluster.local")
    );
    assert_eq!(sb["status"]["replicas"], 1);
    assert_eq!(ready_condition(&sb)["status"], "True");
    assert_eq!(ready_condition(&sb)["reason"], "DependenciesReady");
    // the headless Service selects the pod by its name-hash label
    let svc = obj(&api, &services(), c1).expect("service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(
        svc["spec"]["selector"],
        json!({"agents.x-k8s.io/sandbox-name-hash": hash})
    );
    assert_eq!(pod["metadata"]["labels"][SANDBOX_NAME_HASH_LABEL], hash);
    assert_eq!(
        svc["spec"]["ports"],
        json!([
            {"name": "p-8888-tcp", "protocol": "TCP", "port": 8888, "targetPort": 8888},
            {"name": "grpc", "protocol": "TCP", "port": 9090, "targetPort": 9090},
        ])
    );
    assert_eq!(svc["metadata"]["ownerReferences"][0]["kind"], "Sandbox");
    assert_eq!(
        svc["metadata"]["ownerReferences"][0]["apiVersion"],
        "agents.x-k8s.io/v1beta1"
    );

    reconcile_claim(&ctx, "c1").await;
    let claim = obj(&api, &ext("sandboxclaims"), "c1").expect("claim");
    assert_eq!(ready_condition(&claim)["status"], "True");
    assert_eq!(
        ready_condition(&claim)["reason"],
        "DependenciesReady",
        "the Sandbox's Ready condition, forwarded"
    );
    assert_eq!(
        claim["status"]["sandbox"],
        json!({"name": c1, "podIPs": [ip]})
    );
    // the controllers spoke v1beta1
    let paths: Vec<String> = api
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.contains("agents.x-k8s.io"))
        .collect();
    assert!(!paths.is_empty());
    assert!(paths.iter().all(|p| p.contains("/v1beta1/")), "{paths:#?}");
}

#[tokio::test]
async fn a_claim_of_a_missing_warm_pool_says_so() {
    let (api, ctx) = setup();
    put_claim(&api, "c", json!({"warmPoolRef": {"name": "nope"}}));
    reconcile_claim(&ctx, "c").await;
    reconcile_claim(&ctx, "c").await;
    let claim = obj(&api, &ext("sandboxclaims"), "c").expect("claim");
    let cond = ready_condition(&claim);
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "WarmPoolNotFound");
    assert!(cond["message"].as_str().is_some_and(|m| m.contains("nope")));
    assert!(obj(&api, &sandboxes(), "c").is_none());
    let warned = api
        .with_store(|s| s.list(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")))
        .iter()
        .any(|e| e["type"] == "Warning" && e["reason"] == "WarmPoolNotFound");
    assert!(warned, "a Warning event as well as the condition");
}

#[tokio::test]
async fn a_suspended_sandbox_has_no_pod_and_resumes() {
    for (name, suspend) in [
        ("s1", json!({"operatingMode": "Suspended"})),
        ("s2", json!({"replicas": 0})),
    ] {
        let (api, ctx) = setup();
        put_sandbox(&api, name, suspend);
        reconcile_sandbox(&ctx, name).await;
        assert!(pods(&api).is_empty(), "{name}: no pod while suspended");
        let sb = obj(&api, &sandboxes(), name).expect("sandbox");
        assert_eq!(ready_condition(&sb)["reason"], "SandboxSuspended");
        let suspended = sb["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Suspended")
            .cloned()
            .expect("Suspended condition");
        assert_eq!(suspended["status"], "True", "{name}");
        assert_eq!(sb["status"]["replicas"], 0);

        // resume: a pod is created; suspend again: it is deleted
        api.with_store(|s| {
            s.mutate(&sandboxes(), name, |o| {
                o["spec"]["operatingMode"] = json!("Running");
                o["spec"]["replicas"] = json!(1);
            })
        });
        reconcile_sandbox(&ctx, name).await;
        assert_eq!(pods(&api).len(), 1, "{name}: resumed");
        api.with_store(|s| make_ready(s, NS, name, "10.1.0.7", "node-a"));
        reconcile_sandbox(&ctx, name).await;
        let sb = obj(&api, &sandboxes(), name).expect("sandbox");
        assert_eq!(sb["status"]["podIPs"], json!(["10.1.0.7"]));
        assert_eq!(ready_condition(&sb)["status"], "True");
        api.with_store(|s| {
            s.mutate(&sandboxes(), name, |o| {
                o["spec"]["operatingMode"] = json!("Suspended")
            })
        });
        reconcile_sandbox(&ctx, name).await;
        assert!(pods(&api).is_empty(), "{name}: suspended again");
        let sb = obj(&api, &sandboxes(), name).expect("sandbox");
        assert!(sb["status"]["podIPs"].is_null(), "{name}: {sb}");
        assert!(sb["status"]["podName"].is_null(), "{name}: {sb}");
        assert_eq!(sb["status"]["conditions"][1]["type"], "Suspended");
        assert_eq!(sb["status"]["conditions"][1]["status"], "True");
    }
}

fn claim_obj(api: &FakeApi, name: &str) -> Option<Value> {
    obj(api, &ext("sandboxclaims"), name)
}

fn condition_of(v: &Value, type_: &str) -> Value {
    v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn additional_pod_metadata_reaches_warm_and_cold_pods_and_restricted_keys_are_refused() {
    let (api, ctx) = setup();
    fixtures(&api);
    let warm = warm_up(&api, &ctx, "python-pool").await.remove(0);
    let extra = json!({"labels": {"sandbox.users.io/user": "u1"},
        "annotations": {"note": "for u1", "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}});
    put_claim(
        &api,
        "warm",
        json!({"warmPoolRef": {"name": "python-pool"}, "additionalPodMetadata": extra}),
    );
    put_claim(
        &api,
        "cold",
        json!({"sandboxTemplateRef": {"name": "python-template"}, "warmpool": "none",
               "additionalPodMetadata": extra}),
    );
    for c in ["warm", "cold"] {
        reconcile_claim(&ctx, c).await; // finalizer
        reconcile_claim(&ctx, c).await;
        let sb = name_of(&claimed(&api, c).expect("sandbox"));
        reconcile_sandbox(&ctx, &sb).await;
    }
    let adopted = obj(&api, &pods_path(NS), &warm).expect("warm pod");
    let cold = obj(&api, &pods_path(NS), "cold").expect("cold pod");
    for (which, p) in [("warm", &adopted), ("cold", &cold)] {
        let meta = &p["metadata"];
        assert_eq!(
            meta["labels"]["sandbox.users.io/user"], "u1",
            "{which}: {meta}"
        );
        assert_eq!(meta["annotations"]["note"], "for u1", "{which}");
        assert_eq!(
            meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"], "false",
            "{which}"
        );
        // the template's own labels stay
        assert_eq!(meta["labels"]["sandbox"], "python-sandbox", "{which}");
        let sb = claimed(&api, which).expect("sandbox");
        assert_eq!(
            sb["spec"]["podTemplate"]["metadata"]["labels"]["sandbox.users.io/user"],
            "u1"
        );
    }

    for (name, bad) in [
        ("no-domain", json!({"labels": {"user": "u1"}})),
        (
            "system",
            json!({"annotations": {"agents.x-k8s.io/pod-name": "x"}}),
        ),
        ("override", json!({"labels": {"sandbox": "other"}})),
    ] {
        put_claim(
            &api,
            name,
            json!({"warmPoolRef": {"name": "python-pool"}, "additionalPodMetadata": bad}),
        );
        reconcile_claim(&ctx, name).await;
        reconcile_claim(&ctx, name).await;
        let cond = ready_condition(&claim_obj(&api, name).expect("claim"));
        assert_eq!(cond["reason"], "InvalidMetadata", "{name}: {cond}");
        assert!(
            obj(&api, &sandboxes(), name).is_none(),
            "{name}: no sandbox"
        );
    }
}

/// A claim with `lifecycle`, reconciled until it has its Sandbox.
async fn claim_with_sandbox(api: &FakeApi, ctx: &Arc<Context>, name: &str, lifecycle: Value) {
    put_claim(
        api,
        name,
        json!({"warmPoolRef": {"name": "python-pool"}, "lifecycle": lifecycle}),
    );
    reconcile_claim(ctx, name).await; // finalizer
    reconcile_claim(ctx, name).await;
    assert!(claimed(api, name).is_some(), "{name}: sandbox");
}

fn set_lifecycle(api: &FakeApi, name: &str, lifecycle: Value) {
    api.with_store(|s| {
        s.mutate(&ext("sandboxclaims"), name, |o| {
            o["spec"]["lifecycle"] = lifecycle
        })
    });
}

#[tokio::test]
async fn an_expired_claim_is_retained_by_default_without_its_sandbox() {
    let (api, ctx) = setup();
    fixtures(&api);
    for (name, policy) in [("default", json!(null)), ("retain", json!("Retain"))] {
        let future = json!({"shutdownTime": "2100-01-01T00:00:00Z", "shutdownPolicy": policy});
        claim_with_sandbox(&api, &ctx, name, future).await;
        let past = json!({"shutdownTime": "2020-01-01T00:00:00Z", "shutdownPolicy": policy});
        set_lifecycle(&api, name, past);
        reconcile_claim(&ctx, name).await;
        reconcile_claim(&ctx, name).await;
        let claim = claim_obj(&api, name).expect("the claim is retained");
        let cond = ready_condition(&claim);
        assert_eq!(cond["status"], "False", "{name}");
        assert_eq!(cond["reason"], "ClaimExpired", "{name}: {cond}");
        assert!(claim["status"]["sandbox"].is_null(), "{name}: {claim}");
        assert!(
            obj(&api, &sandboxes(), name).is_none(),
            "{name}: the sandbox is deleted"
        );
    }
}

#[tokio::test]
async fn delete_policies_delete_an_expired_claim() {
    let (api, ctx) = setup();
    fixtures(&api);
    for (name, policy) in [("del", "Delete"), ("fg", "DeleteForeground")] {
        let future = json!({"shutdownTime": "2100-01-01T00:00:00Z", "shutdownPolicy": policy});
        claim_with_sandbox(&api, &ctx, name, future).await;
        let past = json!({"shutdownTime": "2020-01-01T00:00:00Z", "shutdownPolicy": policy});
        set_lifecycle(&api, name, past);
        reconcile_claim(&ctx, name).await; // deletes it
        if claim_obj(&api, name).is_some() {
            reconcile_claim(&ctx, name).await; // the finalizer's cleanup
        }
        assert!(claim_obj(&api, name).is_none(), "{name}: claim deleted");
        assert!(obj(&api, &sandboxes(), name).is_none(), "{name}");
    }
}

#[tokio::test]
async fn ttl_seconds_after_finished_counts_from_the_sandbox_finishing() {
    let (api, ctx) = setup();
    fixtures(&api);
    let life = |ttl: i64| json!({"ttlSecondsAfterFinished": ttl, "shutdownPolicy": "Delete"});
    claim_with_sandbox(&api, &ctx, "t", life(3600)).await;
    reconcile_sandbox(&ctx, "t").await;
    api.with_store(|s| make_ready(s, NS, "t", "10.1.0.20", "node-a"));
    reconcile_sandbox(&ctx, "t").await;
    reconcile_claim(&ctx, "t").await;
    let claim = claim_obj(&api, "t").expect("claim");
    assert!(
        condition_of(&claim, "Finished").is_null(),
        "running: {claim}"
    );

    api.with_store(|s| {
        s.mutate(&pods_path(NS), "t", |o| {
            o["status"]["phase"] = json!("Succeeded")
        })
    });
    reconcile_sandbox(&ctx, "t").await;
    let sb = obj(&api, &sandboxes(), "t").expect("sandbox");
    let finished = condition_of(&sb, "Finished");
    assert_eq!(finished["status"], "True", "{sb}");
    assert_eq!(finished["reason"], "PodSucceeded");
    reconcile_claim(&ctx, "t").await;
    reconcile_claim(&ctx, "t").await;
    let claim = claim_obj(&api, "t").expect("within its ttl the claim stays");
    assert_eq!(
        condition_of(&claim, "Finished")["reason"],
        "PodSucceeded",
        "mirrored: {claim}"
    );

    set_lifecycle(&api, "t", life(0));
    reconcile_claim(&ctx, "t").await;
    if claim_obj(&api, "t").is_some() {
        reconcile_claim(&ctx, "t").await;
    }
    assert!(claim_obj(&api, "t").is_none(), "deleted at its ttl");
}

fn network_policies() -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies")
}

async fn reconcile_template(ctx: &Arc<Context>, name: &str) {
    agent_sandbox::reconcile_template(get::<SandboxTemplate>(ctx, name).await, ctx.clone())
        .await
        .expect("template");
}

#[tokio::test]
async fn a_template_network_policy_becomes_an_owned_network_policy_selecting_its_pods() {
    let (api, ctx) = setup();
    fixtures(&api);
    let ingress = json!([{"from": [{"podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}]);
    let egress = json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]);
    api.with_store(|s| {
        s.mutate(&ext("sandboxtemplates"), "python-template", |t| {
            t["spec"]["networkPolicy"] = json!({"ingress": ingress, "egress": egress})
        })
    });
    reconcile_template(&ctx, "python-template").await;
    let np = obj(&api, &network_policies(), "python-template-network-policy")
        .expect("network policy created");
    let hash = agent_sandbox::template_hash("python-template");
    assert_eq!(
        np["spec"]["podSelector"],
        json!({"matchLabels": {TEMPLATE_HASH_LABEL: hash}})
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(np["spec"]["ingress"], ingress);
    assert_eq!(np["spec"]["egress"], egress);
    let owner = &np["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "SandboxTemplate");
    assert_eq!(owner["name"], "python-template");
    assert_eq!(owner["controller"], true);

    // claims of the template are served, and a cold sandbox's pod carries
    // the label the policy selects
    put_claim(&api, "np", json!({"warmPoolRef": {"name": "python-pool"}}));
    reconcile_claim(&ctx, "np").await;
    reconcile_claim(&ctx, "np").await;
    let sb = obj(&api, &sandboxes(), "np").expect("sandbox created");
    assert_eq!(
        sb["spec"]["podTemplate"]["metadata"]["labels"][TEMPLATE_HASH_LABEL],
        json!(hash)
    );
    reconcile_sandbox(&ctx, "np").await;
    let pod = obj(&api, &pods_path(NS), "np").expect("cold pod");
    assert_eq!(pod["metadata"]["labels"][TEMPLATE_HASH_LABEL], json!(hash));

    // a changed policy is updated in place
    api.with_store(|s| {
        s.mutate(&ext("sandboxtemplates"), "python-template", |t| {
            t["spec"]["networkPolicy"] = json!({"ingress": []})
        })
    });
    reconcile_template(&ctx, "python-template").await;
    let np = obj(&api, &network_policies(), "python-template-network-policy").expect("kept");
    assert_eq!(np["spec"]["ingress"], json!([]));
    assert!(np["spec"].get("egress").is_none(), "{np}");

    // Unmanaged: the template's policy is removed
    api.with_store(|s| {
        s.mutate(&ext("sandboxtemplates"), "python-template", |t| {
            t["spec"]["networkPolicyManagement"] = json!("Unmanaged")
        })
    });
    reconcile_template(&ctx, "python-template").await;
    assert!(obj(&api, &network_policies(), "python-template-network-policy").is_none());
}

#[tokio::test]
async fn retain_keeps_an_expired_sandbox_without_its_pod() {
    let (api, ctx) = setup();
    put_sandbox(&api, "r", json!({"service": true}));
    reconcile_sandbox(&ctx, "r").await;
    assert_eq!(pods(&api).len(), 1);
    assert!(obj(&api, &services(), "r").is_some());
    api.with_store(|s| {
        s.mutate(&sandboxes(), "r", |o| {
            o["spec"]["shutdownTime"] = json!("2020-01-01T00:00:00Z");
            o["spec"]["shutdownPolicy"] = json!("Retain");
        })
    });
    reconcile_sandbox(&ctx, "r").await;
    let sb = obj(&api, &sandboxes(), "r").expect("retained");
    assert_eq!(ready_condition(&sb)["reason"], "SandboxExpired");
    assert!(pods(&api).is_empty());
    assert!(obj(&api, &services(), "r").is_none());
    assert!(sb["status"].get("serviceFQDN").is_none_or(Value::is_null));
}

#[tokio::test]
async fn objects_written_at_v1alpha1_are_served_at_v1beta1() {
    // the fake stores both versions in one place as the apiserver does with
    // conversion strategy None; a v1alpha1 claim (sandboxTemplateRef) is
    // reconciled through the v1beta1 API
    let (api, ctx) = setup();
    fixtures(&api);
    warm_up(&api, &ctx, "python-pool").await;
    api.with_store(|s| {
        s.put(&support::cr_path("extensions.agents.x-k8s.io", "sandboxclaims", NS),
            json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxClaim",
                   "metadata": {"name": "old"}, "spec": {"sandboxTemplateRef": {"name": "python-template"}, "warmpool": "none"}}))
    });
    let got = api.with_store(|s| s.get(&ext("sandboxclaims"), "old").cloned());
    assert!(got.is_some(), "one storage for both versions");
    reconcile_claim(&ctx, "old").await;
    reconcile_claim(&ctx, "old").await;
    let sb = obj(&api, &sandboxes(), "old").expect("sandbox");
    assert_eq!(
        sb["metadata"]["labels"][LAUNCH_TYPE_LABEL], "cold",
        "warmpool: none starts cold"
    );
    assert_eq!(pods(&api).len(), 1, "the warm pod stays in its pool");
    reconcile_sandbox(&ctx, "old").await;
    assert!(obj(&api, &pods_path(NS), "old").is_some(), "a cold pod");
}

/// The runtime's command line in pod `p`.
fn runtime_command(p: &Value) -> Vec<String> {
    serde_json::from_value(p["spec"]["containers"][0]["command"].clone()).expect("command")
}

#[tokio::test]
async fn sandpool_serves_the_sdk_runtime_api_on_8888_only_when_the_template_asks() {
    let (api, ctx) = setup();
    fixtures(&api);
    warm_up(&api, &ctx, "python-pool").await;
    let all = pods(&api);
    assert_eq!(all.len(), 1);
    // the image serves 8888 itself: its container is left alone
    let main = &all[0]["spec"]["containers"][0];
    assert!(main.get("command").is_none(), "warm pod: {main}");
    assert_eq!(main["image"], "python-runtime-sandbox:latest");
    // its 8888 is untokened too: the chart's NetworkPolicy selects it
    assert_eq!(all[0]["metadata"]["labels"][ASB_LABEL], "true");

    for (name, meta) in [
        ("by-label", json!({"labels": {ASB_LABEL: "true"}})),
        ("by-annotation", json!({"annotations": {ASB_LABEL: "true"}})),
        ("opted-out", json!({"annotations": {ASB_LABEL: "false"}})),
    ] {
        let mut tpl = pod_template();
        tpl["metadata"] = meta;
        api.with_store(|s| {
            s.put(
                &sandboxes(),
                json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
                "metadata": {"name": name}, "spec": {"podTemplate": tpl}}),
            )
        });
        reconcile_sandbox(&ctx, name).await;
    }
    put_sandbox(&api, "plain", json!({}));
    reconcile_sandbox(&ctx, "plain").await;
    for name in ["by-label", "by-annotation"] {
        let p = obj(&api, &pods_path(NS), name).expect("pod");
        let cmd = runtime_command(&p);
        // and sandboxd's two ports (the SDK's sandboxd configurations)
        for flag in [
            "--asb-listen=0.0.0.0:8888",
            "--sandboxd-listen=0.0.0.0:8080",
            "--sandboxd-grpc-listen=0.0.0.0:9090",
        ] {
            assert!(cmd.contains(&flag.to_string()), "{name}: {cmd:?}");
        }
        assert_eq!(p["metadata"]["labels"][ASB_LABEL], "true", "{name}");
    }
    for name in ["opted-out", "plain"] {
        let p = obj(&api, &pods_path(NS), name).expect("pod");
        assert!(
            p["spec"]["containers"][0].get("command").is_none(),
            "{name}: {p}"
        );
    }
}

const ASB_LABEL: &str = "sandpool.io/agent-sandbox-api";

/// A container that brings its own command, args and probes on its own
/// ports.
fn own_server_template() -> Value {
    json!({"spec": {"containers": [{"name": "server", "image": "python:3.12-slim",
        "command": ["python3", "-m", "http.server"], "args": ["8888", "--bind", "0.0.0.0"],
        "ports": [{"containerPort": 8888}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8888}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8888}, "periodSeconds": 10},
        "startupProbe": {"httpGet": {"path": "/", "port": 8888}, "failureThreshold": 30}}]}})
}

/// The runtime's native sidecar of pod `p` (the first init container).
fn runtime_sidecar(p: &Value) -> &Value {
    let init = &p["spec"]["initContainers"][0];
    assert_eq!(init["name"], "sandpool-runtime", "{p}");
    init
}

#[tokio::test]
async fn pods_that_bring_their_own_command_keep_it_with_the_runtime_beside_them() {
    let (api, ctx) = setup();
    let tpl = own_server_template();
    api.with_store(|s| {
        s.put(&ext("sandboxtemplates"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxTemplate",
            "metadata": {"name": "own"}, "spec": {"podTemplate": tpl}}));
        s.put(&ext("sandboxwarmpools"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
            "metadata": {"name": "own-pool"}, "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "own"}}}));
        s.put(&sandboxes(), json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "own-cold"}, "spec": {"podTemplate": tpl}}));
    });
    warm_up(&api, &ctx, "own-pool").await;
    reconcile_sandbox(&ctx, "own-cold").await;
    let cold = obj(&api, &pods_path(NS), "own-cold").expect("cold pod");
    let warm = pods(&api)
        .into_iter()
        .find(|p| p["metadata"]["name"] != "own-cold")
        .expect("warm pod");
    let written = &tpl["spec"]["containers"][0];
    for p in [&warm, &cold] {
        let main = &p["spec"]["containers"][0];
        // command, args, ports and all three probes exactly as written
        assert_eq!(main, written, "the container is kept as written");
        let sidecar = runtime_sidecar(p);
        assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
        assert_eq!(sidecar["command"][0], "/sandpool-runtime");
        assert_eq!(sidecar["ports"][0]["containerPort"], 44772);
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], 44772);
        assert!(
            !sidecar["command"].to_string().contains("--asb-listen"),
            "the image serves 8888, not sandpool"
        );
        let token = sidecar["env"][0]["value"].as_str().expect("token");
        assert_eq!(sidecar["env"][0]["name"], "EXECD_ACCESS_TOKEN");
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(p.clone()).expect("pod");
        assert_eq!(sandpool_controller::pods::access_token(&pod), Some(token));
    }

    // asked for sandpool's API: the runtime wraps the command, args kept in order
    let mut asked = tpl.clone();
    asked["metadata"] = json!({"labels": {ASB_LABEL: "true"}});
    api.with_store(|s| {
        s.put(
            &sandboxes(),
            json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "wrapped"}, "spec": {"podTemplate": asked}}),
        )
    });
    reconcile_sandbox(&ctx, "wrapped").await;
    let p = obj(&api, &pods_path(NS), "wrapped").expect("pod");
    let cmd = runtime_command(&p);
    let at = cmd.iter().position(|a| a == "--").expect("--");
    assert_eq!(
        cmd[at + 1..],
        ["python3", "-m", "http.server", "8888", "--bind", "0.0.0.0"]
    );
    let main = &p["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(main[probe], written[probe], "{probe} kept");
    }
}

#[tokio::test]
async fn a_warm_pool_reports_its_selector_and_observed_generation() {
    let (api, ctx) = setup();
    fixtures(&api);
    api.with_store(|s| {
        s.mutate(&ext("sandboxwarmpools"), "python-pool", |o| {
            o["metadata"]["generation"] = json!(3)
        })
    });
    warm_up(&api, &ctx, "python-pool").await;
    warm_up(&api, &ctx, "other-pool").await;
    let wp = obj(&api, &ext("sandboxwarmpools"), "python-pool").expect("pool");
    let selector = wp["status"]["selector"].as_str().expect("selector");
    assert_eq!(wp["status"]["observedGeneration"], 3);
    // the selector finds exactly the pool's Sandboxes and their pods (what
    // HPA/KEDA count), as upstream's
    assert_eq!(
        selector,
        format!(
            "agents.x-k8s.io/warm-pool-sandbox={}",
            short_hash("python-pool")
        )
    );
    let (key, value) = selector.split_once('=').expect("key=value");
    for coll in [sandboxes(), pods_path(NS)] {
        let matching: Vec<Value> = api
            .with_store(|s| s.list(&coll))
            .into_iter()
            .filter(|p| p["metadata"]["labels"][key] == value)
            .collect();
        assert_eq!(matching.len(), 1, "{coll}: {selector}");
    }
    let other = obj(&api, &ext("sandboxwarmpools"), "other-pool").expect("pool");
    assert_ne!(other["status"]["selector"], wp["status"]["selector"]);
}

fn pvcs() -> String {
    format!("/api/v1/namespaces/{NS}/persistentvolumeclaims")
}

#[tokio::test]
async fn volume_claim_templates_become_owned_pvcs_mounted_into_the_pod() {
    let (api, ctx) = setup();
    let mut tpl = pod_template();
    tpl["spec"]["volumes"] =
        json!([{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]);
    api.with_store(|s| {
        s.put(
            &sandboxes(),
            json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "vol"}, "spec": {"podTemplate": tpl,
            "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"team": "a"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        )
    });
    reconcile_sandbox(&ctx, "vol").await;
    let pvc = obj(&api, &pvcs(), "data-vol").expect("PVC <template>-<sandbox> created");
    assert_eq!(pvc["metadata"]["labels"]["team"], "a");
    assert_eq!(
        pvc["metadata"]["labels"][SANDBOX_NAME_HASH_LABEL],
        json!(short_hash("vol"))
    );
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
    let owner = &pvc["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Sandbox"), Some("vol"))
    );
    assert_eq!(owner["controller"], true);

    let pod = obj(&api, &pods_path(NS), "vol").expect("pod started");
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let data: Vec<&Value> = volumes.iter().filter(|v| v["name"] == "data").collect();
    assert_eq!(data.len(), 1, "{volumes:?}");
    assert_eq!(data[0]["persistentVolumeClaim"]["claimName"], "data-vol");
    assert!(
        volumes.iter().any(|v| v["name"] == "tmp"),
        "other volumes kept"
    );
    let sb = obj(&api, &sandboxes(), "vol").expect("sandbox");
    assert_ne!(ready_condition(&sb)["reason"], "UnsupportedField");

    // suspended: the pod goes, the PVC stays
    api.with_store(|s| {
        s.mutate(&sandboxes(), "vol", |sb| {
            sb["spec"]["operatingMode"] = json!("Suspended")
        })
    });
    reconcile_sandbox(&ctx, "vol").await;
    assert!(
        obj(&api, &pvcs(), "data-vol").is_some(),
        "kept while suspended"
    );

    // a PVC of that name that another owner controls is not used
    api.with_store(|s| {
        s.put(
            &sandboxes(),
            json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "other"}, "spec": {"podTemplate": pod_template(),
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}}),
        );
        s.put(
            &pvcs(),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-other"}, "spec": {}}),
        );
    });
    let r =
        agent_sandbox::reconcile_sandbox(get::<Sandbox>(&ctx, "other").await, ctx.clone()).await;
    assert!(r.is_err(), "a foreign PVC is refused");
    assert!(obj(&api, &pods_path(NS), "other").is_none());
}

fn set_env_policy(api: &FakeApi, policy: &str) {
    api.with_store(|s| {
        s.mutate(&ext("sandboxtemplates"), "python-template", |t| {
            t["spec"]["envVarsInjectionPolicy"] = json!(policy);
            t["spec"]["podTemplate"]["spec"]["containers"][0]["env"] =
                json!([{"name": "MODE", "value": "template"}]);
        })
    });
}

/// Reconcile the claim `name` with `env` twice; its Ready reason.
async fn claim_with_env(api: &FakeApi, ctx: &Arc<Context>, name: &str, env: Value) -> Value {
    put_claim(
        api,
        name,
        json!({"warmPoolRef": {"name": "python-pool"}, "env": env}),
    );
    reconcile_claim(ctx, name).await;
    reconcile_claim(ctx, name).await;
    let claim = obj(api, &ext("sandboxclaims"), name).expect("claim");
    ready_condition(&claim)["reason"].clone()
}

fn sandbox_env(api: &FakeApi, name: &str) -> Value {
    let sb = obj(api, &sandboxes(), name).expect("sandbox created");
    sb["spec"]["podTemplate"]["spec"]["containers"][0]["env"].clone()
}

#[tokio::test]
async fn claim_env_follows_the_templates_injection_policy() {
    let (api, ctx) = setup();
    fixtures(&api);
    let warm_name = warm_up(&api, &ctx, "python-pool").await.remove(0);

    // unset policy is Disallowed
    set_env_policy(&api, "Disallowed");
    api.with_store(|s| {
        s.mutate(&ext("sandboxtemplates"), "python-template", |t| {
            t["spec"]
                .as_object_mut()
                .map(|m| m.remove("envVarsInjectionPolicy"));
        })
    });
    let reason = claim_with_env(&api, &ctx, "none", json!([{"name": "A", "value": "1"}])).await;
    assert_eq!(reason, "EnvVarsInjectionRejected");
    assert!(obj(&api, &sandboxes(), "none").is_none());

    // Allowed: new variables are added, an existing one is not overridden
    set_env_policy(&api, "Allowed");
    let reason = claim_with_env(&api, &ctx, "add", json!([{"name": "A", "value": "1"}])).await;
    assert_ne!(reason, "EnvVarsInjectionRejected");
    assert_eq!(
        sandbox_env(&api, "add"),
        json!([{"name": "MODE", "value": "template"}, {"name": "A", "value": "1"}])
    );
    let sb = obj(&api, &sandboxes(), "add").expect("sandbox");
    assert_eq!(
        sb["metadata"]["labels"][LAUNCH_TYPE_LABEL], "cold",
        "a claim with env starts cold, the warm sandbox stays warm"
    );
    assert_eq!(members(&api, "python-pool").len(), 1);
    assert!(
        obj(&api, &pods_path(NS), &warm_name)
            .is_some_and(|p| p["metadata"]["labels"].get(WARM_POOL_LABEL).is_some())
    );
    let reason = claim_with_env(
        &api,
        &ctx,
        "clash",
        json!([{"name": "MODE", "value": "claim"}]),
    )
    .await;
    assert_eq!(reason, "EnvVarsInjectionRejected");
    assert!(obj(&api, &sandboxes(), "clash").is_none());

    // Overrides: an existing variable is replaced
    set_env_policy(&api, "Overrides");
    let reason = claim_with_env(
        &api,
        &ctx,
        "over",
        json!([{"name": "MODE", "value": "claim"}]),
    )
    .await;
    assert_ne!(reason, "EnvVarsInjectionRejected");
    assert_eq!(
        sandbox_env(&api, "over"),
        json!([{"name": "MODE", "value": "claim"}])
    );

    // a containerName that does not exist is rejected
    let reason = claim_with_env(
        &api,
        &ctx,
        "nowhere",
        json!([{"name": "B", "value": "2", "containerName": "missing"}]),
    )
    .await;
    assert_eq!(reason, "EnvVarsInjectionRejected");
}

fn vct(name: &str, size: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"resources": {"requests": {"storage": size}}}})
}

/// Reconcile the claim `name` with `vcts` twice; its Ready reason and the
/// volume claim templates of its Sandbox (`Null` without one).
async fn claim_with_vcts(
    api: &FakeApi,
    ctx: &Arc<Context>,
    name: &str,
    vcts: Value,
) -> (Value, Value) {
    put_claim(
        api,
        name,
        json!({"warmPoolRef": {"name": "python-pool"}, "volumeClaimTemplates": vcts}),
    );
    reconcile_claim(ctx, name).await;
    reconcile_claim(ctx, name).await;
    let claim = obj(api, &ext("sandboxclaims"), name).expect("claim");
    let sb = obj(api, &sandboxes(), name).map(|s| s["spec"]["volumeClaimTemplates"].clone());
    (
        ready_condition(&claim)["reason"].clone(),
        sb.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn template_and_claim_volume_claim_templates_follow_the_templates_policy() {
    let (api, ctx) = setup();
    fixtures(&api);
    warm_up(&api, &ctx, "python-pool").await;
    api.with_store(|s| {
        s.mutate(&ext("sandboxtemplates"), "python-template", |t| {
            t["spec"]["volumeClaimTemplates"] = json!([vct("data", "1Gi")])
        })
    });

    // the template's templates reach the claim's Sandbox, which starts cold
    let (reason, vcts) = claim_with_vcts(&api, &ctx, "tpl", json!([])).await;
    assert_ne!(reason, "UnsupportedField");
    assert_eq!(vcts, json!([vct("data", "1Gi")]));
    let sb = obj(&api, &sandboxes(), "tpl").expect("sandbox");
    assert_eq!(
        sb["metadata"]["labels"][LAUNCH_TYPE_LABEL], "cold",
        "the warm Sandbox lacks the template's new volumes: cold"
    );
    reconcile_sandbox(&ctx, "tpl").await;
    assert!(
        obj(&api, &pvcs(), "data-tpl").is_some(),
        "PVC <template>-<claim>"
    );

    // the claim's: Disallowed by default
    let (reason, vcts) = claim_with_vcts(&api, &ctx, "no", json!([vct("scratch", "2Gi")])).await;
    assert_eq!(reason, "VolumeClaimTemplatesRejected");
    assert_eq!(vcts, Value::Null);

    let set_policy = |p: &str| {
        api.with_store(|s| {
            s.mutate(&ext("sandboxtemplates"), "python-template", |t| {
                t["spec"]["volumeClaimTemplatesPolicy"] = json!(p)
            })
        })
    };
    set_policy("Allowed");
    let (_, vcts) = claim_with_vcts(&api, &ctx, "add", json!([vct("scratch", "2Gi")])).await;
    assert_eq!(vcts, json!([vct("data", "1Gi"), vct("scratch", "2Gi")]));
    let (reason, vcts) = claim_with_vcts(&api, &ctx, "clash", json!([vct("data", "5Gi")])).await;
    assert_eq!(reason, "VolumeClaimTemplatesRejected");
    assert_eq!(vcts, Value::Null);

    set_policy("Overrides");
    let (_, vcts) = claim_with_vcts(&api, &ctx, "over", json!([vct("data", "5Gi")])).await;
    assert_eq!(vcts, json!([vct("data", "5Gi")]));
}

/// A request to the fake as an autoscaler makes it (not the controller's,
/// so not checked against the chart's Role): status and JSON body.
async fn call(api: &FakeApi, method: &str, path: &str, ct: &str, body: Value) -> (u16, Value) {
    use http_body_util::BodyExt;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(kube::client::Body::from(
            serde_json::to_vec(&body).expect("json"),
        ))
        .expect("request");
    let resp = api.handle(req).await;
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_warm_pool_scales_through_its_scale_subresource_and_its_sandboxes_follow() {
    let (api, ctx) = setup();
    fixtures(&api);
    warm_up(&api, &ctx, "python-pool").await;
    let scale = format!("{}/python-pool/scale", ext("sandboxwarmpools"));
    let (code, got) = call(&api, "GET", &scale, "application/json", Value::Null).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["apiVersion"], "autoscaling/v1");
    assert_eq!(got["kind"], "Scale");
    assert_eq!(got["spec"]["replicas"], 1);
    assert_eq!(got["status"]["replicas"], 1);
    // labelSelectorPath: the pool's status.selector (what HPA/KEDA count)
    let wp = obj(&api, &ext("sandboxwarmpools"), "python-pool").expect("pool");
    assert_eq!(got["status"]["selector"], wp["status"]["selector"]);
    assert!(got["status"]["selector"].is_string());
    let stale = got["metadata"]["resourceVersion"].clone();

    // a merge patch of the Scale (as `kubectl scale` and KEDA send)
    let up = json!({"spec": {"replicas": 3}});
    let (code, got) = call(&api, "PATCH", &scale, "application/merge-patch+json", up).await;
    assert_eq!((code, &got["spec"]["replicas"]), (200, &json!(3)), "{got}");
    let wp = obj(&api, &ext("sandboxwarmpools"), "python-pool").expect("pool");
    assert_eq!(wp["spec"]["replicas"], 3);
    reconcile_pool(&ctx, "python-pool").await;
    assert_eq!(
        members(&api, "python-pool").len(),
        3,
        "the Sandboxes follow"
    );

    // a PUT of the Scale (as the HPA sends): conditional on resourceVersion
    let put = |rv: Value| {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
               "metadata": {"name": "python-pool", "resourceVersion": rv}, "spec": {"replicas": 1}})
    };
    let (code, _) = call(&api, "PUT", &scale, "application/json", put(stale)).await;
    assert_eq!(code, 409, "a stale Scale is refused");
    let (_, now) = call(&api, "GET", &scale, "application/json", Value::Null).await;
    assert_eq!(now["status"]["replicas"], 3);
    let fresh = now["metadata"]["resourceVersion"].clone();
    let (code, got) = call(&api, "PUT", &scale, "application/json", put(fresh)).await;
    assert_eq!(code, 200, "{got}");
    reconcile_pool(&ctx, "python-pool").await;
    assert_eq!(members(&api, "python-pool").len(), 1, "scaled down");
    let (_, got) = call(&api, "GET", &scale, "application/json", Value::Null).await;
    assert_eq!(got["status"]["replicas"], 1);

    // a negative count is invalid; a kind without the subresource has none
    let down = json!({"spec": {"replicas": -1}});
    let (code, _) = call(&api, "PATCH", &scale, "application/merge-patch+json", down).await;
    assert_eq!(code, 422);
    put_claim(&api, "c", json!({"warmPoolRef": {"name": "python-pool"}}));
    let claim_scale = format!("{}/c/scale", ext("sandboxclaims"));
    let (code, _) = call(&api, "GET", &claim_scale, "application/json", Value::Null).await;
    assert_eq!(code, 404);
}
