//! `sandpool sandbox create|exec|cp|ls|rm`: sandboxes through the gateway's
//! public gRPC API (the `sandpool-client` crate), with an API key, as an
//! agent framework would use them.

use std::collections::HashMap;

use anyhow::{Context, bail};
use clap::Subcommand;
use sandpool_client::{Client, Create, Event, api};
use tokio::io::AsyncWriteExt;

#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    #[command(subcommand)]
    cmd: SandboxCmd,
    /// The gateway (gRPC and REST share its port).
    #[arg(
        long,
        global = true,
        env = "SANDPOOL_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// API key (`sandpool key create`, or the platform key).
    #[arg(long, global = true, env = "SANDPOOL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Subcommand, Debug)]
enum SandboxCmd {
    /// Create a sandbox (from a pool, a template or an image); prints its id.
    Create {
        #[arg(long, conflicts_with_all = ["image", "template"])]
        pool: Option<String>,
        #[arg(long, conflicts_with = "template")]
        image: Option<String>,
        #[arg(long)]
        template: Option<String>,
        /// Seconds until it expires (0: never).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// KEY=VALUE env var of its commands (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// KEY=VALUE metadata (repeatable).
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
    },
    /// Run a command (after `--`), streaming its output; exits with its code.
    Exec {
        id: String,
        /// Pass this process's stdin to the command.
        #[arg(long, short = 'i')]
        stdin: bool,
        /// The call's deadline in seconds: when it passes, the command is
        /// killed and this fails with DEADLINE_EXCEEDED.
        #[arg(long)]
        deadline: Option<f64>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a file: `cp LOCAL ID:PATH` uploads, `cp ID:PATH LOCAL` downloads (`-`: stdout).
    Cp { src: String, dst: String },
    /// List the key's sandboxes.
    Ls,
    /// Delete sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn pairs(v: &[String]) -> anyhow::Result<HashMap<String, String>> {
    v.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{kv:?} is not KEY=VALUE"))
        })
        .collect()
}

pub async fn run(a: SandboxArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.gateway, a.api_key.as_deref()).await?;
    match a.cmd {
        SandboxCmd::Create {
            pool,
            image,
            template,
            timeout,
            env,
            metadata,
        } => {
            let mut c = match (pool, image, template) {
                (_, Some(i), _) => Create::image(&i),
                (_, _, Some(t)) => Create::template(&t),
                (p, _, _) => Create::pool(p.as_deref().unwrap_or("default")),
            }
            .timeout(timeout);
            c.0.env = pairs(&env)?;
            c.0.metadata = pairs(&metadata)?;
            println!("{}", client.create(c).await?.id());
            Ok(())
        }
        SandboxCmd::Exec {
            id,
            stdin,
            deadline,
            command,
        } => {
            let deadline = deadline
                .map(std::time::Duration::try_from_secs_f64)
                .transpose()
                .context("--deadline must be a positive number of seconds")?;
            let code = exec(&client, &id, stdin, deadline, &command).await?;
            std::process::exit(code);
        }
        SandboxCmd::Cp { src, dst } => cp(&client, &src, &dst).await,
        SandboxCmd::Ls => {
            for s in client.list().await? {
                let state = api::SandboxState::try_from(s.state).map_or("UNKNOWN", |st| {
                    st.as_str_name().trim_start_matches("SANDBOX_STATE_")
                });
                println!("{}\t{}\t{}", s.id, state, s.pool);
            }
            Ok(())
        }
        SandboxCmd::Rm { ids } => {
            for id in ids {
                client.delete(&id).await?;
                println!("deleted {id}");
            }
            Ok(())
        }
    }
}

/// `sandpool exec ID -- cmd` with an API key: `command` in sandbox `id`
/// through the public API; exits with its code.
pub async fn exec_public(
    gateway: &str,
    key: &str,
    id: &str,
    command: &[String],
) -> anyhow::Result<()> {
    let client = Client::connect(gateway, Some(key)).await?;
    let code = exec(&client, id, false, None, command).await?;
    std::process::exit(code);
}

/// Run `command` in sandbox `id`; its exit code (128+signal when killed).
/// Ctrl-C is passed on as SIGINT.
async fn exec(
    client: &Client,
    id: &str,
    stdin: bool,
    deadline: Option<std::time::Duration>,
    command: &[String],
) -> anyhow::Result<i32> {
    let sb = client.get(id).await?;
    let start = api::ExecStart {
        command: crate::cli::shell_join(command),
        stdin,
        ..Default::default()
    };
    let mut s = sb.exec_within(start, deadline).await?;
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(4);
    if stdin {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let chunk = match input.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(buf[..n].to_vec()),
                };
                let last = chunk.is_none();
                if in_tx.send(chunk).await.is_err() || last {
                    return;
                }
            }
        });
    }
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    loop {
        tokio::select! {
            ev = s.next() => match ev? {
                Some(Event::Stdout(b)) => out.write_all(&b).await?,
                Some(Event::Stderr(b)) => err.write_all(&b).await?,
                Some(Event::Exited(e)) => {
                    out.flush().await?;
                    return Ok(e.exit_code);
                }
                None => bail!("the exec stream ended before the command exited"),
            },
            Some(chunk) = in_rx.recv() => match chunk {
                Some(b) => s.write_stdin(&b).await?,
                None => s.close_stdin().await?,
            },
            _ = tokio::signal::ctrl_c() => s.signal(2).await?,
        }
    }
}

/// `ID:PATH` → (id, path).
fn remote(s: &str) -> Option<(&str, &str)> {
    s.split_once(':')
        .filter(|(id, p)| !id.is_empty() && p.starts_with('/'))
}

async fn cp(client: &Client, src: &str, dst: &str) -> anyhow::Result<()> {
    match (remote(src), remote(dst)) {
        (None, Some((id, path))) => {
            let n = client
                .get(id)
                .await?
                .upload_file(src.as_ref(), path)
                .await?;
            eprintln!("sandpool: wrote {n} bytes to {id}:{path}");
        }
        (Some((id, path)), None) => {
            let sb = client.get(id).await?;
            if dst == "-" {
                sb.download(path, &mut tokio::io::stdout()).await?;
            } else {
                let mut f = tokio::fs::File::create(dst)
                    .await
                    .with_context(|| format!("creating {dst}"))?;
                sb.download(path, &mut f).await?;
            }
        }
        _ => bail!("cp copies between a local path and ID:/absolute/path"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_and_pairs_parse() {
        assert_eq!(remote("sb-1:/tmp/x"), Some(("sb-1", "/tmp/x")));
        assert_eq!(remote("./local:file"), None);
        assert_eq!(remote("/abs/path"), None);
        assert_eq!(
            pairs(&["A=1".into(), "B=x=y".into()]).expect("pairs"),
            HashMap::from([("A".into(), "1".into()), ("B".into(), "x=y".into())])
        );
        assert!(pairs(&["nope".into()]).is_err());
    }
}
