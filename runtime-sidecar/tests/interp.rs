//! The code interpreter (port 49999) on a loopback port: every path but
//! `/health` needs the token, and contexts are bounded in number and size.

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use reqwest::StatusCode;
use sandpool_runtime::AppState;
use serde_json::{Value, json};

mod support;

const TOKEN: &str = "interp-token";

/// The sandbox's traffic token, what the gateway hands E2B clients.
fn traffic() -> String {
    sandpool_proto::auth::traffic_token(TOKEN)
}

async fn serve() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config(TOKEN, dir.path(), dir.path().to_path_buf());
    let state = AppState::new(cfg).unwrap();
    (
        support::listen(sandpool_runtime::interp_app(state)).await,
        dir,
    )
}

/// The requests of every guarded route, with `headers` added.
async fn every_route(
    c: &reqwest::Client,
    base: &str,
    id: &str,
    headers: &[(&str, &str)],
) -> Vec<StatusCode> {
    let reqs = [
        c.get(format!("{base}/contexts")),
        c.post(format!("{base}/contexts"))
            .json(&json!({"cwd": "/tmp"})),
        c.post(format!("{base}/contexts/{id}/restart")),
        c.delete(format!("{base}/contexts/{id}")),
        c.post(format!("{base}/execute"))
            .json(&json!({"code": "1"})),
    ];
    let mut out = Vec::new();
    for mut r in reqs {
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        out.push(r.send().await.unwrap().status());
    }
    out
}

async fn create(c: &reqwest::Client, base: &str, body: Value) -> reqwest::Response {
    c.post(format!("{base}/contexts"))
        .header("e2b-traffic-access-token", traffic())
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_route_but_health_needs_the_token() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let made: Value = create(&c, &base, json!({})).await.json().await.unwrap();
    let id = made["id"].as_str().unwrap().to_string();
    let none = every_route(&c, &base, &id, &[]).await;
    assert_eq!(none, vec![StatusCode::UNAUTHORIZED; 5], "no token");
    let wrong = every_route(&c, &base, &id, &[("x-access-token", "nope")]).await;
    assert_eq!(wrong, vec![StatusCode::UNAUTHORIZED; 5], "wrong token");
    // the two tokens are not interchangeable
    let t = traffic();
    let swapped = [
        ("x-access-token", t.as_str()),
        ("e2b-traffic-access-token", TOKEN),
    ];
    let swapped = every_route(&c, &base, &id, &swapped).await;
    assert_eq!(swapped, vec![StatusCode::UNAUTHORIZED; 5], "swapped tokens");
    let r = c.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "health stays open");
    // what the e2b-code-interpreter SDK sends: the traffic token on context
    // management (list, create, restart, delete, in that order)
    let ok = every_route(&c, &base, &id, &[("e2b-traffic-access-token", &t)]).await;
    assert_eq!(
        ok[..4],
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::NO_CONTENT,
            StatusCode::NO_CONTENT
        ]
    );
    let r = c
        .get(format!("{base}/contexts"))
        .header("x-access-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the envd token works too");
}

