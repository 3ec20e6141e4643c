//! Node agent on real containerd + runc + runsc (root only).
//!
//! Gated (see `testkit::gate`): without root, containerd, runc, runsc and a
//! static runtime binary these tests print why and pass vacuously — unless
//! `SANDPOOL_REQUIRE_CONTAINERD=1` (set by scripts/test.sh, i.e. in CI), in
//! which case a missing prerequisite fails them.

// Test helpers panic on failure, like the tests that call them.
#![allow(clippy::unwrap_used)]

use std::{process::Command, sync::Arc, time::Duration};

use sandpool_node_agent::{
    agent::Agent,
    service::NodeAgentService,
    testkit::{TestNode as Node, gate, shell_process, template},
};
use sandpool_proto::v1::{self as pb, node_agent_client::NodeAgentClient};
use serde_json::{Value, json};

/// Run a command through the sandbox runtime's execd API over the bridge IP.
async fn exec(info: &pb::SandboxInfo, cmd: &str) -> (String, i64) {
    let resp = command_request(info, Some(&info.access_token), cmd)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let mut out = String::new();
    let mut code = 0;
    for frame in body.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let v: Value = serde_json::from_str(frame).unwrap();
        match v["type"].as_str() {
            // one event per line, without its ending ("\n" is a blank line)
            Some("stdout") => match v["text"].as_str().unwrap() {
                "\n" => out.push('\n'),
                line => {
                    out.push_str(line);
                    out.push('\n');
                }
            },
            Some("error") => code = v["error"]["evalue"].as_str().unwrap().parse().unwrap(),
            _ => {}
        }
    }
    (out, code)
}

/// A POST of `cmd` to sandbox `info`'s execd `/command` with `token` (if any).
fn command_request(
    info: &pb::SandboxInfo,
    token: Option<&str>,
    cmd: &str,
) -> reqwest::RequestBuilder {
    let url = format!("http://{}:{}/command", info.ip, info.runtime_port);
    let req = reqwest::Client::new()
        .post(url)
        .json(&json!({"command": cmd}));
    match token {
        Some(t) => req.header("x-execd-access-token", t),
        None => req,
    }
}

/// 0 when nothing answers (a released sandbox's IP has no host: fail fast).
async fn ping(info: &pb::SandboxInfo) -> u16 {
    // a frozen sandbox accepts TCP (the kernel does) but never answers: bound the whole request
    let c = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    c.get(format!("http://{}:{}/ping", info.ip, info.runtime_port))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// A private containerd and agent on bridge `sptest{n}`; `None` (the test
/// passes vacuously) when the prerequisites are missing, see `gate`. Each
/// test takes its own `n` across the workspace's real-containerd tests:
/// tests run in parallel, and two nodes on one subnet hand out the same IPs.
async fn boot(n: u8) -> Option<Node> {
    Some(Node::start(gate()?, n).await)
}

/// A new warm sandbox of `class` in `pool`, as the scheduler would see it.
async fn new_sandbox(node: &Node, pool: &str, class: pb::RuntimeClass) -> pb::SandboxInfo {
    new_sandbox_from(node, pool, template(class)).await
}

/// A new warm sandbox of template `t` in `pool`, as the scheduler would see it.
async fn new_sandbox_from(node: &Node, pool: &str, t: pb::SandboxTemplate) -> pb::SandboxInfo {
    node.agent()
        .create(pool, t, None)
        .await
        .unwrap()
        .info("test-node")
}

/// The host pid of sandbox `id`'s init.
async fn task_pid(node: &Node, id: &str) -> u32 {
    let state = node.agent().ctr().task_state(id).await.unwrap();
    state.expect("task").1
}

/// The error of `r`, which must have failed saying each of `words`.
fn fails_with<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>, words: &[&str]) -> E {
    let e = r.unwrap_err();
    let text = e.to_string();
    assert!(words.iter().all(|w| text.contains(w)), "{text}");
    e
}

/// The gRPC code of the error of `r` (an agent error or a gRPC status);
/// `r` must have failed.
fn grpc_code<T: std::fmt::Debug, E: Into<tonic::Status>>(r: Result<T, E>) -> tonic::Code {
    r.map_err(Into::into).unwrap_err().code()
}

