//! Recycle isolation on real containerd, runc and runsc (root only): a
//! tenant of a recycled pool leaves files, processes, a listening socket,
//! session state, background commands and mounts behind; the next claimant
//! of the same sandbox (same id, same address) sees none of them, and the
//! previous tenant's access token is refused. The recycle is the cheap
//! in-place reset (same container and netns, new task and rootfs), not the
//! fresh-start fallback.
//!
//! Gated like `containerd.rs` (see `testkit::gate`): without the
//! prerequisites these tests pass vacuously unless
//! `SANDPOOL_REQUIRE_CONTAINERD=1`.

// Test helpers panic on failure, like the tests that call them.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sandpool_node_agent::testkit::{TestNode as Node, gate, shell_process, template};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

/// Markers in the command lines of the tenant's processes (`sleep N`):
/// the entrypoint's, the background command's, nohup, setsid, double fork.
/// Each runtime class has its own, so that the host check of one test does
/// not see the other's.
fn markers(class: pb::RuntimeClass) -> [String; 5] {
    let base = if class == pb::RuntimeClass::Runsc {
        31345
    } else {
        31335
    };
    std::array::from_fn(|i| format!("sleep {}", base + i))
}
/// The port the tenant listens on.
const PORT: u16 = 7777;

/// A request to `path` of sandbox `info`'s execd API, with `token`.
fn request(info: &pb::SandboxInfo, token: &str, path: &str) -> reqwest::RequestBuilder {
    let url = format!("http://{}:{}{path}", info.ip, info.runtime_port);
    reqwest::Client::new()
        .post(url)
        .header("x-execd-access-token", token)
}

/// The stdout lines and exit code of an execd SSE stream.
fn parse_events(body: &str) -> (String, i64) {
    let mut out = String::new();
    let mut code = 0;
    for frame in body.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let v: Value = serde_json::from_str(frame).unwrap();
        match v["type"].as_str() {
            Some("stdout") => {
                out.push_str(v["text"].as_str().unwrap().trim_end_matches('\n'));
                out.push('\n');
            }
            Some("error") => code = v["error"]["evalue"].as_str().unwrap().parse().unwrap(),
            _ => {}
        }
    }
    (out, code)
}

/// Run `cmd` in the sandbox (execd `/command`): its stdout and exit code.
async fn exec(info: &pb::SandboxInfo, cmd: &str) -> (String, i64) {
    let resp = request(info, &info.access_token, "/command")
        .json(&json!({ "command": cmd }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{cmd}");
    parse_events(&resp.text().await.unwrap())
}

/// A new execd bash session's id.
async fn new_session(info: &pb::SandboxInfo) -> String {
    let resp = request(info, &info.access_token, "/session")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["session_id"].as_str().unwrap().to_string()
}

/// Run `cmd` in session `id`: the HTTP status and the run's stdout.
async fn in_session(info: &pb::SandboxInfo, id: &str, cmd: &str) -> (u16, String) {
    let resp = request(info, &info.access_token, &format!("/session/{id}/run"))
        .json(&json!({ "command": cmd }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        parse_events(&resp.text().await.unwrap_or_default()).0,
    )
}

/// The command lines of every process the sandbox sees.
async fn processes(info: &pb::SandboxInfo) -> String {
    exec(
        info,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
    )
    .await
    .0
}

/// Whether a process with `marker` in its command line runs on the host
/// (runc sandboxes' processes are host processes).
fn on_host(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
            .unwrap_or(false)
    })
}

/// Files the tenant writes: everywhere it can, and more as root.
fn tenant_files(root: bool) -> Vec<&'static str> {
    let mut files = vec![
        "/home/user/tenant-home",
        "/tmp/tenant-tmp",
        "/dev/shm/tenant-shm",
        "/var/tmp/tenant-vartmp",
    ];
    if root {
        files.extend([
            "/etc/tenant-etc",
            "/usr/local/bin/tenant-bin",
            "/root/tenant-root",
        ]);
    }
    files
}

