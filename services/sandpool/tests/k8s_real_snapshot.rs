//! OpenSandbox `SandboxSnapshot` against a real node (issue 21): the
//! snapshot controller over the controller tests' fake apiserver, the real
//! node agent in Kubernetes mode (`CriNodeService` behind the service token
//! check, found as the DaemonSet pod of node-a) and a private containerd
//! whose `k8s.io` namespace holds a pod made as containerd's CRI plugin
//! makes it (the node agent testkit's `CriTestNode`). What the pod's
//! container wrote (and deleted) must be in the committed image, on top of
//! the image it ran; a gVisor pod is refused.
//!
//! Needs root and containerd (the node agent containerd tests' gate).

#[path = "../../controller/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use sandpool_controller::context::Context;
use sandpool_controller::crd::{ALLOCATED_TO_LABEL, SandboxSnapshot, all_crds};
use sandpool_controller::kube_scheduler::{DaemonSetAgents, NODE_AGENT_SELECTOR};
use sandpool_controller::pods::RuntimeInjection;
use sandpool_controller::snapshot;
use sandpool_controller::snapshot_registry::SnapshotRegistry;
use sandpool_node_agent::containerd::{Ctr, NewContainer};
use sandpool_node_agent::cri::{CriNode, CriNodeService};
use sandpool_node_agent::testkit::cri::{CriTestNode, CriTestPod, K8S_NAMESPACE};
use sandpool_proto::auth::{RequireToken, ServiceToken};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};
use support::node_agent::put_agent_pod;
use support::{FakeApi, NoTasks, batches_path, cr_path, make_ready, pods_path};

const NS: &str = "sandpool";
const NODE: &str = "node-a";
const TOKEN: &str = "svc-secret-0123456789";
const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", "sandpool");

/// Serve the Kubernetes-mode node agent of `node` on loopback, behind the
/// service token check.
async fn serve_node_agent(node: &CriTestNode) -> u16 {
    let ctr = Ctr::connect(&node.socket(), K8S_NAMESPACE, Duration::from_secs(10))
        .await
        .expect("containerd");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let auth = RequireToken::new(Some(TOKEN)).expect("token");
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(auth))
            .add_service(pb::node_agent_server::NodeAgentServer::new(CriNodeService(
                Arc::new(CriNode::new(ctr, NODE)),
            )))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

/// The fake apiserver (the generated CRDs enforced) with the node agent pod
/// of node-a, batch `b` and its one pod `b-0` Running on node-a, and a
/// snapshot `s` of `b`; the controller's context.
async fn cluster(agent_port: u16) -> (FakeApi, Arc<Context>) {
    cluster_with(agent_port, SnapshotRegistry::default()).await
}

/// [`cluster`] with snapshot images going where `snapshots` says.
async fn cluster_with(agent_port: u16, snapshots: SnapshotRegistry) -> (FakeApi, Arc<Context>) {
    let api = FakeApi::new();
    api.enforce_schemas(&all_crds());
    api.with_store(|s| {
        put_agent_pod(s, NS, "agent-a", "127.0.0.1", NODE);
        let b = s.put(
            &batches_path(NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"},
                "spec": {"replicas": 1,
                    "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}}}),
        );
        let uid = b["metadata"]["uid"].clone();
        s.put(
            &pods_path(NS),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "b-0", "labels": {ALLOCATED_TO_LABEL: uid, MANAGED.0: MANAGED.1},
                    "annotations": {"sandbox.opensandbox.io/shard": "0"}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]}}),
        );
        make_ready(s, NS, "b-0", "10.2.0.7", NODE);
        s.put(
            &cr_path("sandbox.opensandbox.io", "sandboxsnapshots", NS),
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "SandboxSnapshot",
                "metadata": {"name": "s", "generation": 1}, "spec": {"sandboxName": "b"}}),
        );
    });
    let agents = DaemonSetAgents::new(
        api.client(),
        NS,
        ServiceToken::new(Some(TOKEN)).expect("token"),
    )
    .at(NODE_AGENT_SELECTOR, agent_port);
    let inj = RuntimeInjection {
        image: "ghcr.io/sandpool/sandpool:test".into(),
        image_pull_policy: None,
    };
    let ctx = Context::new(api.client(), inj, Arc::new(NoTasks(None)), Some("t".into()));
    let ctx = ctx
        .with_node_agents(Arc::new(agents))
        .with_snapshot_registry(snapshots);
    (api, Arc::new(ctx))
}

