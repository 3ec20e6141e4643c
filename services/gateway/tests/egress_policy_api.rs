//! The egress sidecar's `/policy` API of port 18080, which the gateway
//! serves itself, through the real router against an in-memory scheduler:
//! the endpoint of port 18080 names the route and hands out the sandbox's
//! egress token; the token (or an API key of the owner) changes the policy
//! in upstream's shapes; nothing else does, and the token is never shown.

use sandpool_gateway::{Gateway, tenancy};
use serde_json::{Value, json};

mod support;
use support::FakeScheduler;

const A: &str = "key-of-tenant-a";
const B: &str = "key-of-tenant-b";
const AUTH: &str = "OPENSANDBOX-EGRESS-AUTH";

async fn app(dir: &tempfile::TempDir) -> axum::Router {
    let client = support::serve(FakeScheduler::default()).await;
    let keys = dir.path().join("keys.json");
    tenancy::add_key(&keys, A, "a", false).expect("key a");
    tenancy::add_key(&keys, B, "b", false).expect("key b");
    let admin = ["platform-key".to_string()];
    sandpool_gateway::app(Gateway::new(client, &admin).with_keys_file(&admin, keys))
}

/// `(status, body)` of a call with exactly `headers`.
async fn raw(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (s, _, bytes) = sandpool_testsupport::send(app, req, &body).await;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (s, v)
}

async fn with_key(app: &axum::Router, method: &str, path: &str, key: &str, body: Value) -> Value {
    let (s, v) = raw(app, method, path, &[("OPEN-SANDBOX-API-KEY", key)], body).await;
    assert!(s < 300, "{method} {path}: {s} {v}");
    v
}

/// A new sandbox of key `A` with `policy` (set through the lifecycle API:
/// the in-memory scheduler keeps no create-time policy): its id and egress
/// endpoint.
async fn sandbox(app: &axum::Router, policy: Value) -> (String, Value) {
    let create = json!({"extensions": {"poolRef": "default"}, "entrypoint": ["sleep", "9"],
                        "timeout": 600, "metadata": {"sandpool.io/egress-token": "mine"}});
    let v = with_key(app, "POST", "/v1/sandboxes", A, create).await;
    let id = v["id"].as_str().expect("id").to_string();
    let url = format!("/v1/sandboxes/{id}/networkpolicy");
    with_key(app, "PUT", &url, A, policy).await;
    let ep = with_key(
        app,
        "GET",
        &format!("/v1/sandboxes/{id}/endpoints/18080"),
        A,
        Value::Null,
    )
    .await;
    (id, ep)
}

#[tokio::test]
async fn the_endpoints_token_changes_the_policy_in_the_sidecars_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = &app(&dir).await;
    let (id, ep) = sandbox(
        app,
        json!({"egress": [{"action": "allow", "target": "10.1.0.0/16"}]}),
    )
    .await;
    assert_eq!(
        ep["endpoint"],
        json!(format!("127.0.0.1/v1/sandboxes/{id}/proxy/18080")),
        "{ep}"
    );
    let token = ep["headers"][AUTH].as_str().expect("token").to_string();
    assert_eq!(token.len(), 64);
    assert_ne!(token, "mine", "a caller's own value is not the token");
    let url = format!("/v1/sandboxes/{id}/proxy/18080/policy");
    let auth = [(AUTH, token.as_str())];

    let (s, v) = raw(app, "GET", &url, &auth, Value::Null).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["status"], &v["mode"], &v["policy"]),
        (
            &json!("ok"),
            &json!("enforcing"),
            &json!({"defaultAction": "deny", "egress": [{"action": "allow", "target": "10.1.0.0/16"}]})
        )
    );
    let patch = json!([{"action": "deny", "target": "10.2.0.1"}, {"action": "deny", "target": "10.1.0.0/16"}]);
    let (s, v) = raw(app, "PATCH", &url, &auth, patch.clone()).await;
    assert_eq!((s, &v["mode"]), (200, &json!("enforcing")), "{v}");
    let (_, v) = raw(app, "GET", &url, &auth, Value::Null).await;
    assert_eq!(
        v["policy"]["egress"], patch,
        "the patch replaces the older rule of its target"
    );
    let (s, v) = raw(app, "DELETE", &url, &auth, json!(["10.9.9.9"])).await;
    assert_eq!(
        (s, &v["reason"]),
        (200, &json!("no matching targets found")),
        "{v}"
    );
    let (s, v) = raw(app, "POST", &url, &auth, json!({"defaultAction": "allow"})).await;
    assert_eq!((s, &v["mode"]), (200, &json!("allow_all")), "{v}");
    let (s, v) = raw(app, "POST", &url, &auth, Value::Null).await;
    assert_eq!(
        (s, &v["mode"], &v["reason"]),
        (
            200,
            &json!("deny_all"),
            &json!("policy reset to default deny-all")
        ),
        "{v}"
    );
    for (method, body) in [
        ("PATCH", Value::Null),
        ("PATCH", json!([])),
        ("DELETE", json!([])),
    ] {
        let (s, v) = raw(app, method, &url, &auth, body).await;
        assert_eq!(s, 400, "{method}: {v}");
    }
    // what /policy set is the sandbox's policy on the lifecycle API too
    let v = with_key(
        app,
        "GET",
        &format!("/v1/sandboxes/{id}/networkpolicy"),
        A,
        Value::Null,
    )
    .await;
    assert_eq!(v["mode"], json!("deny_all"), "{v}");
}

