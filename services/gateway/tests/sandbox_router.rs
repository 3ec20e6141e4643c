//! The agent-sandbox sandbox router against an in-process fake sandbox: the
//! SDK's `X-Sandbox-*` headers pick the sandbox's Service and port; method,
//! path, query, body and the answer pass through; the routing headers do not.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use sandpool_gateway::sandbox_router::{RouterConfig, app};
use serde_json::Value;

/// A fake sandbox runtime answering with what it got, as JSON (404 on `/missing`).
async fn fake_sandbox() -> u16 {
    let echo = axum::Router::new().fallback(
        |method: http::Method, uri: http::Uri, h: http::HeaderMap, body: String| async move {
            let headers: serde_json::Map<String, Value> = h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let status = if uri.path() == "/missing" {
                http::StatusCode::NOT_FOUND
            } else {
                http::StatusCode::OK
            };
            (
                status,
                axum::Json(serde_json::json!({
                    "method": method.as_str(), "uri": uri.to_string(),
                    "headers": headers, "body": body,
                })),
            )
        },
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, echo).await });
    port
}

/// The router, resolving the sandboxes' Service names to loopback.
async fn router(allowed: u16) -> String {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let http = reqwest::Client::builder()
        .resolve("sb-1.team-a.svc.cluster.local", lo)
        .resolve("gone.team-a.svc.cluster.local", lo)
        .build()
        .unwrap();
    let cfg = RouterConfig {
        allowed_ports: vec![allowed, 1],
        http,
        ..Default::default()
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app(cfg)).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn requests_reach_the_named_sandbox_port_with_the_routing_headers_removed() {
    let port = fake_sandbox().await;
    let base = router(port).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/execute?x=1"))
        .header("X-Sandbox-ID", "sb-1")
        .header("X-Sandbox-Namespace", "team-a")
        .header("X-Sandbox-Port", port.to_string())
        .header("X-Sandbox-Timeout", "30")
        .header("X-Sandbox-Pod-IP", "10.9.9.9")
        .header("X-App", "kept")
        .body(r#"{"command":"echo hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/execute?x=1");
    assert_eq!(seen["body"], r#"{"command":"echo hi"}"#);
    assert_eq!(seen["headers"]["x-app"], "kept");
    let leaked: Vec<&String> = seen["headers"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("x-sandbox-"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");

    // the sandbox's own status comes back as it is
    let r = c
        .get(format!("{base}/missing"))
        .header("X-Sandbox-ID", "sb-1")
        .header("X-Sandbox-Namespace", "team-a")
        .header("X-Sandbox-Port", port.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_headers_other_ports_and_unreachable_sandboxes_are_refused() {
    let port = fake_sandbox().await;
    let base = router(port).await;
    let c = reqwest::Client::new();
    let send = |h: Vec<(&'static str, String)>| {
        let mut rb = c.get(format!("{base}/list/."));
        for (k, v) in h {
            rb = rb.header(k, v);
        }
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(vec![]).await, 400, "no X-Sandbox-ID");
    assert_eq!(
        send(vec![("X-Sandbox-ID", "sb-1.team-a.svc".into())]).await,
        400
    );
    let other = if port == 8888 { 8889 } else { 8888 };
    assert_eq!(
        send(vec![
            ("X-Sandbox-ID", "sb-1".into()),
            ("X-Sandbox-Namespace", "team-a".into()),
            ("X-Sandbox-Port", other.to_string()),
        ])
        .await,
        403,
        "a port the router does not allow"
    );
    // allowed, but nothing listens there
    assert_eq!(
        send(vec![
            ("X-Sandbox-ID", "gone".into()),
            ("X-Sandbox-Namespace", "team-a".into()),
            ("X-Sandbox-Port", "1".into()),
        ])
        .await,
        502
    );
    let ok: Value = reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["status"], "ok");
}
