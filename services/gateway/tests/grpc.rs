//! The public gRPC API over a real loopback listener (HTTP/2 next to the
//! REST API on one port), against the in-memory scheduler and a real
//! sandbox runtime serving this host: ownership across keys, errors with
//! details, deadlines, streaming exec (stdin, signals, large output, a
//! caller that leaves), file streams in chunks, reflection and health.

use std::time::Duration;

use sandpool_gateway::{Gateway, tenancy};
use sandpool_proto::public::{self as api, sandboxes_client::SandboxesClient};
use tokio_stream::StreamExt;
use tonic::{Code, Request, transport::Channel};
use tonic_types::StatusExt;

mod support;
use support::FakeScheduler;

const ADMIN: &str = "platform-key";
const A: &str = "key-of-tenant-a";
const B: &str = "key-of-tenant-b";

struct Platform {
    addr: String,
    app: axum::Router,
    fake: FakeScheduler,
    _dir: tempfile::TempDir,
}

/// A real runtime on a loopback port (no token), its data in `dir`.
async fn runtime(dir: &std::path::Path) -> u32 {
    let cfg = sandpool_runtime::Config {
        data_dir: dir.join("runtime"),
        home: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let st = sandpool_runtime::AppState::new(cfg).expect("runtime state");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let app = sandpool_runtime::app(st);
    tokio::spawn(sandpool_runtime::serve_app(l, app, std::future::pending()));
    u32::from(port)
}

async fn platform() -> Platform {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = runtime(dir.path()).await;
    let fake = FakeScheduler::with_runtime_port(port);
    let client = support::serve(fake.clone()).await;
    let keys = dir.path().join("keys.json");
    tenancy::add_key(&keys, A, "a", false).expect("key a");
    tenancy::add_key(&keys, B, "b", false).expect("key b");
    let admin = [ADMIN.to_string()];
    let gw = Gateway::new(client, &admin).with_keys_file(&admin, keys);
    let app = sandpool_gateway::app(gw);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let served = app.clone();
    tokio::spawn(async move { axum::serve(l, served).await });
    Platform {
        addr,
        app,
        fake,
        _dir: dir,
    }
}

/// Adds a key: `authorization: Bearer`, or `x-api-key` for B.
#[derive(Clone)]
struct Key(&'static str);

impl tonic::service::Interceptor for Key {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, tonic::Status> {
        if self.0 == B {
            r.metadata_mut()
                .insert("x-api-key", self.0.parse().expect("ascii"));
        } else if !self.0.is_empty() {
            let v = format!("Bearer {}", self.0).parse().expect("ascii");
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }
}

type Client = SandboxesClient<tonic::service::interceptor::InterceptedService<Channel, Key>>;

impl Platform {
    async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    async fn client(&self, key: &'static str) -> Client {
        SandboxesClient::with_interceptor(self.channel().await, Key(key))
            .max_decoding_message_size(64 << 20)
    }
}

async fn create(c: &mut Client) -> api::Sandbox {
    let req = api::CreateSandboxRequest {
        source: Some(api::create_sandbox_request::Source::Pool("default".into())),
        timeout_seconds: 600,
        ..Default::default()
    };
    c.create(req).await.expect("create").into_inner()
}

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn another_keys_sandbox_is_not_found_and_no_key_is_unauthenticated() {
    let p = platform().await;
    let (mut a, mut b, mut admin) = (p.client(A).await, p.client(B).await, p.client(ADMIN).await);
    let sb = create(&mut a).await;
    assert_eq!(sb.state, api::SandboxState::Running as i32);
    assert!(!sb.metadata.contains_key(tenancy::OWNER_KEY), "{sb:?}");
    let get = |id: &str| api::GetSandboxRequest { id: id.into() };
    assert_eq!(
        a.get(get(&sb.id)).await.expect("own").into_inner().id,
        sb.id
    );
    let e = b.get(get(&sb.id)).await.expect_err("not B's");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "SANDBOX_NOT_FOUND")
    );
    let e = b
        .delete(api::DeleteSandboxRequest { id: sb.id.clone() })
        .await
        .expect_err("not B's");
    assert_eq!(e.code(), Code::NotFound);
    let e = b
        .download(api::DownloadRequest {
            sandbox_id: sb.id.clone(),
            path: "/etc/hostname".into(),
            ..Default::default()
        })
        .await
        .expect_err("not B's");
    assert_eq!(e.code(), Code::NotFound);
    let listed = |r: tonic::Response<api::ListSandboxesResponse>| -> Vec<String> {
        r.into_inner().sandboxes.into_iter().map(|s| s.id).collect()
    };
    let all = api::ListSandboxesRequest::default;
    let mine = vec![sb.id.clone()];
    assert_eq!(listed(a.list(all()).await.expect("list")), mine);
    assert!(listed(b.list(all()).await.expect("list")).is_empty());
    assert_eq!(listed(admin.list(all()).await.expect("list")), mine);
    // no key, a wrong key
    let e = p.client("").await.list(all()).await.expect_err("no key");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unauthenticated, "MISSING_API_KEY")
    );
    let e = p
        .client("wrong")
        .await
        .list(all())
        .await
        .expect_err("bad key");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unauthenticated, "INVALID_API_KEY")
    );
    a.delete(api::DeleteSandboxRequest { id: sb.id.clone() })
        .await
        .expect("delete own");
}