/// A host listener on `addr` that counts the connections it accepts.
struct HostListener {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl HostListener {
    async fn bind(addr: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acc = Arc::clone(&accepted);
        let server = tokio::spawn(async move {
            while let Ok((_s, _)) = listener.accept().await {
                acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        HostListener {
            port,
            accepted,
            server,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Delete these sandboxes (by id); nothing may be left on the node.
async fn release_all(node: &Node, ids: &[&str]) {
    for id in ids {
        node.agent()
            .release(id, pb::ReleasePolicy::Delete)
            .await
            .unwrap();
    }
    node.assert_no_residue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_sandboxes_on_runc_and_runsc_survive_agent_restart() {
    let t0 = std::time::Instant::now();
    let Some(mut node) = boot(1).await else {
        return;
    };
    eprintln!("[{:?}] node started", t0.elapsed());
    let host_release = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();

    let mut infos = Vec::new();
    for class in [pb::RuntimeClass::Runc, pb::RuntimeClass::Runsc] {
        let info = new_sandbox(&node, "pool-a", class).await;
        check_fresh_sandbox(&info, class, &host_release).await;
        infos.push(info);
    }

    eprintln!("[{:?}] sandboxes created", t0.elapsed());
    // Inject an entrypoint with env into each; it writes a marker and keeps running.
    for info in &infos {
        inject_greeting(&node, info).await;
    }

    eprintln!("[{:?}] injected", t0.elapsed());
    // Two more warm ones: one untouched, one whose runtime served a request
    // but whose claimed label never got written (a crash right after inject).
    let fresh = new_sandbox(&node, "pool-a", pb::RuntimeClass::Runc).await;
    let used = new_sandbox(&node, "pool-a", pb::RuntimeClass::Runc).await;
    assert_eq!(exec(&used, "echo someone-was-here").await.1, 0);
    // Restart the agent and its containerd: nothing is lost.
    node.stop();
    eprintln!("[{:?}] stopped", t0.elapsed());
    for info in &infos {
        assert_eq!(
            ping(info).await,
            200,
            "sandbox keeps running while the agent is down"
        );
    }
    node.boot().await;
    eprintln!("[{:?}] rebooted", t0.elapsed());
    let listed = node.agent().list("pool-a");
    assert_eq!(listed.len(), 4, "all sandboxes recovered");
    check_recovered(&listed, &infos, &fresh, &used).await;

    eprintln!("[{:?}] checked after restart", t0.elapsed());
    for info in infos.iter().chain([&fresh, &used]) {
        node.agent()
            .release(&info.sandbox_id, pb::ReleasePolicy::Delete)
            .await
            .unwrap();
        assert_eq!(ping(info).await, 0, "released sandbox is gone");
    }
    eprintln!("[{:?}] released", t0.elapsed());
    node.assert_no_residue().await;
}

/// A new sandbox of `class`: warm, on the node bridge, its runtime answers
/// and enforces its token, it runs on the expected kernel with the
/// template's env, and its init reaps orphans.
async fn check_fresh_sandbox(info: &pb::SandboxInfo, class: pb::RuntimeClass, host_release: &str) {
    assert_eq!(info.state, pb::SandboxState::Warm as i32);
    assert!(
        info.ip.starts_with("10.213.1."),
        "IP on the node bridge: {}",
        info.ip
    );
    assert_eq!(
        ping(info).await,
        200,
        "runtime reachable at {}:44772",
        info.ip
    );
    let (kernel, code) = exec(info, "uname -r").await;
    assert_eq!(code, 0);
    match class {
        // gVisor reports its own kernel version
        pb::RuntimeClass::Runsc => {
            assert_ne!(kernel.trim(), host_release, "runsc sandbox runs on gVisor")
        }
        _ => assert_eq!(kernel.trim(), host_release),
    }
    let (env, _) = exec(info, "echo $TEMPLATE_VAR").await;
    assert_eq!(env, "from-template\n");
    // The token is enforced.
    let r = command_request(info, None, "true").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Orphaned grandchildren are reaped: the runtime runs as the
    // sandbox's init and keeps no zombies around.
    let (orphan, _) = exec(info, "sleep 0.2 & echo $!; exit 0").await;
    let orphan = orphan.trim().to_string();
    assert!(
        orphan.parse::<u32>().is_ok(),
        "pid of the orphan: {orphan:?}"
    );
    // Poll (up to 5 s) until the orphan has exited and been reaped (its
    // /proc entry is gone, so a zero count below is not vacuous) and no
    // zombie is left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut reaped, mut zombies);
    loop {
        reaped = exec(info, &format!("[ -e /proc/{orphan} ] || echo reaped"))
            .await
            .0;
        zombies = exec(
            info,
            "for f in /proc/[0-9]*/stat; do cut -d' ' -f3 $f; done | grep -c Z",
        )
        .await
        .0;
        if (reaped.trim() == "reaped" && zombies.trim() == "0")
            || tokio::time::Instant::now() >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(zombies.trim(), "0", "zombies in a {class:?} sandbox");
    assert_eq!(
        reaped.trim(),
        "reaped",
        "the orphan {orphan} in a {class:?} sandbox exited and was reaped within 5 s"
    );
}

/// Inject an entrypoint with env that writes a marker and keeps running.
async fn inject_greeting(node: &Node, info: &pb::SandboxInfo) {
    let (st, took) = node
        .agent()
        .inject(
            &info.sandbox_id,
            shell_process(
                "echo \"$GREETING $ROLE\" > /tmp/greeting; exec sleep 100000",
                &[("GREETING", "hello"), ("ROLE", "agent")],
            ),
        )
        .await
        .unwrap();
    assert_eq!(st.phase, pb::ProcessPhase::Running as i32);
    assert!(took < Duration::from_secs(10));
    let mut got = String::new();
    for _ in 0..100 {
        got = exec(info, "cat /tmp/greeting 2>/dev/null").await.0;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, "hello agent\n");
    assert_eq!(
        node.agent().get(&info.sandbox_id).unwrap().state,
        pb::SandboxState::Claimed
    );
}

/// After an agent and containerd restart: all sandboxes are listed with
/// their identity and state; a used one is never warm again.
async fn check_recovered(
    listed: &[pb::SandboxInfo],
    infos: &[pb::SandboxInfo],
    fresh: &pb::SandboxInfo,
    used: &pb::SandboxInfo,
) {
    let state_of = |id: &str| listed.iter().find(|s| s.sandbox_id == id).map(|s| s.state);
    assert_eq!(
        state_of(&fresh.sandbox_id),
        Some(pb::SandboxState::Warm as i32),
        "an untouched warm sandbox stays warm"
    );
    assert_eq!(
        state_of(&used.sandbox_id),
        Some(pb::SandboxState::Claimed as i32),
        "a used sandbox is never warm again"
    );
    for info in infos {
        let again = listed
            .iter()
            .find(|s| s.sandbox_id == info.sandbox_id)
            .expect("recovered");
        assert_eq!(
            (again.ip.as_str(), again.state, again.access_token.as_str()),
            (
                info.ip.as_str(),
                pb::SandboxState::Claimed as i32,
                info.access_token.as_str()
            )
        );
        assert_eq!(again.runtime_class, info.runtime_class);
        assert_eq!(exec(again, "cat /tmp/greeting").await.0, "hello agent\n");
    }
}

/// A containerd killed while it prepared a snapshot can leave the new
/// snapshot's directory behind under an id its database hands out again:
/// every later prepare then failed with "file exists" (seen in the fault
/// suite after a containerd kill). The agent cleans the snapshotter up and
/// creates the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_snapshot_directories_from_a_killed_containerd_do_not_block_creates() {
    let Some(node) = boot(12).await else { return };
    let snapshots = node
        .containerd_root()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let next = std::fs::read_dir(&snapshots)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    // the next ids the database will hand out, each already taken on disk
    for id in next + 1..=next + 8 {
        let dir = snapshots.join(id.to_string()).join("fs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("left-over"), b"x").unwrap();
    }
    let sb = node
        .agent()
        .create("pool-stale", template(pb::RuntimeClass::Runc), None)
        .await
        .expect("create after stale snapshot directories");
    assert_eq!(sb.state, pb::SandboxState::Warm);
    assert!(
        !snapshots
            .join((next + 1).to_string())
            .join("fs/left-over")
            .exists(),
        "the stale directory under the first id handed out again was removed"
    );
    release_all(&node, &[&sb.id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_whose_runtime_dies_is_reported_failed() {
    let Some(node) = boot(5).await else { return };
    let mut events = node.agent().subscribe();
    let sb = node
        .agent()
        .create("pool-f", template(pb::RuntimeClass::Runc), None)
        .await
        .unwrap();
    let pid = task_pid(&node, &sb.id).await;
    // Kill the sandbox's init from the host, as the OOM killer would.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(pb::NodeEvent {
                event: Some(pb::node_event::Event::Sandbox(info)),
            }) = events.recv().await
                && info.sandbox_id == sb.id
                && info.state == pb::SandboxState::Failed as i32
            {
                return info;
            }
        }
    })
    .await
    .expect("FAILED event");
    assert_eq!(failed.pool, "pool-f");
    assert_eq!(
        node.agent().get(&sb.id).unwrap().state,
        pb::SandboxState::Failed
    );
    release_all(&node, &[&sb.id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycle_resets_and_returns_to_warm() {
    let Some(node) = boot(2).await else { return };
    let mut t = template(pb::RuntimeClass::Runc);
    t.release_policy = pb::ReleasePolicy::Recycle as i32;
    t.command = vec![
        "sh".into(),
        "-c".into(),
        "echo default > /tmp/default; exec sleep 100000".into(),
    ];
    let sb = node
        .agent()
        .create("pool-r", t, Some("sb-recycle".into()))
        .await
        .unwrap();
    let info = sb.info("n");
    // Empty argv injects the template's default command.
    node.agent()
        .inject("sb-recycle", pb::InjectRequest::default())
        .await
        .unwrap();
    let mut got = String::new();
    for _ in 0..100 {
        got = exec(&info, "cat /tmp/default 2>/dev/null").await.0;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, "default\n");
    let fresh = node
        .agent()
        .release("sb-recycle", pb::ReleasePolicy::Unspecified)
        .await
        .unwrap()
        .expect("recycled");
    assert_eq!(fresh.state, pb::SandboxState::Warm);
    assert_eq!(fresh.ip, sb.ip, "same network identity");
    assert_ne!(
        fresh.token, sb.token,
        "a recycled sandbox gets a new runtime token"
    );
    let finfo = fresh.info("n");
    assert_eq!(
        exec(&finfo, "ls /tmp/default 2>&1 || echo gone")
            .await
            .0
            .lines()
            .last(),
        Some("gone"),
        "rootfs reset"
    );
    release_all(&node, &["sb-recycle"]).await;
}

/// In-place image upgrade: a claimed busybox sandbox restarts on the Python
/// image keeping its id, address, token and state; bad upgrades are refused
/// without touching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_restarts_a_sandbox_on_another_image_keeping_its_identity() {
    let Some(node) = boot(11).await else { return };
    let agent = node.agent();
    let sb = agent
        .create("pool-u", template(pb::RuntimeClass::Runc), None)
        .await
        .unwrap();
    agent
        .inject(
            &sb.id,
            pb::InjectRequest {
                argv: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let info = sb.info("n");
    let (host, _) = exec(&info, "hostname").await;
    assert_eq!(
        exec(&info, "command -v python3 || echo none")
            .await
            .0
            .trim(),
        "none",
        "busybox has no python"
    );

    assert_eq!(
        grpc_code(agent.upgrade(&sb.id, "no-such-image:1").await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        ping(&info).await,
        200,
        "a refused upgrade leaves the sandbox running"
    );

    let up = agent.upgrade(&sb.id, "python").await.unwrap();
    assert_eq!(
        (up.id.as_str(), up.ip, up.token.as_str(), up.state),
        (
            sb.id.as_str(),
            sb.ip,
            sb.token.as_str(),
            pb::SandboxState::Claimed
        )
    );
    assert_eq!(up.template.image, "python");
    let (out, code) = exec(&info, "python3 -c 'print(6 * 7)'").await;
    assert_eq!(
        (out.as_str(), code),
        ("42\n", 0),
        "same address and token, new image"
    );
    assert_eq!(
        exec(&info, "hostname").await.0,
        host,
        "same sandbox identity"
    );

    agent.pause(&sb.id).await.unwrap();
    assert_eq!(
        grpc_code(agent.upgrade(&sb.id, "busybox").await),
        tonic::Code::FailedPrecondition
    );
    release_all(&node, &[&sb.id]).await;
}

/// The node's agent served over gRPC on a loopback port, and a client.
async fn serve_agent(node: &Node) -> NodeAgentClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = pb::node_agent_server::NodeAgentServer::new(NodeAgentService::new(Arc::clone(
        node.agent(),
    )));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    NodeAgentClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A CreateSandbox request for pool `p`.
fn create_request(
    template: Option<pb::SandboxTemplate>,
    sandbox_id: &str,
) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        pool: "p".into(),
        template,
        sandbox_id: sandbox_id.into(),
        image_auth: None,
    }
}

/// Templates the agent must refuse, each with a word its error names.
fn bad_templates() -> Vec<(pb::SandboxTemplate, &'static str)> {
    let with = |change: fn(&mut pb::SandboxTemplate)| {
        let mut t = template(pb::RuntimeClass::Runc);
        change(&mut t);
        t
    };
    vec![
        (
            with(|t| t.image = "no-such-image:1".into()),
            "unknown image",
        ),
        (with(|t| t.resources = Some(resources("lots", ""))), "cpu"),
        (
            with(|t| t.resources = Some(resources("", "12XB"))),
            "memory",
        ),
        (with(|t| t.runtime_class = 7), "runtime class"),
        (with(|t| t.image.clear()), "image is required"),
    ]
}

fn resources(cpu: &str, memory: &str) -> pb::Resources {
    pb::Resources {
        cpu: cpu.into(),
        memory: memory.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_templates_get_clear_grpc_errors_and_leave_no_residue() {
    let Some(node) = boot(3).await else { return };
    let mut c = serve_agent(&node).await;

    for (t, needle) in bad_templates() {
        let e = c
            .create_sandbox(create_request(Some(t), ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains(needle),
            "{:?} should mention {needle:?}",
            e.message()
        );
    }
    let bad_id = create_request(Some(template(pb::RuntimeClass::Runc)), "bad/id");
    for req in [create_request(None, ""), bad_id] {
        let code = grpc_code(c.create_sandbox(req).await);
        assert_eq!(code, tonic::Code::InvalidArgument);
    }
    let release = pb::ReleaseRequest {
        sandbox_id: "nope".into(),
        policy: 0,
    };
    assert_eq!(grpc_code(c.release(release).await), tonic::Code::NotFound);
    let checkpoint = pb::CheckpointRequest {
        sandbox_id: "nope".into(),
        leave_running: false,
        ..Default::default()
    };
    assert_eq!(
        grpc_code(c.checkpoint(checkpoint).await),
        tonic::Code::NotFound,
        "an unknown sandbox is not found (support is checked per sandbox)"
    );
    let restore = pb::RestoreRequest {
        checkpoint_id: "nope".into(),
        sandbox_id: String::new(),
    };
    assert_eq!(grpc_code(c.restore(restore).await), tonic::Code::NotFound);

    // The watch stream starts with a capacity snapshot.
    let mut w = c.watch(pb::WatchRequest {}).await.unwrap().into_inner();
    let first = w.message().await.unwrap().unwrap();
    assert!(
        matches!(first.event, Some(pb::node_event::Event::Capacity(ref cap)) if cap.max_sandboxes > 0 && cap.sandboxes == 0)
    );
    node.assert_no_residue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_python_image_is_built_once_and_runs_python() {
    let Some(node) = boot(4).await else { return };
    let t = pb::SandboxTemplate {
        image: "python".into(),
        ..template(pb::RuntimeClass::Runc)
    };
    let sb = node.agent().create("py", t, None).await.unwrap();
    let info = sb.info("n");
    let (out, code) = exec(
        &info,
        "python3 -c 'import sys; print(sum(range(10)), sys.version_info.major)'",
    )
    .await;
    assert_eq!((out.as_str(), code), ("45 3\n", 0));
    let (os, _) = exec(&info, "cat /etc/debian_version").await;
    assert!(
        os.trim().chars().next().is_some_and(|c| c.is_ascii_digit()),
        "Debian rootfs: {os:?}"
    );
    release_all(&node, &[&sb.id]).await;
}

/// Kubernetes mode: a container carrying the kubelet's CRI labels is found by
/// pod and paused/resumed as a pod; a counter keeps its value across the pause.
/// Label a sandbox's container as the CRI labels a pod's container
/// (`sandpool/agent-pool-abcde`).
async fn label_as_cri_pod(node: &Node, sandbox_id: &str) {
    use sandpool_node_agent::cri;
    let labels = [
        (cri::POD_NAMESPACE, "sandpool"),
        (cri::POD_NAME, "agent-pool-abcde"),
        (cri::POD_UID, "uid-1"),
        (cri::CONTAINER_NAME, "sandbox-container"),
        (cri::CRI_KIND, "container"),
        // the pod's own labels live on its pause container in a cluster
        cri::MANAGED_BY,
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    node.agent()
        .ctr()
        .set_labels(sandbox_id, labels)
        .await
        .unwrap();
}

/// The counter a sandbox writes to /tmp/c, read through its runtime (up to 5 s
/// for it to start).
async fn read_counter(info: &pb::SandboxInfo) -> u64 {
    for _ in 0..100 {
        if let Ok(v) = exec(info, "cat /tmp/c 2>/dev/null")
            .await
            .0
            .trim()
            .parse::<u64>()
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the counter never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_labelled_pods_pause_and_resume_keeping_state() {
    use sandpool_node_agent::cri::CriNode;
    let Some(node) = boot(7).await else { return };
    let info = new_sandbox(&node, "pool-k", pb::RuntimeClass::Runc).await;
    label_as_cri_pod(&node, &info.sandbox_id).await;
    let cri = CriNode::new(node.agent().ctr().clone(), "test-node");
    let pods = cri.pods().await.unwrap();
    assert!(
        pods.iter().any(|p| p.id() == "sandpool/agent-pool-abcde"),
        "{pods:?}"
    );
    // pods sandpool does not manage, and ids that are no pod, are refused by name
    fails_with(
        cri.pause("kube-system/coredns").await,
        &["kube-system/coredns", "not found"],
    );
    fails_with(
        cri.pause("sbx-1").await,
        &["\"sbx-1\"", "<namespace>/<pod>"],
    );
    assert_eq!(
        grpc_code(cri.pause("kube-system/coredns").await),
        tonic::Code::NotFound
    );
    assert_eq!(
        grpc_code(cri.pause("sbx-1").await),
        tonic::Code::InvalidArgument
    );

    // a counter ticking every 50 ms (written with a rename: never seen half-written)
    let (_, code) =
        exec(&info, "(i=0; while true; do i=$((i+1)); echo $i > /tmp/c.t && mv /tmp/c.t /tmp/c; sleep 0.05; done) >/dev/null 2>&1 &").await;
    assert_eq!(code, 0);
    let counter = || read_counter(&info);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = counter().await;
    assert!(before > 0);
    // While frozen nothing inside answers (an exec would hang): read the
    // counter from the host, through the sandbox init's root.
    let pid = task_pid(&node, &info.sandbox_id).await;
    let on_host = format!("/proc/{pid}/root/tmp/c");
    let host_counter = || -> u64 {
        let text =
            std::fs::read_to_string(&on_host).unwrap_or_else(|e| panic!("read {on_host}: {e}"));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{on_host} holds {text:?}: {e}"))
    };
    assert!(
        host_counter() >= before,
        "the host path sees the same counter"
    );
    fails_with(
        cri.resume("sandpool/agent-pool-abcde").await,
        &["not paused"],
    );
    cri.pause("sandpool/agent-pool-abcde").await.unwrap();
    fails_with(
        cri.pause("sandpool/agent-pool-abcde").await,
        &["already paused"],
    );
    assert_eq!(ping(&info).await, 0, "a frozen sandbox does not answer");
    // frozen: ~20 ticks would happen in a running second, none happen here
    let frozen = host_counter();
    assert!(frozen >= before, "before {before}, frozen at {frozen}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        host_counter(),
        frozen,
        "the counter stands still while the pod is paused"
    );
    cri.resume("sandpool/agent-pool-abcde").await.unwrap();
    let after = counter().await;
    // state kept: it goes on from where it was frozen, not from scratch
    assert!(
        after >= frozen,
        "frozen at {frozen}, right after resume {after}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut later = after;
    while later <= after && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        later = counter().await;
    }
    assert!(
        later > after,
        "it runs again within 10 s of resume: {after} -> {later}"
    );
    fails_with(cri.pause("sandpool/unknown").await, &["no containers"]);
    fails_with(cri.pause("no-slash").await, &["<namespace>/<pod>"]);
    release_all(&node, &[&info.sandbox_id]).await;
}

/// Tenants kept apart on the node bridge: a sandbox cannot open connections
/// to another sandbox's runtime, nor to anything on the host (node agent,
/// scheduler, gateway...); the host still reaches every runtime; a runtime
/// token of one sandbox is refused by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_cannot_reach_each_other_or_the_host() {
    let Some(node) = boot(8).await else { return };
    let a = new_sandbox(&node, "pool-n", pb::RuntimeClass::Runc).await;
    let b = new_sandbox(&node, "pool-n", pb::RuntimeClass::Runc).await;
    // something listening on the host, on every address (like an agent or gateway would)
    let host = HostListener::bind("0.0.0.0:0").await;
    let gateway = node.agent().cfg.net.gateway_ip().unwrap();
    // from inside A: its own runtime answers (control); B's runtime and the host do not
    let probe = |target: String| {
        format!(
            "if nc -w 2 {target} </dev/null >/dev/null 2>&1; then echo open; else echo closed; fi"
        )
    };
    let (own, _) = exec(&a, &probe(format!("127.0.0.1 {}", a.runtime_port))).await;
    assert_eq!(
        own.trim(),
        "open",
        "control: a sandbox reaches its own runtime"
    );
    let (other, _) = exec(&a, &probe(format!("{} {}", b.ip, b.runtime_port))).await;
    assert_eq!(
        other.trim(),
        "closed",
        "sandbox A reached sandbox B's runtime"
    );
    let (to_host, _) = exec(&a, &probe(format!("{gateway} {}", host.port))).await;
    assert_eq!(to_host.trim(), "closed", "sandbox A reached a host port");
    assert_eq!(
        host.accepted(),
        0,
        "the host accepted a connection from a sandbox"
    );
    // the host still reaches both runtimes
    assert_eq!(ping(&a).await, 200);
    assert_eq!(ping(&b).await, 200);
    // B's runtime refuses A's token
    let r = command_request(&b, Some(&a.access_token), "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a token of one sandbox works on another");
    assert_ne!(a.access_token, b.access_token);
    drop(host);
    release_all(&node, &[&a.sandbox_id, &b.sandbox_id]).await;
}

/// Process hardening: a default sandbox runs as the unprivileged `user`
/// (uid 61000, home /home/user) with no capabilities, no new privileges and the
/// seccomp profile; a root pool keeps root but not user namespaces (seccomp,
/// not capabilities, refuses them: the host allows `unshare -U` to anyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_run_unprivileged_under_seccomp() {
    let Some(node) = boot(6).await else { return };
    let probe = "id -u; id -g; echo $HOME; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status | tr -s '\t ' ' '; \
                 if unshare -U true 2>/dev/null; then echo userns-allowed; else echo userns-denied; fi; \
                 if touch /etc/probe 2>/dev/null; then echo etc-writable; else echo etc-denied; fi; \
                 if touch $HOME/probe; then echo home-writable; fi; \
                 if echo x >> /.sandpool/sandpool-runtime 2>/dev/null; then echo runtime-writable; else echo runtime-readonly; fi";
    let user = new_sandbox(&node, "pool-h", pb::RuntimeClass::Runc).await;
    let (out, code) = exec(&user, probe).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let (uid, gid) = sandpool_node_agent::spec::SANDBOX_USER;
    assert_eq!(
        &lines[..3],
        [
            uid.to_string().as_str(),
            gid.to_string().as_str(),
            "/home/user"
        ],
        "{out}"
    );
    for want in [
        "Seccomp: 2",
        "NoNewPrivs: 1",
        "CapEff: 0000000000000000",
        "userns-denied",
        "etc-denied",
        "home-writable",
        "runtime-readonly",
    ] {
        assert!(lines.contains(&want), "{want:?} not in {out}");
    }
    let root_t = pb::SandboxTemplate {
        run_as_root: true,
        ..template(pb::RuntimeClass::Runc)
    };
    let root = new_sandbox_from(&node, "pool-h", root_t).await;
    let (out, _) = exec(&root, probe).await;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "0", "{out}");
    for want in [
        "Seccomp: 2",
        "NoNewPrivs: 1",
        "userns-denied",
        "etc-writable",
        "runtime-readonly",
    ] {
        assert!(lines.contains(&want), "{want:?} not in {out}");
    }
    assert!(
        !lines.contains(&"CapEff: 0000000000000000"),
        "root keeps its reduced capability set: {out}"
    );
    release_all(&node, &[&user.sandbox_id, &root.sandbox_id]).await;
}

/// Checkpoint on this node (CRIU fails on its kernel; runsc needs a
/// network-less sandbox): no working path, and the error says which and why.
async fn checkpoint_is_unsupported_here(
    agent: &Arc<Agent>,
    runc: &pb::SandboxInfo,
    runsc: &pb::SandboxInfo,
) {
    fails_with(
        agent.checkpoint(&runsc.sandbox_id, false, "", "").await,
        &["unsupported on this node", "gvisor#6243"],
    );
    let e = fails_with(
        agent.checkpoint(&runc.sandbox_id, false, "", "").await,
        &["unsupported on this node", "CRIU"],
    );
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unimplemented);
}

/// Dynamic mounts: a host directory under the mount root appears inside a
/// running sandbox (read-only or read-write), is gone after unmount, and bad
/// requests get clear errors; nothing is left after release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_directories_mount_into_a_running_sandbox_and_unmount() {
    let Some(node) = boot(9).await else { return };
    let agent = node.agent();
    let a = new_sandbox(&node, "pool-m", pb::RuntimeClass::Runc).await;
    let root = agent.cfg.mount_roots[0].clone();
    let (ro, rw) = (root.join("dataset"), root.join("results"));
    for d in [&ro, &rw] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(ro.join("hello.txt"), "from the host\n").unwrap();
    // sandboxes run as uid 61000: a volume they write to is theirs (as with fsGroup)
    let (uid, gid) = sandpool_node_agent::spec::SANDBOX_USER;
    std::os::unix::fs::chown(&rw, Some(uid), Some(gid)).unwrap();

    agent
        .mount(&a.sandbox_id, ro.to_str().unwrap(), "/mnt/data", true)
        .await
        .unwrap();
    agent
        .mount(&a.sandbox_id, rw.to_str().unwrap(), "/work/out", false)
        .await
        .unwrap();
    let (out, code) = exec(&a, "cat /mnt/data/hello.txt").await;
    assert_eq!((out.as_str(), code), ("from the host\n", 0));
    let (_, code) = exec(&a, "touch /mnt/data/new 2>/dev/null").await;
    assert_ne!(code, 0, "a read-only mount refuses writes");
    let (_, code) = exec(&a, "echo written-inside > /work/out/result.txt").await;
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(rw.join("result.txt")).unwrap(),
        "written-inside\n",
        "writes reach the host"
    );

    agent.unmount(&a.sandbox_id, "/mnt/data").await.unwrap();
    let (out, _) = exec(&a, "cat /mnt/data/hello.txt 2>/dev/null || echo gone").await;
    assert_eq!(out.trim(), "gone", "unmounted");

    // clear errors
    fails_with(
        agent.mount(&a.sandbox_id, "/etc", "/mnt/etc", true).await,
        &["not under a mount root"],
    );
    fails_with(
        agent
            .mount(&a.sandbox_id, ro.to_str().unwrap(), "/proc/x", true)
            .await,
        &["reserved"],
    );
    fails_with(
        agent.unmount(&a.sandbox_id, "/mnt/data").await,
        &["not a mount"],
    );
    let g = new_sandbox(&node, "pool-m", pb::RuntimeClass::Runsc).await;
    fails_with(
        agent
            .mount(&g.sandbox_id, ro.to_str().unwrap(), "/mnt/data", true)
            .await,
        &["need a runc sandbox"],
    );
    checkpoint_is_unsupported_here(agent, &a, &g).await;
    agent.pause(&a.sandbox_id).await.unwrap();
    fails_with(agent.pause(&a.sandbox_id).await, &["already paused"]);
    fails_with(
        agent
            .mount(&a.sandbox_id, ro.to_str().unwrap(), "/mnt/x", true)
            .await,
        &["paused"],
    );
    agent.resume(&a.sandbox_id).await.unwrap();
    fails_with(agent.resume(&a.sandbox_id).await, &["not paused"]);

    for sb in [&a, &g] {
        agent
            .release(&sb.sandbox_id, pb::ReleasePolicy::Delete)
            .await
            .unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(ro.join("hello.txt")).unwrap(),
        "from the host\n",
        "the host data is untouched"
    );
    node.assert_no_residue().await;
}

/// Python code run by the in-memory REPL started by [`start_repl`]: its
/// printed output.
async fn py(info: &pb::SandboxInfo, src: &str) -> String {
    let cmd = format!(
        "printf '%s' '{src}' > /tmp/in.tmp && mv /tmp/in.tmp /tmp/in.py && \
         for i in $(seq 1000); do [ -f /tmp/out ] && break; sleep 0.01; done; cat /tmp/out && rm -f /tmp/out"
    );
    let (out, code) = exec(info, &cmd).await;
    assert_eq!(code, 0, "{src}: {out}");
    out
}

/// A Python process whose only state is in its memory: it runs what
/// /tmp/in.py holds in one namespace and leaves what it printed in /tmp/out.
async fn start_repl(info: &pb::SandboxInfo) {
    let prog = "import contextlib, io, os, time\n\
                g = {}\n\
                while True:\n\
                \x20   try:\n\
                \x20       src = open('/tmp/in.py').read()\n\
                \x20       os.remove('/tmp/in.py')\n\
                \x20   except FileNotFoundError:\n\
                \x20       time.sleep(0.01)\n\
                \x20       continue\n\
                \x20   buf = io.StringIO()\n\
                \x20   with contextlib.redirect_stdout(buf):\n\
                \x20       exec(src, g)\n\
                \x20   open('/tmp/out.tmp', 'w').write(buf.getvalue())\n\
                \x20   os.rename('/tmp/out.tmp', '/tmp/out')\n";
    let hex: String = prog.bytes().map(|b| format!("{b:02x}")).collect();
    let url = format!("http://{}:{}/command", info.ip, info.runtime_port);
    let resp = reqwest::Client::new()
        .post(url)
        .header("x-execd-access-token", &info.access_token)
        .json(&json!({"command": format!("exec python3 -u -c \"exec(bytes.fromhex('{hex}'))\""), "background": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(py(info, "print(40 + 2)").await, "42\n", "the REPL answers");
}

/// Checkpointable runsc sandboxes (gVisor without a network, runtime reached
/// through the agent's tunnel): Python state survives checkpoint, kill and
/// restore; one checkpoint forks into 3 sandboxes that go on independently;
/// clear errors; nothing left behind.
/// Fork three sandboxes from one checkpoint: each goes on with its own
/// state from there, and the first restore is untouched.
async fn fork_three(
    agent: &Arc<Agent>,
    ck: &pb::CheckpointInfo,
    restored: &pb::SandboxInfo,
) -> Vec<pb::SandboxInfo> {
    let forks: Vec<pb::SandboxInfo> = agent
        .fork(&ck.checkpoint_id, 3)
        .await
        .unwrap()
        .iter()
        .map(|s| s.info("test-node"))
        .collect();
    assert_eq!(forks.len(), 3);
    for (i, f) in forks.iter().enumerate() {
        assert_eq!(
            py(f, &format!("a += {}; print(a)", 10 * (i + 1))).await,
            format!("{}\n", 1 + 10 * (i + 1))
        );
    }
    for (i, f) in forks.iter().enumerate() {
        assert_eq!(
            py(f, "print(a)").await,
            format!("{}\n", 1 + 10 * (i + 1)),
            "fork {i} kept its own state"
        );
    }
    assert_eq!(
        py(restored, "print(a)").await,
        "1\n",
        "the first restore is untouched by the forks"
    );

    forks
}

/// Checkpoint, restore and fork refuse bad requests with clear errors.
async fn checkpoint_errors(agent: &Arc<Agent>, fork: &pb::SandboxInfo, ck: &pb::CheckpointInfo) {
    agent.pause(&fork.sandbox_id).await.unwrap();
    let e = fails_with(
        agent.checkpoint(&fork.sandbox_id, false, "", "").await,
        &["paused"],
    );
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::FailedPrecondition
    );
    agent.resume(&fork.sandbox_id).await.unwrap();
    assert_eq!(
        grpc_code(agent.restore("ck-nope", None).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        grpc_code(agent.restore("../etc", None).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        grpc_code(agent.fork(&ck.checkpoint_id, 0).await),
        tonic::Code::InvalidArgument
    );
    fails_with(
        agent
            .create(
                "pool-ck",
                pb::SandboxTemplate {
                    checkpointable: true,
                    ..template(pb::RuntimeClass::Runc)
                },
                None,
            )
            .await,
        &["RUNSC"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_checkpoint_restore_and_fork_keep_python_state() {
    let Some(node) = boot(10).await else { return };
    let agent = node.agent();
    let t = pb::SandboxTemplate {
        image: "python".into(),
        checkpointable: true,
        ..template(pb::RuntimeClass::Runsc)
    };
    let sb = new_sandbox_from(&node, "pool-ck", t.clone()).await;
    assert_eq!(sb.ip, "127.0.0.1", "reached through the agent");
    assert_ne!(sb.runtime_port, 44772);
    let (nics, _) = exec(
        &sb,
        "python3 -c 'import socket; print(*[n for _, n in socket.if_nameindex()])'",
    )
    .await;
    assert_eq!(nics.trim(), "lo", "loopback only");
    start_repl(&sb).await;
    assert_eq!(py(&sb, "a = 1").await, "");

    // leave running: the sandbox goes on from its checkpoint, same address
    let ck = agent
        .checkpoint(&sb.sandbox_id, true, "", "")
        .await
        .unwrap();
    assert!(
        ck.size_bytes > 0 && ck.sandbox_id == sb.sandbox_id && ck.image == "python",
        "{ck:?}"
    );
    let after = agent.get(&sb.sandbox_id).unwrap().info("test-node");
    assert_eq!(
        (after.state, after.runtime_port),
        (pb::SandboxState::Warm as i32, sb.runtime_port)
    );
    assert_eq!(py(&sb, "a += 1; print(a)").await, "2\n");
    // killed; the checkpoint brings back a = 1
    agent
        .release(&sb.sandbox_id, pb::ReleasePolicy::Delete)
        .await
        .unwrap();
    assert_eq!(ping(&sb).await, 0, "gone");
    let r = agent
        .restore(&ck.checkpoint_id, None)
        .await
        .unwrap()
        .info("test-node");
    assert_eq!(r.state, pb::SandboxState::Claimed as i32);
    assert_eq!(py(&r, "print(a)").await, "1\n");

    let forks = fork_three(agent, &ck, &r).await;

    // a checkpoint without leave_running stops the sandbox
    let ck2 = agent
        .checkpoint(&r.sandbox_id, false, "", "")
        .await
        .unwrap();
    assert!(
        agent.get(&r.sandbox_id).is_err(),
        "stopped and removed by its checkpoint"
    );
    let ids: Vec<String> = agent
        .list_checkpoints()
        .into_iter()
        .map(|c| c.checkpoint_id)
        .collect();
    assert!(
        ids.contains(&ck.checkpoint_id) && ids.contains(&ck2.checkpoint_id),
        "{ids:?}"
    );

    checkpoint_errors(agent, &forks[0], &ck).await;

    for f in &forks {
        agent
            .release(&f.sandbox_id, pb::ReleasePolicy::Delete)
            .await
            .unwrap();
    }
    for c in [&ck, &ck2] {
        agent.delete_checkpoint(&c.checkpoint_id).unwrap();
    }
    assert!(agent.list_checkpoints().is_empty());
    assert_eq!(
        std::fs::read_dir(agent.cfg.data_dir.join("checkpoints"))
            .unwrap()
            .count(),
        0,
        "checkpoint store empty"
    );
    node.assert_no_residue().await;
}

/// A host cgroup file of sandbox `info`'s init, for `controller` (cgroup v1
/// hierarchy, or the unified one when the controller is only there).
async fn cgroup_file(node: &Node, info: &pb::SandboxInfo, controller: &str, file: &str) -> String {
    let pid = task_pid(node, &info.sandbox_id).await;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cg
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {cg}"));
    let full = format!("/sys/fs/cgroup/{controller}{path}/{file}");
    std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("{full}: {e}"))
        .trim()
        .to_string()
}

/// A sandbox's memory limit, CPU quota and pids maximum, as its cgroups say.
async fn cgroup_limits(node: &Node, info: &pb::SandboxInfo) -> [String; 3] {
    [
        cgroup_file(node, info, "memory", "memory.limit_in_bytes").await,
        cgroup_file(node, info, "cpu", "cpu.cfs_quota_us").await,
        cgroup_file(node, info, "pids", "pids.max").await,
    ]
}

/// A template that says nothing about resources: the node's defaults apply.
fn template_without_limits(class: pb::RuntimeClass) -> pb::SandboxTemplate {
    pb::SandboxTemplate {
        resources: None,
        ..template(class)
    }
}

/// Every sandbox, runc and runsc, runs under the node's default cpu, memory
/// and pids limits when its template sets none; a template asking for more
/// than the node maximum is refused before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_without_limits_in_their_template_get_the_node_defaults() {
    let Some(node) = boot(18).await else { return };
    let mut ids = Vec::new();
    for class in [pb::RuntimeClass::Runc, pb::RuntimeClass::Runsc] {
        let info = new_sandbox_from(&node, "pool-l", template_without_limits(class)).await;
        let [mem, quota, pids] = cgroup_limits(&node, &info).await;
        eprintln!("{class:?}: pids.max={pids} memory={mem} cfs_quota={quota}");
        assert_eq!(pids, "512", "{class:?} pids.max");
        assert_eq!(mem, (512u64 << 20).to_string(), "{class:?} memory limit");
        assert_eq!(quota, "100000", "{class:?} cpu quota (1 core)");
        ids.push(info.sandbox_id);
    }
    let big = pb::SandboxTemplate {
        resources: Some(resources("1", "64Gi")),
        ..template(pb::RuntimeClass::Runc)
    };
    fails_with(node.agent().create("pool-l", big, None).await, &["maximum"]);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    release_all(&node, &ids).await;
}

/// Bounded: at most 2000 sleepers of 6 s each.
const FORK_BOMB: &str = "i=0; while [ $i -lt 2000 ]; do sleep 6 >/dev/null 2>&1 & i=$((i+1)); done";

/// Tasks of sandbox `info` as the host counts them (threads included).
async fn host_tasks(node: &Node, info: &pb::SandboxInfo) -> usize {
    cgroup_file(node, info, "pids", "tasks")
        .await
        .lines()
        .count()
}

/// A fork bomb in a default runc sandbox stops at pids.max, a 1 GiB
/// allocation is OOM-killed inside the sandbox, and the sandbox's runtime
/// and the agent keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_and_a_big_allocation_stay_inside_the_sandbox() {
    let Some(node) = boot(19).await else { return };
    let t = template_without_limits(pb::RuntimeClass::Runc);
    let info = new_sandbox_from(&node, "pool-b", t).await;
    let bomb = format!("{FORK_BOMB}; echo spawned $i");
    let started = std::time::Instant::now();
    let (out, _) = tokio::time::timeout(Duration::from_secs(30), exec(&info, &bomb))
        .await
        .unwrap_or_default();
    let tasks = host_tasks(&node, &info).await;
    let peak = cgroup_file(&node, &info, "pids", "pids.current").await;
    eprintln!(
        "fork bomb: {out:?} after {:?}; {tasks} tasks on the host, pids.current={peak}",
        started.elapsed()
    );
    assert!(tasks <= 512, "{tasks} tasks: the pids limit did not hold");
    assert!(tasks >= 256, "{tasks} tasks: the bomb did not run");
    assert_eq!(
        ping(&info).await,
        200,
        "the runtime answers during the bomb"
    );
    assert_eq!(node.agent().list("").len(), 1, "the agent answers");
    tokio::time::sleep(Duration::from_secs(7)).await;
    // 1 GiB in one buffer against the 512 MiB default
    let started = std::time::Instant::now();
    let (out, _) = exec(
        &info,
        "dd if=/dev/zero of=/dev/null bs=1G count=1 2>/dev/null; echo rc=$?",
    )
    .await;
    let took = started.elapsed();
    let failcnt = cgroup_file(&node, &info, "memory", "memory.failcnt").await;
    eprintln!("1 GiB allocation: {out:?} after {took:?}, memory.failcnt={failcnt}");
    assert_eq!(out.trim(), "rc=137", "the allocation was not OOM-killed");
    assert!(took < Duration::from_secs(20), "OOM kill took {took:?}");
    assert_eq!(ping(&info).await, 200, "the runtime survives the OOM kill");
    release_all(&node, &[&info.sandbox_id]).await;
}

/// IPv6 is closed like IPv4: a host listener on [::] is not reachable from
/// a sandbox through the bridge's link-local address (it is from the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_cannot_reach_the_host_over_ipv6() {
    const N: u8 = 20;
    let Some(node) = boot(N).await else { return };
    let info = new_sandbox(&node, "pool-6", pb::RuntimeClass::Runc).await;
    let host = HostListener::bind("[::]:0").await;
    let port = host.port;
    // control: the host itself reaches it over IPv6
    tokio::net::TcpStream::connect(("::1", port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(host.accepted(), 1);
    let bridge = format!("sptest{N}");
    let out = Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", &bridge, "scope", "link"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let link_local = text
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("bridge has no link-local address: {text}"))
        .to_string();
    let probe = format!(
        "if nc -w 2 {link_local}%eth0 {port} </dev/null >/dev/null 2>&1; then echo open; else echo closed; fi; \
         cat /proc/sys/net/ipv6/conf/all/disable_ipv6"
    );
    let (out, _) = exec(&info, &probe).await;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines.first(),
        Some(&"closed"),
        "reached [{link_local}]:{port}: {out}"
    );
    assert_eq!(
        host.accepted(),
        1,
        "the host accepted an IPv6 connection from a sandbox"
    );
    assert_eq!(
        lines.get(1),
        Some(&"1"),
        "IPv6 is off in the sandbox: {out}"
    );
    drop(host);
    release_all(&node, &[&info.sandbox_id]).await;
}

/// A sandbox writing 10 MiB to its stdout leaves a host log no bigger than
/// the cap; released, its log is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_logs_are_capped_and_removed_on_release() {
    let Some(node) = boot(21).await else { return };
    let fill = "head -c 10485760 /dev/zero | tr '\\0' x > /proc/1/fd/1 && echo written";
    // an unprivileged sandbox's commands cannot reach the runtime's stdout:
    // the runtime holds capabilities they lack (ptrace access is refused)
    let user = new_sandbox(&node, "pool-g", pb::RuntimeClass::Runc).await;
    let (out, code) = exec(&user, fill).await;
    assert_ne!((out.trim(), code), ("written", 0), "{out}");
    release_all(&node, &[&user.sandbox_id]).await;
    // a root sandbox's commands can, as its tenant may fill the log
    let root_t = pb::SandboxTemplate {
        run_as_root: true,
        ..template(pb::RuntimeClass::Runc)
    };
    let info = new_sandbox_from(&node, "pool-g", root_t).await;
    let log = node.agent().log_path(&info.sandbox_id);
    assert!(
        log.is_file(),
        "{} exists while the sandbox runs",
        log.display()
    );
    let (out, code) = exec(&info, fill).await;
    assert_eq!((out.trim(), code), ("written", 0));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let len = std::fs::metadata(&log).unwrap().len();
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&log).unwrap());
    eprintln!("log after 10 MiB of stdout: {len} bytes, {blocks} blocks");
    let cap = node.agent().cfg.log_cap_bytes;
    assert!(len <= cap, "log is {len} bytes, over the {cap}-byte cap");
    // the shim keeps appending while the agent truncates, so a few of its
    // bytes may land between the truncation and the marker
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(sandpool_node_agent::agent::LOG_TRUNCATED),
        "a truncated log says so: {:?}",
        &text[..text.len().min(120)]
    );
    assert_eq!(ping(&info).await, 200, "the runtime keeps running");
    release_all(&node, &[&info.sandbox_id]).await;
    assert!(!log.exists(), "{} survived release", log.display());
}

/// Wait (bounded) until sandbox `id` is reported FAILED; returns its report.
async fn wait_failed(node: &Node, id: &str, within: Duration) -> pb::SandboxInfo {
    let deadline = std::time::Instant::now() + within;
    loop {
        let info = node.agent().get(id).unwrap().info("test-node");
        if info.state == pb::SandboxState::Failed as i32 && !info.message.is_empty() {
            return info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox {id} not reported failed within {within:?}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until FAILED sandbox `id`'s reason starts with `prefix` (within
/// `within`): that report.
async fn wait_reason(node: &Node, id: &str, prefix: &str, within: Duration) -> pb::SandboxInfo {
    let deadline = std::time::Instant::now() + within;
    loop {
        let info = node.agent().get(id).unwrap().info("test-node");
        if info.state == pb::SandboxState::Failed as i32 && info.message.starts_with(prefix) {
            return info;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox {id}'s reason is not {prefix:?} within {within:?}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// runsc enforces the limits on the whole gVisor sandbox (its kernel and
/// its ptrace stubs are the host processes): a 1 GiB allocation kills the
/// sandbox, reported FAILED with reason OOMKilled; a fork bomb runs into
/// pids.max and stops the sandbox, reported FAILED. The host, the agent and
/// the other sandboxes are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_sandboxes_over_their_limits_are_stopped_and_reported() {
    let Some(node) = boot(13).await else { return };
    let mut made = Vec::new();
    for _ in 0..3 {
        let t = template_without_limits(pb::RuntimeClass::Runsc);
        made.push(new_sandbox_from(&node, "pool-r", t).await);
    }
    let (mem, bomb, bystander) = (&made[0], &made[1], &made[2]);
    let dd = "dd if=/dev/zero of=/dev/null bs=1G count=1";
    run_until_failed(&node, mem, dd, "runsc 1 GiB allocation").await;
    // the sandbox's exit and containerd's OOM event race: the exit may be
    // reported first ("exited with status 137"), the OOM then gives the reason
    let failed = wait_reason(&node, &mem.sandbox_id, "OOMKilled", Duration::from_secs(10)).await;
    assert!(failed.oom_kills >= 1, "{failed:?}");
    run_until_failed(&node, bomb, FORK_BOMB, "runsc fork bomb").await;
    assert_eq!(ping(bystander).await, 200, "another sandbox is untouched");
    assert_eq!(node.agent().list("").len(), 3, "the agent answers");
    let ids: Vec<&str> = made.iter().map(|i| i.sandbox_id.as_str()).collect();
    release_all(&node, &ids).await;
}

/// Run `cmd` in sandbox `info` in the background until the agent reports the
/// sandbox FAILED (within 20 s): that report.
async fn run_until_failed(
    node: &Node,
    info: &pb::SandboxInfo,
    cmd: &'static str,
    what: &str,
) -> pb::SandboxInfo {
    let started = std::time::Instant::now();
    let target = info.clone();
    tokio::spawn(async move {
        let _ = raw_exec(&target, cmd).await;
    });
    let failed = wait_failed(node, &info.sandbox_id, Duration::from_secs(20)).await;
    eprintln!("{what}: {:?} after {:?}", failed.message, started.elapsed());
    failed
}

/// A sandbox (runc or runsc) that writes more than its disk limit to its
/// root file system is stopped within a check period and reported FAILED
/// (DiskLimitExceeded); a neighbour that writes less keeps running, and
/// release removes what the stopped ones wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_over_their_disk_limit_are_stopped_and_reported() {
    let Some(runtime) = gate() else { return };
    let node = Node::start_configured(runtime, 14, |c| c.disk_limit_bytes = 64 << 20).await;
    let neighbour = new_sandbox(&node, "pool-d", pb::RuntimeClass::Runc).await;
    let (out, code) = exec(
        &neighbour,
        "dd if=/dev/zero of=$HOME/small bs=1M count=16 2>/dev/null && sync && echo written",
    )
    .await;
    assert_eq!((out.trim(), code), ("written", 0), "below the limit");
    let mut ids = vec![neighbour.sandbox_id.clone()];
    for class in [pb::RuntimeClass::Runc, pb::RuntimeClass::Runsc] {
        let writer = new_sandbox(&node, "pool-d", class).await;
        ids.push(writer.sandbox_id.clone());
        let failed = run_until_failed(
            &node,
            &writer,
            "dd if=/dev/zero of=$HOME/big bs=1M count=256; sync",
            &format!("{class:?}: 256 MiB written against a 64 MiB limit"),
        )
        .await;
        assert!(
            failed.message.starts_with("DiskLimitExceeded") && failed.message.contains("64 MiB"),
            "{class:?}: {failed:?}"
        );
    }
    // a full check period later the neighbour is still running
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ping(&neighbour).await, 200, "the neighbour keeps running");
    let state = node.agent().get(&neighbour.sandbox_id).unwrap().state;
    assert_eq!(state, pb::SandboxState::Warm);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    release_all(&node, &ids).await;
}

/// Run `cmd` in the sandbox; whatever comes back (the sandbox may die).
async fn raw_exec(info: &pb::SandboxInfo, cmd: &str) -> String {
    let resp = command_request(info, Some(&info.access_token), cmd)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match resp {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

/// A network namespace the test makes, linked to the host by a veth pair
/// (`10.250.N.1` on the host, `10.250.N.2` inside), with a minimal HTTP
/// listener on `ports` inside: a destination outside the sandbox network.
struct Outside {
    name: String,
    addr: String,
}

impl Outside {
    fn start(n: u8, ports: &[u16]) -> Outside {
        let name = format!("spegr{n}");
        let (host, inner) = (format!("10.250.{n}.1"), format!("10.250.{n}.2"));
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        for args in [
            vec!["netns", "add", &name],
            vec![
                "link",
                "add",
                &format!("{name}h"),
                "type",
                "veth",
                "peer",
                "name",
                &format!("{name}n"),
            ],
            vec!["link", "set", &format!("{name}n"), "netns", &name],
            vec![
                "addr",
                "add",
                &format!("{host}/30"),
                "dev",
                &format!("{name}h"),
            ],
            vec!["link", "set", &format!("{name}h"), "up"],
            vec![
                "-n",
                &name,
                "addr",
                "add",
                &format!("{inner}/30"),
                "dev",
                &format!("{name}n"),
            ],
            vec!["-n", &name, "link", "set", &format!("{name}n"), "up"],
            vec!["-n", &name, "route", "add", "default", "via", &host],
        ] {
            let ok = Command::new("ip").args(&args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        }
        for port in ports {
            let (ns, addr) = (format!("/run/netns/{name}"), format!("{inner}:{port}"));
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let f = std::fs::File::open(ns).unwrap();
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let l = std::net::TcpListener::bind(addr).unwrap();
                tx.send(()).unwrap();
                for mut c in l.incoming().flatten().take(64) {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello");
                }
            });
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        Outside { name, addr: inner }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h", self.name)])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `nc` from the sandbox to `addr:port`: whether the listener answered.
async fn reaches(info: &pb::SandboxInfo, addr: &str, port: u16) -> bool {
    let (out, _) = exec(info, &format!("echo GET | nc -w 2 {addr} {port} 2>&1")).await;
    eprintln!("nc {addr}:{port}: {out:?}");
    out.contains("hello")
}

/// A new warm sandbox of `t`, recycled (not deleted) on release.
async fn recyclable(node: &Node, pool: &str, mut t: pb::SandboxTemplate) -> pb::SandboxInfo {
    t.release_policy = pb::ReleasePolicy::Recycle as i32;
    node.agent()
        .create(pool, t, None)
        .await
        .unwrap()
        .info("test-node")
}

/// Release sandbox `id` for reuse: the warm sandbox it becomes.
async fn recycle(node: &Node, id: &str) -> pb::SandboxInfo {
    node.agent()
        .release(id, pb::ReleasePolicy::Recycle)
        .await
        .unwrap()
        .expect("a recycled sandbox stays")
        .info("test-node")
}

fn policy(default: pb::EgressAction, rules: &[(pb::EgressAction, &str, u32)]) -> pb::EgressPolicy {
    pb::EgressPolicy {
        default_action: default as i32,
        rules: rules
            .iter()
            .map(|(a, cidr, port)| pb::EgressRule {
                action: *a as i32,
                cidr: (*cidr).into(),
                port: *port,
            })
            .collect(),
    }
}

/// Egress policies hold in the sandbox's netns, on runc and runsc: deny
/// stops connections to a listener in another network namespace that the
/// same sandbox reached before (negative control) and that the host still
/// reaches; an allow rule for one address and port opens just that; a
/// pool's policy holds from the start; a recycled sandbox gets its pool's
/// policy back; a bad rule is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_policies_are_enforced_per_sandbox_and_reset_on_recycle() {
    use pb::EgressAction::{Allow, Deny};
    let Some(runtime) = gate() else { return };
    let out = Outside::start(16, &[18080, 18081]);
    let node = Node::start(runtime, 16).await;
    let mut client = serve_agent(&node).await;
    let host = reqwest::Client::new();
    let from_host = host.get(format!("http://{}:18080/", out.addr)).send().await;
    assert_eq!(
        from_host.unwrap().status(),
        200,
        "the host reaches the listener"
    );
    for class in [pb::RuntimeClass::Runc, pb::RuntimeClass::Runsc] {
        let sb = recyclable(&node, "pool-e", template(class)).await;
        assert!(
            reaches(&sb, &out.addr, 18080).await,
            "{class:?}: no policy, reached"
        );
        let deny = policy(Deny, &[(Allow, &out.addr, 18081)]);
        client
            .inject(pb::NodeInjectRequest {
                sandbox_id: sb.sandbox_id.clone(),
                process: None,
                egress: Some(deny),
                resources: None,
                credential_vault: Vec::new(),
            })
            .await
            .unwrap();
        assert!(!reaches(&sb, &out.addr, 18080).await, "{class:?}: denied");
        assert!(
            reaches(&sb, &out.addr, 18081).await,
            "{class:?}: the allowed port"
        );
        let recycled = recycle(&node, &sb.sandbox_id).await;
        assert!(
            reaches(&recycled, &out.addr, 18080).await,
            "{class:?}: recycled, pool policy"
        );
        release_all(&node, &[&sb.sandbox_id]).await;
    }
    // a pool's own policy holds from the start, and comes back on recycle
    let mut t = template(pb::RuntimeClass::Runc);
    t.egress = Some(policy(Allow, &[(Deny, &format!("{}/30", out.addr), 0)]));
    let sb = recyclable(&node, "pool-f", t).await;
    assert!(!reaches(&sb, &out.addr, 18080).await, "pool policy denies");
    node.agent().set_egress(&sb.sandbox_id, None).await.unwrap();
    assert!(
        reaches(&sb, &out.addr, 18080).await,
        "the claim's allow-all"
    );
    let sb2 = recycle(&node, &sb.sandbox_id).await;
    assert!(
        !reaches(&sb2, &out.addr, 18080).await,
        "recycled: the pool's deny again"
    );
    let bad = client
        .inject(pb::NodeInjectRequest {
            sandbox_id: sb.sandbox_id.clone(),
            process: None,
            egress: Some(policy(Deny, &[(Allow, "pypi.org/8", 0)])),
            resources: None,
            credential_vault: Vec::new(),
        })
        .await
        .expect_err("neither a CIDR nor a domain");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("egress rule 0"), "{bad:?}");
    release_all(&node, &[&sb.sandbox_id]).await;
}

/// A claim's resource limits are set on the warm sandbox it takes, in
/// place (runc and runsc): the asked fields change, the others stay the
/// pool's; above the node's maximum is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_limits_are_set_on_a_warm_sandbox_in_place() {
    let Some(node) = boot(17).await else { return };
    let mut client = serve_agent(&node).await;
    let mut ids = Vec::new();
    for class in [pb::RuntimeClass::Runc, pb::RuntimeClass::Runsc] {
        let sb = new_sandbox(&node, "pool-l", class).await;
        ids.push(sb.sandbox_id.clone());
        let pool = ["268435456", "50000", "256"];
        assert_eq!(
            cgroup_limits(&node, &sb).await,
            pool,
            "{class:?}: the pool's limits"
        );
        let resize = |r: pb::Resources| pb::NodeInjectRequest {
            sandbox_id: sb.sandbox_id.clone(),
            resources: Some(r),
            ..Default::default()
        };
        let too_much = client
            .inject(resize(pb::Resources {
                memory: "64Gi".into(),
                ..Default::default()
            }))
            .await
            .expect_err("above the node maximum");
        assert_eq!(
            too_much.code(),
            tonic::Code::InvalidArgument,
            "{too_much:?}"
        );
        assert_eq!(
            cgroup_limits(&node, &sb).await,
            pool,
            "{class:?}: unchanged after a refusal"
        );
        client
            .inject(resize(pb::Resources {
                cpu: "1500m".into(),
                memory: "1Gi".into(),
                pids: 0,
            }))
            .await
            .unwrap();
        let now = ["1073741824", "150000", "256"];
        assert_eq!(
            cgroup_limits(&node, &sb).await,
            now,
            "{class:?}: the claim's limits, pool pids"
        );
        assert_eq!(ping(&sb).await, 200, "{class:?}: still answering");
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    release_all(&node, &ids).await;
}

/// The fake resolver the DNS test's node asks (its configure hook is a fn).
static FAKE_DNS: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();

/// A resolver on loopback: `*.test` names in `zone` get their A record
/// (TTL 1), anything else an empty answer; it logs every name asked.
async fn fake_resolver(
    zone: Vec<(&'static str, std::net::Ipv4Addr)>,
) -> (std::net::SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
    use hickory_proto::{
        op::{Message, ResponseCode},
        rr::{RData, Record, RecordType, rdata::A},
    };
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = sock.local_addr().unwrap();
    let asked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = Arc::clone(&asked);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut a = Message::error_msg(q.id(), q.op_code(), ResponseCode::NoError);
            a.set_recursion_desired(q.recursion_desired());
            for query in q.queries() {
                a.add_query(query.clone());
                let name = query.name().to_ascii().to_lowercase();
                log.lock().push(name.clone());
                let hit = zone.iter().find(|(z, _)| name == format!("{z}."));
                if let (Some((_, ip)), RecordType::A) = (hit, query.query_type()) {
                    a.add_answer(Record::from_rdata(
                        query.name().clone(),
                        1,
                        RData::A(A(*ip)),
                    ));
                }
            }
            let _ = sock.send_to(&a.to_vec().unwrap(), from).await;
        }
    });
    (at, asked)
}

/// Domain egress rules through the node's DNS proxy (runc and runsc):
/// with `allow example.test, deny all` a sandbox cannot reach the allowed
/// name's address before it resolves it (negative control), reaches it
/// after, never reaches another address (whose name is denied: NXDOMAIN
/// from the proxy, the resolver is never asked), and DNS sent to any server
/// is answered by the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_egress_rules_allow_what_an_allowed_name_resolves_to_and_nothing_else() {
    use pb::EgressAction::{Allow, Deny};
    let Some(runtime) = gate() else { return };
    let allowed = Outside::start(46, &[18080]);
    let other = Outside::start(47, &[18080]);
    let ip = |o: &Outside| o.addr.parse::<std::net::Ipv4Addr>().unwrap();
    let (resolver, asked) = fake_resolver(vec![
        ("example.test", ip(&allowed)),
        ("other.test", ip(&other)),
    ])
    .await;
    FAKE_DNS.set(resolver).unwrap();
    let node = Node::start_configured(runtime, 46, |cfg| {
        cfg.net.dns_upstream = FAKE_DNS.get().copied();
    })
    .await;
    let mut client = serve_agent(&node).await;
    let mut ids = Vec::new();
    for class in [pb::RuntimeClass::Runc, pb::RuntimeClass::Runsc] {
        let sb = new_sandbox(&node, "pool-dns", class).await;
        ids.push(sb.sandbox_id.clone());
        assert!(
            reaches(&sb, &allowed.addr, 18080).await,
            "{class:?}: no policy"
        );
        client
            .inject(pb::NodeInjectRequest {
                sandbox_id: sb.sandbox_id.clone(),
                process: None,
                egress: Some(policy(Deny, &[(Allow, "Example.TEST", 0)])),
                resources: None,
                credential_vault: Vec::new(),
            })
            .await
            .unwrap();
        assert!(
            !reaches(&sb, &allowed.addr, 18080).await,
            "{class:?}: not resolved yet"
        );
        // any server: port 53 goes to the proxy
        let (out, _) = exec(&sb, "nslookup example.test 192.0.2.53 2>&1").await;
        assert!(out.contains(&allowed.addr), "{class:?}: {out}");
        assert!(
            reaches(&sb, &allowed.addr, 18080).await,
            "{class:?}: resolved, allowed"
        );
        assert!(!reaches(&sb, &other.addr, 18080).await, "{class:?}: other");
        let (out, _) = exec(&sb, "nslookup other.test 192.0.2.53 2>&1").await;
        assert!(!out.contains(&other.addr), "{class:?}: {out}");
        assert!(out.to_uppercase().contains("NXDOMAIN"), "{class:?}: {out}");
    }
    let names = asked.lock().clone();
    assert!(names.iter().any(|n| n == "example.test."), "{names:?}");
    assert!(names.iter().all(|n| n != "other.test."), "{names:?}");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    release_all(&node, &ids).await;
}
