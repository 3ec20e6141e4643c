//! Ownership between API keys, through the real router against an
//! in-memory scheduler: a key reaches only what it created, the platform
//! key everything; revoked keys are refused; live sandboxes have a quota.

use sandpool_gateway::{Gateway, tenancy};
use serde_json::{Value, json};

mod support;
use support::FakeScheduler;

struct Platform {
    app: axum::Router,
    keys: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const ADMIN: &str = "platform-key";
const A: &str = "key-of-tenant-a";
const B: &str = "key-of-tenant-b";

async fn platform(max_per_key: u32) -> Platform {
    let client = support::serve(FakeScheduler::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys.json");
    tenancy::add_key(&keys, A, "a", false).expect("key a");
    tenancy::add_key(&keys, B, "b", false).expect("key b");
    let admin = [ADMIN.to_string()];
    let gw = Gateway::new(client, &admin)
        .with_keys_file(&admin, keys.clone())
        .with_max_sandboxes_per_key(max_per_key);
    Platform {
        app: sandpool_gateway::app(gw),
        keys,
        _dir: dir,
    }
}

/// `(status, body)` of a call with `key` in the header of the API of `path`.
async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let req = http::Request::builder().method(method).uri(path);
    let (status, _, v) = support::call_full(app, req, key, &body).await;
    (status, v)
}

/// Asserts the status of each bodiless `(method, path, key)` call, in order.
async fn expect_statuses(app: &axum::Router, cases: &[(&str, &str, &str, u16)]) {
    for &(method, path, key, want) in cases {
        let (s, v) = call(app, method, path, key, Value::Null).await;
        assert_eq!(s, want, "{key} {method} {path}: {v}");
    }
}

/// Creates `n` OpenSandbox sandboxes with `key`, asserting each is accepted.
async fn os_create_accepted(app: &axum::Router, key: &str, n: usize) {
    for _ in 0..n {
        let (s, v) = call(app, "POST", "/v1/sandboxes", key, os_create()).await;
        assert_eq!(s, 202, "{key}: {v}");
    }
}

/// A new OpenSandbox sandbox of key `A` (accepted): its API path.
async fn os_sandbox_of_a(app: &axum::Router) -> String {
    let (s, a) = call(app, "POST", "/v1/sandboxes", A, os_create()).await;
    assert_eq!(s, 202, "{a}");
    format!("/v1/sandboxes/{}", a["id"].as_str().expect("id"))
}

fn os_create() -> Value {
    // a caller's own owner record is dropped, not trusted
    json!({"extensions": {"poolRef": "default"}, "entrypoint": ["sleep", "9"], "timeout": 600,
           "metadata": {"team": "x", "sandpool.io/owner": "platform"}})
}

fn e2b_create() -> Value {
    json!({"templateID": "default"})
}

fn ids(list: &Value, items: &str) -> Vec<String> {
    let arr = if items.is_empty() { list } else { &list[items] };
    arr.as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    s["id"]
                        .as_str()
                        .or(s["sandboxID"].as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn opensandbox_keys_reach_only_their_own_sandboxes() {
    let p = platform(50).await;
    let app = &p.app;
    let (s, a) = call(app, "POST", "/v1/sandboxes", A, os_create()).await;
    assert_eq!(s, 202, "{a}");
    let id = a["id"].as_str().expect("id").to_string();
    assert_eq!(
        a["metadata"],
        json!({"team": "x"}),
        "the owner record is not shown"
    );
    let (s, b) = call(app, "POST", "/v1/sandboxes", B, os_create()).await;
    assert_eq!(s, 202, "{b}");
    let id_b = b["id"].as_str().expect("id").to_string();

    let sb = format!("/v1/sandboxes/{id}");
    for (method, path, body) in [
        ("GET", sb.clone(), Value::Null),
        ("GET", format!("{sb}/endpoints/8080"), Value::Null),
        ("POST", format!("{sb}/pause"), Value::Null),
        ("POST", format!("{sb}/resume"), Value::Null),
        (
            "POST",
            format!("{sb}/renew-expiration"),
            json!({"expiresAt": "2099-01-01T00:00:00Z"}),
        ),
        ("GET", format!("{sb}/proxy/8080/x"), Value::Null),
        ("GET", format!("{sb}/networkpolicy"), Value::Null),
        ("PATCH", format!("{sb}/metadata"), json!({"team": "y"})),
        ("PUT", format!("{sb}/networkpolicy"), json!({})),
        ("PATCH", format!("{sb}/networkpolicy"), json!([])),
        ("DELETE", format!("{sb}/networkpolicy"), json!([])),
        ("DELETE", sb.clone(), Value::Null),
    ] {
        let (s, v) = call(app, method, &path, B, body).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (404, Some("SANDBOX_NOT_FOUND")),
            "B {method} {path}: {v}"
        );
    }
    let (s, v) = call(app, "GET", "/v1/sandboxes", B, Value::Null).await;
    assert_eq!(
        (s, ids(&v, "items")),
        (200, vec![id_b.clone()]),
        "B lists only its own"
    );
    // a metadata filter naming another owner does not widen the view
    let (_, v) = call(
        app,
        "GET",
        "/v1/sandboxes?metadata=sandpool.io%2Fowner%3Dplatform",
        B,
        Value::Null,
    )
    .await;
    assert_eq!(ids(&v, "items"), vec![id_b.clone()]);
    let (s, v) = call(app, "GET", "/v1/sandboxes", ADMIN, Value::Null).await;
    assert_eq!(
        (s, ids(&v, "items")),
        (200, vec![id.clone(), id_b.clone()]),
        "admin sees both"
    );
    let (s, v) = call(app, "GET", &sb, ADMIN, Value::Null).await;
    assert_eq!((s, &v["metadata"]), (200, &json!({"team": "x"})));

    // the owner still reaches it
    expect_statuses(
        app,
        &[
            ("POST", &format!("{sb}/pause"), A, 202),
            ("GET", &sb, A, 200),
            ("DELETE", &sb, A, 204),
        ],
    )
    .await;

    // a revoked key is refused at once (no restart)
    assert!(tenancy::revoke_key(&p.keys, "b").expect("revoke"));
    let (s, v) = call(app, "GET", "/v1/sandboxes", B, Value::Null).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (401, Some("INVALID_API_KEY")),
        "{v}"
    );
    // ...and a new one accepted
    tenancy::add_key(&p.keys, "key-of-tenant-c", "c", false).expect("key c");
    let (s, v) = call(app, "GET", "/v1/sandboxes", "key-of-tenant-c", Value::Null).await;
    assert_eq!((s, ids(&v, "items")), (200, vec![]));
}

/// The owner of an OpenSandbox sandbox replaces, patches and deletes its
/// egress rules live and reads them back; a domain rule is refused.
#[tokio::test]
async fn an_owner_changes_its_sandboxes_egress_policy_live() {
    let p = platform(50).await;
    let app = &p.app;
    let sb = os_sandbox_of_a(app).await;
    let policy = format!("{sb}/networkpolicy");
    let (s, v) = call(app, "PUT", &policy, A, json!({"defaultAction": "deny"})).await;
    assert_eq!((s, &v["mode"]), (200, &json!("deny_all")), "{v}");
    let rule = json!([{"action": "allow", "target": "10.9.0.0/16"}]);
    let (s, v) = call(app, "PATCH", &policy, A, rule.clone()).await;
    assert_eq!((s, &v["policy"]["egress"]), (200, &rule), "{v}");
    let (s, v) = call(app, "DELETE", &policy, A, json!(["10.9.0.0/16"])).await;
    assert_eq!((s, &v["mode"]), (200, &json!("deny_all")), "{v}");
    let (s, v) = call(app, "GET", &policy, A, Value::Null).await;
    assert_eq!(
        (s, &v["policy"]["defaultAction"]),
        (200, &json!("deny")),
        "{v}"
    );
    let (s, v) = call(
        app,
        "PUT",
        &policy,
        A,
        json!({"egress": [{"action": "allow", "target": "pypi..org"}]}),
    )
    .await;
    assert_eq!(s, 400, "not a domain name: {v}");
    assert!(v.to_string().contains("egress[0].target"), "{v}");
    let (s, v) = call(
        app,
        "PUT",
        &policy,
        A,
        json!({"egress": [{"action": "allow", "target": "*.pypi.org"}]}),
    )
    .await;
    assert_eq!(
        (s, &v["policy"]["egress"][0]["target"]),
        (200, &json!("*.pypi.org")),
        "a domain rule, enforced by the node's DNS proxy: {v}"
    );
}

#[tokio::test]
async fn e2b_keys_reach_only_their_own_sandboxes() {
    let p = platform(50).await;
    let app = &p.app;
    let (s, a) = call(app, "POST", "/sandboxes", A, e2b_create()).await;
    assert_eq!(s, 201, "{a}");
    let id = a["sandboxID"].as_str().expect("id").to_string();
    let sb = format!("/sandboxes/{id}");
    for (method, path, body) in [
        ("GET", sb.clone(), Value::Null),
        ("POST", format!("{sb}/timeout"), json!({"timeout": 60})),
        ("POST", format!("{sb}/refreshes"), json!({"duration": 60})),
        ("POST", format!("{sb}/pause"), Value::Null),
        ("POST", format!("{sb}/resume"), json!({"timeout": 60})),
        ("POST", format!("{sb}/connect"), json!({"timeout": 60})),
        ("PUT", format!("{sb}/network"), json!({})),
        ("DELETE", sb.clone(), Value::Null),
    ] {
        let (s, v) = call(app, method, &path, B, body).await;
        assert_eq!(
            (s, v["code"].as_u64()),
            (404, Some(404)),
            "B {method} {path}: {v}"
        );
    }
    let (_, v) = call(app, "GET", "/sandboxes", B, Value::Null).await;
    assert_eq!(ids(&v, ""), Vec::<String>::new(), "B lists none: {v}");
    let (_, v) = call(app, "GET", "/v2/sandboxes", B, Value::Null).await;
    assert_eq!(ids(&v, ""), Vec::<String>::new(), "B lists none: {v}");
    let (_, v) = call(app, "GET", "/sandboxes", A, Value::Null).await;
    assert_eq!(ids(&v, ""), vec![id.clone()]);
    let (_, v) = call(app, "GET", "/sandboxes", ADMIN, Value::Null).await;
    assert_eq!(ids(&v, ""), vec![id.clone()], "admin sees A's");
    let (s, v) = call(app, "GET", &sb, A, Value::Null).await;
    assert_eq!((s, &v["metadata"]), (200, &json!({})), "{v}");
    // the owner replaces the egress rules live; GET reads them back
    let (s, v) = call(
        app,
        "PUT",
        &format!("{sb}/network"),
        A,
        json!({"allow_internet_access": false, "allowOut": ["10.9.0.1"]}),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (_, v) = call(app, "GET", &sb, A, Value::Null).await;
    assert_eq!(
        v["network"],
        json!({"allowOut": ["10.9.0.1"], "denyOut": ["0.0.0.0/0"]}),
        "{v}"
    );
    expect_statuses(app, &[("DELETE", &sb, A, 204)]).await;
}

#[tokio::test]
async fn live_sandboxes_per_key_have_a_quota_in_each_apis_shape() {
    let p = platform(2).await;
    let app = &p.app;
    os_create_accepted(app, A, 2).await;
    let (s, v) = call(app, "POST", "/v1/sandboxes", A, os_create()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (429, Some("QUOTA_EXCEEDED")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("max-sandboxes-per-key")),
        "{v}"
    );
    let (s, v) = call(app, "POST", "/sandboxes", A, e2b_create()).await;
    assert_eq!(
        (s, v["code"].as_u64(), v["error_code"].as_str()),
        (429, Some(429), Some("QUOTA_EXCEEDED")),
        "{v}"
    );
    // other keys and the platform key are not held by A's quota
    os_create_accepted(app, B, 1).await;
    os_create_accepted(app, ADMIN, 3).await;
    // deleting one frees a place
    let (_, v) = call(app, "GET", "/v1/sandboxes", A, Value::Null).await;
    let first = ids(&v, "items").remove(0);
    expect_statuses(
        app,
        &[("DELETE", &format!("/v1/sandboxes/{first}"), A, 204)],
    )
    .await;
    os_create_accepted(app, A, 1).await;
}

#[tokio::test]
async fn parallel_creates_of_one_key_cannot_overshoot_its_quota() {
    let p = platform(2).await;
    let body = json!({"extensions": {"poolRef": "default"}, "metadata": {"slow": "1"}});
    let calls = (0..6).map(|_| call(&p.app, "POST", "/v1/sandboxes", A, body.clone()));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        4,
        "{statuses:?}"
    );
    let (_, v) = call(&p.app, "GET", "/v1/sandboxes", ADMIN, Value::Null).await;
    assert_eq!(ids(&v, "items").len(), 2, "live sandboxes of A: {v}");
}

#[tokio::test]
async fn snapshots_belong_to_the_key_of_their_sandbox_after_it_is_gone() {
    let p = platform(50).await;
    let app = &p.app;
    let (_, a) = call(app, "POST", "/v1/sandboxes", A, os_create()).await;
    let id = a["id"].as_str().expect("id").to_string();
    let snapshots = format!("/v1/sandboxes/{id}/snapshots");
    // B cannot snapshot A's sandbox
    expect_statuses(app, &[("POST", &snapshots, B, 404)]).await;
    let (s, ck) = call(app, "POST", &snapshots, A, Value::Null).await;
    assert_eq!(s, 202, "{ck}");
    let ck = ck["id"].as_str().expect("snapshot id").to_string();
    expect_statuses(app, &[("DELETE", &format!("/v1/sandboxes/{id}"), A, 204)]).await;

    let (_, v) = call(app, "GET", "/v1/snapshots", A, Value::Null).await;
    assert_eq!(
        ids(&v, "items"),
        vec![ck.clone()],
        "A's snapshot outlives its sandbox"
    );
    let (_, v) = call(app, "GET", "/v1/snapshots", B, Value::Null).await;
    assert_eq!(ids(&v, "items"), Vec::<String>::new());
    let (_, v) = call(app, "GET", "/v1/snapshots", ADMIN, Value::Null).await;
    assert_eq!(ids(&v, "items"), vec![ck.clone()]);
    let snap = format!("/v1/snapshots/{ck}");
    expect_statuses(app, &[("GET", &snap, B, 404), ("DELETE", &snap, B, 404)]).await;
    let restore = json!({"snapshotId": ck, "timeout": 600});
    let (s, v) = call(app, "POST", "/v1/sandboxes", B, restore.clone()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("SNAPSHOT_NOT_FOUND")),
        "{v}"
    );

