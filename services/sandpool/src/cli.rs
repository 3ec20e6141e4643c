//! The CLI's client commands: pools, claims, exec, release (calls to the
//! scheduler; exec and release through the public gRPC API with an API key).

use anyhow::{Context, bail};
use clap::Subcommand;
use futures_util::StreamExt;
use sandpool_core::{ReleasePolicy, RuntimeClass, Template};
use sandpool_proto::{
    auth::{AuthChannel, ServiceToken},
    v1::{self as pb, scheduler_client::SchedulerClient},
};

/// The scheduler a client command talks to.
#[derive(clap::Args, Debug)]
pub struct SchedulerAddr {
    #[arg(
        long = "scheduler",
        value_name = "SCHEDULER",
        global = true,
        env = "SANDPOOL_SCHEDULER",
        default_value = "http://127.0.0.1:7702"
    )]
    pub(crate) addr: String,
}

#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Pools: `apply`, `list` or `delete`.
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
        #[command(flatten)]
        scheduler: SchedulerAddr,
    },
    /// Claim a sandbox from a pool (prints its id, IP and token).
    Claim {
        #[arg(long)]
        pool: String,
        /// Seconds until the claim expires (0 = never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// Fail instead of cold-starting when the pool has no warm sandbox.
        #[arg(long)]
        pool_only: bool,
        /// Entrypoint to inject (after `--`).
        #[arg(last = true)]
        argv: Vec<String>,
        #[command(flatten)]
        scheduler: SchedulerAddr,
    },
    /// Run a command in a claimed sandbox, streaming its output. With an
    /// API key it goes through the gateway's public gRPC API (as `sandpool
    /// sandbox exec`), else to the scheduler and the sandbox directly.
    Exec {
        claim: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        scheduler: SchedulerAddr,
        #[command(flatten)]
        public: PublicApi,
    },
    /// List claims.
    List {
        #[arg(long, default_value = "")]
        pool: String,
        #[command(flatten)]
        scheduler: SchedulerAddr,
    },
    /// Release a claim (its sandbox is deleted and the pool refills). With
    /// an API key, through the gateway's public gRPC API (Delete).
    Release {
        claim: String,
        #[command(flatten)]
        scheduler: SchedulerAddr,
        #[command(flatten)]
        public: PublicApi,
    },
}

/// The gateway's public gRPC API, for the commands that can use it.
#[derive(clap::Args, Debug)]
pub struct PublicApi {
    /// The gateway (used with an API key).
    #[arg(
        long,
        env = "SANDPOOL_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub(crate) gateway: String,
    /// API key: the command goes through the gateway's public API.
    #[arg(long, env = "SANDPOOL_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
}

impl ClientCmd {
    /// The command through the public API, when it has an API key and can
    /// go that way (exec, release); `Err(self)` otherwise.
    pub async fn run_public(self) -> Result<anyhow::Result<()>, Self> {
        match self {
            ClientCmd::Exec {
                claim,
                command,
                public:
                    PublicApi {
                        gateway,
                        api_key: Some(key),
                    },
                ..
            } => Ok(crate::sandbox_cmd::exec_public(&gateway, &key, &claim, &command).await),
            ClientCmd::Release {
                claim,
                public:
                    PublicApi {
                        gateway,
                        api_key: Some(key),
                    },
                ..
            } => Ok(release_public(&gateway, &key, &claim).await),
            other => Err(other),
        }
    }
}

