//! E2B sandbox traffic routing: `E2b-Sandbox-Id`/`E2b-Sandbox-Port`
//! headers or a `{port}-{sandboxID}.{domain}` host.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    http::{Method, StatusCode, Uri},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD as B64};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

/// What a signed envd `/files` URL signs (E2B's v1 scheme: base64 of
/// sha256 over `path:operation:username:token[:expiration]`, unpadded).
fn files_signature(q: &HashMap<String, String>, operation: &str, token: &str) -> String {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let mut raw = format!("{}:{operation}:{}:{token}", get("path"), get("username"));
    if let Some(e) = q.get("signature_expiration") {
        raw.push(':');
        raw.push_str(e);
    }
    format!("v1_{}", B64.encode(Sha256::digest(raw.as_bytes())))
}

/// The sandbox a signed `/files` URL belongs to when nothing else routes it:
/// under a single-host `E2B_SANDBOX_URL` the SDKs' `download_url`/`upload_url`
/// carry neither a sandbox host nor `E2b-Sandbox-*` headers (a browser or
/// curl opens them), but only the sandbox whose envd token signed the URL
/// produces its signature. Its envd then checks it (expiry included).
async fn signed_files_target(gw: &Gateway, method: Method, uri: Uri) -> Option<String> {
    if uri.path() != "/files" {
        return None;
    }
    let q: HashMap<String, String> = form_urlencoded::parse(uri.query()?.as_bytes())
        .into_owned()
        .collect();
    let given = q.get("signature")?;
    let operation = if method == Method::GET {
        "read"
    } else {
        "write"
    };
    let claims = gw.claims_with_metadata(BTreeMap::new()).await.ok()?;
    claims.into_iter().find_map(|c| {
        let token = c.sandbox.as_ref().map(|s| s.access_token.as_str())?;
        let expected = files_signature(&q, operation, token);
        (!token.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes())))
            .then_some(c.claim_id)
    })
}

/// Route E2B sandbox traffic (by headers, then by host, then a signed
/// `/files` URL by its signature) to the sandbox.
pub async fn route_by_e2b_headers(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let by_header = match (
        h.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()),
        h.get("e2b-sandbox-port").and_then(|v| v.to_str().ok()),
    ) {
        (Some(id), Some(port)) => port.parse::<u32>().ok().map(|p| (p, id.to_string())),
        _ => None,
    };
    let mut target = by_header.or_else(|| {
        h.get("host")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_sandbox_host)
    });
    if target.is_none()
        && let Some(id) = signed_files_target(&gw, req.method().clone(), req.uri().clone()).await
    {
        target = Some((super::ENVD_PORT.into(), id));
    }
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
    fn files_signatures_follow_e2bs_v1_scheme() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // vectors computed outside sandpool (Python hashlib + base64)
        let plain = q(&[("path", "a.txt"), ("username", "user")]);
        assert_eq!(
            files_signature(&plain, "read", "tok"),
            "v1_wPjHOh/p+K3FbqiyGd5vwPNc/g4IPd8sigMxb1gqu9I"
        );
        let timed = q(&[("path", "/x"), ("signature_expiration", "1700000000")]);
        assert_eq!(
            files_signature(&timed, "write", "tok"),
            "v1_Xp/Z8cjI4eSGKtHCojnl+SgFPYNe6ELfHVmbjliNtOw"
        );
    }

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