async fn reconcile_snapshot(ctx: &Arc<Context>) -> Value {
    let api: Api<SandboxSnapshot> = Api::namespaced(ctx.client.clone(), NS);
    let s = api.get("s").await.expect("snapshot");
    snapshot::reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("reconcile");
    let s = api.get("s").await.expect("snapshot");
    serde_json::to_value(s.status).expect("status")
}

/// A path inside the root file system of the pod's container.
fn in_container(pid: u32, rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{pid}/root/{rel}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_commits_what_the_pods_container_wrote_into_a_k8s_io_image() {
    if sandpool_node_agent::testkit::gate().is_none() {
        return;
    }
    let node = CriTestNode::start().await;
    let pod: CriTestPod = node.run_pod(NS, "b-0", &[MANAGED], &["main"]).await;
    let pid = node.pid(&pod.containers[0].0).await;
    // the container writes a file, changes one and deletes one of its image
    std::fs::create_dir_all(in_container(pid, "work")).expect("mkdir");
    std::fs::write(in_container(pid, "work/result.txt"), "written in the pod\n").expect("write");
    std::fs::write(in_container(pid, "etc/group"), "snap:x:1234:\n").expect("write");
    std::fs::remove_file(in_container(pid, "etc/hosts")).expect("rm");
    let port = serve_node_agent(&node).await;
    let (_api, ctx) = cluster(port).await;

    let st = reconcile_snapshot(&ctx).await;
    assert_eq!(st["phase"], "Succeed", "{st}");
    assert_eq!(st["sourcePodName"], "b-0");
    assert_eq!(st["sourceNodeName"], NODE);
    let uri = st["containers"][0]["imageUri"]
        .as_str()
        .expect("uri")
        .to_string();
    let digest = st["containers"][0]["imageDigest"].as_str().expect("digest");
    assert!(
        uri.starts_with("sandpool.local/snapshots/b-main:snap-"),
        "{uri}"
    );

    // the image is in k8s.io under that name, at that digest, and unpacked
    let ctr = node.ctr();
    // the snapshot's size is the image's content: manifest, config, layers
    let manifest = ctr.read_content(digest).await.expect("manifest");
    let m: Value = serde_json::from_slice(&manifest).expect("manifest json");
    let sizes = std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten());
    let content: u64 =
        manifest.len() as u64 + sizes.filter_map(|d| d["size"].as_u64()).sum::<u64>();
    let snaps: Api<SandboxSnapshot> = Api::namespaced(ctx.client.clone(), NS);
    let s = snaps.get("s").await.expect("snapshot");
    let size = s.metadata.annotations.unwrap_or_default()[snapshot::SIZE_ANNOTATION].clone();
    assert_eq!(size, content.to_string());
    let img = ctr
        .image(&uri)
        .await
        .expect("image")
        .expect("committed image");
    assert_eq!(img.target.expect("target").digest, digest);
    let (chain, config) = ctr
        .image_rootfs(&uri)
        .await
        .expect("rootfs")
        .expect("unpacked");
    let files = ctr
        .read_image_files(
            &chain,
            &["work/result.txt", "etc/group", "etc/hosts", "bin/bash"],
        )
        .await
        .expect("read");
    assert_eq!(files[0].as_deref(), Some("written in the pod\n"));
    assert_eq!(files[1].as_deref(), Some("snap:x:1234:\n"));
    assert_eq!(files[2], None, "the deleted file is whited out");
    assert!(
        files[3]
            .as_deref()
            .is_some_and(|s| s.contains("exec /bin/sh")),
        "the image's own layer is below: {:?}",
        files[3]
    );
    // the image config of the base is kept
    assert!(
        config.env.iter().any(|e| e.starts_with("PATH=")),
        "{config:?}"
    );
    // the container runs again after the commit
    let (state, _) = ctr
        .task_state(&pod.containers[0].0)
        .await
        .expect("state")
        .expect("task");
    assert_eq!(state, sandpool_node_agent::containerd::TaskState::Running);
    node.remove_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_gvisor_pod_is_refused_naming_runsc() {
    if sandpool_node_agent::testkit::gate().is_none() {
        return;
    }
    let node = CriTestNode::start().await;
    let ctr = node.ctr();
    let (chain, _) = ctr
        .image_rootfs(sandpool_node_agent::image::BUSYBOX)
        .await
        .expect("rootfs")
        .expect("busybox");
    // a pod whose containers the runc shim runs with runsc (never started:
    // the refusal comes first)
    let kube = |kind: &str, container: &str| -> HashMap<String, String> {
        [
            ("io.kubernetes.pod.name", "b-0"),
            ("io.kubernetes.pod.namespace", NS),
            ("io.kubernetes.pod.uid", "uid-gvisor"),
            ("io.kubernetes.container.name", container),
            ("io.cri-containerd.kind", kind),
            MANAGED,
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let spec = json!({"ociVersion": "1.0.2-dev", "process": {"args": ["true"], "cwd": "/"},
        "root": {"path": "rootfs"}});
    for (id, kind, name) in [
        ("gv-sandbox", "sandbox", ""),
        ("gv-main", "container", "main"),
    ] {
        ctr.create_container(NewContainer {
            id,
            snapshot_key: id,
            image: sandpool_node_agent::image::BUSYBOX,
            parent_snapshot: &chain,
            labels: kube(kind, name),
            spec: &spec,
            runtime_binary: "/usr/local/bin/runsc",
        })
        .await
        .expect("create");
    }
    let port = serve_node_agent(&node).await;
    let (_api, ctx) = cluster(port).await;
    let st = reconcile_snapshot(&ctx).await;
    assert_eq!(st["phase"], "Failed", "{st}");
    let msg = st["conditions"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("gVisor (runsc)"), "{msg}");
    assert_eq!(st["conditions"][0]["reason"], "CommitFailed");
    let names = ctr.list_images().await.expect("images");
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("sandpool.local/snapshots/")),
        "{names:?}"
    );
    node.remove_all().await;
}

/// A blob of the registry's storage (`docker-registry`'s filesystem driver).
fn registry_blob(dir: &std::path::Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    let p = dir.join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The push secret `sandpool-snapshot-push` (a dockerconfigjson of `registry` for ann with
/// `password`) in the fake apiserver.
fn put_push_secret(api: &FakeApi, registry: &str, password: &str) {
    let auths = json!({"auths": {registry: {"username": "ann", "password": password}}});
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(auths.to_string());
    api.with_store(|s| {
        let path = format!("/api/v1/namespaces/{NS}/secrets");
        s.delete(&path, "sandpool-snapshot-push");
        s.put(
            &path,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sandpool-snapshot-push"},
                "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": data}}),
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_registry_is_pushed_with_the_push_secrets_credentials() {
    use sandpool_node_agent::testkit::registry::{Registry, gate_tools, run};
    if sandpool_node_agent::testkit::gate()
        .filter(|_| gate_tools())
        .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let htpasswd = dir.path().join("htpasswd");
    let line = run(std::process::Command::new("htpasswd").args(["-Bbn", "ann", "s3cret"]));
    std::fs::write(&htpasswd, line).expect("htpasswd");
    let reg = Registry::start(&dir.path().join("reg"), Some(&htpasswd));
    let node = CriTestNode::start().await;
    let pod: CriTestPod = node.run_pod(NS, "b-0", &[MANAGED], &["main"]).await;
    let pid = node.pid(&pod.containers[0].0).await;
    std::fs::write(in_container(pid, "pushed.txt"), "written before the push\n").expect("write");
    let port = serve_node_agent(&node).await;
    let cfg = SnapshotRegistry::new(
        Some(&format!("{}/snaps", reg.addr)),
        false,
        Some("sandpool-snapshot-push"),
    )
    .expect("flags");
    let (api, ctx) = cluster_with(port, cfg).await;

    // a wrong password: the push fails the snapshot, naming why, never the password
    put_push_secret(&api, &reg.addr, "wr0ng-pw-77");
    let st = reconcile_snapshot(&ctx).await;
    assert_eq!(st["phase"], "Failed", "{st}");
    let msg = st["conditions"][0]["message"].as_str().unwrap_or_default();
    assert_eq!(st["conditions"][0]["reason"], "CommitFailed", "{st}");
    assert!(
        msg.contains("pushing") && msg.contains("401 Unauthorized"),
        "{msg}"
    );
    assert!(!msg.contains("wr0ng-pw-77"), "{msg}");

    // the right one: pushed, the digest the registry serves
    put_push_secret(&api, &reg.addr, "s3cret");
    api.with_store(|s| {
        let path = cr_path("sandbox.opensandbox.io", "sandboxsnapshots", NS);
        s.delete(&path, "s");
        s.put(
            &path,
            json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "SandboxSnapshot",
                "metadata": {"name": "s", "generation": 1}, "spec": {"sandboxName": "b"}}),
        );
    });
    let st = reconcile_snapshot(&ctx).await;
    assert_eq!(st["phase"], "Succeed", "{st}");
    let uri = st["containers"][0]["imageUri"]
        .as_str()
        .expect("uri")
        .to_string();
    let digest = st["containers"][0]["imageDigest"]
        .as_str()
        .expect("digest")
        .to_string();
    assert!(
        uri.starts_with(&format!("{}/snaps/b-main:snap-", reg.addr)),
        "{uri}"
    );

    // the registry holds the manifest and its layers: the top layer (an
    // uncompressed tar) has the file the pod wrote
    let manifest: Value = serde_json::from_slice(&registry_blob(&reg_dir(&dir), &digest))
        .expect("manifest in the registry");
    let layers = manifest["layers"].as_array().expect("layers");
    for l in layers {
        registry_blob(&reg_dir(&dir), l["digest"].as_str().expect("digest"));
    }
    let top = registry_blob(
        &reg_dir(&dir),
        layers.last().expect("top")["digest"].as_str().expect("d"),
    );
    let text = String::from_utf8_lossy(&top);
    assert!(text.contains("pushed.txt") && text.contains("written before the push"));

    check_pulled_back(&node, &uri, &digest).await;
    node.remove_all().await;
}

/// Pull `uri` back with the node agent's puller into a fresh namespace of
/// `node`'s containerd: the same manifest `digest`, and the file the pod
/// wrote in its root file system.
async fn check_pulled_back(node: &CriTestNode, uri: &str, digest: &str) {
    use sandpool_node_agent::registry::{Credentials, Puller, RegistryConfig};
    let fresh = Ctr::connect(&node.socket(), "pushcheck", Duration::from_secs(10))
        .await
        .expect("containerd");
    let creds = Credentials {
        username: "ann".into(),
        password: "s3cret".into(),
    };
    let pulled = Puller::new(RegistryConfig::default())
        .pull(&fresh, uri, Some(creds), Arc::new(|_| {}))
        .await
        .expect("pull");
    assert_eq!(pulled.digest, digest);
    let (chain, _) = fresh
        .image_rootfs(uri)
        .await
        .expect("rootfs")
        .expect("unpacked");
    let files = fresh
        .read_image_files(&chain, &["pushed.txt", "bin/bash"])
        .await
        .expect("read");
    assert_eq!(files[0].as_deref(), Some("written before the push\n"));
    assert!(files[1].is_some(), "the base image's layer is below");
}

fn reg_dir(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("reg")
}
