//! Kubernetes mode: `sandpool controller`, `sandpool gateway`, `sandpool node-agent`
//! (one image, three Deployments/DaemonSets; see deploy/helm/sandpool).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sandpool_controller::crd::{CapacitySpec, Pool, PoolSpec};
use sandpool_controller::kube_scheduler::KubeScheduler;
use sandpool_controller::pods::RuntimeInjection;
use sandpool_controller::run::{ControllerConfig, Health};
use sandpool_controller::tasks::GrpcTaskRunner;
use sandpool_node_agent::containerd::Ctr;
use sandpool_node_agent::cri::{CriNode, CriNodeService};
use sandpool_proto::auth::{RequireToken, ServiceToken};
use sandpool_proto::v1 as pb;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Log filter (`info`, `debug`, or a RUST_LOG directive); RUST_LOG wins when set.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Namespace of the pools, batches and their pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Run the controllers only while holding the leader lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// gRPC `sandpool.v1.Scheduler` (backed by the CRDs) for the gateway.
    #[arg(long, default_value = "0.0.0.0:9090")]
    scheduler_listen: SocketAddr,
    /// Prometheus `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8443")]
    metrics_listen: SocketAddr,
    /// `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_listen: SocketAddr,
    /// Image holding `/sandpool-runtime`, copied into every pool pod.
    #[arg(long, env = "SANDPOOL_RUNTIME_IMAGE")]
    runtime_image: String,
    #[arg(long)]
    runtime_image_pull_policy: Option<String>,
    /// JSON list of pools to create at start: `[{"name", "template", "capacitySpec"}]`.
    #[arg(long)]
    pools_file: Option<PathBuf>,
    /// This replica's identity for leader election.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, default_value = "sandpool-controller")]
    lease_name: String,
    /// HTTPS `/convert`: the CRD conversion webhook of the agent-sandbox kinds
    /// (v1alpha1 ⇄ v1beta1); off unless set. Needs the certificate and key.
    #[arg(long, env = "SANDPOOL_WEBHOOK_LISTEN", requires_all = ["webhook_cert", "webhook_key"])]
    webhook_listen: Option<SocketAddr>,
    /// PEM certificate (chain) the webhook serves.
    #[arg(long, env = "SANDPOOL_WEBHOOK_CERT")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of the webhook's certificate.
    #[arg(long, env = "SANDPOOL_WEBHOOK_KEY")]
    webhook_key: Option<PathBuf>,
    /// Pause a claimed sandbox after this many seconds without runtime
    /// activity (0 = never), as `sandpool serve --idle-pause-after`; resume it
    /// with the API (OpenSandbox `resume`, E2B `connect`).
    #[arg(long, env = "SANDPOOL_IDLE_PAUSE_AFTER", default_value_t = 0)]
    pub idle_pause_after: u64,
    /// gRPC port of the node agents (the DaemonSet's pods in this namespace,
    /// found by node) that pause and resume claims' pods.
    #[arg(long, env = "SANDPOOL_NODE_AGENT_PORT", default_value_t = sandpool_controller::kube_scheduler::NODE_AGENT_PORT)]
    node_agent_port: u16,
    /// Push SandboxSnapshot images to this registry (`host[:port]/path`,
    /// upstream's flag); unset (the default): they stay on the committing
    /// node and pods made from them are pinned there.
    #[arg(long, env = "SANDPOOL_SNAPSHOT_REGISTRY")]
    snapshot_registry: Option<String>,
    /// Reach the snapshot registry over plain HTTP (loopback ones are anyway).
    #[arg(long, env = "SANDPOOL_SNAPSHOT_REGISTRY_INSECURE")]
    snapshot_registry_insecure: bool,
    /// The `kubernetes.io/dockerconfigjson` Secret (this namespace) with the
    /// snapshot registry's push credentials; unset: anonymous pushes.
    #[arg(long, env = "SANDPOOL_SNAPSHOT_PUSH_SECRET")]
    snapshot_push_secret: Option<String>,
}

