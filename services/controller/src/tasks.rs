//! The real [`TaskRunner`]: the sandbox runtime's gRPC API at `<podIP>:44772`,
//! authenticated with the pod's runtime token. A batch task is the sandbox's
//! entrypoint (`Inject`), its state is `EntrypointStatus`.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use sandpool_proto::v1::{self as pb, runtime_client::RuntimeClient};

use crate::context::TaskRunner;
use crate::crd::ProcessTask;
use crate::error::{Error, Result};
use crate::pods::{self, RUNTIME_PORT};

#[derive(Debug, Clone, Default)]
pub struct GrpcTaskRunner;

fn err(pod: &Pod, reason: &str) -> Error {
    Error::Runtime {
        pod: pod.name_any(),
        reason: reason.to_string(),
    }
}

async fn client(pod: &Pod) -> Result<RuntimeClient<tonic::transport::Channel>> {
    let ip = pods::pod_ip(pod).ok_or_else(|| err(pod, "the pod has no IP yet"))?;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{ip}:{RUNTIME_PORT}"))
        .map_err(|source| Error::RuntimeConnect {
            pod: pod.name_any(),
            source,
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|source| Error::RuntimeConnect {
            pod: pod.name_any(),
            source,
        })?;
    Ok(RuntimeClient::new(ch))
}

fn request<T>(pod: &Pod, msg: T) -> Result<tonic::Request<T>> {
    let mut r = sandpool_telemetry::grpc_request(msg);
    if let Some(t) = pods::access_token(pod) {
        r.metadata_mut().insert(
            sandpool_proto::ACCESS_TOKEN_METADATA,
            t.parse().map_err(|_| err(pod, "bad token"))?,
        );
    }
    Ok(r)
}

#[async_trait]
impl TaskRunner for GrpcTaskRunner {
    async fn start(&self, pod: &Pod, task: &ProcessTask) -> Result<()> {
        let argv: Vec<String> = task.command.iter().chain(&task.args).cloned().collect();
        if argv.is_empty() {
            return Err(err(pod, "the task has no command"));
        }
        let env = task
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        let msg = pb::InjectRequest {
            argv,
            env,
            cwd: task.working_dir.clone().unwrap_or_default(),
            replace: true,
            ..Default::default()
        };
        inject(pod, msg, "starting the task").await
    }

    async fn status(&self, pod: &Pod) -> Option<Option<i32>> {
        let mut c = client(pod).await.ok()?;
        let s = c
            .entrypoint_status(request(pod, pb::EntrypointStatusRequest {}).ok()?)
            .await
            .ok()?
            .into_inner();
        match pb::ProcessPhase::try_from(s.phase).ok()? {
            pb::ProcessPhase::Running => Some(None),
            pb::ProcessPhase::Exited => Some(s.exit_code),
            _ => None,
        }
    }

    async fn stop(&self, pod: &Pod) -> Result<()> {
        // replacing the entrypoint kills the running one (and its process group)
        let msg = pb::InjectRequest {
            argv: vec!["true".into()],
            replace: true,
            ..Default::default()
        };
        inject(pod, msg, "stopping the task").await
    }

    async fn health(&self, pod: &Pod) -> Option<pb::HealthResponse> {
        let mut c = client(pod).await.ok()?;
        let r = request(pod, pb::HealthRequest {}).ok()?;
        Some(c.health(r).await.ok()?.into_inner())
    }
}

/// Inject `msg` as the pod runtime's entrypoint; `call` names it in errors.
async fn inject(pod: &Pod, msg: pb::InjectRequest, call: &'static str) -> Result<()> {
    client(pod)
        .await?
        .inject(request(pod, msg)?)
        .await
        .map_err(|source| Error::RuntimeCall {
            pod: pod.name_any(),
            call,
            source,
        })?;
    Ok(())
}
