//! The client against a real gateway listener (in-memory scheduler, a real
//! runtime serving this host): the wrapper's calls, streaming exec, file
//! streams, error reasons, and the agent loop example.

use sandpool_client::{Client, Create, Event, api};
use tonic_types::StatusExt as _;

const KEY: &str = "platform-key";

/// A gateway on a loopback port whose sandboxes run on this host; its URL.
async fn gateway(dir: &std::path::Path) -> String {
    serve(gateway_app(dir).await).await
}

/// `app` on a loopback port; its URL.
async fn serve(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// The gateway's router, its sandboxes on this host.
async fn gateway_app(dir: &std::path::Path) -> axum::Router {
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
    let fake = sandpool_testsupport::FakeScheduler::with_runtime_port(u32::from(port));
    let gw =
        sandpool_gateway::Gateway::new(sandpool_testsupport::serve(fake).await, &[KEY.to_string()]);
    sandpool_gateway::app(gw)
}

#[tokio::test]
async fn the_wrapper_creates_runs_moves_files_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::connect(&gateway(dir.path()).await, Some(KEY))
        .await
        .expect("connect");
    let sb = client
        .create(Create::pool("default").timeout(60).metadata("team", "x"))
        .await
        .expect("create");
    assert_eq!(
        sb.info().metadata.get("team").map(String::as_str),
        Some("x")
    );
    let out = sb
        .exec("echo out; echo err >&2; exit 3")
        .await
        .expect("exec");
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );

    // stdin and a signal through a session
    let mut s = sb
        .exec_with(api::ExecStart {
            command: "read l; echo got:$l; sleep 30".into(),
            stdin: true,
            ..Default::default()
        })
        .await
        .expect("session");
    s.write_stdin(b"ping\n").await.expect("stdin");
    assert_eq!(
        s.next().await.expect("event"),
        Some(Event::Stdout(b"got:ping\n".to_vec()))
    );
    assert!(s.started.is_some());
    s.signal(9).await.expect("signal");
    let Some(Event::Exited(e)) = s.next().await.expect("event") else {
        panic!("no exit");
    };
    assert_eq!(e.signal, 9);

    // files
    let path = dir
        .path()
        .join("files/a.bin")
        .to_string_lossy()
        .into_owned();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(
        sb.write_file(&path, &data).await.expect("upload"),
        data.len() as u64
    );
    assert_eq!(sb.read_file(&path).await.expect("download"), data);

    let id = sb.id().to_string();
    assert_eq!(client.list().await.expect("list").len(), 1);
    sb.delete().await.expect("delete");
    let e = client
        .get("no-such-sandbox")
        .await
        .err()
        .expect("not found");
    assert_eq!(e.code(), Some(tonic::Code::NotFound));
    assert_eq!(e.reason().as_deref(), Some("SANDBOX_NOT_FOUND"));
    assert!(e.retry_after().is_none());
    assert!(
        client
            .list()
            .await
            .expect("list")
            .iter()
            .all(|s| s.id != id)
    );
}

#[tokio::test]
async fn a_wrong_key_is_unauthenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::connect(&gateway(dir.path()).await, Some("wrong"))
        .await
        .expect("connect");
    let e = client.list().await.expect_err("refused");
    assert_eq!(e.code(), Some(tonic::Code::Unauthenticated));
    assert_eq!(e.reason().as_deref(), Some("INVALID_API_KEY"));
}

#[tokio::test]
async fn the_agent_loop_example_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = gateway(dir.path()).await;
    // the example's calls, with its paths under this test's tempdir
    let client = Client::connect(&url, Some(KEY)).await.expect("connect");
    let sb = client
        .create(Create::pool("default"))
        .await
        .expect("create");
    let script = dir
        .path()
        .join("agent/step.sh")
        .to_string_lossy()
        .into_owned();
    let log = dir
        .path()
        .join("agent/log.txt")
        .to_string_lossy()
        .into_owned();
    let body = format!("#!/bin/sh\necho \"step $1: $(( $1 * $1 ))\" | tee -a {log}\n");
    sb.write_file(&script, body.as_bytes())
        .await
        .expect("script");
    for step in 1..=3 {
        let out = sb.exec(&format!("sh {script} {step}")).await.expect("exec");
        assert_eq!(
            out.stdout,
            format!("step {step}: {}\n", step * step).into_bytes()
        );
    }
    let text = sb.read_file(&log).await.expect("log");
    assert_eq!(text, b"step 1: 1\nstep 2: 4\nstep 3: 9\n");
    sb.delete().await.expect("delete");
}

/// A retried create whose first reply was lost (the create was made; the
/// caller saw UNAVAILABLE with a RetryInfo) returns that sandbox: the retry
/// waits the RetryInfo, carries the same idempotency key, and makes none.
#[tokio::test]
async fn a_create_whose_reply_was_lost_is_retried_into_the_same_sandbox() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let creates = Arc::new(AtomicUsize::new(0));
    let seen = creates.clone();
    let lossy = axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                let create = req.uri().path().ends_with(".Sandboxes/Create");
                let reply = next.run(req).await;
                if create && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    // the work is done; its reply never reaches the caller
                    drop(axum::body::to_bytes(reply.into_body(), usize::MAX).await);
                    let lost = tonic::Status::with_error_details(
                        tonic::Code::Unavailable,
                        "connection reset (test)",
                        tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(
                            300,
                        ))),
                    );
                    return lost.into_http::<axum::body::Body>();
                }
                reply
            }
        },
    );
    let url = serve(gateway_app(dir.path()).await.layer(lossy)).await;
    let client = Client::connect(&url, Some(KEY)).await.expect("connect");
    let t0 = Instant::now();
    let sb = client
        .create(Create::pool("default").metadata("run", "lossy"))
        .await
        .expect("create, retried");
    assert_eq!(creates.load(Ordering::SeqCst), 2, "one retry");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "waited the RetryInfo"
    );
    let live = client.list().await.expect("list");
    assert_eq!(live.len(), 1, "one sandbox, not two: {live:?}");
    assert_eq!(live[0].id, sb.id());
}

/// A deadline on an exec ends the call with DEADLINE_EXCEEDED in time.
#[tokio::test]
async fn an_exec_past_its_deadline_is_deadline_exceeded() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::connect(&gateway(dir.path()).await, Some(KEY))
        .await
        .expect("connect");
    let sb = client
        .create(Create::pool("default"))
        .await
        .expect("create");
    let t0 = Instant::now();
    let start = api::ExecStart {
        command: "sleep 30".into(),
        ..Default::default()
    };
    let ran = async {
        sb.exec_within(start, Some(Duration::from_millis(500)))
            .await?
            .output()
            .await
    };
    let e = ran.await.expect_err("past its deadline");
    assert_eq!(e.code(), Some(tonic::Code::DeadlineExceeded), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    sb.delete().await.expect("delete");
}
