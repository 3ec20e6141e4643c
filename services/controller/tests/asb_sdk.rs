//! The real `k8s-agent-sandbox` Python SDK (its own request builders and
//! watch-for-Ready loop, unchanged) against sandpool's agent-sandbox
//! controllers behind the fake apiserver, served over HTTP: the SDK creates a
//! v1beta1 SandboxClaim by `warmPoolRef`, waits for it to be Ready, reads the
//! Sandbox's `podIPs` and `serviceFQDN`, then runs a command and reads and
//! writes files in it through the agent-sandbox runtime API (a real
//! sandpool runtime on loopback, the "pod IP" the fake reports).
//!
//! Needs a Python with the SDK: `SANDPOOL_ASB_PYTHON`, else the repository's
//! `.venv/bin/python` (test.sh installs `k8s-agent-sandbox` there). Without
//! one the test is skipped, except under `CI=true`, where it fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use kube::api::Api;
use sandpool_controller::{agent_sandbox, context::Context, crd::*};
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, make_ready, pods_path};

const NS: &str = "sdk";

/// A Python that imports the SDK, or None (skip) outside CI.
fn sdk_python() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("SANDPOOL_ASB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import k8s_agent_sandbox"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} cannot import k8s_agent_sandbox (CI must run this test)",
        python.display()
    );
    eprintln!("skipped: no Python with k8s-agent-sandbox (set SANDPOOL_ASB_PYTHON)");
    None
}

/// The fake apiserver on a loopback HTTP port.
async fn serve_http(api: FakeApi) -> SocketAddr {
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let api = api.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 16 << 20)
                .await
                .unwrap_or_default();
            let req = http::Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
            let (parts, body) = api.handle(req).await.into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// The agent-sandbox runtime API of a real runtime, on loopback.
