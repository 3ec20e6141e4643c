//! The fake apiserver enforces what a real one does (issue 21, "checks
//! against a real apiserver's rules"): the chart's RBAC for the controller's
//! requests, status only through the status subresource, finalizers and
//! owner-reference garbage collection.

mod support;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use support::rbac::{self, Attrs};
use support::{FakeApi, pods_path};

const NS: &str = "sandpool";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]},
           "status": {"phase": "Running"}})
}

/// A JSON patch (RFC 6902) of pod `name`, or of its status.
async fn json_patch(client: &kube::Client, name: &str, status: bool, ops: Value) {
    let sub = if status { "/status" } else { "" };
    let req = http::Request::patch(format!("{}/{name}{sub}", pods_path(NS)))
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops).expect("ops"))
        .expect("request");
    client.request::<Value>(req).await.expect("json patch");
}

fn setup(names: &[&str]) -> (FakeApi, Api<Pod>) {
    let api = FakeApi::new();
    api.with_store(|s| {
        for n in names {
            s.put(&pods_path(NS), pod(n));
        }
    });
    let pods = Api::namespaced(api.client(), NS);
    (api, pods)
}

fn stored(api: &FakeApi, name: &str) -> Option<Value> {
    api.with_store(|s| s.get(&pods_path(NS), name).cloned())
}

// ------------------------------------------------------------------ RBAC

fn attrs(verb: &str, group: &str, resource: &str, sub: Option<&str>) -> Attrs {
    Attrs {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: sub.map(String::from),
        namespace: Some(rbac::CHART_NAMESPACE.into()),
        name: None,
    }
}

#[test]
fn requests_map_to_the_authorizers_verbs_and_resources() {
    let get = http::Method::GET;
    let a = rbac::attrs_of(&get, "/api/v1/namespaces/n/pods", "watch=true").expect("pods");
    assert_eq!((a.verb.as_str(), a.resource.as_str()), ("watch", "pods"));
    let a = rbac::attrs_of(&get, "/api/v1/namespaces/n/pods", "labelSelector=a").expect("list");
    assert_eq!(a.verb, "list");
    let a = rbac::attrs_of(
        &http::Method::PATCH,
        "/apis/sandbox.opensandbox.io/v1alpha1/namespaces/n/pools/p/status",
        "",
    )
    .expect("status");
    assert_eq!(a, {
        let mut x = attrs("patch", "sandbox.opensandbox.io", "pools", Some("status"));
        x.namespace = Some("n".into());
        x.name = Some("p".into());
        x
    });
    let a = rbac::attrs_of(&http::Method::DELETE, "/api/v1/namespaces/n/pods", "").expect("dc");
    assert_eq!(a.verb, "deletecollection");
    let a = rbac::attrs_of(&get, "/api/v1/nodes/n1", "").expect("node");
    assert_eq!((a.verb.as_str(), a.namespace), ("get", None));
}

#[test]
fn the_chart_grants_the_controller_its_calls_and_no_others() {
    let Some(g) = rbac::controller_grants() else {
        return; // no helm outside CI: rendered_chart() warned
    };
    // calls of code paths no fake-apiserver test drives: ensure_pools in
    // services/sandpool/src/cluster.rs (create, merge patch), KubeScheduler's
    // ApplyPool/DeletePool and its BatchSandbox cleanup, a BatchSandbox's
    // expiry, a Sandbox adopting its PVC
    let untested = [
        ("create", "sandbox.opensandbox.io", "pools"),
        ("patch", "sandbox.opensandbox.io", "pools"),
        ("delete", "sandbox.opensandbox.io", "pools"),
        ("delete", "sandbox.opensandbox.io", "batchsandboxes"),
        ("patch", "", "persistentvolumeclaims"),
    ];
    for (verb, group, resource) in untested {
        assert!(
            g.allows(&attrs(verb, group, resource, None)),
            "{verb} {group} {resource}"
        );
    }
    // a Role grants nothing outside its namespace, and nothing cluster-wide
    let mut other_ns = attrs("get", "", "pods", None);
    other_ns.namespace = Some("kube-system".into());
    assert!(!g.allows(&other_ns));
    let mut nodes = attrs("list", "", "nodes", None);
    nodes.namespace = None;
    assert!(!g.allows(&nodes));
    assert!(!g.allows(&attrs("create", "", "pods", Some("exec"))));
    // Secrets: the snapshot push secret only (resourceNames), never a list
    assert!(!g.allows(&attrs("get", "", "secrets", None)));
    assert!(!g.allows(&attrs("list", "", "secrets", None)));
    let mut other = attrs("get", "", "secrets", None);
    other.name = Some("sandpool-service-token".into());
    assert!(!g.allows(&other));
    let mut push = other.clone();
    push.name = Some("sandpool-snapshot-push".into());
    assert!(
        g.allows(&push),
        "the chart's default controllerManager.snapshot.pushSecret"
    );
}

