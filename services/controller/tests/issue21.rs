//! Kubernetes-mode bugs of issue 21, against the fake apiserver in
//! `support`: pooled claims' image, reconcile failures reported on the
//! objects (conditions and Events), the leader giving its lease back.

mod support;

use std::sync::Arc;

use kube::api::Api;
use sandpool_controller::context::Context;
use sandpool_controller::crd::*;
use sandpool_controller::kube_scheduler::KubeScheduler;
use sandpool_controller::{batch, pool};
use sandpool_proto::v1::{self as pb, scheduler_server::Scheduler};
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, batches_path, cr_path, make_ready, pods_path, pools_path};

const NS: &str = "sandpool";

fn setup() -> (FakeApi, Arc<Context>) {
    let api = FakeApi::new();
    let ctx = support::context(&api, NoTasks(Some(None)));
    (api, ctx)
}

fn pool_obj(name: &str, n: i32) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox", "image": "python:3.12-slim", "command": ["sleep", "infinity"]}]}},
                 "capacitySpec": {"bufferMin": n, "bufferMax": n, "poolMin": n, "poolMax": n + 2}}})
}

async fn get<K>(ctx: &Context, name: &str) -> Arc<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Arc::new(
        Api::<K>::namespaced(ctx.client.clone(), NS)
            .get(name)
            .await
            .expect("get"),
    )
}

/// A pool `name` with `n` ready pods.
async fn ready_pool(api: &FakeApi, ctx: &Arc<Context>, name: &str, n: i32) {
    api.with_store(|s| s.put(&pools_path(NS), pool_obj(name, n)));
    pool::reconcile(get::<Pool>(ctx, name).await, ctx.clone())
        .await
        .expect("pool reconcile");
    let names: Vec<String> = api.with_store(|s| {
        s.list(&pods_path(NS))
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    });
    for (i, p) in names.iter().enumerate() {
        api.with_store(|s| make_ready(s, NS, p, &format!("10.2.0.{}", i + 10), "node-a"));
    }
}

