//! What every public gRPC call goes through: the caller's API key (from
//! `authorization: Bearer` or `x-api-key`, the same keys as REST), its
//! deadline (`grpc-timeout`), and errors as `google.rpc.Status` with an
//! `ErrorInfo` (and a `RetryInfo` where a retry can succeed).

use std::time::Duration;

use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{Gateway, error::ApiError, tenancy};

/// The `ErrorInfo.domain` of sandpool's errors.
pub const DOMAIN: &str = "sandpool.io";

/// How long a client should wait before retrying an exhausted or
/// unavailable call it was not told a wait for.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// A `google.rpc.Status` of `code` with an `ErrorInfo` of `reason`, and a
/// `RetryInfo` of `retry` when given.
pub fn status(code: Code, reason: &str, message: String, retry: Option<Duration>) -> Status {
    let mut d = ErrorDetails::with_error_info(
        reason,
        DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    if let Some(wait) = retry {
        d.set_retry_info(Some(wait));
    }
    Status::with_error_details(code, message, d)
}

/// The gRPC status of an API error: the REST error's code is the reason.
pub fn to_status(e: ApiError) -> Status {
    use ApiError as E;
    let (code, retry) = match &e {
        E::MissingKey | E::InvalidKey => (Code::Unauthenticated, None),
        E::Invalid(_) | E::BodyRead(_) | E::InvalidJson(_) | E::BadTime { .. } => {
            (Code::InvalidArgument, None)
        }
        E::TooLarge(_) => (Code::OutOfRange, None),
        E::PoolNotFound(_) | E::SandboxNotFound(_) | E::SnapshotNotFound(_) | E::NotFound(_) => {
            (Code::NotFound, None)
        }
        E::Forbidden(_) => (Code::PermissionDenied, None),
        E::Conflict(_) => (Code::FailedPrecondition, None),
        E::Exhausted(_) | E::QuotaExceeded(_) => (Code::ResourceExhausted, Some(DEFAULT_RETRY)),
        E::RateLimited(wait) => (Code::ResourceExhausted, Some(*wait)),
        E::Unavailable(_) | E::SchedulerLost(_) => (Code::Unavailable, Some(DEFAULT_RETRY)),
        E::Unsupported(_) | E::NotImplemented(_) => (Code::Unimplemented, None),
        E::BadGateway(_) | E::SandboxUnreachable { .. } => (Code::Unavailable, Some(DEFAULT_RETRY)),
        E::Internal(_) | E::ProxyResponse(_) => (Code::Internal, None),
    };
    if code == Code::Internal || code == Code::Unavailable {
        tracing::warn!(error = %e, "gRPC call failed");
    }
    sandpool_telemetry::metrics::error("gateway", &e.code().to_ascii_lowercase());
    status(code, e.code(), e.to_string(), retry)
}

/// A status the sandbox runtime answered with: its code kept, the reason
/// saying it came from the sandbox.
pub fn from_runtime(s: Status) -> Status {
    let retry =
        matches!(s.code(), Code::Unavailable | Code::ResourceExhausted).then_some(DEFAULT_RETRY);
    let reason = match s.code() {
        Code::NotFound => "FILE_NOT_FOUND",
        Code::Unavailable => "SANDBOX_UNREACHABLE",
        _ => "SANDBOX_ERROR",
    };
    status(s.code(), reason, s.message().to_string(), retry)
}

/// The deadline exceeded.
pub fn deadline_exceeded() -> Status {
    status(
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        "the call's deadline passed".into(),
        None,
    )
}

/// The `grpc-timeout` of a call (`<digits><H|M|S|m|u|n>`), if it has one.
pub fn timeout_of(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    if v.is_empty() || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The API key a call carries: `x-api-key`, else `authorization: Bearer`.
fn key_of(md: &MetadataMap) -> Option<&str> {
    if let Some(k) = md.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let v = md.get("authorization")?.to_str().ok()?.trim();
    match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest.trim()),
        _ => None,
    }
}

