//! Claim latency of the standalone platform (root; not a test): from the
//! OpenSandbox API call to the first successful exec in the sandbox, warm
//! (pool) vs cold (no pool: a container started for the request), at
//! concurrency 1 and 16, all in one run against one `sandpool serve`.
//!
//!     ./target/release/bench-claim --sandpool target/release/sandpool --rounds 6

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use sandpool_integration::{Summary, free_port, summarize};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// The `sandpool` binary.
    #[arg(long)]
    sandpool: PathBuf,
    /// Static runtime for sandboxes (default: next to `sandpool`).
    #[arg(long)]
    runtime_bin: Option<PathBuf>,
    /// Rounds per scenario (bounded: at most 50).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
}

struct Platform(std::process::Child);
impl Drop for Platform {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            terminate(pid);
        }
        let _ = self.0.wait();
    }
}

fn terminate(pid: i32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

const KEY: &str = "bench-key";

/// create → endpoint → exec `true`; returns (latency, claim id).
async fn claim_and_exec(http: &reqwest::Client, base: &str, body: &Value) -> anyhow::Result<(Duration, String)> {
    let t = Instant::now();
    let r = http.post(format!("{base}/v1/sandboxes")).header("OPEN-SANDBOX-API-KEY", KEY).json(body).send().await?;
    if r.status().as_u16() != 202 {
        bail!("create: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    let id = r.json::<Value>().await?["id"].as_str().unwrap_or_default().to_string();
    let ep: Value = http.get(format!("{base}/v1/sandboxes/{id}/endpoints/44772")).header("OPEN-SANDBOX-API-KEY", KEY).send().await?.json().await?;
    let endpoint = ep["endpoint"].as_str().context("endpoint")?;
    let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"].as_str().unwrap_or_default();
    let resp = http.post(format!("http://{endpoint}/command")).header("X-EXECD-ACCESS-TOKEN", token).json(&json!({"command": "true"})).send().await?;
    let mut s = resp.bytes_stream();
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c?);
    }
    if !all.windows(18).any(|w| w == b"execution_complete") {
        bail!("exec did not complete: {}", String::from_utf8_lossy(&all));
    }
    Ok((t.elapsed(), id))
}

async fn available(http: &reqwest::Client, base: &str) -> u64 {
    let v: Value = match http.get(format!("{base}/v1/pools/bench")).header("OPEN-SANDBOX-API-KEY", KEY).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    v["status"]["available"].as_u64().unwrap_or(0)
}

/// `wait_for`: before each round, wait until the pool has this many warm
/// sandboxes (0 = don't wait).
async fn scenario(http: &reqwest::Client, base: &str, body: &Value, conc: usize, rounds: usize, wait_for: u64) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        if wait_for > 0 {
            let t = Instant::now();
            while available(http, base).await < wait_for {
                if t.elapsed() > Duration::from_secs(120) {
                    bail!("pool did not refill");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let futs = (0..conc).map(|_| claim_and_exec(http, base, body));
        let res = futures_util::future::join_all(futs).await;
        let mut ids = Vec::new();
        for r in res {
            let (d, id) = r?;
            out.push(d);
            ids.push(id);
        }
        let dels = ids.iter().map(|id| http.delete(format!("{base}/v1/sandboxes/{id}")).header("OPEN-SANDBOX-API-KEY", KEY).send());
        for r in futures_util::future::join_all(dels).await {
            if r?.status().as_u16() != 204 {
                bail!("delete failed");
            }
        }
    }
    Ok(out)
}

fn row(name: &str, s: &Summary, base: &Summary) -> String {
    format!("| {name} | {} | {:.2} | {:.2} | {:.2} | {:.0}× |", s.n, s.p50 / 1000.0, s.p90 / 1000.0, s.p99 / 1000.0, base.p50 / s.p50)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rounds = a.rounds.clamp(1, 50);
    let runtime = a.runtime_bin.clone().unwrap_or_else(|| a.sandpool.with_file_name("sandpool-runtime-static"));
    let port = free_port()?;
    let data = std::env::temp_dir().join(format!("spbench-claim-{}", std::process::id()));
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(&a.sandpool)
        .args(["serve", "--cleanup-on-exit", "--listen", &format!("127.0.0.1:{port}"), "--api-key", KEY, "--pool", "bench:busybox:16:16:0:80"])
        .args(["--bridge", "spbench1", "--subnet", "10.213.251.0/24", "--agent-listen", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--scheduler-listen", &format!("127.0.0.1:{}", free_port()?)])
        .arg("--data-dir")
        .arg(&data)
        .arg("--runtime-bin")
        .arg(&runtime)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sandpool serve")?;
    let _p = Platform(child);
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let t = Instant::now();
    while available(&http, &base).await < 16 {
        if t.elapsed() > Duration::from_secs(120) {
            bail!("platform did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warm = json!({"image": {"uri": "busybox"}, "timeout": 600, "entrypoint": ["tail", "-f", "/dev/null"], "extensions": {"poolRef": "bench"}});
    let cold = json!({"image": {"uri": "busybox"}, "timeout": 600, "entrypoint": ["tail", "-f", "/dev/null"], "resourceLimits": {"cpu": "1", "memory": "256Mi"}});
    eprintln!("cold c=1");
    let cold1 = summarize(&scenario(&http, &base, &cold, 1, rounds * 2, 0).await?);
    eprintln!("warm c=1, pool full before each claim");
    let warm1 = summarize(&scenario(&http, &base, &warm, 1, rounds * 4, 16).await?);
    eprintln!("warm c=1, back to back");
    let warm1b = summarize(&scenario(&http, &base, &warm, 1, rounds * 4, 1).await?);
    eprintln!("cold c=16");
    let cold16 = summarize(&scenario(&http, &base, &cold, 16, rounds.div_ceil(2), 0).await?);
    eprintln!("warm c=16");
    let warm16 = summarize(&scenario(&http, &base, &warm, 16, rounds, 16).await?);
    drop(_p); // SIGTERM; --cleanup-on-exit deletes every sandbox before exiting
    let _ = std::fs::remove_dir_all(&data);
    let _ = Command::new("ip").args(["link", "del", "spbench1"]).status();
    println!("| scenario | n | p50 ms | p90 ms | p99 ms | cold p50 / this p50 |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("cold start, concurrency 1 (baseline)", &cold1, &cold1));
    println!("{}", row("warm claim, concurrency 1 (pool refilled between claims)", &warm1, &cold1));
    println!("{}", row("warm claim, concurrency 1 (back to back: refills compete for the CPUs)", &warm1b, &cold1));
    println!("{}", row("cold start, concurrency 16 (baseline)", &cold16, &cold16));
    println!("{}", row("warm claim, concurrency 16 (16 at once from a full pool)", &warm16, &cold16));
    Ok(())
}