/// Starts the conversion webhook when `--webhook-listen` is set (every
/// replica serves it, leader or not).
async fn spawn_webhook(a: &ControllerArgs) -> anyhow::Result<()> {
    let (Some(listen), Some(cert), Some(key)) = (a.webhook_listen, &a.webhook_cert, &a.webhook_key)
    else {
        return Ok(());
    };
    let cfg = sandpool_controller::conversion::WebhookConfig {
        listen,
        cert: cert.clone(),
        key: key.clone(),
    };
    let (addr, serve) = sandpool_controller::conversion::bind(&cfg)
        .await
        .context("starting the conversion webhook")?;
    tracing::info!(%addr, "conversion webhook listening");
    tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "conversion webhook stopped");
        }
    });
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// Log filter (`info`, `debug`, or a RUST_LOG directive); RUST_LOG wins when set.
    #[arg(long)]
    pub log_level: Option<String>,
    #[arg(long, env = "SANDPOOL_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The scheduler (the controller's gRPC service in Kubernetes mode).
    #[arg(long, env = "SANDPOOL_SCHEDULER")]
    scheduler: String,
    /// Prometheus `/metrics`.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics_listen: SocketAddr,
    /// Requests per second allowed per API key (0 = no limit); 429 beyond.
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_RATE_PER_SEC)]
    rate_limit: f64,
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_RATE_BURST)]
    rate_burst: f64,
    /// API key(s); without any, the gateway serves without authentication.
    #[arg(
        long = "api-key",
        env = "SANDPOOL_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Keys file of `sandpool key create --data-dir` (e.g. a mounted
    /// Secret): its keys each see only their own sandboxes; re-read on change.
    #[arg(long, env = "SANDPOOL_KEYS_FILE")]
    keys_file: Option<PathBuf>,
    /// Live sandboxes per key of the keys file; 429 QUOTA_EXCEEDED beyond.
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_MAX_SANDBOXES_PER_KEY)]
    max_sandboxes_per_key: u32,
    /// Also serve the agent-sandbox sandbox router (what the k8s-agent-sandbox
    /// SDK reaches as `sandbox-router-svc:8080`) on this address. It has NO
    /// authentication, like upstream's router: off unless given.
    #[arg(long, env = "SANDPOOL_SANDBOX_ROUTER_LISTEN")]
    sandbox_router_listen: Option<SocketAddr>,
    /// Sandbox ports the router forwards to.
    #[arg(long, value_delimiter = ',', default_value = "8888")]
    sandbox_router_ports: Vec<u16>,
    /// The cluster's DNS domain (the router reaches `{sandbox}.{namespace}.svc.{domain}`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

/// The Kubernetes node agent's default state directory (the chart's
/// `nodeAgent.dataDir`).
pub const NODE_AGENT_DATA_DIR: &str = "/var/lib/sandpool-node";

#[derive(clap::Args, Debug)]
pub struct NodeAgentArgs {
    /// Log filter (`info`, `debug`, or a RUST_LOG directive); RUST_LOG wins when set.
    #[arg(long)]
    pub log_level: Option<String>,
    /// The node's containerd.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// containerd namespace of the kubelet's containers.
    #[arg(long, default_value = "k8s.io")]
    containerd_namespace: String,
    #[arg(long, default_value = "0.0.0.0:9091")]
    listen: SocketAddr,
    /// Prometheus `/metrics`.
    #[arg(long, default_value = "0.0.0.0:9464")]
    metrics_listen: SocketAddr,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// State directory (reserved for checkpoints and mounts); not the
    /// standalone platform's `/var/lib/sandpool`, which may share the host.
    #[arg(long, default_value = NODE_AGENT_DATA_DIR)]
    data_dir: PathBuf,
    /// Host directories whose contents may be mounted into pods (repeatable);
    /// the first holds the named volumes. Default: `<data dir>/volumes`.
    #[arg(long = "mount-root")]
    mount_roots: Vec<PathBuf>,
}

impl NodeAgentArgs {
    /// `--mount-root`s, or `<data dir>/volumes` when none is given.
    fn mount_roots(&self) -> Vec<PathBuf> {
        if self.mount_roots.is_empty() {
            vec![self.data_dir.join("volumes")]
        } else {
            self.mount_roots.clone()
        }
    }
}

/// One pool of `--pools-file` (the chart's `pools[]`).
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PoolEntry {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    template: k8s_openapi::api::core::v1::PodTemplateSpec,
    capacity_spec: CapacitySpec,
}

fn yes() -> bool {
    true
}

/// Create the configured pools, or bring their spec back to the configuration.
async fn ensure_pools(client: &kube::Client, ns: &str, file: &PathBuf) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let entries: Vec<PoolEntry> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let api: Api<Pool> = Api::namespaced(client.clone(), ns);
    for e in entries.into_iter().filter(|e| e.enabled) {
        let spec = PoolSpec::new(e.template, e.capacity_spec);
        let mut pool = Pool::new(&e.name, spec.clone());
        pool.metadata.labels = Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "sandpool".to_string(),
            )]
            .into(),
        );
        match api.create(&PostParams::default(), &pool).await {
            Ok(p) => tracing::info!(pool = %p.name_any(), "created pool"),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                api.patch(
                    &e.name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "spec": spec })),
                )
                .await?;
                tracing::info!(pool = %e.name, "pool spec updated from the configuration");
            }
            Err(err) => return Err(err).with_context(|| format!("creating pool {}", e.name)),
        }
    }
    Ok(())
}

