//! Kubernetes mode (the node agent as a DaemonSet): pods are created by the
//! kubelet through CRI, so the agent does not create sandboxes; it finds a
//! pod's containers in containerd's `k8s.io` namespace by their CRI labels
//! and serves pause / resume (and state) for them. Sandbox id = `<namespace>/<pod>`.
//! Only pods sandpool manages (label `app.kubernetes.io/managed-by=sandpool`,
//! which CRI copies from the pod onto its sandbox container) are seen: the
//! node's other pods are neither listed nor paused.
//!
//! Dynamic mounts work as in standalone mode: a host path under a mount
//! root (the node agent's `<data dir>/volumes`, a hostPath of the DaemonSet)
//! is bind-mounted into the mount namespace of every app container of the
//! pod (each has its own), found through its task's pid (the DaemonSet runs
//! with `hostPID` and privileged). runc pods only: gVisor keeps its own
//! file system.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use containerd_client::services::v1::Container;

use sandpool_proto::v1::{self as pb, node_agent_server::NodeAgent};
use tonic::{Request, Response, Status};

use crate::containerd::{Ctr, RuncOptions, TaskState};

mod commit;
use crate::error::{AgentError, Result};
pub use commit::commit_targets;

pub mod reset;

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// `sandbox` (the pod's pause container) or `container`.
pub const CRI_KIND: &str = "io.cri-containerd.kind";
/// The label (and value) on every pod sandpool's controller makes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sandpool");

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CriPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// (container id, container name) of the pod's app containers.
    pub containers: Vec<(String, String)>,
    /// The pod carries sandpool's managed-by label.
    pub managed: bool,
}

impl CriPod {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Group containerd containers (id, labels) into pods; the pod's own sandbox
/// (pause) container is left out (freezing it would be pointless).
pub fn group_pods<'a>(
    containers: impl IntoIterator<Item = (&'a str, &'a HashMap<String, String>)>,
) -> Vec<CriPod> {
    let mut pods: BTreeMap<(String, String), CriPod> = BTreeMap::new();
    for (id, labels) in containers {
        let (Some(ns), Some(name)) = (labels.get(POD_NAMESPACE), labels.get(POD_NAME)) else {
            continue;
        };
        let pod = pods
            .entry((ns.clone(), name.clone()))
            .or_insert_with(|| CriPod {
                namespace: ns.clone(),
                name: name.clone(),
                uid: labels.get(POD_UID).cloned().unwrap_or_default(),
                containers: Vec::new(),
                managed: false,
            });
        pod.managed |= labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
        if labels.get(CRI_KIND).map(String::as_str) == Some("sandbox") {
            continue;
        }
        pod.containers.push((
            id.to_string(),
            labels.get(CONTAINER_NAME).cloned().unwrap_or_default(),
        ));
    }
    pods.into_values().collect()
}

/// Only the pods sandpool manages.
pub fn managed_pods(pods: Vec<CriPod>) -> Vec<CriPod> {
    pods.into_iter().filter(|p| p.managed).collect()
}

/// `<namespace>/<pod>` of a sandbox id; anything else is InvalidArgument
/// naming the id.
pub fn parse_id(id: &str) -> Result<(&str, &str)> {
    match id.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => Err(AgentError::InvalidArgument(format!(
            "sandbox id {id:?} is not <namespace>/<pod> (Kubernetes mode)"
        ))),
    }
}

/// The pod `ns/name` among `pods`, if it has app containers.
pub fn find_pod(pods: Vec<CriPod>, ns: &str, name: &str) -> Option<CriPod> {
    pods.into_iter()
        .find(|p| p.namespace == ns && p.name == name && !p.containers.is_empty())
}

/// Pause/resume of Kubernetes pods on this node.
pub struct CriNode {
    ctr: Ctr,
    node: String,
    /// Host directories whose contents may be mounted into pods (the first
    /// holds the named volumes); none: mounts are refused.
    mount_roots: Vec<PathBuf>,
    /// Where the host's files are seen from here (a recycle's emptyDirs).
    host_root: PathBuf,
}

