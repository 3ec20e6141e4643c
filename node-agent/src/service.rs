//! `sandpool.v1.NodeAgent` over tonic.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use sandpool_proto::{
    detached,
    v1::{self as pb, node_agent_server::NodeAgent},
};
use tonic::{Request, Response, Status};

use crate::agent::Agent;

pub struct NodeAgentService {
    agent: Arc<Agent>,
}

impl NodeAgentService {
    pub fn new(agent: Arc<Agent>) -> Self {
        NodeAgentService { agent }
    }

    /// Run `work(agent, request)` as its own task (a dropped RPC does not
    /// cancel it halfway) in an `rpc` span, inside the server's span of the
    /// call (which continues the caller's trace).
    async fn traced<Req, T, Fut>(
        &self,
        rpc: &'static str,
        req: Request<Req>,
        work: impl FnOnce(Arc<Agent>, Req) -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = crate::error::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let span = rpc_span(rpc);
        detached(tracing::Instrument::instrument(
            work(Arc::clone(&self.agent), req.into_inner()),
            span,
        ))
        .await
    }
}

fn rpc_span(name: &'static str) -> tracing::Span {
    tracing::info_span!("node_agent.rpc", rpc = name)
}

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    async fn create_sandbox(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let span = rpc_span("CreateSandbox");
        let r = req.into_inner();
        let t = r
            .template
            .ok_or_else(|| Status::invalid_argument("template is required"))?;
        let a = Arc::clone(&self.agent);
        let sb = detached(tracing::Instrument::instrument(
            async move { a.create(&r.pool, t, Some(r.sandbox_id)).await },
            span,
        ))
        .await?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    async fn get_sandbox(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let sb = self.agent.get(&req.into_inner().sandbox_id)?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    async fn list_sandboxes(
        &self,
        req: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        Ok(Response::new(pb::ListSandboxesResponse {
            sandboxes: self.agent.list(&req.into_inner().pool),
        }))
    }

    async fn inject(
        &self,
        req: Request<pb::NodeInjectRequest>,
    ) -> Result<Response<pb::NodeInjectResponse>, Status> {
        let span = rpc_span("Inject");
        let r = req.into_inner();
        if r.process.is_none() && r.egress.is_none() {
            return Err(Status::invalid_argument("process or egress is required"));
        }
        let a = Arc::clone(&self.agent);
        let (st, took) = detached(tracing::Instrument::instrument(
            async move {
                // the policy holds before the process starts
                if let Some(e) = r.egress {
                    a.set_egress(&r.sandbox_id, Some(e)).await?;
                }
                match r.process {
                    Some(p) => a
                        .inject(&r.sandbox_id, p)
                        .await
                        .map(|(st, t)| (Some(st), t)),
                    None => Ok((None, std::time::Duration::ZERO)),
                }
            },
            span,
        ))
        .await?;
        Ok(Response::new(pb::NodeInjectResponse {
            process: st,
            inject_us: took.as_micros() as u64,
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let span = rpc_span("Release");
        let r = req.into_inner();
        let policy = pb::ReleasePolicy::try_from(r.policy).map_err(|_| {
            Status::invalid_argument(format!("unknown release policy {}", r.policy))
        })?;
        let before = self
            .agent
            .get(&r.sandbox_id)?
            .info(&self.agent.cfg.node_name);
        let a = Arc::clone(&self.agent);
        let id = r.sandbox_id.clone();
        let after = detached(tracing::Instrument::instrument(
            async move { a.release(&id, policy).await },
            span,
        ))
        .await?;
        Ok(Response::new(match after {
            Some(sb) => sb.info(&self.agent.cfg.node_name),
            None => pb::SandboxInfo {
                state: pb::SandboxState::Releasing as i32,
                ..before
            },
        }))
    }

    async fn pause(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let sb = self
            .traced(
                "Pause",
                req,
                |a, r| async move { a.pause(&r.sandbox_id).await },
            )
            .await?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    async fn resume(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let sb = self
            .traced("Resume", req, |a, r| async move {
                a.resume(&r.sandbox_id).await
            })
            .await?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    async fn checkpoint(
        &self,
        req: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointInfo>, Status> {
        let info = self
            .traced("Checkpoint", req, |a, r| async move {
                a.checkpoint(&r.sandbox_id, r.leave_running, &r.owner, &r.name)
                    .await
            })
            .await?;
        Ok(Response::new(info))
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let sb = self
            .traced("Restore", req, |a, r| async move {
                a.restore(&r.checkpoint_id, Some(r.sandbox_id)).await
            })
            .await?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    async fn fork(
        &self,
        req: Request<pb::ForkRequest>,
    ) -> Result<Response<pb::ForkResponse>, Status> {
        let made = self
            .traced("Fork", req, |a, r| async move {
                a.fork(&r.checkpoint_id, r.count).await
            })
            .await?;
        Ok(Response::new(pb::ForkResponse {
            sandboxes: made
                .iter()
                .map(|s| s.info(&self.agent.cfg.node_name))
                .collect(),
        }))
    }

    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: self.agent.list_checkpoints(),
        }))
    }

    async fn delete_checkpoint(
        &self,
        req: Request<pb::CheckpointRef>,
    ) -> Result<Response<pb::DeleteCheckpointResponse>, Status> {
        self.agent
            .delete_checkpoint(&req.into_inner().checkpoint_id)?;
        Ok(Response::new(pb::DeleteCheckpointResponse {}))
    }

    async fn upgrade(
        &self,
        req: Request<pb::UpgradeRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let sb = self
            .traced("Upgrade", req, |a, r| async move {
                a.upgrade(&r.sandbox_id, &r.image).await
            })
            .await?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    async fn mount(
        &self,
        req: Request<pb::MountRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let sb = self
            .traced("Mount", req, |a, r| async move {
                a.mount(&r.sandbox_id, &r.host_path, &r.mount_path, r.read_only)
                    .await
            })
            .await?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    async fn unmount(
        &self,
        req: Request<pb::UnmountRequest>,
    ) -> Result<Response<pb::SandboxInfo>, Status> {
        let sb = self
            .traced("Unmount", req, |a, r| async move {
                a.unmount(&r.sandbox_id, &r.mount_path).await
            })
            .await?;
        Ok(Response::new(sb.info(&self.agent.cfg.node_name)))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::NodeEvent, Status>> + Send>>;

    /// A snapshot (capacity + every sandbox), then every change. A watcher
    /// that falls behind gets a fresh snapshot instead of a gap.
    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
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
