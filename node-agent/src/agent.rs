//! The node agent core: warm sandboxes on containerd, injection, release,
//! recovery from containerd labels, and a stream of node events.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use sandpool_proto::v1 as pb;
use tokio::sync::broadcast;

use crate::{
    containerd::{Ctr, NewContainer, TaskEvent, TaskState},
    error::{AgentError, Result},
    image,
    net::NetConfig,
    quantity,
    spec::{self, Limits, SandboxSpec},
};

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
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// Host path of the static `sandpool-runtime` bind-mounted into sandboxes.
    pub runtime_bin: PathBuf,
    pub runsc_bin: PathBuf,
    pub max_sandboxes: u32,
    pub cgroup_parent: String,
    pub net: NetConfig,
    /// How long a new sandbox may take to answer its runtime health check.
    pub ready_timeout: Duration,
    /// Where built image root filesystems and layers are cached.
    pub image_cache: PathBuf,
    /// Host directories whose contents may be mounted into sandboxes.
    pub mount_roots: Vec<PathBuf>,
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
            max_sandboxes: 256,
            cgroup_parent: "/sandpool".into(),
            ready_timeout: Duration::from_secs(20),
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
            message: String::new(),
            labels: self.template.labels.clone(),
        }
    }

    fn label_map(&self) -> Result<HashMap<String, String>> {
        let template = serde_json::to_string(&TemplateLabel::from(&self.template))
            .map_err(|e| AgentError::InvalidTemplate(e.to_string()))?;
        Ok([
            (labels::MANAGED, "true".to_string()),
            (labels::POOL, self.pool.clone()),
            (labels::STATE, state_label(self.state).to_string()),
            (labels::IP, self.ip.to_string()),
            (labels::TOKEN, self.token.clone()),
            (
                labels::RUNTIME,
                runtime_label(self.runtime_class).to_string(),
            ),
            (labels::CREATED, self.created_ms.to_string()),
            (labels::TEMPLATE, template),
            (labels::PORT, self.port.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }

    /// Rebuild from container labels (recovery).
    pub fn from_labels(id: &str, l: &HashMap<String, String>) -> Option<Sandbox> {
        if l.get(labels::MANAGED).map(String::as_str) != Some("true") {
            return None;
        }
        let template: pb::SandboxTemplate = l
            .get(labels::TEMPLATE)
            .and_then(|t| serde_json::from_str::<TemplateLabel>(t).ok())?
            .into();
        Some(Sandbox {
            id: id.to_string(),
            pool: l.get(labels::POOL).cloned().unwrap_or_default(),
            state: parse_state(l.get(labels::STATE)?)?,
            ip: l.get(labels::IP)?.parse().ok()?,
            port: l
                .get(labels::PORT)
                .and_then(|p| p.parse().ok())
                .unwrap_or(spec::RUNTIME_PORT),
            token: l.get(labels::TOKEN)?.clone(),
            runtime_class: parse_runtime(l.get(labels::RUNTIME)?)?,
            template,
            created_ms: l
                .get(labels::CREATED)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// The template as stored in a label (serde view of the proto message).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct TemplateLabel {
    image: String,
    command: Vec<String>,
    env: HashMap<String, String>,
    cpu: String,
    memory: String,
    pids: u32,
    runtime_class: i32,
    release_policy: i32,
    labels: HashMap<String, String>,
    #[serde(default)]
    run_as_root: bool,
    #[serde(default)]
    checkpointable: bool,
}

impl From<&pb::SandboxTemplate> for TemplateLabel {
    fn from(t: &pb::SandboxTemplate) -> Self {
        let r = t.resources.clone().unwrap_or_default();
        TemplateLabel {
            image: t.image.clone(),
            command: t.command.clone(),
            env: t.env.clone(),
            cpu: r.cpu,
            memory: r.memory,
            pids: r.pids,
            runtime_class: t.runtime_class,
            release_policy: t.release_policy,
            labels: t.labels.clone(),
            run_as_root: t.run_as_root,
            checkpointable: t.checkpointable,
        }
    }
}

impl From<TemplateLabel> for pb::SandboxTemplate {
    fn from(t: TemplateLabel) -> Self {
        pb::SandboxTemplate {
            image: t.image,
            command: t.command,
            env: t.env,
            resources: Some(pb::Resources {
                cpu: t.cpu,
                memory: t.memory,
                pids: t.pids,
            }),
            runtime_class: t.runtime_class,
            release_policy: t.release_policy,
            labels: t.labels,
            run_as_root: t.run_as_root,
            checkpointable: t.checkpointable,
        }
    }
}

pub fn state_label(s: pb::SandboxState) -> &'static str {
    match s {
        pb::SandboxState::Warm => "warm",
        pb::SandboxState::Claimed => "claimed",
        pb::SandboxState::Paused => "paused",
        pb::SandboxState::Creating => "creating",
        pb::SandboxState::Releasing => "releasing",
        pb::SandboxState::Failed => "failed",
        pb::SandboxState::Unspecified => "unspecified",
    }
}

fn parse_state(s: &str) -> Option<pb::SandboxState> {
    Some(match s {
        "warm" => pb::SandboxState::Warm,
        "claimed" => pb::SandboxState::Claimed,
        "paused" => pb::SandboxState::Paused,
        "creating" => pb::SandboxState::Creating,
        "releasing" => pb::SandboxState::Releasing,
        "failed" => pb::SandboxState::Failed,
        _ => return None,
    })
}

pub fn runtime_label(r: pb::RuntimeClass) -> &'static str {
    match r {
        pb::RuntimeClass::Runsc => "runsc",
        _ => "runc",
    }
}

fn parse_runtime(s: &str) -> Option<pb::RuntimeClass> {
    match s {
        "runc" => Some(pb::RuntimeClass::Runc),
        "runsc" => Some(pb::RuntimeClass::Runsc),
        _ => None,
    }
}

/// A template checked and turned into what the create path needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTemplate {
    pub image: String,
    pub limits: Limits,
    pub runtime_class: pb::RuntimeClass,
    pub release_policy: pb::ReleasePolicy,
    pub env: Vec<(String, String)>,
    pub run_as_root: bool,
    pub checkpointable: bool,
}

/// Pure validation of a template (image existence is checked later).
pub fn validate_template(t: &pb::SandboxTemplate) -> Result<ValidTemplate> {
    if t.image.trim().is_empty() {
        return Err(AgentError::InvalidTemplate("image is required".into()));
    }
    let runtime_class = match pb::RuntimeClass::try_from(t.runtime_class) {
        Ok(pb::RuntimeClass::Unspecified) | Ok(pb::RuntimeClass::Runc) => pb::RuntimeClass::Runc,
        Ok(pb::RuntimeClass::Runsc) => pb::RuntimeClass::Runsc,
        Err(_) => {
            return Err(AgentError::InvalidTemplate(format!(
                "unknown runtime class {} (use RUNC or RUNSC)",
                t.runtime_class
            )));
        }
    };
    let release_policy = match pb::ReleasePolicy::try_from(t.release_policy) {
        Ok(pb::ReleasePolicy::Unspecified) | Ok(pb::ReleasePolicy::Delete) => {
            pb::ReleasePolicy::Delete
        }
        Ok(pb::ReleasePolicy::Recycle) => pb::ReleasePolicy::Recycle,
        Err(_) => {
            return Err(AgentError::InvalidTemplate(format!(
                "unknown release policy {}",
                t.release_policy
            )));
        }
    };
    let r = t.resources.clone().unwrap_or_default();
    let limits = Limits {
        cpu_millis: quantity::cpu_millis(&r.cpu)?,
        memory_bytes: quantity::memory_bytes(&r.memory)?,
        pids: r.pids,
    };
    let mut env: Vec<(String, String)> =
        t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.sort();
    for (k, _) in &env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(AgentError::InvalidTemplate(format!("bad env name {k:?}")));
        }
    }
    if t.checkpointable && runtime_class != pb::RuntimeClass::Runsc {
        return Err(AgentError::InvalidTemplate(
            "checkpointable sandboxes need runtime class RUNSC (runc checkpoint needs a CRIU that works on this kernel)".into(),
        ));
    }
    Ok(ValidTemplate {
        image: t.image.trim().to_string(),
        limits,
        runtime_class,
        release_policy,
        env,
        run_as_root: t.run_as_root,
        checkpointable: t.checkpointable,
    })
}

