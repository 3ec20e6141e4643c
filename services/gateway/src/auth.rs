//! The API key check of both REST APIs: one middleware, told by its state
//! which header carries the key and in which error shape to refuse.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{Gateway, e2b::E2bError, error::ApiError};

/// The API a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// key in `OPEN-SANDBOX-API-KEY`, errors `{"code": "...", "message"}`
    OpenSandbox,
    /// key in `X-API-Key`, errors `{"code": 401, "message", "error_code"}`
    E2b,
}

impl Api {
    fn key_header(self) -> &'static str {
        match self {
            Api::OpenSandbox => "open-sandbox-api-key",
            Api::E2b => "x-api-key",
        }
    }

    fn refuse(self, e: ApiError) -> Response {
        match self {
            Api::OpenSandbox => e.into_response(),
            Api::E2b => E2bError::from(e).into_response(),
        }
    }
}

/// 401 unless the request carries one of the gateway's API keys (when it has any).
pub async fn require_key(
    State((gw, api)): State<(Gateway, Api)>,
    req: Request,
    next: Next,
) -> Response {
    if gw.auth_enabled() {
        match req
            .headers()
            .get(api.key_header())
            .and_then(|v| v.to_str().ok())
        {
            None | Some("") => return api.refuse(ApiError::MissingKey),
            Some(k) if !gw.key_ok(k) => return api.refuse(ApiError::InvalidKey),
            Some(_) => {}
        }
    }
    next.run(req).await
}
