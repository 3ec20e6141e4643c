//! Test support for tests and benchmarks that need a real node: a private
//! containerd and an agent in a temp dir, the prerequisites gate, and a
//! residue check. Not used by the product.

// Test support, used only by tests and benchmarks: a failed setup step
// should panic the test that asked for it.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Command, sync::Arc, time::Duration};

use sandpool_proto::v1 as pb;

pub mod cri;
pub mod registry;

use crate::{
    agent::{Agent, AgentConfig},
    containerd::Ctr,
    daemon::ContainerdDaemon,
    net::NetConfig,
};

pub fn runtime_bin() -> Option<PathBuf> {
    std::env::var_os("SANDPOOL_RUNTIME_STATIC_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

pub fn prerequisites() -> Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    for bin in ["containerd", "runc", "runsc", "busybox"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Err(format!("{bin} not installed"));
        }
    }
    if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        return Err("CNI plugins not installed".into());
    }
    runtime_bin()
        .ok_or_else(|| "SANDPOOL_RUNTIME_STATIC_BIN not set to a static sandpool-runtime".into())
}

pub fn gate() -> Option<PathBuf> {
    match prerequisites() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("SANDPOOL_REQUIRE_CONTAINERD").as_deref() == Ok("1") => {
            panic!("containerd tests required but cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED (set SANDPOOL_REQUIRE_CONTAINERD=1 to require): {why}");
            None
        }
    }
}

/// A busybox template for tests: `runtime`, 500m CPU, 256Mi, 256 pids,
/// `TEMPLATE_VAR=from-template`, deleted on release.
pub fn template(runtime: pb::RuntimeClass) -> pb::SandboxTemplate {
    pb::SandboxTemplate {
        image: "busybox".into(),
        command: vec![],
        env: [("TEMPLATE_VAR".to_string(), "from-template".to_string())].into(),
        resources: Some(pb::Resources {
            cpu: "500m".into(),
            memory: "256Mi".into(),
            pids: 256,
        }),
        runtime_class: runtime as i32,
        release_policy: pb::ReleasePolicy::Delete as i32,
        labels: Default::default(),
        run_as_root: false,
        checkpointable: false,
        egress: None,
    }
}

/// A process that runs `script` with `sh -c` and the extra `env`.
pub fn shell_process(script: &str, env: &[(&str, &str)]) -> pb::InjectRequest {
    pb::InjectRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

pub struct TestNode {
    dir: tempfile::TempDir,
    daemon: Option<ContainerdDaemon>,
    agent: Option<Arc<Agent>>,
    runtime: PathBuf,
    bridge: String,
    subnet: String,
    /// Applied to the agent's configuration at every boot.
    configure: fn(&mut AgentConfig),
}

impl TestNode {
    /// A private containerd + agent in a temp dir, bridge `sptest{n}`, subnet `10.213.{n}.0/24`.
    pub async fn start(runtime: PathBuf, n: u8) -> TestNode {
        Self::start_configured(runtime, n, |_| {}).await
    }

    /// [`TestNode::start`] with `configure` applied to the agent's
    /// configuration (at this boot and every later one).
    pub async fn start_configured(
        runtime: PathBuf,
        n: u8,
        configure: fn(&mut AgentConfig),
    ) -> TestNode {
        let dir = tempfile::Builder::new()
            .prefix("spna")
            .tempdir_in("/tmp")
            .unwrap();
        let mut node = TestNode {
            dir,
            daemon: None,
            agent: None,
            runtime,
            bridge: format!("sptest{n}"),
            subnet: format!("10.213.{n}.0/24"),
            configure,
        };
        node.boot().await;
        node
    }

    /// (Re)start containerd and the agent on the same state dir.
    pub async fn boot(&mut self) {
        let d = ContainerdDaemon::start(&self.dir.path().join("containerd")).unwrap();
        let ctr = Ctr::connect(&d.socket, "sandpool-test", Duration::from_secs(30))
            .await
            .unwrap();
        let mut cfg = AgentConfig::new(self.dir.path().join("agent"), self.runtime.clone());
        cfg.net = NetConfig::new(&cfg.data_dir, &self.bridge, &self.subnet);
        cfg.node_name = "test-node".into();
        // Built images are cached across test runs (debootstrap takes minutes).
        cfg.image_cache =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sandpool-image-cache");
        (self.configure)(&mut cfg);
        self.daemon = Some(d);
        self.agent = Some(Agent::start(cfg, ctr).await.unwrap());
    }

    /// Stop the agent and its containerd (sandboxes keep running in their shims).
    pub fn stop(&mut self) {
        self.agent = None;
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
    }

    /// The private containerd's root directory (its snapshotters live here).
    pub fn containerd_root(&self) -> PathBuf {
        self.dir.path().join("containerd").join("root")
    }

    pub fn agent(&self) -> &Arc<Agent> {
        self.agent.as_ref().unwrap()
    }

    /// Panics unless no sandbox, container, snapshot, netns, IP or veth is left.
    pub async fn assert_no_residue(&self) {
        let a = self.agent();
        assert!(a.list("").is_empty(), "agent still lists sandboxes");
        let containers = a.ctr().list_containers().await.unwrap();
        assert!(
            containers.is_empty(),
            "stray containers: {:?}",
            containers.iter().map(|c| &c.id).collect::<Vec<_>>()
        );
        let snaps = a.ctr().list_active_snapshots().await.unwrap();
        assert!(snaps.is_empty(), "stray snapshots: {snaps:?}");
        assert!(
            a.cfg.net.list().is_empty(),
            "stray netns: {:?}",
            a.cfg.net.list()
        );
        assert!(
            a.cfg.net.allocated_ips().is_empty(),
            "leaked IPs: {:?}",
            a.cfg.net.allocated_ips()
        );
        let brif = std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|r| r.count())
            .unwrap_or(0);
        assert_eq!(brif, 0, "veths still attached to {}", self.bridge);
        let logs: Vec<_> = std::fs::read_dir(a.cfg.data_dir.join("logs"))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(logs.is_empty(), "sandbox logs left behind: {logs:?}");
        assert!(
            a.tunnel_ports().is_empty(),
            "runtime tunnels still listen: {:?}",
            a.tunnel_ports()
        );
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            // best effort: never leave sandboxes behind a failed test
            let ids: Vec<String> = a.list("").into_iter().map(|s| s.sandbox_id).collect();
            std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        for id in ids {
                            let _ = a.release(&id, pb::ReleasePolicy::Delete).await;
                        }
                    })
                });
            });
        }
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        NetConfig::new(self.dir.path(), &self.bridge, &self.subnet).remove_isolation();
    }
}
