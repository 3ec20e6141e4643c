//! The command registry: spawning processes, pumping their output without
//! buffering it whole, timeouts, signals, and bounded retention of finished
//! commands (foreground and background).

use std::{
    collections::{HashMap, VecDeque},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use nix::{sys::signal::Signal, unistd::Pid};
use parking_lot::{Mutex, MutexGuard};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::unix::pipe,
    process::{Child, ChildStdin},
    sync::{mpsc, watch},
};

use crate::{
    error::{Result, RuntimeError},
    pty::{PtySize, attach_slave, master_io, open_pty},
};

/// How long the output pumps keep draining after the process exited while
/// nothing arrives (grandchildren may hold the pipes open forever).
const DRAIN_IDLE: Duration = Duration::from_millis(200);
const READ_CHUNK: usize = 16 * 1024;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    /// Shell command line (`bash -c`), used when `argv` is empty.
    pub command: String,
    /// Direct argv (no shell) when non-empty.
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub envs: HashMap<String, String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub timeout: Option<Duration>,
    /// Keep stdin as a pipe (otherwise /dev/null).
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size: its output arrives as
    /// [`Output::Stdout`], input goes through [`CommandRecord::write_pty`].
    pub pty: Option<PtySize>,
}

/// One item of a command's output stream. `Exit` is always last.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExitInfo),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExitInfo {
    /// Exit code, or 128+signal when killed by a signal.
    pub code: i32,
    /// The terminating signal, 0 for a normal exit.
    pub signal: i32,
    pub duration: Duration,
    pub timed_out: bool,
    pub finished_at: DateTime<Utc>,
}

/// A command known to the registry.
#[derive(Debug)]
pub struct CommandRecord {
    pub id: String,
    pub content: String,
    pub background: bool,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub log_path: Option<PathBuf>,
    exit: watch::Sender<Option<ExitInfo>>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    /// Whether the command runs on a pseudo-terminal.
    pub is_pty: bool,
    /// The terminal's master while the command runs.
    tty: tokio::sync::Mutex<Option<pipe::Sender>>,
}

impl CommandRecord {
    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }
    pub fn running(&self) -> bool {
        self.exit.borrow().is_none()
    }
    /// Resolves when the command has exited.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives in self, so this only happens at teardown.
                return ExitInfo {
                    code: -1,
                    signal: 0,
                    duration: Duration::ZERO,
                    timed_out: false,
                    finished_at: Utc::now(),
                };
            }
        }
    }
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        let mut g = self.stdin.lock().await;
        let w = g
            .as_mut()
            .ok_or_else(|| RuntimeError::Conflict(format!("stdin of {} is not open", self.id)))?;
        w.write_all(data).await.map_err(|e| RuntimeError::Io {
            context: format!("stdin of {}", self.id),
            source: e,
        })
    }
    /// Write to the command's terminal (what a user types).
    pub async fn write_pty(&self, data: &[u8]) -> Result<()> {
        let mut g = self.tty.lock().await;
        let w = g.as_mut().ok_or_else(|| self.no_tty())?;
        w.write_all(data).await.map_err(|e| RuntimeError::Io {
            context: format!("terminal of {}", self.id),
            source: e,
        })
    }
    /// Change the size of the command's terminal.
    pub async fn resize_pty(&self, size: PtySize) -> Result<()> {
        let g = self.tty.lock().await;
        crate::pty::resize(g.as_ref().ok_or_else(|| self.no_tty())?, size)
    }
    fn no_tty(&self) -> RuntimeError {
        RuntimeError::Conflict(if self.is_pty {
            format!("terminal of {} is closed", self.id)
        } else {
            format!("command {} has no terminal", self.id)
        })
    }
    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }
    /// Signal the command's whole process group.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if !self.running() {
            return Ok(());
        }
        signal_group(self.pid, sig)
    }
}

