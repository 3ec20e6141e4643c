//! An in-process fake node agent (tonic, on loopback) that records the
//! `Pause` / `Resume` (and `CommitImages`) calls it gets, with their authorization header, and
//! answers them (or refuses every one with a given status).

use std::sync::Arc;

use parking_lot::Mutex;
use sandpool_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use sandpool_proto::v1::{self as pb};
use tonic::{Request, Response, Status};

/// What the fake node agent was asked: (call, sandbox id, authorization).
pub type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

struct FakeAgent {
    calls: Calls,
    /// Refuse every pause / resume with this.
    fail: Option<Status>,
}

impl FakeAgent {
    fn record<T>(&self, call: &str, r: Request<pb::SandboxRef>) -> Result<Response<T>, Status>
    where
        T: Default,
    {
        let auth = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let id = r.into_inner().sandbox_id;
        self.calls.lock().push((call.into(), id, auth));
        match &self.fail {
            Some(s) => Err(s.clone()),
            None => Ok(Response::new(T::default())),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn no<T>() -> Reply<T> {
    Err(Status::unimplemented("not in this fake"))
}

#[tonic::async_trait]
impl NodeAgent for FakeAgent {
    async fn create_sandbox(&self, _: Request<pb::CreateSandboxRequest>) -> Reply<pb::SandboxInfo> {
        no()
    }
    async fn prepare_image(
        &self,
        _: Request<pb::PrepareImageRequest>,
    ) -> Reply<pb::PrepareImageResponse> {
        no()
    }
    async fn get_sandbox(&self, _: Request<pb::SandboxRef>) -> Reply<pb::SandboxInfo> {
        no()
    }
    async fn list_sandboxes(
        &self,
        _: Request<pb::ListSandboxesRequest>,
    ) -> Reply<pb::ListSandboxesResponse> {
        no()
    }
    async fn inject(&self, _: Request<pb::NodeInjectRequest>) -> Reply<pb::NodeInjectResponse> {
        no()
    }
    async fn release(&self, _: Request<pb::ReleaseRequest>) -> Reply<pb::SandboxInfo> {
        no()
    }
    async fn pause(&self, r: Request<pb::PauseRequest>) -> Reply<pb::SandboxInfo> {
        let (meta, ext, r) = r.into_parts();
        let r = pb::SandboxRef {
            sandbox_id: r.sandbox_id,
        };
        self.record("pause", Request::from_parts(meta, ext, r))
    }
    async fn resume(&self, r: Request<pb::SandboxRef>) -> Reply<pb::SandboxInfo> {
        self.record("resume", r)
    }
    async fn checkpoint(&self, _: Request<pb::CheckpointRequest>) -> Reply<pb::CheckpointInfo> {
        no()
    }
    async fn restore(&self, _: Request<pb::RestoreRequest>) -> Reply<pb::SandboxInfo> {
        no()
    }
    async fn fork(&self, _: Request<pb::ForkRequest>) -> Reply<pb::ForkResponse> {
        no()
    }
    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Reply<pb::ListCheckpointsResponse> {
        no()
    }
    async fn delete_checkpoint(
        &self,
        _: Request<pb::CheckpointRef>,
    ) -> Reply<pb::DeleteCheckpointResponse> {
        no()
    }
    async fn upgrade(&self, _: Request<pb::UpgradeRequest>) -> Reply<pb::SandboxInfo> {
        no()
    }
    async fn mount(&self, _: Request<pb::MountRequest>) -> Reply<pb::SandboxInfo> {
        no()
    }
    async fn unmount(&self, _: Request<pb::UnmountRequest>) -> Reply<pb::SandboxInfo> {
        no()
    }
    /// Recorded as `commit` (a push as `commit push <user>:<password>
    /// insecure=<bool>`, images and all); each container gets
    /// `sha256:fake-<name>` and a size of [`FAKE_IMAGE_SIZE`].
    async fn commit_images(
        &self,
        r: Request<pb::CommitImagesRequest>,
    ) -> Reply<pb::CommitImagesResponse> {
        let req = r.get_ref().clone();
        let mut auth = Request::new(pb::SandboxRef {
            sandbox_id: req.sandbox_id.clone(),
        });
        *auth.metadata_mut() = r.metadata().clone();
        let call = if req.push {
            let a = req.push_auth.clone().unwrap_or_default();
            let images: Vec<&str> = req.containers.iter().map(|c| c.image.as_str()).collect();
            format!(
                "commit push {}:{} insecure={} {images:?}",
                a.username, a.password, req.push_insecure
            )
        } else {
            "commit".to_string()
        };
        self.record::<pb::SandboxInfo>(&call, auth)?;
        let containers = req
            .containers
            .into_iter()
            .map(|c| pb::ContainerImage {
                digest: format!("sha256:fake-{}", c.container_name),
                size_bytes: FAKE_IMAGE_SIZE,
                ..c
            })
            .collect();
        Ok(Response::new(pb::CommitImagesResponse { containers }))
    }
    type WatchStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::NodeEvent, Status>> + Send + 'static>,
    >;
    async fn watch(&self, _: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        no()
    }
}

/// The content size the fake agent gives each committed image.
pub const FAKE_IMAGE_SIZE: u64 = 4_321_000;

/// Serve a fake node agent on loopback; its port.
pub async fn serve_agent(fail: Option<Status>) -> (u16, Calls) {
    let calls: Calls = Arc::default();
    let agent = FakeAgent {
        calls: calls.clone(),
        fail,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeAgentServer::new(agent))
            .serve_with_incoming(incoming),
    );
    (port, calls)
}

/// The service token the controller calls the fake node agents with.
pub const AGENT_TOKEN: &str = "svc-secret-0123456789";

/// The chart's node agent DaemonSet pod `name` in `ns`, Ready at `ip` on
/// `node`.
pub fn put_agent_pod(store: &mut super::Store, ns: &str, name: &str, ip: &str, node: &str) {
    store.put(
        &super::pods_path(ns),
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "node-agent"}},
            "spec": {"containers": [{"name": "node-agent", "image": "x"}]}}),
    );
    super::make_ready(store, ns, name, ip, node);
}

