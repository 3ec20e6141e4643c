//! The node agent core: warm sandboxes on containerd, injection, release,
//! recovery from containerd labels, and a stream of node events.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use parking_lot::{Mutex, MutexGuard};
use sandpool_proto::v1 as pb;
use tokio::sync::broadcast;

use crate::{
    containerd::Ctr,
    error::{AgentError, Result},
    net::NetConfig,
    spec,
};

mod checkpoint;
mod claim;
mod disk;
mod fspause;
mod images;
mod lifecycle;
mod logs;
mod recovery;
mod renew;
mod runsc;
mod template;
mod vault;

pub use checkpoint::MAX_FORK;
pub use disk::{DEFAULT_DISK_LIMIT_BYTES, disk_usage};
pub use logs::TRUNCATED as LOG_TRUNCATED;
use template::new_id;
pub use template::{ValidTemplate, runtime_label, state_label, valid_id, validate_template};
pub(crate) use template::{template_label, template_of_label};

/// Container labels that let a restarted agent rebuild its state.
pub mod labels {
    pub const MANAGED: &str = "sandpool.io/managed";
    pub const POOL: &str = "sandpool.io/pool";
    pub const STATE: &str = "sandpool.io/state";
    pub const IP: &str = "sandpool.io/ip";
    pub const TOKEN: &str = "sandpool.io/token";
    pub const RUNTIME: &str = "sandpool.io/runtime-class";
    pub const CREATED: &str = "sandpool.io/created-ms";
    pub const TEMPLATE: &str = "sandpool.io/template";
    /// The host port of a network-less sandbox's runtime tunnel.
    pub const PORT: &str = "sandpool.io/runtime-port";
    /// Its image's default process, a JSON array (absent: none).
    pub const IMAGE_COMMAND: &str = "sandpool.io/image-command";
    /// `filesystem` while the sandbox is paused filesystem-only (no task).
    pub const PAUSED: &str = "sandpool.io/paused";
}

/// Default cap of a sandbox's host-side log (its runtime's stdout and stderr).
pub const DEFAULT_LOG_CAP_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// Host path of the static `sandpool-runtime` bind-mounted into sandboxes.
    pub runtime_bin: PathBuf,
    pub runsc_bin: PathBuf,
    /// runc-compatible OCI runtime (e.g. `crun`; a path, or a name looked up
    /// on PATH) that runc-class sandboxes run under, given to the runc v2
    /// shim as its `BinaryName`; `None`: the shim's own `runc`.
    pub runc_bin: Option<PathBuf>,
    pub max_sandboxes: u32,
    pub cgroup_parent: String,
    pub net: NetConfig,
    /// How long a new sandbox may take to answer its runtime health check.
    pub ready_timeout: Duration,
    /// Where built image root filesystems and layers are cached.
    pub image_cache: PathBuf,
    /// Host directories whose contents may be mounted into sandboxes.
    pub mount_roots: Vec<PathBuf>,
    /// CPU, memory and pids every sandbox runs under (defaults and maximum).
    pub limits: crate::limits::LimitPolicy,
    /// Size at which a sandbox's host-side log is truncated.
    pub log_cap_bytes: u64,
    /// Most a sandbox may write to its root file system; one over it is
    /// stopped and reported FAILED (`DiskLimitExceeded: ...`).
    pub disk_limit_bytes: u64,
    /// Registries a create pulls an image that is not present from
    /// (`None`: such images are refused as unknown).
    pub pull: Option<crate::registry::RegistryConfig>,
}

impl AgentConfig {
    pub fn new(data_dir: PathBuf, runtime_bin: PathBuf) -> Self {
        AgentConfig {
            node_name: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "node".into()),
            net: NetConfig::new(&data_dir, "sandpool0", "10.213.0.0/16"),
            image_cache: data_dir.join("images"),
            mount_roots: vec![data_dir.join("volumes")],
            data_dir,
            runtime_bin,
            runsc_bin: PathBuf::from("runsc"),
            runc_bin: None,
            max_sandboxes: 256,
            cgroup_parent: "/sandpool".into(),
            ready_timeout: Duration::from_secs(20),
            limits: Default::default(),
            log_cap_bytes: DEFAULT_LOG_CAP_BYTES,
            disk_limit_bytes: DEFAULT_DISK_LIMIT_BYTES,
            pull: None,
        }
    }
}

