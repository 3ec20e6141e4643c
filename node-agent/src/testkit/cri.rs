//! A Kubernetes node as the node agent's Kubernetes mode sees it, short of
//! a kubelet: a private containerd whose `k8s.io` namespace holds pods made
//! the way containerd's CRI plugin makes them for `RunPodSandbox` and
//! `CreateContainer`/`StartContainer`:
//! - a sandbox ("pause") container with the pod's labels, the kubelet's
//!   `io.kubernetes.pod.{name,namespace,uid}` and `io.cri-containerd.kind=sandbox`,
//!   in fresh pid, ipc, uts, mount and network namespaces;
//! - app containers labelled `io.kubernetes.container.name`, the pod's
//!   three kubelet labels and `io.cri-containerd.kind=container` (not the
//!   pod's own labels: the kubelet passes those to the sandbox only), that
//!   join the sandbox's network, ipc and uts namespaces through
//!   `/proc/<sandbox pid>/ns/*`, with their own pid and mount namespaces;
//! - the CRI annotations on each runtime spec (`io.kubernetes.cri.container-type`,
//!   `sandbox-id`, `sandbox-name`, `sandbox-namespace`, `sandbox-uid`, and
//!   `container-name`, `image-name` for containers, `sandbox-log-directory`
//!   for the sandbox);
//! - cgroups `<parent>/pod<uid>/<container id>` as the kubelet's cgroupfs
//!   driver lays them out (under a test parent, not `kubepods`).
//!
//! There is no CNI: the pod's network namespace has only loopback. The CRI
//! plugin's own records (container extensions) are not written; the node
//! agent does not read them.

// Test support: a failed setup step should panic the test that asked for it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::containerd::{Ctr, NewContainer};
use crate::cri::{CONTAINER_NAME, CRI_KIND, POD_NAME, POD_NAMESPACE, POD_UID};
use crate::daemon::ContainerdDaemon;
use crate::image;

/// containerd's namespace for the kubelet's containers.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The cgroup parent of the test pods (a kubelet's would be `kubepods`).
const CGROUP_PARENT: &str = "sandpool-cri-test";

/// A pod the CRI plugin would have made.
#[derive(Debug, Clone)]
pub struct CriTestPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox (pause) container.
    pub sandbox_id: String,
    /// (container id, container name) of the app containers.
    pub containers: Vec<(String, String)>,
}

impl CriTestPod {
    /// `<namespace>/<pod>`, the node agent's id of the pod.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A private containerd with the testkit's busybox image in `k8s.io`.
pub struct CriTestNode {
    dir: tempfile::TempDir,
    daemon: Option<ContainerdDaemon>,
    ctr: Ctr,
    chain: String,
    uids: parking_lot::Mutex<Vec<String>>,
}

fn cri_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

// the default capabilities containerd gives a container, as a sandbox has
use crate::spec::CAPS;

/// A runtime spec for a pod's container: `args` as root, the given
/// namespaces (joined when they carry a path) and annotations.
fn spec(args: &[&str], namespaces: Value, annotations: Value, cgroups: &str) -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "noNewPrivileges": false
        },
        "root": {"path": "rootfs", "readonly": false},
        "annotations": annotations,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroups,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

impl CriTestNode {
    /// Start containerd in a temp dir and import busybox into `k8s.io`.
    pub async fn start() -> CriTestNode {
        let dir = tempfile::Builder::new()
            .prefix("spcri")
            .tempdir_in("/tmp")
            .unwrap();
        let daemon = ContainerdDaemon::start(&dir.path().join("containerd")).unwrap();
        let ctr = Ctr::connect(&daemon.socket, K8S_NAMESPACE, Duration::from_secs(30))
            .await
            .unwrap();
        // Built images are cached across test runs, as the TestNode's are.
        let cache =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sandpool-image-cache");
        let blobs =
            tokio::task::spawn_blocking(move || image::build_builtin(image::BUSYBOX, &cache))
                .await
                .unwrap()
                .unwrap();
        ctr.import(&blobs).await.unwrap();
        let (chain, _) = ctr.image_rootfs(image::BUSYBOX).await.unwrap().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        CriTestNode {
            dir,
            daemon: Some(daemon),
            ctr,
            chain,
            uids: Default::default(),
        }
    }

