//! `sandpool pool delete` against an in-memory scheduler on a loopback port:
//! an unknown pool fails with a clear message, a pool with live claims is
//! refused unless `--force`, and a deleted pool is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sandpool_proto::v1::{
    self as pb,
    scheduler_server::{Scheduler, SchedulerServer},
};
use tonic::{Request, Response, Status};

/// Pools and claims in maps; the calls `pool delete` makes.
#[derive(Default, Clone)]
struct Fake {
    pools: Arc<Mutex<BTreeMap<String, pb::Pool>>>,
    claims: Arc<Mutex<Vec<pb::Claim>>>,
    deleted: Arc<Mutex<Vec<String>>>,
}

type R<T> = Result<Response<T>, Status>;

fn no<T>() -> R<T> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl Scheduler for Fake {
    async fn apply_pool(&self, _: Request<pb::Pool>) -> R<pb::Pool> {
        no()
    }
    async fn get_pool(&self, r: Request<pb::PoolRef>) -> R<pb::Pool> {
        let name = r.into_inner().name;
        let p = self.pools.lock().expect("fake lock").get(&name).cloned();
        p.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("pool {name} not found")))
    }
    async fn list_pools(&self, _: Request<pb::ListPoolsRequest>) -> R<pb::ListPoolsResponse> {
        no()
    }
    async fn delete_pool(&self, r: Request<pb::PoolRef>) -> R<pb::DeletePoolResponse> {
        let name = r.into_inner().name;
        self.pools
            .lock()
            .expect("fake lock")
            .remove(&name)
            .ok_or_else(|| Status::not_found(format!("pool {name} not found")))?;
        self.deleted.lock().expect("fake lock").push(name);
        Ok(Response::new(pb::DeletePoolResponse {}))
    }
    async fn create_claim(&self, _: Request<pb::ClaimRequest>) -> R<pb::Claim> {
        no()
    }
    async fn get_claim(&self, _: Request<pb::ClaimRef>) -> R<pb::Claim> {
        no()
    }
    async fn list_claims(&self, r: Request<pb::ListClaimsRequest>) -> R<pb::ListClaimsResponse> {
        let pool = r.into_inner().pool;
        let claims: Vec<pb::Claim> = self
            .claims
            .lock()
            .expect("fake lock")
            .iter()
            .filter(|c| pool.is_empty() || c.pool == pool)
            .cloned()
            .collect();
        Ok(Response::new(pb::ListClaimsResponse {
            total: claims.len() as u32,
            claims,
            next_page_token: String::new(),
        }))
    }
    async fn renew(&self, _: Request<pb::RenewRequest>) -> R<pb::Claim> {
        no()
    }
    async fn pause_claim(&self, _: Request<pb::ClaimRef>) -> R<pb::Claim> {
        no()
    }
    async fn resume_claim(&self, _: Request<pb::ClaimRef>) -> R<pb::Claim> {
        no()
    }
    async fn release_claim(&self, _: Request<pb::ClaimRef>) -> R<pb::ReleaseClaimResponse> {
        no()
    }
    async fn set_claim_egress(&self, _: Request<pb::SetClaimEgressRequest>) -> R<pb::Claim> {
        no()
    }
    async fn patch_claim_metadata(
        &self,
        _: Request<pb::PatchClaimMetadataRequest>,
    ) -> R<pb::Claim> {
        no()
    }
    async fn checkpoint_claim(
        &self,
        _: Request<pb::CheckpointClaimRequest>,
    ) -> R<pb::CheckpointInfo> {
        no()
    }
    async fn restore_checkpoint(
        &self,
        _: Request<pb::RestoreCheckpointRequest>,
    ) -> R<pb::RestoreCheckpointResponse> {
        no()
    }
    async fn list_checkpoints(
        &self,
        _: Request<pb::ListCheckpointsRequest>,
    ) -> R<pb::ListCheckpointsResponse> {
        no()
    }
    async fn delete_checkpoint(
        &self,
        _: Request<pb::CheckpointRef>,
    ) -> R<pb::DeleteCheckpointResponse> {
        no()
    }
    async fn create_batch(&self, _: Request<pb::BatchRequest>) -> R<pb::Batch> {
        no()
    }
    async fn get_batch(&self, _: Request<pb::BatchRef>) -> R<pb::Batch> {
        no()
    }
    async fn delete_batch(&self, _: Request<pb::BatchRef>) -> R<pb::DeleteBatchResponse> {
        no()
    }
}

/// Serve `fake` on a loopback port; its address.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SchedulerServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

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

fn pool(name: &str) -> pb::Pool {
    pb::Pool {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_delete_refuses_unknown_pools_and_live_claims_unless_forced() {
    let fake = Fake::default();
    for name in ["oops", "busy", "other"] {
        fake.pools
            .lock()
            .expect("fake lock")
            .insert(name.into(), pool(name));
    }
    fake.claims
        .lock()
        .unwrap()
        .extend(["c1", "c2"].map(|id| pb::Claim {
            claim_id: id.into(),
            pool: "busy".into(),
            ..Default::default()
        }));
    let addr = serve(fake.clone()).await;

    let (ok, out, err) = delete(&addr, &["oops"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("pool oops deleted"), "{out}");
    assert!(!fake.pools.lock().expect("fake lock").contains_key("oops"));

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
    assert!(
        fake.pools.lock().expect("fake lock").contains_key("busy"),
        "kept"
    );

    let (ok, out, err) = delete(&addr, &["busy", "--force"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("pool busy deleted"), "{out}");
    assert!(out.contains("2 claimed sandbox(es) keep running"), "{out}");
    assert_eq!(*fake.deleted.lock().expect("fake lock"), ["oops", "busy"]);
    assert!(
        fake.pools.lock().expect("fake lock").contains_key("other"),
        "others stay"
    );
}
