//! envd's Connect streams on a loopback port: Start with stdin fed through
//! the client-streaming StreamInput, CloseStdin, and the end event.

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use bytes::Bytes;
use futures_util::StreamExt;
use sandpool_runtime::{AppState, Config, envd::envelope};
use serde_json::{Value, json};

mod support;

const TOKEN: &str = "envd-token";

async fn serve() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // relative envd paths resolve here, never against the real $HOME
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    let cfg = Config {
        // few inotify instances: tests run in parallel under one user's 128
        max_watchers: 4,
        ..support::config(TOKEN, dir.path(), dir.path().join("home"))
    };
    let state = AppState::new(cfg).unwrap();
    (
        support::listen(sandpool_runtime::envd_app(state)).await,
        dir,
    )
}

/// [`serve`], with a directory `w` in the home to watch.
async fn serve_watched() -> (String, tempfile::TempDir) {
    let (base, d) = serve().await;
    std::fs::create_dir_all(d.path().join("home/w")).unwrap();
    (base, d)
}

/// Split a Connect stream body into (flags, json) envelopes.
fn envelopes(mut b: &[u8]) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let n = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        out.push((b[0], serde_json::from_slice(&b[5..5 + n]).unwrap()));
        b = &b[5 + n..];
    }
    out
}

#[tokio::test]
async fn start_with_streamed_stdin() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let start = envelope(
        0,
        &json!({"process": {"cmd": "cat", "args": []}, "stdin": true}),
    );
    let resp = rpc
        .stream("process.Process/Start")
        .body(start)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let pid = envelopes(&first)[0].1["event"]["start"]["pid"]
        .as_u64()
        .expect("start event first");

    let input: Vec<Bytes> = vec![
        envelope(0, &json!({"start": {"process": {"pid": pid}}})),
        envelope(
            0,
            &json!({"data": {"input": {"stdin": B64.encode("hello ")}}}),
        ),
        envelope(0, &json!({"keepalive": {}})),
        envelope(
            0,
            &json!({"data": {"input": {"stdin": B64.encode("envd")}}}),
        ),
    ];
    let r = rpc
        .stream("process.Process/StreamInput")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            input.into_iter().map(Ok::<_, std::io::Error>),
        )))
        .send()
        .await
        .unwrap();
    let ev = envelopes(&r.bytes().await.unwrap());
    assert_eq!(ev.last().unwrap().0, 2, "end of stream");
    assert!(ev.last().unwrap().1.get("error").is_none(), "{ev:?}");

    let (st, _) = rpc
        .unary(
            "process.Process/CloseStdin",
            json!({"process": {"pid": pid}}),
        )
        .await;
    assert_eq!(st, 200);

    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let ev = envelopes(&rest);
    let out: Vec<u8> = ev
        .iter()
        .filter_map(|(_, v)| v["event"]["data"]["stdout"].as_str())
        .flat_map(|s| B64.decode(s).unwrap())
        .collect();
    assert_eq!(out, b"hello envd");
    let end = ev
        .iter()
        .find_map(|(_, v)| v["event"].get("end").cloned())
        .expect("end event");
    assert_eq!(end["exitCode"], 0);
    assert_eq!(ev.last().unwrap().0, 2);

    // StreamInput to a process that is gone: a clear not_found, no crash
    let r = rpc
        .stream("process.Process/StreamInput")
        .body(envelope(0, &json!({"start": {"process": {"pid": pid}}})))
        .send()
        .await
        .unwrap();
    let ev = envelopes(&r.bytes().await.unwrap());
    assert_eq!(ev.last().unwrap().1["error"]["code"], "not_found");
}

