//! The node agent's error type, mapped to gRPC statuses.

use std::fmt;

use tonic::Code;

/// The underlying error of a failed step, whatever library it came from.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid template: {0}")]
    InvalidTemplate(String),
    /// A request argument other than a template is malformed (the message says which).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("unknown image {0:?}; known images: {1}")]
    UnknownImage(String, String),
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
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
    /// `what` failed during `step` because of `source`.
    #[error("{step}{what}: {source}")]
    Failed {
        step: Step,
        what: String,
        #[source]
        source: BoxError,
    },
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
    /// The registries config file is unreadable or malformed (`detail`
    /// names the key).
    #[error("registries config {path}: {detail}")]
    RegistryConfig { path: String, detail: String },
    /// Pulling `reference` from its registry failed; `detail` is the
    /// underlying error's text (kept as text: a coalesced pull's result is
    /// shared by every caller).
    #[error("pulling {reference}: {failure}: {detail}")]
    Pull {
        reference: String,
        failure: PullFailure,
        detail: String,
    },
    /// Pushing the committed image `reference` to its registry failed.
    #[error("pushing {reference}: {detail}")]
    Push {
        reference: String,
        failure: PullFailure,
        detail: String,
    },
}

/// Why a pull failed, in the terms a user acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// No such repository, tag or digest.
    NotFound,
    /// Missing or wrong credentials.
    Unauthorized,
    /// No connection to the registry (refused, DNS, timeout).
    Unreachable,
    /// The registry's TLS certificate is not trusted (or not valid).
    Certificate,
    /// The registry answered with something else it should not have.
    Registry,
    /// Storing or unpacking into containerd failed.
    Store,
}

impl fmt::Display for PullFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullFailure::NotFound => "image not found in the registry",
            PullFailure::Unauthorized => {
                "the registry refused the credentials (unauthorized; give credentials: image.auth, --username/--password or a docker config.json)"
            }
            PullFailure::Unreachable => "registry unreachable",
            PullFailure::Certificate => {
                "the registry's TLS certificate is not trusted (give its CA as ca_file for the registry in the registries config)"
            }
            PullFailure::Registry => "registry error",
            PullFailure::Store => "storing the image",
        })
    }
}

/// What the agent was doing when an [`AgentError::Failed`] step failed: it
/// starts the error's text and decides its kind and gRPC code.
#[derive(Debug)]
pub enum Step {
    /// Taking outside input (a host path, ...) that the system refuses.
    Input,
    /// A step the sandbox is not in a state for.
    Precondition,
    /// Connecting to (or starting) containerd at `path`.
    Connect { path: String },
    /// netns, CNI, iptables, mounts.
    Network,
    /// Building or importing an image.
    Image,
    /// A call to sandbox `id`'s runtime.
    Runtime { id: String },
    /// A checkpoint or restore.
    Checkpoint,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Input => f.write_str("invalid template: "),
            Step::Precondition => Ok(()),
            Step::Connect { path } => write!(f, "connecting to containerd at {path}: "),
            Step::Network => f.write_str("network: "),
            Step::Image => f.write_str("image build: "),
            Step::Runtime { id } => write!(f, "runtime of sandbox {id}: "),
            Step::Checkpoint => f.write_str("checkpoint: "),
        }
    }
}

