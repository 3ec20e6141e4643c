//! The code interpreter's pre-started default kernel (`Prestart::On`): the
//! default Python context's process runs before any `/execute` (as the
//! runtime starts, while the sandbox waits warm), the first run is served
//! by it, and it sees the sandbox's env vars as they are at the run: set
//! after it started (envd's `/init` at claim time) they are taken in place,
//! a name only read at start-up replaces it; an execution's own `env_vars`
//! never outlive it.
//!
//! (This machine's `python3` has no ipykernel: the context's process is the
//! plain driver under the bridge, which speaks the same protocol.)

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use sandpool_runtime::{AppState, interp::Prestart};
use serde_json::{Value, json};

mod support;

const TOKEN: &str = "prestart-token";
const MARKER: &str = "SANDPOOL_TEST_PRESTART_MARKER";

/// The interpreter with a pre-started kernel, and envd beside it, sharing
/// one state whose env holds `MARKER=marker` from the start.
async fn serve(marker: &str) -> (String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::config(TOKEN, dir.path(), dir.path().to_path_buf());
    cfg.interp_prestart = Prestart::On;
    let state = AppState::new(cfg).unwrap();
    state
        .sandbox_env
        .lock()
        .insert(MARKER.into(), marker.into());
    let envd = support::listen(sandpool_runtime::envd_app(state.clone())).await;
    let interp = support::listen(sandpool_runtime::interp_app(state)).await;
    (interp, envd, dir)
}

/// The parent of process `pid` (the 4th field of its stat, after its name).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The child of this test process with `MARKER=marker` in its environment:
/// the pre-started context process (waited for: it is spawned by a task).
async fn prestarted(marker: &str) -> u32 {
    let me = std::process::id();
    let want = format!("{MARKER}={marker}");
    for _ in 0..400 {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if ppid(pid) != Some(me) {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no pre-started context process with {want}");
}

/// The main result text of one `/execute` of `body` (the value of its last
/// expression).
async fn result(c: &reqwest::Client, base: &str, body: Value) -> String {
    let lines = support::execute_lines(c, base, TOKEN, body).await;
    lines
        .iter()
        .find(|l| l["type"] == "result")
        .and_then(|l| l["text"].as_str())
        .unwrap_or_else(|| panic!("no result: {lines:?}"))
        .to_string()
}

/// The context process's pid and the values of `names` in its environment,
/// as the code it runs sees them.
fn probe(names: &[&str]) -> Value {
    json!({"code": format!("import os; (os.getpid(), [os.environ.get(n) for n in {names:?}])")})
}

async fn init(c: &reqwest::Client, envd: &str, env: Value) {
    let r = c
        .post(format!("{envd}/init"))
        .header("x-access-token", TOKEN)
        .json(&json!({ "envVars": env }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// Before any run the default context is listed and its process is up; the
/// first run (no context named) is served by that process.
#[tokio::test]
async fn the_default_context_has_its_kernel_before_the_first_run() {
    let marker = uuid::Uuid::new_v4().to_string();
    let (base, _envd, _d) = serve(&marker).await;
    let pid = prestarted(&marker).await;
    let c = reqwest::Client::new();
    let listed: Value = c
        .get(format!("{base}/contexts"))
        .header(
            "e2b-traffic-access-token",
            sandpool_proto::auth::traffic_token(TOKEN),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["language"], "python");
    let first = result(&c, &base, probe(&[MARKER])).await;
    assert_eq!(first, format!("({pid}, ['{marker}'])"));
}

/// Env vars set through envd's `/init` after the kernel started (a claim's
/// `envVars`) are seen by the first run, in the same process; those the
/// sandbox no longer has are gone; an execution's own `env_vars` hold for
/// that execution only.
#[tokio::test]
async fn claim_time_env_vars_reach_the_prestarted_kernel_in_place() {
    let marker = uuid::Uuid::new_v4().to_string();
    let (base, envd, _d) = serve(&marker).await;
    let pid = prestarted(&marker).await;
    let c = reqwest::Client::new();
    init(
        &c,
        &envd,
        json!({"CLAIM_ENV": "from the claim", MARKER: "changed"}),
    )
    .await;
    let names = [MARKER, "CLAIM_ENV", "PER_RUN"];
    let seen = result(&c, &base, probe(&names)).await;
    assert_eq!(
        seen,
        format!("({pid}, ['changed', 'from the claim', None])")
    );
    let mut with = probe(&names);
    with["env_vars"] = json!({"PER_RUN": "1", "CLAIM_ENV": "overridden"});
    let during = result(&c, &base, with).await;
    assert_eq!(during, format!("({pid}, ['changed', 'overridden', '1'])"));
    let after = result(&c, &base, probe(&names)).await;
    assert_eq!(
        after,
        format!("({pid}, ['changed', 'from the claim', None])"),
        "an execution's env_vars leaked"
    );
}

/// A name the interpreter reads only as it starts (`PYTHONPATH`) set after
/// the kernel started: the kernel is replaced by one started with it, never
/// served without it.
#[tokio::test]
async fn a_start_only_env_var_replaces_the_prestarted_kernel() {
    let marker = uuid::Uuid::new_v4().to_string();
    let (base, envd, dir) = serve(&marker).await;
    let pid = prestarted(&marker).await;
    let c = reqwest::Client::new();
    let extra = dir.path().join("extra-path");
    std::fs::create_dir_all(&extra).unwrap();
    let extra = extra.to_string_lossy().into_owned();
    init(&c, &envd, json!({"PYTHONPATH": extra})).await;
    let body =
        json!({"code": "import os, sys; (os.getpid(), os.environ.get('PYTHONPATH') in sys.path)"});
    let seen = result(&c, &base, body).await;
    let (new_pid, on_path) = seen
        .trim_matches(|ch| ch == '(' || ch == ')')
        .split_once(", ")
        .unwrap();
    assert_ne!(new_pid, pid.to_string(), "the stale kernel served the run");
    assert_eq!(on_path, "True", "{seen}");
}
