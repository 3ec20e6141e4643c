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

/// 401 unless the request carries one of the gateway's API keys (when it has
/// any); the request then runs as that key's [`crate::tenancy::Principal`].
pub async fn require_key(
    State((gw, api)): State<(Gateway, Api)>,
    req: Request,
    next: Next,
) -> Response {
    if !gw.auth_enabled() {
        return next.run(req).await;
    }
    let principal = match req
        .headers()
        .get(api.key_header())
        .and_then(|v| v.to_str().ok())
    {
        None | Some("") => return api.refuse(ApiError::MissingKey),
        Some(k) => match gw.principal(k) {
            Some(p) => p,
            None => return api.refuse(ApiError::InvalidKey),
        },
    };
    crate::tenancy::scoped(principal, next.run(req)).await
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::Gateway;

    async fn call(app: &axum::Router, path: &str, header: Option<(&str, &str)>) -> (u16, Value) {
        let mut req = http::Request::get(path);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let req = req.body(axum::body::Body::empty()).expect("request");
        let r = app.clone().oneshot(req).await.expect("response");
        let status = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn each_api_refuses_a_missing_or_wrong_key_in_its_own_shape() {
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let gw = Gateway::new(
            sandpool_proto::v1::scheduler_client::SchedulerClient::with_interceptor(
                ch,
                Default::default(),
            ),
            &["k1".to_string()],
        );
        let app = crate::app(gw);
        assert_eq!(
            call(&app, "/v1/pools", None).await,
            (
                401,
                json!({"code": "MISSING_API_KEY", "message": "missing API key header OPEN-SANDBOX-API-KEY"})
            )
        );
        assert_eq!(
            call(&app, "/v1/pools", Some(("OPEN-SANDBOX-API-KEY", "k2"))).await,
            (
                401,
                json!({"code": "INVALID_API_KEY", "message": "invalid API key"})
            )
        );
        assert_eq!(
            call(&app, "/sandboxes", Some(("X-API-Key", "k2"))).await,
            (
                401,
                json!({"code": 401, "message": "invalid API key", "error_code": "INVALID_API_KEY"})
            )
        );
        // the OpenSandbox header does not open the E2B API
        assert_eq!(
            call(&app, "/sandboxes", Some(("OPEN-SANDBOX-API-KEY", "k1")))
                .await
                .0,
            401
        );
    }
}
