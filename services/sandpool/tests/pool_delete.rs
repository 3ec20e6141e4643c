//! `sandpool pool delete` against an in-memory scheduler on a loopback port:
//! an unknown pool fails with a clear message, a pool with live claims is
//! refused unless `--force`, and a deleted pool is gone.

use sandpool_proto::v1 as pb;
use sandpool_testsupport::{FakeScheduler, serve_addr};

/// `sandpool pool delete ARGS` against `addr`: exit success, stdout, stderr.
async fn delete(addr: &str, args: &[&str]) -> (bool, String, String) {
    let data = tempfile::tempdir().expect("tempdir");
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_sandpool"))
        .args(["pool", "delete"])
        .args(args)
        .args(["--scheduler", addr])
        .env("SANDPOOL_DATA_DIR", data.path())
        .env_remove("SANDPOOL_SERVICE_TOKEN")
        .env_remove("SANDPOOL_SCHEDULER")
        .output()
        .await
        .expect("run sandpool");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_delete_refuses_unknown_pools_and_live_claims_unless_forced() {
    let fake = FakeScheduler::default();
    for name in ["oops", "busy", "other"] {
        fake.add_pool(name);
    }
    for id in ["c1", "c2"] {
        fake.add_claim(pb::Claim {
            claim_id: id.into(),
            pool: "busy".into(),
            ..Default::default()
        });
    }
    let addr = serve_addr(fake.clone()).await;

    let (ok, out, err) = delete(&addr, &["oops"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("pool oops deleted"), "{out}");
    assert!(!fake.pools.lock().contains_key("oops"));

    let (ok, out, err) = delete(&addr, &["oops"]).await;
    assert!(!ok, "a second delete fails: {out}");
    assert!(err.contains("no pool named \"oops\""), "{err}");
    let (ok, _, err) = delete(&addr, &["never-was"]).await;
    assert!(!ok);
    assert!(err.contains("no pool named \"never-was\""), "{err}");

    let (ok, _, err) = delete(&addr, &["busy"]).await;
    assert!(!ok, "live claims refuse the delete");
    assert!(
        err.contains("2 live claim(s): c1, c2") && err.contains("--force"),
        "{err}"
    );
    assert!(fake.pools.lock().contains_key("busy"), "kept");

    let (ok, out, err) = delete(&addr, &["busy", "--force"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("pool busy deleted"), "{out}");
    assert!(out.contains("2 claimed sandbox(es) keep running"), "{out}");
    assert_eq!(*fake.deleted_pools.lock(), ["oops", "busy"]);
    assert!(fake.pools.lock().contains_key("other"), "others stay");
}
