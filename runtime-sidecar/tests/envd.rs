//! envd's Connect streams on a loopback port: Start with stdin fed through
//! the client-streaming StreamInput, CloseStdin, and the end event.

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use bytes::Bytes;
use futures_util::StreamExt;
use sandpool_runtime::envd::envelope;
use serde_json::{Value, json};

mod support;

const TOKEN: &str = "envd-token";

async fn serve() -> (String, tempfile::TempDir) {
    support::serve_envd(TOKEN, &[]).await
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

/// Remove of a path that does not exist is a success, as E2B's (it removes
/// like `rm -rf`); an existing file is still removed.
#[tokio::test]
async fn remove_of_a_missing_path_is_ok() {
    let (base, d) = serve().await;
    let home = d.path().join("home");
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    for path in ["nope.txt", "no/such/dir"] {
        let (st, v) = rpc
            .unary("filesystem.Filesystem/Remove", json!({"path": path}))
            .await;
        assert_eq!((st, &v), (200, &json!({})), "{path}");
    }
    std::fs::write(home.join("f.txt"), "x").unwrap();
    let (st, _) = rpc
        .unary("filesystem.Filesystem/Remove", json!({"path": "f.txt"}))
        .await;
    assert_eq!(st, 200);
    assert!(!home.join("f.txt").exists());
}

/// `WatchDir` stream messages are `WatchDirResponse`s, whose oneof is the
/// message itself: `{"start":{}}`, then `{"filesystem":{...}}` (no `event`).
#[tokio::test]
async fn watch_dir_messages_carry_the_oneof_at_the_top() {
    let (base, d) = serve_watched().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let mut r = rpc
        .stream("filesystem.Filesystem/WatchDir")
        .body(envelope(0, &json!({"path": "w"})))
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(envelopes(&first), vec![(0, json!({"start": {}}))]);
    std::fs::write(d.path().join("home/w/n.txt"), "x").unwrap();
    let mut got = Vec::new();
    while !got
        .iter()
        .any(|(_, v): &(u8, Value)| v.get("filesystem").is_some())
    {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), r.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        got.extend(envelopes(&chunk));
    }
    let (_, ev) = got
        .iter()
        .find(|(_, v)| v.get("filesystem").is_some())
        .unwrap();
    assert_eq!(
        ev,
        &json!({"filesystem": {"name": "n.txt", "type": "EVENT_TYPE_CREATE"}}),
        "{got:?}"
    );
    assert!(got.iter().all(|(_, v)| v.get("event").is_none()), "{got:?}");
    // a client deadline ends the stream with deadline_exceeded
    let r = rpc
        .stream("filesystem.Filesystem/WatchDir")
        .header("connect-timeout-ms", "200")
        .body(envelope(0, &json!({"path": "w"})))
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), r.bytes())
        .await
        .expect("the stream ends at its deadline")
        .unwrap();
    let ev = envelopes(&body);
    assert_eq!(ev[0], (0, json!({"start": {}})));
    assert_eq!(
        ev.last().unwrap().1["error"]["code"],
        "deadline_exceeded",
        "{ev:?}"
    );
}

/// A process's whole Start stream (`start` the request, `headers` extra):
/// its stdout and every envelope.
async fn run_to_end(
    rpc: &Rpc<'_>,
    start: Value,
    headers: &[(&str, &str)],
) -> (String, Vec<(u8, Value)>) {
    let mut req = rpc
        .stream("process.Process/Start")
        .body(envelope(0, &start));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = req.send().await.unwrap().bytes().await.unwrap();
    let ev = envelopes(&body);
    let out: Vec<u8> = ev
        .iter()
        .filter_map(|(_, v)| v["event"]["data"]["stdout"].as_str())
        .flat_map(|s| B64.decode(s).unwrap())
        .collect();
    (String::from_utf8(out).unwrap(), ev)
}

/// Processes start in the home directory, as E2B's; a relative `cwd` (and
/// `~/...`) resolves against it; a missing one is invalid_argument.
#[tokio::test]
async fn processes_start_in_the_home_directory() {
    let (base, d) = serve_watched().await;
    let home = d.path().join("home");
    let home = home.to_str().unwrap();
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    for (cwd, want) in [
        (None, home.to_string()),
        (Some(""), home.to_string()),
        (Some("w"), format!("{home}/w")),
        (Some("~/w"), format!("{home}/w")),
        (Some("/tmp"), "/tmp".to_string()),
    ] {
        let mut p = json!({"cmd": "pwd", "args": []});
        if let Some(c) = cwd {
            p["cwd"] = json!(c);
        }
        let (out, ev) = run_to_end(&rpc, json!({"process": p}), &[]).await;
        assert_eq!(out.trim_end(), want, "cwd {cwd:?}: {ev:?}");
    }
    let (_, ev) = run_to_end(&rpc, json!({"process": {"cmd": "pwd", "cwd": "nope"}}), &[]).await;
    let (flags, end) = ev.last().unwrap();
    assert_eq!(*flags, 2);
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    assert_eq!(
        end["error"]["message"],
        json!(format!("cwd '{home}/nope' does not exist"))
    );
}