/// Bind `addr` (errors here stop the command) and serve `app` in the background.
pub async fn spawn_http(
    addr: SocketAddr,
    app: axum::Router,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    Ok(tokio::spawn(async move { axum::serve(l, app).await }))
}

/// The server-side check of the service token (`SANDPOOL_SERVICE_TOKEN`).
fn require_token(token: Option<&str>, what: &str) -> anyhow::Result<RequireToken> {
    if token.is_none() {
        tracing::warn!(
            "no service token (SANDPOOL_SERVICE_TOKEN): the {what} gRPC API accepts unauthenticated calls"
        );
    }
    Ok(RequireToken::new(token)?)
}

/// The gRPC server of every sandpool part: traced, and behind the service
/// token check. Clone it for each listener.
pub type GrpcServer = tonic::transport::Server<
    tower::layer::util::Stack<
        tonic::service::InterceptorLayer<RequireToken>,
        tower::layer::util::Identity,
    >,
>;

pub fn grpc_server(auth: RequireToken) -> GrpcServer {
    tonic::transport::Server::builder()
        .trace_fn(sandpool_telemetry::grpc_server_span)
        .layer(tonic::service::InterceptorLayer::new(auth))
}

/// Bind `addr`; the error names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Serve `svc` on `listener` with `server` until `shutdown` completes.
pub async fn serve_grpc<S>(
    mut server: GrpcServer,
    listener: tokio::net::TcpListener,
    svc: S,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
        + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    // No Nagle on accepted connections: a unary response goes out as two
    // writes (headers + message, then trailers), and with Nagle the trailers
    // wait for the peer's delayed ACK, ~40 ms on every call
    // (`Server::tcp_nodelay` does not reach streams passed in).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    server
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

pub async fn controller(a: ControllerArgs, service_token: Option<String>) -> anyhow::Result<()> {
    let auth = require_token(service_token.as_deref(), "scheduler")?;
    let snapshots = sandpool_controller::snapshot_registry::SnapshotRegistry::new(
        a.snapshot_registry.as_deref(),
        a.snapshot_registry_insecure,
        a.snapshot_push_secret.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let identity = a.identity.clone().unwrap_or_else(|| {
        format!(
            "sandpool-controller-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    if let Some(f) = &a.pools_file {
        ensure_pools(&client, &a.namespace, f).await?;
    }
    let tasks: Arc<dyn sandpool_controller::context::TaskRunner> = Arc::new(GrpcTaskRunner);
    let health = Arc::new(Health::default());

    // health + metrics
    let h = health.clone();
    let health_app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let h = h.clone();
                async move {
                    if h.leading.load(Ordering::Relaxed) {
                        (http::StatusCode::OK, "leading")
                    } else {
                        // a standby replica still serves the scheduler API
                        (http::StatusCode::OK, "standby")
                    }
                }
            }),
        );
    spawn_http(a.health_listen, health_app).await?;
    spawn_http(a.metrics_listen, sandpool_gateway::metrics_app()).await?;
    spawn_webhook(&a).await?;

    // the CRD-backed scheduler for the gateway (stateless: every replica serves it)
    let agents: Arc<dyn sandpool_controller::kube_scheduler::NodeAgents> = Arc::new(
        sandpool_controller::kube_scheduler::DaemonSetAgents::new(
            client.clone(),
            &a.namespace,
            ServiceToken::new(service_token.as_deref())?,
        )
        .at(
            sandpool_controller::kube_scheduler::NODE_AGENT_SELECTOR,
            a.node_agent_port,
        ),
    );
    let sched = KubeScheduler::new(client.clone(), &a.namespace, tasks.clone())
        .with_node_agents(agents.clone());
    let sched_task = tokio::spawn(serve_grpc(
        grpc_server(auth),
        bind(a.scheduler_listen).await?,
        pb::scheduler_server::SchedulerServer::new(sched),
        crate::shutdown_signal(),
    ));

    let cfg = ControllerConfig {
        namespace: a.namespace.clone(),
        injection: RuntimeInjection {
            image: a.runtime_image.clone(),
            image_pull_policy: a.runtime_image_pull_policy.clone(),
        },
        leader_elect: a.leader_elect,
        identity,
        lease_name: a.lease_name.clone(),
        lease_duration: Duration::from_secs(15),
        idle_pause: (a.idle_pause_after > 0).then(|| Duration::from_secs(a.idle_pause_after)),
        snapshots,
    };
    tracing::info!(namespace = %a.namespace, "sandpool controller starting");
    // the batch controller pauses pods (`spec.pause`) through the same agents
    let run = sandpool_controller::run::run_with_agents(client, cfg, tasks, health, agents);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r?,
        r = sched_task => {
            r??;
            // stopped by the signal: let the controllers finish and give the lease back
            run.await?;
        }
    }
    Ok(())
}