/// Shell words that must run inside a shell (builtins without an equivalent
/// executable, keywords, or builtins whose behaviour differs from the binary).
const SHELL_ONLY: &[&str] = &[
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "command",
    "compgen",
    "complete",
    "continue",
    "coproc",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "fc",
    "fg",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "time",
    "times",
    "trap",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// If `command` is a plain simple command (words of unremarkable characters,
/// no quoting, expansion, redirection, globbing, assignment or control
/// operators) whose program is an executable found in `path`, return it as
/// (program path, args): `bash -c` would exec exactly that.
pub fn simple_argv(command: &str, path: Option<&str>) -> Option<(PathBuf, Vec<String>)> {
    let ok = |c: char| c.is_ascii_alphanumeric() || " \t_./,:@%+-=".contains(c);
    if command.is_empty() || !command.chars().all(ok) {
        return None;
    }
    let mut words = command.split([' ', '\t']).filter(|w| !w.is_empty());
    let prog = words.next()?;
    if prog.contains('=') || SHELL_ONLY.contains(&prog) {
        return None;
    }
    let resolved = if prog.contains('/') {
        PathBuf::from(prog)
    } else {
        path?
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(prog))
            .find(|p| is_executable(p))?
    };
    if !is_executable(&resolved) {
        return None;
    }
    Some((resolved, words.map(str::to_string).collect()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn signal_group(pid: u32, sig: Signal) -> Result<()> {
    let pid = i32::try_from(pid)
        .map_err(|_| RuntimeError::Internal(format!("pid {pid} out of range")))?;
    match nix::sys::signal::killpg(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(RuntimeError::failed(
            format!("signal {sig} to process group {pid}"),
            e,
        )),
    }
}

/// Resolve a user-facing signal name or number.
pub fn parse_signal(s: &str) -> Result<Signal> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n)
            .map_err(|_| RuntimeError::InvalidRequest(format!("unknown signal {t}")));
    }
    let up = t.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| RuntimeError::InvalidRequest(format!("unknown signal {t}")))
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Arc<CommandRecord>>,
    finished: VecDeque<String>,
}

/// All commands of this runtime, running and recently finished.
#[derive(Debug)]
pub struct CommandRegistry {
    inner: Mutex<Inner>,
    log_dir: PathBuf,
    max_finished: usize,
    shell: PathBuf,
}

impl CommandRegistry {
    pub fn new(log_dir: PathBuf, max_finished: usize) -> Self {
        let shell = ["/bin/bash", "/usr/bin/bash", "/bin/sh"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        CommandRegistry {
            inner: Mutex::new(Inner::default()),
            log_dir,
            max_finished: max_finished.max(1),
            shell,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // parking_lot: no poisoning; every critical section is a single
        // insert/remove, so a panic cannot leave the map inconsistent.
        self.inner.lock()
    }

    pub fn get(&self, id: &str) -> Result<Arc<CommandRecord>> {
        self.lock()
            .map
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::CommandNotFound(id.to_string()))
    }

    pub fn running_count(&self) -> usize {
        self.lock().map.values().filter(|r| r.running()).count()
    }

    /// Number of records held (running + retained finished).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start a command whose output is delivered to `tx` (ending with
    /// [`Output::Exit`]). When `tx`'s receiver goes away the command's process
    /// group is killed.
    pub fn start(
        self: &Arc<Self>,
        spec: CommandSpec,
        tx: mpsc::Sender<Output>,
    ) -> Result<Arc<CommandRecord>> {
        self.spawn(spec, false, tx, true)
    }

    /// Start a command whose output goes to `tx` and which keeps running when
    /// the receiver goes away (the caller must keep draining `tx`'s receiver).
    pub fn start_detached(
        self: &Arc<Self>,
        spec: CommandSpec,
        tx: mpsc::Sender<Output>,
    ) -> Result<Arc<CommandRecord>> {
        self.spawn(spec, false, tx, false)
    }

    /// Start a background command; its combined output goes to a log file.
    pub fn start_background(self: &Arc<Self>, spec: CommandSpec) -> Result<Arc<CommandRecord>> {
        let (tx, mut rx) = mpsc::channel::<Output>(32);
        let rec = self.spawn(spec, true, tx, false)?;
        let path = rec.log_path.clone();
        tokio::spawn(async move {
            let mut file = match &path {
                Some(p) => tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .await
                    .ok(),
                None => None,
            };
            while let Some(o) = rx.recv().await {
                if let (Output::Stdout(b) | Output::Stderr(b), Some(f)) = (&o, file.as_mut())
                    && let Err(e) = f.write_all(b).await
                {
                    tracing::warn!(error = %e, "writing background command log failed");
                    file = None;
                }
            }
            if let Some(mut f) = file {
                let _ = f.flush().await;
            }
        });
        Ok(rec)
    }

    fn spawn(
        self: &Arc<Self>,
        spec: CommandSpec,
        background: bool,
        tx: mpsc::Sender<Output>,
        kill_on_disconnect: bool,
    ) -> Result<Arc<CommandRecord>> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (content, mut cmd) = self.build_command(&spec)?;
        let master = match spec.pty {
            Some(size) => {
                let p = open_pty(size)?;
                attach_slave(&mut cmd, p.slave)?;
                Some(master_io(p.master)?)
            }
            None => None,
        };
        let started = Instant::now();
        let mut child = spawn_child(cmd, &content)?;
        let (tty_out, tty_in) = master.unzip();
        let pid = child.id().unwrap_or(0);
        let log_path = background.then(|| self.log_dir.join(format!("{id}.log")));
        let (exit_tx, _) = watch::channel(None);
        let rec = Arc::new(CommandRecord {
            id: id.clone(),
            content,
            background,
            pid,
            started_at: Utc::now(),
            log_path,
            exit: exit_tx,
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            is_pty: tty_in.is_some(),
            tty: tokio::sync::Mutex::new(tty_in),
        });
        self.lock().map.insert(id.clone(), rec.clone());
        tracing::debug!(id = %id, pid, background, "command started");

        let (exited_tx, exited_rx) = watch::channel(false);
        let to = PumpTo {
            tx: tx.clone(),
            exited: exited_rx,
            pid,
            kill_on_disconnect,
        };
        let pumps = [
            tty_out.map(|r| pump(r, to.clone(), Output::Stdout)),
            child
                .stdout
                .take()
                .map(|r| pump(r, to.clone(), Output::Stdout)),
            child.stderr.take().map(|r| pump(r, to, Output::Stderr)),
        ];
        tokio::spawn(Arc::clone(self).supervise(
            child,
            rec.clone(),
            Supervision {
                timeout: spec.timeout,
                started,
                exited_tx,
                pumps,
                tx,
            },
        ));
        Ok(rec)
    }

