//! The public gRPC API (`sandpool.v1.public.Sandboxes`) on the gateway's
//! listener: HTTP/2 gRPC and HTTP/1.1 REST share the port (the routes are
//! merged into the REST router, behind the same rate limit and tracing).
//! Same API keys, same ownership rules; plus server reflection and the
//! standard health service.

mod call;
mod exec;
mod files;
mod lifecycle;
mod runtime;
mod watch;

use std::sync::Arc;

use sandpool_proto::public::{
    self as api,
    sandboxes_server::{Sandboxes, SandboxesServer},
};
use tonic::{Request, Response, Status, Streaming, server::NamedService};

pub use call::DOMAIN;

use crate::Gateway;

type Reply<T> = Result<Response<T>, Status>;

/// The `sandpool.v1.public.Sandboxes` service of a gateway.
#[derive(Clone)]
pub struct PublicApi {
    gw: Gateway,
    snapshots: Arc<lifecycle::Snapshots>,
}

impl PublicApi {
    pub fn new(gw: Gateway) -> Self {
        PublicApi {
            gw,
            snapshots: Arc::default(),
        }
    }

    fn call<T>(&self, req: &Request<T>) -> Result<call::Call, Status> {
        call::Call::of(&self.gw, req.metadata())
    }

    /// Run `f` on the gateway as the caller of `req`, within its deadline.
    async fn unary<T, R, F>(&self, req: Request<T>, f: impl FnOnce(Gateway, T) -> F) -> Reply<R>
    where
        F: Future<Output = Result<R, crate::error::ApiError>>,
    {
        let c = self.call(&req)?;
        let gw = self.gw.clone();
        c.run(f(gw, req.into_inner())).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl Sandboxes for PublicApi {
    async fn create(&self, req: Request<api::CreateSandboxRequest>) -> Reply<api::Sandbox> {
        self.unary(req, |gw, r| async move { lifecycle::create(&gw, r).await })
            .await
    }

    async fn get(&self, req: Request<api::GetSandboxRequest>) -> Reply<api::Sandbox> {
        self.unary(req, |gw, r| async move {
            gw.get_claim(&r.id).await.map(lifecycle::sandbox)
        })
        .await
    }

    async fn list(
        &self,
        req: Request<api::ListSandboxesRequest>,
    ) -> Reply<api::ListSandboxesResponse> {
        self.unary(req, |gw, r| async move {
            let sandboxes = lifecycle::list(&gw, r.metadata).await?;
            Ok(api::ListSandboxesResponse { sandboxes })
        })
        .await
    }

    async fn renew(&self, req: Request<api::RenewSandboxRequest>) -> Reply<api::Sandbox> {
        self.unary(req, |gw, r| async move {
            lifecycle::renew(&gw, &r.id, r.timeout_seconds).await
        })
        .await
    }

    async fn pause(&self, req: Request<api::PauseSandboxRequest>) -> Reply<api::Sandbox> {
        self.unary(req, |gw, r| async move {
            gw.pause_claim(&r.id, false).await?;
            gw.get_claim(&r.id).await.map(lifecycle::sandbox)
        })
        .await
    }

    async fn resume(&self, req: Request<api::ResumeSandboxRequest>) -> Reply<api::Sandbox> {
        self.unary(req, |gw, r| async move {
            gw.resume_claim(&r.id).await?;
            gw.get_claim(&r.id).await.map(lifecycle::sandbox)
        })
        .await
    }

    async fn snapshot(
        &self,
        req: Request<api::SnapshotSandboxRequest>,
    ) -> Reply<api::SandboxSnapshot> {
        let done = self.snapshots.clone();
        self.unary(req, |gw, r| async move {
            lifecycle::snapshot(&gw, &done, r).await
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<api::DeleteSandboxRequest>,
    ) -> Reply<api::DeleteSandboxResponse> {
        self.unary(req, |gw, r| async move {
            gw.release_claim(&r.id).await?;
            Ok(api::DeleteSandboxResponse {})
        })
        .await
    }

    type ExecStream = exec::ExecStream;

    async fn exec(&self, req: Request<Streaming<api::ExecRequest>>) -> Reply<Self::ExecStream> {
        let c = self.call(&req)?;
        exec::exec(&self.gw, c, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn upload(
        &self,
        req: Request<Streaming<api::UploadRequest>>,
    ) -> Reply<api::UploadResponse> {
        let c = self.call(&req)?;
        files::upload(&self.gw, c, req.into_inner())
            .await
            .map(Response::new)
    }

    type DownloadStream = files::DownloadStream;

    async fn download(&self, req: Request<api::DownloadRequest>) -> Reply<Self::DownloadStream> {
        let c = self.call(&req)?;
        files::download(&self.gw, c, req.into_inner())
            .await
            .map(Response::new)
    }

    type WatchStream = watch::WatchStream;

    async fn watch(&self, req: Request<api::WatchRequest>) -> Reply<Self::WatchStream> {
        let c = self.call(&req)?;
        watch::watch(&self.gw, c, req.into_inner().id)
            .await
            .map(Response::new)
    }
}

/// Whether a request is a gRPC call.
pub fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A gRPC call refused before it reached its service (rate limit): a
/// trailers-only answer with the error's status and details.
pub fn refusal(e: crate::error::ApiError) -> axum::response::Response {
    call::to_status(e).into_http::<axum::body::Body>()
}

/// `svc` at its gRPC path in an axum router (no fallback: REST keeps its own).
fn route<S>(router: axum::Router, svc: S) -> axum::Router
where
    S: NamedService
        + tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    router.route_service(&format!("/{}/{{*method}}", S::NAME), svc)
}

/// The public gRPC routes: the API, reflection (v1 and v1alpha) and health.
pub fn router(gw: Gateway) -> axum::Router {
    use futures_util::FutureExt;
    let (health, health_svc) = tonic_health::server::health_reporter();
    // an uncontended lock: done at once, also outside a runtime
    let _ = health
        .set_serving::<SandboxesServer<PublicApi>>()
        .now_or_never();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut r = route(
        axum::Router::new(),
        SandboxesServer::new(PublicApi::new(gw)),
    );
    r = route(r, health_svc);
    match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => route(route(r, v1), v1alpha),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "gRPC reflection is off");
            r
        }
    }
}
