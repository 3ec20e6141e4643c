//! A sandbox's runtime, reached by the gateway for the public API's exec
//! and file calls: its gRPC service (the runtime port), with the sandbox's
//! access token and the caller's trace context on every call.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::Mutex;

use sandpool_proto::v1::{self as pb, runtime_client::RuntimeClient};
use tonic::{Status, metadata::AsciiMetadataValue, transport::Channel};

use super::call::{Call, status};
use crate::{Gateway, error::ApiError, opensandbox};

/// Channels to sandbox runtimes by address, reused across calls (each
/// connects on first use and reconnects after a failure); at most
/// [`MAX_CHANNELS`], all dropped when full.
static CHANNELS: LazyLock<Mutex<HashMap<String, Channel>>> = LazyLock::new(Mutex::default);
const MAX_CHANNELS: usize = 4096;

fn channel(url: &str) -> Result<Channel, String> {
    let mut m = CHANNELS.lock();
    if let Some(ch) = m.get(url) {
        return Ok(ch.clone());
    }
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy();
    if m.len() >= MAX_CHANNELS {
        m.clear();
    }
    m.insert(url.to_string(), ch.clone());
    Ok(ch)
}

pub struct SandboxRuntime {
    pub client: RuntimeClient<Channel>,
    token: Option<AsciiMetadataValue>,
}

impl SandboxRuntime {
    /// The runtime of the caller's running sandbox `id` (NOT_FOUND when it
    /// is not the caller's, FAILED_PRECONDITION when paused).
    pub async fn of(gw: &Gateway, call: &Call, id: &str) -> Result<Self, Status> {
        let claim = call.run(gw.get_claim(id)).await?;
        if claim.state == pb::ClaimState::Paused as i32 {
            return Err(super::call::to_status(ApiError::Conflict(format!(
                "sandbox {id} is paused; resume it first"
            ))));
        }
        if claim.state != pb::ClaimState::Bound as i32 {
            return Err(super::call::to_status(ApiError::Conflict(format!(
                "sandbox {id} is not running"
            ))));
        }
        let sb = claim.sandbox.ok_or_else(|| {
            super::call::to_status(ApiError::Internal("claim without sandbox".into()))
        })?;
        let port = opensandbox::sandbox_port(&sb, opensandbox::RUNTIME_PORT)
            .map_err(super::call::to_status)?;
        let unreachable = |e: String| {
            status(
                tonic::Code::Unavailable,
                "SANDBOX_UNREACHABLE",
                format!("sandbox {id}'s runtime: {e}"),
                Some(Duration::from_secs(1)),
            )
        };
        let ch = channel(&format!("http://{}:{port}", sb.ip)).map_err(unreachable)?;
        Ok(SandboxRuntime {
            client: RuntimeClient::new(ch),
            token: sb.access_token.parse().ok(),
        })
    }

    /// `msg` as a runtime request: the sandbox's token, the trace context.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = sandpool_telemetry::grpc_request(msg);
        if let Some(t) = &self.token {
            r.metadata_mut()
                .insert(sandpool_proto::ACCESS_TOKEN_METADATA, t.clone());
        }
        r
    }
}