/// The gateway and the node agent do not call the apiserver: the chart
/// gives the gateway no token, and neither command builds a kube client.
#[test]
fn only_the_controller_calls_the_apiserver() {
    let src =
        std::fs::read_to_string(rbac::workspace_root().join("services/sandpool/src/cluster.rs"))
            .expect("cluster.rs");
    for f in ["pub async fn gateway(", "pub async fn node_agent("] {
        let body = src.split(f).nth(1).expect(f);
        let body = body.split("\npub ").next().unwrap_or(body);
        assert!(
            !body.contains("kube::") && !body.contains("Api::"),
            "{f} calls the apiserver: add its service account's grants to the chart and to the check"
        );
    }
    let Some(docs) = rbac::rendered_chart() else {
        return;
    };
    let (_, token) = rbac::service_account_of(docs, "Deployment", "server").expect("gateway");
    assert!(!token, "the gateway gets no service account token");
}

/// Run by `a_request_the_chart_does_not_grant_ends_the_test` in a child
/// process: the controller's client asks for something the chart refuses.
#[tokio::test]
#[ignore = "run by a_request_the_chart_does_not_grant_ends_the_test"]
async fn child_makes_a_forbidden_request() {
    if std::env::var_os("SANDPOOL_RBAC_CHILD").is_none() {
        return;
    }
    let api = FakeApi::new();
    let nodes: Api<Node> = Api::all(api.client());
    let _ = nodes.list(&Default::default()).await;
}

#[test]
fn a_request_the_chart_does_not_grant_ends_the_test() {
    if rbac::controller_grants().is_none() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "child_makes_a_forbidden_request",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("SANDPOOL_RBAC_CHILD", "1")
        .output()
        .expect("child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child passed: {stderr}");
    assert!(
        stderr.contains(
            "RBAC: the chart does not let the controller's service account list core nodes"
        ),
        "{stderr}"
    );
}

// ------------------------------------------------------------------ status subresource

#[tokio::test]
async fn a_main_resource_write_keeps_the_stored_status() {
    let (api, pods) = setup(&["p"]);
    let mut p = pods.get("p").await.expect("get");
    p.status.as_mut().expect("status").phase = Some("Failed".into());
    p.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
    let out = pods
        .replace("p", &PostParams::default(), &p)
        .await
        .expect("put");
    assert_eq!(out.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    let ops = json!([{"op": "replace", "path": "/status/phase", "value": "Failed"},
                     {"op": "add", "path": "/metadata/labels/c", "value": "d"}]);
    json_patch(&pods.clone().into_client(), "p", false, ops).await;
    let s = stored(&api, "p").expect("pod");
    assert_eq!(s["status"]["phase"], "Running");
    assert_eq!(s["metadata"]["labels"], json!({"a": "b", "c": "d"}));
}

#[tokio::test]
async fn a_status_write_keeps_everything_but_the_status() {
    let api = FakeApi::new();
    let coll = support::cr_path("sandbox.opensandbox.io", "pools", NS);
    api.with_store(|s| {
        s.put(
            &coll,
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool",
            "metadata": {"name": "p"}, "spec": {"capacitySpec": {"bufferMin": 1}},
            "status": {"total": 0}}),
        )
    });
    let gvk = GroupVersionKind::gvk("sandbox.opensandbox.io", "v1alpha1", "Pool");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "pools");
    let client = api.client();
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let mut p = pools.get("p").await.expect("get");
    p.data["status"]["total"] = json!(3);
    p.data["spec"]["capacitySpec"]["bufferMin"] = json!(5);
    p.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
    let out = pools
        .replace_status("p", &PostParams::default(), &p)
        .await
        .expect("put status");
    assert_eq!(out.data["status"]["total"], 3);
    assert_eq!(out.data["spec"]["capacitySpec"]["bufferMin"], 1);
    let ops = json!([{"op": "replace", "path": "/spec/capacitySpec/bufferMin", "value": 7},
                     {"op": "replace", "path": "/status/total", "value": 4}]);
    let req = http::Request::patch(format!("{coll}/p/status"))
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops).expect("ops"))
        .expect("request");
    client
        .request::<Value>(req)
        .await
        .expect("json patch status");
    let s = api
        .with_store(|s| s.get(&coll, "p").cloned())
        .expect("pool");
    assert_eq!(s["status"]["total"], 4);
    assert_eq!(s["spec"]["capacitySpec"]["bufferMin"], 1, "{s}");
    assert!(s["metadata"].get("labels").is_none(), "{s}");
}

