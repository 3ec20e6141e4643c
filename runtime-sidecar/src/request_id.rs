//! `X-Request-ID` on every response, as the OpenSandbox server does: the
//! caller's value (trimmed) when it sent one, else a fresh id.

use axum::{extract::Request, http::HeaderValue, middleware::Next, response::Response};

pub const HEADER: &str = "x-request-id";

/// Middleware (`axum::middleware::from_fn(request_id::echo)`) around a whole
/// router, so errors from guards and fallbacks carry the id too.
pub async fn echo(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or_else(|| {
            // a simple UUID is 32 hex digits: always a valid header value
            HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string())
                .unwrap_or(HeaderValue::from_static("-"))
        });
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(HEADER, id);
    resp
}
