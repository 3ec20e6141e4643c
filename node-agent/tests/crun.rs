//! runc-class sandboxes under crun (`AgentConfig::runc_bin`) on real
//! containerd (root only): the runc v2 shim runs crun as its `BinaryName`;
//! a sandbox runs commands, pauses and resumes, and crun (not runc) holds
//! its container state in the shim's runtime root.
//!
//! On a hybrid cgroup host whose v2 hierarchy holds controllers (crun refuses
//! containers there) it checks the agent's startup refusal instead; run it
//! with hugetlb bound to cgroup v1 to exercise crun (docs/benchmarks.md).
//!
//! Gated like `containerd.rs` (see `testkit::gate`); crun itself must be
//! installed when `SANDPOOL_REQUIRE_CONTAINERD=1` or `CI=true`
//! (scripts/install-deps.sh installs it), otherwise its absence skips.

// Test helpers panic on failure, like the tests that call them.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use sandpool_node_agent::{
    agent::{find_oci_runtime, hybrid_v2_controllers},
    testkit::{TestNode as Node, gate, template},
};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

/// Whether crun is installed; its absence fails when the tests are required.
fn crun_present() -> bool {
    let ok = Command::new("crun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("SANDPOOL_REQUIRE_CONTAINERD").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true");
    if !ok && required {
        panic!("crun tests required but crun is not installed (apt-get install crun)");
    }
    if !ok {
        eprintln!("SKIPPED: crun not installed");
    }
    ok
}

/// Run `cmd` in the sandbox (execd `/command`): its stdout and exit code.
async fn exec(info: &pb::SandboxInfo, cmd: &str) -> (String, i64) {
    let url = format!("http://{}:{}/command", info.ip, info.runtime_port);
    let resp = reqwest::Client::new()
        .post(url)
        .header("x-execd-access-token", &info.access_token)
        .json(&json!({ "command": cmd }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{cmd}");
    let body = resp.text().await.unwrap();
    let mut out = String::new();
    let mut code = 0;
    for frame in body.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let v: Value = serde_json::from_str(frame).unwrap();
        match v["type"].as_str() {
            Some("stdout") => out.push_str(v["text"].as_str().unwrap()),
            Some("error") => code = v["error"]["evalue"].as_str().unwrap().parse().unwrap(),
            _ => {}
        }
    }
    (out, code)
}

/// The status `RUNTIME --root ROOT list` gives container `id`, if it lists it.
fn listed_status(runtime: &str, root: &str, id: &str) -> Option<String> {
    let out = Command::new(runtime)
        .args(["--root", root, "list", "--format", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let list: Vec<Value> = serde_json::from_str(text.trim()).unwrap_or_default();
    list.iter()
        .find(|c| c["id"] == id)
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_class_sandboxes_run_pause_and_resume_under_crun() {
    let Some(runtime) = gate() else { return };
    if !crun_present() {
        return;
    }
    let controllers = hybrid_v2_controllers("/sys/fs/cgroup/unified/cgroup.controllers".as_ref());
    if let Some(controllers) = controllers {
        // crun refuses every container here: the agent refuses crun at
        // startup instead, naming the controllers and the fix
        let err = find_oci_runtime("crun".as_ref()).unwrap_err().to_string();
        assert!(
            err.contains(&controllers) && err.contains("mount -t cgroup"),
            "{err}"
        );
        eprintln!(
            "crun cannot run here (cgroup v2 holds {controllers}): checked the startup refusal only"
        );
        return;
    }
    let node = Node::start_configured(runtime, 53, |cfg| {
        cfg.runc_bin = Some("crun".into());
    })
    .await;
    let agent = node.agent();
    let info = agent
        .create("crun-pool", template(pb::RuntimeClass::Runc), None)
        .await
        .unwrap()
        .info("test-node");
    let id = info.sandbox_id.clone();
    let (out, code) = exec(&info, "echo hello from $(id -u)").await;
    assert_eq!((out.trim(), code), ("hello from 61000", 0), "{out}");

    // the shim ran crun: crun keeps the container in the shim's runtime
    // root, where runc (another state format) does not see it
    let root = agent.ctr().runtime_root();
    assert_eq!(
        listed_status("crun", &root, &id).as_deref(),
        Some("running"),
        "crun --root {root} list does not show {id}"
    );
    assert_eq!(
        listed_status("runc", &root, &id),
        None,
        "runc should not know a container crun created"
    );

    // pause and resume go through the shim to crun (cgroup freezer)
    agent.pause(&id).await.unwrap();
    assert_eq!(listed_status("crun", &root, &id).as_deref(), Some("paused"));
    agent.resume(&id).await.unwrap();
    assert_eq!(
        listed_status("crun", &root, &id).as_deref(),
        Some("running")
    );
    let (out, code) = exec(&info, "echo resumed").await;
    assert_eq!((out.trim(), code), ("resumed", 0));

    agent.release(&id, pb::ReleasePolicy::Delete).await.unwrap();
    assert_eq!(listed_status("crun", &root, &id), None, "crun state left");
    node.assert_no_residue().await;
}
