//! `sandpool`: the standalone platform and its CLI.

mod cluster;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use sandpool_core::{Template, pool::CapacitySpec};
use sandpool_node_agent::{
    agent::{Agent, AgentConfig},
    containerd::Ctr,
    daemon::ContainerdDaemon,
    net::NetConfig,
    service::NodeAgentService,
};
use sandpool_proto::{
    auth::{AuthChannel, RequireToken, ServiceToken},
    v1::{self as pb, scheduler_client::SchedulerClient},
};
use sandpool_scheduler::{
    Scheduler, SchedulerConfig, scheduler::PoolRec, service::SchedulerService,
};

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
    Serve(ServeArgs),
    /// Kubernetes mode: the controllers and the CRD-backed scheduler.
    Controller(cluster::ControllerArgs),
    /// Kubernetes mode: the REST gateway (OpenSandbox + E2B APIs) in front of a scheduler.
    Gateway(cluster::GatewayArgs),
    /// Kubernetes mode: the node agent (DaemonSet) for pods on this node's containerd.
    NodeAgent(cluster::NodeAgentArgs),
    /// Pools: `apply` or `list`.
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
        #[arg(
            long,
            global = true,
            env = "SANDPOOL_SCHEDULER",
            default_value = "http://127.0.0.1:7702"
        )]
        scheduler: String,
    },
    /// Claim a sandbox from a pool (prints its id, IP and token).
    Claim {
        #[arg(long)]
        pool: String,
        /// Seconds until the claim expires (0 = never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// Fail instead of cold-starting when the pool has no warm sandbox.
        #[arg(long)]
        pool_only: bool,
        /// Entrypoint to inject (after `--`).
        #[arg(last = true)]
        argv: Vec<String>,
        #[arg(
            long,
            env = "SANDPOOL_SCHEDULER",
            default_value = "http://127.0.0.1:7702"
        )]
        scheduler: String,
    },
    /// Run a command in a claimed sandbox, streaming its output.
    Exec {
        claim: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[arg(
            long,
            env = "SANDPOOL_SCHEDULER",
            default_value = "http://127.0.0.1:7702"
        )]
        scheduler: String,
    },
    /// List claims.
    List {
        #[arg(long, default_value = "")]
        pool: String,
        #[arg(
            long,
            env = "SANDPOOL_SCHEDULER",
            default_value = "http://127.0.0.1:7702"
        )]
        scheduler: String,
    },
    /// Release a claim (its sandbox is deleted and the pool refills).
    Release {
        claim: String,
        #[arg(
            long,
            env = "SANDPOOL_SCHEDULER",
            default_value = "http://127.0.0.1:7702"
        )]
        scheduler: String,
    },
}

