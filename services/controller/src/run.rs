//! Wiring: the six controllers on kube-rs `Controller`, behind leader election.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::conditions::reported;
use crate::context::{Context, TaskRunner};
use crate::crd::{
    ALLOCATED_TO_LABEL, BatchSandbox, Pool, SANDBOX_NAME_HASH_LABEL, Sandbox, SandboxClaim,
    SandboxSnapshot, SandboxTemplate, SandboxWarmPool,
};
use crate::error::Error;
use crate::leader::{self, LeaseConfig};
use crate::node_agents::{DaemonSetAgents, NodeAgents};
use crate::pods::RuntimeInjection;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub namespace: String,
    pub injection: RuntimeInjection,
    pub leader_elect: bool,
    /// This replica's identity (pod name).
    pub identity: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// Pause claims idle this long ([`crate::idle`]); `None`: never.
    pub idle_pause: Option<Duration>,
    /// Where SandboxSnapshot images go (`--snapshot-registry`; default:
    /// node-local).
    pub snapshots: crate::snapshot_registry::SnapshotRegistry,
}

/// Readiness as seen by `/readyz`: true while this replica runs the controllers.
#[derive(Debug, Default)]
pub struct Health {
    pub leading: AtomicBool,
}

fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, kind = err.kind(), "reconcile failed; retrying");
    sandpool_telemetry::metrics::error("controller", err.kind());
    Action::requeue(Duration::from_secs(5))
}

async fn drain<K, S>(what: &'static str, stream: S)
where
    K: Resource,
    S: futures_util::Stream<
            Item = Result<
                (ObjectRef<K>, Action),
                kube::runtime::controller::Error<Error, watcher::Error>,
            >,
        >,
{
    stream
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => {
                    sandpool_telemetry::metrics::reconciled(what, "ok");
                    tracing::debug!(controller = what, object = %obj.name, "reconciled");
                }
                Err(e) => {
                    sandpool_telemetry::metrics::reconciled(what, "error");
                    tracing::debug!(controller = what, error = %e, "reconcile error");
                }
            }
        })
        .await;
}

/// Run the controllers until the lease is lost (with leader election) or forever.
pub async fn run(
    client: Client,
    cfg: ControllerConfig,
    tasks: Arc<dyn TaskRunner>,
    health: Arc<Health>,
) -> Result<(), Error> {
    let agents = DaemonSetAgents::new(client.clone(), &cfg.namespace, Default::default());
    run_with_agents(client, cfg, tasks, health, Arc::new(agents)).await
}

/// [`run`], committing SandboxSnapshots (a BatchSandbox's `spec.pause`
/// among them) through `agents` (the node agent DaemonSet with the
/// service token).
pub async fn run_with_agents(
    client: Client,
    cfg: ControllerConfig,
    tasks: Arc<dyn TaskRunner>,
    health: Arc<Health>,
    agents: Arc<dyn NodeAgents>,
) -> Result<(), Error> {
    let ns = cfg.namespace.clone();
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease = LeaseConfig {
        name: cfg.lease_name.clone(),
        identity: cfg.identity.clone(),
        duration: cfg.lease_duration,
    };
    if cfg.leader_elect {
        tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting for leadership");
        leader::acquire(&lease_api, &lease).await?;
        tracing::info!("leading");
    }
    health.leading.store(true, Ordering::Relaxed);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            cfg.injection.clone(),
            tasks,
            Some(cfg.identity.clone()),
        )
        .with_node_agents(agents)
        .with_snapshot_registry(cfg.snapshots.clone()),
    );
    let idle = async {
        match cfg.idle_pause {
            Some(limit) => crate::idle::run(ctx.clone(), ns.clone(), limit).await,
            None => std::future::pending().await,
        }
    };
    let controllers = async {
        // the idle pauses end with the controllers (at shutdown)
        tokio::select! {
            _ = controllers(client, ns.clone(), ctx.clone(), shutdown_signal()) => {}
            _ = idle => {}
        }
    };
    if cfg.leader_elect {
        tokio::select! {
            _ = controllers => {
                // shut down: hand the lease over now rather than after it expires
                match leader::release(&lease_api, &lease).await {
                    Ok(true) => tracing::info!(lease = %lease.name, "released the leader lease"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "releasing the leader lease failed"),
                }
            }
            _ = leader::hold(&lease_api, &lease) => {
                tracing::error!("lost the leader lease; stopping");
            }
        }
    } else {
        controllers.await;
    }
    health.leading.store(false, Ordering::Relaxed);
    Ok(())
}