/// Filesystem Remove refuses an empty path and paths naming a whole tree
/// (`.` is the home directory, `x/..` its parent) with invalid_argument and
/// the path in the message; the home here is a tempdir, so nothing outside
/// it is at risk even if the refusal broke.
#[tokio::test]
async fn remove_refuses_empty_and_dot_paths() {
    let (base, d) = serve().await;
    let home = d.path().join("home");
    std::fs::create_dir_all(home.join("x/y")).unwrap();
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    for path in ["", ".", "x/..", "x/y/../..", "./"] {
        let (st, v) = rpc
            .unary("filesystem.Filesystem/Remove", json!({"path": path}))
            .await;
        assert_eq!(st, 400, "{path:?}");
        assert_eq!(v["code"], "invalid_argument", "{path:?}: {v}");
        if !path.is_empty() {
            assert!(
                v["message"].as_str().unwrap().contains(path),
                "{path:?}: {v}"
            );
        }
    }
    assert!(home.join("x/y").is_dir(), "nothing removed");
    // an ordinary relative path is removed below the configured home
    let (st, _) = rpc
        .unary("filesystem.Filesystem/Remove", json!({"path": "x/y"}))
        .await;
    assert_eq!(st, 200);
    assert!(!home.join("x/y").exists() && home.join("x").is_dir());
}

/// Requests with the token to one served envd.
struct Rpc<'a> {
    c: &'a reqwest::Client,
    base: &'a str,
}

impl Rpc<'_> {
    /// A unary RPC (or plain JSON POST): its status and JSON answer.
    async fn unary(&self, method: &str, body: Value) -> (u16, Value) {
        let r = self
            .c
            .post(format!("{}/{method}", self.base))
            .header("x-access-token", TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A GET of a plain HTTP path.
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.c
            .get(format!("{}/{path}", self.base))
            .header("x-access-token", TOKEN)
    }

    /// A streaming call (one enveloped request, or a client stream).
    fn stream(&self, method: &str) -> reqwest::RequestBuilder {
        self.c
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/connect+json")
            .header("x-access-token", TOKEN)
    }
}

