//! The scheduler's error type, mapped to gRPC statuses.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("pool {0} not found")]
    PoolNotFound(String),
    #[error("claim {0} not found")]
    ClaimNotFound(String),
    #[error("checkpoint {0} not found on any node")]
    CheckpointNotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("invalid restore count {count}: at most {max} claims from one checkpoint")]
    RestoreCount { count: u32, max: u32 },
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("node address {addr} is not a valid URI")]
    NodeAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid service token for the node agents")]
    ServiceToken(#[source] sandpool_proto::auth::TokenError),
    #[error("pool {0} has no warm sandbox (pool_only requested)")]
    Exhausted(String),
    #[error("no node has room for another sandbox")]
    NoCapacity,
    #[error("{0}")]
    Conflict(String),
    #[error("node {node}: {status}")]
    Node { node: String, status: tonic::Status },
    #[error("store: {what} failed")]
    Store {
        what: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("store: cannot create its directory {path}")]
    StoreDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store: cannot make its file {path} owner-only")]
    StoreFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store: cannot encode record {key}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store: the write task for claim {claim} did not finish")]
    StoreTask {
        claim: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub type Result<T, E = SchedError> = std::result::Result<T, E>;

impl SchedError {
    /// A store operation `what` failed with redb error `e`.
    pub fn store(what: &'static str) -> impl FnOnce(redb::Error) -> SchedError {
        move |source| SchedError::Store { what, source }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SchedError::PoolNotFound(_) => "pool_not_found",
            SchedError::ClaimNotFound(_) => "claim_not_found",
            SchedError::CheckpointNotFound(_) => "checkpoint_not_found",
            SchedError::Invalid(_)
            | SchedError::RestoreCount { .. }
            | SchedError::UnknownNode(_)
            | SchedError::NodeAddress { .. }
            | SchedError::ServiceToken(_) => "invalid",
            SchedError::Exhausted(_) => "exhausted",
            SchedError::NoCapacity => "no_capacity",
            SchedError::Conflict(_) => "conflict",
            SchedError::Node { .. } => "node",
            SchedError::Store { .. }
            | SchedError::StoreDir { .. }
            | SchedError::StoreFile { .. }
            | SchedError::Encode { .. }
            | SchedError::StoreTask { .. } => "store",
        }
    }
}

impl From<sandpool_core::CoreError> for SchedError {
    fn from(e: sandpool_core::CoreError) -> Self {
        match e {
            sandpool_core::CoreError::IllegalTransition { .. } => {
                SchedError::Conflict(e.to_string())
            }
            other => SchedError::Invalid(other.to_string()),
        }
    }
}

impl From<SchedError> for tonic::Status {
    fn from(e: SchedError) -> Self {
        use tonic::Code;
        let code = match &e {
            SchedError::PoolNotFound(_)
            | SchedError::ClaimNotFound(_)
            | SchedError::CheckpointNotFound(_) => Code::NotFound,
            SchedError::Invalid(_)
            | SchedError::RestoreCount { .. }
            | SchedError::UnknownNode(_)
            | SchedError::NodeAddress { .. }
            | SchedError::ServiceToken(_) => Code::InvalidArgument,
            SchedError::Exhausted(_) | SchedError::NoCapacity => Code::ResourceExhausted,
            SchedError::Conflict(_) => Code::FailedPrecondition,
            SchedError::Node { status, .. } => match status.code() {
                Code::InvalidArgument => Code::InvalidArgument,
                Code::NotFound => Code::NotFound,
                Code::ResourceExhausted => Code::ResourceExhausted,
                Code::FailedPrecondition => Code::FailedPrecondition,
                Code::Unimplemented => Code::Unimplemented,
                _ => Code::Unavailable,
            },
            SchedError::Store { .. }
            | SchedError::StoreDir { .. }
            | SchedError::StoreFile { .. }
            | SchedError::Encode { .. }
            | SchedError::StoreTask { .. } => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