#[tokio::test]
async fn a_passed_deadline_is_deadline_exceeded_from_the_server() {
    let p = platform().await;
    // in process, without tonic's transport (which would time out itself):
    // the answer is the server's
    let mut a = SandboxesClient::with_interceptor(p.app.clone(), Key(A));
    // the fake scheduler takes 300 ms over a create with metadata "slow"
    let mut req = Request::new(api::CreateSandboxRequest {
        source: Some(api::create_sandbox_request::Source::Pool("default".into())),
        metadata: [("slow".to_string(), "1".to_string())].into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("grpc-timeout", "50m".parse().expect("ascii"));
    let t = std::time::Instant::now();
    let e = a.create(req).await.expect_err("deadline");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::DeadlineExceeded, "DEADLINE_EXCEEDED")
    );
    assert!(
        t.elapsed() < Duration::from_millis(280),
        "{:?}",
        t.elapsed()
    );
}

fn start(sandbox_id: &str, command: &str, stdin: bool) -> api::ExecRequest {
    api::ExecRequest {
        request: Some(api::exec_request::Request::Start(api::ExecStart {
            sandbox_id: sandbox_id.into(),
            command: command.into(),
            stdin,
            ..Default::default()
        })),
    }
}

fn input(r: api::exec_request::Request) -> api::ExecRequest {
    api::ExecRequest { request: Some(r) }
}

#[derive(Default, Debug)]
struct Ran {
    stdout: Vec<u8>,
    stdout_chunks: usize,
    exited: Option<api::ExecExited>,
}

async fn drain(mut s: tonic::Streaming<api::ExecResponse>) -> Ran {
    use api::exec_response::Response as R;
    let mut ran = Ran::default();
    while let Some(m) = s.message().await.expect("message") {
        match m.response {
            Some(R::Stdout(b)) => {
                ran.stdout.extend_from_slice(&b);
                ran.stdout_chunks += 1;
            }
            Some(R::Exited(e)) => ran.exited = Some(e),
            _ => {}
        }
    }
    ran
}