pub async fn gateway(a: GatewayArgs, service_token: Option<String>) -> anyhow::Result<()> {
    let keys: Vec<String> = a.api_keys.into_iter().filter(|k| !k.is_empty()).collect();
    if keys.is_empty() && a.keys_file.is_none() {
        tracing::warn!("no API key configured: the gateway accepts every request");
    }
    let ch = tonic::transport::Endpoint::from_shared(a.scheduler.clone())
        .with_context(|| format!("scheduler address {:?}", a.scheduler))?
        .tcp_nodelay(true)
        .connect_lazy();
    let client = pb::scheduler_client::SchedulerClient::with_interceptor(
        ch,
        ServiceToken::new(service_token.as_deref())?,
    );
    let mut gw = sandpool_gateway::Gateway::new(client, &keys)
        .with_max_sandboxes_per_key(a.max_sandboxes_per_key)
        .with_rate_limit(a.rate_limit, a.rate_burst);
    if let Some(path) = a.keys_file {
        gw = gw.with_keys_file(&keys, path);
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    spawn_http(a.metrics_listen, sandpool_gateway::metrics_app()).await?;
    if let Some(addr) = a.sandbox_router_listen {
        let cfg = sandpool_gateway::sandbox_router::RouterConfig {
            cluster_domain: a.cluster_domain.clone(),
            allowed_ports: a.sandbox_router_ports.clone(),
            ..Default::default()
        };
        spawn_http(addr, sandpool_gateway::sandbox_router::app(cfg)).await?;
        tracing::info!(listen = %addr, ports = ?a.sandbox_router_ports, "sandbox router serving (no authentication)");
    }
    tracing::info!(listen = %a.listen, scheduler = %a.scheduler, "sandpool gateway serving");
    let app = sandpool_gateway::app(gw).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown_signal())
        .await?;
    Ok(())
}

pub async fn node_agent(a: NodeAgentArgs, service_token: Option<String>) -> anyhow::Result<()> {
    crate::datadir::prepare(&a.data_dir)?;
    let ctr = Ctr::connect(
        &a.containerd_socket,
        &a.containerd_namespace,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| {
        format!(
            "connecting to containerd at {}",
            a.containerd_socket.display()
        )
    })?;
    let roots = a.mount_roots();
    for r in &roots {
        std::fs::create_dir_all(r).with_context(|| format!("creating {}", r.display()))?;
    }
    let node = Arc::new(CriNode::new(ctr, &a.node_name).with_mount_roots(roots));
    spawn_http(a.metrics_listen, sandpool_gateway::metrics_app()).await?;
    tracing::info!(listen = %a.listen, namespace = %a.containerd_namespace, "sandpool node agent (Kubernetes mode) serving");
    serve_grpc(
        grpc_server(require_token(service_token.as_deref(), "node agent")?),
        bind(a.listen).await?,
        pb::node_agent_server::NodeAgentServer::new(CriNodeService(node)),
        crate::shutdown_signal(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        a: NodeAgentArgs,
    }

    #[test]
    fn the_node_agent_keeps_its_state_apart_from_the_standalone_platform() {
        let c = Cmd::parse_from(["node-agent"]);
        assert_eq!(c.a.data_dir, PathBuf::from("/var/lib/sandpool-node"));
        assert_eq!(
            c.a.mount_roots(),
            [PathBuf::from("/var/lib/sandpool-node/volumes")],
            "named volumes live under the agent's own (hostPath) directory"
        );
        let chart = include_str!("../../../deploy/helm/sandpool/values.yaml");
        assert!(
            chart.contains("  dataDir: /var/lib/sandpool-node\n"),
            "the chart's nodeAgent.dataDir default is the agent's own"
        );
    }

    #[derive(clap::Parser, Debug)]
    struct Ctl {
        #[command(flatten)]
        a: ControllerArgs,
    }

    #[tokio::test]
    async fn the_conversion_webhook_needs_its_certificate_and_key() {
        let base = ["controller", "--runtime-image", "r"];
        let off = Ctl::parse_from(base);
        assert!(off.a.webhook_listen.is_none());
        spawn_webhook(&off.a).await.unwrap();
        let listen = ["--webhook-listen", "127.0.0.1:0"];
        let without_key = [&base[..], &listen[..], &["--webhook-cert", "c.pem"][..]].concat();
        let err = Ctl::try_parse_from(without_key).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let paths = [
            "--webhook-cert",
            cert.to_str().unwrap(),
            "--webhook-key",
            key.to_str().unwrap(),
        ];
        let on = Ctl::parse_from([&base[..], &listen[..], &paths[..]].concat());
        // no such files: the controller does not start half-configured
        let err = spawn_webhook(&on.a).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("reading certificate"),
            "{err:#}"
        );
    }
}