/// A process past its client deadline (`Connect-Timeout-Ms`, which the SDK
/// sends for `timeout`) is killed and its stream ends with a
/// `deadline_exceeded` error, as E2B's envd ends it (the SDK raises
/// `TimeoutException`), not with an exit event; one that ends in time ends normally.
#[tokio::test]
async fn a_process_past_its_deadline_ends_with_deadline_exceeded() {
    let (base, _d) = serve().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let t0 = std::time::Instant::now();
    let slow = json!({"process": {"cmd": "sleep", "args": ["30"]}, "tag": "slow"});
    let (_, ev) = run_to_end(&rpc, slow, &[("connect-timeout-ms", "300")]).await;
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert!(ev[0].1["event"]["start"]["pid"].is_u64(), "{ev:?}");
    let (flags, end) = ev.last().unwrap();
    assert_eq!(*flags, 2);
    assert_eq!(
        end,
        &json!({"error": {"code": "deadline_exceeded", "message": "context deadline exceeded"}})
    );
    assert!(
        ev.iter().all(|(_, v)| v["event"].get("end").is_none()),
        "{ev:?}"
    );
    // the process was killed at its deadline
    let mut listed = true;
    for _ in 0..50 {
        let (_, v) = rpc.unary("process.Process/List", json!({})).await;
        listed = v["processes"].as_array().is_some_and(|p| !p.is_empty());
        if !listed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!listed, "the process outlived its deadline");
    let quick = json!({"process": {"cmd": "true", "args": []}});
    let (_, ev) = run_to_end(&rpc, quick, &[("connect-timeout-ms", "10000")]).await;
    let end = ev.iter().find_map(|(_, v)| v["event"].get("end").cloned());
    assert_eq!(end.expect("end event")["exitCode"], 0, "{ev:?}");
    assert_eq!(ev.last().unwrap(), &(2, json!({})));
}

/// The signature E2B's SDK puts in a file URL (`get_signature`):
/// `v1_` + unpadded base64 of sha256(`path:operation:user:token[:expiration]`).
fn sdk_signature(path: &str, op: &str, expiration: Option<i64>) -> String {
    use sha2::Digest;
    let mut raw = format!("{path}:{op}::{TOKEN}");
    if let Some(e) = expiration {
        raw.push_str(&format!(":{e}"));
    }
    let digest = sha2::Sha256::digest(raw.as_bytes());
    let b64 = B64.encode(digest);
    format!("v1_{}", b64.trim_end_matches('='))
}

