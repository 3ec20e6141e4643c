//! The agent-sandbox runtime API (port 8888) served on a loopback port, with
//! the request and response shapes the k8s-agent-sandbox SDK sends and parses.

#![allow(clippy::unwrap_used)]

use sandpool_runtime::{AppState, Config};
use serde_json::{Value, json};

mod support;

struct Server {
    base: String,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("app");
    std::fs::create_dir_all(&root).unwrap();
    let state = AppState::new(Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    })
    .unwrap();
    let app = sandpool_runtime::asb_app(state, root.clone());
    Server {
        base: support::listen(app).await,
        root,
        _dir: dir,
    }
}

impl Server {
    /// `GET {path}` on the server.
    async fn get(&self, c: &reqwest::Client, path: &str) -> reqwest::Response {
        c.get(format!("{}/{path}", self.base)).send().await.unwrap()
    }

    /// `POST /execute` with `body`: its JSON answer.
    async fn execute(&self, c: &reqwest::Client, body: Value) -> Value {
        support::json_of(c.post(format!("{}/execute", self.base)).json(&body)).await
    }
}

fn multipart(filename: &str, content: &[u8]) -> (String, Vec<u8>) {
    let b = "asbBoundary7";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

#[tokio::test]
async fn execute_runs_a_shell_command_in_the_root_and_reports_its_exit() {
    let s = start().await;
    let c = reqwest::Client::new();
    let r = s
        .execute(
            &c,
            json!({"command": "pwd; echo out; echo err >&2; exit 3"}),
        )
        .await;
    let root = s.root.to_string_lossy();
    assert_eq!(r["stdout"], format!("{root}\nout\n"));
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["timed_out"], false);
}

#[tokio::test]
async fn execute_kills_a_command_past_its_timeout() {
    let s = start().await;
    let t0 = std::time::Instant::now();
    let r = s
        .execute(
            &reqwest::Client::new(),
            json!({"command": "echo started; sleep 30", "timeout_seconds": 0.5}),
        )
        .await;
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(r["timed_out"], true);
    assert_eq!(r["exit_code"], 124);
    assert_eq!(r["stdout"], "started\n");
}

#[tokio::test]
async fn upload_download_list_and_exists_share_the_root() {
    let s = start().await;
    let c = reqwest::Client::new();
    std::fs::create_dir_all(s.root.join("sub")).unwrap();
    let (ct, body) = multipart("sub/hello.bin", b"hi\x00there");
    let r = c
        .post(format!("{}/upload", s.base))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let msg: Value = r.json().await.unwrap();
    assert!(
        msg["message"].as_str().unwrap().contains("hello.bin"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(s.root.join("sub/hello.bin")).unwrap(),
        b"hi\x00there"
    );

    // the SDK quotes the whole path (slashes as %2F)
    let r = s.get(&c, "download/sub%2Fhello.bin").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hi\x00there");
    let r = s.get(&c, "download/nope.txt").await;
    assert_eq!(r.status(), 404);
    let r = s.get(&c, "download/sub").await;
    assert_eq!(r.status(), 404, "a directory is not downloadable");

    let list: Value = s.get(&c, "list/sub").await.json().await.unwrap();
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["name"], "hello.bin");
    assert_eq!(entries[0]["size"], 8);
    assert_eq!(entries[0]["type"], "file");
    assert!(entries[0]["mod_time"].as_f64().unwrap() > 1.0e9);
    // the root itself: "list/" (urllib3 turns "list/." into it)
    let root: Value = s.get(&c, "list/").await.json().await.unwrap();
    assert_eq!(root[0]["name"], "sub");
    assert_eq!(root[0]["type"], "directory");
    let r = s.get(&c, "list/missing").await;
    assert_eq!(r.status(), 404);

    for (path, want) in [("sub%2Fhello.bin", true), ("sub", true), ("nope", false)] {
        let e: Value = s
            .get(&c, &format!("exists/{path}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(e["exists"], want, "{path}: {e}");
    }
}

#[tokio::test]
async fn health_answers_on_the_root_path() {
    let s = start().await;
    let r: Value = reqwest::get(format!("{}/", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ok");
}