#[tokio::test]
async fn exec_streams_stdin_signals_and_large_output() {
    let p = platform().await;
    let mut a = p.client(A).await;
    let sb = create(&mut a).await;
    use api::exec_request::Request as R;
    // stdin echoed back
    let reqs = vec![
        start(&sb.id, "cat", true),
        input(R::Stdin(b"hello over grpc\n".to_vec())),
        input(R::CloseStdin(true)),
    ];
    let out = a
        .exec(tokio_stream::iter(reqs))
        .await
        .expect("exec")
        .into_inner();
    let ran = drain(out).await;
    assert_eq!(ran.stdout, b"hello over grpc\n");
    assert_eq!(ran.exited.map(|e| e.exit_code), Some(0));
    // a signal ends a long command
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start(&sb.id, "sleep 30", false))
        .await
        .expect("send");
    let mut out = a
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("exec")
        .into_inner();
    let first = out.message().await.expect("message").expect("started");
    assert!(matches!(
        first.response,
        Some(api::exec_response::Response::Started(_))
    ));
    tx.send(input(R::Signal(15))).await.expect("send");
    let ran = drain(out).await;
    assert_eq!(ran.exited.map(|e| e.signal), Some(15), "{ran:?}");
    // 16 MiB of stdout, streamed in many messages
    let reqs = vec![start(&sb.id, "head -c 16777216 /dev/zero", false)];
    let out = a
        .exec(tokio_stream::iter(reqs))
        .await
        .expect("exec")
        .into_inner();
    let ran = drain(out).await;
    assert_eq!(ran.stdout.len(), 16 << 20);
    assert!(ran.stdout_chunks > 16, "{} chunks", ran.stdout_chunks);
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The pid a command printed first, with the stream left open.
async fn running_pid(
    a: &mut Client,
    id: &str,
    deadline: Option<&str>,
) -> (
    i32,
    tonic::Streaming<api::ExecResponse>,
    tokio::sync::mpsc::Sender<api::ExecRequest>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start(id, "echo $$; exec sleep 300", false))
        .await
        .expect("send");
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(d) = deadline {
        req.metadata_mut()
            .insert("grpc-timeout", d.parse().expect("ascii"));
    }
    let mut out = a.exec(req).await.expect("exec").into_inner();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        match out
            .message()
            .await
            .expect("message")
            .and_then(|m| m.response)
        {
            Some(api::exec_response::Response::Stdout(b)) => line.extend_from_slice(&b),
            Some(_) => {}
            None => panic!("ended before the pid"),
        }
    }
    let pid = String::from_utf8_lossy(&line).trim().parse().expect("pid");
    (pid, out, tx)
}

async fn gone(pid: i32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_caller_that_leaves_or_runs_out_of_time_leaves_nothing_running() {
    let p = platform().await;
    let mut a = p.client(A).await;
    let sb = create(&mut a).await;
    let (pid, out, tx) = running_pid(&mut a, &sb.id, None).await;
    assert!(alive(pid));
    drop(out);
    drop(tx);
    assert!(
        gone(pid).await,
        "pid {pid} still runs after its caller left"
    );
    // a deadline passing mid-stream: DEADLINE_EXCEEDED and the command killed
    let (pid, mut out, _tx) = running_pid(&mut a, &sb.id, Some("700m")).await;
    let e = loop {
        match out.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::DeadlineExceeded, "DEADLINE_EXCEEDED")
    );
    assert!(gone(pid).await, "pid {pid} still runs after the deadline");
}