/// A container run by gVisor: the runsc shim, or the runc shim driving the
/// runsc binary.
pub fn is_gvisor(c: &Container) -> bool {
    c.runtime.as_ref().is_some_and(|r| {
        r.name.contains("runsc")
            || r.options.as_ref().is_some_and(|o| {
                <RuncOptions as prost::Message>::decode(o.value.as_slice())
                    .is_ok_and(|opts| opts.binary_name.contains("runsc"))
            })
    })
}

impl CriNode {
    pub fn new(ctr: Ctr, node: &str) -> Self {
        CriNode {
            ctr,
            node: node.to_string(),
            mount_roots: Vec::new(),
            host_root: PathBuf::from("/proc/1/root"),
        }
    }

    /// The host directories dynamic mounts may come from (see the module doc).
    pub fn with_mount_roots(mut self, roots: Vec<PathBuf>) -> Self {
        self.mount_roots = roots;
        self
    }

    /// The pods sandpool manages on this node.
    pub async fn pods(&self) -> Result<Vec<CriPod>> {
        let cs = self.ctr.list_containers().await?;
        Ok(managed_pods(group_pods(
            cs.iter().map(|c| (c.id.as_str(), &c.labels)),
        )))
    }

    pub async fn pod(&self, id: &str) -> Result<CriPod> {
        let (ns, name) = parse_id(id)?;
        find_pod(self.pods().await?, ns, name).ok_or_else(|| {
            AgentError::NotFound(format!(
                "{id} (no containers of a pod sandpool manages on node {})",
                self.node
            ))
        })
    }

    /// Paused when any app container's task is paused.
    pub async fn state(&self, pod: &CriPod) -> Result<pb::SandboxState> {
        let mut running = false;
        for (id, _) in &pod.containers {
            match self.ctr.task_state(id).await? {
                Some((TaskState::Paused, _)) => return Ok(pb::SandboxState::Paused),
                Some((TaskState::Running, _)) => running = true,
                _ => {}
            }
        }
        Ok(if running {
            pb::SandboxState::Claimed
        } else {
            pb::SandboxState::Failed
        })
    }

    pub async fn pause(&self, id: &str) -> Result<CriPod> {
        let pod = self.pod(id).await?;
        match self.state(&pod).await? {
            pb::SandboxState::Paused => {
                return Err(AgentError::FailedPrecondition(format!(
                    "pod {id} is already paused"
                )));
            }
            pb::SandboxState::Failed => {
                return Err(AgentError::FailedPrecondition(format!(
                    "pod {id} has no running container"
                )));
            }
            _ => {}
        }
        for (c, _) in &pod.containers {
            if matches!(self.ctr.task_state(c).await?, Some((TaskState::Running, _))) {
                self.ctr.pause(c).await?;
            }
        }
        Ok(pod)
    }

