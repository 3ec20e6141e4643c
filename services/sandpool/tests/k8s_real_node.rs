//! Kubernetes mode against a real node (issue 21): the OpenSandbox REST API
//! of the gateway over the CRD-backed scheduler, the batch controller, the
//! controller tests' fake apiserver, and the real node agent in Kubernetes
//! mode (`CriNodeService`, served with the service token check as the
//! DaemonSet serves it) on a private containerd whose `k8s.io` namespace
//! holds pods made as containerd's CRI plugin makes them (the node agent
//! testkit's `CriTestNode`). A small "kubelet" loop here runs every pod the
//! controller puts in the fake apiserver on that containerd and marks it
//! Ready on node-a (from the image its pod spec names when that is a
//! snapshot's, else busybox), and removes the containers of pods deleted.
//! REST pause and resume must really freeze the pod's app containers;
//! `spec.pause` must commit the pod into an image, delete the pod and make
//! it again from that image; mounts must really appear inside the pods'
//! containers; pods sandpool did not make must be left alone.
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
use sandpool_controller::crd::{BatchSandbox, SandboxSnapshot};
use sandpool_controller::kube_scheduler::{DaemonSetAgents, KubeScheduler, NODE_AGENT_SELECTOR};
use sandpool_controller::pods::RuntimeInjection;
use sandpool_controller::snapshot;
use sandpool_node_agent::containerd::TaskState;
use sandpool_node_agent::cri::{CriNode, CriNodeService};
use sandpool_node_agent::testkit::cri::{CriTestNode, CriTestPod, K8S_NAMESPACE};
use sandpool_proto::auth::{RequireToken, ServiceToken};
use sandpool_proto::v1::{self as pb, node_agent_client::NodeAgentClient};
use serde_json::{Value, json};
use support::node_agent::put_agent_pod;
use support::{FakeApi, NoTasks, batches_path, make_ready, pods_path};

const NS: &str = "sandpool";
const NODE: &str = "node-a";
const TOKEN: &str = "svc-secret-0123456789";
/// Where snapshot images are (node-local, never pulled).
const SNAPSHOTS: &str = "sandpool.local/snapshots/";

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
    // the pods deleted from the apiserver are removed from the node
    let live: Vec<String> = api.with_store(|s| {
        s.list(&pods_path(NS))
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    });
    let gone: Vec<CriTestPod> = {
        let mut ran = ran.lock();
        let names: Vec<String> = ran.keys().filter(|n| !live.contains(n)).cloned().collect();
        names.iter().filter_map(|n| ran.remove(n)).collect()
    };
    for p in gone {
        node.remove_pod(&p).await;
    }
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
        // each container from its image: a snapshot's is on this node;
        // any other stands for the testkit's busybox
        let containers: Vec<(String, String)> = p["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let image = c["image"].as_str().unwrap_or_default();
                let image = if image.starts_with(SNAPSHOTS) {
                    image
                } else {
                    sandpool_node_agent::image::BUSYBOX
                };
                Some((c["name"].as_str()?.to_string(), image.to_string()))
            })
            .collect();
        let images: Vec<(&str, &str)> = containers
            .iter()
            .map(|(n, i)| (n.as_str(), i.as_str()))
            .collect();
        let pod = node.run_pod_images(NS, &name, &labels, &images).await;
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
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", NODE);
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
                let snaps = Api::<SandboxSnapshot>::namespaced(ctx.client.clone(), NS)
                    .list(&Default::default())
                    .await
                    .expect("list");
                for s in snaps.items {
                    let _ = snapshot::reconcile(Arc::new(s), ctx.clone()).await;
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
async fn batch_spec_pause_commits_deletes_and_remakes_the_pod_from_its_snapshot_in_containerd() {
    let Some(rig) = rig().await else { return };
    rig.api.with_store(|s| {
        s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b", "generation": 1},
                "spec": {"replicas": 1,
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
    let before = rig.ran.lock().get("b-0").cloned().expect("pod ran");
    // the sandbox's work, in its container's root file system
    let pid = rig.node.pid(&before.containers[0].0).await;
    std::fs::create_dir_all(format!("/proc/{pid}/root/work")).expect("mkdir");
    std::fs::write(
        format!("/proc/{pid}/root/work/result.txt"),
        "kept across the pause\n",
    )
    .expect("write");
    let set_pause = |pause: bool| {
        rig.api.with_store(|s| {
            s.mutate(&batches_path(NS), "b", |b| {
                let g = b["metadata"]["generation"].as_i64().unwrap_or(1);
                b["spec"]["pause"] = json!(pause);
                b["metadata"]["generation"] = json!(g + 1);
            })
        })
    };
    set_pause(true);
    phase("Paused").await;
    // committed into k8s.io, and the pod deleted
    let uri = "sandpool.local/snapshots/b-c:snap-gen2";
    assert!(
        rig.node.ctr().image(uri).await.expect("image").is_some(),
        "{uri}"
    );
    assert!(
        rig.api
            .with_store(|s| s.get(&pods_path(NS), "b-0").is_none())
    );

    set_pause(false);
    let b = phase("Succeed").await;
    assert_eq!(b["spec"]["template"]["spec"]["nodeName"], NODE, "{b}");
    let after = rig.ran.lock().get("b-0").cloned().expect("pod made again");
    assert_ne!(after.uid, before.uid, "a new pod");
    // the new pod's container runs from the snapshot: the work is there
    let (st, pid) = rig
        .node
        .ctr()
        .task_state(&after.containers[0].0)
        .await
        .expect("state")
        .expect("task");
    assert_eq!(st, TaskState::Running);
    let got = std::fs::read_to_string(format!("/proc/{pid}/root/work/result.txt"));
    assert_eq!(got.ok().as_deref(), Some("kept across the pause\n"));
    let snap = rig.api.with_store(|s| {
        s.get(
            &support::cr_path("sandbox.opensandbox.io", "sandboxsnapshots", NS),
            "b-pause",
        )
        .cloned()
    });
    assert!(
        snap.is_none(),
        "the pause snapshot is deleted once resumed: {snap:?}"
    );
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
