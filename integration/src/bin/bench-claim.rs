//! Claim latency of the standalone platform (root; not a test): from the
//! OpenSandbox API call to the first successful exec in the sandbox, warm
//! (pool) vs cold (no pool: a container started for the request), at
//! concurrency 1 and 16, all in one run against one `sandpool serve`.
//!
//!     ./target/release/bench-claim --sandpool target/release/sandpool --rounds 6

use std::time::Duration;

use clap::Parser;
use sandpool_integration::{
    Summary,
    platform::{Api, Binaries, Platform, PlatformSpec, cold_claim, warm_claim},
    summarize,
};
use serde_json::Value;

#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    bin: Binaries,
    /// Rounds per scenario (bounded: at most 50).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
}

const POOL: &str = "bench";
const REFILL_TIMEOUT: Duration = Duration::from_secs(120);

/// `wait_for`: before each round, wait until the pool has this many warm
/// sandboxes (0 = don't wait).
async fn scenario(
    api: &Api,
    body: &Value,
    conc: usize,
    rounds: usize,
    wait_for: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..rounds {
        if wait_for > 0 {
            api.wait_available(POOL, wait_for, REFILL_TIMEOUT).await?;
        }
        let futs = (0..conc).map(|_| api.claim_and_exec(body));
        let res = futures_util::future::join_all(futs).await;
        let mut ids = Vec::new();
        for r in res {
            let (d, id) = r?;
            out.push(d);
            ids.push(id);
        }
        for r in futures_util::future::join_all(ids.iter().map(|id| api.delete(id))).await {
            r?;
        }
    }
    Ok(out)
}

fn row(name: &str, s: &Summary, base: &Summary) -> String {
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.0}× |",
        s.n,
        s.p50 / 1000.0,
        s.p90 / 1000.0,
        s.p99 / 1000.0,
        base.p50 / s.p50
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rounds = a.rounds.clamp(1, 50);
    let spec = PlatformSpec {
        sandpool: a.bin.sandpool,
        runtime_bin: a.bin.runtime_bin,
        name: "spbench-claim".into(),
        bridge: "spbench1".into(),
        subnet: "10.213.251.0/24".into(),
        pools: vec![format!("{POOL}:busybox:16:16:0:80")],
        max_sandboxes: None,
    };
    let mut platform = Platform::start(&spec)?;
    platform
        .wait_ready(POOL, 16, Duration::from_secs(120))
        .await?;
    let api = platform.api().clone();
    let (warm, cold) = (warm_claim(POOL), cold_claim());
    eprintln!("cold c=1");
    let cold1 = summarize(&scenario(&api, &cold, 1, rounds * 2, 0).await?);
    eprintln!("warm c=1, pool full before each claim");
    let warm1 = summarize(&scenario(&api, &warm, 1, rounds * 4, 16).await?);
    eprintln!("warm c=1, back to back");
    let warm1b = summarize(&scenario(&api, &warm, 1, rounds * 4, 1).await?);
    eprintln!("cold c=16");
    let cold16 = summarize(&scenario(&api, &cold, 16, rounds.div_ceil(2), 0).await?);
    eprintln!("warm c=16");
    let warm16 = summarize(&scenario(&api, &warm, 16, rounds, 16).await?);
    drop(platform); // SIGTERM; --cleanup-on-exit deletes every sandbox, then data dir and bridge go
    println!("| scenario | n | p50 ms | p90 ms | p99 ms | cold p50 / this p50 |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        row("cold start, concurrency 1 (baseline)", &cold1, &cold1)
    );
    println!(
        "{}",
        row(
            "warm claim, concurrency 1 (pool refilled between claims)",
            &warm1,
            &cold1
        )
    );
    println!(
        "{}",
        row(
            "warm claim, concurrency 1 (back to back: refills compete for the CPUs)",
            &warm1b,
            &cold1
        )
    );
    println!(
        "{}",
        row("cold start, concurrency 16 (baseline)", &cold16, &cold16)
    );
    println!(
        "{}",
        row(
            "warm claim, concurrency 16 (16 at once from a full pool)",
            &warm16,
            &cold16
        )
    );
    Ok(())
}
