//! `sandpool`: the standalone platform and its CLI.

mod build;
mod cli;
mod cluster;
mod datadir;
mod gc;
mod images;
mod keys;
mod sandbox_cmd;
mod serve;

use clap::{Parser, Subcommand};
use sandpool_proto::auth::ServiceToken;

#[derive(Parser, Debug)]
#[command(
    name = "sandpool",
    version,
    about = "Sandboxes for AI agents in milliseconds"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Bearer token of gRPC calls between sandpool's services. `serve`
    /// without one uses (or creates) DATA_DIR/service-token; the CLI reads
    /// that file ($SANDPOOL_DATA_DIR, default /var/lib/sandpool) when unset.
    #[arg(
        long,
        global = true,
        env = "SANDPOOL_SERVICE_TOKEN",
        hide_env_values = true
    )]
    service_token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the whole platform on this machine: containerd, node agent, scheduler, gateway.
    Serve(Box<serve::ServeArgs>),
    /// Kubernetes mode: the controllers and the CRD-backed scheduler.
    Controller(cluster::ControllerArgs),
    /// Kubernetes mode: the REST gateway (OpenSandbox + E2B APIs) in front of a scheduler.
    Gateway(cluster::GatewayArgs),
    /// Kubernetes mode: the node agent (DaemonSet) for pods on this node's containerd.
    NodeAgent(cluster::NodeAgentArgs),
    /// API keys of the gateway: `create`, `list`, `revoke`.
    Key(keys::KeyArgs),
    /// Images of a standalone platform: `import`, `list`, `rm`.
    Image(images::ImageArgs),
    /// Sandboxes through the gateway's public gRPC API with an API key:
    /// `create`, `exec`, `cp`, `ls`, `rm`.
    Sandbox(sandbox_cmd::SandboxArgs),
    #[command(flatten)]
    Client(cli::ClientCmd),
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("sandpool: {msg}");
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => {
            let _t = sandpool_telemetry::init("sandpool")?;
            serve::serve(*a, cli.service_token).await
        }
        Cmd::Controller(a) => {
            let _t =
                sandpool_telemetry::init_with_level("sandpool-controller", a.log_level.as_deref())?;
            cluster::controller(a, cli.service_token).await
        }
        Cmd::Gateway(a) => {
            let _t =
                sandpool_telemetry::init_with_level("sandpool-gateway", a.log_level.as_deref())?;
            cluster::gateway(a, cli.service_token).await
        }
        Cmd::NodeAgent(a) => {
            let _t =
                sandpool_telemetry::init_with_level("sandpool-node-agent", a.log_level.as_deref())?;
            cluster::node_agent(a, cli.service_token).await
        }
        Cmd::Key(a) => keys::run(a),
        Cmd::Image(a) => images::run(a, cli.service_token).await,
        Cmd::Sandbox(a) => sandbox_cmd::run(a).await,
        Cmd::Client(c) => match c.run_public().await {
            Ok(done) => done,
            Err(c) => {
                let token: ServiceToken = cli::cli_service_token(cli.service_token)?;
                cli::run(c, &token).await
            }
        },
    }
}
