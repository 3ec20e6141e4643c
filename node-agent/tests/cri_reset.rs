//! The node agent's reset of a Kubernetes pod for its Pool's next tenant
//! (`recycleStrategy: Restart`, issues 21 and 22), on a real containerd
//! whose `k8s.io` namespace holds a pod made as containerd's CRI plugin
//! makes one (the testkit's `CriTestNode`), with two emptyDir-style volumes
//! bind-mounted from a host directory laid out as the kubelet lays them
//! out: the runtime's (read-only) and a scratch one (writable).
//!
//! The tenant leaves a file in its container's rootfs, files in the
//! writable volume, a `setsid` process and a double-forked one. After the
//! reset no process of the container is left, the scratch volume is empty,
//! the runtime volume holds only what it held plus the new token.
//!
//! There is no kubelet here: the test plays the kubelet's restart of the
//! killed container by starting a new container of the pod (new id, new
//! rootfs snapshot from the image, as CRI does on a restart). So the
//! rootfs check shows what a CRI restart gives, not something the node
//! agent does; processes, volumes and token are the node agent's work.
//!
//! Needs root and containerd (the node agent containerd tests' gate).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandpool_node_agent::containerd::TaskState;
use sandpool_node_agent::cri::reset::TOKEN_FILE;
use sandpool_node_agent::cri::{CriNode, CriNodeService, MANAGED_BY, RESET_KILLED, RESET_WIPED};
use sandpool_node_agent::testkit::cri::CriTestNode;
use sandpool_proto::v1::{self as pb, node_agent_server::NodeAgent};
use serde_json::{Value, json};

const NS: &str = "sandpool";

/// `<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, created.
fn empty_dir(root: &Path, name: &str) -> PathBuf {
    let d = root
        .join("pods/u1/volumes/kubernetes.io~empty-dir")
        .join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn bind(source: &Path, destination: &str, ro: bool) -> Value {
    let mode = if ro { "ro" } else { "rw" };
    json!({"destination": destination, "type": "bind", "source": source,
        "options": ["rbind", "rprivate", mode]})
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Wait (bounded) until the container's task has at least `n` processes.
async fn processes(node: &CriTestNode, id: &str, n: usize) -> Vec<u32> {
    for _ in 0..200 {
        let pids = node.ctr().list_pids(id).await.expect("pids");
        if pids.len() >= n {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the tenant's processes never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_pod_keeps_nothing_of_its_tenant() {
    if sandpool_node_agent::testkit::gate().is_none() {
        return;
    }
    let node = CriTestNode::start().await;
    let host = tempfile::Builder::new()
        .prefix("spreset")
        .tempdir_in("/tmp")
        .expect("tmp");
    let runtime = empty_dir(host.path(), "sandpool-runtime");
    std::fs::write(runtime.join("sandpool-runtime"), "the runtime").expect("write");
    let scratch = empty_dir(host.path(), "scratch");
    let mounts = [
        bind(&runtime, "/opt/sandpool", true),
        bind(&scratch, "/scratch", false),
    ];
    let tenant = "echo tenant > /rootfile; echo tenant > /scratch/f; \
        mkdir -p /scratch/d && echo tenant > /scratch/d/g; \
        setsid sleep 100000 </dev/null >/dev/null 2>&1 & \
        (sleep 100001 </dev/null >/dev/null 2>&1 &); \
        exec sleep 2147483647";
    let args = ["sh", "-c", tenant];
    let pod = node
        .run_pod_with(NS, "pool-r-1", &[MANAGED_BY], &["sandbox"], &args, &mounts)
        .await;
    let (old, _) = pod.containers[0].clone();
    let before = processes(&node, &old, 3).await;
    assert!(scratch.join("d/g").exists());

    let cri = CriNode::new(node.ctr().clone(), "node-a").with_host_root(PathBuf::from("/"));
    let report = cri.reset(&pod.id()).await.expect("reset");
    assert_eq!(report.killed, ["sandbox"]);
    assert_eq!(report.wiped, ["scratch"]);
    assert!(report.processes >= 3, "{report:?}");
    // nothing of the tenant runs, the writable volume is empty, the
    // runtime volume has only the runtime and the new token
    for pid in &before {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
    assert!(!matches!(
        node.ctr().task_state(&old).await.expect("state"),
        Some((TaskState::Running | TaskState::Paused, _))
    ));
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert_eq!(entries(&runtime), [TOKEN_FILE, "sandpool-runtime"]);
    let token = std::fs::read_to_string(runtime.join(TOKEN_FILE)).expect("token");
    assert_eq!(token, report.token);

    // the kubelet's restart (played here): a new container of the pod
    let new = node
        .start_container(&pod, "sandbox", &["sleep", "2147483647"], &mounts)
        .await;
    let root = format!("/proc/{}/root", node.pid(&new).await);
    assert!(!Path::new(&format!("{root}/rootfile")).exists());
    assert!(entries(Path::new(&format!("{root}/scratch"))).is_empty());
    assert_eq!(
        std::fs::read_to_string(format!("{root}/opt/sandpool/{TOKEN_FILE}")).expect("token"),
        report.token
    );

    // the gRPC answer of the next reset: a token again new, and the evidence
    let svc = CriNodeService(std::sync::Arc::new(cri));
    let info = svc
        .release(tonic::Request::new(pb::ReleaseRequest {
            sandbox_id: pod.id(),
            policy: pb::ReleasePolicy::Recycle as i32,
        }))
        .await
        .expect("release")
        .into_inner();
    assert!(!info.access_token.is_empty() && info.access_token != report.token);
    assert_eq!(info.labels[RESET_KILLED], "sandbox");
    assert_eq!(info.labels[RESET_WIPED], "scratch");
    // any other release is still refused
    let other = svc
        .release(tonic::Request::new(pb::ReleaseRequest {
            sandbox_id: pod.id(),
            policy: pb::ReleasePolicy::Delete as i32,
        }))
        .await
        .expect_err("refused");
    assert_eq!(other.code(), tonic::Code::Unimplemented);
    node.remove_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_a_runtime_volume_is_refused_and_left_running() {
    if sandpool_node_agent::testkit::gate().is_none() {
        return;
    }
    let node = CriTestNode::start().await;
    let pod = node
        .run_pod(NS, "pool-r-2", &[MANAGED_BY], &["sandbox"])
        .await;
    let cri = CriNode::new(node.ctr().clone(), "node-a").with_host_root(PathBuf::from("/"));
    let e = cri.reset(&pod.id()).await.expect_err("refused").to_string();
    assert!(e.contains("no runtime volume"), "{e}");
    assert!(matches!(
        node.ctr()
            .task_state(&pod.containers[0].0)
            .await
            .expect("state"),
        Some((TaskState::Running, _))
    ));
    // a pod sandpool does not manage is not found
    let other = node.run_pod("web", "nginx", &[], &["nginx"]).await;
    assert!(cri.reset(&other.id()).await.is_err());
    node.remove_all().await;
}
