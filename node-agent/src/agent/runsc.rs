//! The runtime tunnels of network-less (runsc) sandboxes, and the runtime
//! commands run inside a sandbox through `runsc exec`.

use std::{net::Ipv4Addr, time::Duration};

use crate::{
    error::{AgentError, Result},
    spec,
};

use super::{Agent, run_checked};

impl Agent {
    /// Listen for sandbox `id`'s runtime on 127.0.0.1:`port` (0: any port).
    pub(super) async fn open_tunnel(&self, id: &str, port: u16, as_root: bool) -> Result<u16> {
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
        self.tunnels.lock().insert(id.to_string(), t);
        Ok(port)
    }

    /// `runsc exec` of the runtime binary with `args` in network-less sandbox `id`.
    pub(super) fn runtime_exec_argv(&self, id: &str, as_root: bool, args: &[&str]) -> Vec<String> {
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
    pub(super) async fn runtime_sockets(
        &self,
        id: &str,
        as_root: bool,
        quiesce: bool,
    ) -> Result<()> {
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
    pub(super) async fn close_tunnel(&self, id: &str) -> bool {
        let t = self.tunnels.lock().remove(id);
        match t {
            Some(t) => {
                t.close().await;
                true
            }
            None => false,
        }
    }

    /// Host ports of the open runtime tunnels (network-less sandboxes).
    pub fn tunnel_ports(&self) -> Vec<u16> {
        self.tunnels.lock().values().map(|t| t.port).collect()
    }
}