    /// The process to run and its display content: `argv` as is, or the
    /// command line (directly when it is a plain `prog arg arg`, else through
    /// the shell), with cwd, env, stdio, process group and ids applied.
    fn build_command(&self, spec: &CommandSpec) -> Result<(String, tokio::process::Command)> {
        let (content, mut cmd) = if spec.argv.is_empty() {
            if spec.command.trim().is_empty() {
                return Err(RuntimeError::InvalidRequest(
                    "command must not be empty".into(),
                ));
            }
            let path_var = spec
                .envs
                .get("PATH")
                .cloned()
                .or_else(|| std::env::var("PATH").ok());
            match simple_argv(&spec.command, path_var.as_deref()) {
                // Fast path: a plain `prog arg arg` line runs without a shell,
                // exactly as `bash -c` would exec it, minus bash's ~1 ms start.
                Some((prog, args)) => {
                    let mut c = tokio::process::Command::new(prog);
                    c.args(args);
                    (spec.command.clone(), c)
                }
                None => {
                    let mut c = tokio::process::Command::new(&self.shell);
                    c.arg("-c").arg(&spec.command);
                    (spec.command.clone(), c)
                }
            }
        } else {
            let mut c = tokio::process::Command::new(&spec.argv[0]);
            c.args(&spec.argv[1..]);
            (spec.argv.join(" "), c)
        };
        if let Some(cwd) = &spec.cwd {
            let p = Path::new(cwd);
            if !p.is_dir() {
                return Err(RuntimeError::InvalidRequest(format!(
                    "working directory {cwd} does not exist"
                )));
            }
            cmd.current_dir(p);
        }
        cmd.envs(&spec.envs)
            .stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if spec.pty.is_none() {
            // a terminal's child gets its own session (and group) instead
            cmd.process_group(0);
        }
        if let Some(g) = spec.gid {
            cmd.gid(g);
        }
        if let Some(u) = spec.uid {
            cmd.uid(u);
        }
        Ok((content, cmd))
    }

