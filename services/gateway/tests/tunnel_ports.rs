//! Traffic to envd and the code interpreter of a network-less
//! (checkpointable) sandbox: sent to its runtime tunnel with the in-sandbox
//! port named in `x-sandpool-port`, whatever the caller put there.

use sandpool_gateway::Gateway;
use serde_json::{Value, json};

mod support;
use support::FakeScheduler;

const KEY: &str = "platform-key";

/// A tunnel that answers which port each request named (`-` for none).
async fn fake_tunnel() -> u32 {
    let app = axum::Router::new().fallback(|h: http::HeaderMap| async move {
        let named = h
            .get("x-sandpool-port")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        axum::Json(json!({ "named": named }))
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(l, app).await });
    u32::from(port)
}

#[tokio::test]
async fn envd_and_interpreter_traffic_goes_through_the_runtime_tunnel_naming_its_port() {
    // the fake's sandboxes answer on a host port other than 44772: tunnelled
    let fake = FakeScheduler::with_runtime_port(fake_tunnel().await);
    let app = sandpool_gateway::app(Gateway::new(support::serve(fake).await, &[KEY.to_string()]));
    let (s, _, v) = support::call_full(
        &app,
        http::Request::post("/sandboxes"),
        KEY,
        &json!({"templateID": "ck-pool"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["sandboxID"].as_str().expect("id").to_string();
    // E2B routing headers; a caller's own x-sandpool-port is dropped
    for (port, named) in [(49983, "49983"), (49999, "49999"), (44772, "-")] {
        let req = http::Request::get("/health")
            .header("E2b-Sandbox-Id", &id)
            .header("E2b-Sandbox-Port", port.to_string())
            .header("x-sandpool-port", "8080");
        let (s, _, v) = support::call_full(&app, req, KEY, &Value::Null).await;
        assert_eq!(
            (s, v["named"].as_str()),
            (200, Some(named)),
            "port {port}: {v}"
        );
    }
    // the OpenSandbox proxy route does the same
    let (s, _, v) = support::call_full(
        &app,
        http::Request::get(format!("/v1/sandboxes/{id}/proxy/49999/execute")),
        KEY,
        &Value::Null,
    )
    .await;
    assert_eq!((s, v["named"].as_str()), (200, Some("49999")), "{v}");
    // a port its runtime does not serve is still refused with the reason
    let (s, _, v) = support::call_full(
        &app,
        http::Request::get(format!("/v1/sandboxes/{id}/proxy/8080/x")),
        KEY,
        &Value::Null,
    )
    .await;
    assert_eq!(s, 501, "{v}");
    assert!(v.to_string().contains("49983 and 49999"), "{v}");
}
