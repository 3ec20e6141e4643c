//! The `sandpool-runtime` binary: command-line flags into a [`Config`], then
//! the runtime's servers (execd and gRPC on 44772; envd and the code
//! interpreter where `--envd-listen`/`--interp-listen` say) until a signal.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use sandpool_runtime::{AppState, Config, DEFAULT_PORT, upload::UploadLimits};

mod listening;

/// The in-sandbox runtime of sandpool: OpenSandbox execd HTTP API and the
/// sandpool.v1.Runtime gRPC service on one port.
#[derive(Parser, Debug)]
#[command(name = "sandpool-runtime", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SANDPOOL_RUNTIME_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// Also serve E2B's envd protocol on this address (e.g. 0.0.0.0:49983).
    #[arg(long, env = "SANDPOOL_ENVD_LISTEN")]
    envd_listen: Option<SocketAddr>,
    /// Also serve the code interpreter on this address (e.g. 0.0.0.0:49999).
    #[arg(long, env = "SANDPOOL_INTERP_LISTEN")]
    interp_listen: Option<SocketAddr>,
    /// Also serve the agent-sandbox runtime API (what the k8s-agent-sandbox
    /// SDK calls: /execute, /upload, /download, /list, /exists) on this
    /// address (e.g. 0.0.0.0:8888). It has NO token, by upstream's design:
    /// off unless given (the controller sets it for agent-sandbox pods).
    #[arg(long, env = "SANDPOOL_ASB_LISTEN")]
    asb_listen: Option<SocketAddr>,
    /// The agent-sandbox API's directory: relative paths resolve here and
    /// commands run here (created when missing).
    #[arg(long, env = "SANDPOOL_ASB_ROOT", default_value = sandpool_runtime::asb::DEFAULT_ROOT)]
    asb_root: PathBuf,
    /// Also serve sandboxd's REST files API (KEP-539.2: what the
    /// k8s-agent-sandbox SDK's sandboxd configurations call, /v1/files/*) on
    /// this address (e.g. 0.0.0.0:8080). NO token, by upstream's design.
    #[arg(long, env = "SANDPOOL_SANDBOXD_LISTEN")]
    sandboxd_listen: Option<SocketAddr>,
    /// Also serve sandboxd's gRPC process.v1.ProcessService on this address
    /// (e.g. 0.0.0.0:9090). NO token, by upstream's design.
    #[arg(long, env = "SANDPOOL_SANDBOXD_GRPC_LISTEN")]
    sandboxd_grpc_listen: Option<SocketAddr>,
    /// sandboxd's root: its paths and working directories stay inside it
    /// (created when missing).
    #[arg(long, env = "SANDPOOL_SANDBOXD_ROOT", default_value = sandpool_runtime::sandboxd::DEFAULT_ROOT)]
    sandboxd_root: PathBuf,
    /// Require this token in X-EXECD-ACCESS-TOKEN (HTTP) / x-execd-access-token (gRPC)
    /// (write `--access-token=VALUE` for a value that starts with `-`)
    /// and, for envd, X-Access-Token.
    #[arg(long, env = "EXECD_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// A file whose content, when it exists, replaces `--access-token`:
    /// the node agent writes a new token there when it resets a Kubernetes
    /// pod for its pool's next tenant (`recycleStrategy: Restart`).
    #[arg(long, env = "EXECD_ACCESS_TOKEN_FILE")]
    access_token_file: Option<PathBuf>,
    /// State directory (background command logs).
    #[arg(long, env = "SANDPOOL_RUNTIME_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest JSON request body, in bytes.
    #[arg(long, default_value_t = 10 << 20)]
    max_json_bytes: usize,
    /// Largest single uploaded/written file, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_file_bytes: u64,
    /// Most files in one upload request.
    #[arg(long, default_value_t = 1000)]
    max_upload_files: usize,
    /// Finished commands kept for status and log queries.
    #[arg(long, default_value_t = 1024)]
    max_finished_commands: usize,
    /// Start the code interpreter's default Python kernel when the runtime
    /// starts, so a sandbox waiting warm has it up: `auto` where the image
    /// has a Jupyter Python kernel (the code-interpreter image), `on`, `off`
    /// (a pool sets it through its template's env).
    #[arg(
        long,
        env = "SANDPOOL_INTERP_PRESTART",
        value_enum,
        default_value = "auto"
    )]
    interp_prestart: sandpool_runtime::interp::Prestart,
    /// Seconds between ping events on command streams.
    #[arg(long, default_value_t = 3)]
    ping_interval_secs: u64,
    /// Copy this binary to PATH (mode 0755) and exit: how Kubernetes pool
    /// pods get the runtime (an init container copies it into a shared volume).
    #[arg(long, value_name = "PATH")]
    install_to: Option<PathBuf>,
    /// With --install-to: also write the stand-in for upstream OpenSandbox's
    /// `bootstrap.sh` to PATH (what the upstream server's tasks run; the
    /// runtime serves execd's API, so it starts only the command).
    #[arg(long, value_name = "PATH", requires = "install_to")]
    install_bootstrap_to: Option<PathBuf>,
    /// Join standard input and output to 127.0.0.1:PORT and exit when the
    /// connection ends: how the node agent reaches the runtime of a sandbox
    /// without a network (checkpointable runsc sandboxes), one exec per
    /// connection.
    #[arg(long, value_name = "PORT")]
    tunnel: Option<u16>,
    /// Ask the runtime serving in this sandbox to let go of its TCP sockets
    /// (before a gVisor checkpoint) and wait until it has; uses --data-dir.
    #[arg(long, conflicts_with = "checkpoint_resume")]
    checkpoint_prepare: bool,
    /// Ask the runtime serving in this sandbox to listen again (after a restore).
    #[arg(long)]
    checkpoint_resume: bool,
    /// The sandbox's own entrypoint, started once the server listens
    /// (as if injected): `sandpool-runtime [options] -- sleep infinity`.
    #[arg(last = true)]
    entrypoint: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dest) = &args.install_to {
        install_to(dest)?;
        if let Some(b) = &args.install_bootstrap_to {
            sandpool_runtime::opensandbox_bootstrap::install(b)
                .with_context(|| format!("writing {}", b.display()))?;
            println!("installed {}", b.display());
        }
        return Ok(());
    }
    if let Some(port) = args.tunnel {
        return tunnel(port);
    }
    if args.checkpoint_prepare || args.checkpoint_resume {
        let dir = args
            .data_dir
            .as_deref()
            .context("--checkpoint-prepare/--checkpoint-resume need --data-dir")?;
        return listening::request(dir, args.checkpoint_prepare);
    }
    // before any thread or child exists: what this process starts inherits
    // no capability (the file capabilities stay the runtime's own)
    sandpool_runtime::privilege::keep_for_self_only().context("clearing inherited capabilities")?;
    if std::process::id() == 1 {
        // Container init: orphaned grandchildren of commands are re-parented
        // to PID 1 and must be reaped, but reaping them from the server
        // process would steal its own children's exit statuses. So PID 1
        // becomes a tiny init that reaps everything and forwards signals, and
        // the server runs in a child (the parent of its commands).
        init::run_as_init()?;
    }
    // Two workers are plenty for one sandbox and keep idle memory small.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

