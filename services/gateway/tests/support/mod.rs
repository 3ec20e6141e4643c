//! The gateway's router tests' helpers; the in-memory scheduler behind them
//! is sandpool-testsupport's.

// shared by several test crates: not every one uses every item
#![allow(dead_code, unused_imports)]

pub use sandpool_testsupport::{FakeScheduler, T0_MS, serve};
use serde_json::Value;

/// `(status, headers, body)` of `req` sent to `app` with `key` in the API
/// key header of its API (`/v1/…`: OpenSandbox, else E2B); `body` `Null`
/// sends none; an answer that is not JSON comes back as a "NOT JSON" string.
pub async fn call_full(
    app: &axum::Router,
    req: http::request::Builder,
    key: &str,
    body: &Value,
) -> (u16, http::HeaderMap, Value) {
    let v1 = req.uri_ref().is_some_and(|u| u.path().starts_with("/v1/"));
    let header = if v1 {
        "OPEN-SANDBOX-API-KEY"
    } else {
        "X-API-Key"
    };
    let (status, headers, bytes) =
        sandpool_testsupport::send(app, req.header(header, key), body).await;
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        Value::String(format!("NOT JSON: {:?}", String::from_utf8_lossy(&bytes)))
    });
    (status, headers, v)
}