/// What the agent knows about one sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub pool: String,
    pub state: pb::SandboxState,
    pub ip: Ipv4Addr,
    /// Where its runtime answers: 44772 on the sandbox's ip, or the agent's
    /// tunnel port (on 127.0.0.1) for a network-less sandbox.
    pub port: u16,
    pub token: String,
    pub runtime_class: pb::RuntimeClass,
    pub template: pb::SandboxTemplate,
    pub created_ms: i64,
    /// Why a FAILED sandbox failed (`OOMKilled: ...`), else empty.
    pub message: String,
    /// How many of its processes the OOM killer has killed.
    pub oom_kills: u32,
    /// Its image's default process (`Entrypoint ++ Cmd`; see
    /// [`crate::imageconfig::ImageConfig::default_process`]).
    pub image_command: Vec<String>,
}

impl Sandbox {
    pub fn info(&self, node: &str) -> pb::SandboxInfo {
        pb::SandboxInfo {
            sandbox_id: self.id.clone(),
            pool: self.pool.clone(),
            node: node.to_string(),
            state: self.state as i32,
            ip: self.ip.to_string(),
            runtime_port: u32::from(self.port),
            runtime_class: self.runtime_class as i32,
            access_token: self.token.clone(),
            created_unix_ms: self.created_ms,
            message: self.message.clone(),
            labels: self.template.labels.clone(),
            oom_kills: self.oom_kills,
            image_command: self.image_command.clone(),
        }
    }
}

/// Write `path`: a shell wrapper running `runsc FLAG "$@"`.
fn write_wrapper(path: &Path, runsc: &Path, flag: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let script = format!("#!/bin/sh\nexec {} {flag} \"$@\"\n", runsc.display());
    std::fs::write(path, script).map_err(|e| AgentError::io(path.display().to_string(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| AgentError::io(path.display().to_string(), e))?;
    Ok(path.to_path_buf())
}

/// The absolute path of the OCI runtime `bin` (a path, or a name looked up on
/// PATH): the shim runs it by that path. A missing or non-executable one is
/// refused, and so is crun on a hybrid cgroup host whose v2 hierarchy holds
/// controllers (crun refuses every container there): the agent does not
/// start with sandboxes that could never run.
pub fn find_oci_runtime(bin: &Path) -> Result<PathBuf> {
    find_oci_runtime_on(bin, Path::new(HYBRID_V2_CONTROLLERS))
}

/// [`find_oci_runtime`] on a host whose cgroup v2 controllers file (of a
/// hybrid host) is `v2_controllers`.
fn find_oci_runtime_on(bin: &Path, v2_controllers: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if bin.components().count() > 1 {
        Some(bin.to_path_buf()).filter(|p| executable(p))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(bin))
                .find(|p| executable(p))
        })
    };
    let found = found.ok_or_else(|| {
        AgentError::FailedPrecondition(format!(
            "OCI runtime {} for runc sandboxes not found or not executable (apt-get install crun, or leave the option out for runc)",
            bin.display()
        ))
    })?;
    let found = std::fs::canonicalize(&found)
        .map_err(|e| AgentError::io(found.display().to_string(), e))?;
    let is_crun = found
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("crun"));
    if let Some(controllers) = hybrid_v2_controllers(v2_controllers)
        && is_crun
    {
        return Err(AgentError::FailedPrecondition(format!(
            "{} refuses this host's hybrid cgroups while cgroup v2 holds controllers ({controllers}); bind them to cgroup v1 first (e.g. mkdir /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb), or leave the option out for runc",
            found.display()
        )));
    }
    Ok(found)
}

/// The controllers file of the cgroup v2 hierarchy of a hybrid (v1 + v2) host.
const HYBRID_V2_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// The controllers the v2 hierarchy of a hybrid cgroup host holds (read from
/// `file`), when there are any: crun refuses to create containers then.
pub fn hybrid_v2_controllers(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    Some(text.trim().to_string()).filter(|c| !c.is_empty())
}

/// `cp -a FROM/. TO/` (ownership, modes, xattrs and overlay whiteouts kept).
async fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| AgentError::io(to.display().to_string(), e))?;
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(format!("{}/", to.display()));
    run_checked(
        cmd,
        &format!("copying {} to {}", from.display(), to.display()),
        Duration::from_secs(600),
    )
    .await
}

