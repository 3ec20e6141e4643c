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

impl std::fmt::Debug for v1::ImageAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
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

/// sandboxd's `process.v1.ProcessService` (kubernetes-sigs/agent-sandbox
/// KEP-539.2), as the k8s-agent-sandbox SDK calls it on a sandbox's 9090.
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod sandboxd_process {
    tonic::include_proto!("process.v1");
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

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_of_requests_hides_the_registry_password() {
        let auth = v1::ImageAuth {
            username: "ann".into(),
            password: "s3cret-pw".into(),
        };
        let claim = v1::ClaimRequest {
            image_auth: Some(auth.clone()),
            ..Default::default()
        };
        let create = v1::CreateSandboxRequest {
            image_auth: Some(auth),
            ..Default::default()
        };
        for text in [format!("{claim:?}"), format!("{create:?}")] {
            assert!(text.contains("ann"), "{text}");
            assert!(!text.contains("s3cret-pw"), "{text}");
        }
    }
}