// ------------------------------------------------------------------ finalizers

#[tokio::test]
async fn no_new_finalizer_once_deleting_and_a_put_without_finalizers_deletes() {
    let (api, pods) = setup(&["p"]);
    api.with_store(|s| {
        s.mutate(&pods_path(NS), "p", |o| {
            o["metadata"]["finalizers"] = json!(["a/keep"]);
        })
    });
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let held = stored(&api, "p").expect("held by its finalizer");
    assert!(held["metadata"].get("deletionTimestamp").is_some());
    let add = json!({"metadata": {"finalizers": ["a/keep", "b/new"]}});
    let err = pods
        .patch("p", &PatchParams::default(), &Patch::Merge(&add))
        .await
        .expect_err("a new finalizer");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("no new finalizers")),
        "{err}"
    );
    let mut p = pods.get("p").await.expect("get");
    p.metadata.deletion_timestamp = None;
    p.metadata.finalizers = None;
    pods.replace("p", &PostParams::default(), &p)
        .await
        .expect("put");
    assert!(
        stored(&api, "p").is_none(),
        "the last finalizer removed by a PUT"
    );
}

// ------------------------------------------------------------------ garbage collection

#[tokio::test]
async fn a_dependent_goes_when_its_last_owner_goes() {
    let (api, pods) = setup(&["owner-a", "owner-b", "dep"]);
    api.with_store(|s| {
        s.mutate(&pods_path(NS), "dep", |o| {
            o["metadata"]["ownerReferences"] = json!([
                {"apiVersion": "v1", "kind": "Pod", "name": "owner-a", "uid": "uid-owner-a"},
                {"apiVersion": "v1", "kind": "Pod", "name": "owner-b", "uid": "uid-owner-b"}]);
        })
    });
    pods.delete("owner-a", &DeleteParams::default())
        .await
        .expect("delete a");
    assert!(stored(&api, "dep").is_some(), "owner-b still owns it");
    pods.delete("owner-b", &DeleteParams::default())
        .await
        .expect("delete b");
    assert!(stored(&api, "dep").is_none(), "no owner left");
}

// ------------------------------------------------------------------ pruning and defaulting

#[tokio::test]
async fn custom_resources_are_pruned_and_defaulted_by_their_generated_schema() {
    // FakeApi::new() enforces the generated CRDs' schemas
    let api = FakeApi::new();
    let gvk = GroupVersionKind::gvk("sandbox.opensandbox.io", "v1alpha1", "BatchSandbox");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "batchsandboxes");
    let batches: Api<DynamicObject> = Api::namespaced_with(api.client(), NS, &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": "b", "labels": {"keep": "me"}},
        "spec": {"poolRef": "p", "noSuchField": 1},
        "notInTheSchema": {"x": 1}}))
    .expect("object");
    let out = batches
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
    assert!(
        out.data["spec"].get("noSuchField").is_none(),
        "{:?}",
        out.data
    );
    assert!(out.data.get("notInTheSchema").is_none(), "{:?}", out.data);
    assert_eq!(out.data["spec"]["poolRef"], "p");
    assert_eq!(out.data["spec"]["replicas"], 1, "the schema's default");
    assert_eq!(
        out.metadata
            .labels
            .and_then(|l| l.get("keep").cloned())
            .as_deref(),
        Some("me")
    );
}

#[test]
fn pruning_keeps_preserved_and_additional_properties_and_defaults_nested_fields() {
    let schema = json!({"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "n": {"type": "integer", "default": 3}}}},
            "mode": {"type": "string", "default": "Auto"}}}}});
    let mut obj = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "odd": 1},
        "spec": {"free": {"anything": [1]}, "labels": {"a": "b"},
                 "items": [{"gone": true}, {"n": 5}], "extra": 1}});
    support::schema::prune_and_default(&schema, &mut obj, true);
    assert_eq!(
        obj,
        json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "odd": 1},
            "spec": {"free": {"anything": [1]}, "labels": {"a": "b"},
                     "items": [{"n": 3}, {"n": 5}], "mode": "Auto"}})
    );
}

// ------------------------------------------------------------------ metadata.generation

