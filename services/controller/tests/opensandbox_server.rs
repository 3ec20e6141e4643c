//! Upstream's `opensandbox-server` (PyPI 1.1.1, Kubernetes runtime, BatchSandbox
//! workload provider) on sandpool's controllers: the BatchSandboxes it
//! creates, in pool mode and in template mode, exactly as its
//! `batchsandbox_provider` writes them, against the fake apiserver. They must
//! reach `Succeed` with an endpoint, run the server's task through
//! `/opt/opensandbox/bootstrap.sh` (provided in sandpool's pods), and carry
//! the pod's runtime token where the server looks for a sandbox's access
//! token (`opensandbox.io/secure-access-token`), so that the endpoint
//! headers it hands its SDK open the runtime's execd API.

mod support;

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use sandpool_controller::context::{Context, TaskRunner};
use sandpool_controller::crd::*;
use sandpool_controller::{batch, pool};
use serde_json::{Value, json};
use support::node_agent::put_agent_pod;
use support::{FakeApi, batches_path, make_ready, pods_path, pools_path};

const NS: &str = "opensandbox";
/// Where the server reads a sandbox's access token (its constants.py).
const SECURE_ACCESS_ANNOTATION: &str = "opensandbox.io/secure-access-token";
const ID: &str = "0f5c1d2e-4b6a-4c3e-9a1b-2d3e4f5a6b7c";

/// Records the tasks started; every task runs.
#[derive(Default)]
struct Recorder(Mutex<Vec<ProcessTask>>);

#[async_trait::async_trait]
impl TaskRunner for Recorder {
    async fn start(&self, _: &Pod, task: &ProcessTask) -> sandpool_controller::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.clone());
        Ok(())
    }
    async fn status(&self, _: &Pod) -> Option<Option<i32>> {
        Some(None)
    }
    async fn stop(&self, _: &Pod) -> sandpool_controller::Result<()> {
        Ok(())
    }
}

fn setup() -> (FakeApi, Arc<Context>, Arc<Recorder>) {
    let api = FakeApi::new();
    let tasks = Arc::new(Recorder::default());
    let inj = sandpool_controller::pods::RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    let ctx = Arc::new(Context::new(
        api.client(),
        inj,
        tasks.clone(),
        Some("test".into()),
    ));
    (api, ctx, tasks)
}

/// The BatchSandbox the server creates for `extensions.poolRef` (its
/// `_create_workload_from_pool` and `_build_task_template`, entrypoint
/// `["tail", "-f", "/dev/null"]`, timeout set, no `execd_run_as_init`).
fn pooled_batch(pool: &str) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": ID, "namespace": NS, "labels": {"opensandbox.io/id": ID}},
        "spec": {"replicas": 1, "poolRef": pool,
            "taskTemplate": {"spec": {"process": {
                "command": ["/bin/sh", "-c", "exec /opt/opensandbox/bootstrap.sh tail -f /dev/null"],
                "env": [{"name": "OPENSANDBOX_ID", "value": ID}]}}},
            "expireTime": "2099-01-01T00:00:00+00:00"}})
}

/// The BatchSandbox the server creates without a pool (template mode: its
/// execd installer copies upstream's execd and bootstrap.sh into
/// `/opt/opensandbox`, and the container runs that bootstrap.sh).
fn template_batch() -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
        "metadata": {"name": ID, "namespace": NS, "labels": {"opensandbox.io/id": ID}},
        "spec": {"replicas": 1, "template": {
            "metadata": {"labels": {"opensandbox.io/id": ID}, "annotations": {}},
            "spec": {"automountServiceAccountToken": false,
                "initContainers": [{"name": "execd-installer", "image": "opensandbox/execd:v1.0.18",
                    "command": ["/bin/sh", "-c"],
                    "args": ["cp ./execd /opt/opensandbox/execd && cp ./bootstrap.sh /opt/opensandbox/bootstrap.sh"],
                    "volumeMounts": [{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}]}],
                "containers": [{"name": "sandbox", "image": "python:3.12-slim",
                    "command": ["/opt/opensandbox/bootstrap.sh", "tail", "-f", "/dev/null"],
                    "env": [{"name": "OPENSANDBOX_ID", "value": ID}, {"name": "EXECD", "value": "/opt/opensandbox/execd"}],
                    "volumeMounts": [{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}]}],
                "volumes": [{"name": "opensandbox-bin", "emptyDir": {}}]}},
            "expireTime": "2099-01-01T00:00:00+00:00"}})
}

