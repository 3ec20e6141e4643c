//! Sandbox traffic proxy: `/v1/sandboxes/{id}/proxy/{port}/{path}` forwards to
//! the sandbox's `IP:port`, streaming both ways, adding the runtime access
//! token for the runtime port (the caller authenticated with its API key).

use axum::{
    body::Body,
    extract::{Path, Request, State},
    response::Response,
};
use futures_util::TryStreamExt;
use sandpool_proto::v1 as pb;

use crate::{Gateway, error::ApiError, opensandbox::RUNTIME_PORT};

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// How the proxied request authenticates to the sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The caller proved its API key; add the runtime token for the runtime port.
    RuntimeToken,
    /// Pass the caller's headers as they are (E2B: the SDK sends envd's token).
    Passthrough,
}

pub async fn proxy_root(
    State(gw): State<Gateway>,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(gw, id, port, String::new(), req, Auth::RuntimeToken).await
}

pub async fn proxy_path(
    State(gw): State<Gateway>,
    Path((id, port, path)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(gw, id, port, path, req, Auth::RuntimeToken).await
}

/// Forward `req` to `path` on the sandbox's `port`, streaming both ways.
pub async fn forward(
    gw: Gateway,
    id: String,
    port: String,
    path: String,
    req: Request,
    auth: Auth,
) -> Result<Response, ApiError> {
    let port: u32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| ApiError::Invalid(format!("bad port {port}")))?;
    let claim = gw.get_claim(&id).await?;
    if claim.state == pb::ClaimState::Paused as i32 {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} is paused; resume it first"
        )));
    }
    let sb = claim
        .sandbox
        .ok_or_else(|| ApiError::Internal("claim without sandbox".into()))?;
    let mut url = format!(
        "http://{}:{}/{path}",
        sb.ip,
        crate::opensandbox::sandbox_port(&sb, port)?
    );
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    let (parts, body) = req.into_parts();
    let mut out = gw.http.request(parts.method.clone(), &url);
    for (k, v) in parts.headers.iter() {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || name == "open-sandbox-api-key" {
            continue;
        }
        out = out.header(k, v);
    }
    if auth == Auth::RuntimeToken && port == RUNTIME_PORT {
        out = out.header("x-execd-access-token", sb.access_token.as_str());
    }
    let mut h = http::HeaderMap::new();
    sandpool_telemetry::inject_current(&mut h);
    for (k, v) in h.iter() {
        out = out.header(k, v);
    }
    // exec latency as the gateway sees it: request sent to response head
    // (commands stream their output after that)
    let exec_api = match path.as_str() {
        "command" => Some("execd"),
        "process.Process/Start" => Some("envd"),
        "execute" => Some("interpreter"),
        _ => None,
    };
    let t0 = std::time::Instant::now();
    let resp = out
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await
        .map_err(|source| ApiError::SandboxUnreachable {
            what: format!("sandbox {id} port {port} unreachable"),
            source,
        })?;
    if let Some(api) = exec_api {
        sandpool_telemetry::metrics::observe_exec(api, t0.elapsed());
    }
    let mut r = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers().iter() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            r = r.header(k, v);
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    r.body(Body::from_stream(stream))
        .map_err(ApiError::ProxyResponse)
}