/// What the tenant left, checked to be there: its session's id and the id
/// of its background command.
struct Traces {
    session: String,
    command: String,
    markers: [String; 5],
}

/// The tenant of `info` leaves files, processes, a listener, session state
/// and a background command behind.
async fn leave_traces(info: &pb::SandboxInfo, root: bool, class: pb::RuntimeClass) -> Traces {
    let files = tenant_files(root);
    let markers = markers(class);
    let script = format!(
        "mkdir -p /usr/local/bin /root 2>/dev/null; for f in {}; do echo tenant > $f 2>/dev/null; done; \
         setsid {} </dev/null >/dev/null 2>&1 & \
         (sh -c '{} </dev/null >/dev/null 2>&1 &' &); \
         setsid nc -l -p {PORT} </dev/null >/dev/null 2>&1 & \
         sleep 0.3; echo ok",
        files.join(" "),
        markers[3],
        markers[4],
    );
    assert_eq!(exec(info, &script).await.0.trim(), "ok");
    // what it could write is there (the rest is not writable to it)
    let (written, _) = exec(info, &format!("ls {} 2>/dev/null", files.join(" "))).await;
    for must in [
        "/home/user/tenant-home",
        "/tmp/tenant-tmp",
        "/dev/shm/tenant-shm",
    ] {
        assert!(written.contains(must), "{must} not written: {written}");
    }
    if root {
        for must in [
            "/etc/tenant-etc",
            "/usr/local/bin/tenant-bin",
            "/root/tenant-root",
        ] {
            assert!(written.contains(must), "{must} not written: {written}");
        }
    }
    // a background command of the execd API
    let resp = request(info, &info.access_token, "/command")
        .json(&json!({ "command": markers[1], "background": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let command = body
        .split("\n\n")
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .find_map(|v| {
            v["text"]
                .as_str()
                .map(str::to_string)
                .filter(|_| v["type"] == "init")
        })
        .expect("the background command's id");
    // a session's exported state
    let session = new_session(info).await;
    let (status, _) = in_session(info, &session, "export TENANT_ENV=leaked; cd /tmp").await;
    assert_eq!(status, 200);
    assert_eq!(
        in_session(info, &session, "echo $TENANT_ENV")
            .await
            .1
            .trim(),
        "leaked"
    );
    // everything runs and listens
    let mut seen = String::new();
    for _ in 0..50 {
        seen = processes(info).await;
        if markers.iter().all(|m| seen.contains(m.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &markers {
        assert!(
            seen.contains(m.as_str()),
            "tenant process {m:?} not running: {seen}"
        );
    }
    let (listening, _) = exec(info, "netstat -ltn").await;
    assert!(listening.contains(&format!(":{PORT}")), "{listening}");
    Traces {
        session,
        command,
        markers,
    }
}

/// The next claimant of `info` (recycled) sees nothing of the tenant.
async fn assert_clean(info: &pb::SandboxInfo, root: bool, traces: &Traces, class: &str) {
    let files = tenant_files(root).join(" ");
    let (left, _) = exec(
        info,
        &format!("for f in {files}; do [ -e $f ] && echo $f; done; echo checked"),
    )
    .await;
    assert_eq!(left.trim(), "checked", "{class}: files left: {left}");
    let seen = processes(info).await;
    for m in &traces.markers {
        assert!(
            !seen.contains(m.as_str()),
            "{class}: {m:?} survived: {seen}"
        );
        assert!(!on_host(m), "{class}: {m:?} survived on the host");
    }
    let (listening, _) = exec(info, "netstat -ltn").await;
    assert!(
        !listening.contains(&format!(":{PORT}")),
        "{class}: {listening}"
    );
    let addr = format!("{}:{PORT}", info.ip);
    let connect = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr.as_str()),
    )
    .await;
    assert!(
        !matches!(connect, Ok(Ok(_))),
        "{class}: the tenant's port still accepts"
    );
    let (status, _) = in_session(info, &traces.session, "echo hi").await;
    assert_eq!(status, 404, "{class}: the tenant's session survived");
    let fresh = new_session(info).await;
    let (_, env) = in_session(info, &fresh, "echo ${TENANT_ENV:-unset}; pwd").await;
    assert!(env.starts_with("unset\n"), "{class}: {env}");
    assert!(
        !env.contains("/tmp"),
        "{class}: session cwd carried over: {env}"
    );
    let url = format!(
        "http://{}:{}/command/status/{}",
        info.ip, info.runtime_port, traces.command
    );
    let status = reqwest::Client::new()
        .get(url)
        .header("x-execd-access-token", &info.access_token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "{class}: the tenant's command is still known");
    let (mounts, _) = exec(info, "cat /proc/mounts").await;
    assert!(!mounts.contains("/mnt/tenant"), "{class}: {mounts}");
}

/// One pool's sandbox through a tenant and a recycle, then the next
/// claimant's view.
async fn recycle_once(node: &Node, class: pb::RuntimeClass, root: bool) {
    let label = format!("{class:?} run_as_root={root}");
    let mut t = template(class);
    t.release_policy = pb::ReleasePolicy::Recycle as i32;
    t.run_as_root = root;
    let agent = node.agent();
    let m = markers(class);
    let sb = agent.create("pool-rc", t, None).await.unwrap();
    let info = sb.info("test-node");
    // the claim: the tenant's entrypoint and everything it leaves
    agent
        .inject(
            &sb.id,
            shell_process(
                &format!(
                    "{} & nohup {} >/dev/null 2>&1 & echo started > /tmp/entry; wait",
                    m[0], m[2]
                ),
                &[],
            ),
        )
        .await
        .unwrap();
    let traces = leave_traces(&info, root, class).await;
    if class == pb::RuntimeClass::Runc {
        // a mount the claim asked for (a runc sandbox's dynamic mount)
        let dir = agent.cfg.mount_roots[0].join(format!("tenant-{root}"));
        std::fs::create_dir_all(&dir).unwrap();
        agent
            .mount(&sb.id, dir.to_str().unwrap(), "/mnt/tenant", false)
            .await
            .unwrap();
        assert!(
            exec(&info, "cat /proc/mounts")
                .await
                .0
                .contains("/mnt/tenant")
        );
    }
    if root {
        // the tenant cannot mount for itself: no CAP_SYS_ADMIN
        let (_, code) = exec(&info, "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t").await;
        assert_ne!(code, 0, "{label}: a tenant mounted a tmpfs");
    }
    let renewed = agent.renewed_in_place();
    let next = agent
        .release(&sb.id, pb::ReleasePolicy::Unspecified)
        .await
        .unwrap()
        .expect("recycled, not deleted");
    assert_eq!(next.state, pb::SandboxState::Warm);
    assert_eq!(
        agent.renewed_in_place(),
        renewed + 1,
        "{label}: reset in place, not started afresh"
    );
    assert_eq!(next.id, sb.id, "{label}: the same sandbox");
    assert_eq!(next.ip, sb.ip, "{label}: the same address");
    assert_ne!(next.token, sb.token, "{label}: a new access token");
    let next_info = next.info("test-node");
    let old = request(&next_info, &sb.token, "/command")
        .json(&json!({ "command": "true" }))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401, "{label}: the old token is refused");
    assert_clean(&next_info, root, &traces, &label).await;
    agent
        .release(&sb.id, pb::ReleasePolicy::Delete)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_runc_sandbox_keeps_nothing_of_its_tenant() {
    let Some(rt) = gate() else { return };
    let node = Node::start(rt, 37).await;
    recycle_once(&node, pb::RuntimeClass::Runc, false).await;
    recycle_once(&node, pb::RuntimeClass::Runc, true).await;
    node.assert_no_residue().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_runsc_sandbox_keeps_nothing_of_its_tenant() {
    let Some(rt) = gate() else { return };
    let node = Node::start(rt, 38).await;
    recycle_once(&node, pb::RuntimeClass::Runsc, false).await;
    recycle_once(&node, pb::RuntimeClass::Runsc, true).await;
    node.assert_no_residue().await;
}