fn pool_obj(name: &str) -> Value {
    json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "sandbox", "image": "python:3.12-slim",
            "command": ["sleep", "infinity"]}]}},
            "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 1, "poolMax": 2}}})
}

fn names(api: &FakeApi, coll: &str) -> Vec<String> {
    api.with_store(|s| s.list(coll))
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Pods Ready (the kubelet) and a few rounds of the Pool and BatchSandbox
/// controllers.
async fn settle(api: &FakeApi, ctx: &Arc<Context>) {
    for _ in 0..4 {
        for n in names(api, &pools_path(NS)) {
            let p = Api::<Pool>::namespaced(ctx.client.clone(), NS)
                .get(&n)
                .await;
            let _ = pool::reconcile(Arc::new(p.expect("pool")), ctx.clone()).await;
        }
        for (i, n) in names(api, &pods_path(NS)).iter().enumerate() {
            api.with_store(|s| make_ready(s, NS, n, &format!("10.3.0.{}", i + 10), "node-a"));
        }
        for n in names(api, &batches_path(NS)) {
            let b = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
                .get(&n)
                .await;
            let _ = batch::reconcile(Arc::new(b.expect("batch")), ctx.clone()).await;
        }
    }
}

/// The pod of the batch (its shard 0).
fn pod_of(api: &FakeApi) -> Value {
    api.with_store(|s| s.list(&pods_path(NS)))
        .into_iter()
        .find(|p| p["metadata"]["annotations"][BATCH_NAME_ANNOTATION] == ID)
        .expect("the batch's pod")
}

fn token_of(pod: &Value) -> String {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "EXECD_ACCESS_TOKEN")
        .and_then(|e| e["value"].as_str())
        .expect("the runtime token")
        .to_string()
}

/// Where the pod's first container mounts `path`.
fn mount_at<'a>(pod: &'a Value, path: &str) -> Vec<&'a Value> {
    pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["mountPath"] == path)
        .collect()
}

#[tokio::test]
async fn the_servers_pooled_batchsandbox_runs_its_bootstrap_task_and_carries_the_token() {
    let (api, ctx, tasks) = setup();
    api.with_store(|s| s.put(&pools_path(NS), pool_obj("py")));
    settle(&api, &ctx).await;
    api.with_store(|s| s.put(&batches_path(NS), pooled_batch("py")));
    settle(&api, &ctx).await;

    let b = api
        .with_store(|s| s.get(&batches_path(NS), ID).cloned())
        .expect("batch");
    // what the server's create waits for, and reads the endpoint from
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    assert_eq!(b["status"]["taskFailed"], 0, "{b}");
    let pod = pod_of(&api);
    let ip = pod["status"]["podIP"].as_str().expect("ip");
    assert_eq!(
        b["metadata"]["annotations"][ENDPOINTS_ANNOTATION],
        json!([ip]).to_string()
    );
    // the server hands its SDK this as the `OpenSandbox-Secure-Access` header
    assert_eq!(
        b["metadata"]["annotations"][SECURE_ACCESS_ANNOTATION],
        token_of(&pod),
        "{b}"
    );
    // the task is the server's, unchanged; its bootstrap.sh is in the pod
    let started = tasks.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        started.first().map(|t| t.command.clone()),
        Some(vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "exec /opt/opensandbox/bootstrap.sh tail -f /dev/null".into()
        ])
    );
    let install = &pod["spec"]["initContainers"][0];
    assert_eq!(install["name"], "sandpool-runtime-install");
    assert!(
        install["command"]
            .as_array()
            .expect("command")
            .contains(&json!(
                "--install-bootstrap-to=/opt/sandpool/opensandbox/bootstrap.sh"
            )),
        "{install}"
    );
    assert_eq!(
        mount_at(&pod, "/opt/opensandbox"),
        vec![
            &json!({"name": "sandpool-runtime", "mountPath": "/opt/opensandbox",
            "subPath": "opensandbox", "readOnly": true})
        ],
        "{pod}"
    );
}

