//! Raw HTTP and gRPC tests of the runtime served on a loopback port:
//! error cases with exact status codes and bodies, streaming behaviour,
//! and the gRPC Runtime service.

// Integration tests are test code throughout (helpers included).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sandpool_proto::v1::{self as pb, runtime_client::RuntimeClient};
use sandpool_runtime::{AppState, Config, upload::UploadLimits};
use serde_json::{Value, json};

mod support;

const TOKEN: &str = "test-token-123";

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    work: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let cfg = Config {
        access_token: Some(TOKEN.into()),
        data_dir: dir.path().join("data"),
        home: Some(work.clone()),
        max_json_bytes: 4096,
        upload: UploadLimits {
            max_file_bytes: 1024,
            ..UploadLimits::default()
        },
        ..Config::default()
    };
    let state = AppState::new(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sandpool_runtime::serve(listener, state, async move {
        let _ = rx.await;
    }));
    Server {
        base: format!("http://{addr}"),
        addr,
        _dir: dir,
        work,
        stop: Some(tx),
    }
}

fn client() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("x-execd-access-token", TOKEN.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

impl Server {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(format!("{}{path}", self.base))
    }
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        client().post(format!("{}{path}", self.base))
    }
    fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        client().delete(format!("{}{path}", self.base))
    }
    /// GET `route` for the file or directory at `path`.
    async fn get_path(&self, route: &str, path: &std::path::Path) -> reqwest::Response {
        self.get(route)
            .query(&[("path", path)])
            .send()
            .await
            .unwrap()
    }
    /// Download `range` of the file at `path`.
    async fn download_range(&self, path: &std::path::Path, range: &str) -> reqwest::Response {
        let r = self.get("/files/download").query(&[("path", path)]);
        r.header("Range", range).send().await.unwrap()
    }
    /// POST `body` as JSON to `route`.
    async fn post_json(&self, route: &str, body: &Value) -> reqwest::Response {
        self.post(route).json(body).send().await.unwrap()
    }
}

/// Command `id`'s status (`GET /command/status/{id}`) has this exit code
/// and error.
async fn assert_exit(s: &Server, id: &str, exit_code: Value, error: Value) {
    let status = support::json_of(s.get(&format!("/command/status/{id}"))).await;
    assert_eq!(
        (status["exit_code"].clone(), status["error"].clone()),
        (exit_code, error)
    );
}

/// The response is the execd error `code` with this HTTP status.
async fn expect_error(resp: reqwest::Response, status: u16, code: &str) {
    let (st, body) = error_of(resp).await;
    assert_eq!((st, body["code"].as_str()), (status, Some(code)), "{body}");
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message present: {body}"
    );
    (status, body)
}

/// Every response echoes `X-Request-ID` (trimmed), including the token
/// guard's 401 and the fallback 404; without one a fresh id is sent.
#[tokio::test]
async fn every_response_echoes_the_request_id() {
    let s = start().await;
    let plain = reqwest::Client::new();
    let with_id = |r: reqwest::RequestBuilder| r.header("X-Request-ID", " req-42 ");
    let unauthorized = with_id(plain.post(format!("{}/command", s.base)));
    let not_found = with_id(s.get("/no/such/route"));
    let missing_file = with_id(s.get("/files/download").query(&[("path", "/no/such/file")]));
    let ok = with_id(s.get("/ping"));
    for (r, status) in [
        (unauthorized, 401),
        (not_found, 404),
        (missing_file, 404),
        (ok, 200),
    ] {
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["x-request-id"], "req-42");
    }
    let r = s.get("/ping").send().await.unwrap();
    let fresh = r.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(fresh.len(), 32, "{fresh}");
    assert!(fresh.chars().all(|c| c.is_ascii_hexdigit()), "{fresh}");
}

