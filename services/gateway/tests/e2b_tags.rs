//! E2B template tags (`POST`/`DELETE /templates/tags`,
//! `GET /templates/{id}/tags`) through the real router against an
//! in-memory scheduler, with a builder that builds nothing.

use std::{path::PathBuf, sync::Arc, time::Duration};

use sandpool_gateway::{
    Gateway,
    e2b::{BuildFuture, BuildLog, BuildRequest, TemplateBuilder},
};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

mod support;
use support::FakeScheduler;

const KEY: &str = "platform-key";

async fn call(app: &axum::Router, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw.test:3000");
    let (s, _, v) = support::call_full(app, req, KEY, &body).await;
    (s, v)
}

struct Instant(PathBuf);

impl TemplateBuilder for Instant {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    fn files_dir(&self) -> PathBuf {
        self.0.clone()
    }
    fn build(&self, _: BuildRequest, _: BuildLog) -> BuildFuture {
        Box::pin(async { Ok(()) })
    }
}

/// Build template `name` with `tags`; its build id once ready.
async fn build(app: &axum::Router, name: &str, tags: &[&str]) -> String {
    let (s, v) = call(
        app,
        "POST",
        "/v3/templates",
        json!({"name": name, "tags": tags}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let b = v["buildID"].as_str().expect("build id").to_string();
    let start = json!({"fromImage": "busybox", "steps": [], "startCmd": "sleep infinity"});
    let (s, v) = call(
        app,
        "POST",
        &format!("/v2/templates/{name}/builds/{b}"),
        start,
    )
    .await;
    assert_eq!(s, 202, "{v}");
    for _ in 0..100 {
        let path = format!("/templates/{name}/builds/{b}/status");
        let (_, v) = call(app, "GET", &path, Value::Null).await;
        if v["status"] == "ready" {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("build {b} did not finish");
}

async fn tags(app: &axum::Router, id: &str) -> Vec<(String, String)> {
    let (s, v) = call(app, "GET", &format!("/templates/{id}/tags"), Value::Null).await;
    assert_eq!(s, 200, "{v}");
    let mut out: Vec<(String, String)> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| {
            assert!(t["createdAt"].is_string(), "{t}");
            (
                t["tag"].as_str().unwrap_or_default().to_string(),
                t["buildID"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A gateway whose builds finish at once, with a pool `plain` no build made.
async fn app_with_plain_pool(dir: &std::path::Path) -> axum::Router {
    let fake = FakeScheduler::default();
    fake.pools.lock().insert(
        "plain".into(),
        pb::Pool {
            name: "plain".into(),
            template: Some(pb::SandboxTemplate {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let gw = Gateway::new(support::serve(fake).await, &[KEY.into()])
        .with_template_builder(Arc::new(Instant(dir.to_path_buf())));
    sandpool_gateway::app(gw)
}

#[tokio::test]
async fn tags_are_assigned_listed_and_removed_on_the_build_a_template_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app_with_plain_pool(dir.path()).await;

    let b1 = build(&app, "app", &["v1"]).await;
    assert_eq!(tags(&app, "app").await, [("v1".to_string(), b1.clone())]);
    let (s, v) = call(
        &app,
        "POST",
        "/templates/tags",
        json!({"target": "app:v1", "tags": ["prod", "stable"]}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v, json!({"tags": ["prod", "stable"], "buildID": b1}));
    let all = tags(&app, "app").await;
    let names: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["prod", "stable", "v1"]);
    assert!(all.iter().all(|(_, b)| *b == b1), "{all:?}");

    let (s, _) = call(
        &app,
        "DELETE",
        "/templates/tags",
        json!({"name": "app", "tags": ["stable", "never-was"]}),
    )
    .await;
    assert_eq!(s, 204);
    let names: Vec<String> = tags(&app, "app")
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(names, ["prod", "v1"]);

    // a newer build is what the template runs; a tag left on the older
    // one cannot be served
    let b2 = build(&app, "app", &["v2"]).await;
    assert_eq!(tags(&app, "app").await, [("v2".to_string(), b2.clone())]);
    let (s, v) = call(
        &app,
        "POST",
        "/templates/tags",
        json!({"target": "app:v1", "tags": ["x"]}),
    )
    .await;
    assert_eq!(s, 501, "{v}");
    assert!(
        v["message"].as_str().unwrap_or_default().contains(&b1),
        "{v}"
    );
    // no such tag, no such template, bad tags
    for (body, code) in [
        (json!({"target": "app:nope", "tags": ["x"]}), 404),
        (json!({"target": "ghost:v1", "tags": ["x"]}), 404),
        (json!({"target": "app:v2", "tags": []}), 400),
        (json!({"target": "app:v2", "tags": ["a b"]}), 400),
        (json!({"tags": ["x"]}), 400),
    ] {
        let (s, v) = call(&app, "POST", "/templates/tags", body.clone()).await;
        assert_eq!(s, code, "{body}: {v}");
    }
    let (s, _) = call(&app, "GET", "/templates/ghost/tags", Value::Null).await;
    assert_eq!(s, 404);

    // a create of name:tag runs the build with that tag, or says why not
    for (template, code) in [
        ("app:v2", 201),
        ("app", 201),
        ("app:nope", 404),
        ("app:v1", 501),
    ] {
        let (s, v) = call(&app, "POST", "/sandboxes", json!({"templateID": template})).await;
        assert_eq!(s, code, "{template}: {v}");
    }
}

#[tokio::test]
async fn a_pool_no_build_made_lists_default_and_keeps_its_tags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app_with_plain_pool(dir.path()).await;
    let plain = tags(&app, "plain").await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].0, "default");
    let (s, v) = call(
        &app,
        "POST",
        "/templates/tags",
        json!({"target": "plain", "tags": ["x"]}),
    )
    .await;
    assert_eq!(s, 501, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("template build"),
        "{v}"
    );
}

#[tokio::test]
async fn template_routes_sandpool_does_not_serve_answer_501_naming_them() {
    let gw = Gateway::new(
        support::serve(FakeScheduler::default()).await,
        &[KEY.into()],
    );
    let app = sandpool_gateway::app(gw);
    for (method, path) in [
        ("POST", "/templates"),
        ("POST", "/v2/templates"),
        ("GET", "/v2/templates"),
        ("POST", "/templates/app"),
        ("PATCH", "/templates/app"),
        ("PATCH", "/v2/templates/app"),
        ("POST", "/templates/app/builds/b1"),
        ("GET", "/default-templates"),
        ("GET", "/templates/app/tags/count"),
        ("GET", "/templates/app/tags/exists"),
        ("GET", "/templates/app/tags/v1/assignments"),
    ] {
        let (s, v) = call(&app, method, path, json!({})).await;
        assert_eq!(s, 501, "{method} {path}: {v}");
        let m = v["message"].as_str().unwrap_or_default();
        assert!(m.contains(&format!("{method} {path}")), "{m}");
        assert!(m.contains("not supported by sandpool"), "{m}");
    }
}