/// SIGTERM or ctrl+c, shared by all five controllers (kube's
/// `shutdown_on_signal` would log its "press ctrl+c" hint once per controller).
fn shutdown_signal() -> Shared<BoxFuture<'static, ()>> {
    async {
        tracing::info!("press ctrl+c (or send SIGTERM) to shut down gracefully");
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down the controllers");
    }
    .boxed()
    .shared()
}

/// The BatchSandbox controller. A batch hears about its pods through the
/// allocation label (pool pods are owned by their Pool, not by the batch),
/// and about the SandboxSnapshot its pause creates (owned).
fn batch_controller(
    client: &Client,
    ns: &str,
    ctx: &Arc<Context>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) -> impl futures_util::Stream<
    Item = Result<
        (ObjectRef<BatchSandbox>, Action),
        kube::runtime::controller::Error<Error, watcher::Error>,
    >,
> + use<> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let wc = watcher::Config::default();
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=sandpool");
    let batch_store_ns = ns.to_string();
    Controller::new(
        Api::<BatchSandbox>::namespaced(client.clone(), ns),
        wc.clone(),
    )
    .watches(pods, managed, move |pod: Pod| {
        let uid = pod.labels().get(ALLOCATED_TO_LABEL).cloned();
        let owner = pod
            .annotations()
            .get(crate::crd::BATCH_NAME_ANNOTATION)
            .cloned();
        let ns = batch_store_ns.clone();
        uid.and(owner).map(|name| ObjectRef::new(&name).within(&ns))
    })
    .owns(Api::<SandboxSnapshot>::namespaced(client.clone(), ns), wc)
    .graceful_shutdown_on(shutdown)
    .run(
        |o, c| reported(o, c, crate::batch::reconcile),
        error_policy,
        ctx.clone(),
    )
}

/// The five controllers, each draining its reconcile results, until
/// `shutdown` completes.
pub async fn controllers(
    client: Client,
    ns: String,
    ctx: Arc<Context>,
    shutdown: Shared<BoxFuture<'static, ()>>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let wc = watcher::Config::default();
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=sandpool");

    let pools = Controller::new(Api::<Pool>::namespaced(client.clone(), &ns), wc.clone())
        .owns(pods.clone(), managed.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |o, c| reported(o, c, crate::pool::reconcile),
            error_policy,
            ctx.clone(),
        );
    let batches = batch_controller(&client, &ns, &ctx, shutdown.clone());
    let sandboxes = Controller::new(Api::<Sandbox>::namespaced(client.clone(), &ns), wc.clone())
        .owns(pods.clone(), managed.clone())
        // the headless Services of sandboxes (a deleted one is recreated)
        .owns(
            Api::<Service>::namespaced(client.clone(), &ns),
            watcher::Config::default().labels(SANDBOX_NAME_HASH_LABEL),
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(|o, c| reported(o, c, crate::agent_sandbox::reconcile_sandbox), error_policy, ctx.clone());
    let warm = Controller::new(
        Api::<SandboxWarmPool>::namespaced(client.clone(), &ns),
        wc.clone(),
    )
    // its warm Sandboxes
    .owns(Api::<Sandbox>::namespaced(client.clone(), &ns), wc.clone())
    .graceful_shutdown_on(shutdown.clone())
    .run(
        |o, c| reported(o, c, crate::agent_sandbox::reconcile_warm_pool),
        error_policy,
        ctx.clone(),
    );
    let claims = Controller::new(
        Api::<SandboxClaim>::namespaced(client.clone(), &ns),
        wc.clone(),
    )
    .owns(Api::<Sandbox>::namespaced(client.clone(), &ns), wc.clone())
    .graceful_shutdown_on(shutdown.clone())
    .run(
        |o, c| reported(o, c, crate::agent_sandbox::reconcile_claim),
        error_policy,
        ctx.clone(),
    );
    let templates = Controller::new(
        Api::<SandboxTemplate>::namespaced(client.clone(), &ns),
        wc.clone(),
    )
    .owns(
        Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
        wc.clone(),
    )
    .graceful_shutdown_on(shutdown.clone())
    // a template has no status: its errors are only logged
    .run(crate::agent_sandbox::reconcile_template, error_policy, ctx.clone());
    // a snapshot's status says why it failed (upstream's own conditions)
    let snapshots = Controller::new(
        Api::<SandboxSnapshot>::namespaced(client.clone(), &ns),
        wc.clone(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(crate::snapshot::reconcile, error_policy, ctx.clone());
    tokio::join!(
        drain("pool", pools),
        drain("sandboxsnapshot", snapshots),
        drain("sandboxtemplate", templates),
        drain("batchsandbox", batches),
        drain("sandbox", sandboxes),
        drain("sandboxwarmpool", warm),
        drain("sandboxclaim", claims),
    );
}
