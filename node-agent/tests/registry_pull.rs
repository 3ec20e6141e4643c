//! Pulls from a real registry on loopback into a real containerd (root;
//! skipped without containerd unless SANDPOOL_REQUIRE_CONTAINERD=1; needs
//! Debian's docker-registry, skopeo, umoci and htpasswd). Images are built
//! here with umoci from a scratch rootfs (two layers, the second with a
//! whiteout), plus an index with two platforms, and pushed with skopeo.
//! Checked: OCI and Docker media types, a digest reference, linux/amd64 out
//! of the index, layers shared between images, a sandbox from a pulled image
//! (with the whiteout applied), concurrent pulls, basic auth, and clear
//! errors for a missing tag, wrong credentials and a closed port.

#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use sandpool_node_agent::{
    containerd::Ctr,
    error::{AgentError, PullFailure},
    image::sha256_digest,
    registry::{Credentials, Progress, Puller, RegistryConfig},
    testkit::{TestNode, gate, shell_process, template},
};
use sandpool_proto::v1 as pb;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` on a loopback port with its own config and storage.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match htpasswd {
            Some(p) => format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                p.display()
            ),
            None => String::new(),
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI layout at `dir/oci`: tag `app` (two layers; the second deletes
/// /etc/gone and adds /marker2), `app-arm` (the same, arm64) and `multi`
/// (an index of both). Returns the amd64 manifest digest.
fn build_images(dir: &Path) -> String {
    let layout = dir.join("oci");
    let image = format!("{}:app", layout.display());
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/gone"), "deleted in layer 2\n").unwrap();
    let repack = |image: &str| {
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image", image])
            .arg(&bundle))
    };
    repack(&image);
    std::fs::remove_file(root.join("etc/gone")).unwrap();
    std::fs::write(root.join("marker2"), "second layer\n").unwrap();
    repack(&image);
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env=FROM_IMAGE=yes",
        "--config.cmd=sh",
    ]));
    let arm = format!("{}:app-arm", layout.display());
    run(Command::new("umoci").args(["config", "--image", &image, "--tag", "app-arm"]));
    run(Command::new("umoci").args(["config", "--image", &arm, "--architecture=arm64"]));
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = |tag: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone()
    };
    let with_platform = |mut m: serde_json::Value, arch: &str| {
        m.as_object_mut().unwrap().remove("annotations");
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        m
    };
    let (amd, arm) = (entry("app"), entry("app-arm"));
    let amd_digest = amd["digest"].as_str().unwrap().to_string();
    let multi = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [with_platform(arm, "arm64"), with_platform(amd, "amd64")],
    }))
    .unwrap();
    let digest = sha256_digest(&multi);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), &multi).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": multi.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    amd_digest
}

fn push(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let src = format!("oci:{}:{tag}", layout.display());
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .args(extra)
        .arg(&src)
        .arg(format!("docker://{dest}")));
}

fn quiet() -> Progress {
    Arc::new(|line: String| eprintln!("pull: {line}"))
}

fn failure(e: AgentError) -> PullFailure {
    match e {
        AgentError::Pull { failure, .. } => failure,
        other => panic!("not a pull error: {other}"),
    }
}

/// What a shell line printed inside sandbox `id` (through a file in its upperdir).
async fn sandbox_says(node: &TestNode, id: &str, script: &str) -> String {
    let line = format!("({script}) > /tmp/out 2>&1");
    node.agent()
        .inject(id, shell_process(&line, &[]))
        .await
        .unwrap();
    let out = node
        .agent()
        .ctr()
        .rootfs_upperdir(id)
        .await
        .unwrap()
        .join("tmp/out");
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(&out)
            && !s.is_empty()
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sandbox {id} wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_pull_from_a_loopback_registry_with_and_without_auth() {
    let Some(rt) = gate() else { return };
    let node = TestNode::start(rt, 47).await;
    let ctr = node.agent().ctr().clone();
    let dir = tempfile::tempdir().unwrap();
    let amd_digest = build_images(dir.path());
    let layout = dir.path().join("oci");
    let open_dir = dir.path().join("open");
    std::fs::create_dir_all(&open_dir).unwrap();
    let reg = Registry::start(&open_dir, None);
    let a = &reg.addr;
    push(&layout, "app", &format!("{a}/app:1"), &[]);
    push(
        &layout,
        "app",
        &format!("{a}/app:docker"),
        &["--format", "v2s2"],
    );
    push(&layout, "multi", &format!("{a}/multi:1"), &["--all"]);
    let puller = Puller::new(RegistryConfig::default());

    // OCI media types, then a sandbox on it with the whiteout applied
    let r = format!("{a}/app:1");
    let p = puller.pull(&ctr, &r, None, quiet()).await.unwrap();
    assert_eq!((p.layers, p.fetched_layers), (2, 2));
    assert_eq!(p.names, std::slice::from_ref(&r));
    let (_, _, env) = node.agent().ensure_image(&r).await.unwrap();
    assert!(env.contains(&"FROM_IMAGE=yes".to_string()), "{env:?}");
    let mut t = template(pb::RuntimeClass::Runc);
    t.image = r.clone();
    let sb = node.agent().create("pulled", t, None).await.unwrap();
    assert_eq!(sb.state, pb::SandboxState::Warm);
    let said = sandbox_says(
        &node,
        &sb.id,
        "cat /marker2; test -e /etc/gone || echo whiteout",
    )
    .await;
    assert_eq!(said, "second layer\nwhiteout\n");
    node.agent()
        .release(&sb.id, pb::ReleasePolicy::Delete)
        .await
        .unwrap();

    // Docker media types share the layers; a digest reference; the index
    let p = puller
        .pull(&ctr, &format!("{a}/app:docker"), None, quiet())
        .await
        .unwrap();
    assert_eq!(
        p.fetched_layers, 0,
        "layers are shared through the content store"
    );
    let by_digest = format!("{a}/app@{amd_digest}");
    let p = puller.pull(&ctr, &by_digest, None, quiet()).await.unwrap();
    assert_eq!(p.digest, amd_digest);
    let p = puller
        .pull(&ctr, &format!("{a}/multi:1"), None, quiet())
        .await
        .unwrap();
    assert_eq!(p.digest, amd_digest, "the index resolves to linux/amd64");

    // concurrent pulls of one reference: one fetch, every caller gets it
    assert!(ctr.remove_image(&r).await.unwrap());
    let resolves = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = |n: Arc<std::sync::atomic::AtomicUsize>| -> Progress {
        Arc::new(move |line: String| {
            if line.starts_with("resolving") {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let (x, y, z) = tokio::join!(
        puller.pull(&ctr, &r, None, counted(resolves.clone())),
        puller.pull(&ctr, &r, None, counted(resolves.clone())),
        puller.pull(&ctr, &r, None, counted(resolves.clone()))
    );
    assert_eq!(x.unwrap().digest, amd_digest);
    assert_eq!(y.unwrap().digest, amd_digest);
    assert_eq!(z.unwrap().digest, amd_digest);
    assert_eq!(
        resolves.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fetch"
    );

    check_errors(&ctr, &puller, a).await;
    drop(reg);

    check_basic_auth(&ctr, &puller, dir.path(), &amd_digest).await;
    node.assert_no_residue().await;
}

/// A registry with htpasswd basic auth: refused without or with wrong
/// credentials, pulled with the right ones.
async fn check_basic_auth(ctr: &Ctr, puller: &Puller, dir: &Path, amd_digest: &str) {
    // basic auth: refused without or with wrong credentials, pulled with the right ones
    let auth_dir = dir.join("auth");
    std::fs::create_dir_all(&auth_dir).unwrap();
    let htpasswd = auth_dir.join("htpasswd");
    let line = run(Command::new("htpasswd").args(["-Bbn", "ann", "s3cret"]));
    std::fs::write(&htpasswd, line).unwrap();
    let reg = Registry::start(&auth_dir, Some(&htpasswd));
    let r = format!("{}/private:1", reg.addr);
    push(&dir.join("oci"), "app", &r, &["--dest-creds", "ann:s3cret"]);
    let creds = |p: &str| Credentials {
        username: "ann".into(),
        password: p.into(),
    };
    let e = puller.pull(ctr, &r, None, quiet()).await.unwrap_err();
    assert_eq!(failure(e), PullFailure::Unauthorized);
    let e = puller
        .pull(ctr, &r, Some(creds("wrong")), quiet())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(failure(e), PullFailure::Unauthorized, "{text}");
    assert!(text.contains("unauthorized"), "{text}");
    let p = puller
        .pull(ctr, &r, Some(creds("s3cret")), quiet())
        .await
        .unwrap();
    assert_eq!(p.digest, amd_digest);
}

/// A missing tag and a closed port give clear errors, quickly.
async fn check_errors(ctr: &Ctr, puller: &Puller, a: &str) {
    // errors: missing tag, closed port, each clear and quick
    let t0 = Instant::now();
    let e = puller
        .pull(ctr, &format!("{a}/app:nope"), None, quiet())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(failure(e), PullFailure::NotFound, "{text}");
    assert!(
        text.contains("not found") && text.contains("app:nope"),
        "{text}"
    );
    let closed = format!("127.0.0.1:{}/app:1", free_port());
    let e = puller.pull(ctr, &closed, None, quiet()).await.unwrap_err();
    let text = e.to_string();
    assert_eq!(failure(e), PullFailure::Unreachable, "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "errors took {:?}",
        t0.elapsed()
    );
}