async fn release_public(gateway: &str, key: &str, claim: &str) -> anyhow::Result<()> {
    let client = sandpool_client::Client::connect(gateway, Some(key)).await?;
    client.delete(claim).await?;
    println!("released {claim}");
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create or update a pool.
    Apply {
        name: String,
        #[arg(long, default_value = "busybox")]
        image: String,
        #[arg(long, default_value_t = 1)]
        buffer_min: u32,
        #[arg(long, default_value_t = 2)]
        buffer_max: u32,
        #[arg(long, default_value_t = 0)]
        pool_min: u32,
        #[arg(long, default_value_t = 64)]
        pool_max: u32,
        /// runc or runsc
        #[arg(long, default_value = "runc")]
        runtime: RuntimeClass,
        #[arg(long, default_value = "")]
        cpu: String,
        #[arg(long, default_value = "")]
        memory: String,
        /// Run the pool's sandboxes as root (default: the unprivileged `user`, uid 61000).
        #[arg(long)]
        run_as_root: bool,
        /// runsc sandboxes without a network (loopback only) that can be
        /// checkpointed, restored and forked (needs --runtime runsc).
        #[arg(long)]
        checkpointable: bool,
        /// The sandboxes' start command, a shell line run with `/bin/sh -c`
        /// beside the runtime (what an E2B template's start command is).
        #[arg(long)]
        start_cmd: Option<String>,
        /// A shell line that exits 0 once a sandbox is ready (an E2B
        /// template's readyCmd): E2B creates wait for it, at most 30 s.
        #[arg(long)]
        ready_cmd: Option<String>,
        /// An environment variable of the sandboxes, `NAME=value`; repeatable.
        #[arg(long = "env", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// What releasing a claim does (OpenSandbox Pool `recycleStrategy.type`):
        /// `Delete` (default) removes the sandbox and the pool refills;
        /// `Restart` resets it (processes, root file system, sessions, mounts,
        /// token) and returns it to the pool with its id and address.
        #[arg(long, default_value = "Delete", value_parser = parse_recycle_strategy)]
        recycle_strategy: ReleasePolicy,
    },
    List,
    /// Delete a pool: its warm sandboxes are removed at once. A pool with
    /// live claims is refused unless `--force`; forced, its claimed
    /// sandboxes keep running until their claims are released or expire.
    Delete {
        name: String,
        /// Delete even while claims of the pool are live (they are kept).
        #[arg(long)]
        force: bool,
    },
}

/// `NAME=value` of `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("{s:?} is not NAME=value")),
    }
}

/// `--recycle-strategy`: an OpenSandbox `recycleStrategy.type`.
fn parse_recycle_strategy(s: &str) -> Result<ReleasePolicy, String> {
    ReleasePolicy::from_recycle_strategy(s).map_err(|e| e.to_string())
}

/// argv as one `sh -c` line (the runtime's `/command` runs a shell line):
/// each word quoted unless it is plainly safe, so `-- sh -c 'a | b'` keeps its words.
pub fn shell_join(argv: &[String]) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(safe) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CLI's token: given, else the local platform's file if readable.
pub fn cli_service_token(given: Option<String>) -> anyhow::Result<ServiceToken> {
    let from_file = || {
        let dir = std::env::var("SANDPOOL_DATA_DIR").unwrap_or_else(|_| "/var/lib/sandpool".into());
        std::fs::read_to_string(std::path::Path::new(&dir).join("service-token"))
            .ok()
            .map(|t| t.trim().to_string())
    };
    Ok(ServiceToken::new(given.or_else(from_file).as_deref())?)
}