    /// The containerd socket (what the node agent DaemonSet mounts).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd").join("containerd.sock")
    }

    /// A client of the `k8s.io` namespace.
    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    /// Create and start one container of a pod from busybox; returns its task's pid.
    async fn run(&self, id: &str, labels: HashMap<String, String>, spec: &Value) -> u32 {
        self.run_image(id, image::BUSYBOX, &self.chain, labels, spec)
            .await
    }

    /// [`CriTestNode::run`] from image `image` (its unpacked chain `chain`).
    async fn run_image(
        &self,
        id: &str,
        image: &str,
        chain: &str,
        labels: HashMap<String, String>,
        spec: &Value,
    ) -> u32 {
        let mounts = self
            .ctr
            .create_container(NewContainer {
                id,
                snapshot_key: id,
                image,
                parent_snapshot: chain,
                labels,
                spec,
                runtime_binary: "",
            })
            .await
            .unwrap();
        let log = self.dir.path().join("logs").join(format!("{id}.log"));
        self.ctr.start_task(id, mounts, &log, None).await.unwrap()
    }

    /// Run pod `namespace/name` with the pod labels `labels`: its sandbox,
    /// then one app container per name in `containers` (`sleep`ing busybox).
    pub async fn run_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        containers: &[&str],
    ) -> CriTestPod {
        let sleep = ["sleep", "2147483647"];
        self.run_pod_with(namespace, name, labels, containers, &sleep, &[])
            .await
    }

    /// [`CriTestNode::run_pod`] whose app containers run `args` with the
    /// extra runtime spec `mounts` (bind mounts of host directories, as the
    /// kubelet's volumes are).
    pub async fn run_pod_with(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        containers: &[&str],
        args: &[&str],
        mounts: &[Value],
    ) -> CriTestPod {
        let mut pod = self.run_sandbox(namespace, name, labels).await;
        for c in containers {
            let id = self.start_container(&pod, c, args, mounts).await;
            pod.containers.push((id, c.to_string()));
        }
        pod
    }

    /// [`CriTestNode::run_pod`] whose app containers, (name, image) each,
    /// run from their own images of `k8s.io` (`sleep`ing).
    pub async fn run_pod_images(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        containers: &[(&str, &str)],
    ) -> CriTestPod {
        let mut pod = self.run_sandbox(namespace, name, labels).await;
        for (c, image) in containers {
            let sleep = ["sleep", "2147483647"];
            let id = self.start_container_from(&pod, c, image, &sleep, &[]).await;
            pod.containers.push((id, c.to_string()));
        }
        pod
    }

    /// Remove `pod`'s containers (tasks thawed and killed), as the kubelet
    /// does once the pod is deleted.
    pub async fn remove_pod(&self, pod: &CriTestPod) {
        let ids = pod.containers.iter().map(|(id, _)| id);
        for id in ids.chain([&pod.sandbox_id]) {
            let _ = self.ctr.resume(id).await;
            let _ = self.ctr.destroy(id).await;
        }
    }

    /// The sandbox (pause) container of a new pod `namespace/name`.
    async fn run_sandbox(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> CriTestPod {
        let uid = uuid::Uuid::new_v4().to_string();
        self.uids.lock().push(uid.clone());
        let kube: HashMap<String, String> = [
            (POD_NAME.to_string(), name.to_string()),
            (POD_NAMESPACE.to_string(), namespace.to_string()),
            (POD_UID.to_string(), uid.clone()),
        ]
        .into();
        let sandbox_id = cri_id();
        let mut sb_labels = kube.clone();
        sb_labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        sb_labels.insert(CRI_KIND.into(), "sandbox".into());
        let common = json!({
            "io.kubernetes.cri.sandbox-id": sandbox_id,
            "io.kubernetes.cri.sandbox-name": name,
            "io.kubernetes.cri.sandbox-namespace": namespace,
            "io.kubernetes.cri.sandbox-uid": uid,
        });
        let mut ann = common.clone();
        ann["io.kubernetes.cri.container-type"] = json!("sandbox");
        ann["io.kubernetes.cri.sandbox-log-directory"] =
            json!(format!("/var/log/pods/{namespace}_{name}_{uid}"));
        let own = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]);
        let cg = |id: &str| format!("/{CGROUP_PARENT}/pod{uid}/{id}");
        self.run(
            &sandbox_id,
            sb_labels,
            &spec(&["sleep", "2147483647"], own, ann, &cg(&sandbox_id)),
        )
        .await;
        CriTestPod {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.clone(),
            sandbox_id,
            containers: Vec::new(),
        }
    }

    /// Create and start app container `name` of `pod` (a new id and a new
    /// rootfs snapshot from the image), as CRI's `CreateContainer` and
    /// `StartContainer` do, also when the kubelet restarts a container.
    /// Returns its id.
    pub async fn start_container(
        &self,
        pod: &CriTestPod,
        name: &str,
        args: &[&str],
        mounts: &[Value],
    ) -> String {
        self.start_container_from(pod, name, image::BUSYBOX, args, mounts)
            .await
    }

    /// [`CriTestNode::start_container`] from image `image` of `k8s.io`
    /// (unpacked, as the kubelet's pull leaves it), as CRI does for a pod
    /// spec naming that image: its root file system is a snapshot of the
    /// image's layers.
    pub async fn start_container_from(
        &self,
        pod: &CriTestPod,
        name: &str,
        image: &str,
        args: &[&str],
        mounts: &[Value],
    ) -> String {
        let (chain, _) = self
            .ctr
            .image_rootfs(image)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("image {image} is not unpacked in k8s.io"));
        let sandbox_pid = self.pid(&pod.sandbox_id).await;
        let id = cri_id();
        let l: HashMap<String, String> = [
            (POD_NAME.to_string(), pod.name.clone()),
            (POD_NAMESPACE.to_string(), pod.namespace.clone()),
            (POD_UID.to_string(), pod.uid.clone()),
            (CONTAINER_NAME.to_string(), name.to_string()),
            (CRI_KIND.to_string(), "container".to_string()),
        ]
        .into();
        let ann = json!({
            "io.kubernetes.cri.sandbox-id": pod.sandbox_id,
            "io.kubernetes.cri.sandbox-name": pod.name,
            "io.kubernetes.cri.sandbox-namespace": pod.namespace,
            "io.kubernetes.cri.sandbox-uid": pod.uid,
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": name,
            "io.kubernetes.cri.image-name": image,
        });
        let ns = |t: &str| format!("/proc/{sandbox_pid}/ns/{t}");
        let joined = json!([
            {"type": "pid"}, {"type": "mount"},
            {"type": "ipc", "path": ns("ipc")}, {"type": "uts", "path": ns("uts")},
            {"type": "network", "path": ns("net")}
        ]);
        let cg = format!("/{CGROUP_PARENT}/pod{}/{id}", pod.uid);
        let mut s = spec(args, joined, ann, &cg);
        if let Some(m) = s["mounts"].as_array_mut() {
            m.extend(mounts.iter().cloned());
        }
        self.run_image(&id, image, &chain, l, &s).await;
        id
    }

    /// The pid of container `id`'s task.
    pub async fn pid(&self, id: &str) -> u32 {
        self.ctr.task_state(id).await.unwrap().unwrap().1
    }

    /// Whether the cgroup of process `pid` is frozen (cgroup v1 freezer
    /// `FROZEN`, or v2 `cgroup.freeze` = 1).
    pub fn cgroup_frozen(pid: u32) -> bool {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for line in cg.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrl, path) = (parts.next(), parts.next(), parts.next());
            let (Some(ctrl), Some(path)) = (ctrl, path) else {
                continue;
            };
            if ctrl.split(',').any(|c| c == "freezer") {
                let state = format!("/sys/fs/cgroup/freezer{path}/freezer.state");
                return std::fs::read_to_string(state).unwrap().trim() == "FROZEN";
            }
        }
        let v2 = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        std::fs::read_to_string(format!("/sys/fs/cgroup{v2}/cgroup.freeze"))
            .unwrap()
            .trim()
            == "1"
    }

    /// Remove every container of `k8s.io` (tasks thawed and killed).
    pub async fn remove_all(&self) {
        remove_containers(&self.ctr).await;
    }
}

async fn remove_containers(ctr: &Ctr) {
    for c in ctr.list_containers().await.unwrap_or_default() {
        let _ = ctr.resume(&c.id).await;
        let _ = ctr.destroy(&c.id).await;
    }
}

/// `rmdir` the test pods' cgroups (and their parent) in every hierarchy.
fn remove_cgroups(uids: &[String]) {
    let root = Path::new("/sys/fs/cgroup");
    let mut bases = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        bases.extend(rd.flatten().map(|e| e.path()));
    }
    for b in bases {
        for uid in uids {
            let _ = std::fs::remove_dir(b.join(CGROUP_PARENT).join(format!("pod{uid}")));
        }
        let _ = std::fs::remove_dir(b.join(CGROUP_PARENT));
    }
}

impl Drop for CriTestNode {
    fn drop(&mut self) {
        // a client of its own: the test's runtime may be the one blocked here
        let socket = self.socket();
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(ctr) =
                        Ctr::connect(&socket, K8S_NAMESPACE, Duration::from_secs(5)).await
                    {
                        remove_containers(&ctr).await;
                    }
                });
            });
        });
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
        remove_cgroups(&self.uids.lock());
    }
}
