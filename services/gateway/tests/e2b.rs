//! The E2B API through the real router against an in-memory scheduler:
//! error bodies, traffic to gone sandboxes, connect's timeout, list filters
//! and order, metrics ranges, timeout 0.

use sandpool_gateway::Gateway;
use serde_json::{Value, json};

mod support;
use support::{FakeScheduler, T0_MS};

const KEY: &str = "platform-key";

/// A sandbox runtime answering `/metrics` as sandpool's runtime does.
async fn fake_runtime() -> u32 {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            axum::Json(json!({"cpu_count": 2, "cpu_used_pct": 12.5,
                              "mem_used_mib": 64, "mem_total_mib": 512}))
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(l, app).await });
    u32::from(port)
}

async fn platform() -> axum::Router {
    let client = support::serve(FakeScheduler::with_runtime_port(fake_runtime().await)).await;
    sandpool_gateway::app(Gateway::new(client, &[KEY.to_string()]))
}

/// `(status, headers, body)` of a call with the platform key; `body` `Null` sends none.
async fn call_full(
    app: &axum::Router,
    req: http::request::Builder,
    body: &Value,
) -> (u16, http::HeaderMap, Value) {
    support::call_full(app, req, KEY, body).await
}

async fn call(app: &axum::Router, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (s, _, v) = call_full(
        app,
        http::Request::builder().method(method).uri(path),
        &body,
    )
    .await;
    (s, v)
}

async fn create(app: &axum::Router, body: Value) -> String {
    let (s, v) = call(app, "POST", "/sandboxes", body).await;
    assert_eq!(s, 201, "{v}");
    v["sandboxID"].as_str().expect("id").to_string()
}

/// An E2B error body: `{"code": <the status>, "message": <a string>}`.
fn assert_e2b_error(status: u16, v: &Value, what: &str) {
    assert_eq!(v["code"], json!(status), "{what}: {v}");
    assert!(v["message"].is_string(), "{what}: {v}");
}

#[tokio::test]
async fn every_e2b_error_is_e2b_json() {
    let app = platform().await;
    for (method, path, body, want) in [
        ("PUT", "/sandboxes/nope/network", json!({}), 404),
        ("GET", "/sandboxes/nope", Value::Null, 404),
        (
            "POST",
            "/sandboxes/nope/timeout",
            json!({"timeout": 5}),
            404,
        ),
        // no such route under the E2B API
        ("GET", "/sandboxes/nope/logs", Value::Null, 404),
        ("GET", "/v2/sandboxes/nope/logs", Value::Null, 404),
        ("GET", "/templates/nope/builds/b/nothing", Value::Null, 404),
        // a route without that method
        ("PATCH", "/sandboxes/nope", Value::Null, 405),
        ("GET", "/sandboxes/nope/timeout", Value::Null, 405),
        // a body that is not JSON
        ("POST", "/sandboxes/nope/timeout", json!("x"), 400),
    ] {
        let (s, v) = call(&app, method, path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        assert_e2b_error(s, &v, &format!("{method} {path}"));
    }
    // a killed sandbox's network
    let id = create(&app, json!({"templateID": "base"})).await;
    assert_eq!(
        call(&app, "DELETE", &format!("/sandboxes/{id}"), Value::Null)
            .await
            .0,
        204
    );
    let (s, v) = call(&app, "PUT", &format!("/sandboxes/{id}/network"), json!({})).await;
    assert_eq!(s, 404, "{v}");
    assert_e2b_error(s, &v, "PUT network of a killed sandbox");
    // the OpenSandbox API keeps its own error shape
    let (s, v) = call(&app, "GET", "/v1/nothing", Value::Null).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("NOT_FOUND")), "{v}");
}

/// `(status, body)` of a call to `port` of sandbox `id` routed by E2B's headers.
async fn sandbox_call(app: &axum::Router, id: &str, port: u16, path: &str) -> (u16, Value) {
    let req = http::Request::get(path)
        .header("E2b-Sandbox-Id", id)
        .header("E2b-Sandbox-Port", port.to_string());
    let (s, _, v) = call_full(app, req, &Value::Null).await;
    (s, v)
}