/// The batch controller, running as it would in the cluster.
fn spawn_batch_controller(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let all = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
                .list(&Default::default())
                .await
                .expect("list");
            for b in all.items {
                let _ = batch::reconcile(Arc::new(b), ctx.clone()).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
}

// ------------------------------------------------------------------ bug 2

#[tokio::test]
async fn a_pooled_claim_reports_its_pools_image() {
    let (api, ctx) = setup();
    ready_pool(&api, &ctx, "py", 1).await;
    let controller = spawn_batch_controller(ctx.clone());
    let mut sched = KubeScheduler::new(ctx.client.clone(), NS, Arc::new(NoTasks(Some(None))));
    sched.poll = std::time::Duration::from_millis(5);
    let created = sched
        .create_claim(tonic::Request::new(pb::ClaimRequest {
            pool: "py".into(),
            ..Default::default()
        }))
        .await
        .expect("claim")
        .into_inner();
    controller.abort();
    assert_eq!(created.image, "python:3.12-slim", "create: {created:?}");
    let got = sched
        .get_claim(tonic::Request::new(pb::ClaimRef {
            claim_id: created.claim_id.clone(),
        }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.image, "python:3.12-slim", "get: {got:?}");
    let listed = sched
        .list_claims(tonic::Request::new(pb::ListClaimsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.claims[0].image, "python:3.12-slim");
    // a claim whose pool is gone still answers, with no image
    api.with_store(|s| s.delete(&pools_path(NS), "py"));
    let orphan = sched
        .get_claim(tonic::Request::new(pb::ClaimRef {
            claim_id: created.claim_id.clone(),
        }))
        .await
        .expect("get without its pool")
        .into_inner();
    assert_eq!(orphan.image, "");
    assert!(api.with_store(|s| s.get(&batches_path(NS), &created.claim_id).is_some()));
}

// ------------------------------------------------------------------ bug 7a

#[tokio::test]
async fn a_leader_that_shuts_down_hands_its_lease_over_at_once() {
    use sandpool_controller::leader;
    let (api, ctx) = setup();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(ctx.client.clone(), NS);
    let cfg = |id: &str| leader::LeaseConfig {
        name: "sandpool-controller".into(),
        identity: id.into(),
        duration: std::time::Duration::from_secs(15),
    };
    assert!(
        leader::try_acquire_or_renew(&leases, &cfg("a"))
            .await
            .expect("a")
    );
    assert!(
        !leader::try_acquire_or_renew(&leases, &cfg("b"))
            .await
            .expect("b")
    );
    assert!(
        !leader::release(&leases, &cfg("b"))
            .await
            .expect("b release"),
        "b does not hold it"
    );
    assert!(
        leader::release(&leases, &cfg("a"))
            .await
            .expect("a release")
    );
    let path = "/apis/coordination.k8s.io/v1/namespaces/sandpool/leases";
    let l = api
        .with_store(|s| s.get(path, "sandpool-controller").cloned())
        .expect("lease");
    assert!(
        l["spec"].get("holderIdentity").is_none_or(Value::is_null),
        "{l}"
    );
    // no waiting for the 15 s to run out
    assert!(
        leader::try_acquire_or_renew(&leases, &cfg("b"))
            .await
            .expect("b takes over")
    );
    let l = api
        .with_store(|s| s.get(path, "sandpool-controller").cloned())
        .expect("lease");
    assert_eq!(l["spec"]["holderIdentity"], "b");
}

// ------------------------------------------------------------------ bug 7d

/// Log lines written while it is alive.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn all_five_controllers_stop_on_one_shared_shutdown_trigger() {
    use futures_util::FutureExt;
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (_api, ctx) = setup();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let trigger = async move {
        let _ = rx.await;
    }
    .boxed()
    .shared();
    let run = tokio::spawn(sandpool_controller::run::controllers(
        ctx.client.clone(),
        NS.into(),
        ctx.clone(),
        trigger,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!run.is_finished(), "running until the trigger");
    tx.send(()).expect("trigger");
    tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("all five stopped")
        .expect("join");
    // kube's per-controller signal handling logged its hint five times; the
    // shared trigger's hint is logged once, by run() (not here)
    let text = String::from_utf8_lossy(&log.0.lock().expect("log")).to_string();
    assert_eq!(text.matches("press ctrl+c").count(), 0, "{text}");
}

// ------------------------------------------------------------------ bug 7b

#[tokio::test]
async fn checkpoints_in_kubernetes_mode_say_so_in_one_sentence() {
    // (pause itself is served in Kubernetes mode now: tests/k8s_pause.rs)
    let (_api, ctx) = setup();
    let sched = KubeScheduler::new(ctx.client.clone(), NS, Arc::new(NoTasks(Some(None))));
    let e = sched
        .checkpoint_claim(tonic::Request::new(pb::CheckpointClaimRequest {
            claim_id: "any".into(),
            ..Default::default()
        }))
        .await
        .expect_err("checkpoint");
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert_eq!(
        e.message(),
        sandpool_core::claim::KUBERNETES_CHECKPOINT_UNSUPPORTED
    );
    for why in ["CRIU", "network", "network-less"] {
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
}

// ------------------------------------------------------------------ bug 7c

/// deploy/README.md applies the examples with `kubectl -n sandpool`, and the
/// controllers watch their own namespace only: an example naming another
/// namespace would be silently ignored.
#[test]
fn the_examples_go_where_kubectl_n_puts_them() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let mut seen = 0;
    for dir in [root.clone(), root.join("legacy")] {
        for e in std::fs::read_dir(&dir).expect("examples dir") {
            let path = e.expect("entry").path();
            if path.extension().is_none_or(|x| x != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let v: Value = serde_saphyr::from_str(&text).expect("yaml");
            assert!(
                v["metadata"].get("namespace").is_none(),
                "{} names namespace {}",
                path.display(),
                v["metadata"]["namespace"]
            );
            seen += 1;
        }
    }
    assert!(seen >= 10, "{seen} examples");
    let readme = std::fs::read_to_string(root.join("../README.md")).expect("README");
    assert!(readme.contains("-f deploy/examples/sandboxclaim-warmpool-test.yaml"));
}

// ------------------------------------------------------------------ bug 4

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/sandpool/events";

fn ext(plural: &str) -> String {
    cr_path("extensions.agents.x-k8s.io", plural, NS)
}

/// The Warning events published about the object `name`: (reason, note).
fn warnings(api: &FakeApi, name: &str) -> Vec<(String, String)> {
    api.with_store(|s| s.list(EVENTS))
        .iter()
        .filter(|e| e["type"] == "Warning" && e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The Ready condition of the stored object `name` in `coll`.
fn ready_condition(api: &FakeApi, coll: &str, name: &str) -> Option<Value> {
    let obj = api.with_store(|s| s.get(coll, name).cloned())?;
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
}

/// True when the status of `name` was written, and only through `/status`.
fn status_written_through_subresource(api: &FakeApi, name: &str) -> bool {
    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::PATCH && r.body.get("status").is_some())
        .filter(|r| r.path.contains(&format!("/{name}")))
        .collect();
    !writes.is_empty() && writes.iter().all(|r| r.path.ends_with("/status"))
}

#[tokio::test]
async fn a_pool_whose_runtime_class_is_missing_says_so_and_recovers() {
    use sandpool_controller::conditions::reported;
    let (api, ctx) = setup();
    let mut p = pool_obj("gv", 1);
    p["spec"]["template"]["spec"]["runtimeClassName"] = json!("gvisor");
    api.with_store(|s| {
        s.runtime_classes = Some(vec!["runc".into()]);
        s.put(&pools_path(NS), p)
    });
    let err = reported(get::<Pool>(&ctx, "gv").await, ctx.clone(), pool::reconcile)
        .await
        .expect_err("no such RuntimeClass");
    assert!(err.to_string().contains("RuntimeClass"), "{err}");
    let c = ready_condition(&api, &pools_path(NS), "gv").expect("a Ready condition");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "Forbidden");
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("RuntimeClass \"gvisor\" not found")),
        "{c}"
    );
    assert_eq!(
        c["message"],
        "pods \"gv-00001\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found",
        "the apiserver's sentence"
    );
    assert!(c["lastTransitionTime"].is_string(), "{c}");
    assert!(status_written_through_subresource(&api, "gv"));
    let w = warnings(&api, "gv");
    assert!(
        w.iter()
            .any(|(r, n)| r == "Forbidden" && n.contains("RuntimeClass")),
        "{w:?}"
    );
    // once the RuntimeClass exists the pool fills and the condition goes
    api.with_store(|s| s.runtime_classes = Some(vec!["gvisor".into()]));
    reported(get::<Pool>(&ctx, "gv").await, ctx.clone(), pool::reconcile)
        .await
        .expect("pool reconcile");
    assert_eq!(ready_condition(&api, &pools_path(NS), "gv"), None);
}

#[tokio::test]
async fn an_invalid_pool_gets_a_condition_as_well_as_an_event() {
    use sandpool_controller::conditions::reported;
    let (api, ctx) = setup();
    api.with_store(|s| {
        s.put(
            &pools_path(NS),
            json!({"metadata": {"name": "half"}, "spec": {}}),
        )
    });
    reported(
        get::<Pool>(&ctx, "half").await,
        ctx.clone(),
        pool::reconcile,
    )
    .await
    .expect("a refusal, not a retry");
    let c = ready_condition(&api, &pools_path(NS), "half").expect("condition");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("InvalidSpec"))
    );
    assert!(
        warnings(&api, "half")
            .iter()
            .any(|(r, _)| r == "InvalidSpec")
    );
    // a second round does not clear what the first reported
    reported(
        get::<Pool>(&ctx, "half").await,
        ctx.clone(),
        pool::reconcile,
    )
    .await
    .expect("again");
    assert!(ready_condition(&api, &pools_path(NS), "half").is_some());
}

