//! A private containerd for the standalone mode: root, state and socket under
//! the agent's data dir, CRI disabled; stopped when the agent stops. Tasks
//! survive (their shims outlive containerd) and are found again on restart.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::error::{AgentError, Result};

pub struct ContainerdDaemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

pub fn config_toml(dir: &Path) -> String {
    format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        sock = dir.join("containerd.sock").display(),
    )
}

impl ContainerdDaemon {
    /// Start `containerd` with private paths under `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir.display().to_string(), e))?;
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config_toml(dir)).map_err(|e| AgentError::io(cfg.display().to_string(), e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .map_err(|e| AgentError::io("containerd.log", e))?;
        let log2 = log.try_clone().map_err(|e| AgentError::io("containerd.log", e))?;
        let socket = dir.join("containerd.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| AgentError::Connect {
                path: socket.display().to_string(),
                message: format!("starting containerd (apt-get install containerd runc): {e}"),
            })?;
        tracing::info!(pid = child.id(), socket = %socket.display(), "started private containerd");
        Ok(ContainerdDaemon { child: Some(child), socket, dir: dir.to_path_buf() })
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                tracing::info!("private containerd stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ContainerdDaemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
