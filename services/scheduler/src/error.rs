//! The scheduler's error type, mapped to gRPC statuses.

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
    #[error("pool {0} has no warm sandbox (pool_only requested)")]
    Exhausted(String),
    #[error("no node has room for another sandbox")]
    NoCapacity,
    #[error("{0}")]
    Conflict(String),
    #[error("node {node}: {status}")]
    Node { node: String, status: tonic::Status },
    #[error("store: {0}")]
    Store(String),
}

pub type Result<T, E = SchedError> = std::result::Result<T, E>;

impl SchedError {
    pub fn kind(&self) -> &'static str {
        match self {
            SchedError::PoolNotFound(_) => "pool_not_found",
            SchedError::ClaimNotFound(_) => "claim_not_found",
            SchedError::CheckpointNotFound(_) => "checkpoint_not_found",
            SchedError::Invalid(_) => "invalid",
            SchedError::Exhausted(_) => "exhausted",
            SchedError::NoCapacity => "no_capacity",
            SchedError::Conflict(_) => "conflict",
            SchedError::Node { .. } => "node",
            SchedError::Store(_) => "store",
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
            SchedError::Invalid(_) => Code::InvalidArgument,
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
            SchedError::Store(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
