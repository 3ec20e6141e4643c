//! The one error type of the controllers and the CRD-backed scheduler.

use kube::runtime::finalizer;

/// Errors of the Kubernetes controllers and the CRD-backed scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("invalid {kind} {name}: {reason}")]
    Invalid {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("{kind} {name} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("runtime of pod {pod}: {reason}")]
    Runtime { pod: String, reason: String },
    /// Connecting to the pod's runtime (gRPC) failed.
    #[error("runtime of pod {pod}: connecting: {source}")]
    RuntimeConnect {
        pod: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A call (`call`: which) of the pod's runtime failed.
    #[error("runtime of pod {pod}: {call}: {}", source.message())]
    RuntimeCall {
        pod: String,
        call: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// An object could not be converted between API versions (why).
    #[error("conversion: {0}")]
    Conversion(String),
    /// The conversion webhook's server (`what` failed).
    #[error("conversion webhook: {what}: {source}")]
    Webhook {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(kind: &'static str, name: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            kind,
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// The webhook server's `what` failed with `source`.
    pub fn webhook(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Webhook {
            what: what.into(),
            source,
        }
    }

    /// A short label for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Invalid { .. } => "invalid",
            Error::NotFound { .. } => "not_found",
            Error::Runtime { .. } | Error::RuntimeConnect { .. } | Error::RuntimeCall { .. } => {
                "runtime"
            }
            Error::Json(_) => "json",
            Error::Conversion(_) => "conversion",
            Error::Webhook { .. } => "webhook",
        }
    }
}

/// True when a kube call failed with 409 Conflict (optimistic concurrency lost).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

/// True when a kube call failed with 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// True when a create failed with 409 AlreadyExists.
pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_already_exists() || s.code == 409)
}
