use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use sandpool_node_agent::{
    agent::{Agent, AgentConfig},
    containerd::Ctr,
    daemon::ContainerdDaemon,
    net::NetConfig,
    service::NodeAgentService,
};

/// The sandpool node agent: warm sandboxes on containerd (runc or runsc).
#[derive(Parser, Debug)]
#[command(name = "sandpool-node-agent", version)]
struct Args {
    /// gRPC listen address of the NodeAgent service.
    #[arg(long, env = "SANDPOOL_AGENT_LISTEN", default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// State directory (netns files, IPAM, logs, image cache, private containerd).
    #[arg(long, env = "SANDPOOL_DATA_DIR", default_value = "/var/lib/sandpool")]
    data_dir: PathBuf,
    /// containerd socket; when absent a private containerd is started under the data dir.
    #[arg(long, env = "SANDPOOL_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace for sandboxes.
    #[arg(long, default_value = "sandpool")]
    namespace: String,
    /// Static sandpool-runtime binary mounted into every sandbox.
    #[arg(long, env = "SANDPOOL_RUNTIME_BIN")]
    runtime_bin: PathBuf,
    /// runsc binary for RUNSC sandboxes.
    #[arg(long, default_value = "runsc")]
    runsc: PathBuf,
    /// Node bridge and its subnet.
    #[arg(long, default_value = "sandpool0")]
    bridge: String,
    #[arg(long, default_value = "10.213.0.0/16")]
    subnet: String,
    #[arg(long, default_value_t = 256)]
    max_sandboxes: u32,
    /// Builtin images to build/import at start (busybox, python).
    #[arg(long, value_delimiter = ',', default_value = "busybox")]
    preload: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = sandpool_telemetry::init("sandpool-node-agent")?;
    let mut daemon = None;
    let socket = match &args.containerd_socket {
        Some(s) => s.clone(),
        None => {
            let d = ContainerdDaemon::start(&args.data_dir.join("containerd"))
                .context("starting private containerd")?;
            let s = d.socket.clone();
            daemon = Some(d);
            s
        }
    };
    let ctr = Ctr::connect(&socket, &args.namespace, Duration::from_secs(30))
        .await
        .context("connecting to containerd")?;
    tracing::info!(version = %ctr.version().await.unwrap_or_default(), socket = %socket.display(), "containerd connected");
    let mut cfg = AgentConfig::new(
        args.data_dir.clone(),
        std::fs::canonicalize(&args.runtime_bin).context("runtime binary")?,
    );
    cfg.net = NetConfig::new(&args.data_dir, &args.bridge, &args.subnet);
    cfg.runsc_bin = args.runsc.clone();
    cfg.max_sandboxes = args.max_sandboxes;
    let agent = Agent::start(cfg, ctr).await.context("starting the agent")?;
    for img in &args.preload {
        let t = std::time::Instant::now();
        agent
            .ensure_image(img)
            .await
            .with_context(|| format!("preparing image {img}"))?;
        tracing::info!(image = %img, ms = t.elapsed().as_millis() as u64, "image ready");
    }
    let svc = sandpool_proto::v1::node_agent_server::NodeAgentServer::new(NodeAgentService::new(
        Arc::clone(&agent),
    ));
    tracing::info!(listen = %args.listen, "node agent serving");
    // SANDPOOL_SERVICE_TOKEN: the bearer token callers must present
    let token = std::env::var("SANDPOOL_SERVICE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::warn!(
            "no SANDPOOL_SERVICE_TOKEN: the node agent API accepts unauthenticated calls"
        );
    }
    let auth = sandpool_proto::auth::RequireToken::new(token.as_deref())?;
    tonic::transport::Server::builder()
        .trace_fn(sandpool_telemetry::grpc_server_span)
        .layer(tonic::service::InterceptorLayer::new(auth))
        .add_service(svc)
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")?;
    if let Some(mut d) = daemon {
        d.stop(Duration::from_secs(10));
    }
    Ok(())
}
