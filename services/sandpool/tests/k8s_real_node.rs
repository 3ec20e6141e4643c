//! Kubernetes mode against a real node (issue 21): the OpenSandbox REST API
//! of the gateway over the CRD-backed scheduler, the batch controller, the
//! controller tests' fake apiserver, and the real node agent in Kubernetes
//! mode (`CriNodeService`, served with the service token check as the
//! DaemonSet serves it) on a private containerd whose `k8s.io` namespace
//! holds pods made as containerd's CRI plugin makes them (the node agent
//! testkit's `CriTestNode`). A small "kubelet" loop here runs every pod the
//! controller puts in the fake apiserver on that containerd and marks it
//! Ready on node-a. Pause and resume (REST and `spec.pause`) must really
//! freeze the pod's app containers; mounts must really appear inside them;
//! pods sandpool did not make must be left alone.
//!
//! Needs root and containerd (the node agent containerd tests' gate).

#[path = "../../controller/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use parking_lot::Mutex;
use sandpool_controller::batch;
use sandpool_controller::context::Context;
use sandpool_controller::crd::BatchSandbox;
use sandpool_controller::kube_scheduler::{DaemonSetAgents, KubeScheduler, NODE_AGENT_SELECTOR};
use sandpool_controller::pods::RuntimeInjection;
use sandpool_node_agent::containerd::TaskState;
use sandpool_node_agent::cri::{CriNode, CriNodeService};
use sandpool_node_agent::testkit::cri::{CriTestNode, CriTestPod, K8S_NAMESPACE};
use sandpool_proto::auth::{RequireToken, ServiceToken};
use sandpool_proto::v1::{self as pb, node_agent_client::NodeAgentClient};
use serde_json::{Value, json};
use support::{FakeApi, NoTasks, batches_path, make_ready, pods_path};

const NS: &str = "sandpool";
const NODE: &str = "node-a";
const TOKEN: &str = "svc-secret-0123456789";

/// The pods the "kubelet" ran, by pod name.
type Ran = Arc<Mutex<HashMap<String, CriTestPod>>>;

struct Rig {
    api: FakeApi,
    app: axum::Router,
    node: Arc<CriTestNode>,
    ran: Ran,
    agent_port: u16,
    volumes: tempfile::TempDir,
    loops: tokio::task::JoinHandle<()>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.loops.abort();
    }
}

