//! `sandpool serve`: the whole platform (or some of its parts, `--role`) on
//! this machine. Each part starts on its own and hands back what stops it.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use sandpool_core::{ReleasePolicy, RuntimeClass, Template, pool::CapacitySpec};
use sandpool_node_agent::{
    agent::{Agent, AgentConfig},
    containerd::{Ctr, NAMESPACE},
    daemon::ContainerdDaemon,
    net::NetConfig,
    quantity,
    service::NodeAgentService,
    spec::Limits,
};
use sandpool_proto::{
    auth::{RequireToken, ServiceToken},
    v1::{self as pb, scheduler_client::SchedulerClient},
};
use sandpool_scheduler::{
    Scheduler, SchedulerConfig, scheduler::PoolRec, service::SchedulerService,
};
use tokio::task::AbortHandle;

use crate::cluster::{GrpcServer, bind, grpc_server, serve_grpc};
use crate::{say, shutdown_signal};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
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
    /// runc-compatible OCI runtime that runc-class sandboxes run under,
    /// through the runc v2 shim (e.g. `crun`: a path or a name on PATH);
    /// default: runc. The node agent refuses to start when it is missing.
    #[arg(long, env = "SANDPOOL_RUNC_BINARY")]
    runc_binary: Option<PathBuf>,
    /// Use this containerd instead of starting a private one.
    #[arg(long, env = "SANDPOOL_CONTAINERD_SOCKET")]
    containerd_socket: Option<PathBuf>,
    /// Pools as NAME:IMAGE:BUFFER_MIN:BUFFER_MAX:POOL_MIN:POOL_MAX[:RUNTIME[:FLAGS]]
    /// (repeatable; FLAGS, comma-separated: `checkpointable`, runsc without a
    /// network, for snapshots; `recycle`, released sandboxes are reset and
    /// return to the pool).
    #[arg(long = "pool", default_value = "default:busybox:2:4:0:64")]
    pools: Vec<String>,
    /// A registry (`host[:port]`) images are pulled from over plain HTTP
    /// (repeatable; loopback registries always are, others use HTTPS).
    /// Images a create asks for that are not present are pulled first.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The registries config (mirrors, insecure registries, a docker
    /// config.json) for the pulls of creates and pools; default:
    /// DATA_DIR/registries.toml when present.
    #[arg(long)]
    registries_config: Option<PathBuf>,
    #[arg(long, default_value = "sandpool0")]
    bridge: String,
    #[arg(long, default_value = "10.213.0.0/16")]
    subnet: String,
    /// The DNS server (`ip:port`) the node's DNS proxy asks for the names
    /// domain egress rules allow; default: the host's first
    /// `/etc/resolv.conf` nameserver.
    #[arg(long, value_name = "ADDR")]
    dns_upstream: Option<SocketAddr>,
    #[arg(long, default_value = "127.0.0.1:7701")]
    agent_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7702")]
    scheduler_listen: SocketAddr,
    /// Pause a claimed sandbox after this many seconds without runtime
    /// activity (0 = never); resume it with the API (OpenSandbox `resume`, E2B `connect`).
    #[arg(long, default_value_t = 0)]
    idle_pause_after: u64,
    /// Longest sandbox timeout a caller may ask for, in seconds (400 over it
    /// on create; E2B timeout changes are cut to it).
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_MAX_TIMEOUT_S)]
    max_timeout: u64,
    /// Largest request body the gateway proxies to a sandbox, in bytes (413 over it).
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_MAX_PROXY_BODY)]
    max_proxy_body: u64,
    /// Requests per second allowed per API key (0 = no limit); 429 beyond.
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_RATE_PER_SEC)]
    rate_limit: f64,
    /// Live sandboxes per API key made with `sandpool key create` (not the
    /// platform key); 429 QUOTA_EXCEEDED beyond.
    #[arg(long, default_value_t = sandpool_gateway::DEFAULT_MAX_SANDBOXES_PER_KEY)]
    max_sandboxes_per_key: u32,
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
    /// Most CPU one sandbox may ask for (Kubernetes quantity); a template
    /// without resources gets 1 core.
    #[arg(long, default_value = "4")]
    max_sandbox_cpu: String,
    /// Most memory one sandbox may ask for; a template without resources gets 512Mi.
    #[arg(long, default_value = "4Gi")]
    max_sandbox_memory: String,
    /// Most processes and threads one sandbox may ask for; the default is 512.
    #[arg(long, default_value_t = 4096)]
    max_sandbox_pids: u32,
    /// Size in bytes at which a sandbox's host-side log (its runtime's
    /// output) is truncated; the log is removed with the sandbox.
    #[arg(long, default_value_t = sandpool_node_agent::agent::DEFAULT_LOG_CAP_BYTES)]
    sandbox_log_cap_bytes: u64,
    /// Most one sandbox may write to its root file system (Kubernetes
    /// quantity); a sandbox over it is stopped and reported FAILED
    /// (`DiskLimitExceeded`), as the kubelet evicts a pod over its
    /// ephemeral-storage limit.
    #[arg(long, default_value = "4Gi")]
    sandbox_disk_limit: String,
    /// Where built images are cached (default: under the data dir).
    #[arg(long, env = "SANDPOOL_IMAGE_CACHE")]
    image_cache: Option<PathBuf>,
    /// A host directory whose contents OpenSandbox `host` volumes may mount
    /// (after symlinks are resolved); repeatable. None by default: host
    /// volumes are refused (400) and only named volumes, under
    /// `<data-dir>/agent/volumes`, can be mounted.
    #[arg(long = "allowed-host-path", value_name = "DIR")]
    allowed_host_paths: Vec<PathBuf>,
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
            "--pool {s:?}: expected NAME:IMAGE:BUFFER_MIN:BUFFER_MAX:POOL_MIN:POOL_MAX[:RUNTIME[:checkpointable,recycle]]"
        );
    }
    let (mut checkpointable, mut release_policy) = (false, ReleasePolicy::Delete);
    for flag in f.get(7).iter().flat_map(|f| f.split(',')) {
        match flag {
            "checkpointable" => checkpointable = true,
            "recycle" => release_policy = ReleasePolicy::Recycle,
            other => bail!(
                "--pool {s:?}: field 8 has {other:?}; the flags are `checkpointable` (runsc without a network) and `recycle` (released sandboxes are reset and return to the pool)"
            ),
        }
    }
    let n = |i: usize| {
        f[i].parse::<u32>()
            .with_context(|| format!("--pool {s:?}: field {} is not a number", i + 1))
    };
    Ok(PoolRec {
        name: f[0].to_string(),
        template: Template {
            image: f[1].to_string(),
            runtime_class: match f.get(6) {
                Some(r) => r
                    .parse()
                    .with_context(|| format!("--pool {s:?}: field 7"))?,
                None => RuntimeClass::Runc,
            },
            checkpointable,
            release_policy,
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
    let mut f = sandpool_gateway::tenancy::create_private_file(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // 0600 whatever the umask
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("making {} 0600", tmp.display()))?;
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

/// The node agent part: containerd (a private one unless given), the agent
/// with the pools' images ready, and its gRPC server.
struct NodePart {
    daemon: Option<ContainerdDaemon>,
    agent: Arc<Agent>,
    server: AbortHandle,
}

pub async fn serve(a: ServeArgs, service_token: Option<String>) -> anyhow::Result<()> {
    let pools: Vec<PoolRec> = a
        .pools
        .iter()
        .map(|p| parse_pool(p))
        .collect::<anyhow::Result<_>>()?;
    crate::datadir::prepare(&a.data_dir)?;
    let service_token = platform_service_token(service_token, &a.data_dir)?;
    let grpc = grpc_server(RequireToken::new(Some(&service_token))?);
    let runs = |r: Role| a.roles.is_empty() || a.roles.contains(&r);
    let api_keys = api_keys(&a, runs(Role::Gateway));
    let mut tasks = Vec::new();
    let node = if runs(Role::NodeAgent) {
        Some(start_node_agent(&a, &pools, grpc.clone()).await?)
    } else {
        None
    };
    let sched = if runs(Role::Scheduler) {
        let (s, server) = start_scheduler(&a, &pools, &service_token, grpc).await?;
        tasks.push(server);
        Some(s)
    } else {
        None
    };
    let metrics = a
        .metrics_listen
        .or_else(|| runs(Role::Gateway).then(|| SocketAddr::from(([127, 0, 0, 1], 9464))));
    if let Some(addr) = metrics {
        tasks.push(
            crate::cluster::spawn_http(addr, sandpool_gateway::metrics_app())
                .await?
                .abort_handle(),
        );
    }
    let metrics_url = metrics
        .map(|m| format!("http://{m}/metrics"))
        .unwrap_or_else(|| "off (--metrics-listen)".into());
    if let Some(s) = &sched {
        wait_warm(s, &pools).await?;
    }
    if runs(Role::Gateway) {
        // template builds need the node's containerd: only beside a node agent
        let builder = node.as_ref().map(|n| {
            let socket = a
                .containerd_socket
                .clone()
                .unwrap_or_else(|| a.data_dir.join("containerd").join("containerd.sock"));
            crate::build::builder(
                &a.data_dir,
                socket,
                a.insecure_registries.clone(),
                &n.agent.cfg.net,
            )
        });
        let builds = sched.as_ref().map(|s| {
            Arc::new(crate::build::StoredBuilds(s.store()))
                as Arc<dyn sandpool_gateway::e2b::BuildStore>
        });
        run_gateway(
            &a,
            &service_token,
            &api_keys,
            &metrics_url,
            (builder, builds),
        )
        .await?;
    } else {
        say(format!("ready: metrics {metrics_url}"));
        shutdown_signal().await;
    }
    if a.cleanup_on_exit {
        cleanup(sched.as_deref(), node.as_ref().map(|n| &n.agent)).await;
    } else {
        say("stopping (sandboxes keep running; they are adopted on the next start)");
    }
    for t in tasks {
        t.abort();
    }
    if let Some(mut node) = node {
        node.server.abort();
        if let Some(d) = &mut node.daemon {
            d.stop(Duration::from_secs(10));
        }
    }
    Ok(())
}

/// The gateway's API keys: the given ones, else one generated (and printed
/// where the gateway runs).
fn api_keys(a: &ServeArgs, runs_gateway: bool) -> Vec<String> {
    if !a.api_keys.is_empty() {
        return a.api_keys.clone();
    }
    let k = crate::keys::new_key();
    if runs_gateway {
        say(format!("generated API key: {k}"));
    }
    vec![k]
}

async fn start_node_agent(
    a: &ServeArgs,
    pools: &[PoolRec],
    grpc: GrpcServer,
) -> anyhow::Result<NodePart> {
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
    let mut daemon = None;
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
    let ctr = Ctr::connect(&socket, NAMESPACE, Duration::from_secs(30)).await?;
    let mut cfg = AgentConfig::new(a.data_dir.join("agent"), runtime_bin);
    cfg.net = NetConfig::new(&cfg.data_dir, &a.bridge, &a.subnet);
    cfg.net.dns_upstream = a.dns_upstream;
    cfg.max_sandboxes = a.max_sandboxes;
    cfg.runc_bin = a.runc_binary.clone();
    cfg.pull = Some(crate::images::registry_config(
        a.registries_config.as_deref(),
        &a.data_dir,
        &a.insecure_registries,
    )?);
    cfg.limits.max = Limits {
        cpu_millis: quantity::cpu_millis(&a.max_sandbox_cpu).context("--max-sandbox-cpu")?,
        memory_bytes: quantity::memory_bytes(&a.max_sandbox_memory)
            .context("--max-sandbox-memory")?,
        pids: a.max_sandbox_pids,
    };
    cfg.log_cap_bytes = a.sandbox_log_cap_bytes;
    cfg.disk_limit_bytes =
        quantity::memory_bytes(&a.sandbox_disk_limit).context("--sandbox-disk-limit")?;
    if cfg.disk_limit_bytes == 0 {
        anyhow::bail!("--sandbox-disk-limit must be above 0 (sandboxes are never unlimited)");
    }
    if let Some(c) = &a.image_cache {
        cfg.image_cache = c.clone();
    }
    // after the volume root, which stays the first mount root
    cfg.mount_roots.extend(a.allowed_host_paths.iter().cloned());
    let agent = Agent::start(cfg, ctr).await?;
    for p in pools {
        say(format!(
            "preparing image {} (first time: busybox seconds, python a few minutes)",
            p.template.image
        ));
        agent
            .ensure_image(&p.template.image)
            .await
            .with_context(|| format!("image of pool {}", p.name))?;
    }
    let svc =
        pb::node_agent_server::NodeAgentServer::new(NodeAgentService::new(Arc::clone(&agent)));
    let listener = bind(a.agent_listen).await?;
    let server =
        tokio::spawn(serve_grpc(grpc, listener, svc, std::future::pending())).abort_handle();
    say(format!("node agent: grpc://{}", a.agent_listen));
    Ok(NodePart {
        daemon,
        agent,
        server,
    })
}

async fn start_scheduler(
    a: &ServeArgs,
    pools: &[PoolRec],
    service_token: &str,
    grpc: GrpcServer,
) -> anyhow::Result<(Arc<Scheduler>, AbortHandle)> {
    let s = Scheduler::start(SchedulerConfig {
        store_path: a.data_dir.join("scheduler.redb"),
        nodes: vec![format!("http://{}", a.agent_listen)],
        max_inflight: 4,
        tick: Duration::from_millis(500),
        idle_pause: (a.idle_pause_after > 0).then(|| Duration::from_secs(a.idle_pause_after)),
        service_token: Some(service_token.to_string()),
    })
    .await?;
    for p in pools {
        s.apply_pool(p.clone())?;
    }
    let listener = bind(a.scheduler_listen).await?;
    let svc = pb::scheduler_server::SchedulerServer::new(SchedulerService::new(Arc::clone(&s)));
    let server =
        tokio::spawn(serve_grpc(grpc, listener, svc, std::future::pending())).abort_handle();
    say(format!("scheduler: grpc://{}", a.scheduler_listen));
    Ok((s, server))
}

/// Progress until the pools reach their minimum buffer (at most 5 minutes).
async fn wait_warm(s: &Scheduler, pools: &[PoolRec]) -> anyhow::Result<()> {
    for _ in 0..600 {
        let mut all = true;
        let mut parts = Vec::new();
        for p in pools {
            let (_, st) = s.pool_status(&p.name)?;
            parts.push(format!(
                "{} {} warm (bufferMin {}, bufferMax {})",
                p.name, st.available, p.capacity.buffer_min, p.capacity.buffer_max
            ));
            all &= st.available >= p.capacity.buffer_min;
        }
        say(format!("warming pools: {}", parts.join(", ")));
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The gateway's template builder and the store of its build records.
type TemplateBuilds = (
    Option<Arc<dyn sandpool_gateway::e2b::TemplateBuilder>>,
    Option<Arc<dyn sandpool_gateway::e2b::BuildStore>>,
);

/// Serve the REST gateway on `--listen` until the shutdown signal.
async fn run_gateway(
    a: &ServeArgs,
    service_token: &str,
    api_keys: &[String],
    metrics_url: &str,
    (builder, builds): TemplateBuilds,
) -> anyhow::Result<()> {
    // lazy: the gateway outlives scheduler restarts (503 UNAVAILABLE meanwhile)
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", a.scheduler_listen))?
        .tcp_nodelay(true)
        .connect_lazy();
    let client = SchedulerClient::with_interceptor(ch, ServiceToken::new(Some(service_token))?);
    let mut gw = sandpool_gateway::Gateway::new(client, api_keys)
        .with_keys_file(api_keys, crate::keys::keys_file(&a.data_dir))
        .with_max_sandboxes_per_key(a.max_sandboxes_per_key)
        .with_rate_limit(a.rate_limit, a.rate_burst)
        .with_max_timeout(a.max_timeout);
    gw.max_proxy_body = a.max_proxy_body;
    if let Some(b) = builder {
        gw = gw.with_template_builder(b);
    }
    if let Some(s) = builds {
        gw = gw.with_build_store(s);
    }
    let listener = bind(a.listen).await?;
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // peer addresses key the rate limit of requests without an API key
    let gw_app = sandpool_gateway::app(gw).into_make_service_with_connect_info::<SocketAddr>();
    say(format!(
        "ready: gateway http://{} (OpenSandbox API, header OPEN-SANDBOX-API-KEY; public gRPC sandpool.v1.public.Sandboxes on the same port), scheduler grpc://{}, node agent grpc://{}, metrics {}",
        a.listen, a.scheduler_listen, a.agent_listen, metrics_url
    ));
    let _ = axum::serve(listener, gw_app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    Ok(())
}

/// `--cleanup-on-exit`: release every claim, delete every pool and sandbox.
async fn cleanup(sched: Option<&Scheduler>, agent: Option<&Arc<Agent>>) {
    say("cleaning up: releasing claims and deleting pools");
    if let Some(s) = sched {
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
    if let Some(ag) = agent {
        for sb in ag.list("") {
            let _ = ag.release(&sb.sandbox_id, pb::ReleasePolicy::Delete).await;
        }
        ag.cfg.net.remove_isolation();
    }
}

#[cfg(test)]
mod tests {
    use sandpool_core::RuntimeClass;

    use super::parse_pool;

    #[test]
    fn pool_flags_name_their_runtime_class_or_are_refused() {
        let p = parse_pool("py:python:1:2:0:8:runsc:checkpointable").expect("runsc");
        assert_eq!(p.template.runtime_class, RuntimeClass::Runsc);
        assert!(p.template.checkpointable);
        let p = parse_pool("d:busybox:1:2:0:8").expect("default");
        assert_eq!(p.template.runtime_class, RuntimeClass::Runc);
        // an unknown runtime used to become runc without a word
        let e = parse_pool("d:busybox:1:2:0:8:kata").expect_err("unknown runtime");
        assert!(
            format!("{e:#}").contains("unknown runtime class \"kata\""),
            "{e:#}"
        );
    }

    #[test]
    fn pool_flags_set_the_recycle_policy() {
        use sandpool_core::ReleasePolicy;
        let p = parse_pool("r:busybox:1:2:0:8:runc:recycle").expect("recycle");
        assert_eq!(p.template.release_policy, ReleasePolicy::Recycle);
        assert!(!p.template.checkpointable);
        let p = parse_pool("r:busybox:1:2:0:8:runsc:checkpointable,recycle").expect("both");
        assert!(p.template.checkpointable);
        assert_eq!(p.template.release_policy, ReleasePolicy::Recycle);
        let p = parse_pool("d:busybox:1:2:0:8").expect("default");
        assert_eq!(p.template.release_policy, ReleasePolicy::Delete);
        let e = parse_pool("r:busybox:1:2:0:8:runc:noop").expect_err("unknown flag");
        assert!(format!("{e:#}").contains("`recycle`"), "{e:#}");
    }
}
