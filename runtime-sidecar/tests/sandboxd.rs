//! sandboxd (KEP-539.2) served on loopback ports: the REST files API and the
//! gRPC ProcessService, with the requests the k8s-agent-sandbox SDK's
//! sandboxd configurations send.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, path::PathBuf, time::Duration};

use sandpool_proto::sandboxd_process::{
    ExecuteRequest, ProcessConfig, Pty, ResizeTtyRequest, SendSignalRequest, Signal, StartRequest,
    WriteStdinRequest, process_service_client::ProcessServiceClient, start_response::Event,
    write_stdin_request::Payload,
};
use sandpool_runtime::{AppState, Config, sandboxd::SandboxdState};
use serde_json::Value;
use tonic::transport::Channel;

mod support;

struct Server {
    rest: String,
    grpc: ProcessServiceClient<Channel>,
    st: SandboxdState,
    root: PathBuf,
    dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap().join("workspace");
    std::fs::create_dir_all(&root).unwrap();
    let state = AppState::new(Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    })
    .unwrap();
    let st = SandboxdState::new(state, &root);
    let rest = support::listen(sandpool_runtime::sandboxd_rest_app(st.clone())).await;
    let grpc_base = support::listen(sandpool_runtime::sandboxd_grpc_app(st.clone())).await;
    let ch = tonic::transport::Endpoint::from_shared(grpc_base)
        .unwrap()
        .connect()
        .await
        .unwrap();
    Server {
        rest,
        grpc: ProcessServiceClient::new(ch),
        st,
        root,
        dir,
    }
}

impl Server {
    /// The URL of `path` under /v1/files, as the SDK encodes it (one
    /// segment, `/` as %2F).
    fn file_url(&self, path: &str) -> String {
        let enc: Vec<String> = path
            .split('/')
            .map(|s| match s {
                "." => "%2E".into(),
                ".." => "%2E%2E".into(),
                s => form_urlencoded::byte_serialize(s.as_bytes()).collect(),
            })
            .collect();
        format!("{}/v1/files/{}", self.rest, enc.join("%2F"))
    }
}

fn config(cmd: &str) -> Option<ProcessConfig> {
    Some(ProcessConfig {
        command: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        ..Default::default()
    })
}