    /// Wait for the process (killing its group at the timeout), let the
    /// output pumps finish, then publish the exit and retire the record.
    async fn supervise(
        self: Arc<Self>,
        mut child: Child,
        record: Arc<CommandRecord>,
        sup: Supervision,
    ) {
        let pid = record.pid;
        let mut timed_out = false;
        let status = match sup.timeout {
            Some(t) => tokio::select! {
                s = child.wait() => s,
                _ = tokio::time::sleep(t) => {
                    timed_out = true;
                    let _ = signal_group(pid, Signal::SIGKILL);
                    child.wait().await
                }
            },
            None => child.wait().await,
        };
        let _ = sup.exited_tx.send(true);
        for p in sup.pumps.into_iter().flatten() {
            let _ = p.await;
        }
        let (code, signal) = match &status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => (c, 0),
                (None, Some(sig)) => (128 + sig, sig),
                (None, None) => (-1, 0),
            },
            Err(_) => (-1, 0),
        };
        let info = ExitInfo {
            code,
            signal,
            duration: sup.started.elapsed(),
            timed_out,
            finished_at: Utc::now(),
        };
        record.stdin.lock().await.take();
        record.tty.lock().await.take();
        let _ = sup.tx.send(Output::Exit(info.clone())).await;
        record.exit.send_replace(Some(info));
        self.retire(&record.id);
    }

    /// Move a finished command to the retention queue, evicting the oldest.
    fn retire(&self, id: &str) {
        let evicted: Vec<Arc<CommandRecord>> = {
            let mut g = self.lock();
            g.finished.push_back(id.to_string());
            let mut out = Vec::new();
            while g.finished.len() > self.max_finished {
                if let Some(old) = g.finished.pop_front()
                    && let Some(r) = g.map.remove(&old)
                {
                    out.push(r);
                }
            }
            out
        };
        for r in evicted {
            if let Some(p) = &r.log_path {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Read a background command's combined output from byte `cursor`, at most
    /// `max` bytes. Returns the bytes and the next cursor.
    pub async fn read_log(&self, id: &str, cursor: u64, max: usize) -> Result<(Vec<u8>, u64)> {
        let rec = self.get(id)?;
        let Some(path) = &rec.log_path else {
            return Err(RuntimeError::InvalidRequest(format!(
                "command {id} is not a background command"
            )));
        };
        let mut f = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), cursor)),
            Err(e) => {
                return Err(RuntimeError::Io {
                    context: format!("log of {id}"),
                    source: e,
                });
            }
        };
        let len = f
            .metadata()
            .await
            .map_err(|e| RuntimeError::io(&path.to_string_lossy(), e))?
            .len();
        if cursor >= len {
            return Ok((Vec::new(), len.max(cursor)));
        }
        use tokio::io::AsyncSeekExt;
        f.seek(std::io::SeekFrom::Start(cursor))
            .await
            .map_err(|e| RuntimeError::io(&path.to_string_lossy(), e))?;
        let want = usize::try_from(len - cursor).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let n = f
                .read(&mut buf[got..])
                .await
                .map_err(|e| RuntimeError::io(&path.to_string_lossy(), e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok((buf, cursor + got as u64))
    }

    /// Kill everything still running (shutdown).
    pub fn kill_all(&self) {
        let recs: Vec<_> = self.lock().map.values().cloned().collect();
        for r in recs {
            let _ = r.signal(Signal::SIGKILL);
        }
    }
}

/// What [`CommandRegistry::supervise`] needs besides the child and its record.
struct Supervision {
    timeout: Option<Duration>,
    started: Instant,
    exited_tx: watch::Sender<bool>,
    pumps: [Option<tokio::task::JoinHandle<()>>; 3],
    tx: mpsc::Sender<Output>,
}

/// Spawn `cmd`, turning a missing executable or a permission problem into
/// precise errors.
fn spawn_child(mut cmd: tokio::process::Command, content: &str) -> Result<Child> {
    cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            RuntimeError::InvalidRequest(format!("executable not found: {content}"))
        }
        std::io::ErrorKind::PermissionDenied => RuntimeError::PermissionDenied(content.to_string()),
        _ => RuntimeError::Io {
            context: format!("spawning {content}"),
            source: e,
        },
    })
}