    pub async fn resume(&self, id: &str) -> Result<CriPod> {
        let pod = self.pod(id).await?;
        if self.state(&pod).await? != pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "pod {id} is not paused"
            )));
        }
        for (c, _) in &pod.containers {
            if matches!(self.ctr.task_state(c).await?, Some((TaskState::Paused, _))) {
                self.ctr.resume(c).await?;
            }
        }
        Ok(pod)
    }

    /// The pids of the pod's running app containers, for a mount: refused
    /// for a paused pod and a gVisor one.
    async fn mount_pids(&self, id: &str) -> Result<(CriPod, Vec<u32>)> {
        let pod = self.pod(id).await?;
        let all = self.ctr.list_containers().await?;
        let gvisor = all
            .iter()
            .filter(|c| pod.containers.iter().any(|(id, _)| *id == c.id))
            .any(is_gvisor);
        if gvisor {
            return Err(AgentError::Unsupported(format!(
                "dynamic mounts need a runc pod; {id} runs on gVisor (runsc), which keeps its own file system"
            )));
        }
        let mut pids = Vec::new();
        for (c, _) in &pod.containers {
            match self.ctr.task_state(c).await? {
                Some((TaskState::Running, pid)) => pids.push(pid),
                Some((TaskState::Paused, _)) => {
                    return Err(AgentError::FailedPrecondition(format!(
                        "pod {id} is paused"
                    )));
                }
                _ => {}
            }
        }
        if pids.is_empty() {
            return Err(AgentError::FailedPrecondition(format!(
                "pod {id} has no running container"
            )));
        }
        Ok((pod, pids))
    }

    /// Bind `host_path` (a volume name or a path under a mount root) at
    /// `mount_path` in every app container of pod `id`.
    pub async fn mount(
        &self,
        id: &str,
        host_path: &str,
        mount_path: &str,
        read_only: bool,
    ) -> Result<CriPod> {
        crate::mounts::validate_target(mount_path)?;
        // the pod first: nothing (not even a `+` volume) is made for a pod
        // the agent does not serve
        let (pod, pids) = self.mount_pids(id).await?;
        let source =
            crate::mounts::source_of(Some(host_path), mount_path, &self.mount_roots, &self.node)?
                .unwrap_or_default();
        let target = mount_path.to_string();
        tokio::task::spawn_blocking(move || {
            pids.iter()
                .try_for_each(|pid| crate::mounts::mount_into(*pid, &source, &target, read_only))
        })
        .await
        .map_err(|e| AgentError::network("mount worker", e))??;
        tracing::info!(pod = %id, host_path, mount_path, read_only, "mounted");
        Ok(pod)
    }

    /// Undo [`CriNode::mount`] of `mount_path` in every app container.
    pub async fn unmount(&self, id: &str, mount_path: &str) -> Result<CriPod> {
        crate::mounts::validate_target(mount_path)?;
        let (pod, pids) = self.mount_pids(id).await?;
        let target = mount_path.to_string();
        tokio::task::spawn_blocking(move || {
            pids.iter()
                .try_for_each(|pid| crate::mounts::unmount_from(*pid, &target))
        })
        .await
        .map_err(|e| AgentError::network("unmount worker", e))?
        .map_err(|e| {
            AgentError::precondition(format!("{mount_path} is not a mount in pod {id}"), e)
        })?;
        Ok(pod)
    }

    async fn info(&self, pod: &CriPod) -> Result<pb::SandboxInfo> {
        Ok(pb::SandboxInfo {
            sandbox_id: pod.id(),
            node: self.node.clone(),
            state: self.state(pod).await? as i32,
            labels: [(POD_UID.to_string(), pod.uid.clone())].into(),
            ..Default::default()
        })
    }
}

/// A reset's evidence in its answer: the app containers whose processes
/// were killed, how many processes, and the emptyDir volumes emptied.
pub const RESET_KILLED: &str = "sandpool.io/reset-killed-containers";
pub const RESET_PROCESSES: &str = "sandpool.io/reset-killed-processes";
pub const RESET_WIPED: &str = "sandpool.io/reset-wiped-volumes";

/// The NodeAgent gRPC API over [`CriNode`]. Creating, injecting and
/// releasing belong to the controller and kubelet in this mode.
pub struct CriNodeService(pub Arc<CriNode>);

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not available in Kubernetes mode (pods are managed by the controller)"
    ))
}

/// Pods are networked by their CNI: see the sentence's reasons.
const CRI_CHECKPOINT: &str = sandpool_core::claim::KUBERNETES_CHECKPOINT_UNSUPPORTED;

#[tonic::async_trait]
impl NodeAgent for CriNodeService {
    async fn create_sandbox(
        &self,
        _: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        Err(unsupported("CreateSandbox"))
    }

    async fn prepare_image(
        &self,
        _: Request<pb::PrepareImageRequest>,
    ) -> Result<Response<pb::PrepareImageResponse>, Status> {
        Err(unsupported("PrepareImage"))
    }

    async fn get_sandbox(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let pod = self.0.pod(&req.into_inner().sandbox_id).await?;
        Ok(Response::new(self.0.info(&pod).await?))
    }

    async fn list_sandboxes(
        &self,
        _: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        let mut out = Vec::new();
        for p in self
            .0
            .pods()
            .await?
            .iter()
            .filter(|p| !p.containers.is_empty())
        {
            out.push(self.0.info(p).await?);
        }
        Ok(Response::new(pb::ListSandboxesResponse { sandboxes: out }))
    }

    async fn inject(
        &self,
        _: Request<pb::NodeInjectRequest>,
    ) -> Result<Response<pb::NodeInjectResponse>, Status> {
        Err(unsupported("Inject (call the pod's runtime on port 44772)"))
    }

