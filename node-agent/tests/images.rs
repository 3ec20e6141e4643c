//! Builtin images in a real containerd (root; skipped without containerd
//! unless SANDPOOL_REQUIRE_CONTAINERD=1): the image record carries the key of
//! the recipe it was built from, and a record from an older recipe is rebuilt
//! rather than reused.

use sandpool_node_agent::{
    image::{self, RECIPE_LABEL},
    testkit::{TestNode, gate},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builtin_image_from_an_older_recipe_is_rebuilt_not_reused() {
    let Some(rt) = gate() else { return };
    let node = TestNode::start(rt, 41).await;
    let agent = node.agent();
    let label = || async {
        let img = agent.ctr().image(image::BUSYBOX).await.unwrap();
        img.and_then(|i| i.labels.get(RECIPE_LABEL).cloned())
    };
    let key = image::recipe_key(image::BUSYBOX).unwrap();

    agent.ensure_image("busybox").await.unwrap();
    assert_eq!(label().await, Some(key.clone()));

    // the record as an older recipe left it
    let cache =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sandpool-image-cache");
    let mut old = image::build_builtin(image::BUSYBOX, &cache).unwrap();
    old.recipe = "older-recipe".into();
    agent.ctr().import(&old).await.unwrap();
    assert_eq!(label().await, Some("older-recipe".into()));

    let (name, _, cfg) = agent.ensure_image("busybox").await.unwrap();
    let env = cfg.env;
    assert_eq!(name, image::BUSYBOX);
    assert_eq!(env, ["PATH=/bin"]);
    assert_eq!(label().await, Some(key), "rebuilt and relabelled");
}