#[tokio::test]
async fn files_stream_up_and_down_in_chunks() {
    let p = platform().await;
    let mut a = p.client(A).await;
    let sb = create(&mut a).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir
        .path()
        .join("sub/big.bin")
        .to_string_lossy()
        .into_owned();
    const CHUNK: usize = 256 << 10;
    const N: usize = 64; // 16 MiB
    let open = api::UploadRequest {
        request: Some(api::upload_request::Request::Open(api::UploadOpen {
            sandbox_id: sb.id.clone(),
            path: path.clone(),
            create_parents: true,
            ..Default::default()
        })),
    };
    let data = (0..N).map(|i| api::UploadRequest {
        request: Some(api::upload_request::Request::Data(vec![
            (i % 251) as u8;
            CHUNK
        ])),
    });
    let up = a
        .upload(tokio_stream::iter(std::iter::once(open).chain(data)))
        .await
        .expect("upload")
        .into_inner();
    assert_eq!(up.size, (CHUNK * N) as u64);
    let mut down = a
        .download(api::DownloadRequest {
            sandbox_id: sb.id.clone(),
            path: path.clone(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let (mut total, mut chunks, mut largest) = (0usize, 0usize, 0usize);
    while let Some(c) = down.next().await {
        let c = c.expect("chunk").data;
        for (j, b) in c.iter().enumerate() {
            let at = total + j;
            assert_eq!(*b, ((at / CHUNK) % 251) as u8, "byte {at}");
        }
        total += c.len();
        largest = largest.max(c.len());
        chunks += 1;
    }
    assert_eq!(total, CHUNK * N);
    assert!(
        chunks >= 16 && largest <= 4 << 20,
        "{chunks} chunks, largest {largest}"
    );
    let e = a
        .download(api::DownloadRequest {
            sandbox_id: sb.id.clone(),
            path: dir.path().join("absent").to_string_lossy().into_owned(),
            ..Default::default()
        })
        .await;
    let e = match e {
        Err(e) => e,
        Ok(s) => s
            .into_inner()
            .next()
            .await
            .expect("item")
            .expect_err("absent"),
    };
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn watch_reports_changes_until_the_end() {
    let p = platform().await;
    let mut a = p.client(A).await;
    let sb = create(&mut a).await;
    let mut w = a
        .watch(api::WatchRequest { id: sb.id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let state = |e: Option<Result<api::SandboxEvent, tonic::Status>>| {
        e.expect("event")
            .expect("ok")
            .sandbox
            .expect("sandbox")
            .state
    };
    assert_eq!(state(w.next().await), api::SandboxState::Running as i32);
    a.delete(api::DeleteSandboxRequest { id: sb.id.clone() })
        .await
        .expect("delete");
    let last = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("in time");
    assert_eq!(state(last), api::SandboxState::Deleted as i32);
    assert!(w.next().await.is_none(), "ends after the sandbox did");
}

/// Each OOM kill the scheduler records on the claim (from the node's
/// containerd TaskOOM events) is an OOM event; the sandbox lives on.
#[tokio::test]
async fn watch_reports_each_oom_kill_as_an_event() {
    use api::sandbox_event::Kind;
    let p = platform().await;
    let mut a = p.client(A).await;
    let sb = create(&mut a).await;
    let mut w = a
        .watch(api::WatchRequest { id: sb.id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut next = async || {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("in time")
            .expect("event")
            .expect("ok");
        let shown = ev.sandbox.expect("sandbox");
        (ev.kind, shown.state, shown.oom_kills)
    };
    let running = api::SandboxState::Running as i32;
    assert_eq!(next().await, (Kind::State as i32, running, 0));
    assert!(p.fake.update_claim(&sb.id, |c| c.oom_kills = 2));
    assert_eq!(next().await, (Kind::Oom as i32, running, 1));
    assert_eq!(next().await, (Kind::Oom as i32, running, 2));
    let got = a
        .get(api::GetSandboxRequest { id: sb.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!((got.state, got.oom_kills), (running, 2), "it lives on");
    a.delete(api::DeleteSandboxRequest { id: sb.id.clone() })
        .await
        .expect("delete");
    let deleted = api::SandboxState::Deleted as i32;
    assert_eq!(next().await, (Kind::State as i32, deleted, 2));
}

/// A create from a snapshot with an idempotency key is made once per key
/// and API key: a retry returns the first sandbox (it was UNIMPLEMENTED).
#[tokio::test]
async fn an_idempotent_create_from_a_snapshot_is_made_once() {
    use api::create_sandbox_request::Source;
    let p = platform().await;
    let (mut a, mut b) = (p.client(A).await, p.client(B).await);
    let src = create(&mut a).await;
    let ck = a
        .snapshot(api::SnapshotSandboxRequest {
            id: src.id.clone(),
            leave_running: true,
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner();
    // the best checkpoint the platform can take (files only in Kubernetes mode)
    let asked = p.fake.checkpoint_requests.lock().clone();
    assert!(
        asked.len() == 1 && asked[0].memory_if_supported && !asked[0].filesystem_only,
        "{asked:?}"
    );
    let from = |key: &str| api::CreateSandboxRequest {
        source: Some(Source::Snapshot(ck.id.clone())),
        timeout_seconds: 600,
        idempotency_key: key.into(),
        ..Default::default()
    };
    let first = a.create(from("r-1")).await.expect("create").into_inner();
    let again = a.create(from("r-1")).await.expect("retry").into_inner();
    assert_eq!(again.id, first.id, "a retry returns the first sandbox");
    let other = a.create(from("r-2")).await.expect("another").into_inner();
    assert_ne!(other.id, first.id);
    let live = a
        .list(api::ListSandboxesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .sandboxes;
    assert_eq!(live.len(), 3, "the source and two restores: {live:?}");
    // another key's same idempotency key reaches nothing of A's
    let e = b.create(from("r-1")).await.expect_err("not B's snapshot");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // the entrypoint (with its env) and limits go with the restore
    let mut with = from("r-3");
    with.entrypoint = vec!["python3".into(), "app.py".into()];
    with.env = [("MODE".to_string(), "x".to_string())].into();
    with.resources = Some(api::Resources {
        cpu: "1".into(),
        memory: "1Gi".into(),
    });
    a.create(with.clone()).await.expect("with a process");
    let last = p
        .fake
        .restore_requests
        .lock()
        .last()
        .cloned()
        .expect("restore");
    let process = last.process.expect("process");
    assert_eq!(process.argv, ["python3", "app.py"]);
    assert_eq!(process.env.get("MODE").map(String::as_str), Some("x"));
    let l = last.resources.expect("limits");
    assert_eq!((l.cpu.as_str(), l.memory.as_str()), ("1", "1Gi"));
    with.entrypoint.clear();
    with.idempotency_key = "r-4".into();
    let e = a.create(with).await.expect_err("env without an entrypoint");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn reflection_lists_the_services_and_health_serves() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let p = platform().await;
    let mut r = ServerReflectionClient::new(p.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut out = r
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = out.message().await.expect("message").expect("answer");
    let Some(MessageResponse::ListServicesResponse(l)) = msg.message_response else {
        panic!("{msg:?}");
    };
    let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
    for want in ["sandpool.v1.public.Sandboxes", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("sandpool.v1.S")),
        "internal: {names:?}"
    );
    let mut h = HealthClient::new(p.channel().await);
    let s = h
        .check(HealthCheckRequest {
            service: "sandpool.v1.public.Sandboxes".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(s.status, 1, "SERVING");
    // REST still answers on the same port (HTTP/1.1)
    let body = reqwest::get(format!("{}/health", p.addr))
        .await
        .expect("rest")
        .text()
        .await
        .expect("body");
    assert!(body.contains("healthy"), "{body}");
}

#[tokio::test]
async fn over_the_rate_a_grpc_caller_gets_resource_exhausted_with_retry_info() {
    let client = support::serve(FakeScheduler::default()).await;
    // one token per 1000 s: none refills while the test runs
    let gw = Gateway::new(client, &[ADMIN.to_string()]).with_rate_limit(0.001, 2.0);
    let mut c = SandboxesClient::with_interceptor(sandpool_gateway::app(gw), Key(ADMIN));
    for _ in 0..2 {
        c.list(api::ListSandboxesRequest::default())
            .await
            .expect("within the rate");
    }
    let e = c
        .list(api::ListSandboxesRequest::default())
        .await
        .expect_err("over the rate");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "RATE_LIMITED")
    );
    let wait = e
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("retry info");
    assert!(wait > Duration::from_secs(900), "{wait:?}");
}