#[tokio::test]
async fn the_servers_template_batchsandbox_keeps_its_own_bootstrap_and_carries_the_token() {
    let (api, ctx, _) = setup();
    api.with_store(|s| s.put(&batches_path(NS), template_batch()));
    settle(&api, &ctx).await;
    let b = api
        .with_store(|s| s.get(&batches_path(NS), ID).cloned())
        .expect("batch");
    assert_eq!(b["status"]["phase"], "Succeed", "{b}");
    let pod = pod_of(&api);
    assert_eq!(
        b["metadata"]["annotations"][SECURE_ACCESS_ANNOTATION],
        token_of(&pod),
        "{b}"
    );
    // the template's own /opt/opensandbox (upstream's execd and bootstrap.sh) stays
    assert_eq!(
        mount_at(&pod, "/opt/opensandbox"),
        vec![&json!({"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"})],
        "{pod}"
    );
    // its bootstrap.sh runs under the runtime, which holds 44772 first
    let cmd = pod["spec"]["containers"][0]["command"]
        .as_array()
        .expect("command");
    assert_eq!(cmd[0], "/opt/sandpool/sandpool-runtime");
    assert!(cmd.ends_with(&[
        json!("--"),
        json!("/opt/opensandbox/bootstrap.sh"),
        json!("tail"),
        json!("-f"),
        json!("/dev/null")
    ]));
}

#[tokio::test]
async fn no_token_annotation_for_several_replicas() {
    let (api, ctx, _) = setup();
    api.with_store(|s| s.put(&pools_path(NS), pool_obj("py")));
    settle(&api, &ctx).await;
    let mut b = pooled_batch("py");
    b["spec"]["replicas"] = json!(2);
    api.with_store(|s| s.put(&batches_path(NS), b));
    settle(&api, &ctx).await;
    let b = api
        .with_store(|s| s.get(&batches_path(NS), ID).cloned())
        .expect("batch");
    assert_eq!(b["status"]["ready"], 2, "{b}");
    // one annotation cannot hold two pods' tokens
    assert!(
        b["metadata"]["annotations"]
            .get(SECURE_ACCESS_ANNOTATION)
            .is_none(),
        "{b}"
    );
}

// ------------------------------------------------- the real server, unchanged