/// Run `cmd` to completion within `limit` (killed after); a failure is a
/// checkpoint error naming `what` and carrying its stderr.
async fn run_checked(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> Result<()> {
    let out = tokio::time::timeout(limit, cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| AgentError::Checkpoint(format!("{what} took over {} s", limit.as_secs())))?
        .map_err(|e| AgentError::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(AgentError::Checkpoint(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub struct Agent {
    pub cfg: AgentConfig,
    ctr: Ctr,
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    /// Open gRPC channels to sandbox runtimes (HTTP/2, reused by inject).
    channels: Mutex<HashMap<String, tonic::transport::Channel>>,
    events: broadcast::Sender<pb::NodeEvent>,
    image_lock: tokio::sync::Mutex<()>,
    /// Pulls images a create asks for that are not present (`cfg.pull`).
    puller: Option<crate::registry::Puller>,
    runsc_wrapper: PathBuf,
    /// runsc with `--network=none`: checkpointable sandboxes
    runsc_nonet: PathBuf,
    /// runtime tunnels of network-less sandboxes, by sandbox id
    tunnels: Mutex<HashMap<String, crate::tunnel::Tunnel>>,
    checkpoints: crate::checkpoint::Store,
    /// ids a create or release is working on: the sweep leaves them alone
    busy: Mutex<std::collections::HashSet<String>>,
    /// sandboxes stopped for going over a limit (their current
    /// incarnation): the reason their exit is reported with
    kills: Mutex<HashMap<String, Kill>>,
    /// each running sandbox's rootfs upper dir (what the disk check
    /// measures), until its container is replaced or removed
    upperdirs: Mutex<HashMap<String, PathBuf>>,
    /// sandboxes paused filesystem-only: their task is gone on purpose
    fs_paused: Mutex<std::collections::HashSet<String>>,
    /// The node's DNS proxy, started by the first domain egress rule.
    dns: tokio::sync::OnceCell<crate::dnsproxy::server::DnsProxy>,
    /// The node's credential proxy, started by the first credential vault.
    cred: tokio::sync::OnceCell<crate::credproxy::CredProxy>,
    /// recycles that renewed a sandbox in place (no fresh start)
    renewed: std::sync::atomic::AtomicU64,
}

/// Why a sandbox was stopped by a limit rather than by its own exit.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kill {
    /// the kernel's OOM killer hit one of its processes
    Oom,
    /// it wrote more than `limit` bytes to its root file system
    Disk { limit: u64 },
}

impl Kill {
    /// The reason a FAILED report starts with (and the metric label).
    fn reason(self) -> &'static str {
        match self {
            Kill::Oom => "OOMKilled",
            Kill::Disk { .. } => "DiskLimitExceeded",
        }
    }

    /// The whole FAILED message.
    fn message(self) -> String {
        match self {
            Kill::Oom => format!("{}: the sandbox went over its memory limit", self.reason()),
            Kill::Disk { limit } => format!(
                "{}: the sandbox wrote more than its limit of {} MiB to its file system",
                self.reason(),
                limit >> 20
            ),
        }
    }
}

impl Agent {
    /// Forget what belonged to sandbox `id`'s current container (its
    /// container is being replaced or removed).
    fn forget_incarnation(&self, id: &str) {
        self.kills.lock().remove(id);
        self.upperdirs.lock().remove(id);
        self.fs_paused.lock().remove(id);
    }

    /// Remember that a limit stopped sandbox `id` (its exit is reported
    /// with the reason), count it, and leave an event in the trace.
    fn record_kill(&self, id: &str, kill: Kill) {
        let span = tracing::warn_span!("sandbox.limit_kill", sandbox = %id, reason = kill.reason());
        span.in_scope(|| tracing::warn!(message = %kill.message(), "a limit stopped the sandbox"));
        sandpool_telemetry::metrics::limit_killed(kill.reason());
        self.kills.lock().insert(id.to_string(), kill);
    }
}

type Busy<'a> = sandpool_core::busy::Busy<'a, Agent>;

/// The agent's busy set: ids a create or release is working on.
impl sandpool_core::busy::MarkBusy for Agent {
    fn mark(&self, id: &str) {
        self.busy.lock().insert(id.to_string());
    }

    fn unmark(&self, id: &str) {
        self.busy.lock().remove(id);
    }
}

/// Run `f` on the agent every `period`, for as long as the agent lives.
fn every<F, Fut>(agent: &Arc<Agent>, period: Duration, f: F)
where
    F: Fn(Arc<Agent>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let me = Arc::downgrade(agent);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(a) = me.upgrade() else { return };
            f(a).await;
        }
    });
}