fn install_to(dest: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().context("locating this binary")?;
    // copy to a temporary name and rename, so a reader never sees half a file
    let tmp = dest.with_extension("tmp");
    std::fs::copy(&me, &tmp)
        .with_context(|| format!("copying {} to {}", me.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("installing {}", dest.display()))?;
    println!("installed {}", dest.display());
    Ok(())
}

mod init {
    use nix::{
        sys::{
            signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction},
            wait::{WaitStatus, waitpid},
        },
        unistd::{ForkResult, Pid, fork},
    };
    use std::sync::atomic::{AtomicI32, Ordering};

    static CHILD: AtomicI32 = AtomicI32::new(0);

    extern "C" fn forward(sig: i32) {
        let child = CHILD.load(Ordering::Relaxed);
        if child > 0
            && let Ok(s) = Signal::try_from(sig)
        {
            let _ = kill(Pid::from_raw(child), s);
        }
    }

    /// Returns in the child (which goes on to serve); the parent never returns.
    pub fn run_as_init() -> anyhow::Result<()> {
        // SAFETY: called first thing in main, before any thread exists.
        match unsafe { fork() }? {
            ForkResult::Child => Ok(()),
            ForkResult::Parent { child } => {
                CHILD.store(child.as_raw(), Ordering::Relaxed);
                let action = SigAction::new(
                    SigHandler::Handler(forward),
                    SaFlags::SA_RESTART,
                    SigSet::empty(),
                );
                for sig in [
                    Signal::SIGTERM,
                    Signal::SIGINT,
                    Signal::SIGHUP,
                    Signal::SIGUSR1,
                    Signal::SIGUSR2,
                ] {
                    // SAFETY: the handler only reads an atomic and calls kill(2), both async-signal-safe.
                    let _ = unsafe { sigaction(sig, &action) };
                }
                loop {
                    match waitpid(None, None) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                            std::process::exit(code)
                        }
                        Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                            std::process::exit(128 + sig as i32)
                        }
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => std::process::exit(1),
                    }
                }
            }
        }
    }
}