/// What the output pumps of one command share: where chunks go, whether
/// the command has exited, and whether a gone receiver kills it (`pid`'s
/// process group).
#[derive(Clone)]
struct PumpTo {
    tx: mpsc::Sender<Output>,
    exited: watch::Receiver<bool>,
    pid: u32,
    kill_on_disconnect: bool,
}

fn pump<R>(mut reader: R, to: PumpTo, wrap: fn(Bytes) -> Output) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let PumpTo {
        tx,
        mut exited,
        pid,
        kill_on_disconnect,
    } = to;
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            let res = if *exited.borrow() {
                match tokio::time::timeout(DRAIN_IDLE, reader.read_buf(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    r = reader.read_buf(&mut buf) => r,
                    _ = exited.changed() => continue,
                }
            };
            match res {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    if tx.send(wrap(chunk)).await.is_err() {
                        if kill_on_disconnect {
                            let _ = signal_group(pid, Signal::SIGKILL);
                        }
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell command with nothing else set.
    fn shell(command: &str) -> CommandSpec {
        CommandSpec {
            command: command.into(),
            ..Default::default()
        }
    }

    fn registry(max: usize) -> (Arc<CommandRegistry>, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        (
            Arc::new(CommandRegistry::new(d.path().to_path_buf(), max)),
            d,
        )
    }

    async fn collect(mut rx: mpsc::Receiver<Output>) -> (String, String, ExitInfo) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(o) = rx.recv().await {
            match o {
                Output::Stdout(b) => out.extend_from_slice(&b),
                Output::Stderr(b) => err.extend_from_slice(&b),
                Output::Exit(e) => {
                    return (
                        String::from_utf8(out).unwrap(),
                        String::from_utf8(err).unwrap(),
                        e,
                    );
                }
            }
        }
        panic!("stream ended without Exit");
    }

    #[tokio::test]
    async fn runs_and_reports_exit_and_output() {
        let (reg, _d) = registry(8);
        let (tx, rx) = mpsc::channel(8);
        let spec = shell("echo out; echo err >&2; exit 7");
        let rec = reg.start(spec, tx).unwrap();
        let (out, err, exit) = collect(rx).await;
        assert_eq!(out, "out\n");
        assert_eq!(err, "err\n");
        assert_eq!(exit.code, 7);
        assert_eq!(rec.wait().await.code, 7);
        assert!(!rec.running());
        assert!(reg.get(&rec.id).is_ok(), "finished commands are retained");
    }

    #[tokio::test]
    async fn env_cwd_and_argv() {
        let (reg, d) = registry(8);
        let (tx, rx) = mpsc::channel(8);
        let mut envs = HashMap::new();
        envs.insert("SP_TEST".to_string(), "v1".to_string());
        let spec = CommandSpec {
            argv: vec!["sh".into(), "-c".into(), "echo $SP_TEST; pwd".into()],
            cwd: Some(d.path().to_string_lossy().into_owned()),
            envs,
            ..Default::default()
        };
        reg.start(spec, tx).unwrap();
        let (out, _, exit) = collect(rx).await;
        assert_eq!(exit.code, 0);
        let canon = d.path().canonicalize().unwrap();
        assert_eq!(out, format!("v1\n{}\n", canon.display()));
    }

    #[tokio::test]
    async fn rejects_bad_input() {
        let (reg, _d) = registry(8);
        let (tx, _rx) = mpsc::channel(8);
        let e = reg.start(shell("  "), tx.clone()).unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidRequest(_)));
        let e = reg
            .start(
                CommandSpec {
                    cwd: Some("/no/such/dir".into()),
                    ..shell("true")
                },
                tx,
            )
            .unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidRequest(_)), "{e}");
        assert!(reg.is_empty(), "nothing registered for rejected commands");
        assert!(matches!(
            reg.get("nope"),
            Err(RuntimeError::CommandNotFound(_))
        ));
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let (reg, _d) = registry(8);
        let (tx, rx) = mpsc::channel(8);
        let spec = CommandSpec {
            timeout: Some(Duration::from_millis(150)),
            ..shell("sleep 30 & sleep 30")
        };
        let rec = reg.start(spec, tx).unwrap();
        let (_, _, exit) = collect(rx).await;
        assert!(exit.timed_out);
        assert_eq!(exit.signal, 9);
        assert_eq!(exit.code, 137);
        // The whole group is gone, including the backgrounded sleep.
        // (killed members may linger briefly as zombies until init reaps them)
        let mut gone = false;
        for _ in 0..100 {
            gone = nix::sys::signal::killpg(Pid::from_raw(rec.pid as i32), None).is_err();
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "process group still alive");
    }

    #[tokio::test]
    async fn dropping_the_receiver_kills_a_foreground_command() {
        let (reg, _d) = registry(8);
        let (tx, mut rx) = mpsc::channel(1);
        let spec = shell("while true; do echo y; done");
        let rec = reg.start(spec, tx).unwrap();
        assert!(matches!(rx.recv().await, Some(Output::Stdout(_))));
        drop(rx);
        let exit = tokio::time::timeout(Duration::from_secs(10), rec.wait())
            .await
            .expect("killed");
        assert_eq!(exit.signal, 9);
    }

    #[tokio::test]
    async fn background_logs_and_signal() {
        let (reg, _d) = registry(8);
        let rec = reg
            .start_background(shell("echo one; echo two; sleep 30"))
            .unwrap();
        let mut log = Vec::new();
        let mut cursor = 0;
        for _ in 0..100 {
            let (b, c) = reg.read_log(&rec.id, cursor, 1 << 20).await.unwrap();
            log.extend_from_slice(&b);
            cursor = c;
            if log.ends_with(b"two\n") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(log, b"one\ntwo\n");
        assert_eq!(cursor, 8);
        let (b, c) = reg.read_log(&rec.id, 4, 1 << 20).await.unwrap();
        assert_eq!((b.as_slice(), c), (&b"two\n"[..], 8));
        assert!(rec.running());
        rec.signal(Signal::SIGTERM).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), rec.wait())
            .await
            .unwrap();
        assert_eq!(exit.signal, 15);
    }

    #[tokio::test]
    async fn retention_is_bounded_and_evicts_logs() {
        let (reg, d) = registry(2);
        let mut ids = Vec::new();
        for _ in 0..4 {
            let rec = reg.start_background(shell("echo x")).unwrap();
            rec.wait().await;
            ids.push(rec.id.clone());
        }
        // retire() runs right after the exit is published; give it a moment.
        for _ in 0..50 {
            if reg.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(reg.len(), 2);
        assert!(reg.get(&ids[0]).is_err() && reg.get(&ids[1]).is_err());
        assert!(reg.get(&ids[3]).is_ok());
        assert!(
            !d.path().join(format!("{}.log", ids[0])).exists(),
            "evicted log removed"
        );
    }

    #[tokio::test]
    async fn stdin_pipe() {
        let (reg, _d) = registry(8);
        let (tx, rx) = mpsc::channel(8);
        let rec = reg
            .start(
                CommandSpec {
                    stdin: true,
                    ..shell("cat")
                },
                tx,
            )
            .unwrap();
        rec.write_stdin(b"hello stdin").await.unwrap();
        rec.close_stdin().await;
        let (out, _, exit) = collect(rx).await;
        assert_eq!((out.as_str(), exit.code), ("hello stdin", 0));
    }

    #[test]
    fn simple_commands_skip_the_shell() {
        let path = Some("/usr/bin:/bin");
        let (p, a) = simple_argv("true", path).unwrap();
        assert!(p.ends_with("true") && a.is_empty());
        let (_, a) = simple_argv("ls  -la /tmp --color=never", path).unwrap();
        assert_eq!(a, vec!["-la", "/tmp", "--color=never"]);
        for shellish in [
            "echo hi",
            "cd /tmp",
            "exit 3",
            "A=1 env",
            "ls *.txt",
            "ls $HOME",
            "ls > x",
            "true && false",
            "ls 'a b'",
            "ls ~",
            "sleep 1 &",
            "ls\nls",
            "no-such-program-xyz",
            "pwd",
            "",
        ] {
            assert!(
                simple_argv(shellish, path).is_none(),
                "{shellish:?} must go through the shell"
            );
        }
        assert!(
            simple_argv("true", None).is_none(),
            "no PATH: let the shell decide"
        );
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99999").is_err());
    }
}