/// Unary filesystem and process RPCs read proto3 JSON: camelCase or proto
/// names, integers as numbers or strings, enums by name; answers keep their
/// shapes.
#[tokio::test]
async fn unary_rpcs_read_proto3_json() {
    let (base, d) = serve().await;
    let home = d.path().join("home");
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let (st, v) = rpc
        .unary("filesystem.Filesystem/MakeDir", json!({"path": "a/b"}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(v["entry"]["path"], home.join("a/b").to_str().unwrap());
    std::fs::write(home.join("a/b/f.txt"), "xy").unwrap();
    let (st, v) = rpc
        .unary(
            "filesystem.Filesystem/Move",
            json!({"source": "a/b/f.txt", "destination": "a/g.txt"}),
        )
        .await;
    assert_eq!((st, &v["entry"]["size"]), (200, &json!(2)), "{v}");
    let (st, v) = rpc
        .unary(
            "filesystem.Filesystem/ListDir",
            json!({"path": "a", "depth": "2"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
    let (st, v) = rpc
        .unary(
            "filesystem.Filesystem/ListDir",
            json!({"path": "a", "depth": "x"}),
        )
        .await;
    assert_eq!((st, &v["code"]), (400, &json!("invalid_argument")), "{v}");

    let (st, v) = rpc
        .unary(
            "filesystem.Filesystem/CreateWatcher",
            json!({"path": "a", "recursive": true}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let id = v["watcherId"].as_str().unwrap().to_string();
    let (st, v) = rpc
        .unary(
            "filesystem.Filesystem/GetWatcherEvents",
            json!({"watcher_id": id}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["events"].is_array());
    let (st, _) = rpc
        .unary(
            "filesystem.Filesystem/RemoveWatcher",
            json!({"watcherId": id}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = rpc.unary("filesystem.Filesystem/Stat", json!({})).await;
    assert_eq!((st, &v["code"]), (400, &json!("invalid_argument")), "{v}");
    // methods sandpool lacks answer `unimplemented`, naming their service
    for (method, service) in [
        ("process.Process/Frobnicate", "process"),
        ("filesystem.Filesystem/Watch", "filesystem"),
    ] {
        let (st, v) = rpc.unary(method, json!({})).await;
        assert_eq!((st, &v["code"]), (501, &json!("unimplemented")), "{v}");
        let want = format!("this {service} method is not supported by sandpool yet");
        assert_eq!(v["message"], json!(want), "{v}");
    }
}

/// A tagged process is listed and signalled by tag with the enum's name.
#[tokio::test]
async fn signal_by_tag_and_enum_name() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let r = rpc
        .stream("process.Process/Start")
        .body(envelope(
            0,
            &json!({"process": {"cmd": "sleep", "args": ["30"], "envs": null}, "tag": "sleeper"}),
        ))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(envelopes(&first)[0].1["event"]["start"]["pid"].is_u64());
    let (st, v) = rpc.unary("process.Process/List", json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(v["processes"][0]["tag"], "sleeper", "{v}");
    let (st, v) = rpc
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"tag": "sleeper"}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let end = envelopes(&rest)
        .into_iter()
        .find_map(|(_, v)| v["event"].get("end").cloned())
        .expect("end event");
    assert_eq!(end["status"], "signal: killed", "{end}");
}

/// Polled watchers (`max_watchers`, 4 here) and `/init` env vars are
/// bounded: the one past the bound is refused with `resource_exhausted` and
/// changes nothing.
#[tokio::test]
async fn watchers_and_init_env_are_bounded() {
    let (base, _d) = serve_watched().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let create = json!({"path": "w", "recursive": false});
    let mut ids = Vec::new();
    for i in 0..4 {
        let (st, v) = rpc
            .unary("filesystem.Filesystem/CreateWatcher", create.clone())
            .await;
        assert_eq!(st, 200, "watcher {i}: {v}");
        ids.push(v["watcherId"].as_str().unwrap().to_string());
    }
    let (st, v) = rpc
        .unary("filesystem.Filesystem/CreateWatcher", create.clone())
        .await;
    assert_eq!((st, &v["code"]), (429, &json!("resource_exhausted")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("4 of 4"), "{v}");
    let (st, _) = rpc
        .unary(
            "filesystem.Filesystem/RemoveWatcher",
            json!({"watcherId": ids[0]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = rpc
        .unary("filesystem.Filesystem/CreateWatcher", create)
        .await;
    assert_eq!(st, 200, "room again after a removal: {v}");

    let envs = || async {
        let r = rpc.get("envs").send().await.unwrap();
        r.json::<Value>().await.unwrap()
    };
    let (st, _) = rpc.unary("init", json!({"envVars": {"A": "1"}})).await;
    assert_eq!(st, 204);
    let many: serde_json::Map<String, Value> =
        (0..1100).map(|i| (format!("K{i}"), json!("v"))).collect();
    let (st, v) = rpc.unary("init", json!({"envVars": many})).await;
    assert_eq!((st, &v["code"]), (429, &json!("resource_exhausted")), "{v}");
    let big = json!({"envVars": {"B": "x".repeat(2 << 20)}});
    let (st, _) = rpc.unary("init", big).await;
    assert_eq!(st, 429);
    let now = envs().await;
    assert_eq!(now["A"], "1");
    assert!(
        now.get("K0").is_none() && now.get("B").is_none(),
        "refused /init changed nothing"
    );
}

/// Open `WatchDir` streams are bounded (`max_watchers`, 4 here); a closed one
/// gives its place back.
#[tokio::test]
async fn watch_streams_are_bounded() {
    let (base, _d) = serve_watched().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let open = || {
        rpc.stream("filesystem.Filesystem/WatchDir")
            .header("keepalive-ping-interval", "1")
            .body(envelope(0, &json!({"path": "w"})))
            .send()
    };
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut r = open().await.unwrap();
        let first = r.chunk().await.unwrap().unwrap();
        assert_eq!(envelopes(&first)[0].0, 0, "stream {i} started");
        streams.push(r);
    }
    let refused = open().await.unwrap().bytes().await.unwrap();
    let (flags, end) = envelopes(&refused).pop().unwrap();
    assert_eq!(flags, 2, "{end}");
    assert_eq!(end["error"]["code"], "resource_exhausted", "{end}");
    // closing one frees its place once the runtime notices (keepalive: 1 s)
    streams.pop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut r = open().await.unwrap();
        let first = r.chunk().await.unwrap().unwrap();
        if envelopes(&first)[0].0 == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place came free");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
