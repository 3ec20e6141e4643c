//! execd's code interpreter API (`/code`) on a loopback port, with the
//! host's python3 (the plain driver when it has no Jupyter kernel; the
//! builtin code-interpreter image runs ipykernel, see the lifecycle tests).

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use sandpool_runtime::AppState;
use serde_json::{Value, json};

mod support;

const TOKEN: &str = "code-token";

async fn serve() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config(TOKEN, dir.path(), dir.path().to_path_buf());
    let state = AppState::new(cfg).unwrap();
    (support::listen(sandpool_runtime::app(state)).await, dir)
}

fn client() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("x-execd-access-token", TOKEN.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// `POST /code` with `body`.
async fn post_code(c: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    c.post(format!("{base}/code"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The URL of context `ctx` (a context's JSON).
fn context_url(base: &str, ctx: &Value) -> String {
    format!("{base}/code/contexts/{}", ctx["id"].as_str().unwrap())
}

/// The events of one `/code` run.
async fn run(c: &reqwest::Client, base: &str, body: Value) -> Vec<Value> {
    let r = post_code(c, base, &body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| serde_json::from_str(f).unwrap())
        .collect()
}

fn kinds(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t != "ping")
        .collect()
}

async fn create(c: &reqwest::Client, base: &str, language: &str) -> reqwest::Response {
    c.post(format!("{base}/code/context"))
        .json(&json!({"language": language}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_python_context_keeps_state_and_reports_results_and_errors() {
    let (base, _dir) = serve().await;
    let c = client();
    let r = create(&c, &base, "python").await;
    assert_eq!(r.status(), StatusCode::OK);
    let ctx: Value = r.json().await.unwrap();
    let id = ctx["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{ctx}");
    assert_eq!(ctx["language"], "python");
    let body = |code: &str| json!({"code": code, "context": {"id": id, "language": "python"}});
    let evs = run(&c, &base, body("print('hi')\nx = 2 + 2\nx")).await;
    assert_eq!(
        kinds(&evs),
        [
            "init",
            "stdout",
            "execution_count",
            "result",
            "execution_complete"
        ],
        "{evs:?}"
    );
    assert_eq!(evs[0]["text"], id);
    assert_eq!(evs[1]["text"], "hi\n");
    assert_eq!(evs[3]["results"]["text"], "4");
    let evs = run(&c, &base, body("x * 10")).await;
    assert_eq!(evs[2]["results"]["text"], "40", "{evs:?}");
    let evs = run(&c, &base, body("undefined_name")).await;
    assert_eq!(
        kinds(&evs),
        ["init", "status", "error", "execution_complete"],
        "{evs:?}"
    );
    assert_eq!(evs[1]["text"], "error");
    assert_eq!(evs[2]["error"]["ename"], "NameError");
    assert!(
        evs[2]["error"]["evalue"]
            .as_str()
            .unwrap()
            .contains("undefined_name")
    );
    assert!(
        evs[2]["error"]["traceback"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
}

#[tokio::test]
async fn contexts_are_created_listed_fetched_and_deleted() {
    let (base, _dir) = serve().await;
    let c = client();
    let a: Value = create(&c, &base, "bash").await.json().await.unwrap();
    let b: Value = create(&c, &base, "bash").await.json().await.unwrap();
    let p: Value = create(&c, &base, "python").await.json().await.unwrap();
    let list = |q: &'static str| {
        let c = c.clone();
        let base = base.clone();
        async move {
            let v = support::json_of(c.get(format!("{base}/code/contexts{q}"))).await;
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list("?language=bash").await,
        [a["id"].as_str().unwrap(), b["id"].as_str().unwrap()]
    );
    assert_eq!(list("").await.len(), 3);
    let got = support::json_of(c.get(context_url(&base, &a))).await;
    assert_eq!(got, json!({"id": a["id"], "language": "bash"}));
    let r = c.delete(context_url(&base, &a)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(context_url(&base, &a)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "CONTEXT_NOT_FOUND");
    let r = c
        .delete(format!("{base}/code/contexts?language=bash"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(list("?language=bash").await.is_empty());
    assert_eq!(list("").await, [p["id"].as_str().unwrap()]);
    let r = c
        .delete(format!("{base}/code/contexts"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bash_runs_and_languages_not_here_are_named_in_the_error() {
    let (base, _dir) = serve().await;
    let c = client();
    let evs = run(
        &c,
        &base,
        json!({"code": "echo from-bash", "context": {"language": "bash"}}),
    )
    .await;
    assert_eq!(
        kinds(&evs),
        ["init", "stdout", "execution_complete"],
        "{evs:?}"
    );
    assert_eq!(evs[1]["text"], "from-bash\n");
    let r = create(&c, &base, "java").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "RUNTIME_ERROR");
    assert!(e["message"].as_str().unwrap().contains("\"java\""), "{e}");
    let r = post_code(
        &c,
        &base,
        &json!({"code": "1", "context": {"language": "go"}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.text().await.unwrap().contains("\\\"go\\\""));
    let r = post_code(
        &c,
        &base,
        &json!({"code": "1", "context": {"id": "nope", "language": "python"}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let r = post_code(&c, &base, &json!({"context": {"language": "python"}})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_interrupt_ends_the_running_cell_and_the_context_stays_usable() {
    let (base, _dir) = serve().await;
    let c = client();
    let ctx: Value = create(&c, &base, "python").await.json().await.unwrap();
    let id = ctx["id"].as_str().unwrap().to_string();
    let body = json!({"code": "import time\nfor i in range(300):\n    time.sleep(0.1)", "context": {"id": id, "language": "python"}});
    let long = tokio::spawn({
        let (c, base) = (c.clone(), base.clone());
        async move { run(&c, &base, body).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let busy = post_code(
        &c,
        &base,
        &json!({"code": "1", "context": {"id": id, "language": "python"}}),
    )
    .await;
    assert_eq!(busy.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(busy.text().await.unwrap().contains("session is busy"));
    let r = c
        .delete(format!("{base}/code?id={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let evs = tokio::time::timeout(std::time::Duration::from_secs(10), long)
        .await
        .unwrap()
        .unwrap();
    let err = evs.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(err["error"]["ename"], "KeyboardInterrupt", "{evs:?}");
    let evs = run(
        &c,
        &base,
        json!({"code": "2 + 3", "context": {"id": id, "language": "python"}}),
    )
    .await;
    assert_eq!(
        evs.iter().find(|e| e["type"] == "result").unwrap()["results"]["text"],
        "5"
    );
    let r = c.delete(format!("{base}/code")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
