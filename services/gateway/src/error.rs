//! Gateway errors: HTTP status + `{"code","message"}`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing API key header OPEN-SANDBOX-API-KEY")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("{0}")]
    Invalid(String),
    #[error("reading body: {0}")]
    BodyRead(#[source] axum::BoxError),
    #[error("invalid JSON body: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("{field} must be RFC 3339: {source}")]
    BadTime {
        field: &'static str,
        #[source]
        source: chrono::ParseError,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("pool {0} not found")]
    PoolNotFound(String),
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// Something else that does not exist (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The request lacks a credential the sandbox asks for (its traffic token).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0} is not supported by sandpool")]
    Unsupported(String),
    /// The scheduler's UNIMPLEMENTED: its message is a whole sentence.
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    BadGateway(String),
    /// A call to a sandbox (`what`: which sandbox and port) failed.
    #[error("{what}: {source}")]
    SandboxUnreachable {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("scheduler connection lost: {}", .0.message())]
    SchedulerLost(#[source] tonic::Status),
    /// Building the proxied response from the sandbox's failed.
    #[error("{0}")]
    ProxyResponse(#[source] http::Error),
    #[error("{0}")]
    Internal(String),
    #[error("too many requests; retry in {0:?}")]
    RateLimited(std::time::Duration),
    /// The caller's key holds its quota of live sandboxes.
    #[error(
        "quota max-sandboxes-per-key reached: this API key holds {0} live sandboxes; delete one first"
    )]
    QuotaExceeded(u32),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey => "MISSING_API_KEY",
            ApiError::InvalidKey => "INVALID_API_KEY",
            ApiError::Invalid(_)
            | ApiError::BodyRead(_)
            | ApiError::InvalidJson(_)
            | ApiError::BadTime { .. } => "INVALID_REQUEST",
            ApiError::TooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::PoolNotFound(_) => "POOL_NOT_FOUND",
            ApiError::SandboxNotFound(_) => "SANDBOX_NOT_FOUND",
            ApiError::SnapshotNotFound(_) => "SNAPSHOT_NOT_FOUND",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::Exhausted(_) => "POOL_CAPACITY_EXHAUSTED",
            ApiError::Unavailable(_) | ApiError::SchedulerLost(_) => "UNAVAILABLE",
            ApiError::Unsupported(_) | ApiError::NotImplemented(_) => "NOT_IMPLEMENTED",
            ApiError::BadGateway(_) | ApiError::SandboxUnreachable { .. } => "SANDBOX_UNREACHABLE",
            ApiError::Internal(_) | ApiError::ProxyResponse(_) => "INTERNAL",
            ApiError::RateLimited(_) => "RATE_LIMITED",
            ApiError::QuotaExceeded(_) => "QUOTA_EXCEEDED",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
            ApiError::Invalid(_)
            | ApiError::BodyRead(_)
            | ApiError::InvalidJson(_)
            | ApiError::BadTime { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PoolNotFound(_)
            | ApiError::SandboxNotFound(_)
            | ApiError::SnapshotNotFound(_)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Exhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::SchedulerLost(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unsupported(_) | ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::BadGateway(_) | ApiError::SandboxUnreachable { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::Internal(_) | ApiError::ProxyResponse(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RateLimited(_) | ApiError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// What a NOT_FOUND of a call about sandbox `id` means.
    pub fn sandbox_not_found(id: &str) -> impl FnOnce(String) -> ApiError + '_ {
        move |_| ApiError::SandboxNotFound(id.to_string())
    }

    /// What a failed HTTP call to a sandbox means; `what` names the sandbox (and port).
    pub fn sandbox_unreachable(what: String) -> impl FnOnce(reqwest::Error) -> ApiError {
        move |source| ApiError::SandboxUnreachable { what, source }
    }

    /// Map a scheduler gRPC status; `not_found` decides what a NOT_FOUND means here.
    pub fn from_status(s: tonic::Status, not_found: impl FnOnce(String) -> ApiError) -> ApiError {
        use tonic::Code;
        let m = s.message().to_string();
        // A status the scheduler sent carries no source; one with a source was
        // made locally from a broken connection (scheduler restarting): retryable.
        if std::error::Error::source(&s).is_some()
            && matches!(s.code(), Code::Unknown | Code::Internal | Code::Cancelled)
        {
            return ApiError::SchedulerLost(s);
        }
        match s.code() {
            Code::NotFound => not_found(m),
            Code::InvalidArgument => ApiError::Invalid(m),
            Code::ResourceExhausted => ApiError::Exhausted(m),
            Code::FailedPrecondition | Code::AlreadyExists => ApiError::Conflict(m),
            Code::Unavailable => ApiError::Unavailable(m),
            Code::Unimplemented => ApiError::NotImplemented(m),
            _ => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        sandpool_telemetry::metrics::error("gateway", &self.code().to_ascii_lowercase());
        let mut r = (
            self.status(),
            Json(serde_json::json!({"code": self.code(), "message": self.to_string()})),
        )
            .into_response();
        match &self {
            ApiError::Exhausted(_) => {
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    r.headers_mut().insert("retry-after", v);
                }
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedulers_unimplemented_message_is_passed_on_as_written() {
        let said = "pause is not supported in Kubernetes mode yet";
        let e = ApiError::from_status(tonic::Status::unimplemented(said), ApiError::Invalid);
        assert_eq!(e.to_string(), said);
        assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(e.code(), "NOT_IMPLEMENTED");
        // the gateway's own refusals name the feature and say it is not supported
        let own = ApiError::Unsupported("the create field platform".into());
        assert_eq!(
            own.to_string(),
            "the create field platform is not supported by sandpool"
        );
    }
}