/// The requested sandbox id, or a fresh one.
fn new_id(id: Option<String>) -> Result<String> {
    match id.filter(|i| !i.is_empty()) {
        Some(i) if valid_id(&i) => Ok(i),
        Some(i) => Err(AgentError::InvalidTemplate(format!(
            "bad sandbox id {i:?}: use [A-Za-z0-9_-], at most 64"
        ))),
        None => Ok(format!(
            "sb-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..20]
        )),
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

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !id.starts_with('-')
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
    runsc_wrapper: PathBuf,
    /// runsc with `--network=none`: checkpointable sandboxes
    runsc_nonet: PathBuf,
    /// runtime tunnels of network-less sandboxes, by sandbox id
    tunnels: Mutex<HashMap<String, crate::tunnel::Tunnel>>,
    checkpoints: crate::checkpoint::Store,
    /// ids a create or release is working on: the sweep leaves them alone
    busy: Mutex<std::collections::HashSet<String>>,
}

/// Marks a sandbox id busy until dropped.
struct Busy<'a> {
    set: &'a Mutex<std::collections::HashSet<String>>,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
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
        if cfg.net.isolate {
            // the runtimes' trace exporter may reach a collector on the host
            let otel = spec::sandbox_otel_env(|k| std::env::var(k).ok(), cfg.net.gateway_ip());
            cfg.net
                .allow_host_ports
                .extend(spec::host_ports(&otel, cfg.net.gateway_ip()));
            cfg.net.ensure_isolation()?;
        }
        let (events, _) = broadcast::channel(1024);
        let agent = Arc::new(Agent {
            cfg,
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
        });
        agent.recover().await?;
        let me = Arc::clone(&agent);
        tokio::spawn(async move { me.watch_exits().await });
        let me = Arc::downgrade(&agent);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(a) = me.upgrade() else { return };
                a.recheck_tasks().await;
                if let Err(e) = a.sweep().await {
                    tracing::debug!(error = %e, "sweep failed");
                }
            }
        });
        Ok(agent)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Sandbox>> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(&self, id: &str) -> Busy<'_> {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        Busy {
            set: &self.busy,
            id: id.to_string(),
        }
    }

    /// Whether `id` is a sandbox, or one being created or released.
    fn owned(&self, id: &str) -> bool {
        self.lock().contains_key(id)
            || self
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(id)
    }

    /// Remove what no sandbox owns: containers, netns and snapshots left by a
    /// create or release that failed half-way (containerd restarting, say).
    /// Returns how many were removed.
    pub async fn sweep(&self) -> Result<usize> {
        let containers = self.ctr.list_containers().await?;
        let mut removed = 0;
        let mut in_use = std::collections::HashSet::new();
        let mut container_ids = std::collections::HashSet::new();
        for c in containers {
            container_ids.insert(c.id.clone());
            if Sandbox::from_labels(&c.id, &c.labels).is_none() || self.owned(&c.id) {
                in_use.insert(c.snapshot_key.clone());
                continue;
            }
            tracing::warn!(sandbox = %c.id, "sweeping a container no sandbox owns");
            self.cleanup(&c.id).await;
            removed += 1;
        }
        for id in self.cfg.net.list() {
            if !container_ids.contains(&id) && !self.owned(&id) {
                tracing::warn!(sandbox = %id, "sweeping a network namespace no sandbox owns");
                let net = self.cfg.net.clone();
                let _ = tokio::task::spawn_blocking(move || net.teardown(&id)).await;
                removed += 1;
            }
        }
        // image unpacks hold active snapshots of their own: not while one runs
        if let Ok(_images) = self.image_lock.try_lock() {
            for key in self.ctr.list_active_snapshots().await? {
                let owner = key.split('.').next().unwrap_or_default();
                if !in_use.contains(&key) && !self.owned(owner) {
                    tracing::warn!(snapshot = %key, "sweeping a snapshot no sandbox owns");
                    let _ = self.ctr.remove_snapshot(&key).await;
                    removed += 1;
                }
            }
        }
        Ok(removed)
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

    /// Make sure `name` exists in containerd, building builtin images.
    pub async fn ensure_image(&self, name: &str) -> Result<(String, String, Vec<String>)> {
        let resolved = image::builtin(name).unwrap_or(name).to_string();
        if let Some((chain, env)) = self.ctr.image_rootfs(&resolved).await? {
            return Ok((resolved, chain, env));
        }
        let Some(builtin) = image::builtin(name) else {
            let known = self.ctr.list_images().await.unwrap_or_default().join(", ");
            return Err(AgentError::UnknownImage(
                name.to_string(),
                format!("{known} (builtin: {}, {})", image::BUSYBOX, image::PYTHON),
            ));
        };
        let _g = self.image_lock.lock().await;
        if let Some((chain, env)) = self.ctr.image_rootfs(builtin).await? {
            return Ok((builtin.to_string(), chain, env));
        }
        let cache = self.cfg.image_cache.clone();
        let started = Instant::now();
        let name2 = builtin.to_string();
        let blobs = tokio::task::spawn_blocking(move || image::build_builtin(&name2, &cache))
            .await
            .map_err(|e| AgentError::Image(format!("image builder: {e}")))??;
        self.ctr.import(&blobs).await?;
        tracing::info!(
            image = builtin,
            ms = started.elapsed().as_millis() as u64,
            "image built and imported"
        );
        let (chain, env) =
            self.ctr.image_rootfs(builtin).await?.ok_or_else(|| {
                AgentError::Image(format!("{builtin} missing right after import"))
            })?;
        Ok((builtin.to_string(), chain, env))
    }

    /// Create and start a warm sandbox; it is ready when its runtime answers.
    #[tracing::instrument(skip_all, fields(pool = %pool))]
    pub async fn create(
        self: &Arc<Self>,
        pool: &str,
        template: pb::SandboxTemplate,
        id: Option<String>,
    ) -> Result<Sandbox> {
        let valid = validate_template(&template)?;
        let id = new_id(id)?;
        let _busy = self.busy(&id);
        let (image, chain, image_env) = self.ensure_image(&valid.image).await?;
        self.check_room(&id)?;
        let (ip, port) = if valid.checkpointable {
            (
                Ipv4Addr::LOCALHOST,
                self.open_tunnel(&id, 0, valid.run_as_root).await?,
            )
        } else {
            let net = self.cfg.net.clone();
            let id2 = id.clone();
            (
                tokio::task::spawn_blocking(move || net.setup(&id2))
                    .await
                    .map_err(|e| AgentError::Network(e.to_string()))??,
                spec::RUNTIME_PORT,
            )
        };
        let mut sb = Sandbox {
            id: id.clone(),
            pool: pool.to_string(),
            state: pb::SandboxState::Creating,
            ip,
            port,
            token: uuid::Uuid::new_v4().simple().to_string(),
            runtime_class: valid.runtime_class,
            template: template.clone(),
            created_ms: unix_ms(),
        };
        match self
            .start_container(&sb, &image, &chain, &image_env, &valid, None)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                self.cleanup(&id).await;
                return Err(e);
            }
        }
        sb.state = pb::SandboxState::Warm;
        if let Err(e) = self
            .ctr
            .set_labels(
                &id,
                [(labels::STATE.to_string(), "warm".to_string())].into(),
            )
            .await
        {
            self.cleanup(&id).await;
            return Err(e);
        }
        self.lock().insert(id.clone(), sb.clone());
        self.emit(&sb);
        Ok(sb)
    }

    /// Refuse a second sandbox `id` or one past the node's maximum.
    fn check_room(&self, id: &str) -> Result<()> {
        let g = self.lock();
        if g.contains_key(id) {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} already exists"
            )));
        }
        if g.len() as u32 >= self.cfg.max_sandboxes {
            return Err(AgentError::Exhausted(format!(
                "{} sandboxes (max {})",
                g.len(),
                self.cfg.max_sandboxes
            )));
        }
        Ok(())
    }

    /// Listen for sandbox `id`'s runtime on 127.0.0.1:`port` (0: any port).
    async fn open_tunnel(&self, id: &str, port: u16, as_root: bool) -> Result<u16> {
        let argv =
            self.runtime_exec_argv(id, as_root, &["--tunnel", &spec::RUNTIME_PORT.to_string()]);
        let t = crate::tunnel::Tunnel::open((Ipv4Addr::LOCALHOST, port).into(), argv)
            .await
            .map_err(|e| {
                AgentError::io(
                    format!("runtime tunnel of sandbox {id} on 127.0.0.1:{port}"),
                    e,
                )
            })?;
        let port = t.port;
        self.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), t);
        Ok(port)
    }

    /// `runsc exec` of the runtime binary with `args` in network-less sandbox `id`.
    fn runtime_exec_argv(&self, id: &str, as_root: bool, args: &[&str]) -> Vec<String> {
        let mut argv = vec![
            self.runsc_nonet.display().to_string(),
            "--root".into(),
            self.ctr.runtime_root(),
            "exec".into(),
        ];
        if !as_root {
            argv.extend([
                "--user".into(),
                format!("{}:{}", spec::SANDBOX_USER.0, spec::SANDBOX_USER.1),
            ]);
        }
        argv.extend([id.to_string(), spec::RUNTIME_PATH_IN_SANDBOX.into()]);
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// Ask the runtime in network-less sandbox `id` to let go of its TCP
    /// sockets (`quiesce`, before a checkpoint: gVisor cannot save sockets
    /// that something waits on) or to listen again (after a restore).
    async fn runtime_sockets(&self, id: &str, as_root: bool, quiesce: bool) -> Result<()> {
        let what = if quiesce {
            "--checkpoint-prepare"
        } else {
            "--checkpoint-resume"
        };
        let argv =
            self.runtime_exec_argv(id, as_root, &["--data-dir", spec::RUNTIME_DATA_DIR, what]);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        run_checked(
            cmd,
            &format!("{what} in sandbox {id}"),
            Duration::from_secs(20),
        )
        .await
    }

    /// Stop sandbox `id`'s tunnel and end its connections; whether it had one.
    async fn close_tunnel(&self, id: &str) -> bool {
        let t = self
            .tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        match t {
            Some(t) => {
                t.close().await;
                true
            }
            None => false,
        }
    }

    async fn start_container(
        &self,
        sb: &Sandbox,
        image: &str,
        chain: &str,
        image_env: &[String],
        valid: &ValidTemplate,
        restore: Option<&Path>,
    ) -> Result<()> {
        let mut env: Vec<(String, String)> = image_env
            .iter()
            .filter_map(|e| {
                e.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        env.extend(valid.env.iter().cloned());
        env.extend(spec::sandbox_otel_env(
            |k| std::env::var(k).ok(),
            self.cfg.net.gateway_ip(),
        ));
        let spec = SandboxSpec {
            id: sb.id.clone(),
            env,
            netns_path: if valid.checkpointable {
                String::new()
            } else {
                self.cfg.net.netns_path(&sb.id).display().to_string()
            },
            runtime_bin: self.cfg.runtime_bin.display().to_string(),
            limits: valid.limits.clone(),
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            access_token: sb.token.clone(),
            user: if valid.run_as_root {
                None
            } else {
                Some(spec::SANDBOX_USER)
            },
        }
        .to_json();
        let binary = match sb.runtime_class {
            pb::RuntimeClass::Runsc if valid.checkpointable => {
                self.runsc_nonet.display().to_string()
            }
            pb::RuntimeClass::Runsc => self.runsc_wrapper.display().to_string(),
            _ => String::new(),
        };
        let log = self
            .cfg
            .data_dir
            .join("logs")
            .join(format!("{}.log", sb.id));
        // A fresh snapshot key per incarnation (recycle re-creates the same id).
        let snapshot_key = format!(
            "{}.{}",
            sb.id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mounts = self
            .ctr
            .create_container(NewContainer {
                id: &sb.id,
                snapshot_key: &snapshot_key,
                image,
                parent_snapshot: chain,
                labels: sb.label_map()?,
                spec: &spec,
                runtime_binary: &binary,
            })
            .await?;
        let image_dir = match restore {
            Some(dir) => {
                // the restored kernel re-opens files by path: give it the
                // root file system it had at the checkpoint
                let upper = crate::containerd::upperdir(&mounts).ok_or_else(|| {
                    AgentError::Checkpoint(format!(
                        "sandbox {}'s rootfs has no overlay upper directory",
                        sb.id
                    ))
                })?;
                copy_tree(&dir.join("fs"), &upper).await?;
                Some(dir.join("image"))
            }
            None => None,
        };
        self.ctr
            .start_task(
                &sb.id,
                mounts,
                &log,
                image_dir.as_deref().map(|d| (binary.as_str(), d)),
            )
            .await?;
        if restore.is_some() {
            // it was checkpointed without sockets: listen again
            self.runtime_sockets(&sb.id, valid.run_as_root, false)
                .await?;
        }
        self.wait_ready(sb).await
    }

    /// Wait until sandbox `id`'s runtime answers its health check (after a
    /// resume, say).
    pub async fn runtime_health(&self, id: &str) -> Result<()> {
        let sb = self.get(id)?;
        self.wait_ready(&sb).await
    }

    /// Poll the runtime's gRPC health until it answers.
    async fn wait_ready(&self, sb: &Sandbox) -> Result<()> {
        let deadline = Instant::now() + self.cfg.ready_timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.runtime_client(sb).await {
                Ok(mut c) => match c.health(auth(sb, pb::HealthRequest {})).await {
                    Ok(_) => return Ok(()),
                    Err(s) => last = s.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            if let Ok(Some((TaskState::Stopped, _))) = self.ctr.task_state(&sb.id).await {
                let log = std::fs::read_to_string(
                    self.cfg
                        .data_dir
                        .join("logs")
                        .join(format!("{}.log", sb.id)),
                )
                .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(AgentError::Runtime {
                    id: sb.id.clone(),
                    message: format!("sandbox exited during start: {}", tail.join(" | ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(AgentError::Runtime {
            id: sb.id.clone(),
            message: format!(
                "runtime not ready after {:?}: {last}",
                self.cfg.ready_timeout
            ),
        })
    }

    /// A client for the sandbox's runtime, on a cached channel when there is one.
    pub async fn runtime_client(
        &self,
        sb: &Sandbox,
    ) -> Result<pb::runtime_client::RuntimeClient<tonic::transport::Channel>> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sb.id)
            .cloned();
        if let Some(ch) = cached {
            return Ok(pb::runtime_client::RuntimeClient::new(ch));
        }
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{}:{}", sb.ip, sb.port))
            .map_err(|e| AgentError::Runtime {
                id: sb.id.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        let ch = ep.connect().await.map_err(|e| AgentError::Runtime {
            id: sb.id.clone(),
            message: e.to_string(),
        })?;
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sb.id.clone(), ch.clone());
        Ok(pb::runtime_client::RuntimeClient::new(ch))
    }

    fn forget_channel(&self, id: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Start the claimed sandbox's entrypoint through its runtime.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn inject(
        &self,
        id: &str,
        mut process: pb::InjectRequest,
    ) -> Result<(pb::ProcessState, Duration)> {
        let sb = self.get(id)?;
        // No argv: the template's command is the default entrypoint.
        if process.argv.is_empty() {
            if sb.template.command.is_empty() {
                return Err(AgentError::InvalidTemplate(
                    "inject needs argv (the template has no default command)".into(),
                ));
            }
            process.argv = sb.template.command.clone();
            for (k, v) in &sb.template.env {
                process.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if sb.state == pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is paused"
            )));
        }
        let t0 = Instant::now();
        let mut c = self.runtime_client(&sb).await?;
        let st = c
            .inject(auth(&sb, process))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::InvalidArgument => {
                    AgentError::InvalidTemplate(s.message().to_string())
                }
                tonic::Code::AlreadyExists => {
                    AgentError::FailedPrecondition(s.message().to_string())
                }
                _ => {
                    self.forget_channel(id);
                    AgentError::Runtime {
                        id: id.to_string(),
                        message: s.to_string(),
                    }
                }
            })?;
        let took = t0.elapsed();
        // In memory now; the recovery label (a containerd metadata write with
        // fsync) follows off the claim's critical path. The scheduler's store
        // is the durable record of the claim.
        let sb = {
            let mut g = self.lock();
            let sb = g
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
            sb.state = pb::SandboxState::Claimed;
            sb.clone()
        };
        self.emit(&sb);
        let ctr = self.ctr.clone();
        let id2 = id.to_string();
        tokio::spawn(async move {
            if let Err(e) = ctr
                .set_labels(
                    &id2,
                    [(labels::STATE.to_string(), "claimed".to_string())].into(),
                )
                .await
            {
                tracing::warn!(sandbox = %id2, error = %e, "recording claimed state failed");
            }
        });
        Ok((st.into_inner(), took))
    }

    async fn set_state(&self, id: &str, state: pb::SandboxState) -> Result<Sandbox> {
        self.ctr
            .set_labels(
                id,
                [(labels::STATE.to_string(), state_label(state).to_string())].into(),
            )
            .await?;
        let sb = {
            let mut g = self.lock();
            let sb = g
                .get_mut(id)
                .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
            sb.state = state;
            sb.clone()
        };
        self.emit(&sb);
        Ok(sb)
    }

    pub async fn pause(&self, id: &str) -> Result<Sandbox> {
        let sb = self.get(id)?;
        if sb.state == pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is already paused"
            )));
        }
        self.ctr.pause(id).await?;
        self.set_state(id, pb::SandboxState::Paused).await
    }

    pub async fn resume(&self, id: &str) -> Result<Sandbox> {
        let sb = self.get(id)?;
        if sb.state != pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is not paused"
            )));
        }
        self.ctr.resume(id).await?;
        self.set_state(id, pb::SandboxState::Claimed).await
    }

    /// Mount a host directory or file (under a mount root) into a running runc
    /// sandbox. Mounts live in the sandbox's mount namespace, so they end with
    /// the container on release (recycle starts a fresh one).
    pub async fn mount(
        &self,
        id: &str,
        host_path: &str,
        mount_path: &str,
        read_only: bool,
    ) -> Result<Sandbox> {
        let (sb, pid, source) = self.mount_target(id, Some(host_path), mount_path).await?;
        let target = mount_path.to_string();
        tokio::task::spawn_blocking(move || {
            crate::mounts::mount_into(pid, &source.unwrap_or_default(), &target, read_only)
        })
        .await
        .map_err(|e| AgentError::Network(format!("mount worker: {e}")))??;
        tracing::info!(sandbox = %id, host_path, mount_path, read_only, "mounted");
        Ok(sb)
    }

    pub async fn unmount(&self, id: &str, mount_path: &str) -> Result<Sandbox> {
        let (sb, pid, _) = self.mount_target(id, None, mount_path).await?;
        let target = mount_path.to_string();
        tokio::task::spawn_blocking(move || crate::mounts::unmount_from(pid, &target))
            .await
            .map_err(|e| AgentError::Network(format!("unmount worker: {e}")))?
            .map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "{mount_path} is not a mount in sandbox {id}: {e}"
                ))
            })?;
        Ok(sb)
    }

    async fn mount_target(
        &self,
        id: &str,
        host_path: Option<&str>,
        mount_path: &str,
    ) -> Result<(Sandbox, u32, Option<PathBuf>)> {
        let sb = self.get(id)?;
        if sb.runtime_class == pb::RuntimeClass::Runsc {
            return Err(AgentError::Unsupported(
                "dynamic mounts need a runc sandbox (gVisor keeps its own file system)".into(),
            ));
        }
        if sb.state == pb::SandboxState::Paused {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is paused"
            )));
        }
        let source = match host_path {
            Some(h) if !h.starts_with('/') => {
                // a volume name: a directory under the first mount root
                if h.is_empty() || h.contains('/') || h == "." || h == ".." {
                    return Err(AgentError::InvalidTemplate(format!(
                        "bad volume name {h:?}"
                    )));
                }
                let root = self.cfg.mount_roots.first().ok_or_else(|| {
                    AgentError::FailedPrecondition("no mount root configured".into())
                })?;
                let path = root.join(h);
                if !path.is_dir() {
                    return Err(AgentError::NotFound(format!(
                        "volume {h} not found on node {} (no directory {})",
                        self.cfg.node_name,
                        path.display()
                    )));
                }
                Some(crate::mounts::validate(
                    &path.to_string_lossy(),
                    mount_path,
                    &self.cfg.mount_roots,
                )?)
            }
            Some(h) => Some(crate::mounts::validate(
                h,
                mount_path,
                &self.cfg.mount_roots,
            )?),
            None => {
                crate::mounts::validate_target(mount_path)?;
                None
            }
        };
        match self.ctr.task_state(id).await? {
            Some((TaskState::Running, pid)) => Ok((sb, pid, source)),
            _ => Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is not running"
            ))),
        }
    }

    /// Checkpoint sandbox `id`'s memory and file system into the node's
    /// checkpoint store. Only checkpointable (network-less runsc) sandboxes
    /// can; for others the answer names what this node lacks. The checkpoint
    /// stops the sandbox; with `leave_running` it is restored in place right
    /// after (same id, port and token).
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn checkpoint(
        self: &Arc<Self>,
        id: &str,
        leave_running: bool,
        owner: &str,
        name: &str,
    ) -> Result<pb::CheckpointInfo> {
        if owner.len() > 256 || name.len() > 256 {
            return Err(AgentError::InvalidTemplate(
                "checkpoint owner and name: at most 256 bytes".into(),
            ));
        }
        let sb = self.get(id)?;
        let prior = sb.state;
        checkpoint_allowed(&sb, id).await?;
        let _busy = self.busy(id);
        // its exit is ours: on_exit leaves a releasing sandbox alone
        if let Some(s) = self.lock().get_mut(id) {
            s.state = pb::SandboxState::Releasing;
        }
        self.forget_channel(id);
        self.close_tunnel(id).await;
        let checkpoint_id = format!("ck-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
        let dir = self.checkpoints.dir(&checkpoint_id)?;
        let t0 = Instant::now();
        let made = match self
            .runtime_sockets(id, sb.template.run_as_root, true)
            .await
        {
            Ok(()) => self.checkpoint_to(&sb, &dir).await,
            Err(e) => Err(e),
        };
        let meta = match made {
            Ok(size) => crate::checkpoint::Meta {
                checkpoint_id: checkpoint_id.clone(),
                sandbox_id: id.to_string(),
                pool: sb.pool.clone(),
                template: serde_json::to_string(&TemplateLabel::from(&sb.template))
                    .map_err(|e| AgentError::Checkpoint(e.to_string()))?,
                token: sb.token.clone(),
                image: sb.template.image.clone(),
                created_unix_ms: unix_ms(),
                size_bytes: size,
                owner: owner.to_string(),
                name: name.to_string(),
            },
            Err(e) => {
                self.checkpoint_failed(&sb, id, prior, &dir).await;
                return Err(e);
            }
        };
        self.checkpoints.write(&meta)?;
        tracing::info!(checkpoint = %checkpoint_id, size = meta.size_bytes, ms = t0.elapsed().as_millis() as u64, "checkpointed");
        self.ctr.destroy(id).await?;
        if leave_running {
            if let Err(e) = self.restore_into(&meta, id, sb.port, prior).await {
                self.lock().remove(id);
                self.emit_removed(id);
                return Err(AgentError::Checkpoint(format!(
                    "checkpoint {checkpoint_id} was made, but sandbox {id} did not come back from it: {e}"
                )));
            }
        } else {
            self.lock().remove(id);
            self.emit_removed(id);
        }
        Ok(checkpoint_info(&meta))
    }

    /// A checkpoint that failed: its directory goes; the sandbox runs on if
    /// runsc refused before stopping it, otherwise it is removed.
    async fn checkpoint_failed(&self, sb: &Sandbox, id: &str, prior: pb::SandboxState, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        // still running if runsc refused before stopping it
        if let Ok(Some((TaskState::Running, _))) = self.ctr.task_state(id).await
            && self
                .runtime_sockets(id, sb.template.run_as_root, false)
                .await
                .is_ok()
            && self
                .open_tunnel(id, sb.port, sb.template.run_as_root)
                .await
                .is_ok()
            && let Some(s) = self.lock().get_mut(id)
        {
            s.state = prior;
        } else {
            self.lock().remove(id);
            self.cleanup(id).await;
            self.emit_removed(id);
        }
    }

    /// `runsc checkpoint` into `dir/image`, then the rootfs changes into
    /// `dir/fs`; returns the bytes stored.
    async fn checkpoint_to(&self, sb: &Sandbox, dir: &Path) -> Result<u64> {
        let image = dir.join("image");
        std::fs::create_dir_all(&image)
            .map_err(|e| AgentError::io(image.display().to_string(), e))?;
        let mut cmd = tokio::process::Command::new(&self.runsc_nonet);
        cmd.args([
            "--root",
            &self.ctr.runtime_root(),
            "checkpoint",
            "--image-path",
        ])
        .arg(&image)
        .arg(&sb.id);
        run_checked(
            cmd,
            &format!("runsc checkpoint of {}", sb.id),
            Duration::from_secs(120),
        )
        .await?;
        // the sandbox stops once its state is saved
        if !self
            .ctr
            .wait_stopped(&sb.id, Duration::from_secs(10))
            .await?
        {
            return Err(AgentError::Checkpoint(format!(
                "sandbox {} still runs after its checkpoint",
                sb.id
            )));
        }
        let upper = self.ctr.rootfs_upperdir(&sb.id).await?;
        copy_tree(&upper, &dir.join("fs")).await?;
        let d = dir.to_path_buf();
        Ok(
            tokio::task::spawn_blocking(move || crate::checkpoint::disk_usage(&d))
                .await
                .unwrap_or(0),
        )
    }

    /// A new sandbox `id` from checkpoint `meta`, its runtime on `port` (0:
    /// any), left in `state`. The caller holds `id` busy.
    async fn restore_into(
        &self,
        meta: &crate::checkpoint::Meta,
        id: &str,
        port: u16,
        state: pb::SandboxState,
    ) -> Result<Sandbox> {
        let template: pb::SandboxTemplate = serde_json::from_str::<TemplateLabel>(&meta.template)
            .map_err(|e| {
                AgentError::Checkpoint(format!("{}: unreadable template: {e}", meta.checkpoint_id))
            })?
            .into();
        let valid = validate_template(&template)?;
        let (image, chain, image_env) = self.ensure_image(&valid.image).await?;
        let port = self.open_tunnel(id, port, valid.run_as_root).await?;
        let mut sb = Sandbox {
            id: id.to_string(),
            pool: meta.pool.clone(),
            state: pb::SandboxState::Creating,
            ip: Ipv4Addr::LOCALHOST,
            port,
            token: meta.token.clone(),
            runtime_class: valid.runtime_class,
            template,
            created_ms: unix_ms(),
        };
        let dir = self.checkpoints.dir(&meta.checkpoint_id)?;
        if let Err(e) = self
            .start_container(&sb, &image, &chain, &image_env, &valid, Some(&dir))
            .await
        {
            self.cleanup(id).await;
            return Err(e);
        }
        sb.state = state;
        if let Err(e) = self
            .ctr
            .set_labels(
                id,
                [(labels::STATE.to_string(), state_label(state).to_string())].into(),
            )
            .await
        {
            self.cleanup(id).await;
            return Err(e);
        }
        self.lock().insert(id.to_string(), sb.clone());
        self.emit(&sb);
        Ok(sb)
    }

    /// Restore checkpoint `checkpoint_id` into a new (claimed) sandbox.
    #[tracing::instrument(skip_all, fields(checkpoint = %checkpoint_id))]
    pub async fn restore(&self, checkpoint_id: &str, id: Option<String>) -> Result<Sandbox> {
        let meta = self.checkpoints.read(checkpoint_id)?;
        let id = new_id(id)?;
        let _busy = self.busy(&id);
        self.check_room(&id)?;
        self.restore_into(&meta, &id, 0, pb::SandboxState::Claimed)
            .await
    }

    /// Restore one checkpoint into `count` sandboxes at once (RL branching);
    /// all or none.
    #[tracing::instrument(skip_all, fields(checkpoint = %checkpoint_id, count))]
    pub async fn fork(self: &Arc<Self>, checkpoint_id: &str, count: u32) -> Result<Vec<Sandbox>> {
        if count == 0 || count > MAX_FORK {
            return Err(AgentError::InvalidTemplate(format!(
                "fork count {count}: use 1 to {MAX_FORK}"
            )));
        }
        self.checkpoints.read(checkpoint_id)?;
        let results =
            futures_util::future::join_all((0..count).map(|_| self.restore(checkpoint_id, None)))
                .await;
        let mut made = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(sb) => made.push(sb),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for sb in &made {
                let _ = self.release(&sb.id, pb::ReleasePolicy::Delete).await;
            }
            return Err(e);
        }
        Ok(made)
    }

    /// Host ports of the open runtime tunnels (network-less sandboxes).
    pub fn tunnel_ports(&self) -> Vec<u16> {
        self.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|t| t.port)
            .collect()
    }

    pub fn list_checkpoints(&self) -> Vec<pb::CheckpointInfo> {
        self.checkpoints
            .list()
            .iter()
            .map(checkpoint_info)
            .collect()
    }

    pub fn delete_checkpoint(&self, checkpoint_id: &str) -> Result<()> {
        self.checkpoints.delete(checkpoint_id)
    }

    /// Release: delete, or recycle (fresh rootfs and runtime, same network) back to warm.
    #[tracing::instrument(skip_all, fields(sandbox = %id))]
    pub async fn release(
        self: &Arc<Self>,
        id: &str,
        policy: pb::ReleasePolicy,
    ) -> Result<Option<Sandbox>> {
        let sb = self.get(id)?;
        let _busy = self.busy(id);
        let policy = match policy {
            pb::ReleasePolicy::Unspecified => validate_template(&sb.template)
                .map(|v| v.release_policy)
                .unwrap_or(pb::ReleasePolicy::Delete),
            p => p,
        };
        if policy == pb::ReleasePolicy::Recycle {
            let fresh = Sandbox {
                token: uuid::Uuid::new_v4().simple().to_string(),
                state: pb::SandboxState::Warm,
                ..sb
            };
            return self.restart_as(fresh).await.map(Some);
        }
        {
            let mut g = self.lock();
            if let Some(s) = g.get_mut(id) {
                s.state = pb::SandboxState::Releasing;
            }
        }
        let res = self.destroy_all(id).await;
        self.lock().remove(id);
        self.emit_removed(id);
        res.map(|_| None)
    }

    /// In-place image upgrade: restart sandbox `id` on `image`, keeping its
    /// id, address, token and state (its processes start over). The caller
    /// holds nothing busy.
    #[tracing::instrument(skip_all, fields(sandbox = %id, image))]
    pub async fn upgrade(&self, id: &str, image: &str) -> Result<Sandbox> {
        let sb = self.get(id)?;
        match sb.state {
            pb::SandboxState::Warm | pb::SandboxState::Claimed => {}
            s => {
                return Err(AgentError::FailedPrecondition(format!(
                    "sandbox {id} is {}: only a running sandbox can change its image",
                    state_label(s)
                )));
            }
        }
        let image = image.trim();
        if image.is_empty() {
            return Err(AgentError::InvalidTemplate("the new image is empty".into()));
        }
        // an unknown image is refused before the sandbox is touched
        self.ensure_image(image).await?;
        let _busy = self.busy(id);
        let template = pb::SandboxTemplate {
            image: image.to_string(),
            ..sb.template.clone()
        };
        self.restart_as(Sandbox { template, ..sb }).await
    }

    /// Start `sb` afresh (same id, netns or tunnel): its container is
    /// replaced by one from `sb.template`, and it ends in `sb.state`. A
    /// sandbox that fails to come back is removed.
    async fn restart_as(&self, sb: Sandbox) -> Result<Sandbox> {
        let id = sb.id.clone();
        let valid = validate_template(&sb.template)?;
        if let Some(s) = self.lock().get_mut(&id) {
            s.state = pb::SandboxState::Releasing;
        }
        self.forget_channel(&id);
        let started = async {
            self.ctr.destroy(&id).await?;
            let (image, chain, env) = self.ensure_image(&valid.image).await?;
            let creating = Sandbox {
                state: pb::SandboxState::Creating,
                ..sb.clone()
            };
            self.start_container(&creating, &image, &chain, &env, &valid, None)
                .await?;
            self.ctr
                .set_labels(
                    &id,
                    [(labels::STATE.to_string(), state_label(sb.state).to_string())].into(),
                )
                .await
        };
        if let Err(e) = started.await {
            self.lock().remove(&id);
            self.cleanup(&id).await;
            self.emit_removed(&id);
            return Err(e);
        }
        self.lock().insert(id, sb.clone());
        self.emit(&sb);
        Ok(sb)
    }

    async fn destroy_all(&self, id: &str) -> Result<()> {
        self.forget_channel(id);
        if self.close_tunnel(id).await {
            // a network-less sandbox: no netns, no address
            return self.ctr.destroy(id).await;
        }
        self.ctr.destroy(id).await?;
        let net = self.cfg.net.clone();
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || net.teardown(&id2))
            .await
            .map_err(|e| AgentError::Network(e.to_string()))?
    }

    /// Best-effort removal of everything a sandbox id may own.
    async fn cleanup(&self, id: &str) {
        if let Err(e) = self.destroy_all(id).await {
            tracing::warn!(sandbox = id, error = %e, "cleanup incomplete");
        }
    }

    /// A sandbox whose init (the runtime) exits on its own — killed, OOM,
    /// crashed — is marked FAILED and reported, so no one is handed a dead
    /// sandbox. Exits the agent caused itself (release) find no live entry.
    async fn watch_exits(self: Arc<Self>) {
        let mut events = self.ctr.task_exits();
        while let Some(ev) = events.recv().await {
            match ev {
                TaskEvent::Exit { id, pid, status } => self.on_exit(&id, Some(pid), status).await,
                TaskEvent::Resubscribed => {
                    // containerd restarted: exits in the gap were not seen,
                    // and creates or releases it broke left debris
                    self.recheck_tasks().await;
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "sweep after containerd restart failed");
                    }
                }
            }
        }
    }

    /// Mark failed every sandbox whose task is gone or stopped (exits not
    /// seen as events).
    async fn recheck_tasks(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            if let Ok(None | Some((TaskState::Stopped, _))) = self.ctr.task_state(&id).await {
                self.on_exit(&id, None, 0).await;
            }
        }
    }

    /// A sandbox's init exited (`pid` from the event, if any): mark it failed.
    async fn on_exit(&self, id: &str, pid: Option<u32>, status: u32) {
        // an exit of an earlier incarnation (recycle) while a new one runs
        if let Some(pid) = pid
            && let Ok(Some((TaskState::Running | TaskState::Paused, current))) =
                self.ctr.task_state(id).await
            && current != pid
        {
            return;
        }
        let failed = {
            let mut g = self.lock();
            match g.get_mut(id) {
                Some(sb)
                    if !matches!(
                        sb.state,
                        pb::SandboxState::Releasing
                            | pb::SandboxState::Creating
                            | pb::SandboxState::Failed
                    ) =>
                {
                    sb.state = pb::SandboxState::Failed;
                    Some(sb.clone())
                }
                _ => None,
            }
        };
        if let Some(sb) = failed {
            tracing::warn!(sandbox = %id, ?pid, status, "sandbox init exited; marked failed");
            self.forget_channel(id);
            let _ = self
                .ctr
                .set_labels(
                    id,
                    [(labels::STATE.to_string(), "failed".to_string())].into(),
                )
                .await;
            self.emit(&sb);
        }
    }

    /// Rebuild state from containerd: running sandboxes are adopted, dead
    /// ones and orphaned netns/snapshots are cleaned up.
    pub async fn recover(&self) -> Result<()> {
        let containers = self.ctr.list_containers().await?;
        let mut adopted = 0;
        let mut cleaned = 0;
        for c in containers {
            let Some(mut sb) = Sandbox::from_labels(&c.id, &c.labels) else {
                continue;
            };
            let alive = matches!(
                self.ctr.task_state(&c.id).await?,
                Some((TaskState::Running | TaskState::Paused, _))
            );
            let netns_ok = self.cfg.net.netns_path(&c.id).exists();
            let reachable = if sb.template.checkpointable && alive {
                // a new tunnel, on the same port when it is free
                match self
                    .open_tunnel(&c.id, sb.port, sb.template.run_as_root)
                    .await
                {
                    Ok(p) if p == sb.port => true,
                    Ok(p) => {
                        sb.port = p;
                        self.ctr
                            .set_labels(&c.id, [(labels::PORT.to_string(), p.to_string())].into())
                            .await
                            .is_ok()
                    }
                    Err(_) => false,
                }
            } else {
                netns_ok
            };
            if alive
                && reachable
                && matches!(
                    sb.state,
                    pb::SandboxState::Warm | pb::SandboxState::Claimed | pb::SandboxState::Paused
                )
            {
                if let Ok(Some((TaskState::Paused, _))) = self.ctr.task_state(&c.id).await {
                    sb.state = pb::SandboxState::Paused;
                }
                if sb.state == pb::SandboxState::Warm {
                    // The claimed label is written after the inject (off the
                    // claim's critical path): a crash in between leaves a used
                    // sandbox labelled warm. Its runtime knows; never hand it out again.
                    let health = async {
                        let mut c = self.runtime_client(&sb).await?;
                        c.health(auth(&sb, pb::HealthRequest {}))
                            .await
                            .map_err(|s| AgentError::Runtime {
                                id: sb.id.clone(),
                                message: s.to_string(),
                            })
                    };
                    match tokio::time::timeout(Duration::from_secs(10), health).await {
                        Ok(Ok(h)) if !h.get_ref().used => {}
                        Ok(Ok(_)) => {
                            tracing::warn!(sandbox = %c.id, "sandbox labelled warm was used (crash before its claimed label): not warm");
                            sb.state = pb::SandboxState::Claimed;
                            let _ = self
                                .ctr
                                .set_labels(
                                    &c.id,
                                    [(labels::STATE.to_string(), "claimed".to_string())].into(),
                                )
                                .await;
                        }
                        _ => {
                            tracing::warn!(sandbox = %c.id, "warm sandbox's runtime does not answer: marked failed");
                            sb.state = pb::SandboxState::Failed;
                        }
                    }
                }
                self.lock().insert(c.id.clone(), sb);
                adopted += 1;
            } else {
                self.cleanup(&c.id).await;
                cleaned += 1;
            }
        }
        // orphaned netns and snapshots (a crash between netns setup or
        // snapshot prepare and container create, an interrupted image unpack)
        cleaned += self.sweep().await?;
        tracing::info!(adopted, cleaned, "recovered node state from containerd");
        Ok(())
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

/// Most sandboxes one fork makes.
pub const MAX_FORK: u32 = 64;

fn checkpoint_info(m: &crate::checkpoint::Meta) -> pb::CheckpointInfo {
    pb::CheckpointInfo {
        checkpoint_id: m.checkpoint_id.clone(),
        sandbox_id: m.sandbox_id.clone(),
        size_bytes: m.size_bytes,
        created_unix_ms: m.created_unix_ms,
        runtime_class: pb::RuntimeClass::Runsc as i32,
        pool: m.pool.clone(),
        image: m.image.clone(),
        owner: m.owner.clone(),
        name: m.name.clone(),
    }
}

/// Whether CRIU can work here (`criu check`), answered once per process.
async fn criu_check() -> std::result::Result<(), String> {
    static RESULT: tokio::sync::OnceCell<std::result::Result<(), String>> =
        tokio::sync::OnceCell::const_new();
    RESULT
        .get_or_init(|| async {
            match tokio::process::Command::new("criu")
                .arg("check")
                .output()
                .await
            {
                Err(e) => Err(format!("criu is not installed ({e})")),
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    let first = err.lines().next().unwrap_or("no output").trim().to_string();
                    Err(format!("`criu check` fails on this kernel: {first}"))
                }
            }
        })
        .await
        .clone()
}

