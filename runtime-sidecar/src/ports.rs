//! The runtime's other ports, reached through its own port.
//!
//! A network-less (checkpointable runsc) sandbox is reached only through
//! the node agent's tunnel to port 44772. A request there that names
//! another port the runtime serves in [`PORT_HEADER`] (envd's 49983, the
//! code interpreter's 49999) is answered by that port's service, the very
//! one its own listener serves, so the tunnel carries every runtime port.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::Request,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tower::ServiceExt;

/// The header naming the in-sandbox port a request through port 44772 is for.
pub const PORT_HEADER: &str = "x-sandpool-port";

/// `main` (port 44772's service), answering a request that names one of
/// `others`' ports in [`PORT_HEADER`] with that port's service instead.
pub fn with_other_ports(main: Router, others: Vec<(u16, Router)>) -> Router {
    if others.is_empty() {
        return main;
    }
    let others: Arc<HashMap<u16, Router>> = Arc::new(others.into_iter().collect());
    Router::new().fallback(move |req: Request| {
        let (main, others) = (main.clone(), others.clone());
        async move { dispatch(main, &others, req).await }
    })
}

async fn dispatch(main: Router, others: &HashMap<u16, Router>, req: Request) -> Response {
    let Some(named) = req.headers().get(PORT_HEADER) else {
        return main.oneshot(req).await.into_response();
    };
    let port = named
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok());
    let target = match port {
        Some(crate::DEFAULT_PORT) => Some(main),
        Some(p) => others.get(&p).cloned(),
        None => None,
    };
    match target {
        Some(svc) => svc.oneshot(req).await.into_response(),
        None => (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({
                "code": "PORT_NOT_SERVED",
                "message": format!(
                    "port {} is not served by this sandbox's runtime",
                    String::from_utf8_lossy(named.as_bytes())
                ),
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, routing::get};

    use super::*;

    fn answering(what: &'static str) -> Router {
        Router::new().route("/who", get(move || async move { what }))
    }

    async fn ask(app: &Router, port: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::builder().uri("/who");
        if let Some(p) = port {
            req = req.header(PORT_HEADER, p);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_named_port_is_answered_by_its_own_service() {
        let app = with_other_ports(
            answering("runtime"),
            vec![(49983, answering("envd")), (49999, answering("interp"))],
        );
        assert_eq!(ask(&app, None).await, (StatusCode::OK, "runtime".into()));
        assert_eq!(
            ask(&app, Some("49983")).await,
            (StatusCode::OK, "envd".into())
        );
        assert_eq!(
            ask(&app, Some("49999")).await,
            (StatusCode::OK, "interp".into())
        );
        assert_eq!(
            ask(&app, Some("44772")).await,
            (StatusCode::OK, "runtime".into())
        );
    }

    #[tokio::test]
    async fn a_port_not_served_is_refused_with_the_reason() {
        let app = with_other_ports(answering("runtime"), vec![(49983, answering("envd"))]);
        let (status, body) = ask(&app, Some("8080")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.contains("port 8080 is not served"), "{body}");
        let (status, _) = ask(&app, Some("nonsense")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
}
