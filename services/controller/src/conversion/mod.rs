//! The CRD conversion webhook of the agent-sandbox kinds: `POST /convert`
//! answers the apiserver's `ConversionReview`s over HTTPS, converting
//! v1alpha1 ⇄ v1beta1 with [`convert::convert_object`]. Any failure is a
//! `Failed` response with its message, never a panic or a non-JSON answer.

pub mod convert;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::body::Bytes;
use axum::routing::{get, post};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, WebhookClientConfig, WebhookConversion,
};
use kube::core::Status;
use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};

use crate::error::{Error, Result};

/// Where the webhook listens and its serving certificate (PEM files).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `crd` converting through the webhook at `client_config` (strategy
/// Webhook, `ConversionReview` v1), as the chart renders it when the webhook
/// is enabled.
pub fn with_webhook(
    mut crd: CustomResourceDefinition,
    client_config: WebhookClientConfig,
) -> CustomResourceDefinition {
    crd.spec.conversion = Some(CustomResourceConversion {
        strategy: "Webhook".into(),
        webhook: Some(WebhookConversion {
            client_config: Some(client_config),
            conversion_review_versions: vec!["v1".into()],
        }),
    });
    crd
}

/// Answers one review: every object converted, in order, or `Failed`.
pub fn review(review: ConversionReview) -> ConversionReview {
    let request = match ConversionRequest::from_review(review) {
        Ok(r) => r,
        Err(e) => {
            return ConversionResponse::invalid(Status::failure(&e.to_string(), "BadRequest"))
                .into_review();
        }
    };
    let desired = request.desired_api_version.clone();
    let objects = request.objects.clone();
    let response = ConversionResponse::for_request(request);
    let converted: Result<Vec<_>> = objects
        .into_iter()
        .map(|o| convert::convert_object(o, &desired))
        .collect();
    match converted {
        Ok(objects) => response.success(objects),
        Err(e) => {
            tracing::warn!(error = %e, desired = %desired, "conversion failed");
            response.failure(Status::failure(&e.to_string(), "ConversionFailed"))
        }
    }
    .into_review()
}

/// `POST /convert`: a body that is no `ConversionReview` gets a `Failed` one.
async fn convert_handler(body: Bytes) -> Json<ConversionReview> {
    match serde_json::from_slice::<ConversionReview>(&body) {
        Ok(r) => Json(review(r)),
        Err(e) => Json(
            ConversionResponse::invalid(Status::failure(
                &format!("not a ConversionReview: {e}"),
                "BadRequest",
            ))
            .into_review(),
        ),
    }
}

/// The webhook's routes (`/convert`, and `/healthz` for probes).
pub fn router() -> axum::Router {
    axum::Router::new()
        .route("/convert", post(convert_handler))
        .route("/healthz", get(|| async { "ok" }))
}

/// Binds `cfg.listen` and serves until the task is dropped. Returns the bound
/// address (port 0 picks one) and the server future.
pub async fn bind(
    cfg: &WebhookConfig,
) -> Result<(
    SocketAddr,
    impl Future<Output = Result<()>> + Send + 'static,
)> {
    let tls = tls::server_config(&cfg.cert, &cfg.key)?;
    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::webhook(format!("binding {}", cfg.listen), e))?;
    let addr = tcp
        .local_addr()
        .map_err(|e| Error::webhook("reading the bound address", e))?;
    let listener = tls::TlsListener::new(tcp, tls);
    let serve = async move {
        axum::serve(listener, router())
            .await
            .map_err(|e| Error::webhook("serving", e))
    };
    Ok((addr, serve))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review_of(objects: serde_json::Value) -> ConversionReview {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
            "request": {"uid": "u-1", "desiredAPIVersion": "agents.x-k8s.io/v1beta1",
                        "objects": objects}
        }))
        .unwrap()
    }

    #[test]
    fn review_converts_every_object_in_order() {
        let out = review(review_of(json!([
            {"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Sandbox",
             "metadata": {"name": "a"}, "spec": {"replicas": 0}},
            {"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Sandbox",
             "metadata": {"name": "b"}, "spec": {"replicas": 1}},
        ])));
        let resp = out.response.unwrap();
        assert_eq!(resp.uid, "u-1");
        assert_eq!(
            resp.result.status,
            Some(kube::core::response::StatusSummary::Success)
        );
        let modes: Vec<_> = resp
            .converted_objects
            .iter()
            .map(|o| {
                (
                    o["metadata"]["name"].clone(),
                    o["spec"]["operatingMode"].clone(),
                )
            })
            .collect();
        assert_eq!(
            modes,
            [
                (json!("a"), json!("Suspended")),
                (json!("b"), json!("Running"))
            ]
        );
    }

    #[test]
    fn review_with_a_bad_object_fails_with_its_message() {
        let out = review(review_of(json!([
            {"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Sandbox", "metadata": {"name": "a"}},
            {"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Pod", "metadata": {"name": "b"}},
        ])));
        let resp = out.response.unwrap();
        assert_eq!(resp.uid, "u-1");
        assert_eq!(
            resp.result.status,
            Some(kube::core::response::StatusSummary::Failure)
        );
        assert!(
            resp.result.message.contains("unknown kind \"Pod\""),
            "{}",
            resp.result.message
        );
        assert!(resp.converted_objects.is_empty());
    }

    #[test]
    fn review_without_a_request_fails() {
        let out = review(
            serde_json::from_value(
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview"}),
            )
            .unwrap(),
        );
        let resp = out.response.unwrap();
        assert_eq!(
            resp.result.status,
            Some(kube::core::response::StatusSummary::Failure)
        );
        assert!(resp.result.message.contains("request missing"));
    }
}
