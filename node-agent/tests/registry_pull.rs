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
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use sandpool_node_agent::{
    containerd::Ctr,
    error::{AgentError, PullFailure},
    registry::{Credentials, Progress, Puller, RegistryConfig},
    testkit::{
        TestNode, gate,
        registry::{Registry, add_zstd_variant, build_images, free_port, gate_tools, push, run},
        shell_process, template,
    },
};
use sandpool_proto::v1 as pb;

fn quiet() -> Progress {
    Arc::new(|line: String| eprintln!("pull: {line}"))
}

fn failure(e: AgentError) -> PullFailure {
    match e {
        AgentError::Pull { failure, .. } => failure,
        other => panic!("not a pull error: {other}"),
    }
}

/// What a shell line printed inside sandbox `id` (through a file in its
/// upperdir, renamed into place only once the line has finished, so a
/// half-written output is never read).
async fn sandbox_says(node: &TestNode, id: &str, script: &str) -> String {
    let line = format!("({script}) > /tmp/out.part 2>&1; mv /tmp/out.part /tmp/out");
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

/// Push the test images to registry `a`: app:1 (OCI), app:docker (Docker
/// media types), multi:1 (an index), cold:1, zstd:1; the zstd digest.
fn push_all(layout: &Path, a: &str) -> String {
    push(layout, "app", &format!("{a}/app:1"), &[]);
    push(
        layout,
        "app",
        &format!("{a}/app:docker"),
        &["--format", "v2s2"],
    );
    push(layout, "multi", &format!("{a}/multi:1"), &["--all"]);
    push(layout, "app", &format!("{a}/cold:1"), &[]);
    let zstd_digest = add_zstd_variant(layout);
    push(layout, "zstd", &format!("{a}/zstd:1"), &[]);
    zstd_digest
}

/// The sum of the layer sizes of the manifest `digest`.
async fn layer_bytes(ctr: &Ctr, digest: &str) -> u64 {
    let manifest: serde_json::Value =
        serde_json::from_slice(&ctr.read_content(digest).await.unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_pull_from_a_loopback_registry_with_and_without_auth() {
    let Some(rt) = gate().filter(|_| gate_tools()) else {
        return;
    };
    let node =
        TestNode::start_configured(rt, 47, |c| c.pull = Some(RegistryConfig::default())).await;
    let ctr = node.agent().ctr().clone();
    let dir = tempfile::tempdir().unwrap();
    let amd_digest = build_images(dir.path());
    let layout = dir.path().join("oci");
    let reg = Registry::start(&dir.path().join("open"), None);
    let a = &reg.addr;
    let zstd_digest = push_all(&layout, a);
    let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let g = got.clone();
    let puller = Puller::new(RegistryConfig::default()).on_bytes(Arc::new(move |n| {
        g.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }));

    // OCI media types, then a sandbox on it with the whiteout applied
    let r = format!("{a}/app:1");
    let p = puller.pull(&ctr, &r, None, quiet()).await.unwrap();
    assert_eq!((p.layers, p.fetched_layers), (2, 2));
    assert_eq!(
        got.load(std::sync::atomic::Ordering::SeqCst),
        layer_bytes(&ctr, &p.digest).await,
        "every layer byte fetched is reported (the CLI's progress bar)"
    );
    assert_eq!(p.names, std::slice::from_ref(&r));
    let (_, _, cfg) = node.agent().ensure_image(&r).await.unwrap();
    let env = cfg.env;
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
    check_mirrors(&ctr, a).await;
    check_cold_create(&node, a).await;
    check_zstd(&node, &puller, a, &zstd_digest).await;
    drop(reg);

    check_basic_auth(&node, &puller, dir.path(), &amd_digest).await;
    node.assert_no_residue().await;
}

/// A registry with htpasswd basic auth: refused without or with wrong
/// credentials, pulled with the right ones.
async fn check_basic_auth(node: &TestNode, puller: &Puller, dir: &Path, amd_digest: &str) {
    let ctr = node.agent().ctr();
    // basic auth: refused without or with wrong credentials, pulled with the right ones
    let auth_dir = dir.join("auth");
    std::fs::create_dir_all(&auth_dir).unwrap();
    let htpasswd = auth_dir.join("htpasswd");
    let line = run(Command::new("htpasswd").args(["-Bbn", "ann", "s3cret"]));
    std::fs::write(&htpasswd, line).unwrap();
    let reg = Registry::start(&auth_dir, Some(&htpasswd));
    let r = format!("{}/private:1", reg.addr);
    push(&dir.join("oci"), "app", &r, &["--dest-creds", "ann:s3cret"]);
    let cold = format!("{}/private:cold", reg.addr);
    push(
        &dir.join("oci"),
        "app",
        &cold,
        &["--dest-creds", "ann:s3cret"],
    );
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

    // a cold create of an absent private image pulls with the create's credentials
    let mut t = template(pb::RuntimeClass::Runc);
    t.image = cold.clone();
    let e = node
        .agent()
        .create_with("private", t.clone(), None, Some(creds("wr0ng-pw-77")))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(failure(e), PullFailure::Unauthorized, "{text}");
    assert!(!text.contains("wr0ng-pw-77"), "no password in {text}");
    let sb = node
        .agent()
        .create_with("private", t, None, Some(creds("s3cret")))
        .await
        .unwrap();
    assert_eq!(sb.state, pb::SandboxState::Warm);
    assert!(ctr.image(&cold).await.unwrap().is_some());
    node.agent()
        .release(&sb.id, pb::ReleasePolicy::Delete)
        .await
        .unwrap();
}

/// Mirrors are tried in order before the registry itself: an origin that
/// is down is served by its mirror (stored under the origin's name); a
/// mirror that is down falls through to the origin.
async fn check_mirrors(ctr: &Ctr, a: &str) {
    let down = format!("127.0.0.1:{}", free_port());
    let cfg = RegistryConfig {
        mirrors: [
            (down.clone(), vec![a.to_string()]),
            (a.to_string(), vec![down.clone()]),
        ]
        .into(),
        ..Default::default()
    };
    let puller = Puller::new(cfg);
    let r = format!("{down}/app:1");
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    let progress: Progress = Arc::new(move |line: String| l.lock().unwrap().push(line));
    let p = puller.pull(ctr, &r, None, progress).await.unwrap();
    assert_eq!(p.names, std::slice::from_ref(&r));
    assert!(ctr.image(&r).await.unwrap().is_some());
    let said = lines.lock().unwrap().join("\n");
    assert!(said.contains(&format!("trying mirror {a}")), "{said}");
    assert!(ctr.remove_image(&r).await.unwrap());
    let origin = format!("{a}/app:docker");
    let p = puller.pull(ctr, &origin, None, quiet()).await.unwrap();
    assert_eq!(p.names, [origin]);
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

/// A create of an image that is not present pulls it first; one that the
/// registry does not have fails with the pull's error.
async fn check_cold_create(node: &TestNode, a: &str) {
    let cold = format!("{a}/cold:1");
    assert!(node.agent().ctr().image(&cold).await.unwrap().is_none());
    let mut t = template(pb::RuntimeClass::Runc);
    t.image = cold.clone();
    let sb = node.agent().create("cold", t.clone(), None).await.unwrap();
    assert_eq!(
        sb.state,
        pb::SandboxState::Warm,
        "created from the pulled image"
    );
    assert!(node.agent().ctr().image(&cold).await.unwrap().is_some());
    node.agent()
        .release(&sb.id, pb::ReleasePolicy::Delete)
        .await
        .unwrap();
    t.image = format!("{a}/cold:missing");
    let e = node.agent().create("cold2", t, None).await.unwrap_err();
    let text = e.to_string();
    assert_eq!(failure(e), PullFailure::NotFound, "{text}");
}

/// zstd layers (recompressed here) are fetched and unpacked by
/// containerd's diff service, and a sandbox runs on them.
async fn check_zstd(node: &TestNode, puller: &Puller, a: &str, digest: &str) {
    let r = format!("{a}/zstd:1");
    let ctr = node.agent().ctr();
    let p = puller.pull(ctr, &r, None, quiet()).await.unwrap();
    assert_eq!(p.digest, digest);
    let manifest: serde_json::Value =
        serde_json::from_slice(&ctr.read_content(&p.digest).await.unwrap()).unwrap();
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert!(types.iter().all(|t| t.ends_with("+zstd")), "{types:?}");
    assert_eq!(p.fetched_layers, 2, "zstd blobs are new blobs");
    let mut t = template(pb::RuntimeClass::Runc);
    t.image = r;
    let sb = node.agent().create("zstd", t, None).await.unwrap();
    let said = sandbox_says(node, &sb.id, "cat /marker2").await;
    assert_eq!(said, "second layer\n");
    node.agent()
        .release(&sb.id, pb::ReleasePolicy::Delete)
        .await
        .unwrap();
}