async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn put_get_head_list_and_delete_a_file() {
    let s = start().await;
    let c = reqwest::Client::new();
    let r = c
        .put(s.file_url("dir/sub/a.txt"))
        .header("Content-Type", "application/octet-stream")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        std::fs::read(s.root.join("dir/sub/a.txt")).unwrap(),
        b"hello"
    );
    let r = c.get(s.file_url("dir/sub/a.txt")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello");
    let r = c
        .get(s.file_url("dir/sub/a.txt"))
        .header("Range", "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"ell");

    let head = |p: &str| c.head(s.file_url(p)).send();
    assert_eq!(head("dir/sub/a.txt").await.unwrap().status(), 200);
    assert_eq!(head("dir/nope").await.unwrap().status(), 404);

    let v: Value = c
        .get(s.file_url("dir/sub"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/dir/sub");
    let e = &v["entries"][0];
    assert_eq!(
        (&e["name"], &e["size"], &e["type"], &e["mode"]),
        (&"a.txt".into(), &5.into(), &"file".into(), &"0644".into())
    );
    assert!(e["modified_at"].as_str().unwrap().ends_with('Z'), "{e}");
    let v: Value = c
        .get(format!("{}/v1/files/", s.rest))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/");
    assert_eq!(v["entries"][0]["type"], "directory");

    let r = c.delete(s.file_url("dir")).send().await.unwrap();
    assert_eq!(error_code(r).await, (409, "CONFLICT".into()));
    let r = c
        .delete(format!("{}?recursive=true", s.file_url("dir")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(!s.root.join("dir").exists());
    let r = c.delete(s.file_url("dir")).send().await.unwrap();
    assert_eq!(error_code(r).await, (404, "NOT_FOUND".into()));
}

#[tokio::test]
async fn put_honours_mode_and_multipart_and_refuses_what_it_cannot() {
    let s = start().await;
    let c = reqwest::Client::new();
    let r = c
        .put(format!("{}?mode=0700", s.file_url("run.sh")))
        .body("#!/bin/sh\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.root.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    let b = "sbxdBoundary";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nskip\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\npart\r\n--{b}--\r\n"
    );
    let r = c
        .put(s.file_url("m.txt"))
        .header("Content-Type", format!("multipart/form-data; boundary={b}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(std::fs::read(s.root.join("m.txt")).unwrap(), b"part");

    for (url, want) in [
        (format!("{}?mode=644", s.file_url("f")), "mode"),
        (format!("{}?owner=me", s.file_url("f")), "owner"),
    ] {
        let r = c.put(url).body("x").send().await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "INVALID_ARGUMENT");
        assert!(v["message"].as_str().unwrap().contains(want), "{v}");
    }
    std::fs::create_dir_all(s.root.join("d")).unwrap();
    let r = c.put(s.file_url("d")).body("x").send().await.unwrap();
    assert_eq!(error_code(r).await, (400, "INVALID_ARGUMENT".into()));
    assert!(!s.root.join("f").exists());
}

#[tokio::test]
async fn paths_may_not_leave_the_root() {
    let s = start().await;
    let c = reqwest::Client::new();
    std::fs::write(s.dir.path().join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(s.dir.path(), s.root.join("up")).unwrap();
    for p in ["../secret", "up/secret", "up/new/f"] {
        let r = c.get(s.file_url(p)).send().await.unwrap();
        assert_eq!(
            error_code(r).await,
            (403, "PERMISSION_DENIED".into()),
            "{p}"
        );
        let r = c.put(s.file_url(p)).body("x").send().await.unwrap();
        assert_eq!(r.status(), 403, "{p}");
    }
    assert!(!s.dir.path().join("new").exists());
    // an absolute path is one under the root
    std::fs::write(s.root.join("abs"), b"in").unwrap();
    let r = c.get(s.file_url("/abs")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"in");
}

#[tokio::test]
async fn health_and_metadata() {
    let s = start().await;
    let c = reqwest::Client::new();
    let v: Value = c
        .get(format!("{}/v1/health", s.rest))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    let v: Value = c
        .get(format!("{}/v1/metadata", s.rest))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["env"].is_object(), "{v}");
}

#[tokio::test]
async fn execute_runs_in_the_root_with_env_and_cwd() {
    let mut s = start().await;
    std::fs::create_dir_all(s.root.join("sub")).unwrap();
    let r = s
        .grpc
        .execute(ExecuteRequest {
            config: config("pwd; echo \"$GREETING\"; echo err >&2; exit 3"),
        })
        .await
        .unwrap()
        .into_inner();
    let root = s.root.to_string_lossy();
    assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{root}\n\n"));
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit_code, 3);

    let mut cfg = config("pwd; echo \"$GREETING\"").unwrap();
    cfg.env_vars = HashMap::from([("GREETING".into(), "hi".into())]);
    cfg.cwd = Some("sub".into());
    let r = s
        .grpc
        .execute(ExecuteRequest { config: Some(cfg) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("{root}/sub\nhi\n")
    );
}

#[tokio::test]
async fn execute_refuses_bad_configs_by_field() {
    let mut s = start().await;
    let cases = [
        (None, tonic::Code::InvalidArgument, "command"),
        (
            Some(ProcessConfig {
                command: vec!["true".into()],
                env_vars: HashMap::from([("A=B".into(), "x".into())]),
                cwd: None,
            }),
            tonic::Code::InvalidArgument,
            "env_vars",
        ),
        (
            Some(ProcessConfig {
                command: vec!["true".into()],
                cwd: Some("../..".into()),
                ..Default::default()
            }),
            tonic::Code::PermissionDenied,
            "cwd",
        ),
    ];
    for (config, code, word) in cases {
        let e = s.grpc.execute(ExecuteRequest { config }).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(word), "{e:?}");
    }
}

#[tokio::test]
async fn execute_past_the_deadline_is_killed() {
    use sandpool_proto::sandboxd_process::process_service_server::ProcessService;
    let s = start().await;
    let marker = s.root.join("after");
    // the service itself (a client enforces its deadline too, racing ours)
    let svc = sandpool_runtime::sandboxd::process::ProcessSvc::new(s.st.clone());
    let mut req = tonic::Request::new(ExecuteRequest {
        config: config(&format!("sleep 2; touch {}", marker.display())),
    });
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let e = svc.execute(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "the command was not killed");
}

#[tokio::test]
async fn start_streams_output_takes_stdin_and_signals() {
    let mut s = start().await;
    let mut stream = s
        .grpc
        .start(StartRequest {
            config: config("read l; echo \"got $l\"; echo e >&2; exit 4"),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = stream.message().await.unwrap().unwrap().event else {
        panic!("no init event first");
    };
    let id = init.process_id;
    s.grpc
        .write_stdin(WriteStdinRequest {
            process_id: id,
            payload: Some(Payload::Input(b"abc\n".to_vec())),
        })
        .await
        .unwrap();
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some(m) = stream.message().await.unwrap() {
        match m.event {
            Some(Event::Stdout(b)) => out.extend(b),
            Some(Event::Stderr(b)) => err.extend(b),
            Some(Event::Exit(x)) => exit = Some(x.exit_code),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (out.as_slice(), err.as_slice(), exit),
        (&b"got abc\n"[..], &b"e\n"[..], Some(4))
    );
    let e = s
        .grpc
        .write_stdin(WriteStdinRequest {
            process_id: id,
            payload: Some(Payload::Eof(())),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::NotFound,
        "a finished process is gone"
    );

    let mut stream = s
        .grpc
        .start(StartRequest {
            config: config("sleep 30"),
            pty: None,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = stream.message().await.unwrap().unwrap().event else {
        panic!("no init event first");
    };
    let e = s
        .grpc
        .send_signal(SendSignalRequest {
            process_id: init.process_id,
            signal: Signal::Unspecified as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = s
        .grpc
        .resize_tty(ResizeTtyRequest {
            process_id: init.process_id,
            cols: 10,
            rows: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "no terminal");
    s.grpc
        .send_signal(SendSignalRequest {
            process_id: init.process_id,
            signal: Signal::Sigterm as i32,
        })
        .await
        .unwrap();
    let m = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(m.event, Some(Event::Exit(x)) if x.exit_code == -1),
        "{m:?}"
    );
}

#[tokio::test]
async fn start_on_a_terminal() {
    let mut s = start().await;
    let mut stream = s
        .grpc
        .start(StartRequest {
            config: config("stty size; read l; echo \"[$l]\"; stty size"),
            pty: Some(Pty {
                cols: 100,
                rows: 30,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = stream.message().await.unwrap().unwrap().event else {
        panic!("no init event first");
    };
    let mut out = Vec::new();
    let mut exit = None;
    let mut typed = false;
    while let Some(m) = stream.message().await.unwrap() {
        match m.event {
            Some(Event::Stdout(b)) => out.extend(b),
            Some(Event::Exit(x)) => exit = Some(x.exit_code),
            other => panic!("unexpected {other:?}"),
        }
        // the first size printed: resize, then answer the read
        if !typed && String::from_utf8_lossy(&out).contains("30 100") {
            typed = true;
            s.grpc
                .resize_tty(ResizeTtyRequest {
                    process_id: init.process_id,
                    cols: 120,
                    rows: 40,
                })
                .await
                .unwrap();
            s.grpc
                .write_stdin(WriteStdinRequest {
                    process_id: init.process_id,
                    payload: Some(Payload::Input(b"typed\n".to_vec())),
                })
                .await
                .unwrap();
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("[typed]"), "{out}");
    assert!(out.contains("40 120"), "{out}");
    assert_eq!(exit, Some(0));
}