#[tokio::test]
async fn only_the_sandboxes_token_or_its_owners_key_reach_its_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = &app(&dir).await;
    let (id, ep) = sandbox(app, json!({"defaultAction": "deny"})).await;
    let (other, other_ep) = sandbox(app, json!({"defaultAction": "deny"})).await;
    let token = ep["headers"][AUTH].as_str().expect("token");
    let url = format!("/v1/sandboxes/{id}/proxy/18080/policy");
    let open = json!({"defaultAction": "allow"});
    for (headers, want) in [
        (vec![], 401),
        (vec![(AUTH, "0".repeat(64))], 401),
        (vec![(AUTH, String::new())], 401),
        (
            vec![(
                AUTH,
                other_ep["headers"][AUTH].as_str().expect("t").to_string(),
            )],
            401,
        ),
        (vec![("OPEN-SANDBOX-API-KEY", "wrong".to_string())], 401),
        (vec![("OPEN-SANDBOX-API-KEY", B.to_string())], 404),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, v) = raw(app, "POST", &url, &h, open.clone()).await;
        assert_eq!(s, want, "{headers:?}: {v}");
    }
    // a sandbox that does not exist: as unauthorised as a wrong token
    let (s, _) = raw(
        app,
        "GET",
        "/v1/sandboxes/nope/proxy/18080/policy",
        &[(AUTH, token)],
        Value::Null,
    )
    .await;
    assert_eq!(s, 401);
    let (_, v) = raw(app, "GET", &url, &[(AUTH, token)], Value::Null).await;
    assert_eq!(v["mode"], json!("deny_all"), "nothing changed: {v}");
    // the owner's key works without the token
    let v = with_key(app, "POST", &url, A, open).await;
    assert_eq!(v["mode"], json!("allow_all"), "{v}");
    let (s, v) = raw(
        app,
        "GET",
        &format!("/v1/sandboxes/{other}/proxy/18080/policy"),
        &[(AUTH, token)],
        Value::Null,
    )
    .await;
    assert_eq!(s, 401, "one sandbox's token is not another's: {v}");
}

#[tokio::test]
async fn the_token_is_never_shown_nor_the_callers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = &app(&dir).await;
    let (id, ep) = sandbox(app, json!({})).await;
    let token = ep["headers"][AUTH].as_str().expect("token");
    let shown = with_key(app, "GET", &format!("/v1/sandboxes/{id}"), A, Value::Null).await;
    assert!(!shown.to_string().contains(token), "{shown}");
    assert!(!shown.to_string().contains("egress-token"), "{shown}");
    let listed = with_key(app, "GET", "/v1/sandboxes", A, Value::Null).await;
    assert!(!listed.to_string().contains(token), "{listed}");
    let (s, v) = raw(
        app,
        "PATCH",
        &format!("/v1/sandboxes/{id}/metadata"),
        &[("OPEN-SANDBOX-API-KEY", A)],
        json!({"sandpool.io/egress-token": "x"}),
    )
    .await;
    assert_eq!(s, 400, "reserved: {v}");
    let (s, v) = raw(
        app,
        "GET",
        &format!("/v1/sandboxes?metadata=sandpool.io%2Fegress-token%3D{token}"),
        &[("OPEN-SANDBOX-API-KEY", A)],
        Value::Null,
    )
    .await;
    assert_eq!(s, 400, "no filtering on the token: {v}");
    // other ports keep their answers
    let ep = with_key(
        app,
        "GET",
        &format!("/v1/sandboxes/{id}/endpoints/8080"),
        A,
        Value::Null,
    )
    .await;
    assert!(ep.get("headers").is_none(), "{ep}");
    assert!(
        !ep["endpoint"].as_str().expect("s").contains("/proxy/"),
        "{ep}"
    );
}

/// Parallel patches each add their rule: none is lost to another's
/// read-modify-write (upstream's sidecar serialises its handlers too).
#[tokio::test]
async fn parallel_patches_lose_no_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = &app(&dir).await;
    let (id, ep) = sandbox(app, json!({"defaultAction": "deny"})).await;
    let token = ep["headers"][AUTH].as_str().expect("token");
    let url = format!("/v1/sandboxes/{id}/proxy/18080/policy");
    let patches = (1..=16).map(|i| {
        let body = json!([{"action": "allow", "target": format!("10.7.0.{i}")}]);
        let url = url.clone();
        async move { raw(app, "PATCH", &url, &[(AUTH, token)], body).await }
    });
    for (s, v) in futures_util::future::join_all(patches).await {
        assert_eq!(s, 200, "{v}");
    }
    let (_, v) = raw(app, "GET", &url, &[(AUTH, token)], Value::Null).await;
    let n = v["policy"]["egress"].as_array().map_or(0, Vec::len);
    assert_eq!(n, 16, "{v}");
}