#[tokio::test]
async fn traffic_to_a_paused_or_gone_sandbox_is_e2bs_502_not_found() {
    let app = platform().await;
    let paused = create(&app, json!({"templateID": "base"})).await;
    let (s, v) = call(
        &app,
        "POST",
        &format!("/sandboxes/{paused}/pause"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let killed = create(&app, json!({"templateID": "base"})).await;
    let (s, _) = call(&app, "DELETE", &format!("/sandboxes/{killed}"), Value::Null).await;
    assert_eq!(s, 204);
    for id in [paused.as_str(), killed.as_str(), "never-was"] {
        for port in [49983, 49999] {
            let (s, v) = sandbox_call(&app, id, port, "/health").await;
            assert_eq!(s, 502, "{id}:{port}: {v}");
            assert_eq!(
                v,
                json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502}),
                "{id}:{port}"
            );
        }
    }
    // routed by host, the same
    let req =
        http::Request::get("/health").header("host", format!("49983-{paused}.sandpool.local"));
    let (s, _, v) = call_full(&app, req, &Value::Null).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (502, Some("The sandbox was not found")),
        "{v}"
    );
    // the OpenSandbox proxy route keeps its answers
    let (s, v) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{paused}/proxy/49983/health"),
        Value::Null,
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("CONFLICT")), "{v}");
    let (s, v) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{killed}/proxy/49983/health"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("SANDBOX_NOT_FOUND")),
        "{v}"
    );
}

fn end_at_ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v["endAt"].as_str().expect("endAt"))
        .expect("rfc3339")
        .timestamp_millis()
}