/// One call's context: who makes it and until when.
#[derive(Debug, Clone)]
pub struct Call {
    /// `None` when the gateway takes no keys (nothing is filtered then)
    pub principal: Option<tenancy::Principal>,
    pub deadline: Option<tokio::time::Instant>,
}

impl Call {
    /// The caller of a call with metadata `md`; UNAUTHENTICATED without one
    /// of the gateway's keys.
    pub fn of(gw: &Gateway, md: &MetadataMap) -> Result<Call, Status> {
        let principal = if gw.auth_enabled() {
            let key = key_of(md).filter(|k| !k.is_empty());
            let key = key.ok_or_else(|| {
                status(
                    Code::Unauthenticated,
                    "MISSING_API_KEY",
                    "missing API key: send `authorization: Bearer <key>` or `x-api-key`".into(),
                    None,
                )
            })?;
            Some(
                gw.principal(key)
                    .ok_or_else(|| to_status(ApiError::InvalidKey))?,
            )
        } else {
            None
        };
        let deadline = timeout_of(md).map(|t| tokio::time::Instant::now() + t);
        Ok(Call {
            principal,
            deadline,
        })
    }

    /// Run `f` as the caller, within the call's deadline.
    pub async fn run<T>(&self, f: impl Future<Output = Result<T, ApiError>>) -> Result<T, Status> {
        self.scoped(async {
            match self.deadline {
                Some(d) => tokio::time::timeout_at(d, f)
                    .await
                    .map_err(|_| deadline_exceeded())?
                    .map_err(to_status),
                None => f.await.map_err(to_status),
            }
        })
        .await
    }

    /// Run `f` as the caller (no deadline: streams watch theirs themselves).
    pub async fn scoped<T>(&self, f: impl Future<Output = T>) -> T {
        match &self.principal {
            Some(p) => tenancy::scoped(p.clone(), f).await,
            None => f.await,
        }
    }

    /// Resolves when the deadline passes (never without one).
    pub async fn expired(&self) {
        match self.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let md = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().expect("value"));
            m
        };
        assert_eq!(timeout_of(&md("2S")), Some(Duration::from_secs(2)));
        assert_eq!(timeout_of(&md("150m")), Some(Duration::from_millis(150)));
        assert_eq!(timeout_of(&md("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(timeout_of(&md("7u")), Some(Duration::from_micros(7)));
        assert_eq!(timeout_of(&md("5x")), None);
        assert_eq!(timeout_of(&md("1234567890S")), None);
        assert_eq!(timeout_of(&MetadataMap::new()), None);
    }

    #[test]
    fn errors_carry_a_reason_and_retryable_ones_a_retry_delay() {
        let s = to_status(ApiError::SandboxNotFound("x".into()));
        assert_eq!(s.code(), Code::NotFound);
        let d = s.get_error_details();
        assert_eq!(
            d.error_info().map(|i| i.reason.as_str()),
            Some("SANDBOX_NOT_FOUND")
        );
        assert_eq!(d.error_info().map(|i| i.domain.as_str()), Some(DOMAIN));
        assert!(d.retry_info().is_none());
        let s = to_status(ApiError::QuotaExceeded(3));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let d = s.get_error_details();
        assert_eq!(
            d.error_info().map(|i| i.reason.as_str()),
            Some("QUOTA_EXCEEDED")
        );
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(DEFAULT_RETRY)
        );
        let s = to_status(ApiError::RateLimited(Duration::from_secs(7)));
        let d = s.get_error_details();
        assert_eq!(
            d.retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(7))
        );
        let s = to_status(ApiError::Unavailable("scheduler restarting".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.get_error_details().retry_info().is_some());
    }

    #[test]
    fn the_key_comes_from_x_api_key_or_a_bearer_authorization() {
        let mut m = MetadataMap::new();
        assert_eq!(key_of(&m), None);
        m.insert("authorization", "Bearer k1".parse().expect("value"));
        assert_eq!(key_of(&m), Some("k1"));
        m.insert("x-api-key", "k2".parse().expect("value"));
        assert_eq!(key_of(&m), Some("k2"));
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic abc".parse().expect("value"));
        assert_eq!(key_of(&basic), None);
    }
}
