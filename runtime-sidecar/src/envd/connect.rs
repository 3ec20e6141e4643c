//! Connect RPC framing with the JSON codec: envelopes
//! (`[flags u8][len u32 BE][json]`), Connect error codes and their HTTP
//! statuses, and streaming responses.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::RuntimeError;

pub(super) const END_STREAM: u8 = 0x02;

/// Connect error codes.
#[derive(Debug)]
pub struct ConnectError {
    code: &'static str,
    message: String,
}

impl ConnectError {
    pub(super) fn new(code: &'static str, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
        }
    }
    /// The Connect code (`permission_denied`, ...).
    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    pub(super) fn message(&self) -> &str {
        &self.message
    }

    fn status(&self) -> StatusCode {
        match self.code {
            "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "permission_denied" => StatusCode::FORBIDDEN,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    pub(super) fn json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }

    /// The end-of-stream envelope carrying this error.
    pub(super) fn end_stream(&self) -> Bytes {
        envelope(END_STREAM, &json!({"error": self.json()}))
    }

    /// A streaming answer that is only this error: streaming calls report
    /// errors in the end-of-stream envelope.
    pub(super) fn into_stream(self) -> Response {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(self.end_stream());
        stream_response(rx)
    }
}

impl From<RuntimeError> for ConnectError {
    /// Connect's error codes are gRPC's, in snake case.
    fn from(e: RuntimeError) -> Self {
        use tonic::Code;
        let code = match e.grpc_code() {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::FailedPrecondition => "failed_precondition",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::Unimplemented => "unimplemented",
            Code::OutOfRange => "out_of_range",
            _ => "internal",
        };
        ConnectError::new(code, e.to_string())
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.json())).into_response()
    }
}

pub(super) type CResult<T> = Result<T, ConnectError>;

/// A streaming call's answer: its stream, or an error, which streaming calls
/// report in the end-of-stream envelope.
pub(super) type Streamed = Result<Response, StreamError>;

/// The error of a [`Streamed`] answer.
#[derive(Debug)]
pub(super) struct StreamError(ConnectError);

impl From<ConnectError> for StreamError {
    fn from(e: ConnectError) -> Self {
        StreamError(e)
    }
}

impl From<RuntimeError> for StreamError {
    fn from(e: RuntimeError) -> Self {
        StreamError(e.into())
    }
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        self.0.into_stream()
    }
}

/// One Connect envelope.
pub fn envelope<T: Serialize + ?Sized>(flags: u8, msg: &T) -> Bytes {
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(flags);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

/// Parse the first envelope of a streaming request (bounded).
pub fn parse_envelope(buf: &[u8], max: usize) -> CResult<Value> {
    parse_message(buf, max)
}

/// Parse the first envelope of a streaming request (bounded) as `T`.
pub(super) fn parse_message<T: DeserializeOwned>(buf: &[u8], max: usize) -> CResult<T> {
    serde_json::from_slice(frame(buf, max)?)
        .map_err(|e| ConnectError::new("invalid_argument", format!("bad JSON in envelope: {e}")))
}

/// The payload of the first envelope in `buf`, checked for compression,
/// size and truncation.
fn frame(buf: &[u8], max: usize) -> CResult<&[u8]> {
    if buf.len() < 5 {
        return Err(ConnectError::new(
            "invalid_argument",
            "streaming request: missing envelope",
        ));
    }
    let flags = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if flags & 0x01 != 0 {
        return Err(ConnectError::new(
            "unimplemented",
            "compressed envelopes are not supported",
        ));
    }
    if len > max {
        return Err(ConnectError::new(
            "resource_exhausted",
            format!("envelope of {len} bytes exceeds {max}"),
        ));
    }
    if buf.len() < 5 + len {
        return Err(ConnectError::new(
            "invalid_argument",
            format!("truncated envelope: {} of {len} bytes", buf.len() - 5),
        ));
    }
    Ok(&buf[5..5 + len])
}

pub(super) fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    crate::channel_response(rx, "application/connect+json")
}

/// Keepalive interval requested by the client (`Keepalive-Ping-Interval`, seconds).
pub(super) fn keepalive(headers: &HeaderMap) -> Duration {
    let s = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    Duration::from_secs(s.clamp(1, 3600))
}

/// The time a Connect client gives a call (`Connect-Timeout-Ms`; 0 is none).
pub(super) fn request_timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_millis)
}

/// When a call's client deadline passes (none without `Connect-Timeout-Ms`).
pub(super) fn deadline(headers: &HeaderMap) -> Option<tokio::time::Instant> {
    request_timeout(headers).map(|t| tokio::time::Instant::now() + t)
}

/// The end of a stream whose client deadline passed, as E2B's envd (Go's
/// context error) ends it; the SDK raises its `TimeoutException` for it.
pub(super) fn deadline_exceeded() -> Bytes {
    ConnectError::new("deadline_exceeded", "context deadline exceeded").end_stream()
}

/// Wait until `deadline`, forever without one.
pub(super) async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_reject_bad_frames() {
        let e = envelope(0, &json!({"a": 1}));
        assert_eq!(&e[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(parse_envelope(&e, 1024).unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_envelope(&e[..3], 1024).unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(
            parse_envelope(&e[..8], 1024).unwrap_err().code,
            "invalid_argument",
            "truncated"
        );
        assert_eq!(
            parse_envelope(&e, 3).unwrap_err().code,
            "resource_exhausted",
            "oversize frame"
        );
        let mut z = e.to_vec();
        z[0] = 1;
        assert_eq!(parse_envelope(&z, 1024).unwrap_err().code, "unimplemented");
        let mut bad = envelope(0, &json!({})).to_vec();
        bad[5] = b'x';
        assert_eq!(
            parse_envelope(&bad, 1024).unwrap_err().code,
            "invalid_argument"
        );
    }
}
