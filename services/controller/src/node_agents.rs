//! The node agents of the chart's DaemonSet, reached from the controller:
//! the claim pause of the Kubernetes scheduler freezes (thaws) a pod, and a
//! SandboxSnapshot (also the one a BatchSandbox's `spec.pause` creates)
//! commits one, through the node agent of the node it runs on, the
//! DaemonSet pod on that node, at its pod IP with the service token.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::{Client, ResourceExt};
use sandpool_proto::auth::ServiceToken;
use sandpool_proto::v1::{self as pb, node_agent_client::NodeAgentClient};
use tonic::Status;

use crate::pods;

/// The chart's label on the node agent DaemonSet's pods.
pub const NODE_AGENT_SELECTOR: &str = "app.kubernetes.io/component=node-agent";
/// The chart's default node agent port (`nodeAgent.port`).
pub const NODE_AGENT_PORT: u16 = 9091;
/// Longest wait for a node agent's commit of a pod's containers
/// (upstream's commit Job deadline).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Freezes and thaws pods through the node agent of their node.
#[async_trait]
pub trait NodeAgents: Send + Sync {
    /// Pause (`pause`) or resume the pod `<namespace>/<pod>` on `node`.
    async fn set_paused(&self, node: &str, sandbox_id: &str, pause: bool) -> Result<(), Status>;

    /// Bind a node volume (or host path under a mount root) into the pod
    /// `req.sandbox_id` (`<namespace>/<pod>`) on `node`.
    async fn mount(&self, node: &str, req: pb::MountRequest) -> Result<(), Status>;

    /// Reset the pod `sandbox_id` (`<namespace>/<pod>`) on `node` for its
    /// pool's next tenant (`Release` with `RELEASE_POLICY_RECYCLE`): the
    /// answer carries the new access token and what was reset.
    async fn reset(&self, node: &str, _sandbox_id: &str) -> Result<pb::SandboxInfo, Status> {
        Err(Status::unavailable(format!(
            "this controller has no node agent access configured (node {node})"
        )))
    }

    /// Commit containers of the pod `req.sandbox_id` on `node` into images
    /// (a SandboxSnapshot); the images with their digests.
    async fn commit(
        &self,
        node: &str,
        _req: pb::CommitImagesRequest,
    ) -> Result<Vec<pb::ContainerImage>, Status> {
        Err(Status::unavailable(format!(
            "this controller has no node agent access configured (node {node})"
        )))
    }
}

/// The node agents of the chart's DaemonSet, found through the apiserver:
/// the running pod matching `selector` whose `spec.nodeName` is the node.
pub struct DaemonSetAgents {
    pods: Api<Pod>,
    selector: String,
    port: u16,
    token: ServiceToken,
}

impl DaemonSetAgents {
    /// The agents in `ns` (the chart installs them beside the controller),
    /// called with the service token they require.
    pub fn new(client: Client, ns: &str, token: ServiceToken) -> Self {
        DaemonSetAgents {
            pods: Api::namespaced(client, ns),
            selector: NODE_AGENT_SELECTOR.into(),
            port: NODE_AGENT_PORT,
            token,
        }
    }

    /// Another label selector or port (`nodeAgent.port` of the chart).
    pub fn at(mut self, selector: &str, port: u16) -> Self {
        self.selector = selector.into();
        self.port = port;
        self
    }

    async fn address(&self, node: &str) -> Result<String, Status> {
        let agents = crate::context::list_pods(&self.pods, &self.selector)
            .await
            .map_err(|e| Status::unavailable(format!("listing the node agents: {e}")))?;
        let ip = agents
            .iter()
            .filter(|p| pods::node_name(p) == node && !pods::is_terminating(p))
            .find_map(|p| pods::pod_ip(p).map(str::to_string))
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "no node agent ({}) runs on node {node}",
                    self.selector
                ))
            })?;
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        Ok(format!("http://{host}:{}", self.port))
    }
}

type AgentClient = NodeAgentClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ServiceToken>,
>;

impl DaemonSetAgents {
    /// A client of the node agent on `node`, with the service token.
    async fn client(&self, node: &str) -> Result<AgentClient, Status> {
        self.client_within(node, Duration::from_secs(30)).await
    }