/// A raw PATCH of `path` with `content_type`; the stored object's generation.
async fn patch_generation(
    api: &FakeApi,
    client: &kube::Client,
    coll: &str,
    path: &str,
    content_type: &str,
    body: Value,
) -> i64 {
    let req = http::Request::patch(path)
        .header("content-type", content_type)
        .body(serde_json::to_vec(&body).expect("body"))
        .expect("request");
    client.request::<Value>(req).await.expect("patch");
    api.with_store(|s| s.get(coll, "b").cloned())
        .expect("stored")["metadata"]["generation"]
        .as_i64()
        .expect("generation")
}

#[tokio::test]
async fn the_generation_counts_changes_outside_metadata_and_status() {
    let api = FakeApi::new();
    let coll = support::batches_path(NS);
    let gvk = GroupVersionKind::gvk("sandbox.opensandbox.io", "v1alpha1", "BatchSandbox");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "batchsandboxes");
    let client = api.client();
    let batches: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    // create: 1, whatever the client sent
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": "b", "generation": 7}, "spec": {"poolRef": "p"}}))
    .expect("object");
    let out = batches
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
    assert_eq!(out.metadata.generation, Some(1));
    let one = format!("{coll}/b");
    let status = format!("{coll}/b/status");
    let merge = "application/merge-patch+json";
    let json = "application/json-patch+json";
    let apply = "application/apply-patch+yaml";
    let at = |path: &str, ct: &'static str, body: Value| {
        let (api, client, coll) = (api.clone(), client.clone(), coll.clone());
        let path = path.to_string();
        async move { patch_generation(&api, &client, &coll, &path, ct, body).await }
    };
    // a spec change through each kind of patch: one more each
    assert_eq!(at(&one, merge, json!({"spec": {"replicas": 2}})).await, 2);
    let ops = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]);
    assert_eq!(at(&one, json, ops).await, 3);
    assert_eq!(at(&one, apply, json!({"spec": {"replicas": 4}})).await, 4);
    // no change, metadata only, a status write, a client's generation: none
    assert_eq!(at(&one, merge, json!({"spec": {"replicas": 4}})).await, 4);
    let labels = json!({"metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}}});
    assert_eq!(at(&one, merge, labels).await, 4);
    assert_eq!(
        at(&one, merge, json!({"metadata": {"generation": 9}})).await,
        4
    );
    assert_eq!(
        at(&status, merge, json!({"status": {"replicas": 1}})).await,
        4
    );
    let ops = json!([{"op": "add", "path": "/status/ready", "value": 1}]);
    assert_eq!(at(&status, json, ops).await, 4);
    // a status change sent to the main resource is dropped: none
    assert_eq!(at(&one, merge, json!({"status": {"ready": 2}})).await, 4);
    // a replace (PUT): one more only when the spec changed
    let mut b = batches.get("b").await.expect("get");
    let unchanged = batches
        .replace("b", &PostParams::default(), &b)
        .await
        .expect("put");
    assert_eq!(unchanged.metadata.generation, Some(4));
    b.metadata.resource_version = unchanged.metadata.resource_version;
    b.data["spec"]["replicas"] = json!(5);
    let changed = batches
        .replace("b", &PostParams::default(), &b)
        .await
        .expect("put");
    assert_eq!(changed.metadata.generation, Some(5));
    // a field the schema prunes is no change
    assert_eq!(
        at(&one, merge, json!({"spec": {"noSuchField": 1}})).await,
        5
    );
}

#[tokio::test]
async fn a_scale_write_is_a_spec_change() {
    let api = FakeApi::new();
    let coll = support::cr_path("extensions.agents.x-k8s.io", "sandboxwarmpools", NS)
        .replace("v1alpha1", "v1beta1");
    api.with_store(|s| {
        s.put(
            &coll,
            json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxWarmPool",
                "metadata": {"name": "b"},
                "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "t"}}}),
        )
    });
    // straight to the fake: the controller never scales (its Role does not
    // grant it, and the fake's client checks that)
    let req = http::Request::patch(format!("{coll}/b/scale"))
        .header("content-type", "application/merge-patch+json")
        .body(kube::client::Body::from(
            serde_json::to_vec(&json!({"spec": {"replicas": 3}})).expect("body"),
        ))
        .expect("request");
    assert_eq!(api.handle(req).await.status(), 200);
    let stored = api
        .with_store(|s| s.get(&coll, "b").cloned())
        .expect("stored");
    assert_eq!(stored["spec"]["replicas"], 3);
    assert_eq!(stored["metadata"]["generation"], 2);
}