    /// Only `RELEASE_POLICY_RECYCLE`: the pod's reset of a Pool's
    /// `recycleStrategy: Restart` ([`reset`]); the answer carries the new
    /// access token and what was reset (labels `sandpool.io/reset-*`).
    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let r = req.into_inner();
        if r.policy() != pb::ReleasePolicy::Recycle {
            return Err(unsupported("Release other than RELEASE_POLICY_RECYCLE"));
        }
        let report = self.0.reset(&r.sandbox_id).await?;
        let pod = self.0.pod(&r.sandbox_id).await?;
        let mut info = self.0.info(&pod).await?;
        info.access_token = report.token;
        info.labels.extend([
            (RESET_KILLED.to_string(), report.killed.join(",")),
            (RESET_PROCESSES.to_string(), report.processes.to_string()),
            (RESET_WIPED.to_string(), report.wiped.join(",")),
        ]);
        Ok(Response::new(info))
    }

    async fn pause(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let req = req.into_inner();
        if req.filesystem_only {
            return Err(unsupported(
                "Pause with filesystem_only (a pod's containers cannot be stopped and started again on the same root file system outside the kubelet)",
            ));
        }
        let pod = self.0.pause(&req.sandbox_id).await?;
        Ok(Response::new(self.0.info(&pod).await?))
    }

    async fn resume(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let pod = self.0.resume(&req.into_inner().sandbox_id).await?;
        Ok(Response::new(self.0.info(&pod).await?))
    }

    async fn checkpoint(
        &self,
        _: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointInfo>, Status> {
        Err(Status::unimplemented(CRI_CHECKPOINT))
    }

    async fn restore(
        &self,
        _: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        Err(Status::unimplemented(CRI_CHECKPOINT))
    }

    async fn fork(
        &self,
        _: Request<pb::ForkRequest>,
    ) -> Result<Response<pb::ForkResponse>, Status> {
        Err(Status::unimplemented(CRI_CHECKPOINT))
    }

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        Ok(Response::new(pb::ListCheckpointsResponse::default()))
    }

    async fn delete_checkpoint(
        &self,
        r: Request<pb::CheckpointRef>,
    ) -> Result<Response<pb::DeleteCheckpointResponse>, Status> {
        Err(Status::not_found(format!(
            "checkpoint {} not found",
            r.into_inner().checkpoint_id
        )))
    }

    async fn upgrade(
        &self,
        _: Request<pb::UpgradeRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        Err(Status::unimplemented(
            "in-place image upgrade of Kubernetes pool pods is not supported yet",
        ))
    }

    async fn mount(
        &self,
        req: Request<pb::MountRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let r = req.into_inner();
        let pod = self
            .0
            .mount(&r.sandbox_id, &r.host_path, &r.mount_path, r.read_only)
            .await?;
        Ok(Response::new(self.0.info(&pod).await?))
    }

    async fn unmount(
        &self,
        req: Request<pb::UnmountRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let r = req.into_inner();
        let pod = self.0.unmount(&r.sandbox_id, &r.mount_path).await?;
        Ok(Response::new(self.0.info(&pod).await?))
    }

    async fn commit_images(
        &self,
        req: Request<pb::CommitImagesRequest>,
    ) -> Result<Response<pb::CommitImagesResponse>, Status> {
        let r = req.into_inner();
        let push = commit::push_target(r.push, r.push_auth, r.push_insecure)?;
        let asked: Vec<(String, String)> = r
            .containers
            .into_iter()
            .map(|c| (c.container_name, c.image))
            .collect();
        let done = self.0.commit(&r.sandbox_id, &asked, push.as_ref()).await?;
        let containers = asked
            .into_iter()
            .zip(done)
            .map(|((container_name, _), c)| pb::ContainerImage {
                container_name,
                image: c.image,
                digest: c.digest,
                size_bytes: c.size_bytes,
            })
            .collect();
        Ok(Response::new(pb::CommitImagesResponse { containers }))
    }

    type WatchStream = futures_util::stream::Empty<Result<pb::NodeEvent, Status>>;

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(unsupported("Watch (watch pods through the Kubernetes API)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ns: &str, pod: &str, container: &str, kind: &str) -> HashMap<String, String> {
        [
            (POD_NAMESPACE.to_string(), ns.to_string()),
            (POD_NAME.to_string(), pod.to_string()),
            (POD_UID.to_string(), format!("uid-{pod}")),
            (CONTAINER_NAME.to_string(), container.to_string()),
            (CRI_KIND.to_string(), kind.to_string()),
        ]
        .into()
    }

    #[test]
    fn only_pods_sandpool_manages_are_seen() {
        let mut ours = labels("sandpool", "agent-pool-1", "", "sandbox");
        ours.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let our_app = labels("sandpool", "agent-pool-1", "sandbox", "container");
        let gateway = labels("sandpool", "sandpool-gateway-7d9", "gateway", "container");
        let gateway_pause = labels("sandpool", "sandpool-gateway-7d9", "", "sandbox");
        let web = labels("other", "web", "nginx", "container");
        let pods = managed_pods(group_pods([
            ("s1", &ours),
            ("c1", &our_app),
            ("s2", &gateway_pause),
            ("c2", &gateway),
            ("c3", &web),
        ]));
        let ids: Vec<String> = pods.iter().map(CriPod::id).collect();
        assert_eq!(ids, ["sandpool/agent-pool-1"]);
        assert!(find_pod(pods.clone(), "sandpool", "agent-pool-1").is_some());
        assert_eq!(
            find_pod(pods.clone(), "sandpool", "sandpool-gateway-7d9"),
            None
        );
        assert_eq!(find_pod(pods, "other", "web"), None);
    }

    #[test]
    fn gvisor_containers_are_told_apart_for_mounts() {
        use containerd_client::services::v1::container::Runtime;
        let container = |name: &str, binary: &str| Container {
            runtime: Some(Runtime {
                name: name.into(),
                options: Some(prost_types::Any {
                    type_url: "containerd.runc.v1.Options".into(),
                    value: prost::Message::encode_to_vec(&RuncOptions {
                        binary_name: binary.into(),
                        ..Default::default()
                    }),
                }),
            }),
            ..Default::default()
        };
        // a RuntimeClass handler on the runsc shim, or the runc shim driving runsc
        assert!(is_gvisor(&container("io.containerd.runsc.v1", "")));
        assert!(is_gvisor(&container(
            "io.containerd.runc.v2",
            "/usr/bin/runsc"
        )));
        assert!(!is_gvisor(&container("io.containerd.runc.v2", "")));
        assert!(!is_gvisor(&container("io.containerd.runc.v2", "crun")));
        assert!(!is_gvisor(&Container::default()));
    }

    #[test]
    fn a_malformed_id_is_invalid_argument_naming_it() {
        assert_eq!(parse_id("ns/pod").expect("ok"), ("ns", "pod"));
        for bad in ["sbx-123", "/pod", "ns/", "a/b/c", ""] {
            let s = Status::from(parse_id(bad).expect_err(bad));
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(s.message().contains(&format!("{bad:?}")), "{bad}: {s:?}");
            assert!(!s.message().contains("template"), "{s:?}");
        }
    }

    #[test]
    fn containers_group_into_pods_without_their_pause_container() {
        let a = labels("sandpool", "agent-pool-1", "", "sandbox");
        let b = labels("sandpool", "agent-pool-1", "sandbox-container", "container");
        let c = labels("sandpool", "agent-pool-1", "task-executor", "container");
        let d = labels("other", "web", "nginx", "container");
        let plain: HashMap<String, String> = HashMap::new();
        let pods = group_pods([
            ("s1", &a),
            ("c1", &b),
            ("c2", &c),
            ("c3", &d),
            ("x", &plain),
        ]);
        assert_eq!(pods.len(), 2);
        let p = pods.iter().find(|p| p.name == "agent-pool-1").expect("pod");
        assert_eq!(p.id(), "sandpool/agent-pool-1");
        assert_eq!(p.uid, "uid-agent-pool-1");
        assert_eq!(
            p.containers,
            [
                ("c1".to_string(), "sandbox-container".to_string()),
                ("c2".to_string(), "task-executor".to_string())
            ]
        );
    }
}
