//! Reaching the runtime of a sandbox that has no network.
//!
//! A checkpointable runsc sandbox runs with `--network=none` (gVisor cannot
//! checkpoint host networking), so its runtime listens on the sandbox's own
//! loopback only. The agent listens on a host port per sandbox and, for each
//! connection, execs `sandpool-runtime --tunnel PORT` inside the sandbox
//! (`runsc exec`), joining the connection to that process's standard input
//! and output. Callers (the agent, the gateway, SDKs) see a plain TCP
//! endpoint. Before a checkpoint every tunnel process is ended, so the
//! checkpoint holds no host descriptors.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    process::Command,
    sync::watch,
    task::JoinSet,
};

/// A listening tunnel; dropping it stops accepting and ends its connections.
pub struct Tunnel {
    pub port: u16,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Tunnel {
    /// Listen on `bind` (port 0: any free port) and run `argv` per connection.
    pub async fn open(bind: SocketAddr, argv: Vec<String>) -> std::io::Result<Tunnel> {
        if argv.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "tunnel needs a command",
            ));
        }
        let listener = TcpListener::bind(bind).await?;
        let port = listener.local_addr()?.port();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, argv, rx));
        Ok(Tunnel {
            port,
            stop,
            task: Some(task),
        })
    }

    /// Stop accepting, end every connection (the process inside gets
    /// SIGTERM through `runsc exec`) and wait until they are gone.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(listener: TcpListener, argv: Vec<String>, stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            _ = until_stopped(&mut stopped) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((sock, _)) => {
                    conns.spawn(serve(sock, argv.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once the tunnel is told to stop.
async fn until_stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// One connection: one process inside the sandbox, bytes copied both ways.
async fn serve(sock: TcpStream, argv: Vec<String>, mut stop: watch::Receiver<bool>) {
    let _ = sock.set_nodelay(true);
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "tunnel exec failed");
            return;
        }
    };
    let (Some(mut cin), Some(mut cout)) = (child.stdin.take(), child.stdout.take()) else {
        return;
    };
    let (mut r, mut w) = sock.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut r, &mut cin).await;
        let _ = cin.shutdown().await;
    });
    let down = async {
        let _ = tokio::io::copy(&mut cout, &mut w).await;
        let _ = w.shutdown().await;
    };
    tokio::select! {
        _ = down => {}
        _ = until_stopped(&mut stop) => {}
    }
    up.abort();
    // SIGTERM first: runsc exec passes it to the process inside, which ends
    // (a SIGKILLed runsc exec would leave it running on dead descriptors)
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// `cat` stands in for the process inside: bytes go through and back.
    #[tokio::test]
    async fn joins_a_connection_to_a_process() {
        let t = Tunnel::open("127.0.0.1:0".parse().unwrap(), vec!["cat".into()])
            .await
            .unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", t.port)).await.unwrap();
        s.write_all(b"hello tunnel").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello tunnel");
        t.close().await;
    }

    #[tokio::test]
    async fn close_ends_open_connections_and_the_listener() {
        let t = Tunnel::open(
            "127.0.0.1:0".parse().unwrap(),
            vec!["sleep".into(), "30".into()],
        )
        .await
        .unwrap();
        let port = t.port;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.close().await;
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0, "connection ended");
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "listener closed"
        );
    }

    #[tokio::test]
    async fn a_failing_command_closes_the_connection() {
        let t = Tunnel::open(
            "127.0.0.1:0".parse().unwrap(),
            vec!["/nonexistent/tunnel".into()],
        )
        .await
        .unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", t.port)).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(s.read_to_end(&mut buf).await.unwrap_or(0), 0);
        t.close().await;
    }
}