/// How often the agent sweeps resources no sandbox owns.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl Agent {
    /// Build the agent on a connected containerd and recover existing sandboxes.
    pub async fn start(cfg: AgentConfig, ctr: Ctr) -> Result<Arc<Agent>> {
        for d in [
            &cfg.data_dir,
            &cfg.net.netns_dir,
            &cfg.data_dir.join("logs"),
            &cfg.data_dir.join("bin"),
        ]
        .into_iter()
        .chain(&cfg.mount_roots)
        {
            std::fs::create_dir_all(d).map_err(|e| AgentError::io(d.display().to_string(), e))?;
        }
        cfg.limits.check()?;
        if !cfg.runtime_bin.is_file() {
            return Err(AgentError::FailedPrecondition(format!(
                "runtime binary {} not found",
                cfg.runtime_bin.display()
            )));
        }
        // Debian's runsc (2022) refuses its own netstack on kernels that show
        // /proc/sys/net/core/rmem_default in every netns; run it with
        // host-network passthrough inside the sandbox's own netns instead.
        let runsc_wrapper = write_wrapper(
            &cfg.data_dir.join("bin/runsc-sandpool"),
            &cfg.runsc_bin,
            "--network=host",
        )?;
        // Checkpointable sandboxes: gVisor's loopback-only netstack, which
        // (unlike host networking) gVisor can checkpoint.
        let runsc_nonet = write_wrapper(
            &cfg.data_dir.join("bin/runsc-sandpool-nonet"),
            &cfg.runsc_bin,
            "--network=none",
        )?;
        let checkpoints = crate::checkpoint::Store::new(cfg.data_dir.join("checkpoints"));
        std::fs::create_dir_all(checkpoints.root())
            .map_err(|e| AgentError::io(checkpoints.root().display().to_string(), e))?;
        // sandbox memory and runtime tokens: root only
        std::fs::set_permissions(
            checkpoints.root(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| AgentError::io(checkpoints.root().display().to_string(), e))?;
        for half in checkpoints.incomplete() {
            tracing::warn!(dir = %half.display(), "removing a checkpoint that did not complete");
            let _ = std::fs::remove_dir_all(&half);
        }
        let mut cfg = cfg;
        cfg.runc_bin = cfg.runc_bin.as_deref().map(find_oci_runtime).transpose()?;
        if cfg.net.isolate {
            // the runtimes' trace exporter may reach a collector on the host
            let otel = spec::sandbox_otel_env(|k| std::env::var(k).ok(), cfg.net.gateway_ip());
            cfg.net
                .allow_host_ports
                .extend(spec::host_ports(&otel, cfg.net.gateway_ip()));
            cfg.net.ensure_isolation()?;
        }
        let (events, _) = broadcast::channel(1024);
        let puller = cfg.pull.clone().map(crate::registry::Puller::new);
        let agent = Arc::new(Agent {
            cfg,
            puller,
            ctr,
            sandboxes: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            events,
            image_lock: tokio::sync::Mutex::new(()),
            runsc_wrapper,
            runsc_nonet,
            tunnels: Mutex::new(HashMap::new()),
            checkpoints,
            busy: Mutex::new(Default::default()),
            kills: Mutex::new(HashMap::new()),
            upperdirs: Mutex::new(HashMap::new()),
            fs_paused: Mutex::new(Default::default()),
            dns: tokio::sync::OnceCell::new(),
            cred: tokio::sync::OnceCell::new(),
            renewed: std::sync::atomic::AtomicU64::new(0),
        });
        agent.recover().await?;
        let me = Arc::clone(&agent);
        tokio::spawn(async move { me.watch_exits().await });
        every(&agent, logs::CHECK_EVERY, |a| async move {
            let _ = tokio::task::spawn_blocking(move || a.cap_logs()).await;
        });
        every(&agent, disk::CHECK_EVERY, |a| async move {
            a.check_disks().await;
        });
        every(&agent, SWEEP_EVERY, |a| async move {
            a.recheck_tasks().await;
            if let Err(e) = a.sweep().await {
                tracing::debug!(error = %e, "sweep failed");
            }
        });
        Ok(agent)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Sandbox>> {
        self.sandboxes.lock()
    }

    fn busy(&self, id: &str) -> Busy<'_> {
        Busy::mark(self, id)
    }

    /// Whether `id` is a sandbox, or one being created or released.
    fn owned(&self, id: &str) -> bool {
        self.lock().contains_key(id) || self.busy.lock().contains(id)
    }

    pub fn ctr(&self) -> &Ctr {
        &self.ctr
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::NodeEvent> {
        self.events.subscribe()
    }

    fn emit(&self, sb: &Sandbox) {
        let _ = self.events.send(pb::NodeEvent {
            event: Some(pb::node_event::Event::Sandbox(sb.info(&self.cfg.node_name))),
        });
    }

    fn emit_removed(&self, id: &str) {
        let _ = self.events.send(pb::NodeEvent {
            event: Some(pb::node_event::Event::RemovedSandboxId(id.to_string())),
        });
        let _ = self.events.send(pb::NodeEvent {
            event: Some(pb::node_event::Event::Capacity(self.capacity())),
        });
    }

    pub fn capacity(&self) -> pb::NodeCapacity {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024;
        pb::NodeCapacity {
            node: self.cfg.node_name.clone(),
            cpu_millis: cpus * 1000,
            memory_bytes: mem,
            max_sandboxes: self.cfg.max_sandboxes,
            sandboxes: self.lock().len() as u32,
        }
    }

    pub fn list(&self, pool: &str) -> Vec<pb::SandboxInfo> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter(|s| pool.is_empty() || s.pool == pool)
            .map(|s| s.info(&self.cfg.node_name))
            .collect();
        v.sort_by(|a, b| a.sandbox_id.cmp(&b.sandbox_id));
        v
    }

    pub fn get(&self, id: &str) -> Result<Sandbox> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(id.to_string()))
    }
}