/// A controller context on `api` whose node agents are the DaemonSet pods
/// of `ns`, on `port` of their IP, called with [`AGENT_TOKEN`].
pub fn context_with_daemonset(
    api: &super::FakeApi,
    ns: &str,
    port: u16,
    tasks: super::NoTasks,
) -> Arc<sandpool_controller::context::Context> {
    super::context_with_agents(api, tasks, daemonset_agents(api, ns, port))
}

fn daemonset_agents(
    api: &super::FakeApi,
    ns: &str,
    port: u16,
) -> Arc<dyn sandpool_controller::node_agents::NodeAgents> {
    use sandpool_controller::kube_scheduler::{DaemonSetAgents, NODE_AGENT_SELECTOR};
    let token = sandpool_proto::auth::ServiceToken::new(Some(AGENT_TOKEN)).expect("token");
    Arc::new(DaemonSetAgents::new(api.client(), ns, token).at(NODE_AGENT_SELECTOR, port))
}

/// [`context_with_daemonset`] with SandboxSnapshot images going where
/// `snapshots` says (the controller's `--snapshot-registry` flags).
pub fn context_with_snapshot_registry(
    api: &super::FakeApi,
    ns: &str,
    port: u16,
    tasks: super::NoTasks,
    snapshots: sandpool_controller::snapshot_registry::SnapshotRegistry,
) -> Arc<sandpool_controller::context::Context> {
    let ctx = super::bare_context(api, tasks)
        .with_node_agents(daemonset_agents(api, ns, port))
        .with_snapshot_registry(snapshots);
    Arc::new(ctx)
}
