//! `sandpool.v1.NodeAgent` over tonic.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use sandpool_proto::{
    detached,
    v1::{self as pb, node_agent_server::NodeAgent},
};
use tonic::{Request, Response, Status};

use crate::{
    agent::{Agent, Sandbox},
    registry::Credentials,
};

pub struct NodeAgentService {
    agent: Arc<Agent>,
}

/// What a handler answers.
type Reply<T> = Result<Response<T>, Status>;

impl NodeAgentService {
    pub fn new(agent: Arc<Agent>) -> Self {
        NodeAgentService { agent }
    }

    /// Run `work(agent, req)` as its own task (a dropped RPC does not
    /// cancel it halfway) in an `rpc` span, inside the server's span of the
    /// call (which continues the caller's trace).
    async fn traced<Req, T, Fut>(
        &self,
        rpc: &'static str,
        req: Req,
        work: impl FnOnce(Arc<Agent>, Req) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = crate::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let span = tracing::info_span!("node_agent.rpc", rpc);
        detached(tracing::Instrument::instrument(
            work(Arc::clone(&self.agent), req),
            span,
        ))
        .await
    }

    /// [`Self::traced`] for a call that leaves one sandbox: its info.
    async fn traced_sandbox<Req, Fut>(
        &self,
        rpc: &'static str,
        req: Request<Req>,
        work: impl FnOnce(Arc<Agent>, Req) -> Fut,
    ) -> Reply<pb::SandboxInfo>
    where
        Fut: Future<Output = crate::error::Result<Sandbox>> + Send + 'static,
    {
        let sb = self.traced(rpc, req.into_inner(), work).await?;
        Ok(Response::new(self.info(&sb)))
    }