#[derive(Subcommand, Debug)]
enum PoolCmd {
    /// Create or update a pool.
    Apply {
        name: String,
        #[arg(long, default_value = "busybox")]
        image: String,
        #[arg(long, default_value_t = 1)]
        buffer_min: u32,
        #[arg(long, default_value_t = 2)]
        buffer_max: u32,
        #[arg(long, default_value_t = 0)]
        pool_min: u32,
        #[arg(long, default_value_t = 64)]
        pool_max: u32,
        /// runc or runsc
        #[arg(long, default_value = "runc")]
        runtime: String,
        #[arg(long, default_value = "")]
        cpu: String,
        #[arg(long, default_value = "")]
        memory: String,
        /// Run the pool's sandboxes as root (default: the unprivileged `user`, uid 61000).
        #[arg(long)]
        run_as_root: bool,
        /// runsc sandboxes without a network (loopback only) that can be
        /// checkpointed, restored and forked (needs --runtime runsc).
        #[arg(long)]
        checkpointable: bool,
    },
    List,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Gateway (REST) listen address.
    #[arg(long, env = "SANDPOOL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, env = "SANDPOOL_DATA_DIR", default_value = "/var/lib/sandpool")]
    data_dir: PathBuf,
    /// API key(s) for the gateway; one is generated and printed when none is given.
    #[arg(long = "api-key", env = "SANDPOOL_API_KEY", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// Static sandpool-runtime (default: sandpool-runtime-static next to this binary).
    #[arg(long, env = "SANDPOOL_RUNTIME_BIN")]
    runtime_bin: Option<PathBuf>,
    /// Use this containerd instead of starting a private one.
    #[arg(long, env = "SANDPOOL_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// Pools as NAME:IMAGE:BUFFER_MIN:BUFFER_MAX:POOL_MIN:POOL_MAX[:RUNTIME[:checkpointable]]
    /// (repeatable; `checkpointable`: runsc without a network, for snapshots).
    #[arg(long = "pool", default_value = "default:busybox:2:4:0:64")]
    pools: Vec<String>,
    #[arg(long, default_value = "sandpool0")]
    bridge: String,
    #[arg(long, default_value = "10.213.0.0/16")]
    subnet: String,
    #[arg(long, default_value = "127.0.0.1:7701")]
    agent_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7702")]
    scheduler_listen: SocketAddr,
    /// Pause a claimed sandbox after this many seconds without runtime
    /// activity (0 = never); resume it with the API (OpenSandbox `resume`, E2B `connect`).
    #[arg(long, default_value_t = 0)]
    idle_pause_after: u64,
    /// Requests per second allowed per API key (0 = no limit); 429 beyond.
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_RATE_PER_SEC)]
    rate_limit: f64,
    /// Burst allowance of the rate limit.
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_RATE_BURST)]
    rate_burst: f64,
    /// Prometheus `/metrics` of the whole platform (no auth: keep it local).
    /// (Default 127.0.0.1:9464; with `--role` only where the gateway runs:
    /// give each other part its own address to expose its metrics.)
    #[arg(long, env = "SANDPOOL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[arg(long, default_value_t = 256)]
    max_sandboxes: u32,
    /// Where built images are cached (default: under the data dir).
    #[arg(long, env = "SANDPOOL_IMAGE_CACHE")]
    image_cache: Option<PathBuf>,
    /// On shutdown release every claim and delete every pool's sandboxes
    /// (default: leave them running for the next start to adopt).
    #[arg(long)]
    cleanup_on_exit: bool,
    /// Run only these parts in this process (default: all). Split, each part
    /// can fail and restart on its own: `node-agent` (with containerd) serves
    /// `--agent-listen`, `scheduler` serves `--scheduler-listen` and uses the
    /// agent there, `gateway` serves `--listen` and uses the scheduler.
    #[arg(long = "role", value_enum, value_delimiter = ',')]
    roles: Vec<Role>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    NodeAgent,
    Scheduler,
    Gateway,
}

fn parse_pool(s: &str) -> anyhow::Result<PoolRec> {
    let f: Vec<&str> = s.split(':').collect();
    if !(6..=8).contains(&f.len()) {
        bail!(
            "--pool {s:?}: expected NAME:IMAGE:BUFFER_MIN:BUFFER_MAX:POOL_MIN:POOL_MAX[:RUNTIME[:checkpointable]]"
        );
    }
    let checkpointable = match f.get(7) {
        None => false,
        Some(&"checkpointable") => true,
        Some(other) => bail!(
            "--pool {s:?}: field 8 is {other:?}; the only flag is `checkpointable` (runsc without a network)"
        ),
    };
    let n = |i: usize| {
        f[i].parse::<u32>()
            .with_context(|| format!("--pool {s:?}: field {} is not a number", i + 1))
    };
    Ok(PoolRec {
        name: f[0].to_string(),
        template: Template {
            image: f[1].to_string(),
            runtime_class: f.get(6).unwrap_or(&"runc").to_string(),
            checkpointable,
            ..Default::default()
        },
        capacity: CapacitySpec {
            buffer_min: n(2)?,
            buffer_max: n(3)?,
            pool_min: n(4)?,
            pool_max: n(5)?,
        },
    })
}

