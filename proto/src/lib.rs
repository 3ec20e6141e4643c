//! Generated gRPC contracts of sandpool: `sandpool.v1`.
//!
//! * [`v1::runtime_server`] / [`v1::runtime_client`]: the in-sandbox runtime.
//! * [`v1::node_agent_server`] / [`v1::node_agent_client`]: the node agent.
//! * [`v1::scheduler_server`] / [`v1::scheduler_client`]: the scheduler.
//! * [`template`]: the sandbox template between wire and stored form.

#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod v1 {
    tonic::include_proto!("sandpool.v1");
}

/// Metadata key carrying a sandbox runtime's access token on gRPC calls
/// (the same value as the HTTP `X-EXECD-ACCESS-TOKEN` header).
pub const ACCESS_TOKEN_METADATA: &str = "x-execd-access-token";

pub mod auth;
pub mod template;

/// Run a state-changing gRPC call to completion even if the caller goes away
/// (tonic drops a handler's future when its client disconnects): a dropped
/// request must not leave a claim or a sandbox half-made. The task stays in
/// the caller's span.
pub async fn detached<T, E>(
    f: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, tonic::Status>
where
    T: Send + 'static,
    E: Into<tonic::Status> + Send + 'static,
{
    tokio::spawn(tracing::Instrument::in_current_span(f))
        .await
        .map_err(|e| tonic::Status::internal(format!("request task failed: {e}")))?
        .map_err(Into::into)
}

/// The public API for agent frameworks: `sandpool.v1.public` (see
/// `proto/sandpool/v1/public/`), kept apart from the internal services.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod public {
    tonic::include_proto!("sandpool.v1.public");

    /// The encoded `FileDescriptorSet` of the public API (server reflection,
    /// the breaking-change check).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sandpool_public_descriptor");
}