async fn serve_runtime(dir: &std::path::Path) -> u16 {
    let state = sandpool_runtime::AppState::new(sandpool_runtime::Config {
        data_dir: dir.join("data"),
        ..Default::default()
    })
    .unwrap();
    let root = dir.join("app");
    std::fs::create_dir_all(&root).unwrap();
    let app = sandpool_runtime::asb_app(state, root);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

fn ext(plural: &str) -> String {
    format!("/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/{NS}/{plural}")
}

fn fixtures(api: &FakeApi) {
    let pod_template = json!({"spec": {"containers": [{"name": "python-runtime",
        "image": "python-runtime-sandbox:latest", "ports": [{"containerPort": 8888}]}]}});
    api.with_store(|s| {
        s.put(
            &ext("sandboxtemplates"),
            json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1",
            "kind": "SandboxTemplate", "metadata": {"name": "python-template"},
            "spec": {"service": true, "podTemplate": pod_template}}),
        );
        s.put(
            &ext("sandboxwarmpools"),
            json!({"apiVersion": "extensions.agents.x-k8s.io/v1beta1",
            "kind": "SandboxWarmPool", "metadata": {"name": "python-pool"},
            "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "python-template"}}}),
        );
    });
}

fn names(api: &FakeApi, coll: &str) -> Vec<String> {
    api.with_store(|s| s.list(coll))
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// What the kubelet and the controller manager would do: pods become ready
/// (at 127.0.0.1, where the runtime listens) and every object is reconciled.
async fn drive(api: FakeApi, ctx: Arc<Context>) {
    loop {
        for p in api.with_store(|s| s.list(&pods_path(NS))) {
            if p["status"]["podIP"].is_null()
                && let Some(name) = p["metadata"]["name"].as_str()
            {
                api.with_store(|s| make_ready(s, NS, name, "127.0.0.1", "node-a"));
            }
        }
        let c = || ctx.client.clone();
        for n in names(&api, &ext("sandboxwarmpools")) {
            if let Ok(wp) = Api::<SandboxWarmPool>::namespaced(c(), NS).get(&n).await {
                let _ = agent_sandbox::reconcile_warm_pool(Arc::new(wp), ctx.clone()).await;
            }
        }
        for n in names(&api, &ext("sandboxclaims")) {
            if let Ok(cl) = Api::<SandboxClaim>::namespaced(c(), NS).get(&n).await {
                let _ = agent_sandbox::reconcile_claim(Arc::new(cl), ctx.clone()).await;
            }
        }
        let sandboxes = format!("/apis/agents.x-k8s.io/v1beta1/namespaces/{NS}/sandboxes");
        for n in names(&api, &sandboxes) {
            if let Ok(sb) = Api::<Sandbox>::namespaced(c(), NS).get(&n).await {
                let _ = agent_sandbox::reconcile_sandbox(Arc::new(sb), ctx.clone()).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` with the real SDK (args: the namespace and the runtime's
/// port) against the fake apiserver with the fixtures, the controllers and a
/// real runtime driven meanwhile; the fake and what the script printed.
async fn run_sdk(script: &str) -> Option<(FakeApi, Value)> {
    let python = sdk_python()?;
    let api = FakeApi::new();
    fixtures(&api);
    let ctx = support::context(&api, NoTasks(None));
    let addr = serve_http(api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = serve_runtime(dir.path()).await;
    let driver = tokio::spawn(drive(api.clone(), ctx));
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(&python)
            .args(["-c", script, NS, &port.to_string()])
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK finished in time")
    .unwrap();
    driver.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK failed:\n{stderr}");
    let seen = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    Some((api, seen))
}

/// The SDK's quick start, run by the real SDK; prints what it saw as JSON.
const SCRIPT: &str = r#"
import json, sys
from k8s_agent_sandbox import SandboxClient
from k8s_agent_sandbox.models import SandboxInClusterConnectionConfig

client = SandboxClient(connection_config=SandboxInClusterConnectionConfig(server_port=int(sys.argv[2])))
sb = client.create_sandbox(warmpool="python-pool", namespace=sys.argv[1], sandbox_ready_timeout=30)
obj = client.k8s_helper.get_sandbox(sb.sandbox_id, sys.argv[1])
run = sb.commands.run("echo hello from $(basename $PWD)")
sb.files.write("notes.txt", "written by the SDK")
print(json.dumps({
    "claim": sb.claim_name, "sandbox": sb.sandbox_id,
    "podIPs": obj["status"].get("podIPs"), "serviceFQDN": sb.get_service_fqdn(),
    "pod_ip": sb.get_pod_ip(), "status": sb.status()[0],
    "stdout": run.stdout, "exit_code": run.exit_code,
    "read": sb.files.read("notes.txt").decode(),
    "exists": sb.files.exists("notes.txt"),
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_sdk_claims_waits_for_ready_and_runs_a_command() {
    let Some((api, seen)) = run_sdk(SCRIPT).await else {
        return;
    };
    let claim = seen["claim"].as_str().unwrap();
    assert!(claim.starts_with("sandbox-claim-"), "{seen}");
    // a warm Sandbox of the pool, adopted (the claim names it), as upstream
    let sandbox = seen["sandbox"].as_str().unwrap_or_default();
    assert!(sandbox.starts_with("python-pool-"), "{seen}");
    let stored = api.with_store(|s| s.get(&ext("sandboxclaims"), claim).cloned());
    assert_eq!(
        stored.expect("claim")["metadata"]["annotations"][CLAIM_SANDBOX_ANNOTATION],
        sandbox
    );
    assert_eq!(seen["podIPs"], json!(["127.0.0.1"]));
    assert_eq!(seen["pod_ip"], "127.0.0.1");
    assert_eq!(
        seen["serviceFQDN"],
        format!("{sandbox}.{NS}.svc.cluster.local")
    );
    assert_eq!(seen["status"], "SandboxReady");
    assert_eq!(seen["stdout"], "hello from app\n");
    assert_eq!(seen["exit_code"], 0);
    assert_eq!(seen["read"], "written by the SDK");
    assert_eq!(seen["exists"], true);
    // the claim the SDK sent: v1beta1, by warmPoolRef
    let sent = api
        .requests()
        .into_iter()
        .find(|r| r.method == http::Method::POST && r.path.ends_with("/sandboxclaims"))
        .expect("the SDK's create");
    assert_eq!(sent.path, ext("sandboxclaims"));
    assert_eq!(sent.body["spec"]["warmPoolRef"]["name"], "python-pool");
    // it adopted the pool's warm Sandbox: now the claim's, out of the pool
    let sb = api
        .with_store(|s| {
            s.get(
                &format!("/apis/agents.x-k8s.io/v1beta1/namespaces/{NS}/sandboxes"),
                sandbox,
            )
            .cloned()
        })
        .expect("sandbox");
    assert_eq!(sb["metadata"]["ownerReferences"][0]["name"], claim, "{sb}");
    assert!(sb["metadata"]["labels"].get(WARM_POOL_LABEL).is_none());
}

/// The SDK's `shutdown_after_seconds`, `pod_labels` and `pod_annotations`.
const METADATA_SCRIPT: &str = r#"
import json, sys
from k8s_agent_sandbox import SandboxClient
from k8s_agent_sandbox.models import SandboxInClusterConnectionConfig

client = SandboxClient(connection_config=SandboxInClusterConnectionConfig(server_port=int(sys.argv[2])))
sb = client.create_sandbox(warmpool="python-pool", namespace=sys.argv[1], sandbox_ready_timeout=30,
    shutdown_after_seconds=600, pod_labels={"sandbox.users.io/user": "u1"},
    pod_annotations={"note": "from the SDK"})
print(json.dumps({"claim": sb.claim_name, "status": sb.status()[0]}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_sdks_pod_metadata_and_shutdown_reach_the_pod_and_the_claim() {
    let Some((api, seen)) = run_sdk(METADATA_SCRIPT).await else {
        return;
    };
    assert_eq!(seen["status"], "SandboxReady", "{seen}");
    let claim = seen["claim"].as_str().unwrap();
    let stored = api
        .with_store(|s| s.get(&ext("sandboxclaims"), claim).cloned())
        .expect("claim");
    assert_eq!(
        stored["spec"]["lifecycle"]["shutdownPolicy"], "Delete",
        "{stored}"
    );
    assert!(stored["spec"]["lifecycle"]["shutdownTime"].is_string());
    let sb_name = stored["metadata"]["annotations"][CLAIM_SANDBOX_ANNOTATION]
        .as_str()
        .unwrap_or(claim);
    let sb = api
        .with_store(|s| {
            s.get(
                &format!("/apis/agents.x-k8s.io/v1beta1/namespaces/{NS}/sandboxes"),
                sb_name,
            )
            .cloned()
        })
        .expect("sandbox");
    // the pod is named after its Sandbox
    let pod_name = sb["metadata"]["name"].as_str().unwrap_or(claim).to_string();
    let pod = api
        .with_store(|s| s.get(&pods_path(NS), &pod_name).cloned())
        .expect("pod");
    assert_eq!(
        pod["metadata"]["labels"]["sandbox.users.io/user"], "u1",
        "{pod}"
    );
    assert_eq!(pod["metadata"]["annotations"]["note"], "from the SDK");
}