fn tunnel(port: u16) -> anyhow::Result<()> {
    use std::{io::Write, os::fd::AsFd};
    let sock = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    sock.set_nodelay(true)?;
    // raw descriptors: Stdout is line-buffered, which would hold binary frames
    let mut input = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut output = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut up = sock.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut input, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = sock;
    let _ = std::io::copy(&mut down, &mut output);
    let _ = output.flush();
    // the copy up may still block on standard input: the connection is over
    std::process::exit(0)
}

/// The token to require: the file's (when it exists and is not empty),
/// else the flag's; a file that exists but cannot be read is an error (the
/// runtime must not fall back to a token the previous tenant knew).
fn access_token(
    flag: Option<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => return Ok(Some(t.trim().to_string())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
        }
    }
    Ok(flag.filter(|t| !t.is_empty()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _telemetry = sandpool_telemetry::init("sandpool-runtime")?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sandpool-runtime-{}", std::process::id()))
    });
    let cfg = Config {
        access_token: access_token(args.access_token.clone(), args.access_token_file.as_deref())?,
        data_dir: data_dir.clone(),
        max_json_bytes: args.max_json_bytes,
        upload: UploadLimits {
            max_file_bytes: args.max_file_bytes,
            max_files: args.max_upload_files,
            ..UploadLimits::default()
        },
        max_finished_commands: args.max_finished_commands,
        ping_interval: Duration::from_secs(args.ping_interval_secs.max(1)),
        home: None,
        interp_prestart: args.interp_prestart,
        ..Config::default()
    };
    let auth = cfg.access_token.is_some();
    let state = AppState::new(cfg).context("preparing the runtime state")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, auth, "sandpool-runtime listening (execd HTTP + gRPC)");
    let switches = listening::Switches::new();
    switches.handle_signals(data_dir)?;
    // one service per port, shared with port 44772's requests that name it
    // (a network-less sandbox's tunnel reaches 44772 only)
    let envd = sandpool_runtime::envd_app(state.clone());
    let interp = sandpool_runtime::interp_app(state.clone());
    let mut others = Vec::new();
    if let Some(a) = args.envd_listen {
        others.push((a.port(), envd.clone()));
    }
    if let Some(a) = args.interp_listen {
        others.push((a.port(), interp.clone()));
    }
    let extra = [
        (args.envd_listen, "envd", envd),
        (args.interp_listen, "code interpreter", interp.clone()),
        // Where a sandbox with the code interpreter has upstream's Jupyter
        // server: the opensandbox-code-interpreter SDK's readiness check
        // connects to it (best effort: a port in use is only logged).
        (
            args.interp_listen.map(|_| jupyter_addr()),
            "Jupyter port",
            // the same interpreter: one default context, one pre-started kernel
            interp,
        ),
    ];
    serve_agent_sandbox_apis(&args, &state, &switches).await?;
    for (addr, what, app) in extra {
        let Some(addr) = addr else { continue };
        let l = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if what == "Jupyter port" => {
                tracing::warn!(%addr, error = %e, "not listening on the Jupyter port");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr} for {what}")),
        };
        tracing::info!(addr = %l.local_addr()?, "{what} listening");
        let sw = switches.clone();
        tokio::spawn(async move {
            if let Err(e) = sw.serve(l, app).await {
                tracing::error!(error = %e, "{what} server failed");
            }
        });
    }
    if !args.entrypoint.is_empty() {
        let spec = sandpool_runtime::entrypoint::InjectSpec {
            argv: args.entrypoint.clone(),
            ..Default::default()
        };
        let st = state
            .entrypoint
            .inject(spec)
            .await
            .context("starting the entrypoint")?;
        tracing::info!(pid = st.pid, argv = ?args.entrypoint, "entrypoint started");
    }
    let sw = switches.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        sw.shutdown.send_replace(true);
    });
    let res = switches
        .serve(
            listener,
            sandpool_runtime::ports::with_other_ports(sandpool_runtime::app(state.clone()), others),
        )
        .await;
    state.kill_all();
    res.context("serving")?;
    tracing::info!("sandpool-runtime stopped");
    Ok(())
}