    let (s, v) = call(app, "POST", "/v1/sandboxes", A, restore).await;
    assert_eq!(s, 202, "{v}");
    let restored = format!("/v1/sandboxes/{}", v["id"].as_str().expect("id"));
    expect_statuses(
        app,
        &[
            ("GET", &restored, B, 404),
            ("GET", &restored, A, 200),
            ("GET", &snap, A, 200),
            ("DELETE", &snap, A, 204),
        ],
    )
    .await;
}

/// The owner merge-patches its sandbox's metadata: GET and the list's
/// metadata filter follow; the reserved keys stay out of its reach.
#[tokio::test]
async fn an_owner_patches_its_sandboxes_metadata() {
    let p = platform(50).await;
    let app = &p.app;
    let sb = os_sandbox_of_a(app).await;
    let md = format!("{sb}/metadata");
    let (s, v) = call(app, "PATCH", &md, A, json!({"env": "prod"})).await;
    assert_eq!(
        (s, &v["metadata"]),
        (200, &json!({"team": "x", "env": "prod"})),
        "{v}"
    );
    let (s, v) = call(
        app,
        "PATCH",
        &md,
        A,
        json!({"team": null, "env": "dev", "gone": null}),
    )
    .await;
    assert_eq!((s, &v["metadata"]), (200, &json!({"env": "dev"})), "{v}");
    let (s, v) = call(app, "PATCH", &md, A, json!({})).await;
    assert_eq!(
        (s, &v["metadata"]),
        (200, &json!({"env": "dev"})),
        "a no-op: {v}"
    );
    let (_, v) = call(app, "GET", &sb, A, Value::Null).await;
    assert_eq!(v["metadata"], json!({"env": "dev"}));
    let listed = |q: &'static str| async move {
        let (_, v) = call(
            app,
            "GET",
            &format!("/v1/sandboxes?metadata={q}"),
            A,
            Value::Null,
        )
        .await;
        ids(&v, "items").len()
    };
    assert_eq!(listed("env%3Ddev").await, 1);
    assert_eq!(
        listed("team%3Dx").await,
        0,
        "a deleted key no longer matches"
    );
    for reserved in [
        json!({"sandpool.io/owner": "b"}),
        json!({"sandpool.io/owner": null}),
        json!({"sandpool.io/private-traffic": "true"}),
        json!({"n": 5}),
    ] {
        let (s, v) = call(app, "PATCH", &md, A, reserved.clone()).await;
        assert_eq!(s, 400, "{reserved}: {v}");
    }
    // the owner record survived: B still cannot reach it, A still can
    let (s, _) = call(app, "GET", &sb, B, Value::Null).await;
    assert_eq!(s, 404);
    let (s, v) = call(
        app,
        "PATCH",
        "/v1/sandboxes/nope/metadata",
        A,
        json!({"a": "b"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("SANDBOX_NOT_FOUND")),
        "{v}"
    );
}