/// argv as one `sh -c` line (the runtime's `/command` runs a shell line):
/// each word quoted unless it is plainly safe, so `-- sh -c 'a | b'` keeps its words.
fn shell_join(argv: &[String]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(safe) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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

/// The service token of a platform on `data_dir`: the given one, else the
/// one in DATA_DIR/service-token, else a new one written there (0600), so
/// the parts of a split platform (`--role`) share it.
fn platform_service_token(
    given: Option<String>,
    data_dir: &std::path::Path,
) -> anyhow::Result<String> {
    if let Some(t) = given {
        return Ok(t);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("service-token");
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    // written whole under a temporary name, then linked into place: a crash
    // never leaves an empty token, and of two parts starting at once one wins
    let t = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let tmp = data_dir.join(format!(".service-token.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(t.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The CLI's token: given, else the local platform's file if readable.
fn cli_service_token(given: Option<String>) -> anyhow::Result<ServiceToken> {
    let from_file = || {
        let dir = std::env::var("SANDPOOL_DATA_DIR").unwrap_or_else(|_| "/var/lib/sandpool".into());
        std::fs::read_to_string(std::path::Path::new(&dir).join("service-token"))
            .ok()
            .map(|t| t.trim().to_string())
    };
    Ok(ServiceToken::new(given.or_else(from_file).as_deref())?)
}

async fn serve(a: ServeArgs, service_token: Option<String>) -> anyhow::Result<()> {
    let pools: Vec<PoolRec> = a
        .pools
        .iter()
        .map(|p| parse_pool(p))
        .collect::<anyhow::Result<_>>()?;
    let service_token = platform_service_token(service_token, &a.data_dir)?;
    let require_token =
        tonic::service::InterceptorLayer::new(RequireToken::new(Some(&service_token))?);
    let runs = |r: Role| a.roles.is_empty() || a.roles.contains(&r);
    let api_keys = if a.api_keys.is_empty() {
        // `e2b_` + 40 hex: the key shape E2B SDKs accept; fine for OpenSandbox too.
        let hex = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let k = format!("e2b_{}", &hex[..40]);
        if runs(Role::Gateway) {
            say(format!("generated API key: {k}"));
        }
        vec![k]
    } else {
        a.api_keys.clone()
    };

    let mut daemon = None;
    let mut agent = None;
    let mut tasks = Vec::new();
    if runs(Role::NodeAgent) {
        let runtime_bin = match &a.runtime_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name("sandpool-runtime-static"),
        };
        let runtime_bin = std::fs::canonicalize(&runtime_bin).with_context(|| {
            format!(
                "runtime binary {} (build it static: see scripts/run.sh)",
                runtime_bin.display()
            )
        })?;
        let socket = match &a.containerd_socket {
            Some(s) => s.clone(),
            None => {
                say("starting private containerd");
                let d = ContainerdDaemon::start(&a.data_dir.join("containerd"))?;
                let s = d.socket.clone();
                daemon = Some(d);
                s
            }
        };
        let ctr = Ctr::connect(&socket, "sandpool", Duration::from_secs(30)).await?;
        let mut cfg = AgentConfig::new(a.data_dir.join("agent"), runtime_bin);
        cfg.net = NetConfig::new(&cfg.data_dir, &a.bridge, &a.subnet);
        cfg.max_sandboxes = a.max_sandboxes;
        if let Some(c) = &a.image_cache {
            cfg.image_cache = c.clone();
        }
        let ag = Agent::start(cfg, ctr).await?;
        for p in &pools {
            say(format!(
                "preparing image {} (first time: busybox seconds, python a few minutes)",
                p.template.image
            ));
            ag.ensure_image(&p.template.image)
                .await
                .with_context(|| format!("image of pool {}", p.name))?;
        }
        let agent_svc =
            pb::node_agent_server::NodeAgentServer::new(NodeAgentService::new(Arc::clone(&ag)));
        let agent_listener = tokio::net::TcpListener::bind(a.agent_listen)
            .await
            .with_context(|| format!("binding {}", a.agent_listen))?;
        let server = tonic::transport::Server::builder()
            .trace_fn(sandpool_telemetry::grpc_server_span)
            .layer(require_token.clone())
            .add_service(agent_svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                agent_listener,
            ));
        tasks.push(tokio::spawn(server).abort_handle());
        say(format!("node agent: grpc://{}", a.agent_listen));
        agent = Some(ag);
    }

    let mut sched = None;
    if runs(Role::Scheduler) {
        let s = Scheduler::start(SchedulerConfig {
            store_path: a.data_dir.join("scheduler.redb"),
            nodes: vec![format!("http://{}", a.agent_listen)],
            max_inflight: 4,
            tick: Duration::from_millis(500),
            idle_pause: (a.idle_pause_after > 0).then(|| Duration::from_secs(a.idle_pause_after)),
            service_token: Some(service_token.clone()),
        })
        .await?;
        for p in pools.clone() {
            s.apply_pool(p)?;
        }
        let sched_listener = tokio::net::TcpListener::bind(a.scheduler_listen)
            .await
            .with_context(|| format!("binding {}", a.scheduler_listen))?;
        let sched_svc =
            pb::scheduler_server::SchedulerServer::new(SchedulerService::new(Arc::clone(&s)));
        let server = tonic::transport::Server::builder()
            .trace_fn(sandpool_telemetry::grpc_server_span)
            .layer(require_token.clone())
            .add_service(sched_svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                sched_listener,
            ));
        tasks.push(tokio::spawn(server).abort_handle());
        say(format!("scheduler: grpc://{}", a.scheduler_listen));
        sched = Some(s);
    }

    let metrics = a
        .metrics_listen
        .or_else(|| runs(Role::Gateway).then(|| SocketAddr::from(([127, 0, 0, 1], 9464))));
    if let Some(addr) = metrics {
        tasks.push(
            cluster::spawn_http(addr, sandpool_gateway::metrics_app())
                .await?
                .abort_handle(),
        );
    }
    let metrics_url = metrics
        .map(|m| format!("http://{m}/metrics"))
        .unwrap_or_else(|| "off (--metrics-listen)".into());
    if let Some(s) = &sched {
        // Progress until the pools reach their minimum buffer.
        for _ in 0..600 {
            let mut all = true;
            let mut parts = Vec::new();
            for p in &pools {
                let (_, st) = s.pool_status(&p.name)?;
                parts.push(format!(
                    "{} {}/{}",
                    p.name, st.available, p.capacity.buffer_min
                ));
                all &= st.available >= p.capacity.buffer_min;
            }
            say(format!("warming pools: {}", parts.join(", ")));
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if runs(Role::Gateway) {
        // lazy: the gateway outlives scheduler restarts (503 UNAVAILABLE meanwhile)
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", a.scheduler_listen))?
            .tcp_nodelay(true)
            .connect_lazy();
        let client =
            SchedulerClient::with_interceptor(ch, ServiceToken::new(Some(&service_token))?);
        let gw = sandpool_gateway::Gateway::new(client, &api_keys)
            .with_rate_limit(a.rate_limit, a.rate_burst);
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        // peer addresses key the rate limit of requests without an API key
        let gw_app = sandpool_gateway::app(gw).into_make_service_with_connect_info::<SocketAddr>();
        say(format!(
            "ready: gateway http://{} (OpenSandbox API, header OPEN-SANDBOX-API-KEY), scheduler grpc://{}, node agent grpc://{}, metrics {}",
            a.listen, a.scheduler_listen, a.agent_listen, metrics_url
        ));
        let _ = axum::serve(listener, gw_app)
            .with_graceful_shutdown(shutdown_signal())
            .await;
    } else {
        say(format!("ready: metrics {metrics_url}"));
        shutdown_signal().await;
    }
    if a.cleanup_on_exit {
        say("cleaning up: releasing claims and deleting pools");
        if let Some(s) = &sched {
            for c in s.list_claims("", &[], &Default::default()) {
                if let Err(e) = s
                    .release(&c.id, sandpool_core::claim::ClaimEvent::Release)
                    .await
                {
                    say(format!("release {}: {e}", c.id));
                }
            }
            for p in s.pools() {
                if let Err(e) = s.delete_pool(&p).await {
                    say(format!("delete pool {p}: {e}"));
                }
            }
        }
        if let Some(ag) = &agent {
            for sb in ag.list("") {
                let _ = ag.release(&sb.sandbox_id, pb::ReleasePolicy::Delete).await;
            }
            ag.cfg.net.remove_isolation();
        }
    } else {
        say("stopping (sandboxes keep running; they are adopted on the next start)");
    }
    for t in tasks {
        t.abort();
    }
    if let Some(mut d) = daemon {
        d.stop(Duration::from_secs(10));
    }
    Ok(())
}

async fn scheduler(
    addr: &str,
    token: &ServiceToken,
) -> anyhow::Result<SchedulerClient<AuthChannel>> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("scheduler address {addr:?}"))?
        .connect()
        .await
        .with_context(|| {
            format!("connecting to the scheduler at {addr} (is `sandpool serve` running?)")
        })?;
    Ok(SchedulerClient::with_interceptor(ch, token.clone()))
}

fn print_claim(c: &pb::Claim) {
    let sb = c.sandbox.clone().unwrap_or_default();
    println!(
        "{}\tpool={}\tsandbox={}\tip={}:{}\ttoken={}\tcold={}\tclaim_us={}",
        c.claim_id,
        c.pool,
        sb.sandbox_id,
        sb.ip,
        sb.runtime_port,
        sb.access_token,
        c.cold_start,
        c.claim_us
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let token = match &cli.cmd {
        Cmd::Serve(_) | Cmd::Controller(_) | Cmd::Gateway(_) | Cmd::NodeAgent(_) => {
            ServiceToken::default()
        }
        _ => cli_service_token(cli.service_token.clone())?,
    };
    match cli.cmd {
        Cmd::Serve(a) => {
            let _t = sandpool_telemetry::init("sandpool")?;
            serve(a, cli.service_token).await
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
        Cmd::Pool {
            cmd,
            scheduler: addr,
        } => {
            let mut s = scheduler(&addr, &token).await?;
            match cmd {
                PoolCmd::Apply {
                    name,
                    image,
                    buffer_min,
                    buffer_max,
                    pool_min,
                    pool_max,
                    runtime,
                    cpu,
                    memory,
                    run_as_root,
                    checkpointable,
                } => {
                    let t = Template {
                        image,
                        runtime_class: runtime,
                        cpu,
                        memory,
                        run_as_root,
                        checkpointable,
                        ..Default::default()
                    };
                    let p = s
                        .apply_pool(pb::Pool {
                            name,
                            template: Some(sandpool_scheduler::scheduler::template_to_pb(&t)),
                            capacity: Some(pb::CapacitySpec {
                                buffer_min,
                                buffer_max,
                                pool_min,
                                pool_max,
                            }),
                            status: None,
                        })
                        .await?
                        .into_inner();
                    println!("pool {} applied", p.name);
                }
                PoolCmd::List => {
                    for p in s
                        .list_pools(pb::ListPoolsRequest {})
                        .await?
                        .into_inner()
                        .pools
                    {
                        let st = p.status.unwrap_or_default();
                        println!(
                            "{}\ttotal={}\tallocated={}\tavailable={}",
                            p.name, st.total, st.allocated, st.available
                        );
                    }
                }
            }
            Ok(())
        }
        Cmd::Claim {
            pool,
            ttl,
            pool_only,
            argv,
            scheduler: addr,
        } => {
            let c = scheduler(&addr, &token)
                .await?
                .create_claim(pb::ClaimRequest {
                    pool,
                    pool_only,
                    ttl_seconds: ttl,
                    process: Some(pb::InjectRequest {
                        argv,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_claim(&c);
            Ok(())
        }
        Cmd::Exec {
            claim,
            command,
            scheduler: addr,
        } => {
            let c = scheduler(&addr, &token)
                .await?
                .get_claim(pb::ClaimRef { claim_id: claim })
                .await?
                .into_inner();
            let sb = c.sandbox.unwrap_or_default();
            let resp = reqwest::Client::new()
                .post(format!("http://{}:{}/command", sb.ip, sb.runtime_port))
                .header("x-execd-access-token", sb.access_token)
                .json(&serde_json::json!({"command": shell_join(&command)}))
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!(
                    "exec failed: {} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut code = 0;
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk?);
                while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..pos + 2).collect();
                    let v: serde_json::Value =
                        serde_json::from_slice(&frame[..pos]).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("stdout") => print!("{}", v["text"].as_str().unwrap_or_default()),
                        Some("stderr") => eprint!("{}", v["text"].as_str().unwrap_or_default()),
                        Some("error") => {
                            code = v["error"]["evalue"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(1)
                        }
                        _ => {}
                    }
                }
            }
            std::process::exit(code);
        }
        Cmd::List {
            pool,
            scheduler: addr,
        } => {
            for c in scheduler(&addr, &token)
                .await?
                .list_claims(pb::ListClaimsRequest {
                    pool,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .claims
            {
                print_claim(&c);
            }
            Ok(())
        }
        Cmd::Release {
            claim,
            scheduler: addr,
        } => {
            scheduler(&addr, &token)
                .await?
                .release_claim(pb::ClaimRef {
                    claim_id: claim.clone(),
                })
                .await?;
            println!("released {claim}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_join_keeps_words() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(super::shell_join(&v(&["echo", "hi"])), "echo hi");
        assert_eq!(
            super::shell_join(&v(&["sh", "-c", "a | b"])),
            "sh -c 'a | b'"
        );
        assert_eq!(
            super::shell_join(&v(&["printf", "it's", ""])),
            "printf 'it'\\''s' ''"
        );
    }
}
