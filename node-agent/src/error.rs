//! The node agent's error type, mapped to gRPC statuses.

/// The underlying error of a failed step, whatever library it came from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid template: {0}")]
    InvalidTemplate(String),
    #[error("invalid template: {what}: {source}")]
    InvalidInput {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("unknown image {0:?}; known images: {1}")]
    UnknownImage(String, String),
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{what}: {source}")]
    Precondition {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("mount namespace of pid {pid}: {source}")]
    MountNamespace {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("node is full: {0}")]
    Exhausted(String),
    #[error("containerd {op}: {status}")]
    Containerd {
        op: String,
        #[source]
        status: tonic::Status,
    },
    #[error("connecting to containerd at {path}: {what}: {source}")]
    Connect {
        path: String,
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("network: {0}")]
    Network(String),
    #[error("network: {what}: {source}")]
    NetworkFailed {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("image build: {0}")]
    Image(String),
    #[error("image build: {what}: {source}")]
    ImageFailed {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("runtime of sandbox {id}: {message}")]
    Runtime { id: String, message: String },
    #[error("runtime of sandbox {id}: {what}: {source}")]
    RuntimeFailed {
        id: String,
        what: String,
        #[source]
        source: BoxError,
    },
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
    #[error("checkpoint: {what}: {source}")]
    CheckpointFailed {
        what: String,
        #[source]
        source: BoxError,
    },
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
    /// Outside input (`what`: a host path, ...) that the system refuses.
    pub fn invalid(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        AgentError::InvalidInput {
            what: what.into(),
            source: source.into(),
        }
    }
    /// The sandbox is not in a state where `what` can happen.
    pub fn precondition(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        AgentError::Precondition {
            what: what.into(),
            source: source.into(),
        }
    }
    /// Connecting to (or starting) containerd at `path` failed.
    pub fn connect(
        path: impl Into<String>,
        what: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        AgentError::Connect {
            path: path.into(),
            what: what.into(),
            source: source.into(),
        }
    }
    /// A network step (`what`: netns, CNI, iptables, mounts) failed.
    pub fn network(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        AgentError::NetworkFailed {
            what: what.into(),
            source: source.into(),
        }
    }
    /// A step of building or importing an image failed.
    pub fn image(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        AgentError::ImageFailed {
            what: what.into(),
            source: source.into(),
        }
    }
    /// A call to sandbox `id`'s runtime failed.
    pub fn runtime(
        id: impl Into<String>,
        what: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        AgentError::RuntimeFailed {
            id: id.into(),
            what: what.into(),
            source: source.into(),
        }
    }
    /// A step of a checkpoint or restore failed.
    pub fn checkpoint(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        AgentError::CheckpointFailed {
            what: what.into(),
            source: source.into(),
        }
    }
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::InvalidTemplate(_) | AgentError::InvalidInput { .. } => "invalid_template",
            AgentError::UnknownImage(..) => "unknown_image",
            AgentError::NotFound(_) | AgentError::MountNamespace { .. } => "not_found",
            AgentError::FailedPrecondition(_) | AgentError::Precondition { .. } => {
                "failed_precondition"
            }
            AgentError::Exhausted(_) => "exhausted",
            AgentError::Containerd { .. } => "containerd",
            AgentError::Connect { .. } => "connect",
            AgentError::Network(_) | AgentError::NetworkFailed { .. } => "network",
            AgentError::Image(_) | AgentError::ImageFailed { .. } => "image",
            AgentError::Runtime { .. } | AgentError::RuntimeFailed { .. } => "runtime",
            AgentError::Io { .. } => "io",
            AgentError::Unsupported(_) => "unsupported",
            AgentError::CheckpointNotFound(_) => "not_found",
            AgentError::Checkpoint(_) | AgentError::CheckpointFailed { .. } => "checkpoint",
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        use tonic::Code;
        let code = match &e {
            AgentError::InvalidTemplate(_)
            | AgentError::InvalidInput { .. }
            | AgentError::UnknownImage(..) => Code::InvalidArgument,
            AgentError::NotFound(_)
            | AgentError::MountNamespace { .. }
            | AgentError::CheckpointNotFound(_) => Code::NotFound,
            AgentError::FailedPrecondition(_) | AgentError::Precondition { .. } => {
                Code::FailedPrecondition
            }
            AgentError::Exhausted(_) => Code::ResourceExhausted,
            AgentError::Connect { .. } => Code::Unavailable,
            AgentError::Containerd { status, .. } => match status.code() {
                Code::NotFound => Code::NotFound,
                Code::Unavailable => Code::Unavailable,
                _ => Code::Internal,
            },
            AgentError::Runtime { .. } | AgentError::RuntimeFailed { .. } => Code::Unavailable,
            AgentError::Unsupported(_) => Code::Unimplemented,
            AgentError::Network(_)
            | AgentError::NetworkFailed { .. }
            | AgentError::Image(_)
            | AgentError::ImageFailed { .. }
            | AgentError::Io { .. }
            | AgentError::Checkpoint(_)
            | AgentError::CheckpointFailed { .. } => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}
