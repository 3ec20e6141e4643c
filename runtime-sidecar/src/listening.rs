//! Servers that can let go of their TCP sockets and take them back.
//!
//! gVisor (runsc 2022-12) cannot checkpoint a TCP socket that anything waits
//! on, and every socket a tokio server holds is registered with epoll. So
//! before a checkpoint the runtime closes its listeners and connections
//! (SIGUSR1) and writes a marker file once they are all gone; after the
//! restore it binds again (SIGUSR2) and removes the marker. The node agent
//! runs `sandpool-runtime --checkpoint-prepare` / `--checkpoint-resume`
//! inside the sandbox to send those signals (through PID 1, the runtime's
//! init, which forwards them) and wait for the result.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::watch;

pub const MARKER: &str = "quiesced";

/// Shared switches of all servers.
#[derive(Clone)]
pub struct Switches {
    /// true: let go of sockets
    pub quiesced: watch::Sender<bool>,
    /// true: the runtime is shutting down for good
    pub shutdown: watch::Sender<bool>,
    /// servers holding sockets right now
    pub running: watch::Sender<usize>,
}

impl Switches {
    pub fn new() -> Switches {
        Switches {
            quiesced: watch::channel(false).0,
            shutdown: watch::channel(false).0,
            running: watch::channel(0).0,
        }
    }

    /// Serve `app` on `listener`, then (after each resume) on a fresh
    /// listener at the same address, until shutdown.
    pub async fn serve(
        &self,
        mut listener: tokio::net::TcpListener,
        app: axum::Router,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        loop {
            self.running.send_modify(|n| *n += 1);
            let (q, s) = (self.quiesced.subscribe(), self.shutdown.subscribe());
            let stop = async move {
                tokio::select! {
                    _ = until(q, true) => {}
                    _ = until(s, true) => {}
                }
            };
            let res = sandpool_runtime::serve_app(listener, app.clone(), stop).await;
            self.running.send_modify(|n| *n -= 1);
            res?;
            if *self.shutdown.borrow() {
                return Ok(());
            }
            tokio::select! {
                _ = until(self.quiesced.subscribe(), false) => {}
                _ = until(self.shutdown.subscribe(), true) => return Ok(()),
            }
            listener = bind_again(addr).await?;
        }
    }

    /// React to SIGUSR1 (quiesce) and SIGUSR2 (resume) for good.
    pub fn handle_signals(&self, data_dir: PathBuf) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
        let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
        let me = self.clone();
        let marker = data_dir.join(MARKER);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = usr1.recv() => {
                        me.quiesced.send_replace(true);
                        let mut running = me.running.subscribe();
                        let _ = running.wait_for(|n| *n == 0).await.map(|_| ());
                        if let Err(e) = std::fs::write(&marker, b"") {
                            tracing::error!(error = %e, "writing the quiesced marker");
                        }
                        tracing::info!("quiesced: no TCP sockets held");
                    }
                    Some(()) = usr2.recv() => {
                        me.quiesced.send_replace(false);
                        let _ = std::fs::remove_file(&marker);
                        tracing::info!("resumed: listening again");
                    }
                    else => return,
                }
            }
        });
        Ok(())
    }
}

/// Resolves once the switch reads `value`.
async fn until(mut rx: watch::Receiver<bool>, value: bool) {
    let _ = rx.wait_for(|v| *v == value).await;
}

/// The port was ours a moment ago; a restore may need a beat to free it.
async fn bind_again(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// `--checkpoint-prepare` (`quiesce` = true) or `--checkpoint-resume`: signal
/// the runtime through PID 1 and wait until the marker says it is done.
pub fn request(data_dir: &Path, quiesce: bool) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    let marker = data_dir.join(MARKER);
    let sig = if quiesce {
        Signal::SIGUSR1
    } else {
        Signal::SIGUSR2
    };
    kill(nix::unistd::Pid::from_raw(1), sig).context("signalling the runtime (PID 1)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while marker.exists() != quiesce {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the runtime did not {} within 10 s",
                if quiesce {
                    "let go of its sockets"
                } else {
                    "resume"
                }
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