/// A runtime request with the sandbox's token and the current trace context.
fn auth<T>(sb: &Sandbox, msg: T) -> tonic::Request<T> {
    let mut r = sandpool_telemetry::grpc_request(msg);
    if let Ok(v) = sb.token.parse() {
        r.metadata_mut()
            .insert(sandpool_proto::ACCESS_TOKEN_METADATA, v);
    }
    r
}

#[cfg(test)]
mod oci_runtime_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_name_is_looked_up_on_path_and_made_absolute() {
        let found = find_oci_runtime(Path::new("sh")).expect("sh is on PATH");
        assert!(found.is_absolute(), "{}", found.display());
        assert_eq!(found, std::fs::canonicalize("/bin/sh").expect("/bin/sh"));
    }

    #[test]
    fn a_missing_or_non_executable_runtime_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("crun");
        let err = find_oci_runtime(&missing).expect_err("missing");
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("crun"), "{err}");
        std::fs::write(&missing, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o644)).expect("mode");
        assert!(find_oci_runtime(&missing).is_err(), "non-executable file");
        std::fs::set_permissions(&missing, std::fs::Permissions::from_mode(0o755)).expect("mode");
        // a host without v2 controllers (not this machine's, whichever it is)
        let no_v2 = dir.path().join("no-cgroup.controllers");
        assert_eq!(
            find_oci_runtime_on(&missing, &no_v2).expect("now executable"),
            std::fs::canonicalize(&missing).expect("canon")
        );
        // a hybrid host whose v2 holds hugetlb: crun is refused, naming why
        let v2 = dir.path().join("cgroup.controllers");
        std::fs::write(&v2, "hugetlb\n").expect("write");
        let err = find_oci_runtime_on(&missing, &v2).expect_err("hybrid v2 with controllers");
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("(hugetlb)"), "{err}");
        let err = find_oci_runtime(Path::new("no-such-oci-runtime-xyz")).expect_err("not on PATH");
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
    }

    #[test]
    fn v2_controllers_of_a_hybrid_host_are_read_when_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cgroup.controllers");
        assert_eq!(hybrid_v2_controllers(&file), None, "not a hybrid host");
        std::fs::write(&file, "\n").expect("write");
        assert_eq!(hybrid_v2_controllers(&file), None, "no controllers");
        std::fs::write(&file, "hugetlb\n").expect("write");
        assert_eq!(hybrid_v2_controllers(&file).as_deref(), Some("hugetlb"));
    }
}
