//! `sandpool image pull` against a real registry on loopback and a real
//! private containerd (root; skipped without them unless
//! SANDPOOL_REQUIRE_CONTAINERD=1): progress lines, the stored names,
//! `image list` kind, credentials from flags and from a docker config
//! file, and the errors for a missing tag and wrong credentials.

#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};

use sandpool_node_agent::{
    daemon::ContainerdDaemon,
    testkit::{
        gate,
        registry::{Registry, build_images, gate_tools, push, run},
    },
};

fn sandpool(data_dir: &Path, socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sandpool"))
        .arg("image")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--containerd-socket")
        .arg(socket)
        .env_remove("SANDPOOL_DATA_DIR")
        .env_remove("SANDPOOL_REGISTRY_PASSWORD")
        .env("HOME", data_dir)
        .env_remove("DOCKER_CONFIG")
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn image_pull_shows_progress_stores_the_image_and_explains_failures() {
    if gate().is_none() || !gate_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let digest = build_images(d);
    let daemon = ContainerdDaemon::start(&d.join("containerd")).unwrap();
    let sock = daemon.socket.clone();
    std::fs::create_dir_all(d.join("open")).unwrap();
    let reg = Registry::start(&d.join("open"), None);
    let r = format!("{}/app:1", reg.addr);
    push(&d.join("oci"), "app", &r, &[]);

    let o = sandpool(d, &sock, &["pull", &r]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, format!("{r}\t{digest}\n"));
    assert!(
        err.contains("layer 1/2") && err.contains("fetching"),
        "{err}"
    );
    let (list, _) = text(&sandpool(d, &sock, &["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with(&r) && l.ends_with("pulled")),
        "{list}"
    );

    let o = sandpool(d, &sock, &["pull", &format!("{}/app:nope", reg.addr)]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("not found") && err.contains("app:nope"),
        "{err}"
    );

    let auth = d.join("auth");
    std::fs::create_dir_all(&auth).unwrap();
    let htpasswd = auth.join("htpasswd");
    std::fs::write(
        &htpasswd,
        run(Command::new("htpasswd").args(["-Bbn", "ann", "pw1"])),
    )
    .unwrap();
    let reg = Registry::start(&auth, Some(&htpasswd));
    let r = format!("{}/private:1", reg.addr);
    push(&d.join("oci"), "app", &r, &["--dest-creds", "ann:pw1"]);
    let o = sandpool(
        d,
        &sock,
        &["pull", &r, "--username", "ann", "--password", "bad"],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("unauthorized"), "{err}");
    let o = sandpool(
        d,
        &sock,
        &["pull", &r, "--username", "ann", "--password", "pw1"],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    // from a docker config.json in $HOME/.docker
    std::fs::create_dir_all(d.join(".docker")).unwrap();
    let cfg = serde_json::json!({"auths": {&reg.addr: {"username": "ann", "password": "pw1"}}});
    std::fs::write(d.join(".docker/config.json"), cfg.to_string()).unwrap();
    let again = format!("{}/private@{digest}", reg.addr);
    let o = sandpool(d, &sock, &["pull", &again]);
    assert!(o.status.success(), "{}", text(&o).1);
}
