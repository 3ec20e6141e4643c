//! execd bash sessions over HTTP on a loopback port: a session's runs share
//! the working directory and the exported environment, stream execd events
//! as `POST /command` does, and sessions are bounded.

#![allow(clippy::unwrap_used)]

mod support;

use futures_util::StreamExt;
use sandpool_runtime::{AppState, session::MAX_SESSIONS};
use serde_json::{Value, json};

const TOKEN: &str = "session-token";

struct Server {
    base: String,
    work: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    let state = AppState::new(support::config(TOKEN, dir.path(), work.clone())).unwrap();
    let base = support::listen(sandpool_runtime::http_api::router(state)).await;
    Server {
        base,
        work,
        _dir: dir,
    }
}

impl Server {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .header("x-execd-access-token", TOKEN)
    }

    async fn create(&self, body: Option<Value>) -> reqwest::Response {
        let r = self.req(reqwest::Method::POST, "/session");
        match body {
            Some(b) => r.json(&b),
            None => r,
        }
        .send()
        .await
        .unwrap()
    }

    async fn session(&self, cwd: Option<&std::path::Path>) -> String {
        let body = cwd.map(|c| json!({"cwd": c}));
        let r = self.create(body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["session_id"].as_str().unwrap().to_string()
    }

    /// The events of one run.
    async fn run(&self, id: &str, body: Value) -> Vec<Value> {
        let r = self
            .req(reqwest::Method::POST, &format!("/session/{id}/run"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut buf = Vec::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.unwrap());
        }
        buf.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    async fn delete(&self, id: &str) -> u16 {
        self.req(reqwest::Method::DELETE, &format!("/session/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// The stdout events as text: execd sends one event per line without its
/// ending (a blank line is "\n").
fn stdout(ev: &[Value]) -> String {
    ev.iter()
        .filter(|v| v["type"] == "stdout")
        .map(|v| match v["text"].as_str().unwrap() {
            "\n" => "\n".to_string(),
            line => format!("{line}\n"),
        })
        .collect()
}

#[tokio::test]
async fn runs_of_a_session_share_cwd_and_exported_env() {
    let s = start().await;
    let id = s.session(Some(&s.work)).await;
    let ev = s
        .run(
            &id,
            json!({"command": "cd sub && export GREETING='hi there'"}),
        )
        .await;
    assert_eq!(ev[0]["type"], "init");
    assert_eq!(ev.last().unwrap()["type"], "execution_complete", "{ev:?}");
    let ev = s
        .run(&id, json!({"command": "pwd; echo \"$GREETING\""}))
        .await;
    let sub = std::fs::canonicalize(s.work.join("sub")).unwrap();
    assert_eq!(stdout(&ev), format!("{}\nhi there\n", sub.display()));

    // another session starts fresh
    let other = s.session(None).await;
    let ev = s
        .run(&other, json!({"command": "echo \"[$GREETING]\""}))
        .await;
    assert_eq!(stdout(&ev), "[]\n");

    // a run's cwd overrides; an exit still saves the state; codes are reported
    let ev = s
        .run(
            &id,
            json!({"command": "export N=2; echo oops >&2; exit 3", "cwd": s.work}),
        )
        .await;
    assert!(
        ev.iter()
            .any(|v| v["type"] == "stderr" && v["text"] == "oops")
    );
    let last = ev.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["error"]["evalue"].as_str()),
        (Some("error"), Some("3"))
    );
    let ev = s.run(&id, json!({"command": "pwd; echo $N"})).await;
    let work = std::fs::canonicalize(&s.work).unwrap();
    assert_eq!(stdout(&ev), format!("{}\n2\n", work.display()));
    let ev = s
        .run(
            &id,
            json!({"command": "echo $PWD", "cwd": s.work.join("sub")}),
        )
        .await;
    assert_eq!(
        stdout(&ev),
        format!("{}\n", sub.display()),
        "$PWD is the run's"
    );

    let ev = s
        .run(&id, json!({"command": "sleep 10", "timeout": 200}))
        .await;
    // as Go's ExitCode() after a kill
    assert_eq!(ev.last().unwrap()["error"]["evalue"], "-1");

    assert_eq!(s.delete(&id).await, 200);
    assert_eq!(s.delete(&id).await, 404);
    let r = s
        .req(reqwest::Method::POST, &format!("/session/{id}/run"))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn sessions_are_bounded_and_bad_requests_refused() {
    let s = start().await;
    let mut ids = vec![s.session(None).await];
    while ids.len() < MAX_SESSIONS {
        ids.push(s.session(None).await);
    }
    assert_eq!(s.create(None).await.status(), 429);
    assert_eq!(s.delete(&ids[0]).await, 200);
    let id = s.session(None).await;
    assert_eq!(
        s.create(Some(json!({"cwd": "/no/such/dir"})))
            .await
            .status(),
        400
    );
    for bad in [
        json!({}),
        json!({"command": "  "}),
        json!({"command": "x", "timeout": -1}),
    ] {
        let r = s
            .req(reqwest::Method::POST, &format!("/session/{id}/run"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/session", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the token guards sessions too");
}