#[tokio::test]
async fn a_batch_of_a_missing_pool_says_so() {
    use sandpool_controller::conditions::reported;
    let (api, ctx) = setup();
    api.with_store(|s| {
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b1"}, "spec": {"replicas": 1, "poolRef": "nope"}}),
        )
    });
    let round = async || {
        reported(
            get::<BatchSandbox>(&ctx, "b1").await,
            ctx.clone(),
            batch::reconcile,
        )
        .await
    };
    let _ = round().await; // the finalizer goes on first
    round().await.expect_err("no pool");
    let c = ready_condition(&api, &batches_path(NS), "b1").expect("condition");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "PoolNotFound");
    assert_eq!(c["message"], "Pool nope not found");
    assert!(status_written_through_subresource(&api, "b1"));
    assert!(
        warnings(&api, "b1")
            .iter()
            .any(|(r, n)| r == "PoolNotFound" && n == "Pool nope not found")
    );
}

fn python_template(api: &FakeApi) {
    api.with_store(|s| {
        s.put(&ext("sandboxtemplates"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxTemplate",
            "metadata": {"name": "py"},
            "spec": {"podTemplate": {"spec": {"runtimeClassName": "gvisor", "containers": [{"name": "python", "image": "python:3.12-slim"}]}}}}))
    });
}

