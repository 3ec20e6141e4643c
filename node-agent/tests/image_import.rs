//! Imported images in a real containerd (root; skipped without containerd
//! unless SANDPOOL_REQUIRE_CONTAINERD=1): a two-layer `docker save` tarball
//! made here from the builtin busybox layer plus a layer of our own is
//! imported under a new name, a sandbox starts from it, it is listed as
//! imported and removed; a bad tarball is refused clearly.

#![allow(clippy::unwrap_used)]

use std::{fs::File, path::Path};

use sandpool_node_agent::{
    archive,
    containerd::chain_id,
    image::{self, sha256_digest},
    testkit::{TestNode, gate, template},
};
use sandpool_proto::v1 as pb;

/// A tar holding one file `name` with `data`.
fn one_file_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

/// A `docker save` tarball at `out`: busybox's layer plus a marker layer.
fn docker_save_tarball(out: &Path) -> Vec<String> {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sandpool-image-cache");
    let bb = image::build_builtin(image::BUSYBOX, &cache).unwrap();
    let marker = one_file_tar("imported-marker", b"from the tarball\n");
    let mut config: serde_json::Value = serde_json::from_slice(&bb.config).unwrap();
    let diff_ids = vec![bb.diff_id.clone(), sha256_digest(&marker)];
    config["rootfs"]["diff_ids"] = serde_json::json!(diff_ids);
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["example.test/imported:1"],
        "Layers": ["l0/layer.tar", "l1/layer.tar"],
    }]))
    .unwrap();
    let base = std::fs::read(&bb.layer_path).unwrap();
    let mut b = tar::Builder::new(File::create(out).unwrap());
    for (name, data) in [
        ("manifest.json", &manifest[..]),
        ("config.json", &config[..]),
        ("l0/layer.tar", &base[..]),
        ("l1/layer.tar", &marker[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
    diff_ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_tarball_runs_sandboxes_and_is_listed_and_removed() {
    let Some(rt) = gate() else { return };
    let node = TestNode::start(rt, 43).await;
    let agent = node.agent();
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("img.tar");
    let diff_ids = docker_save_tarball(&tarball);

    let img = archive::read(&tarball).unwrap();
    let names = archive::image_names(&img.names[0]).unwrap();
    assert_eq!(
        names,
        ["example.test/imported:1"],
        "a host-qualified name is full"
    );
    agent.ctr().import_archive(&img, &names).await.unwrap();

    let (name, chain, _env) = agent.ensure_image("example.test/imported:1").await.unwrap();
    assert_eq!(name, "example.test/imported:1");
    assert_eq!(Some(chain), chain_id(&diff_ids), "both layers unpacked");

    let mut t = template(pb::RuntimeClass::Runc);
    t.image = "example.test/imported:1".into();
    let sb = agent.create("imported", t, None).await.unwrap();
    assert_eq!(sb.state, pb::SandboxState::Warm, "its runtime answered");

    agent.ensure_image("busybox").await.unwrap();
    let listed = agent.ctr().image_summaries().await.unwrap();
    let row = listed
        .iter()
        .find(|i| i.name == "example.test/imported:1")
        .unwrap();
    assert!(!row.builtin);
    assert_eq!(row.digest, img.manifest_digest);
    assert!(row.size > 0);
    let bb = listed.iter().find(|i| i.name == image::BUSYBOX).unwrap();
    assert!(bb.builtin, "busybox is listed as builtin");

    agent
        .release(&sb.id, pb::ReleasePolicy::Delete)
        .await
        .unwrap();
    assert!(
        agent
            .ctr()
            .remove_image("example.test/imported:1")
            .await
            .unwrap()
    );
    assert!(
        !agent
            .ctr()
            .remove_image("example.test/imported:1")
            .await
            .unwrap()
    );
    let e = agent
        .ensure_image("example.test/imported:1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown image"), "{e}");

    // an empty file is no image tarball
    std::fs::write(dir.path().join("bad.tar"), b"").unwrap();
    let bad = archive::read(&dir.path().join("bad.tar")).unwrap_err();
    assert!(bad.to_string().contains("not an image tarball"), "{bad}");
}