/// A Python with upstream's server and SDK (`opensandbox-server`,
/// `opensandbox`): `SANDPOOL_OSRV_PYTHON` (the test command makes
/// `.venv-osrv` for it), else none and the test is skipped, except under
/// `CI=true`, where it must run.
fn server_python() -> Option<std::path::PathBuf> {
    let Some(python) = std::env::var_os("SANDPOOL_OSRV_PYTHON") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: set SANDPOOL_OSRV_PYTHON (scripts/test.sh makes .venv-osrv)"
        );
        return None;
    };
    let python = std::path::PathBuf::from(python);
    let ok = std::process::Command::new(&python)
        .args(["-c", "import opensandbox_server, opensandbox"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{} cannot import opensandbox_server", python.display());
    Some(python)
}

/// The fake apiserver on a loopback HTTP port.
async fn serve_http(api: FakeApi) -> std::net::SocketAddr {
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
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// The real task runner (the runtime's gRPC `Inject` at `<podIP>:44772`
/// with the pod's token), where the kubelet's mount of the runtime volume's
/// `opensandbox` directory at `/opt/opensandbox` is a host directory.
struct MountedBootstrap {
    dir: std::path::PathBuf,
}

#[async_trait::async_trait]
impl TaskRunner for MountedBootstrap {
    async fn start(&self, pod: &Pod, task: &ProcessTask) -> sandpool_controller::Result<()> {
        let mut task = task.clone();
        let host = format!("{}/", self.dir.display());
        for a in task.command.iter_mut().chain(task.args.iter_mut()) {
            *a = a.replace("/opt/opensandbox/", &host);
        }
        sandpool_controller::tasks::GrpcTaskRunner
            .start(pod, &task)
            .await
    }
    async fn status(&self, pod: &Pod) -> Option<Option<i32>> {
        sandpool_controller::tasks::GrpcTaskRunner.status(pod).await
    }
    async fn stop(&self, pod: &Pod) -> sandpool_controller::Result<()> {
        sandpool_controller::tasks::GrpcTaskRunner.stop(pod).await
    }
}

/// The kubelet: each new pool pod gets a loopback "pod IP" where a real
/// sandpool runtime listens on 44772 with the pod's token; then Ready.
/// And the controllers' rounds.
async fn kubelet_and_controllers(
    api: FakeApi,
    ctx: Arc<Context>,
    dir: std::path::PathBuf,
    runtimes: Arc<Mutex<Vec<sandpool_runtime::AppState>>>,
    images: Arc<Mutex<Vec<String>>>,
) {
    let mut next = 10;
    loop {
        for p in api.with_store(|s| s.list(&pods_path(NS))) {
            let name = p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !p["status"]["podIP"].is_null() || name.starts_with("agent-") {
                continue;
            }
            if let Some(image) = p["spec"]["containers"][0]["image"].as_str() {
                images
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(image.to_string());
            }
            let pod: Pod = serde_json::from_value(p).expect("pod");
            let token = sandpool_controller::pods::access_token(&pod).map(str::to_string);
            let ip = format!("127.0.21.{next}");
            next += 1;
            let state = sandpool_runtime::AppState::new(sandpool_runtime::Config {
                access_token: token,
                data_dir: dir.join(&name),
                ..Default::default()
            })
            .expect("runtime state");
            let l = tokio::net::TcpListener::bind((ip.as_str(), 44772))
                .await
                .expect("bind the pod's 44772");
            tokio::spawn(sandpool_runtime::serve(
                l,
                state.clone(),
                std::future::pending(),
            ));
            runtimes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(state);
            api.with_store(|s| make_ready(s, NS, &name, &ip, "node-a"));
        }
        for n in names(&api, &pools_path(NS)) {
            if let Ok(p) = Api::<Pool>::namespaced(ctx.client.clone(), NS)
                .get(&n)
                .await
            {
                let _ = pool::reconcile(Arc::new(p), ctx.clone()).await;
            }
        }
        for n in names(&api, &batches_path(NS)) {
            if let Ok(b) = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
                .get(&n)
                .await
            {
                let _ = batch::reconcile(Arc::new(b), ctx.clone()).await;
            }
        }
        let snaps = support::cr_path("sandbox.opensandbox.io", "sandboxsnapshots", NS);
        for n in names(&api, &snaps) {
            if let Ok(s) = Api::<SandboxSnapshot>::namespaced(ctx.client.clone(), NS)
                .get(&n)
                .await
            {
                let _ = sandpool_controller::snapshot::reconcile(Arc::new(s), ctx.clone()).await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What a user of the server does with its SDK (direct endpoints, the
/// server's default `ingress.mode`); prints what it saw as JSON.
const SDK_SCRIPT: &str = r#"
import json, sys, time
from datetime import timedelta
from opensandbox import SandboxSync
from opensandbox.config import ConnectionConfigSync

cfg = ConnectionConfigSync(domain=sys.argv[1], api_key="k", protocol="http",
                           request_timeout=timedelta(seconds=30))
sb = SandboxSync.create("python:3.12-slim", connection_config=cfg,
                        extensions={"poolRef": "py"}, timeout=timedelta(minutes=10),
                        ready_timeout=timedelta(seconds=30))
run = sb.commands.run("echo hello from the pod")
sb.files.write_file("/tmp/osrv-note.txt", "written through execd")
out = {"id": sb.id, "stdout": "".join(m.text for m in run.logs.stdout),
       "state": sb.get_info().status.state,
       "read": sb.files.read_file("/tmp/osrv-note.txt")}
def settled(sb, state):
    for _ in range(100):
        seen = sb.get_info().status.state
        if seen == state:
            break
        time.sleep(0.1)
    return seen

sb.pause()
out["paused"] = settled(sb, "Paused")
sb = SandboxSync.resume(sb.id, connection_config=cfg)
out["resumed"] = settled(sb, "Running")
out["after"] = "".join(m.text for m in sb.commands.run("echo again").logs.stdout)
sb.kill()
print(json.dumps(out))
"#;

/// The real server on a free loopback port, on the fake apiserver at `addr`
/// (its log in `tmp/server.log`); once it listens.
async fn start_server(
    python: &std::path::Path,
    tmp: &std::path::Path,
    addr: std::net::SocketAddr,
) -> (tokio::process::Child, u16) {
    let kubeconfig = tmp.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\n\
             current-context: c\n"
        ),
    )
    .expect("kubeconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = tmp.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhost = \"127.0.0.1\"\nport = {port}\napi_key = \"k\"\n\
             [runtime]\ntype = \"kubernetes\"\nexecd_image = \"opensandbox/execd:v1.1.0\"\n\
             [store]\ntype = \"sqlite\"\npath = \"{}\"\n\
             [kubernetes]\nkubeconfig_path = \"{}\"\nnamespace = \"{NS}\"\nworkload_provider = \"batchsandbox\"\n\
             [ingress]\nmode = \"direct\"\n",
            tmp.join("server.db").display(),
            kubeconfig.display()
        ),
    )
    .expect("config");
    let server = tokio::process::Command::new(python)
        .args(["-m", "opensandbox_server.cli", "--config"])
        .arg(&config)
        .env("HOME", tmp)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(tmp.join("server.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("the server");
    let mut up = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(tmp.join("server.log")).unwrap_or_default();
    assert!(up, "the server did not listen:\n{log}");
    (server, port)
}

/// The controllers' context, with a fake node agent on loopback as the
/// node agent DaemonSet pod (the calls it gets).
async fn with_node_agent(
    api: &FakeApi,
    bootstrap: std::path::PathBuf,
) -> (Arc<Context>, support::node_agent::Calls) {
    let (agent_port, calls) = support::node_agent::serve_agent(None).await;
    let token = "svc-secret-0123456789";
    let agents = sandpool_controller::kube_scheduler::DaemonSetAgents::new(
        api.client(),
        NS,
        sandpool_proto::auth::ServiceToken::new(Some(token)).expect("token"),
    )
    .at(
        sandpool_controller::kube_scheduler::NODE_AGENT_SELECTOR,
        agent_port,
    );
    let inj = sandpool_controller::pods::RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    let ctx = Context::new(
        api.client(),
        inj,
        Arc::new(MountedBootstrap { dir: bootstrap }),
        Some("test".into()),
    );
    (Arc::new(ctx.with_node_agents(Arc::new(agents))), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_upstream_server_creates_runs_pauses_and_deletes_a_pooled_sandbox() {
    let Some(python) = server_python() else {
        eprintln!("skipped: set SANDPOOL_OSRV_PYTHON to a Python with opensandbox-server");
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let bootstrap = tmp.path().join("vol/opensandbox");
    sandpool_runtime::opensandbox_bootstrap::install(&bootstrap.join("bootstrap.sh"))
        .expect("bootstrap");
    let api = FakeApi::new();
    let (ctx, calls) = with_node_agent(&api, bootstrap).await;
    api.with_store(|s| {
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", "node-a");
        s.put(&pools_path(NS), pool_obj("py"));
    });
    let addr = serve_http(api.clone()).await;
    let runtimes = Arc::new(Mutex::new(Vec::new()));
    let images = Arc::new(Mutex::new(Vec::new()));
    let driver = tokio::spawn(kubelet_and_controllers(
        api.clone(),
        ctx,
        tmp.path().join("runtimes"),
        runtimes.clone(),
        images.clone(),
    ));

    let (mut server, port) = start_server(&python, tmp.path(), addr).await;
    let log = || std::fs::read_to_string(tmp.path().join("server.log")).unwrap_or_default();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .args(["-c", SDK_SCRIPT, &format!("127.0.0.1:{port}")])
            .env("HOME", tmp.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK finished in time")
    .expect("the SDK ran");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let _ = server.kill().await;
    driver.abort();
    for rt in runtimes.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        rt.kill_all();
    }
    assert!(
        out.status.success(),
        "SDK failed:\n{stderr}\nserver:\n{}",
        log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    // execd's stdout events carry lines without their ending
    assert_eq!(seen["stdout"], "hello from the pod", "{seen}");
    assert_eq!(seen["read"], "written through execd", "{seen}");
    assert_eq!(seen["state"], "Running", "{seen}");
    assert_eq!(seen["paused"], "Paused", "{seen}");
    assert_eq!(seen["resumed"], "Running", "{seen}");
    assert_eq!(seen["after"], "again", "{seen}");
    // paused as upstream's controller pauses: the pod's root file system
    // committed by its node agent (then the pod deleted); resumed in a new
    // pod from that image, which ran the command after the resume
    let kinds: Vec<String> = calls.lock().iter().map(|c| c.0.clone()).collect();
    assert_eq!(kinds, ["commit"], "{kinds:?}");
    let images = images.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        images
            .iter()
            .any(|i| i.starts_with("sandpool.local/snapshots/") && i.contains("-sandbox:snap-gen")),
        "{images:?}"
    );
    // killed: the server deleted its BatchSandbox (gone, or its finalizer
    // still being released when the controllers stopped)
    let id = seen["id"].as_str().expect("id").to_string();
    let left = api.with_store(|s| s.get(&batches_path(NS), &id).cloned());
    assert!(
        left.as_ref()
            .is_none_or(|b| !b["metadata"]["deletionTimestamp"].is_null()),
        "{left:?}"
    );
}