pub async fn run(cmd: ClientCmd, token: &ServiceToken) -> anyhow::Result<()> {
    match cmd {
        ClientCmd::Pool { cmd, scheduler } => {
            let s = connect(&scheduler.addr, token).await?;
            match cmd {
                PoolCmd::List => pool_list(s).await,
                PoolCmd::Delete { name, force } => pool_delete(s, &name, force).await,
                apply => pool_apply(s, apply).await,
            }
        }
        ClientCmd::Claim {
            pool,
            ttl,
            pool_only,
            argv,
            scheduler,
        } => {
            let c = connect(&scheduler.addr, token)
                .await?
                .create_claim(pb::ClaimRequest {
                    pool,
                    pool_only,
                    ttl_seconds: ttl,
                    process: Some(pb::InjectRequest {
                        argv,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            print_claim(&c);
            Ok(())
        }
        ClientCmd::Exec {
            claim,
            command,
            scheduler,
            ..
        } => exec(connect(&scheduler.addr, token).await?, claim, &command).await,
        ClientCmd::List { pool, scheduler } => {
            for c in connect(&scheduler.addr, token)
                .await?
                .list_claims(pb::ListClaimsRequest {
                    pool,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .claims
            {
                print_claim(&c);
            }
            Ok(())
        }
        ClientCmd::Release {
            claim, scheduler, ..
        } => {
            connect(&scheduler.addr, token)
                .await?
                .release_claim(pb::ClaimRef {
                    claim_id: claim.clone(),
                })
                .await?;
            println!("released {claim}");
            Ok(())
        }
    }
}

pub(crate) type Scheduler = SchedulerClient<AuthChannel>;

pub(crate) async fn connect(addr: &str, token: &ServiceToken) -> anyhow::Result<Scheduler> {
    let ch = tonic::transport::Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("scheduler address {addr:?}"))?
        .connect()
        .await
        .with_context(|| {
            format!("connecting to the scheduler at {addr} (is `sandpool serve` running?)")
        })?;
    Ok(SchedulerClient::with_interceptor(ch, token.clone()))
}

async fn pool_apply(mut s: Scheduler, cmd: PoolCmd) -> anyhow::Result<()> {
    let PoolCmd::Apply {
        name,
        image,
        buffer_min,
        buffer_max,
        pool_min,
        pool_max,
        runtime,
        cpu,
        memory,
        run_as_root,
        checkpointable,
        start_cmd,
        ready_cmd,
        env,
        recycle_strategy,
    } = cmd
    else {
        bail!("not a pool apply command");
    };
    let t = Template {
        image,
        command: start_cmd
            .map(|c| vec!["/bin/sh".into(), "-c".into(), c])
            .unwrap_or_default(),
        env: env.into_iter().collect(),
        runtime_class: runtime,
        cpu,
        memory,
        run_as_root,
        checkpointable,
        release_policy: recycle_strategy,
        labels: ready_cmd
            .map(|c| (sandpool_core::READY_CMD_LABEL.to_string(), c))
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let p = s
        .apply_pool(pb::Pool {
            name,
            template: Some(sandpool_scheduler::scheduler::template_to_pb(&t)),
            capacity: Some(pb::CapacitySpec {
                buffer_min,
                buffer_max,
                pool_min,
                pool_max,
            }),
            status: None,
        })
        .await?
        .into_inner();
    println!("pool {} applied", p.name);
    Ok(())
}

async fn pool_list(mut s: Scheduler) -> anyhow::Result<()> {
    for p in s
        .list_pools(pb::ListPoolsRequest {})
        .await?
        .into_inner()
        .pools
    {
        let st = p.status.unwrap_or_default();
        let mut line = format!(
            "{}\ttotal={}\tallocated={}\tavailable={}",
            p.name, st.total, st.allocated, st.available
        );
        if !st.image_phase.is_empty() {
            line.push_str(&format!("\timage={}", st.image_phase));
        }
        if !st.message.is_empty() {
            line.push_str(&format!("\tmessage={}", st.message));
        }
        if !st.ready_failure.is_empty() {
            let at = k8s_openapi::jiff::Timestamp::from_second(st.ready_failure_unix_ms / 1000)
                .map(|t| t.to_string())
                .unwrap_or_default();
            line.push_str(&format!("\tnot-ready={} (at {at})", st.ready_failure));
        }
        println!("{line}");
    }
    Ok(())
}

/// `pool delete`: refuse an unknown pool and, without `force`, a pool with
/// live claims; otherwise delete it and say what became of its sandboxes.
async fn pool_delete(mut s: Scheduler, name: &str, force: bool) -> anyhow::Result<()> {
    let unknown = || anyhow::anyhow!("no pool named {name:?} (see `sandpool pool list`)");
    match s.get_pool(pb::PoolRef { name: name.into() }).await {
        Err(e) if e.code() == tonic::Code::NotFound => return Err(unknown()),
        r => r.with_context(|| format!("looking up pool {name}"))?,
    };
    let claims: Vec<String> = s
        .list_claims(pb::ListClaimsRequest {
            pool: name.into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("listing the claims of pool {name}"))?
        .into_inner()
        .claims
        .into_iter()
        .map(|c| c.claim_id)
        .collect();
    if !claims.is_empty() && !force {
        bail!(
            "pool {name} has {} live claim(s): {}; release them first, or pass \
             --force to delete the pool and keep those sandboxes until they are released",
            claims.len(),
            claims.join(", ")
        );
    }
    match s.delete_pool(pb::PoolRef { name: name.into() }).await {
        Err(e) if e.code() == tonic::Code::NotFound => return Err(unknown()),
        r => r.with_context(|| format!("deleting pool {name}"))?,
    };
    println!("pool {name} deleted (its warm sandboxes are removed)");
    if !claims.is_empty() {
        println!(
            "{} claimed sandbox(es) keep running until released: {}",
            claims.len(),
            claims.join(", ")
        );
    }
    Ok(())
}

/// Run `command` through the claim's runtime, streaming its output; exits
/// the process with the command's exit code.
/// An execd output event's text as terminal output: execd sends one event per
/// line without its ending, and a blank line as `"\n"`.
fn as_line(text: &serde_json::Value) -> String {
    match text.as_str().unwrap_or_default() {
        "\n" => "\n".to_string(),
        line => format!("{line}\n"),
    }
}

async fn exec(mut s: Scheduler, claim: String, command: &[String]) -> anyhow::Result<()> {
    let c = s
        .get_claim(pb::ClaimRef { claim_id: claim })
        .await?
        .into_inner();
    let sb = c.sandbox.unwrap_or_default();
    let resp = reqwest::Client::new()
        .post(format!("http://{}:{}/command", sb.ip, sb.runtime_port))
        .header("x-execd-access-token", sb.access_token)
        .json(&serde_json::json!({"command": shell_join(command)}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "exec failed: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut code = 0;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..pos + 2).collect();
            let v: serde_json::Value = serde_json::from_slice(&frame[..pos]).unwrap_or_default();
            match v["type"].as_str() {
                Some("stdout") => print!("{}", as_line(&v["text"])),
                Some("stderr") => eprint!("{}", as_line(&v["text"])),
                Some("error") => {
                    code = v["error"]["evalue"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(1)
                }
                _ => {}
            }
        }
    }
    std::process::exit(code);
}

fn print_claim(c: &pb::Claim) {
    let sb = c.sandbox.clone().unwrap_or_default();
    println!(
        "{}\tpool={}\tsandbox={}\tip={}:{}\ttoken={}\tcold={}\tclaim_us={}",
        c.claim_id,
        c.pool,
        sb.sandbox_id,
        sb.ip,
        sb.runtime_port,
        sb.access_token,
        c.cold_start,
        c.claim_us
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_join_keeps_words() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(super::shell_join(&v(&["echo", "hi"])), "echo hi");
        assert_eq!(
            super::shell_join(&v(&["sh", "-c", "a | b"])),
            "sh -c 'a | b'"
        );
        assert_eq!(
            super::shell_join(&v(&["printf", "it's", ""])),
            "printf 'it'\\''s' ''"
        );
    }

    #[test]
    fn env_flags_are_name_value_pairs() {
        assert_eq!(
            super::parse_env("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert_eq!(super::parse_env("E=").unwrap().1, "");
        for bad in ["novalue", "=x", "A B=1"] {
            assert!(super::parse_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exec_output_lines_get_their_endings_back() {
        let line = |t: &str| super::as_line(&serde_json::json!(t));
        assert_eq!(line("hello"), "hello\n");
        assert_eq!(line("\n"), "\n", "a blank line is sent as \\n");
    }

    #[test]
    fn pool_apply_takes_a_recycle_strategy_and_refuses_noop() {
        use clap::Parser;
        use sandpool_core::ReleasePolicy;
        #[derive(Parser)]
        struct Cmd {
            #[command(subcommand)]
            pool: super::PoolCmd,
        }
        let policy = |args: &[&str]| {
            let argv = ["pool", "apply", "p"].iter().chain(args);
            match Cmd::try_parse_from(argv).map(|c| c.pool) {
                Ok(super::PoolCmd::Apply {
                    recycle_strategy, ..
                }) => Ok(recycle_strategy),
                Ok(_) => panic!("not apply"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(policy(&[]), Ok(ReleasePolicy::Delete));
        assert_eq!(
            policy(&["--recycle-strategy", "Restart"]),
            Ok(ReleasePolicy::Recycle)
        );
        assert_eq!(
            policy(&["--recycle-strategy", "delete"]),
            Ok(ReleasePolicy::Delete)
        );
        let e = policy(&["--recycle-strategy", "Noop"]).unwrap_err();
        assert!(e.contains("Noop is not supported"), "{e}");
    }
}
