//! Process injection: the sandbox's entrypoint.
//!
//! A warm sandbox runs only the runtime. When it is claimed, the node agent
//! injects the user's entrypoint (argv, env, cwd, uid/gid) through
//! `Runtime.Inject`; the runtime spawns it in its own process group, with the
//! runtime's stdout/stderr (so it shows up in the container log), and tracks
//! its state until it exits.

use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use crate::error::{Result, RuntimeError};

#[derive(Debug, Clone, Default)]
pub struct InjectSpec {
    pub argv: Vec<String>,
    pub env: HashMap<String, String>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub replace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    NotStarted,
    Running,
    Exited,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntrypointState {
    pub phase: Phase,
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub spawn_us: u64,
    pub argv: Vec<String>,
    generation: u64,
}

#[derive(Debug)]
pub struct Entrypoint {
    state: Mutex<EntrypointState>,
    changed: watch::Sender<u64>,
}

impl Default for Entrypoint {
    fn default() -> Self {
        Entrypoint {
            state: Mutex::new(EntrypointState::default()),
            changed: watch::channel(0).0,
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Entrypoint {
    fn lock(&self) -> MutexGuard<'_, EntrypointState> {
        self.state.lock()
    }

    pub fn status(&self) -> EntrypointState {
        self.lock().clone()
    }

    /// Start the entrypoint. Fails with `ALREADY_EXISTS` while one runs,
    /// unless `replace` is set, in which case the old one is killed first.
    pub async fn inject(self: &Arc<Self>, spec: InjectSpec) -> Result<EntrypointState> {
        let t0 = Instant::now();
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(RuntimeError::InvalidRequest(
                "entrypoint argv must not be empty".into(),
            ));
        }
        if let Some(cwd) = &spec.cwd
            && !std::path::Path::new(cwd).is_dir()
        {
            return Err(RuntimeError::InvalidRequest(format!(
                "working directory {cwd} does not exist"
            )));
        }
        let running = { self.lock().clone() };
        if running.phase == Phase::Running {
            if !spec.replace {
                return Err(RuntimeError::AlreadyExists(format!(
                    "entrypoint (pid {})",
                    running.pid
                )));
            }
            self.kill_and_wait(running.generation, Duration::from_secs(10))
                .await?;
        }

        let mut cmd = tokio::process::Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..])
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        if let Some(g) = spec.gid {
            cmd.gid(g);
        }
        if let Some(u) = spec.uid {
            cmd.uid(u);
        }
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                RuntimeError::InvalidRequest(format!("executable not found: {}", spec.argv[0]))
            }
            std::io::ErrorKind::PermissionDenied => {
                RuntimeError::PermissionDenied(spec.argv[0].clone())
            }
            _ => RuntimeError::Io {
                context: format!("spawning {}", spec.argv[0]),
                source: e,
            },
        })?;
        let spawn_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        let pid = child.id().unwrap_or(0);
        let snapshot = {
            let mut s = self.lock();
            let generation = s.generation + 1;
            *s = EntrypointState {
                phase: Phase::Running,
                pid,
                exit_code: None,
                started_unix_ms: unix_ms(),
                finished_unix_ms: 0,
                spawn_us,
                argv: spec.argv.clone(),
                generation,
            };
            s.clone()
        };
        self.changed.send_replace(snapshot.generation);
        tracing::info!(pid, argv = ?spec.argv, spawn_us, "entrypoint started");
        let me = Arc::clone(self);
        let generation = snapshot.generation;
        tokio::spawn(async move {
            let status = child.wait().await;
            let code = match &status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                Err(_) => -1,
            };
            {
                let mut s = me.lock();
                if s.generation == generation {
                    s.phase = Phase::Exited;
                    s.exit_code = Some(code);
                    s.finished_unix_ms = unix_ms();
                }
            }
            me.changed.send_replace(generation);
            tracing::info!(pid, code, "entrypoint exited");
        });
        Ok(snapshot)
    }

    async fn kill_and_wait(&self, generation: u64, within: Duration) -> Result<()> {
        let pid = self.lock().pid;
        if let Ok(p) = i32::try_from(pid) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(p), Signal::SIGKILL);
        }
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                {
                    let s = self.lock();
                    if s.generation != generation || s.phase != Phase::Running {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(within, wait).await.map_err(|_| {
            RuntimeError::Internal(format!("entrypoint pid {pid} did not exit after SIGKILL"))
        })
    }

    /// Kill a running entrypoint's process group (shutdown).
    pub fn kill(&self) {
        let s = self.lock();
        if s.phase == Phase::Running
            && let Ok(p) = i32::try_from(s.pid)
        {
            let _ = nix::sys::signal::killpg(Pid::from_raw(p), Signal::SIGKILL);
        }
    }

    /// Wait until the entrypoint is no longer running (for tests and shutdown).
    pub async fn wait_exit(&self) -> EntrypointState {
        let mut rx = self.changed.subscribe();
        loop {
            let s = self.status();
            if s.phase != Phase::Running {
                return s;
            }
            if rx.changed().await.is_err() {
                return self.status();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inject_runs_with_env_and_reports_exit() {
        let ep = Arc::new(Entrypoint::default());
        assert_eq!(ep.status().phase, Phase::NotStarted);
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let mut env = HashMap::new();
        env.insert("GREETING".into(), "hi".into());
        let s = ep
            .inject(InjectSpec {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo $GREETING $(pwd) > {}; exit 4", out.display()),
                ],
                env,
                cwd: Some(d.path().to_string_lossy().into_owned()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(s.phase, Phase::Running);
        assert!(s.pid > 0);
        let done = tokio::time::timeout(Duration::from_secs(10), ep.wait_exit())
            .await
            .unwrap();
        assert_eq!((done.phase, done.exit_code), (Phase::Exited, Some(4)));
        let canon = d.path().canonicalize().unwrap();
        assert_eq!(
            std::fs::read_to_string(out).unwrap(),
            format!("hi {}\n", canon.display())
        );
    }

    #[tokio::test]
    async fn second_inject_needs_replace() {
        let ep = Arc::new(Entrypoint::default());
        let sleep = || InjectSpec {
            argv: vec!["sleep".into(), "30".into()],
            ..Default::default()
        };
        let first = ep.inject(sleep()).await.unwrap();
        let e = ep.inject(sleep()).await.unwrap_err();
        assert!(matches!(e, RuntimeError::AlreadyExists(_)));
        let replace = InjectSpec {
            replace: true,
            ..sleep()
        };
        let second = ep.inject(replace).await.unwrap();
        assert_ne!(first.pid, second.pid);
        assert!(
            nix::sys::signal::kill(Pid::from_raw(first.pid as i32), None).is_err(),
            "old entrypoint gone"
        );
        ep.kill();
        let done = tokio::time::timeout(Duration::from_secs(10), ep.wait_exit())
            .await
            .unwrap();
        assert_eq!(done.exit_code, Some(137));
    }

    #[tokio::test]
    async fn bad_specs_are_rejected() {
        let ep = Arc::new(Entrypoint::default());
        for spec in [
            InjectSpec::default(),
            InjectSpec {
                argv: vec!["/no/such/binary".into()],
                ..Default::default()
            },
            InjectSpec {
                argv: vec!["true".into()],
                cwd: Some("/no/such/dir".into()),
                ..Default::default()
            },
        ] {
            let e = ep.inject(spec).await.unwrap_err();
            assert!(matches!(e, RuntimeError::InvalidRequest(_)), "{e}");
        }
        assert_eq!(ep.status().phase, Phase::NotStarted);
    }
}
