//! The one error type of the runtime, mapped to HTTP (`{code,message}`) and gRPC statuses.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// Everything that can go wrong in the runtime. Each variant maps to one HTTP
/// status and one gRPC code; the `code` strings follow execd's error codes.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    InvalidRequest(String),
    /// A request that could not be read, with the parser's error.
    #[error("{context}: {source}")]
    InvalidInput {
        context: String,
        #[source]
        source: BoxError,
    },
    #[error("{0}")]
    MissingQuery(String),
    #[error("file not found: {0}")]
    FileNotFound(String),
    #[error("command not found: {0}")]
    CommandNotFound(String),
    #[error("session not found: {0}")]
    SessionNotFound(String),
    /// A code context that does not exist (the message names it).
    #[error("{0}")]
    ContextNotFound(String),
    /// A bounded resource is used up (429).
    #[error("{0}")]
    LimitReached(String),
    #[error("{0} is a directory")]
    IsADirectory(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("range not satisfiable: {0}")]
    RangeNotSatisfiable(String),
    #[error("Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN")]
    Unauthorized,
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} is not supported by sandpool-runtime yet")]
    NotImplemented(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// An internal failure with its underlying error.
    #[error("{context}: {source}")]
    Failed {
        context: String,
        #[source]
        source: BoxError,
    },
}

/// The underlying error of [`RuntimeError::InvalidInput`] and [`RuntimeError::Failed`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl RuntimeError {
    /// Wrap an I/O error on `path`, turning well-known kinds into precise variants.
    pub fn io(path: &str, source: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match source.kind() {
            NotFound => RuntimeError::FileNotFound(path.to_string()),
            PermissionDenied => RuntimeError::PermissionDenied(path.to_string()),
            AlreadyExists => RuntimeError::AlreadyExists(path.to_string()),
            IsADirectory => RuntimeError::IsADirectory(path.to_string()),
            NotADirectory => RuntimeError::NotADirectory(path.to_string()),
            DirectoryNotEmpty => RuntimeError::Conflict(format!("directory not empty: {path}")),
            _ => RuntimeError::Io {
                context: path.to_string(),
                source,
            },
        }
    }

    /// A request that could not be read: `context` says what, `source` why.
    pub fn invalid_input(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        RuntimeError::InvalidInput {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An internal failure: `context` says what failed, `source` why.
    pub fn failed(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        RuntimeError::Failed {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::InvalidRequest(_) | RuntimeError::InvalidInput { .. } => {
                "INVALID_REQUEST_BODY"
            }
            RuntimeError::MissingQuery(_) => "MISSING_QUERY",
            RuntimeError::FileNotFound(_) => "FILE_NOT_FOUND",
            RuntimeError::CommandNotFound(_) => "COMMAND_NOT_FOUND",
            RuntimeError::SessionNotFound(_) => "SESSION_NOT_FOUND",
            RuntimeError::ContextNotFound(_) => "CONTEXT_NOT_FOUND",
            RuntimeError::LimitReached(_) => "TOO_MANY_REQUESTS",
            RuntimeError::IsADirectory(_) => "IS_A_DIRECTORY",
            RuntimeError::NotADirectory(_) => "NOT_A_DIRECTORY",
            RuntimeError::AlreadyExists(_) => "ALREADY_EXISTS",
            RuntimeError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            RuntimeError::RangeNotSatisfiable(_) => "RANGE_NOT_SATISFIABLE",
            RuntimeError::Unauthorized => "UNAUTHORIZED",
            RuntimeError::PermissionDenied(_) => "PERMISSION_DENIED",
            RuntimeError::Conflict(_) => "CONFLICT",
            RuntimeError::NotImplemented(_) => "NOT_IMPLEMENTED",
            RuntimeError::Io { .. } | RuntimeError::Internal(_) | RuntimeError::Failed { .. } => {
                "RUNTIME_ERROR"
            }
        }
    }

    /// The HTTP status and the gRPC code of this error, classified once.
    fn statuses(&self) -> (StatusCode, tonic::Code) {
        use tonic::Code;
        match self {
            RuntimeError::InvalidRequest(_)
            | RuntimeError::InvalidInput { .. }
            | RuntimeError::MissingQuery(_)
            | RuntimeError::IsADirectory(_)
            | RuntimeError::NotADirectory(_) => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
            RuntimeError::FileNotFound(_)
            | RuntimeError::CommandNotFound(_)
            | RuntimeError::SessionNotFound(_)
            | RuntimeError::ContextNotFound(_) => (StatusCode::NOT_FOUND, Code::NotFound),
            RuntimeError::LimitReached(_) => {
                (StatusCode::TOO_MANY_REQUESTS, Code::ResourceExhausted)
            }
            RuntimeError::AlreadyExists(_) => (StatusCode::CONFLICT, Code::AlreadyExists),
            RuntimeError::Conflict(_) => (StatusCode::CONFLICT, Code::FailedPrecondition),
            RuntimeError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, Code::ResourceExhausted)
            }
            RuntimeError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, Code::OutOfRange)
            }
            RuntimeError::Unauthorized => (StatusCode::UNAUTHORIZED, Code::Unauthenticated),
            RuntimeError::PermissionDenied(_) => (StatusCode::FORBIDDEN, Code::PermissionDenied),
            RuntimeError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, Code::Unimplemented),
            RuntimeError::Io { .. } | RuntimeError::Internal(_) | RuntimeError::Failed { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal)
            }
        }
    }

    pub fn http_status(&self) -> StatusCode {
        self.statuses().0
    }

    pub fn grpc_code(&self) -> tonic::Code {
        self.statuses().1
    }
}

/// The JSON error body shared by every HTTP error: `{"code": ..., "message": ...}`.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl IntoResponse for RuntimeError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = ErrorBody {
            code: self.code().to_string(),
            message: self.to_string(),
        };
        // execd's own 401 body carries the message under "error"; keep both shapes.
        if matches!(self, RuntimeError::Unauthorized) {
            let v = serde_json::json!({"code": body.code, "message": body.message, "error": body.message});
            return (status, Json(v)).into_response();
        }
        (status, Json(body)).into_response()
    }
}

impl From<RuntimeError> for tonic::Status {
    fn from(e: RuntimeError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_keep_their_source_and_mapping() {
        use std::error::Error;
        let e = RuntimeError::failed("inotify", std::io::Error::other("no watches left"));
        assert_eq!(e.to_string(), "inotify: no watches left");
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("no watches left")
        );
        assert_eq!(
            (e.code(), e.http_status(), e.grpc_code()),
            (
                "RUNTIME_ERROR",
                StatusCode::INTERNAL_SERVER_ERROR,
                tonic::Code::Internal
            )
        );
        let bad = serde_json::from_str::<u32>("x").unwrap_err();
        let e = RuntimeError::invalid_input("invalid JSON body", bad);
        assert!(e.source().is_some());
        assert_eq!(
            (e.code(), e.http_status(), e.grpc_code()),
            (
                "INVALID_REQUEST_BODY",
                StatusCode::BAD_REQUEST,
                tonic::Code::InvalidArgument
            )
        );
    }
}
