//! The gateway's router tests' helpers; the in-memory scheduler behind them
//! is sandpool-testsupport's.

// shared by several test crates: not every one uses every item
#![allow(dead_code, unused_imports)]

pub use sandpool_testsupport::{FakeScheduler, T0_MS, serve};
use serde_json::Value;
use tower::ServiceExt;

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
    let req = req
        .header(header, key)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        }))
        .expect("request");
    let r = app.clone().oneshot(req).await.expect("response");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        Value::String(format!("NOT JSON: {:?}", String::from_utf8_lossy(&bytes)))
    });
    (status, headers, v)
}