async fn info(app: &axum::Router, id: &str) -> Value {
    let (s, v) = call(app, "GET", &format!("/sandboxes/{id}"), Value::Null).await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn connect_only_ever_extends_a_running_sandboxs_timeout() {
    let app = platform().await;
    let id = create(&app, json!({"templateID": "base", "timeout": 300})).await;
    let end = end_at_ms(&info(&app, &id).await);
    for path in [
        format!("/sandboxes/{id}/connect"),
        format!("/v2/sandboxes/{id}/connect"),
    ] {
        let (s, v) = call(&app, "POST", &path, json!({"timeout": 10})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            end_at_ms(&info(&app, &id).await),
            end,
            "{path}: not moved earlier"
        );
    }
    let (s, _) = call(
        &app,
        "POST",
        &format!("/sandboxes/{id}/connect"),
        json!({"timeout": 600}),
    )
    .await;
    assert_eq!(s, 200);
    let later = end_at_ms(&info(&app, &id).await);
    assert!(later >= end + 290_000, "extended: {end} -> {later}");
    // a paused sandbox, resumed, runs for the timeout asked for
    let (s, _) = call(&app, "POST", &format!("/sandboxes/{id}/pause"), Value::Null).await;
    assert_eq!(s, 204);
    let before = chrono::Utc::now().timestamp_millis();
    let (s, v) = call(
        &app,
        "POST",
        &format!("/sandboxes/{id}/connect"),
        json!({"timeout": 10}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let resumed = end_at_ms(&info(&app, &id).await);
    assert!(
        (before + 9_000..=before + 12_000).contains(&resumed),
        "{before} {resumed}"
    );
}

/// `(ids, headers)` of a v2 list with query `q`.
async fn list_v2(app: &axum::Router, q: &str) -> (Vec<String>, http::HeaderMap) {
    let req = http::Request::get(format!("/v2/sandboxes{q}"));
    let (s, h, v) = call_full(app, req, &Value::Null).await;
    assert_eq!(s, 200, "{q}: {v}");
    let ids = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["sandboxID"].as_str().expect("id").to_string())
        .collect();
    (ids, h)
}

#[tokio::test]
async fn v2_list_is_newest_first_and_filters_as_upstream() {
    let app = platform().await;
    // sb-1..sb-4 start a second apart (the fake's clock)
    for t in ["base", "python", "base", "base"] {
        create(&app, json!({"templateID": t})).await;
    }
    let (s, _) = call(&app, "POST", "/sandboxes/sb-4/pause", Value::Null).await;
    assert_eq!(s, 204);
    let (ids, h) = list_v2(&app, "").await;
    assert_eq!(ids, ["sb-4", "sb-3", "sb-2", "sb-1"], "newest first");
    assert_eq!(h["x-total-running"], "3");
    assert_eq!(
        list_v2(&app, "?order=asc").await.0,
        ["sb-1", "sb-2", "sb-3", "sb-4"]
    );
    assert_eq!(
        list_v2(&app, "?order=desc&state=running").await.0,
        ["sb-3", "sb-2", "sb-1"]
    );
    let (ids, h) = list_v2(&app, "?state=paused").await;
    assert_eq!(ids, ["sb-4"]);
    assert!(h.get("x-total-running").is_none(), "running not asked for");
    // sb-2 started at T0 + 2 s: at or after it
    let t2 = chrono::DateTime::from_timestamp_millis(T0_MS + 2000).expect("time");
    let q = format!("?startedAfter={}", t2.to_rfc3339().replace('+', "%2B"));
    assert_eq!(list_v2(&app, &q).await.0, ["sb-4", "sb-3", "sb-2"]);
    let q = format!(
        "?order=asc&startedAfter={}",
        t2.format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    );
    assert_eq!(
        list_v2(&app, &q).await.0,
        ["sb-2", "sb-3", "sb-4"],
        "a raw + is an offset"
    );
    assert_eq!(list_v2(&app, "?template=python").await.0, ["sb-2"]);
    assert_eq!(
        list_v2(&app, "?template=team%2Fbase&state=running").await.0,
        ["sb-3", "sb-1"]
    );
    // pages follow the order, a token continuing where the page ended
    let (page, h) = list_v2(&app, "?limit=3").await;
    assert_eq!(page, ["sb-4", "sb-3", "sb-2"]);
    let token = h["x-next-token"].to_str().expect("token").to_string();
    create(&app, json!({"templateID": "base"})).await; // a newer one does not shift the pages
    let (page, h) = list_v2(&app, &format!("?limit=3&nextToken={token}")).await;
    assert_eq!(page, ["sb-1"]);
    assert!(h.get("x-next-token").is_none());
    // bad values are 400 naming them
    for (q, word) in [
        ("?order=up", "order"),
        ("?startedAfter=yesterday", "startedAfter"),
        ("?template=base:v1", "tags"),
        ("?nextToken=x", "next token"),
    ] {
        let (s, v) = call(&app, "GET", &format!("/v2/sandboxes{q}"), Value::Null).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert_e2b_error(s, &v, q);
        assert!(
            v["message"].as_str().unwrap_or("").contains(word),
            "{q}: {v}"
        );
    }
    // v1 is newest first too
    let (s, v) = call(&app, "GET", "/sandboxes?state=running", Value::Null).await;
    assert_eq!(s, 200);
    let first = v[0]["sandboxID"].as_str().map(str::to_string);
    assert_eq!(first.as_deref(), Some("sb-5"), "{v}");
}

#[tokio::test]
async fn metrics_honour_the_time_range() {
    let app = platform().await;
    let id = create(&app, json!({"templateID": "base"})).await;
    let now = chrono::Utc::now().timestamp();
    let metrics = |q: String| {
        let app = app.clone();
        let path = format!("/sandboxes/{id}/metrics{q}");
        async move { call(&app, "GET", &path, Value::Null).await }
    };
    // by default the sandbox's life so far: the current sample
    for q in [
        String::new(),
        format!("?start={}&end={}", now - 60, now + 60),
        format!("?start={}", now - 60),
        format!("?end={}", now + 60),
    ] {
        let (s, v) = metrics(q.clone()).await;
        assert_eq!(s, 200, "{q}: {v}");
        let samples = v.as_array().expect("array");
        assert_eq!(samples.len(), 1, "{q}: {v}");
        let t = samples[0]["timestampUnix"].as_i64().expect("timestampUnix");
        assert!((now - 5..=now + 5).contains(&t), "{q}: {v}");
        assert_eq!(samples[0]["cpuCount"], 2);
    }
    // a range that ends before now, or starts after it, has no sample
    for q in [
        format!("?start={}&end={}", now - 7200, now - 3600),
        format!("?start={}&end={}", now + 3600, now + 7200),
        format!("?end={}", now - 3600),
    ] {
        let (s, v) = metrics(q.clone()).await;
        assert_eq!((s, v.clone()), (200, json!([])), "{q}");
    }
    // a paused sandbox has no current sample
    assert_eq!(
        call(&app, "POST", &format!("/sandboxes/{id}/pause"), Value::Null)
            .await
            .0,
        204
    );
    assert_eq!(metrics(String::new()).await, (200, json!([])));
    for q in [
        format!("?start={}&end={}", now + 10, now - 10),
        "?start=yesterday".to_string(),
    ] {
        let (s, v) = metrics(q.clone()).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert_e2b_error(s, &v, &q);
    }
}

#[tokio::test]
async fn a_timeout_of_zero_ends_the_sandbox_now() {
    let app = platform().await;
    for secs in [0, -5] {
        let id = create(&app, json!({"templateID": "base"})).await;
        let (s, v) = call(
            &app,
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            json!({"timeout": secs}),
        )
        .await;
        assert_eq!(s, 204, "{secs}: {v}");
        let (s, v) = call(&app, "GET", &format!("/sandboxes/{id}"), Value::Null).await;
        assert_eq!(s, 404, "{secs}: the sandbox is gone: {v}");
    }
    // a paused sandbox's timeout does not change (as upstream: 409)
    let id = create(&app, json!({"templateID": "base"})).await;
    assert_eq!(
        call(&app, "POST", &format!("/sandboxes/{id}/pause"), Value::Null)
            .await
            .0,
        204
    );
    let (s, v) = call(
        &app,
        "POST",
        &format!("/sandboxes/{id}/timeout"),
        json!({"timeout": 0}),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_e2b_error(s, &v, "timeout 0 of a paused sandbox");
    assert_eq!(info(&app, &id).await["state"], "paused");
}

/// With `autoPause`, a timeout of 0 is the timeout now: the sandbox is
/// paused (as at its timeout), and `connect` resumes it.
#[tokio::test]
async fn a_timeout_of_zero_pauses_an_auto_pause_sandbox() {
    let app = platform().await;
    let id = create(&app, json!({"templateID": "base", "autoPause": true})).await;
    let (s, v) = call(
        &app,
        "POST",
        &format!("/sandboxes/{id}/timeout"),
        json!({"timeout": 0}),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(info(&app, &id).await["state"], "paused");
    let (s, v) = call(
        &app,
        "POST",
        &format!("/sandboxes/{id}/connect"),
        json!({"timeout": 60}),
    )
    .await;
    assert!(s == 200 || s == 201, "{s}: {v}");
    assert_eq!(info(&app, &id).await["state"], "running");
}

/// E2B `memory: false` is a filesystem-only checkpoint: the scheduler is
/// asked for one (the fake takes it even of a sandbox it cannot checkpoint
/// whole, as Kubernetes mode does), and nothing else is.
#[tokio::test]
async fn a_snapshot_without_memory_asks_for_a_filesystem_only_checkpoint() {
    let app = platform().await;
    let runc = create(&app, json!({"templateID": "runc"})).await;
    let snap = format!("/sandboxes/{runc}/snapshots");
    let (s, v) = call(&app, "POST", &snap, json!({"memory": false})).await;
    assert_eq!(s, 201, "{v}");
    assert!(
        v["snapshotID"].as_str().is_some_and(|id| !id.is_empty()),
        "{v}"
    );
    for body in [json!({}), json!({"memory": true})] {
        let (s, v) = call(&app, "POST", &snap, body).await;
        assert_eq!(s, 501, "{v}");
    }
}

#[tokio::test]
async fn snapshots_are_made_listed_restored_and_deleted_through_e2bs_endpoints() {
    let app = platform().await;
    let id = create(&app, json!({"templateID": "ck-pool"})).await;
    let snap = |id: &str| format!("/sandboxes/{id}/snapshots");
    // unnamed: the id only; named: the name in `names`
    let (s, a) = call(&app, "POST", &snap(&id), json!({})).await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["names"], json!([]), "{a}");
    let a_id = a["snapshotID"].as_str().expect("snapshotID").to_string();
    let (s, b) = call(
        &app,
        "POST",
        &snap(&id),
        json!({"name": "before", "memory": true}),
    )
    .await;
    assert_eq!((s, &b["names"]), (201, &json!(["before"])), "{b}");
    let b_id = b["snapshotID"].as_str().expect("snapshotID").to_string();
    // what sandpool cannot honour is refused naming it
    for (body, field) in [
        (json!({"name": "before"}), "before"),
        (json!({"somethingNew": 1}), "somethingNew"),
    ] {
        let (s, v) = call(&app, "POST", &snap(&id), body).await;
        assert_eq!(s, 501, "{field}: {v}");
        assert_e2b_error(s, &v, field);
        assert!(
            v["message"].as_str().unwrap_or_default().contains(field),
            "{v}"
        );
    }
    // a sandbox that is not checkpointable: refused with the reason
    let runc = create(&app, json!({"templateID": "runc"})).await;
    let (s, v) = call(&app, "POST", &snap(&runc), Value::Null).await;
    assert_eq!(s, 501, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("checkpointable"),
        "{v}"
    );
    let (s, v) = call(&app, "POST", &snap("nope"), Value::Null).await;
    assert_eq!(s, 404, "{v}");
    list_restore_and_delete(&app, &id, (&a, &a_id), (&b, &b_id)).await;
}

/// The rest of the test above: its sandbox `id` has snapshots `a`
/// (unnamed) and then `b` (named "before").
async fn list_restore_and_delete(
    app: &axum::Router,
    id: &str,
    (a, a_id): (&Value, &str),
    (b, b_id): (&Value, &str),
) {
    let app = app.clone();
    // list: newest first, filtered, paged by x-next-token
    let (s, v) = call(&app, "GET", "/snapshots", Value::Null).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!([b, a]));
    let (_, v) = call(
        &app,
        "GET",
        &format!("/snapshots?sandboxID={id}x"),
        Value::Null,
    )
    .await;
    assert_eq!(v, json!([]));
    for q in ["before", "before:default", "team/before", b_id] {
        let (_, v) = call(&app, "GET", &format!("/snapshots?name={q}"), Value::Null).await;
        assert_eq!(v, json!([b]), "{q}");
    }
    let (s, h, v) = call_full(&app, http::Request::get("/snapshots?limit=1"), &Value::Null).await;
    assert_eq!((s, v), (200, json!([b])));
    let next = h["x-next-token"].to_str().expect("token").to_string();
    let (_, h, v) = call_full(
        &app,
        http::Request::get(format!("/snapshots?limit=1&nextToken={next}")),
        &Value::Null,
    )
    .await;
    assert_eq!(v, json!([a]));
    assert!(h.get("x-next-token").is_none());

    // a sandbox from a snapshot: its id or name (with a tag) as templateID
    for t in [a_id.to_string(), "before:default".to_string()] {
        let (s, v) = call(
            &app,
            "POST",
            "/sandboxes",
            json!({"templateID": t, "timeout": 60, "metadata": {"k": "v"}}),
        )
        .await;
        assert_eq!(s, 201, "{t}: {v}");
        let new = v["sandboxID"].as_str().expect("id");
        assert_ne!(new, id);
        assert_eq!(info(&app, new).await["metadata"]["k"], "v");
    }
    let (s, v) = call(
        &app,
        "POST",
        "/sandboxes",
        json!({"templateID": a_id, "envVars": {"A": "1"}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("envVars"),
        "{v}"
    );

    // delete (the SDK's DELETE /templates/{id}); then it is gone
    for (t, want) in [(a_id, 204), (a_id, 404), ("before", 204)] {
        let (s, v) = call(&app, "DELETE", &format!("/templates/{t}"), Value::Null).await;
        assert_eq!(s, want, "{t}: {v}");
    }
    let (_, v) = call(&app, "GET", "/snapshots", Value::Null).await;
    assert_eq!(v, json!([]));
    let (s, v) = call(&app, "DELETE", &format!("/templates/{b_id}"), Value::Null).await;
    assert_eq!(s, 404, "{v}");
    assert_e2b_error(s, &v, "a deleted snapshot");
}

#[tokio::test]
async fn fork_makes_count_sandboxes_from_one_checkpoint() {
    let app = platform().await;
    let id = create(&app, json!({"templateID": "ck-pool"})).await;
    let fork = format!("/sandboxes/{id}/fork");
    let (s, v) = call(&app, "POST", &fork, json!({"count": 2, "timeout": 30})).await;
    assert_eq!(s, 201, "{v}");
    let forks = v.as_array().expect("list");
    assert_eq!(forks.len(), 2, "{v}");
    for f in forks {
        let new = f["sandbox"]["sandboxID"].as_str().expect("sandbox");
        assert_ne!(new, id);
        assert_eq!(info(&app, new).await["state"], "running");
    }
    // the source goes on; its one checkpoint is listed under its name
    assert_eq!(info(&app, &id).await["state"], "running");
    let (_, v) = call(
        &app,
        "GET",
        &format!("/snapshots?sandboxID={id}"),
        Value::Null,
    )
    .await;
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["names"], json!([format!("fork-of-{id}")]));
    for body in [
        json!({"count": 0}),
        json!({"count": 21}),
        json!({"timeout": -1}),
    ] {
        let (s, v) = call(&app, "POST", &fork, body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
    }
    let runc = create(&app, json!({"templateID": "runc"})).await;
    let (s, v) = call(&app, "POST", &format!("/sandboxes/{runc}/fork"), json!({})).await;
    assert_eq!(s, 501, "{v}");
    let why = v["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("fork of sandbox") && why.contains("checkpointable runsc template"),
        "{v}"
    );
}

#[tokio::test]
async fn a_signed_files_url_without_routing_reaches_the_sandbox_that_signed_it() {
    // a runtime answering `/files` with the query it got
    let app = axum::Router::new().route(
        "/files",
        axum::routing::get(
            |uri: http::Uri| async move { uri.query().unwrap_or_default().to_string() },
        ),
    );
    // envd's own port, on a loopback address of this test's alone
    let l = tokio::net::TcpListener::bind("127.0.0.93:49983")
        .await
        .expect("bind");
    tokio::spawn(async move { axum::serve(l, app).await });
    let fake = FakeScheduler::with_runtime_port(fake_runtime().await);
    let app = sandpool_gateway::app(Gateway::new(
        support::serve(fake.clone()).await,
        &[KEY.to_string()],
    ));
    let a = create(&app, json!({"templateID": "base"})).await;
    let b = create(&app, json!({"templateID": "base"})).await;
    for (id, token) in [(&a, "token-a"), (&b, "token-b")] {
        assert!(fake.update_claim(id, |c| {
            let sb = c.sandbox.get_or_insert_default();
            sb.access_token = token.into();
            // reached on its own address, as a networked sandbox
            (sb.ip, sb.runtime_port) = ("127.0.0.93".into(), 0);
        }));
    }
    // sha256("a.txt:read:user:token-b"), base64 without padding
    let signed =
        "/files?path=a.txt&username=user&signature=v1_gX2p/G7jWXB5XeA9/IDjNZMtZfuIzOjGubCnNyPQOjs";
    // no key, no E2B routing headers, no sandbox host: as a browser opens it
    let open = |uri: &str| {
        sandpool_testsupport::send(&app, http::Request::get(uri.to_string()), &Value::Null)
    };
    let (s, _, body) = open(signed).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).starts_with("path=a.txt&username=user&signature="));
    // a signature no sandbox made routes nowhere: E2B's 404
    let forged = "/files?path=a.txt&username=user&signature=v1_AAAA";
    assert_eq!(open(forged).await.0, 404);
    // nor does one of a sandbox that has gone
    let (s, _) = call(&app, "DELETE", &format!("/sandboxes/{b}"), Value::Null).await;
    assert_eq!(s, 204);
    assert_eq!(open(signed).await.0, 404);
}

#[tokio::test]
async fn each_fork_succeeds_or_fails_on_its_own() {
    let fake = FakeScheduler::with_runtime_port(fake_runtime().await);
    let app = sandpool_gateway::app(Gateway::new(
        support::serve(fake.clone()).await,
        &[KEY.to_string()],
    ));
    let id = create(&app, json!({"templateID": "ck-pool"})).await;
    // room for two of the three forks
    *fake.restores_left.lock() = Some(2);
    let (s, v) = call(
        &app,
        "POST",
        &format!("/sandboxes/{id}/fork"),
        json!({"count": 3}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let forks = v.as_array().expect("one result per fork");
    assert_eq!(forks.len(), 3, "{v}");
    let made: Vec<&str> = forks
        .iter()
        .filter_map(|f| f["sandbox"]["sandboxID"].as_str())
        .collect();
    assert_eq!(made.len(), 2, "{v}");
    for new in made {
        assert_eq!(info(&app, new).await["state"], "running", "{new}");
    }
    let failed: Vec<&Value> = forks.iter().filter(|f| f.get("error").is_some()).collect();
    assert_eq!(failed.len(), 1, "{v}");
    assert_eq!(failed[0]["error"]["code"], json!(429), "{v}");
}

#[tokio::test]
async fn auto_pause_reaches_the_scheduler_and_shows_in_the_lifecycle() {
    let app = platform().await;
    let paused = create(
        &app,
        json!({"templateID": "base", "timeout": 3, "autoPause": true, "autoResume": {"enabled": false}}),
    )
    .await;
    let v = info(&app, &paused).await;
    assert_eq!(
        v["lifecycle"],
        json!({"onTimeout": "pause", "autoResume": false}),
        "{v}"
    );
    let killed = create(&app, json!({"templateID": "base", "timeout": 3})).await;
    let v = info(&app, &killed).await;
    assert_eq!(v["lifecycle"]["onTimeout"], json!("kill"), "{v}");
    // autoResume without autoPause: nothing to resume from
    let (s, v) = call(
        &app,
        "POST",
        "/sandboxes",
        json!({"templateID": "base", "autoResume": {"enabled": true}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("autoResume")),
        "{v}"
    );
}

#[tokio::test]
async fn traffic_to_a_paused_auto_resume_sandbox_resumes_it_for_its_timeout() {
    let app = platform().await;
    let id = create(
        &app,
        json!({"templateID": "base", "timeout": 600, "autoPause": true, "autoResume": {"enabled": true}}),
    )
    .await;
    let v = info(&app, &id).await;
    assert_eq!(
        v["lifecycle"],
        json!({"onTimeout": "pause", "autoResume": true}),
        "{v}"
    );
    let (s, v) = call(&app, "POST", &format!("/sandboxes/{id}/pause"), Value::Null).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(info(&app, &id).await["state"], json!("paused"));
    // a request routed to it by E2B's headers wakes it (whatever the
    // sandbox then answers, it is no longer the proxy's 502)
    let (s, v) = sandbox_call(&app, &id, 49983, "/health").await;
    assert_ne!(v["message"], json!("The sandbox was not found"), "{s}: {v}");
    let v = info(&app, &id).await;
    assert_eq!(v["state"], json!("running"), "{v}");
    // with a fresh run of the timeout it was created with
    let end = chrono::DateTime::parse_from_rfc3339(v["endAt"].as_str().unwrap_or_default())
        .map(|t| t.timestamp_millis())
        .unwrap_or_default();
    let left = end - chrono::Utc::now().timestamp_millis();
    assert!((590_000..=600_000).contains(&left), "{left} ms left: {v}");
    // without autoResume, a paused sandbox stays paused and unreachable
    let plain = create(&app, json!({"templateID": "base", "autoPause": true})).await;
    let (s, _) = call(
        &app,
        "POST",
        &format!("/sandboxes/{plain}/pause"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(sandbox_call(&app, &plain, 49983, "/health").await.0, 502);
    assert_eq!(info(&app, &plain).await["state"], json!("paused"));
    // nor does the OpenSandbox proxy route resume it
    let (s, v) = call(&app, "POST", &format!("/sandboxes/{id}/pause"), Value::Null).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = call(
        &app,
        "GET",
        &format!("/v1/sandboxes/{id}/proxy/49983/health"),
        Value::Null,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(info(&app, &id).await["state"], json!("paused"));
}

/// A sandbox port (on 127.0.0.1) answering each request with its head as
/// it arrived (`{"head": …}`): header names spelled as sent.
async fn head_echo() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = json!({"head": String::from_utf8_lossy(&head)}).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// The header lines of a request head `v["head"]` echoed by [`head_echo`].
fn head_lines(v: &Value) -> Vec<String> {
    let head = v["head"].as_str().unwrap_or_default();
    head.split("\r\n").map(str::to_string).collect()
}

#[tokio::test]
async fn mask_request_host_is_the_host_of_requests_into_the_sandbox() {
    // sandboxes on 127.0.0.1 with every port reachable
    let client = support::serve(FakeScheduler::default()).await;
    let app = sandpool_gateway::app(Gateway::new(client, &[KEY.to_string()]));
    let port = head_echo().await;
    let masked = create(
        &app,
        json!({"templateID": "base",
               "network": {"maskRequestHost": "custom-host.example.com:${PORT}"}}),
    )
    .await;
    let plain = create(&app, json!({"templateID": "base"})).await;
    let want = format!("Host: custom-host.example.com:{port}");
    // routed by E2B's headers and by a `{port}-{id}.{domain}` host alike;
    // a client's own X-Forwarded-Host does not replace the original host
    let by_headers = http::Request::get("/")
        .header("Host", "api.sandpool.test")
        .header("E2b-Sandbox-Id", &masked)
        .header("E2b-Sandbox-Port", port.to_string());
    let by_host = http::Request::get("/")
        .header("Host", format!("{port}-{masked}.sandpool.test"))
        .header("X-Forwarded-Host", "spoofed.example");
    for (req, orig) in [
        (by_headers, "api.sandpool.test".to_string()),
        (by_host, format!("{port}-{masked}.sandpool.test")),
    ] {
        let (s, _, v) = call_full(&app, req, &Value::Null).await;
        assert_eq!(s, 200, "{v}");
        let lines = head_lines(&v);
        // the spelling upstream's proxy writes, which E2B's test looks for
        assert!(lines.contains(&want), "{v}");
        assert!(lines.contains(&format!("X-Forwarded-Host: {orig}")), "{v}");
        let forwarded = lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-forwarded-host:"))
            .count();
        assert_eq!(forwarded, 1, "{v}");
    }
    // a sandbox without a mask: not masked
    let (s, v) = sandbox_call(&app, &plain, port, "/").await;
    assert_eq!(s, 200, "{v}");
    assert!(!head_lines(&v).contains(&want), "{v}");
    assert!(!v["head"].to_string().contains("X-Forwarded-Host"), "{v}");
    // shown back as given, as upstream's GET does
    let v = info(&app, &masked).await;
    assert_eq!(
        v["network"]["maskRequestHost"], "custom-host.example.com:${PORT}",
        "{v}"
    );
    // upstream's message for a malformed one
    let (s, v) = call(
        &app,
        "POST",
        "/sandboxes",
        json!({"templateID": "base", "network": {"maskRequestHost": "a:b:c"}}),
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (400, Some("mask request host is not valid: a:b:c")),
        "{v}"
    );
}

#[tokio::test]
async fn network_rules_become_the_sandboxs_vault_for_plain_http_only() {
    let fake = FakeScheduler::default();
    let client = support::serve(fake.clone()).await;
    let gw = Gateway::new(client, &[KEY.to_string()]);
    let app = sandpool_gateway::app(gw.clone());
    // the ports the claim's egress policy allows for `name`
    let allowed_ports = |id: &str, name: &str| {
        let mut ports = Vec::new();
        fake.update_claim(id, |c| {
            let rules = c.egress.iter().flat_map(|e| e.rules.iter());
            ports = rules.filter(|r| r.cidr == name).map(|r| r.port).collect();
        });
        ports
    };
    let rules =
        json!({"api.example.com": [{"transform": {"headers": {"X-Test-Token": "s3cret"}}}]});
    // the domain must be allowed by name
    let (s, v) = call(
        &app,
        "POST",
        "/sandboxes",
        json!({"templateID": "base", "network": {"rules": rules}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("network.allowOut"),
        "{v}"
    );
    let id = create(
        &app,
        json!({"templateID": "base", "network": {
            "allowOut": ["api.example.com"], "denyOut": ["0.0.0.0/0"], "rules": rules}}),
    )
    .await;
    let state = gw
        .vaults
        .lock()
        .get(&id)
        .map(|v| v.sanitized().expect("state"));
    let state = state.expect("the rules are the sandbox's vault");
    assert_eq!(state.bindings.len(), 1);
    assert_eq!(state.bindings[0].matcher.hosts, ["api.example.com"]);
    assert_eq!(state.bindings[0].matcher.ports, [80]);
    // never shown: the values stay out of every answer
    let v = info(&app, &id).await;
    assert!(!v.to_string().contains("s3cret"), "{v}");
    // HTTPS to the domain stays closed after a network update (at create:
    // `transforms` unit tests; the fake keeps no create-time policy)
    let (s, v) = call(
        &app,
        "PUT",
        &format!("/sandboxes/{id}/network"),
        json!({"allowOut": ["api.example.com", "other.example"], "denyOut": ["0.0.0.0/0"]}),
    )
    .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(allowed_ports(&id, "api.example.com"), [80]);
    assert_eq!(allowed_ports(&id, "other.example"), [80, 443]);
    // rules and the mask are set at create
    for body in [json!({"rules": rules}), json!({"maskRequestHost": "h"})] {
        let (s, v) = call(&app, "PUT", &format!("/sandboxes/{id}/network"), body).await;
        assert_eq!(s, 501, "{v}");
    }
    // a kill forgets the vault
    assert_eq!(
        call(&app, "DELETE", &format!("/sandboxes/{id}"), Value::Null)
            .await
            .0,
        204
    );
    assert!(gw.vaults.lock().get(&id).is_none());
}