/// Serve the agent-sandbox runtime API (no token) on `addr` with `root` as
/// its directory. An image serving its own API on this port keeps it: ours
/// steps aside with a warning.
async fn serve_asb(
    addr: SocketAddr,
    root: &std::path::Path,
    state: &AppState,
    switches: &listening::Switches,
) -> anyhow::Result<()> {
    let app = sandpool_runtime::asb_app(state.clone(), api_root(root, "agent-sandbox API"));
    serve_untokened(addr, "agent-sandbox runtime API", app, switches).await
}

/// Serve the agent-sandbox runtime API (8888) and sandboxd's REST files API
/// and gRPC ProcessService, all without a token, where `--asb-listen`,
/// `--sandboxd-listen` and `--sandboxd-grpc-listen` say.
async fn serve_agent_sandbox_apis(
    args: &Args,
    state: &AppState,
    switches: &listening::Switches,
) -> anyhow::Result<()> {
    if let Some(addr) = args.asb_listen {
        serve_asb(addr, &args.asb_root, state, switches).await?;
    }
    if args.sandboxd_listen.is_none() && args.sandboxd_grpc_listen.is_none() {
        return Ok(());
    }
    let st = sandpool_runtime::sandboxd::SandboxdState::new(
        state.clone(),
        &api_root(&args.sandboxd_root, "sandboxd"),
    );
    let apps = [
        (
            args.sandboxd_listen,
            "sandboxd REST files API",
            sandpool_runtime::sandboxd_rest_app(st.clone()),
        ),
        (
            args.sandboxd_grpc_listen,
            "sandboxd gRPC ProcessService",
            sandpool_runtime::sandboxd_grpc_app(st),
        ),
    ];
    for (addr, what, app) in apps {
        if let Some(addr) = addr {
            serve_untokened(addr, what, app, switches).await?;
        }
    }
    Ok(())
}

/// `root`, created when missing; a user that may not create it works in
/// its current directory instead.
fn api_root(root: &std::path::Path, what: &str) -> PathBuf {
    match std::fs::create_dir_all(root) {
        Ok(()) => root.to_path_buf(),
        Err(e) => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
            tracing::warn!(error = %e, root = %root.display(), fallback = %cwd.display(), "creating the {what} root failed");
            cwd
        }
    }
}

/// Serve the untokened API `what` on `addr`. An image serving its own on
/// this port keeps it: ours steps aside with a warning.
async fn serve_untokened(
    addr: SocketAddr,
    what: &'static str,
    app: axum::Router,
    switches: &listening::Switches,
) -> anyhow::Result<()> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(addr = %l.local_addr()?, "{what} listening (no token)");
            let sw = switches.clone();
            tokio::spawn(async move {
                if let Err(e) = sw.serve(l, app).await {
                    tracing::error!(error = %e, "{what} server failed");
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, %addr, "{what} not served: the port is taken");
        }
    }
    Ok(())
}

/// `127.0.0.1:$JUPYTER_PORT` (44771 by default, as upstream's image).
fn jupyter_addr() -> SocketAddr {
    let port = std::env::var("JUPYTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(44771);
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::access_token;

    #[test]
    fn the_token_file_wins_over_the_flag_when_it_exists() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("access-token");
        let flag = || Some("old".to_string());
        assert_eq!(
            access_token(flag(), Some(&f)).expect("ok").as_deref(),
            Some("old")
        );
        std::fs::write(&f, "new\n").expect("write");
        assert_eq!(
            access_token(flag(), Some(&f)).expect("ok").as_deref(),
            Some("new")
        );
        assert_eq!(
            access_token(flag(), None).expect("ok").as_deref(),
            Some("old")
        );
        // a file that cannot be read (a directory) is an error, not the old token
        assert!(access_token(flag(), Some(d.path())).is_err());
    }
}
