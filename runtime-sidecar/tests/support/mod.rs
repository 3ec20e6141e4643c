//! Shared by the loopback-port integration tests: a runtime config with its
//! state under a tempdir, an app served on a free loopback port, envd served
//! that way, a unary Connect call, a request's JSON answer and the JSON lines
//! of a code interpreter `/execute`.

// shared by several test crates: not every one uses every item
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sandpool_runtime::{AppState, Config};
use serde_json::Value;

/// A config with `token`, data under `dir` and `home` as the user's home
/// (relative paths resolve there, never against the real $HOME).
pub fn config(token: &str, dir: &Path, home: PathBuf) -> Config {
    Config {
        access_token: Some(token.into()),
        data_dir: dir.join("d"),
        home: Some(home),
        ..Config::default()
    }
}

/// Serve `app` on a free loopback port until the test ends; its base URL.
pub async fn listen(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(sandpool_runtime::serve_app(l, app, std::future::pending()));
    base
}

/// envd with `token` on a free loopback port, its home (with the `dirs`
/// under it) in a tempdir; few inotify instances (tests run in parallel
/// under one user's 128).
pub async fn serve_envd(token: &str, dirs: &[&str]) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    for d in dirs {
        std::fs::create_dir_all(home.join(d)).unwrap();
    }
    let cfg = Config {
        max_watchers: 4,
        ..config(token, dir.path(), home)
    };
    let state = AppState::new(cfg).unwrap();
    (listen(sandpool_runtime::envd_app(state)).await, dir)
}

/// A unary Connect call (or JSON POST) with `token` and extra `headers`:
/// its status and JSON answer (`Null` when it has none).
pub async fn unary(
    c: &reqwest::Client,
    (base, token): (&str, &str),
    method: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut r = c
        .post(format!("{base}/{method}"))
        .header("x-access-token", token)
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Send `req`; its answer's JSON body.
pub async fn json_of(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// The JSON lines of one code interpreter `/execute` of `body` at `base`
/// (asserted 200).
pub async fn execute_lines(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    body: Value,
) -> Vec<Value> {
    let r = c
        .post(format!("{base}/execute"))
        .header("x-access-token", token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let text = r.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