impl Step {
    fn kind(&self) -> &'static str {
        match self {
            Step::Input => "invalid_template",
            Step::Precondition => "failed_precondition",
            Step::Connect { .. } => "connect",
            Step::Network => "network",
            Step::Image => "image",
            Step::Runtime { .. } => "runtime",
            Step::Checkpoint => "checkpoint",
        }
    }

    fn code(&self) -> Code {
        match self {
            Step::Input => Code::InvalidArgument,
            Step::Precondition => Code::FailedPrecondition,
            Step::Connect { .. } | Step::Runtime { .. } => Code::Unavailable,
            Step::Network | Step::Image | Step::Checkpoint => Code::Internal,
        }
    }
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
    /// `what` failed during `step` because of `source`.
    pub fn failed(step: Step, what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        AgentError::Failed {
            step,
            what: what.into(),
            source: source.into(),
        }
    }
    /// Outside input (`what`: a host path, ...) that the system refuses.
    pub fn invalid(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::failed(Step::Input, what, source)
    }
    /// The sandbox is not in a state where `what` can happen.
    pub fn precondition(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::failed(Step::Precondition, what, source)
    }
    /// A network step (`what`: netns, CNI, iptables, mounts) failed.
    pub fn network(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::failed(Step::Network, what, source)
    }
    /// A step of building or importing an image failed.
    pub fn image(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::failed(Step::Image, what, source)
    }
    /// A call to sandbox `id`'s runtime failed.
    pub fn runtime(
        id: impl Into<String>,
        what: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        let id = id.into();
        Self::failed(Step::Runtime { id }, what, source)
    }
    /// A step of a checkpoint or restore failed.
    pub fn checkpoint(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::failed(Step::Checkpoint, what, source)
    }
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::InvalidTemplate(_) => "invalid_template",
            AgentError::InvalidArgument(_) => "invalid_argument",
            AgentError::UnknownImage(..) => "unknown_image",
            AgentError::NotFound(_) | AgentError::MountNamespace { .. } => "not_found",
            AgentError::FailedPrecondition(_) => "failed_precondition",
            AgentError::Exhausted(_) => "exhausted",
            AgentError::Containerd { .. } => "containerd",
            AgentError::Failed { step, .. } => step.kind(),
            AgentError::Network(_) => "network",
            AgentError::Image(_) => "image",
            AgentError::Runtime { .. } => "runtime",
            AgentError::Io { .. } => "io",
            AgentError::Unsupported(_) => "unsupported",
            AgentError::CheckpointNotFound(_) => "not_found",
            AgentError::Checkpoint(_) => "checkpoint",
            AgentError::RegistryConfig { .. } => "registry_config",
            AgentError::Pull { failure, .. } => match failure {
                PullFailure::NotFound => "image_not_found",
                PullFailure::Unauthorized => "registry_unauthorized",
                PullFailure::Unreachable => "registry_unreachable",
                PullFailure::Certificate => "registry_certificate",
                PullFailure::Registry | PullFailure::Store => "pull",
            },
            AgentError::Push { .. } => "push",
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let code = match &e {
            AgentError::InvalidTemplate(_)
            | AgentError::InvalidArgument(_)
            | AgentError::UnknownImage(..) => Code::InvalidArgument,
            AgentError::NotFound(_)
            | AgentError::MountNamespace { .. }
            | AgentError::CheckpointNotFound(_) => Code::NotFound,
            AgentError::FailedPrecondition(_) => Code::FailedPrecondition,
            AgentError::Exhausted(_) => Code::ResourceExhausted,
            AgentError::Containerd { status, .. } => match status.code() {
                Code::NotFound => Code::NotFound,
                Code::Unavailable => Code::Unavailable,
                _ => Code::Internal,
            },
            AgentError::Failed { step, .. } => step.code(),
            AgentError::Runtime { .. } => Code::Unavailable,
            AgentError::Unsupported(_) => Code::Unimplemented,
            AgentError::Pull { failure, .. } | AgentError::Push { failure, .. } => match failure {
                PullFailure::NotFound => Code::NotFound,
                PullFailure::Unauthorized => Code::PermissionDenied,
                PullFailure::Unreachable | PullFailure::Certificate => Code::Unavailable,
                PullFailure::Registry | PullFailure::Store => Code::Internal,
            },
            AgentError::Network(_)
            | AgentError::Image(_)
            | AgentError::Io { .. }
            | AgentError::Checkpoint(_)
            | AgentError::RegistryConfig { .. } => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_steps_keep_their_texts_kinds_and_codes() {
        let made = [
            AgentError::invalid("host path", "no such dir"),
            AgentError::precondition("mount", "not running"),
            AgentError::failed(
                Step::Connect {
                    path: "/run/c.sock".into(),
                },
                "dial",
                "refused",
            ),
            AgentError::network("veth", "exists"),
            AgentError::image("layer", "short read"),
            AgentError::runtime("sb-1", "ping", "timed out"),
            AgentError::checkpoint("dump", "criu"),
        ];
        let want = [
            (
                "invalid template: host path: no such dir",
                "invalid_template",
                Code::InvalidArgument,
            ),
            (
                "mount: not running",
                "failed_precondition",
                Code::FailedPrecondition,
            ),
            (
                "connecting to containerd at /run/c.sock: dial: refused",
                "connect",
                Code::Unavailable,
            ),
            ("network: veth: exists", "network", Code::Internal),
            ("image build: layer: short read", "image", Code::Internal),
            (
                "runtime of sandbox sb-1: ping: timed out",
                "runtime",
                Code::Unavailable,
            ),
            ("checkpoint: dump: criu", "checkpoint", Code::Internal),
        ];
        for (e, (text, kind, code)) in made.into_iter().zip(want) {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.kind(), kind, "{text}");
            assert!(std::error::Error::source(&e).is_some(), "{text}");
            let status = tonic::Status::from(e);
            assert_eq!((status.code(), status.message()), (code, text));
        }
    }
}