/// `/files` takes a signed URL instead of `X-Access-Token`, as E2B's envd:
/// a valid signature reads and writes, an expired one is 401 "signature is
/// already expired", a wrong one "invalid signature", none "missing
/// signature query parameter"; other envd paths still need the token.
#[tokio::test]
async fn files_take_signed_urls() {
    let (base, d) = serve().await;
    std::fs::write(d.path().join("home/a.txt"), "hello").unwrap();
    let c = reqwest::Client::new();
    let files = format!("{base}/files");
    let get = |q: Vec<(&'static str, String)>| c.get(&files).query(&q).send();
    let sig = sdk_signature("a.txt", "read", None);
    let r = get(vec![("path", "a.txt".into()), ("signature", sig)])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
    let later = unix_now() + 60;
    let r = get(vec![
        ("path", "a.txt".into()),
        ("signature", sdk_signature("a.txt", "read", Some(later))),
        ("signature_expiration", later.to_string()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let past = unix_now() - 1;
    let refusals = [
        (
            vec![
                ("signature", sdk_signature("a.txt", "read", Some(past))),
                ("signature_expiration", past.to_string()),
            ],
            "signature is already expired",
        ),
        (
            vec![("signature", sdk_signature("a.txt", "write", None))],
            "invalid signature",
        ),
        (vec![], "missing signature query parameter"),
    ];
    for (extra, message) in refusals {
        let mut q = vec![("path", "a.txt".to_string())];
        q.extend(extra);
        let r = get(q).await.unwrap();
        assert_eq!(r.status(), 401, "{message}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v, json!({"code": 401, "message": message}));
    }
    // upload with a write signature
    let r = c
        .post(&files)
        .query(&[
            ("path", "b.txt"),
            ("signature", &sdk_signature("b.txt", "write", None)),
        ])
        .header("content-type", "application/octet-stream")
        .body("up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(d.path().join("home/b.txt")).unwrap(), b"up");
    // a signature is no token elsewhere
    let r = c.get(format!("{base}/envs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `GetWatcherEvents` right after a change returns it (no wait for the
/// watcher's poll), and an upload of `a.txt` is the create, chown (CHMOD)
/// and write of `a.txt`, as E2B's in-place write, never events of its
/// staging file.
#[tokio::test]
async fn watcher_events_are_there_right_after_an_upload() {
    let (base, d) = serve_watched().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let (st, v) = rpc
        .unary("filesystem.Filesystem/CreateWatcher", json!({"path": "w"}))
        .await;
    assert_eq!(st, 200, "{v}");
    let id = v["watcherId"].clone();
    let events = || async {
        let (st, v) = rpc
            .unary(
                "filesystem.Filesystem/GetWatcherEvents",
                json!({"watcherId": id}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["events"].as_array().unwrap().clone()
    };
    for round in 0..3 {
        let r = c
            .post(format!("{base}/files"))
            .query(&[("path", "w/a.txt")])
            .header("x-access-token", TOKEN)
            .header("content-type", "application/octet-stream")
            .body(format!("round {round}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let got = events().await;
        assert_eq!(
            got,
            vec![
                json!({"name": "a.txt", "type": "EVENT_TYPE_CREATE"}),
                json!({"name": "a.txt", "type": "EVENT_TYPE_CHMOD"}),
                json!({"name": "a.txt", "type": "EVENT_TYPE_WRITE"}),
            ],
            "round {round}"
        );
    }
    std::fs::remove_file(d.path().join("home/w/a.txt")).unwrap();
    assert_eq!(
        events().await,
        vec![json!({"name": "a.txt", "type": "EVENT_TYPE_REMOVE"})]
    );
}

/// A recursive watcher reports what is made in a directory created below
/// it before the watcher's thread could watch that directory: the new
/// directory, and the creation and write of the file in it.
#[tokio::test]
async fn recursive_watcher_sees_files_in_a_directory_made_just_now() {
    let (base, d) = serve_watched().await;
    let c = reqwest::Client::new();
    let rpc = Rpc { c: &c, base: &base };
    let (st, v) = rpc
        .unary(
            "filesystem.Filesystem/CreateWatcher",
            json!({"path": "w", "recursive": true}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let id = v["watcherId"].clone();
    let w = d.path().join("home/w");
    std::fs::create_dir_all(w.join("n/deeper")).unwrap();
    std::fs::write(w.join("n/f.txt"), "content").unwrap();
    std::fs::write(w.join("n/deeper/g.txt"), "more").unwrap();
    let (st, v) = rpc
        .unary(
            "filesystem.Filesystem/GetWatcherEvents",
            json!({"watcherId": id}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let got: Vec<(String, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (name, kind) in [
        ("n", "EVENT_TYPE_CREATE"),
        ("n/f.txt", "EVENT_TYPE_CREATE"),
        ("n/f.txt", "EVENT_TYPE_WRITE"),
        ("n/deeper", "EVENT_TYPE_CREATE"),
        ("n/deeper/g.txt", "EVENT_TYPE_WRITE"),
    ] {
        assert!(
            got.contains(&(name.to_string(), kind.to_string())),
            "{name} {kind} missing from {got:?}"
        );
    }
    // the new directories are watched from now on
    std::fs::write(w.join("n/deeper/h.txt"), "x").unwrap();
    let (_, v) = rpc
        .unary(
            "filesystem.Filesystem/GetWatcherEvents",
            json!({"watcherId": id}),
        )
        .await;
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "n/deeper/h.txt", "type": "EVENT_TYPE_CREATE"})),
        "{v}"
    );
}

/// Requests with the token to one served envd.
struct Rpc<'a> {
    c: &'a reqwest::Client,
    base: &'a str,
}

impl Rpc<'_> {
    /// A unary RPC (or plain JSON POST): its status and JSON answer.
    async fn unary(&self, method: &str, body: Value) -> (u16, Value) {
        support::unary(self.c, (self.base, TOKEN), method, &body, &[]).await
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