    /// [`Self::client`] whose calls may take up to `timeout`.
    async fn client_within(&self, node: &str, timeout: Duration) -> Result<AgentClient, Status> {
        let addr = self.address(node).await?;
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .map_err(|e| Status::internal(format!("node agent address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("node agent of {node} at {addr}: {e}")))?;
        Ok(NodeAgentClient::with_interceptor(
            channel,
            self.token.clone(),
        ))
    }
}

#[async_trait]
impl NodeAgents for DaemonSetAgents {
    async fn mount(&self, node: &str, req: pb::MountRequest) -> Result<(), Status> {
        let mut agent = self.client(node).await?;
        agent
            .mount(sandpool_telemetry::grpc_request(req))
            .await
            .map(drop)
            .map_err(|s| Status::new(s.code(), format!("node agent of {node}: {}", s.message())))
    }

    async fn reset(&self, node: &str, sandbox_id: &str) -> Result<pb::SandboxInfo, Status> {
        let mut agent = self.client(node).await?;
        let req = pb::ReleaseRequest {
            sandbox_id: sandbox_id.to_string(),
            policy: pb::ReleasePolicy::Recycle as i32,
        };
        agent
            .release(sandpool_telemetry::grpc_request(req))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| Status::new(s.code(), format!("node agent of {node}: {}", s.message())))
    }

    async fn commit(
        &self,
        node: &str,
        req: pb::CommitImagesRequest,
    ) -> Result<Vec<pb::ContainerImage>, Status> {
        // a commit diffs whole root file systems: longer than other calls
        let mut agent = self.client_within(node, COMMIT_TIMEOUT).await?;
        agent
            .commit_images(sandpool_telemetry::grpc_request(req))
            .await
            .map(|r| r.into_inner().containers)
            .map_err(|s| Status::new(s.code(), format!("node agent of {node}: {}", s.message())))
    }

    async fn set_paused(&self, node: &str, sandbox_id: &str, pause: bool) -> Result<(), Status> {
        let mut agent = self.client(node).await?;
        let done = if pause {
            agent
                .pause(sandpool_telemetry::grpc_request(pb::PauseRequest {
                    sandbox_id: sandbox_id.to_string(),
                    filesystem_only: false,
                }))
                .await
        } else {
            agent
                .resume(sandpool_telemetry::grpc_request(pb::SandboxRef {
                    sandbox_id: sandbox_id.to_string(),
                }))
                .await
        };
        done.map(drop)
            .map_err(|s| Status::new(s.code(), format!("node agent of {node}: {}", s.message())))
    }
}

/// Pause (`pause`) or resume `pod` through the node agent of its node; the
/// node agent knows it as `<namespace>/<pod>`.
pub async fn set_pod_paused(agents: &dyn NodeAgents, pod: &Pod, pause: bool) -> Result<(), Status> {
    let node = pods::node_name(pod);
    if node.is_empty() {
        return Err(Status::failed_precondition(format!(
            "pod {} is not scheduled on a node",
            pod.name_any()
        )));
    }
    let ns = pod.namespace().unwrap_or_default();
    agents
        .set_paused(node, &format!("{ns}/{}", pod.name_any()), pause)
        .await
}

/// Mount `mounts`, in order, into `pod` through the node agent of its node
/// (the first failure stops). A named volume the node does not have is the
/// request's fault (invalid argument), as in standalone mode.
pub async fn mount_pod_volumes(
    agents: &dyn NodeAgents,
    pod: &Pod,
    mounts: &[pb::VolumeMount],
) -> Result<(), Status> {
    let node = pods::node_name(pod);
    if node.is_empty() {
        return Err(Status::failed_precondition(format!(
            "pod {} is not scheduled on a node",
            pod.name_any()
        )));
    }
    let id = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    for m in mounts {
        let req = pb::MountRequest {
            sandbox_id: id.clone(),
            host_path: m.volume.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only,
        };
        agents.mount(node, req).await.map_err(|s| match s.code() {
            tonic::Code::NotFound if !m.volume.starts_with('/') => {
                Status::invalid_argument(s.message().to_string())
            }
            _ => s,
        })?;
    }
    Ok(())
}

/// Where no node agent is configured: every pause and resume is refused.
pub struct NoNodeAgents;

#[async_trait]
impl NodeAgents for NoNodeAgents {
    async fn set_paused(&self, node: &str, _: &str, _: bool) -> Result<(), Status> {
        Err(Status::unavailable(format!(
            "this controller has no node agent access configured (node {node})"
        )))
    }

    async fn mount(&self, node: &str, _: pb::MountRequest) -> Result<(), Status> {
        Err(Status::unavailable(format!(
            "this controller has no node agent access configured (node {node})"
        )))
    }
}