/// Serve the Kubernetes-mode node agent of `node` on loopback, behind the
/// service token check; mounts come from under `volumes`.
async fn serve_node_agent(node: &CriTestNode, volumes: &std::path::Path) -> u16 {
    let ctr = sandpool_node_agent::containerd::Ctr::connect(
        &node.socket(),
        K8S_NAMESPACE,
        Duration::from_secs(10),
    )
    .await
    .expect("containerd");
    let cri = CriNode::new(ctr, NODE).with_mount_roots(vec![volumes.to_path_buf()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let auth = RequireToken::new(Some(TOKEN)).expect("token");
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(auth))
            .add_service(pb::node_agent_server::NodeAgentServer::new(CriNodeService(
                Arc::new(cri),
            )))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

/// One round of the "kubelet": every pod the controller made that is not
/// running yet is run on the CRI node, then marked Ready on node-a.
async fn kubelet_round(api: &FakeApi, node: &CriTestNode, ran: &Ran) {
    let pending: Vec<Value> = api.with_store(|s| {
        s.list(&pods_path(NS))
            .into_iter()
            .filter(|p| p["status"]["podIP"].is_null())
            .collect()
    });
    for p in pending {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let labels: Vec<(String, String)> = p["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let containers: Vec<String> = p["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let names: Vec<&str> = containers.iter().map(String::as_str).collect();
        let pod = node.run_pod(NS, &name, &labels, &names).await;
        ran.lock().insert(name.clone(), pod);
        api.with_store(|s| make_ready(s, NS, &name, "10.2.0.7", NODE));
    }
}

async fn rig() -> Option<Rig> {
    sandpool_node_agent::testkit::gate()?;
    let node = Arc::new(CriTestNode::start().await);
    let volumes = tempfile::Builder::new()
        .prefix("spcri-volumes")
        .tempdir_in("/tmp")
        .expect("volumes");
    let agent_port = serve_node_agent(&node, volumes.path()).await;
    let api = FakeApi::new();
    api.with_store(|s| {
        s.put(
            &pods_path(NS),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "agent-a", "labels": {"app.kubernetes.io/component": "node-agent"}},
                "spec": {"containers": [{"name": "node-agent", "image": "x"}]}}),
        );
        make_ready(s, NS, "agent-a", "127.0.0.1", NODE);
    });
    let agents = || {
        let token = ServiceToken::new(Some(TOKEN)).expect("token");
        Arc::new(DaemonSetAgents::new(api.client(), NS, token).at(NODE_AGENT_SELECTOR, agent_port))
    };
    let inj = RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    let ctx = Arc::new(
        Context::new(
            api.client(),
            inj,
            Arc::new(NoTasks(Some(None))),
            Some("test".into()),
        )
        .with_node_agents(agents()),
    );
    let ran: Ran = Arc::default();
    let loops = {
        let (api, node, ran, ctx) = (api.clone(), node.clone(), ran.clone(), ctx.clone());
        tokio::spawn(async move {
            loop {
                let all = Api::<BatchSandbox>::namespaced(ctx.client.clone(), NS)
                    .list(&Default::default())
                    .await
                    .expect("list");
                for b in all.items {
                    let _ = batch::reconcile(Arc::new(b), ctx.clone()).await;
                }
                kubelet_round(&api, &node, &ran).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut sched = KubeScheduler::new(api.client(), NS, Arc::new(NoTasks(Some(None))))
        .with_node_agents(agents());
    sched.poll = Duration::from_millis(10);
    let client = sandpool_testsupport::serve_scheduler(sched).await;
    let app = sandpool_gateway::app(sandpool_gateway::Gateway::new(client, &[]));
    Some(Rig {
        api,
        app,
        node,
        ran,
        agent_port,
        volumes,
        loops,
    })
}

/// `(status, body)` of an OpenSandbox API call.
async fn call(app: &axum::Router, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let req = http::Request::builder().method(method).uri(path);
    let (status, _, bytes) = sandpool_testsupport::send(app, req, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Create a busybox sandbox through REST (with `volumes`); its id and pod.
async fn create(rig: &Rig, volumes: Value) -> (String, CriTestPod) {
    let before: Vec<String> = rig.ran.lock().keys().cloned().collect();
    let (code, created) = call(
        &rig.app,
        "POST",
        "/v1/sandboxes",
        &json!({"image": {"uri": "busybox"}, "timeout": 600,
            "entrypoint": ["sleep", "infinity"], "volumes": volumes}),
    )
    .await;
    assert!(code < 300, "{code} {created}");
    let id = created["id"].as_str().expect("id").to_string();
    let pod = rig
        .ran
        .lock()
        .iter()
        .find(|(n, _)| !before.contains(n))
        .map(|(_, p)| p.clone())
        .expect("the claim's pod ran on the node");
    (id, pod)
}

/// Each app container's task state and whether its cgroup is frozen; and
/// the sandbox (pause) container's task state.
async fn states(node: &CriTestNode, pod: &CriTestPod) -> (Vec<(TaskState, bool)>, TaskState) {
    let mut apps = Vec::new();
    for (c, _) in &pod.containers {
        let (st, pid) = node
            .ctr()
            .task_state(c)
            .await
            .expect("state")
            .expect("task");
        apps.push((st, CriTestNode::cgroup_frozen(pid)));
    }
    let (sb, _) = node
        .ctr()
        .task_state(&pod.sandbox_id)
        .await
        .expect("state")
        .expect("sandbox task");
    (apps, sb)
}

type AgentClient = NodeAgentClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ServiceToken>,
>;

/// A client of the node agent with the service token, as the controller's.
async fn agent(port: u16) -> AgentClient {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    NodeAgentClient::with_interceptor(ch, ServiceToken::new(Some(TOKEN)).expect("token"))
}

fn all(pod: &CriTestPod, st: TaskState, frozen: bool) -> Vec<(TaskState, bool)> {
    vec![(st, frozen); pod.containers.len()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_pause_and_resume_freeze_and_thaw_the_pods_containers_in_containerd() {
    let Some(rig) = rig().await else { return };
    let (id, pod) = create(&rig, json!([])).await;
    assert_eq!(
        states(&rig.node, &pod).await,
        (all(&pod, TaskState::Running, false), TaskState::Running)
    );

    let (code, body) = call(
        &rig.app,
        "POST",
        &format!("/v1/sandboxes/{id}/pause"),
        &Value::Null,
    )
    .await;
    assert!(code < 300, "{code} {body}");
    // the app containers are frozen; the pod's pause container is left be
    assert_eq!(
        states(&rig.node, &pod).await,
        (all(&pod, TaskState::Paused, true), TaskState::Running)
    );
    let (_, got) = call(
        &rig.app,
        "GET",
        &format!("/v1/sandboxes/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(got["status"]["state"], "Paused", "{got}");
    // pausing twice is a conflict, as in standalone
    let (code, body) = call(
        &rig.app,
        "POST",
        &format!("/v1/sandboxes/{id}/pause"),
        &Value::Null,
    )
    .await;
    assert_eq!(code, 409, "{body}");
    // nothing is mounted into a frozen pod
    let m = pb::MountRequest {
        sandbox_id: pod.id(),
        host_path: "+v".into(),
        mount_path: "/mnt/v".into(),
        read_only: false,
    };
    let s = agent(rig.agent_port)
        .await
        .mount(m)
        .await
        .expect_err("paused");
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");

    let (code, body) = call(
        &rig.app,
        "POST",
        &format!("/v1/sandboxes/{id}/resume"),
        &Value::Null,
    )
    .await;
    assert!(code < 300, "{code} {body}");
    assert_eq!(
        states(&rig.node, &pod).await,
        (all(&pod, TaskState::Running, false), TaskState::Running)
    );
    let (_, got) = call(
        &rig.app,
        "GET",
        &format!("/v1/sandboxes/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(got["status"]["state"], "Running", "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_spec_pause_freezes_and_thaws_the_batchs_pods_in_containerd() {
    let Some(rig) = rig().await else { return };
    rig.api.with_store(|s| {
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b", "generation": 1},
                "spec": {"replicas": 2,
                    "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        )
    });
    let phase = |want: &'static str| {
        let api = rig.api.clone();
        async move {
            for _ in 0..1000 {
                let b = api.with_store(|s| s.get(&batches_path(NS), "b").cloned());
                if b.as_ref().is_some_and(|b| b["status"]["phase"] == want) {
                    return b.unwrap_or_default();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("batch never reached {want}");
        }
    };
    phase("Succeed").await;
    let pods: Vec<CriTestPod> = ["b-0", "b-1"]
        .iter()
        .map(|n| rig.ran.lock().get(*n).cloned().expect("pod ran"))
        .collect();
    let set_pause = |pause: bool, generation: i64| {
        rig.api.with_store(|s| {
            s.mutate(&batches_path(NS), "b", |b| {
                b["spec"]["pause"] = json!(pause);
                b["metadata"]["generation"] = json!(generation);
            })
        })
    };
    set_pause(true, 2);
    let b = phase("Paused").await;
    assert_eq!(b["status"]["pauseObservedGeneration"], 2, "{b}");
    for p in &pods {
        assert_eq!(
            states(&rig.node, p).await,
            (all(p, TaskState::Paused, true), TaskState::Running),
            "{}",
            p.id()
        );
    }
    set_pause(false, 3);
    phase("Succeed").await;
    for p in &pods {
        assert_eq!(
            states(&rig.node, p).await,
            (all(p, TaskState::Running, false), TaskState::Running),
            "{}",
            p.id()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_leaves_pods_sandpool_did_not_make_alone() {
    let Some(rig) = rig().await else { return };
    // the node's other pods: another namespace's, and one beside sandpool's
    // own in its namespace (the gateway's) that lacks the managed-by label
    let web = rig
        .node
        .run_pod("other", "web", &[("app", "web")], &["nginx"])
        .await;
    let gw = rig
        .node
        .run_pod(
            NS,
            "sandpool-gateway-7d9",
            &[("app.kubernetes.io/component", "gateway")],
            &["gateway"],
        )
        .await;
    let mut agent = agent(rig.agent_port).await;
    let listed = agent
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.sandboxes.is_empty(), "{listed:?}");
    for p in [&web, &gw] {
        let r = pb::PauseRequest {
            sandbox_id: p.id(),
            filesystem_only: false,
        };
        let s = agent.pause(r.clone()).await.expect_err("refused");
        assert_eq!(s.code(), tonic::Code::NotFound, "{}: {s:?}", p.id());
        let m = pb::MountRequest {
            sandbox_id: p.id(),
            host_path: "+v".into(),
            mount_path: "/mnt/v".into(),
            read_only: false,
        };
        let s = agent.mount(m).await.expect_err("refused");
        assert_eq!(s.code(), tonic::Code::NotFound, "{}: {s:?}", p.id());
        assert_eq!(
            states(&rig.node, p).await,
            (all(p, TaskState::Running, false), TaskState::Running)
        );
    }
    // and no call without the service token is served
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", rig.agent_port))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
    let s = NodeAgentClient::new(ch)
        .pause(pb::PauseRequest {
            sandbox_id: web.id(),
            filesystem_only: false,
        })
        .await
        .expect_err("no token");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_create_volumes_are_mounted_into_the_pods_containers() {
    let Some(rig) = rig().await else { return };
    let shared = rig.volumes.path().join("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    std::fs::write(shared.join("hello.txt"), "from the node").expect("write");
    let (_, pod) = create(
        &rig,
        json!([
            {"name": "shared", "host": {"path": shared.display().to_string()}, "mountPath": "/mnt/shared", "readOnly": true},
            {"name": "cache", "pvc": {"claimName": "cache"}, "mountPath": "/cache"}
        ]),
    )
    .await;
    for (c, name) in &pod.containers {
        let pid = rig.node.pid(c).await;
        let root = format!("/proc/{pid}/root");
        let got = std::fs::read_to_string(format!("{root}/mnt/shared/hello.txt"));
        assert_eq!(got.ok().as_deref(), Some("from the node"), "{name}");
        // read-only inside, while the node's own path stays writable
        let err = std::fs::write(format!("{root}/mnt/shared/x"), "x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
        // the named volume was made on the node and is the same directory
        std::fs::write(format!("{root}/cache/{name}"), "w").expect("write the volume");
        assert!(
            rig.volumes.path().join("cache").join(name).is_file(),
            "{name}"
        );
    }

    // a host path outside the node agent's mount roots: refused, no claim left
    // (a deleted BatchSandbox may linger, marked, until its finalizer runs)
    let live = |api: &FakeApi| {
        api.with_store(|s| s.list(&batches_path(NS)))
            .iter()
            .filter(|b| b["metadata"]["deletionTimestamp"].is_null())
            .count()
    };
    let before = live(&rig.api);
    let (code, body) = call(
        &rig.app,
        "POST",
        "/v1/sandboxes",
        &json!({"image": {"uri": "busybox"}, "timeout": 600, "entrypoint": ["sleep", "infinity"],
            "volumes": [{"name": "etc", "host": {"path": "/etc"}, "mountPath": "/mnt/etc"}]}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string().contains("not under a mount root"),
        "{body}"
    );
    assert_eq!(
        live(&rig.api),
        before,
        "the refused claim's BatchSandbox is deleted"
    );
}
