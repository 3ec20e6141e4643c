//! A private containerd for the standalone mode: root, state and socket under
//! the agent's data dir, CRI disabled; restarted if it dies, stopped when the
//! agent stops. Tasks survive (their shims outlive containerd) and are found
//! again on restart.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;

use crate::{
    error::{AgentError, Result, Step},
    retry::Retry,
};

pub struct ContainerdDaemon {
    child: Arc<Mutex<Option<Child>>>,
    stopping: Arc<AtomicBool>,
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

fn spawn(dir: &Path) -> Result<Child> {
    let cfg = dir.join("config.toml");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .map_err(|e| AgentError::io("containerd.log", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| AgentError::io("containerd.log", e))?;
    let socket = dir.join("containerd.sock");
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    // containerd goes when its owner does (the spawning thread is the
    // supervisor, which lives as long as the process): a restarted agent must
    // not meet a stale containerd holding the same root.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let path = socket.display().to_string();
        AgentError::failed(
            Step::Connect { path },
            "starting containerd (apt-get install containerd runc)",
            e,
        )
    })?;
    tracing::info!(pid = child.id(), socket = %socket.display(), "started private containerd");
    Ok(child)
}

impl ContainerdDaemon {
    /// Start `containerd` with private paths under `dir`, and keep it running:
    /// if it dies it is started again (its tasks' shims live on and are
    /// reconnected; clients reconnect by themselves).
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir.display().to_string(), e))?;
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config_toml(dir))
            .map_err(|e| AgentError::io(cfg.display().to_string(), e))?;
        let child = Arc::new(Mutex::new(None));
        let stopping = Arc::new(AtomicBool::new(false));
        let (c, stop, d) = (Arc::clone(&child), Arc::clone(&stopping), dir.to_path_buf());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("containerd-supervisor".into())
            .spawn(move || match spawn(&d) {
                Ok(first) => {
                    *c.lock() = Some(first);
                    let _ = tx.send(Ok(()));
                    supervise(&c, &stop, &d);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| AgentError::io("containerd supervisor thread", e))?;
        rx.recv().map_err(|e| {
            let path = dir.display().to_string();
            AgentError::failed(Step::Connect { path }, "containerd supervisor died", e)
        })??;
        Ok(ContainerdDaemon {
            child,
            stopping,
            socket: dir.join("containerd.sock"),
            dir: dir.to_path_buf(),
        })
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        // the supervisor checks the flag under the lock before it restarts
        self.stopping.store(true, Ordering::SeqCst);
        let Some(mut child) = self.child.lock().take() else {
            return;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return; // already gone (and reaped: its pid may be someone else's now)
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
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

/// Restart containerd whenever it exits, until stopped; backs off when it
/// keeps dying.
fn supervise(child: &Mutex<Option<Child>>, stopping: &AtomicBool, dir: &Path) {
    let mut retry = Retry::up_to(Duration::from_secs(5));
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut g = child.lock();
        let Some(c) = g.as_mut() else { return };
        let Ok(Some(status)) = c.try_wait() else {
            retry.reset();
            continue;
        };
        tracing::warn!(%status, "private containerd exited; restarting it");
        drop(g);
        std::thread::sleep(retry.pause());
        let mut g = child.lock();
        if stopping.load(Ordering::SeqCst) || g.is_none() {
            return;
        }
        match spawn(dir) {
            Ok(new) => *g = Some(new),
            Err(e) => tracing::error!(error = %e, "restarting containerd failed"),
        }
    }
}

impl Drop for ContainerdDaemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