#[tokio::test]
async fn a_warm_pool_of_a_missing_template_says_so() {
    use sandpool_controller::agent_sandbox::reconcile_warm_pool;
    use sandpool_controller::conditions::reported;
    let (api, ctx) = setup();
    api.with_store(|s| {
        s.put(&ext("sandboxwarmpools"), json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxWarmPool",
            "metadata": {"name": "wp"}, "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "py"}}}))
    });
    reported(
        get::<SandboxWarmPool>(&ctx, "wp").await,
        ctx.clone(),
        reconcile_warm_pool,
    )
    .await
    .expect("waits for the template");
    let c = ready_condition(&api, &ext("sandboxwarmpools"), "wp").expect("condition");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("TemplateNotFound"))
    );
    assert!(
        warnings(&api, "wp")
            .iter()
            .any(|(r, _)| r == "TemplateNotFound")
    );
    // the template appears, but its RuntimeClass does not exist: the pool
    // makes its Sandbox, whose pod is refused (the Sandbox says so)
    python_template(&api);
    api.with_store(|s| s.runtime_classes = Some(Vec::new()));
    reported(
        get::<SandboxWarmPool>(&ctx, "wp").await,
        ctx.clone(),
        reconcile_warm_pool,
    )
    .await
    .expect("the warm Sandbox is created");
    let sandboxes = cr_path("agents.x-k8s.io", "sandboxes", NS);
    let warm = api.with_store(|s| s.list(&sandboxes));
    assert_eq!(warm.len(), 1);
    let name = warm[0]["metadata"]["name"].as_str().expect("name");
    reported(
        get::<Sandbox>(&ctx, name).await,
        ctx.clone(),
        sandpool_controller::agent_sandbox::reconcile_sandbox,
    )
    .await
    .expect_err("no RuntimeClass");
    let c = ready_condition(&api, &sandboxes, name).expect("condition");
    assert_eq!(c["reason"], "Forbidden");
    assert!(status_written_through_subresource(&api, name));
}

#[tokio::test]
async fn a_claim_says_why_its_sandbox_is_not_ready() {
    use sandpool_controller::agent_sandbox::{reconcile_claim, reconcile_sandbox};
    use sandpool_controller::conditions::reported;
    let (api, ctx) = setup();
    api.with_store(|s| {
        s.runtime_classes = Some(Vec::new());
        s.put(
            &ext("sandboxclaims"),
            json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxClaim",
            "metadata": {"name": "c"}, "spec": {"sandboxTemplateRef": {"name": "py"}}}),
        )
    });
    let claim = async || {
        reported(
            get::<SandboxClaim>(&ctx, "c").await,
            ctx.clone(),
            reconcile_claim,
        )
        .await
    };
    claim().await.expect("finalizer");
    claim().await.expect("no template yet");
    assert!(
        warnings(&api, "c")
            .iter()
            .any(|(r, _)| r == "TemplateNotFound"),
        "an event as well as the condition"
    );
    python_template(&api);
    claim().await.expect("claim: a cold sandbox");
    reported(
        get::<Sandbox>(&ctx, "c").await,
        ctx.clone(),
        reconcile_sandbox,
    )
    .await
    .expect_err("the pod is refused");
    claim().await.expect("claim");
    let c = ready_condition(&api, &ext("sandboxclaims"), "c").expect("condition");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "Forbidden", "{c}");
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("RuntimeClass \"gvisor\" not found")),
        "not just \"starting\": {c}"
    );
    assert!(
        warnings(&api, "c")
            .iter()
            .any(|(r, _)| r == "TemplateNotFound")
    );
}