    fn info(&self, sb: &Sandbox) -> pb::SandboxInfo {
        sb.info(&self.agent.cfg.node_name)
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    async fn create_sandbox(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Reply<pb::SandboxInfo> {
        let mut r = req.into_inner();
        let t = r
            .template
            .take()
            .ok_or_else(|| Status::invalid_argument("template is required"))?;
        let creds = r.image_auth.take().map(Credentials::from);
        let sb = self
            .traced("CreateSandbox", r, |a, r| async move {
                a.create_with(&r.pool, t, Some(r.sandbox_id), creds).await
            })
            .await?;
        Ok(Response::new(self.info(&sb)))
    }

    async fn prepare_image(
        &self,
        req: Request<pb::PrepareImageRequest>,
    ) -> Reply<pb::PrepareImageResponse> {
        let r = req.into_inner();
        if r.image.trim().is_empty() {
            return Err(Status::invalid_argument("image is required"));
        }
        let image = self
            .traced("PrepareImage", r, |a, r| async move {
                a.ensure_image(r.image.trim()).await.map(|(name, ..)| name)
            })
            .await?;
        Ok(Response::new(pb::PrepareImageResponse { image }))
    }

    async fn get_sandbox(&self, req: Request<pb::SandboxRef>) -> Reply<pb::SandboxInfo> {
        let sb = self.agent.get(&req.into_inner().sandbox_id)?;
        Ok(Response::new(self.info(&sb)))
    }

    async fn list_sandboxes(
        &self,
        req: Request<pb::ListSandboxesRequest>,
    ) -> Reply<pb::ListSandboxesResponse> {
        Ok(Response::new(pb::ListSandboxesResponse {
            sandboxes: self.agent.list(&req.into_inner().pool),
        }))
    }

    async fn inject(&self, req: Request<pb::NodeInjectRequest>) -> Reply<pb::NodeInjectResponse> {
        let r = req.into_inner();
        if r.process.is_none()
            && r.egress.is_none()
            && r.resources.is_none()
            && r.credential_vault.is_empty()
        {
            return Err(Status::invalid_argument(
                "process, egress, resources or credential_vault is required",
            ));
        }
        let (st, took) = self
            .traced("Inject", r, |a, r| async move {
                // limits and policy hold before the process starts
                if let Some(res) = &r.resources {
                    a.resize(&r.sandbox_id, res).await?;
                }
                if let Some(e) = r.egress {
                    a.set_egress(&r.sandbox_id, Some(e)).await?;
                }
                if !r.credential_vault.is_empty() {
                    a.set_credential_vault(&r.sandbox_id, &r.credential_vault)
                        .await?;
                }
                match r.process {
                    Some(p) => a
                        .inject(&r.sandbox_id, p)
                        .await
                        .map(|(st, t)| (Some(st), t)),
                    None => Ok((None, std::time::Duration::ZERO)),
                }
            })
            .await?;
        Ok(Response::new(pb::NodeInjectResponse {
            process: st,
            inject_us: took.as_micros() as u64,
        }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Reply<pb::SandboxInfo> {
        let r = req.into_inner();
        let policy = pb::ReleasePolicy::try_from(r.policy).map_err(|_| {
            Status::invalid_argument(format!("unknown release policy {}", r.policy))
        })?;
        let before = self.info(&self.agent.get(&r.sandbox_id)?);
        let after = self
            .traced("Release", r.sandbox_id, |a, id| async move {
                a.release(&id, policy).await
            })
            .await?;
        Ok(Response::new(match after {
            Some(sb) => self.info(&sb),
            None => pb::SandboxInfo {
                state: pb::SandboxState::Releasing as i32,
                ..before
            },
        }))
    }

    async fn pause(&self, req: Request<pb::PauseRequest>) -> Reply<pb::SandboxInfo> {
        self.traced_sandbox("Pause", req, |a, r| async move {
            if r.filesystem_only {
                a.pause_filesystem(&r.sandbox_id).await
            } else {
                a.pause(&r.sandbox_id).await
            }
        })
        .await
    }

    async fn resume(&self, req: Request<pb::SandboxRef>) -> Reply<pb::SandboxInfo> {
        self.traced_sandbox("Resume", req, |a, r| async move {
            a.resume(&r.sandbox_id).await
        })
        .await
    }

    async fn checkpoint(&self, req: Request<pb::CheckpointRequest>) -> Reply<pb::CheckpointInfo> {
        let info = self
            .traced("Checkpoint", req.into_inner(), |a, r| async move {
                a.checkpoint(&r.sandbox_id, r.leave_running, &r.owner, &r.name)
                    .await
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn restore(&self, req: Request<pb::RestoreRequest>) -> Reply<pb::SandboxInfo> {
        self.traced_sandbox("Restore", req, |a, r| async move {
            a.restore(&r.checkpoint_id, Some(r.sandbox_id)).await
        })
        .await
    }

    async fn fork(&self, req: Request<pb::ForkRequest>) -> Reply<pb::ForkResponse> {
        let made = self
            .traced("Fork", req.into_inner(), |a, r| async move {
                a.fork(&r.checkpoint_id, r.count).await
            })
            .await?;
        Ok(Response::new(pb::ForkResponse {
            sandboxes: made.iter().map(|s| self.info(s)).collect(),
        }))
    }

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Reply<pb::ListCheckpointsResponse> {
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: self.agent.list_checkpoints(),
        }))
    }

    async fn delete_checkpoint(
        &self,
        req: Request<pb::CheckpointRef>,
    ) -> Reply<pb::DeleteCheckpointResponse> {
        self.agent
            .delete_checkpoint(&req.into_inner().checkpoint_id)?;
        Ok(Response::new(pb::DeleteCheckpointResponse {}))
    }

    async fn upgrade(&self, req: Request<pb::UpgradeRequest>) -> Reply<pb::SandboxInfo> {
        self.traced_sandbox("Upgrade", req, |a, r| async move {
            a.upgrade(&r.sandbox_id, &r.image).await
        })
        .await
    }

    async fn mount(&self, req: Request<pb::MountRequest>) -> Reply<pb::SandboxInfo> {
        self.traced_sandbox("Mount", req, |a, r| async move {
            a.mount(&r.sandbox_id, &r.host_path, &r.mount_path, r.read_only)
                .await
        })
        .await
    }

    async fn unmount(&self, req: Request<pb::UnmountRequest>) -> Reply<pb::SandboxInfo> {
        self.traced_sandbox("Unmount", req, |a, r| async move {
            a.unmount(&r.sandbox_id, &r.mount_path).await
        })
        .await
    }

    async fn commit_images(
        &self,
        _: Request<pb::CommitImagesRequest>,
    ) -> Reply<pb::CommitImagesResponse> {
        Err(Status::unimplemented(
            "CommitImages is the Kubernetes mode's (SandboxSnapshot); a standalone sandbox is snapshotted with Checkpoint",
        ))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::NodeEvent, Status>> + Send>>;

    /// A snapshot (capacity + every sandbox), then every change. A watcher
    /// that falls behind gets a fresh snapshot instead of a gap.
    async fn watch(&self, _: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        let agent = Arc::clone(&self.agent);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::NodeEvent, Status>>(256);
        tokio::spawn(async move {
            let mut sub = agent.subscribe();
            'outer: loop {
                let mut snapshot = vec![pb::NodeEvent {
                    event: Some(pb::node_event::Event::Capacity(agent.capacity())),
                }];
                snapshot.extend(agent.list("").into_iter().map(|s| pb::NodeEvent {
                    event: Some(pb::node_event::Event::Sandbox(s)),
                }));
                for e in snapshot {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                loop {
                    match sub.recv().await {
                        Ok(e) => {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue 'outer,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
