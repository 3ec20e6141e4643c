//! E2B sandbox traffic routing: `E2b-Sandbox-Id`/`E2b-Sandbox-Port`
//! headers or a `{port}-{sandboxID}.{domain}` host.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use axum::{Json, http::StatusCode};
use serde_json::json;

use super::E2bError;
use crate::{Gateway, error::ApiError};

/// What E2B's proxy answers for a sandbox that is not running (unknown,
/// killed, timed out or paused): 502 with "was not found" in the message,
/// which the SDKs read as "the sandbox is not running" (`is_running()` is
/// false, a call raises `SandboxNotRunningException`).
fn sandbox_not_found(id: &str) -> Response {
    let body = json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502});
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

/// `{port}-{sandboxID}.{domain}` → (port, sandbox id).
pub fn parse_sandbox_host(host: &str) -> Option<(u32, String)> {
    let first = host.split('.').next()?;
    let (port, id) = first.split_once('-')?;
    let port: u32 = port.parse().ok().filter(|p| (1..=65535).contains(p))?;
    if id.is_empty()
        || !host.contains('.')
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return None;
    }
    Some((port, id.to_string()))
}

/// Route E2B sandbox traffic (by headers, then by host) to the sandbox.
pub async fn route_by_e2b_headers(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let by_header = match (
        h.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()),
        h.get("e2b-sandbox-port").and_then(|v| v.to_str().ok()),
    ) {
        (Some(id), Some(port)) => port.parse::<u32>().ok().map(|p| (p, id.to_string())),
        _ => None,
    };
    let target = by_header.or_else(|| {
        h.get("host")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_sandbox_host)
    });
    match target {
        Some((port, id)) => {
            let path = req.uri().path().trim_start_matches('/').to_string();
            match crate::proxy::forward(
                gw,
                id,
                port.to_string(),
                path,
                req,
                crate::proxy::Auth::Passthrough,
            )
            .await
            {
                Ok(r) => r,
                Err(ApiError::SandboxNotFound(id)) => sandbox_not_found(&id),
                Err(e) => E2bError(e).into_response(),
            }
        }
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_hosts() {
        assert_eq!(
            parse_sandbox_host("49983-abc-123.sandpool.local"),
            Some((49983, "abc-123".into()))
        );
        assert_eq!(
            parse_sandbox_host("49983-abc.localhost:8080"),
            Some((49983, "abc".into()))
        );
        assert_eq!(parse_sandbox_host("127.0.0.1:8080"), None);
        assert_eq!(parse_sandbox_host("api.sandpool.local"), None);
        assert_eq!(parse_sandbox_host("99999-abc.x"), None);
        assert_eq!(parse_sandbox_host("49983-abc"), None);
    }
}
