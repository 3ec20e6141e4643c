//! E2B templates through the real router against an in-memory scheduler:
//! pools listed and got as templates, and the template build flow (create,
//! file upload link and upload, start, status polling) with a builder that
//! records what it is asked for.

use std::{path::PathBuf, sync::Arc, time::Duration};

use parking_lot::Mutex;
use sandpool_gateway::{
    Gateway,
    e2b::{BuildFuture, BuildLog, BuildRequest, StepKind, TemplateBuilder},
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

fn pool(name: &str, image: &str, cpu: &str, memory: &str) -> pb::Pool {
    pb::Pool {
        name: name.into(),
        template: Some(pb::SandboxTemplate {
            image: image.into(),
            command: vec!["sleep".into(), "inf".into()],
            resources: Some(pb::Resources {
                cpu: cpu.into(),
                memory: memory.into(),
                pids: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn pools_are_listed_and_got_as_e2b_templates() {
    let fake = FakeScheduler::default();
    fake.pools.lock().insert(
        "app".into(),
        pool("app", "127.0.0.1:5000/app:1", "2", "512Mi"),
    );
    fake.pools
        .lock()
        .insert("base".into(), pool("base", "busybox", "", ""));
    let app = sandpool_gateway::app(Gateway::new(support::serve(fake).await, &[KEY.into()]));
    let (s, v) = call(&app, "POST", "/sandboxes", json!({"templateID": "app"})).await;
    assert_eq!(s, 201, "{v}");

    let (s, v) = call(&app, "GET", "/templates", Value::Null).await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| t["templateID"].as_str().expect("id"))
        .collect();
    assert_eq!(names, ["app", "base"]);
    let t = &v[0];
    assert_eq!(
        (t["cpuCount"].as_u64(), t["memoryMB"].as_u64()),
        (Some(2), Some(512))
    );
    assert_eq!(
        (t["spawnCount"].as_u64(), t["buildStatus"].as_str()),
        (Some(1), Some("ready"))
    );
    assert!(t["lastSpawnedAt"].is_string(), "{t}");
    assert!(v[1]["lastSpawnedAt"].is_null(), "{v}");

    let (s, t) = call(&app, "GET", "/templates/app", Value::Null).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["builds"][0]["buildID"], t["buildID"], "{t}");
    assert_eq!(t["builds"][0]["status"], "ready");
    let (s, a) = call(&app, "GET", "/templates/aliases/app", Value::Null).await;
    assert_eq!((s, a), (200, json!({"templateID": "app", "public": false})));

    for path in ["/templates/nope", "/templates/aliases/nope"] {
        let (s, v) = call(&app, "GET", path, Value::Null).await;
        assert_eq!((s, &v["code"]), (404, &json!(404)), "{path}: {v}");
    }
}

#[tokio::test]
async fn without_a_builder_template_builds_answer_501_saying_why() {
    let app = sandpool_gateway::app(Gateway::new(
        support::serve(FakeScheduler::default()).await,
        &[KEY.into()],
    ));
    let (s, v) = call(&app, "POST", "/v3/templates", json!({"name": "mine"})).await;
    assert_eq!(s, 501, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("buildah"),
        "{v}"
    );
}

/// Records its requests; "builds" by checking the uploaded files are there,
/// failing when a RUN step says `fail`.
struct Recorder {
    dir: PathBuf,
    asked: Mutex<Vec<BuildRequest>>,
}

impl TemplateBuilder for Recorder {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    fn files_dir(&self) -> PathBuf {
        self.dir.clone()
    }
    fn build(&self, req: BuildRequest, log: BuildLog) -> BuildFuture {
        self.asked.lock().push(req.clone());
        Box::pin(async move {
            for s in &req.steps {
                log(format!("step {}", s.index));
                if let StepKind::Run { cmd, .. } = &s.kind
                    && cmd.contains("fail")
                {
                    return Err(format!("step {} (RUN): exit status 1", s.index));
                }
            }
            Ok(())
        })
    }
}

async fn wait_done(app: &axum::Router, t: &str, b: &str) -> Value {
    for _ in 0..100 {
        let path = format!("/templates/{t}/builds/{b}/status?logsOffset=0");
        let (s, v) = call(app, "GET", &path, Value::Null).await;
        assert_eq!(s, 200, "{v}");
        if v["status"] == "ready" || v["status"] == "error" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("build {b} did not finish");
}

#[tokio::test]
async fn a_template_build_uploads_its_files_and_becomes_a_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = Arc::new(Recorder {
        dir: dir.path().join("files"),
        asked: Mutex::default(),
    });
    let fake = FakeScheduler::default();
    let gw = Gateway::new(support::serve(fake.clone()).await, &[KEY.into()])
        .with_template_builder(rec.clone());
    let app = sandpool_gateway::app(gw);

    let body = json!({"name": "mine", "cpuCount": 2, "memoryMB": 256});
    let (s, v) = call(&app, "POST", "/v3/templates", body).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        (&v["templateID"], &v["names"]),
        (&json!("mine"), &json!(["mine"]))
    );
    let build = v["buildID"].as_str().expect("build id").to_string();

    // the COPY step's files: not there, so a link to PUT them to
    let hash = "ab".repeat(32);
    let (s, v) = call(
        &app,
        "GET",
        &format!("/templates/mine/files/{hash}"),
        Value::Null,
    )
    .await;
    assert_eq!((s, &v["present"]), (201, &json!(false)), "{v}");
    let url = v["url"].as_str().expect("url");
    let path = url.strip_prefix("http://gw.test:3000").expect("our host");
    let req = http::Request::put(path);
    let (s, _, _) = sandpool_testsupport::send(&app, req, &json!("tar bytes")).await;
    assert_eq!(s, 200);
    // the link is used once, and the files are now there
    let (s, _, _) = sandpool_testsupport::send(&app, http::Request::put(path), &json!("x")).await;
    assert_eq!(s, 403);
    let (s, v) = call(
        &app,
        "GET",
        &format!("/templates/mine/files/{hash}"),
        Value::Null,
    )
    .await;
    assert_eq!((s, v), (201, json!({"present": true})));

    let start = json!({
        "fromImage": "127.0.0.1:5000/base:1",
        "steps": [
            {"type": "RUN", "args": ["echo hi > /hi"], "force": false},
            {"type": "COPY", "args": ["a.txt", "/app/", "", ""], "filesHash": hash},
        ],
        // no readyCmd: it is polled in a real sandbox of the template
        // (test_e2b_ready_cmd.py); this fake scheduler's has no runtime
        "startCmd": "sleep infinity",
    });
    let path = format!("/v2/templates/mine/builds/{build}");
    let (s, v) = call(&app, "POST", &path, start.clone()).await;
    assert_eq!(s, 202, "{v}");
    let done = wait_done(&app, "mine", &build).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert!(
        done["logs"].as_array().is_some_and(|l| !l.is_empty()),
        "{done}"
    );
    let asked = rec.asked.lock()[0].clone();
    assert_eq!(asked.base, "127.0.0.1:5000/base:1");
    assert_eq!(asked.steps.len(), 2);

    // the template is now a pool with the image, start command and resources
    let p = fake.pools.lock().get("mine").cloned().expect("pool made");
    let t = p.template.expect("template");
    assert_eq!(t.image, asked.image);
    assert_eq!(t.command, ["/bin/sh", "-c", "sleep infinity"]);
    let r = t.resources.expect("resources");
    assert_eq!((r.cpu.as_str(), r.memory.as_str()), ("2", "256Mi"));
    let (s, v) = call(&app, "GET", "/templates/mine", Value::Null).await;
    assert_eq!((s, &v["buildID"]), (200, &json!(build)), "{v}");
    // a started build is not started twice
    let (s, _) = call(&app, "POST", &path, start).await;
    assert_eq!(s, 409);
}

#[tokio::test]
async fn a_failed_build_reports_its_step_and_makes_no_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = Arc::new(Recorder {
        dir: dir.path().to_path_buf(),
        asked: Mutex::default(),
    });
    let fake = FakeScheduler::default();
    let gw =
        Gateway::new(support::serve(fake.clone()).await, &[KEY.into()]).with_template_builder(rec);
    let app = sandpool_gateway::app(gw);
    let (_, v) = call(&app, "POST", "/v3/templates", json!({"name": "bad"})).await;
    let build = v["buildID"].as_str().expect("build id").to_string();
    let path = format!("/v2/templates/bad/builds/{build}");
    // a COPY whose files were never uploaded is refused before the build
    let copy = json!({"fromImage": "busybox", "steps": [
        {"type": "COPY", "args": ["a", "/a"], "filesHash": "cd".repeat(32)}]});
    let (s, v) = call(&app, "POST", &path, copy).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("step 1 (COPY a)"),
        "{v}"
    );
    let run = json!({"fromImage": "busybox", "steps": [
        {"type": "ENV", "args": ["A", "1"]},
        {"type": "RUN", "args": ["fail now"]}]});
    let (s, v) = call(&app, "POST", &path, run).await;
    assert_eq!(s, 202, "{v}");
    let done = wait_done(&app, "bad", &build).await;
    assert_eq!(done["status"], "error", "{done}");
    assert_eq!(done["reason"]["step"], "2", "{done}");
    assert!(fake.pools.lock().get("bad").is_none());
}