#[tokio::test]
async fn contexts_are_bounded_in_number_and_size() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..32 {
        let r = create(&c, &base, json!({"cwd": format!("/tmp/{i}")})).await;
        assert_eq!(r.status(), StatusCode::OK, "context {i}");
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let r = create(&c, &base, json!({})).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the 33rd context"
    );
    let msg = r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("32 of 32"), "{msg}");
    let listed = list(&c, &base).await;
    assert_eq!(listed.len(), 33, "32 and the default one");
    // deleting one makes room again
    delete_context(&c, &base, &ids[0]).await;
    assert_eq!(create(&c, &base, json!({})).await.status(), StatusCode::OK);
    // a 1 MB cwd is refused (it used to be kept, 1 MB per context)
    let r = create(&c, &base, json!({"cwd": "/".repeat(1_000_000)})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = create(&c, &base, json!({"cwd": "x".repeat(5000)})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let msg = r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("at most 4096"), "{msg}");
    // too many environment variables on one execution
    let env: serde_json::Map<String, Value> = (0..300)
        .map(|i| (format!("K{i}"), Value::from("v")))
        .collect();
    let r = c
        .post(format!("{base}/execute"))
        .header("x-access-token", TOKEN)
        .json(&json!({"code": "1", "env_vars": env}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// The JSON lines of one `/execute` of `body`.
async fn exec(c: &reqwest::Client, base: &str, body: Value) -> Vec<Value> {
    support::execute_lines(c, base, TOKEN, body).await
}

/// What an execution printed on stdout.
fn stdout(lines: &[Value]) -> String {
    lines
        .iter()
        .filter(|l| l["type"] == "stdout")
        .filter_map(|l| l["text"].as_str())
        .collect()
}

/// An execution's `env_vars` hold for that execution only: a variable it
/// introduced is gone afterwards, one it overrode has its former value back.
#[tokio::test]
async fn execution_env_vars_apply_to_that_execution_only() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let show = "import os; print(os.getenv('FOO', 'unset'), os.getenv('KEEP', 'unset'))";
    exec(
        &c,
        &base,
        json!({"code": "import os; os.environ['KEEP'] = 'old'"}),
    )
    .await;
    let with = json!({"code": show, "env_vars": {"FOO": "bar", "KEEP": "new"}});
    assert_eq!(stdout(&exec(&c, &base, with).await), "bar new\n");
    let after = exec(&c, &base, json!({"code": show})).await;
    assert_eq!(stdout(&after), "unset old\n", "{after:?}");
}

/// The sandbox's env vars (E2B `envVars`, which reach the runtime through
/// envd's `/init`) are seen by the code the interpreter runs, and an
/// execution's own `env_vars` override them for that execution only.
#[tokio::test]
async fn sandbox_env_vars_from_envd_init_reach_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config(TOKEN, dir.path(), dir.path().to_path_buf());
    let state = AppState::new(cfg).unwrap();
    let envd = support::listen(sandpool_runtime::envd_app(state.clone())).await;
    let base = support::listen(sandpool_runtime::interp_app(state)).await;
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{envd}/init"))
        .header("x-access-token", TOKEN)
        .json(&json!({"envVars": {"TEST_ENV_VAR": "supertest"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let show = json!({"code": "import os; print(os.getenv('TEST_ENV_VAR'))"});
    assert_eq!(stdout(&exec(&c, &base, show.clone()).await), "supertest\n");
    let over = json!({"code": show["code"], "env_vars": {"TEST_ENV_VAR": "overwrite"}});
    assert_eq!(stdout(&exec(&c, &base, over).await), "overwrite\n");
    assert_eq!(stdout(&exec(&c, &base, show).await), "supertest\n");
}

async fn list(c: &reqwest::Client, base: &str) -> Vec<Value> {
    let r = c.get(format!("{base}/contexts"));
    let r = r.header("e2b-traffic-access-token", traffic());
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap().as_array().unwrap().clone()
}

/// Delete context `id`, which succeeds (204).
async fn delete_context(c: &reqwest::Client, base: &str, id: &str) {
    let r = c.delete(format!("{base}/contexts/{id}"));
    let r = r.header("e2b-traffic-access-token", traffic());
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// A default Python context is listed from the start (as upstream's, whose
/// id is a UUID), `/execute` without a context runs in it, and created
/// contexts are listed after it, the newest last.
#[tokio::test]
async fn the_default_context_is_listed_from_the_start() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let first = list(&c, &base).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let default = &first[0];
    assert_eq!(
        (&default["language"], &default["cwd"]),
        (&json!("python"), &json!("/home/user"))
    );
    let id = default["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    exec(&c, &base, json!({"code": "marker = 7"})).await;
    let in_default = json!({"code": "print(marker)", "context_id": id});
    assert_eq!(stdout(&exec(&c, &base, in_default).await), "7\n");
    let mut made = Vec::new();
    for _ in 0..3 {
        let v: Value = create(&c, &base, json!({})).await.json().await.unwrap();
        made.push(v["id"].clone());
    }
    let ids: Vec<Value> = list(&c, &base)
        .await
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids[0], json!(id));
    assert_eq!(ids[1..], made[..], "creation order");
    // deleted, it is made again (same id, fresh state) by the next execution
    delete_context(&c, &base, &id).await;
    let out = exec(&c, &base, json!({"code": "print('marker' in globals())"})).await;
    assert_eq!(stdout(&out), "False\n");
    assert_eq!(list(&c, &base).await.last().unwrap()["id"], json!(id));
}

/// A client that gives up on an execution (its timeout) interrupts it: the
/// next execution in the context runs at once, and the context keeps its
/// state (an interrupt, not a restart).
#[tokio::test]
async fn a_client_that_leaves_interrupts_its_execution() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    exec(&c, &base, json!({"code": "kept = 41"})).await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(1))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{base}/execute"))
        .header("x-access-token", TOKEN)
        .json(&json!({"code": "import time\ntime.sleep(120)"}))
        .send()
        .await;
    let gave_up = match r {
        Ok(r) => r.text().await.is_err(),
        Err(e) => e.is_timeout(),
    };
    assert!(gave_up, "the client timed out");
    let started = std::time::Instant::now();
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        exec(&c, &base, json!({"code": "print(kept + 1)"})),
    )
    .await
    .expect("the next execution is not stuck behind the abandoned one");
    assert_eq!(stdout(&next), "42\n", "{next:?}");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}

/// The `text` of an execution's result.
fn result_text(lines: &[Value]) -> Option<String> {
    let r = lines.iter().find(|l| l["type"] == "result")?;
    assert_eq!(r["is_main_result"], true, "{r}");
    r["text"].as_str().map(str::to_string)
}

/// A result's text is what upstream answers: the value's text without one
/// pair of enclosing quotes (`bar` for the string 'bar').
#[tokio::test]
async fn result_text_drops_the_quotes_of_a_string() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let cases = [
        ("x = 'bar'\nx", "bar"),
        ("\"it's\"", "it's"),
        ("import os; os.getenv('HOME_NOT_SET', 'default')", "default"),
        ("1 + 1", "2"),
        ("['a', 'b']", "['a', 'b']"),
        ("''", ""),
    ];
    for (code, want) in cases {
        let out = exec(&c, &base, json!({"code": code})).await;
        assert_eq!(result_text(&out).as_deref(), Some(want), "{code}: {out:?}");
    }
}

/// A line `!cmd` is IPython's shell escape: `cmd` runs in a shell, its
/// output is the cell's, and the Python lines around it run as usual.
#[tokio::test]
async fn a_bang_line_runs_a_shell_command() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let code = "x = 2\n!echo from-sh $((1+2))\nif True:\n    !cd /tmp && pwd\nprint('py', x)";
    let lines = exec(&c, &base, json!({"code": code})).await;
    assert_eq!(stdout(&lines), "from-sh 3\n/tmp\npy 2\n", "{lines:?}");
    assert!(!lines.iter().any(|l| l["type"] == "error"), "{lines:?}");
}