/// Whether sandbox `id` can be checkpointed now: a checkpointable template
/// (the answer names what this node lacks otherwise) in a running state.
async fn checkpoint_allowed(sb: &Sandbox, id: &str) -> Result<()> {
    let prior = sb.state;
    if !sb.template.checkpointable {
        let reason = match sb.runtime_class {
            pb::RuntimeClass::Runsc => "this runsc sandbox uses gVisor host networking inside its netns (this runsc cannot attach its netstack to a veth on this kernel), and gVisor cannot checkpoint host networking (google/gvisor#6243); create it from a checkpointable template (runsc without a network)".to_string(),
            _ => match criu_check().await {
                Err(why) => format!("runc checkpoint needs CRIU, and {why}"),
                Ok(()) => "runc checkpoint through CRIU is not implemented yet (CRIU works on this node); use a checkpointable runsc template".to_string(),
            },
        };
        return Err(AgentError::Unsupported(format!(
            "checkpoint of sandbox {id} (unsupported on this node: {reason})"
        )));
    }
    match prior {
        pb::SandboxState::Warm | pb::SandboxState::Claimed => {}
        pb::SandboxState::Paused => {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is paused: resume it before a checkpoint"
            )));
        }
        s => {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} is {}: only a running sandbox can be checkpointed",
                state_label(s)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> pb::SandboxTemplate {
        pb::SandboxTemplate {
            image: "busybox".into(),
            command: vec![],
            env: [("A".to_string(), "1".to_string())].into(),
            resources: Some(pb::Resources {
                cpu: "500m".into(),
                memory: "256Mi".into(),
                pids: 64,
            }),
            runtime_class: pb::RuntimeClass::Runsc as i32,
            release_policy: pb::ReleasePolicy::Recycle as i32,
            labels: HashMap::new(),
            run_as_root: false,
            checkpointable: false,
        }
    }

    #[test]
    fn validates_templates() {
        let v = validate_template(&template()).unwrap();
        assert_eq!(
            v.limits,
            Limits {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                pids: 64
            }
        );
        assert_eq!(
            (v.runtime_class, v.release_policy),
            (pb::RuntimeClass::Runsc, pb::ReleasePolicy::Recycle)
        );
        let mut t = template();
        t.runtime_class = 42;
        assert!(
            matches!(validate_template(&t), Err(AgentError::InvalidTemplate(m)) if m.contains("runtime class"))
        );
        let mut t = template();
        t.resources = Some(pb::Resources {
            cpu: "fast".into(),
            ..Default::default()
        });
        assert!(
            matches!(validate_template(&t), Err(AgentError::InvalidTemplate(m)) if m.contains("cpu"))
        );
        let mut t = template();
        t.image = " ".into();
        assert!(validate_template(&t).is_err());
        let mut t = template();
        t.env.insert("A=B".into(), "x".into());
        assert!(validate_template(&t).is_err());
        let mut t = template();
        t.runtime_class = 0;
        t.release_policy = 0;
        let v = validate_template(&t).unwrap();
        assert_eq!(
            (v.runtime_class, v.release_policy),
            (pb::RuntimeClass::Runc, pb::ReleasePolicy::Delete)
        );
        // checkpointable needs runsc
        t.checkpointable = true;
        assert!(
            matches!(validate_template(&t), Err(AgentError::InvalidTemplate(m)) if m.contains("RUNSC"))
        );
        t.runtime_class = pb::RuntimeClass::Runsc as i32;
        assert!(validate_template(&t).unwrap().checkpointable);
    }

    #[test]
    fn labels_round_trip_for_recovery() {
        let sb = Sandbox {
            id: "sb-1".into(),
            pool: "p".into(),
            state: pb::SandboxState::Claimed,
            ip: Ipv4Addr::LOCALHOST,
            port: 40123,
            token: "t".into(),
            runtime_class: pb::RuntimeClass::Runsc,
            template: pb::SandboxTemplate {
                checkpointable: true,
                ..template()
            },
            created_ms: 42,
        };
        let l = sb.label_map().unwrap();
        assert!(
            l.values().all(|v| v.len() < 4096),
            "containerd label size limit"
        );
        let back = Sandbox::from_labels("sb-1", &l).unwrap();
        assert_eq!(
            (
                back.pool.as_str(),
                back.state,
                back.ip,
                back.port,
                back.created_ms
            ),
            ("p", pb::SandboxState::Claimed, sb.ip, 40123, 42)
        );
        assert_eq!(back.template, sb.template);
        assert!(
            Sandbox::from_labels("x", &HashMap::new()).is_none(),
            "unmanaged containers are ignored"
        );
    }

    #[test]
    fn ids() {
        assert!(valid_id("sb-abc_1"));
        assert!(!valid_id(""));
        assert!(!valid_id("-x"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
