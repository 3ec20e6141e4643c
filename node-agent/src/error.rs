//! The node agent's error type, mapped to gRPC statuses.

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid template: {0}")]
    InvalidTemplate(String),
    #[error("unknown image {0:?}; known images: {1}")]
    UnknownImage(String, String),
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("node is full: {0}")]
    Exhausted(String),
    #[error("containerd {op}: {status}")]
    Containerd {
        op: String,
        #[source]
        status: tonic::Status,
    },
    #[error("connecting to containerd at {path}: {message}")]
    Connect { path: String, message: String },
    #[error("network: {0}")]
    Network(String),
    #[error("image build: {0}")]
    Image(String),
    #[error("runtime of sandbox {id}: {message}")]
    Runtime { id: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not supported yet")]
    Unsupported(String),
    #[error("checkpoint {0} not found")]
    CheckpointNotFound(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
    pub fn containerd(op: impl Into<String>, status: tonic::Status) -> Self {
        AgentError::Containerd {
            op: op.into(),
            status,
        }
    }
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::InvalidTemplate(_) => "invalid_template",
            AgentError::UnknownImage(..) => "unknown_image",
            AgentError::NotFound(_) => "not_found",
            AgentError::FailedPrecondition(_) => "failed_precondition",
            AgentError::Exhausted(_) => "exhausted",
            AgentError::Containerd { .. } => "containerd",
            AgentError::Connect { .. } => "connect",
            AgentError::Network(_) => "network",
            AgentError::Image(_) => "image",
            AgentError::Runtime { .. } => "runtime",
            AgentError::Io { .. } => "io",
            AgentError::Unsupported(_) => "unsupported",
            AgentError::CheckpointNotFound(_) => "not_found",
            AgentError::Checkpoint(_) => "checkpoint",
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        use tonic::Code;
        let code = match &e {
            AgentError::InvalidTemplate(_) | AgentError::UnknownImage(..) => Code::InvalidArgument,
            AgentError::NotFound(_) | AgentError::CheckpointNotFound(_) => Code::NotFound,
            AgentError::FailedPrecondition(_) => Code::FailedPrecondition,
            AgentError::Exhausted(_) => Code::ResourceExhausted,
            AgentError::Connect { .. } => Code::Unavailable,
            AgentError::Containerd { status, .. } => match status.code() {
                Code::NotFound => Code::NotFound,
                Code::Unavailable => Code::Unavailable,
                _ => Code::Internal,
            },
            AgentError::Runtime { .. } => Code::Unavailable,
            AgentError::Unsupported(_) => Code::Unimplemented,
            AgentError::Network(_)
            | AgentError::Image(_)
            | AgentError::Io { .. }
            | AgentError::Checkpoint(_) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