/// `language: "bash"` runs the code in bash, with the execution's env vars
/// (for that execution only); a bash context is listed as such; a language
/// without its kernel here is upstream's 500 naming the language (and those
/// that run here); a run naming both a context and a language is a 400.
#[tokio::test]
async fn bash_code_runs_in_bash_with_the_executions_env() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let with = json!({"code": "echo $FOO; echo ${BASH_VERSION:+bash}", "language": "bash",
        "env_vars": {"FOO": "bar"}});
    let lines = exec(&c, &base, with).await;
    assert_eq!(stdout(&lines), "bar\nbash\n", "{lines:?}");
    let after = json!({"code": "echo ${FOO:-default}", "language": "bash"});
    assert_eq!(stdout(&exec(&c, &base, after).await), "default\n");
    let r = create(&c, &base, json!({"language": "bash", "cwd": "/tmp"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let ctx: Value = r.json().await.unwrap();
    assert_eq!(ctx["language"], "bash");
    let pwd = json!({"code": "pwd", "context_id": ctx["id"]});
    assert_eq!(stdout(&exec(&c, &base, pwd).await), "/tmp\n");
    let r = c
        .post(format!("{base}/execute"))
        .header("x-access-token", TOKEN)
        .json(&json!({"code": "1", "language": "R"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("\"r\"") && msg.contains("python"), "{v}");
    let r = create(&c, &base, json!({"language": "cobol"})).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let both = json!({"code": "1", "language": "python", "context_id": ctx["id"]});
    let r = c
        .post(format!("{base}/execute"))
        .header("x-access-token", TOKEN)
        .json(&both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}