#[tokio::test]
async fn wrong_or_missing_token_is_401_but_ping_is_open() {
    let s = start().await;
    let plain = reqwest::Client::new();
    let r = plain
        .post(format!("{}/command", s.base))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
    let r = plain
        .get(format!("{}/files/info?path=/", s.base))
        .header("x-execd-access-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        plain
            .get(format!("{}/ping", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Upstream's `opensandbox-server` hands its SDK the sandbox's token as the
/// endpoint header `OpenSandbox-Secure-Access`: the runtime token there
/// passes, another value does not.
#[tokio::test]
async fn the_token_in_the_upstream_servers_secure_access_header_passes() {
    let s = start().await;
    let plain = reqwest::Client::new();
    let r = plain
        .get(format!("{}/files/info?path=/", s.base))
        .header("OpenSandbox-Secure-Access", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = plain
        .post(format!("{}/command", s.base))
        .header("OpenSandbox-Secure-Access", "another-sandboxes-token")
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn bad_json_and_oversize_json() {
    let s = start().await;
    let r = s.post("/command").body("{not json").send().await.unwrap();
    expect_error(r, 400, "INVALID_REQUEST_BODY").await;

    let r = s.post_json("/command", &json!({"cwd": "/"})).await;
    assert_eq!(error_of(r).await.0, 400, "command or argv required");

    let r = s
        .post_json("/command", &json!({"command": "true", "timeout": -5}))
        .await;
    assert_eq!(error_of(r).await.0, 400);

    let big = json!({"command": "x".repeat(5000)});
    let r = s.post("/command").json(&big).send().await.unwrap();
    expect_error(r, 413, "PAYLOAD_TOO_LARGE").await;
}

/// Upstream's line windows: `offset` is 1-based (default 1), `limit`
/// defaults to all lines, lines are joined by `\n` with none after the last.
#[tokio::test]
async fn line_windows_of_downloads() {
    let s = start().await;
    let f = s.work.join("lines.txt");
    std::fs::write(&f, "line1\nline2\r\nline3\nline4\n").unwrap();
    let window = |q: &'static [(&'static str, &'static str)]| {
        let r = s.get("/files/download").query(&[("path", &f)]).query(q);
        async move { r.send().await.unwrap() }
    };
    for (q, want) in [
        (&[("offset", "2"), ("limit", "2")][..], "line2\nline3"),
        (&[("offset", "3")][..], "line3\nline4"),
        (&[("limit", "1")][..], "line1"),
        (
            &[("offset", "1"), ("limit", "99")][..],
            "line1\nline2\nline3\nline4",
        ),
        (&[("offset", "9")][..], ""),
    ] {
        let r = window(q).await;
        assert_eq!(r.status(), 200, "{q:?}");
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(r.text().await.unwrap(), want, "{q:?}");
    }
    std::fs::write(&f, "no newline").unwrap();
    assert_eq!(
        window(&[("limit", "5")]).await.text().await.unwrap(),
        "no newline"
    );
    for q in [
        &[("offset", "0")][..],
        &[("limit", "0")],
        &[("offset", "x")],
        &[("limit", "-1")],
    ] {
        expect_error(window(q).await, 400, "INVALID_REQUEST_BODY").await;
    }
    let r = s
        .get("/files/download")
        .query(&[("path", &f)])
        .query(&[("offset", "1")])
        .header("Range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "INVALID_REQUEST_BODY").await;
}

#[tokio::test]
async fn missing_file_directory_and_ranges() {
    let s = start().await;
    let missing = s.work.join("nope.txt");
    let r = s.get_path("/files/download", &missing).await;
    expect_error(r, 404, "FILE_NOT_FOUND").await;

    let r = s.get_path("/files/download", &s.work).await;
    expect_error(r, 400, "IS_A_DIRECTORY").await;

    let r = s.get("/files/download").send().await.unwrap();
    expect_error(r, 400, "MISSING_QUERY").await;

    let f = s.work.join("digits");
    std::fs::write(&f, "0123456789").unwrap();
    let r = s.download_range(&f, "bytes=2-4").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 2-4/10");
    assert_eq!(r.text().await.unwrap(), "234");
    let r = s.download_range(&f, "bytes=20-").await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10");

    let r = s.get_path("/files/info", &missing).await;
    assert_eq!(error_of(r).await.0, 404);
    let r = s.get_path("/directories/list", &f).await;
    expect_error(r, 400, "NOT_A_DIRECTORY").await;
    let r = s
        .get("/directories/list")
        .query(&[("path", s.work.to_str().unwrap()), ("depth", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
}

fn multipart(path: &std::path::Path, data: &[u8]) -> (String, Vec<u8>) {
    let b = "sandpoolBoundary";
    let mut v = Vec::new();
    v.extend_from_slice(format!("--{b}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\nContent-Type: application/json\r\n\r\n").as_bytes());
    v.extend_from_slice(
        json!({"path": path, "owner": null, "group": null, "mode": 644})
            .to_string()
            .as_bytes(),
    );
    v.extend_from_slice(format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    v.extend_from_slice(data);
    v.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), v)
}

#[tokio::test]
async fn oversize_upload_is_413_chunked_and_leaves_nothing() {
    let s = start().await;
    let target = s.work.join("big.bin");
    let (ct, body) = multipart(&target, &[1u8; 2048]);
    // Chunked transfer encoding: a streamed body has no Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let r = s
        .post("/files/upload")
        .header("content-type", ct.clone())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (st, b) = error_of(r).await;
    assert_eq!((st, b["code"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")));
    assert_eq!(
        std::fs::read_dir(&s.work).unwrap().count(),
        0,
        "no target or temp file left behind"
    );

    // Within the limit, the same chunked upload succeeds.
    let (ct, body) = multipart(&target, &[2u8; 1000]);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let r = s
        .post("/files/upload")
        .header("content-type", ct)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(&target).unwrap(), vec![2u8; 1000]);

    let r = s
        .post("/files/upload")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
}

/// Parse execd frames (bare JSON separated by blank lines) as they arrive,
/// with their arrival time.
async fn events(resp: reqwest::Response) -> Vec<(Instant, Value)> {
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..pos + 2).collect();
            out.push((
                Instant::now(),
                serde_json::from_slice(&frame[..pos]).unwrap(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn output_is_streamed_as_produced() {
    let s = start().await;
    let r = s
        .post_json(
            "/command",
            &json!({"command": "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"}),
        )
        .await;
    let ev = events(r).await;
    assert_eq!(ev[0].1["type"], "init");
    let stdout: Vec<_> = ev.iter().filter(|(_, v)| v["type"] == "stdout").collect();
    let text: Vec<&str> = stdout
        .iter()
        .map(|(_, v)| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, ["line1", "line2", "line3", "line4", "line5"]);
    let last = ev.last().unwrap();
    assert_eq!(last.1["type"], "execution_complete");
    // Lines arrive while the command runs: the first one ~400 ms before the end.
    let spread = last.0.duration_since(stdout[0].0);
    assert!(
        spread >= Duration::from_millis(300),
        "first line arrived only {spread:?} before completion"
    );
    assert!(ev.iter().all(|(_, v)| v["timestamp"].as_i64().is_some()));
}

/// The texts of one kind of output event.
fn texts<'a>(ev: &'a [(Instant, Value)], kind: &str) -> Vec<&'a str> {
    ev.iter()
        .filter(|(_, v)| v["type"] == kind)
        .map(|(_, v)| v["text"].as_str().unwrap())
        .collect()
}

/// Upstream execd's line events: no line endings, `\r`, `\n` and `\r\n`
/// each end a line, a blank line is `"\n"`, stdout and stderr are split
/// separately, and an unterminated last line is sent at exit.
#[tokio::test]
async fn output_events_are_lines_without_endings() {
    let s = start().await;
    let cmd = r"printf 'connect-ok\n'; printf 'a\n\nb\n'; printf 'e1\r\ne2' >&2; printf 'p\rq'; sleep 0.2; printf 'r'";
    let ev = events(s.post_json("/command", &json!({ "command": cmd })).await).await;
    assert_eq!(
        texts(&ev, "stdout"),
        ["connect-ok", "a", "\n", "b", "p", "qr"]
    );
    assert_eq!(texts(&ev, "stderr"), ["e1", "e2"]);
    assert_eq!(ev.last().unwrap().1["type"], "execution_complete");
}

#[tokio::test]
async fn failing_and_timed_out_commands_report_exit_codes() {
    let s = start().await;
    let r = s
        .post_json("/command", &json!({"command": "echo oops >&2; exit 3"}))
        .await;
    let ev = events(r).await;
    assert!(
        ev.iter()
            .any(|(_, v)| v["type"] == "stderr" && v["text"] == "oops")
    );
    let last = &ev.last().unwrap().1;
    assert_eq!(
        (last["type"].as_str(), last["error"]["evalue"].as_str()),
        (Some("error"), Some("3"))
    );
    assert_eq!(last["error"]["ename"], "CommandExecError");
    assert_eq!(last["error"]["traceback"], json!(["exit status 3"]));
    let id = ev[0].1["text"].as_str().unwrap();
    assert_exit(&s, id, json!(3), json!("exit status 3")).await;

    let r = s
        .post_json("/command", &json!({"command": "sleep 10", "timeout": 200}))
        .await;
    let ev = events(r).await;
    let last = &ev.last().unwrap().1;
    // as Go's ExitCode() after a kill
    assert_eq!(last["error"]["evalue"], "-1");
    assert_eq!(last["error"]["traceback"], json!(["signal: killed"]));
    let id = ev[0].1["text"].as_str().unwrap();
    assert_exit(&s, id, json!(-1), json!("signal: killed")).await;

    let r = s.get("/command/status/nope").send().await.unwrap();
    let (st, b) = error_of(r).await;
    assert_eq!((st, b["code"].as_str()), (404, Some("COMMAND_NOT_FOUND")));
    let r = s.delete("/command").send().await.unwrap();
    assert_eq!(error_of(r).await.0, 400);
}

#[tokio::test]
async fn unsupported_endpoints_answer_501() {
    // (`/code` is served since the code interpreter came: tests/code.rs)
    let s = start().await;
    let r = s.post_json("/pty", &json!({})).await;
    let (st, b) = error_of(r).await;
    assert_eq!((st, b["code"].as_str()), (501, Some("NOT_IMPLEMENTED")));
    let r = s.post_json("/proxy/8080", &json!({})).await;
    assert_eq!(r.status(), 501);
}

async fn grpc(s: &Server) -> RuntimeClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    RuntimeClient::new(ch)
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        sandpool_proto::ACCESS_TOKEN_METADATA,
        TOKEN.parse().unwrap(),
    );
    r
}

#[tokio::test]
async fn grpc_exec_with_stdin_and_exit_code() {
    let s = start().await;
    let mut c = grpc(&s).await;
    let start = pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(pb::ExecStart {
            command: "cat; echo done >&2; exit 5".into(),
            stdin: true,
            ..Default::default()
        })),
    };
    let msgs = vec![
        start,
        pb::ExecInput {
            input: Some(pb::exec_input::Input::Stdin(b"piped".to_vec())),
        },
        pb::ExecInput {
            input: Some(pb::exec_input::Input::CloseStdin(true)),
        },
    ];
    let mut out = c
        .exec(authed(futures_util::stream::iter(msgs)))
        .await
        .unwrap()
        .into_inner();
    let (mut stdout, mut stderr, mut exit, mut started) = (Vec::new(), Vec::new(), None, false);
    while let Some(m) = out.message().await.unwrap() {
        match m.output.unwrap() {
            pb::exec_output::Output::Started(s) => started = !s.id.is_empty() && s.pid > 0,
            pb::exec_output::Output::Stdout(b) => stdout.extend(b),
            pb::exec_output::Output::Stderr(b) => stderr.extend(b),
            pb::exec_output::Output::Exited(e) => exit = Some(e.exit_code),
        }
    }
    assert!(started);
    assert_eq!(
        (stdout.as_slice(), stderr.as_slice(), exit),
        (&b"piped"[..], &b"done\n"[..], Some(5))
    );
}

#[tokio::test]
async fn grpc_rejects_bad_token_and_bad_first_message() {
    let s = start().await;
    let mut c = grpc(&s).await;
    let e = c.health(pb::HealthRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let msgs = vec![pb::ExecInput {
        input: Some(pb::exec_input::Input::Stdin(b"x".to_vec())),
    }];
    let e = c
        .exec(authed(futures_util::stream::iter(msgs)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c
        .stat(authed(pb::PathRequest {
            path: "/no/such".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(c.health(authed(pb::HealthRequest {})).await.is_ok());
}

#[tokio::test]
async fn grpc_inject_entrypoint_and_files() {
    let s = start().await;
    let mut c = grpc(&s).await;
    let marker = s.work.join("injected");
    let st = c
        .inject(authed(pb::InjectRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo $ROLE > {}; exec sleep 30", marker.display()),
            ],
            env: [("ROLE".to_string(), "agent".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.phase, pb::ProcessPhase::Running as i32);
    let again = c
        .inject(authed(pb::InjectRequest {
            argv: vec!["true".into()],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    // the shell creates the file before it writes to it: wait for the content
    let mut content = String::new();
    for _ in 0..200 {
        content = std::fs::read_to_string(&marker).unwrap_or_default();
        if content.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(content, "agent\n");
    // the create-time env is the sandbox's: execd commands see it, under
    // their own envs
    let ev = events(
        s.post_json("/command", &json!({"command": "echo $ROLE-$OWN"}))
            .await,
    )
    .await;
    assert_eq!(texts(&ev, "stdout"), ["agent-"]);
    let own = json!({"command": "echo $ROLE-$OWN", "envs": {"ROLE": "mine", "OWN": "x"}});
    let ev = events(s.post_json("/command", &own).await).await;
    assert_eq!(texts(&ev, "stdout"), ["mine-x"]);
    let status = c
        .entrypoint_status(authed(pb::EntrypointStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.phase, status.pid),
        (pb::ProcessPhase::Running as i32, st.pid)
    );

    grpc_files(&s, &mut c).await;
    // the entrypoint (exec'd into `sleep`) must not outlive the test holding its output
    let pid = nix::unistd::Pid::from_raw(i32::try_from(st.pid).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the entrypoint");
}

/// WriteFile (with parents and mode), ReadFile from an offset, ListDir, the
/// size limit, and a recursive Remove, all below the test's tempdir.
async fn grpc_files(s: &Server, c: &mut RuntimeClient<tonic::transport::Channel>) {
    let path = s.work.join("sub/g.txt").to_string_lossy().into_owned();
    let parts = vec![
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Open(pb::WriteFileOpen {
                path: path.clone(),
                mode: 0o600,
                create_parents: true,
                ..Default::default()
            })),
        },
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(b"hello ".to_vec())),
        },
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(b"grpc".to_vec())),
        },
    ];
    let stat = c
        .write_file(authed(futures_util::stream::iter(parts)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stat.size, stat.mode, stat.r#type),
        (10, 0o600, pb::FileType::File as i32)
    );
    let mut rd = c
        .read_file(authed(pb::ReadFileRequest {
            path: path.clone(),
            offset: 6,
            length: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(ch) = rd.message().await.unwrap() {
        got.extend(ch.data);
    }
    assert_eq!(got, b"grpc");
    let list = c
        .list_dir(authed(pb::ListDirRequest {
            path: s.work.join("sub").to_string_lossy().into(),
            depth: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entries.len(), 1);
    let too_big = vec![
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Open(pb::WriteFileOpen {
                path: path.clone(),
                ..Default::default()
            })),
        },
        pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Data(vec![0; 2000])),
        },
    ];
    let e = c
        .write_file(authed(futures_util::stream::iter(too_big)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    c.remove(authed(pb::RemoveRequest {
        path: s.work.join("sub").to_string_lossy().into(),
        recursive: true,
    }))
    .await
    .unwrap();
    assert!(!s.work.join("sub").exists());
}

/// DELETE /files and /directories refuse "/" and paths ending in `.`/`..`
/// with 400 and the path in the message. Directory removal is only tried on
/// paths inside the test's tempdir ("/" only where a directory is refused
/// anyway), so a broken refusal could not reach the host.
#[tokio::test]
async fn removal_refuses_root_and_dot_paths() {
    let s = start().await;
    std::fs::create_dir_all(s.work.join("sub/inner")).unwrap();
    let work = s.work.to_str().unwrap().to_string();
    for (route, path) in [
        ("files", "/".to_string()),
        ("files", format!("{work}/sub/..")),
        ("directories", format!("{work}/sub/inner/..")),
        ("directories", format!("{work}/sub/.")),
    ] {
        let r = s
            .delete(&format!("/{route}"))
            .query(&[("path", &path)])
            .send()
            .await
            .unwrap();
        let (st, body) = error_of(r).await;
        assert_eq!(st, 400, "{route} {path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(&path),
            "{route} {path}: {body}"
        );
    }
    assert!(s.work.join("sub/inner").is_dir(), "nothing removed");
    let r = s
        .delete("/directories")
        .query(&[("path", s.work.join("sub/inner"))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!s.work.join("sub/inner").exists());
}
