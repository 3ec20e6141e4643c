//! The standard benchmark scenarios of the standalone platform in one run
//! (root; not a test): one `sandpool serve` with a busybox pool, seven
//! scenarios, a markdown table and a CDF plot of the claim latency.
//!
//!     sudo ./target/release/bench-suite --sandpool target/release/sandpool --rounds 20
//!
//! Writes `<out>/bench-suite.md` (also printed) and `<out>/claim-latency.svg`;
//! with `--churn`, only the churn scenarios (`churn_bench`) into `<out>/churn.md`;
//! exits non-zero when a scenario failed. Every load is bounded in count and
//! time, and traffic stays on loopback and the platform's own bridge.

use std::{
    collections::HashMap,
    fmt::Write as _,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use futures_util::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use sandpool_integration::{
    Summary, churn_bench,
    platform::{Api, Binaries, Platform, PlatformSpec, cold_claim, warm_claim},
    plot::cdf_svg,
    recycle_bench::{self, RecycleVsCreate},
    rss_kib, status_kib, summarize, summarize_values,
};
use sandpool_node_agent::spec::RUNTIME_PATH_IN_SANDBOX;

#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    bin: Binaries,
    /// Claims of the warm and cold scenarios (bounded: 1 to 50).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Where `bench-suite.md` and `claim-latency.svg` go.
    #[arg(long, default_value = "target/bench-suite")]
    out: PathBuf,
    /// Run only the churn scenarios (CPU per create, PSS per warm sandbox,
    /// warm claims while refills run; runc and runsc) and write `churn.md`.
    #[arg(long)]
    churn: bool,
}

const POOL: &str = "bench";
const BUFFER_MIN: u64 = 16;
const BUFFER_MAX: u64 = 16;
const POOL_MAX: u64 = 64;
const CONCURRENCY: usize = 8;
const SUSTAINED_MAX: usize = 60;
const EXEC_ROUNDS: usize = 200;
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const REFILL_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound of one scenario; claims it leaves behind when cut off are deleted
/// by the platform's `--cleanup-on-exit`.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(600);
const MIB: f64 = 1024.0;

struct Scenario {
    /// For progress and errors.
    name: &'static str,
    /// For the table: the name and what it measures.
    label: &'static str,
}

/// A scenario named `$name`, whose table label is `$name` followed by `$what`.
macro_rules! scenario {
    ($name:literal, $what:literal) => {
        Scenario {
            name: $name,
            label: concat!($name, $what),
        }
    };
}

const WARM: Scenario = scenario!("warm claim", " (pool `bench`, sequential)");
const COLD: Scenario = scenario!("cold start", " (no pool, busybox, sequential)");
const SUSTAINED: Scenario = scenario!(
    "sustained claims",
    ", concurrency 8 (create → exec → delete)"
);
const EXEC: Scenario = scenario!("exec round trip", " (execd `POST /command`, `true`)");
const RUNTIME_RSS: Scenario = scenario!("runtime idle RSS", " per warm sandbox (init + server)");
const SERVE_RSS: Scenario = scenario!(
    "node agent RSS",
    " (`sandpool serve`: node agent + scheduler + gateway)"
);
const REFILL: Scenario = scenario!("pool refill", " (drain `bench`, back to bufferMin)");
const RECYCLE_RUNC: Scenario = scenario!(
    "recycle vs create, runc",
    " (DELETE → warm again; p50–p99 of recycle)"
);
const RECYCLE_RUNSC: Scenario = scenario!(
    "recycle vs create, runsc",
    " (DELETE → warm again; p50–p99 of recycle)"
);

#[allow(clippy::too_many_lines)] // a benchmark's main: one measured sequence, read top to bottom
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rounds = a.rounds.clamp(1, 50);
    if a.churn {
        return churn(a.bin, rounds, &a.out).await;
    }
    let sustained_n = (rounds * 3).min(SUSTAINED_MAX);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let header = Header::now(rounds);

    let spec = PlatformSpec {
        sandpool: a.bin.sandpool,
        runtime_bin: a.bin.runtime_bin,
        name: "spbench-suite".into(),
        bridge: "spbench2".into(),
        subnet: "10.213.252.0/24".into(),
        pools: [format!(
            "{POOL}:busybox:{BUFFER_MIN}:{BUFFER_MAX}:0:{POOL_MAX}"
        )]
        .into_iter()
        .chain(recycle_bench::pool_flags("runc"))
        .chain(recycle_bench::pool_flags("runsc"))
        .collect(),
        max_sandboxes: None,
    };
    let mut platform = Platform::start(&spec)?;
    // On Ctrl-C return (dropping the guard stops the platform and cleans up).
    let Outcomes {
        warm,
        cold,
        sustained,
        exec,
        runtime_rss,
        serve_rss,
        refill,
        recycle,
        platform_exit,
    } = tokio::select! {
        o = run_all(&mut platform, rounds, sustained_n) => o?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    drop(platform);

    let mut table = Table::default();
    let ratio = match (&warm, &cold) {
        (Ok(w), Ok(c)) => Some(c.summary.p50 / w.summary.p50),
        _ => None,
    };
    table.add(&WARM, &warm, |w| {
        let vs = ratio.map_or_else(
            || "warm vs cold: n/a".to_string(),
            |r| format!("warm vs cold: {r:.1}×"),
        );
        (
            w.summary.n,
            latency_cols(&w.summary),
            format!("{vs}{}", w.fallback_note()),
        )
    });
    table.add(&COLD, &cold, |c| {
        (c.summary.n, latency_cols(&c.summary), "baseline".into())
    });
    table.add(&SUSTAINED, &sustained, |s| {
        let rate = s.latencies.summary.n as f64 / s.wall.as_secs_f64();
        let result = format!(
            "{rate:.1} claims/s ({} in {:.1} s){}",
            s.latencies.summary.n,
            s.wall.as_secs_f64(),
            s.latencies.fallback_note()
        );
        (
            s.latencies.summary.n,
            latency_cols(&s.latencies.summary),
            result,
        )
    });
    table.add(&EXEC, &exec, |e| {
        (
            e.n,
            latency_cols(e),
            format!("{:.0} execs/s sequential", 1e6 / e.mean),
        )
    });
    table.add(&RUNTIME_RSS, &runtime_rss, |r| {
        let (total, init, server) = r.summaries();
        let cols = [total.p50, total.p95, total.p99].map(|kib| mib(kib / MIB));
        let result = format!(
            "median {} per sandbox (server {} + init {})",
            mib(total.p50 / MIB),
            mib(server.p50 / MIB),
            mib(init.p50 / MIB)
        );
        (total.n, cols, result)
    });
    table.add(&SERVE_RSS, &serve_rss, |s| {
        let containerd = s
            .containerd_kib
            .map(|k| {
                format!(
                    "; private containerd {} (separate process)",
                    mib(k as f64 / MIB)
                )
            })
            .unwrap_or_default();
        (
            1,
            dashes(),
            format!(
                "{} (peak {}){containerd}",
                mib(s.rss_kib as f64 / MIB),
                mib(s.peak_kib as f64 / MIB)
            ),
        )
    });
    table.add(&REFILL, &refill, |r| {
        let secs = r.elapsed.as_secs_f64();
        (
            r.refilled as usize,
            dashes(),
            format!(
                "{:.2} sandboxes/s ({} in {secs:.1} s)",
                r.refilled as f64 / secs,
                r.refilled
            ),
        )
    });

    for (s, r) in [&RECYCLE_RUNC, &RECYCLE_RUNSC].into_iter().zip(&recycle) {
        table.add(s, r, |r| {
            let t = &r.recycle.turnover;
            (t.n, latency_cols(t), recycle_bench::result_cell(r, t.n))
        });
    }

    let ratio_line = match (ratio, &warm, &cold) {
        (Some(r), Ok(w), Ok(c)) => format!(
            "**Warm claim vs cold start (p50): {r:.1}× faster** ({} vs {}).",
            ms(w.summary.p50),
            ms(c.summary.p50)
        ),
        _ => "Warm claim vs cold start: n/a (a scenario failed).".into(),
    };
    let report = format!(
        "{}\n{}\n{ratio_line}\n\n{NOTES}",
        header.markdown(sustained_n),
        table.markdown()
    );
    print!("{report}");
    let md = a.out.join("bench-suite.md");
    std::fs::write(&md, &report).with_context(|| format!("writing {}", md.display()))?;

    let to_ms = |l: &Latencies| {
        l.samples
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect::<Vec<f64>>()
    };
    let (warm_ms, cold_ms) = (
        warm.as_ref().map(to_ms).unwrap_or_default(),
        cold.as_ref().map(to_ms).unwrap_or_default(),
    );
    let labels = [
        latency_label("warm claim", &warm),
        latency_label("cold start", &cold),
    ];
    let svg = cdf_svg(
        "Claim latency, create → first exec (CDF)",
        &[
            (labels[0].as_str(), &warm_ms, "#1f77b4"),
            (labels[1].as_str(), &cold_ms, "#d62728"),
        ],
    );
    let plot = a.out.join("claim-latency.svg");
    std::fs::write(&plot, svg).with_context(|| format!("writing {}", plot.display()))?;
    eprintln!("wrote {} and {}", md.display(), plot.display());

    let mut failures = table.failures;
    failures.extend(platform_exit.map(|e| format!("platform: {e:#}")));
    if !failures.is_empty() {
        bail!(
            "{} problem(s) in the benchmark run:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// The churn scenarios alone, on platforms of their own (`--churn`).
async fn churn(bin: Binaries, rounds: usize, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let header = Header::now(rounds);
    let spec = PlatformSpec {
        sandpool: bin.sandpool.clone(),
        runtime_bin: bin.runtime_bin.clone(),
        name: "spbench-churn".into(),
        bridge: "spbench3".into(),
        subnet: "10.213.250.0/24".into(),
        pools: ["runc", "runsc"]
            .map(churn_bench::pool_flag)
            .into_iter()
            .collect(),
        max_sandboxes: None,
    };
    let mut md = format!(
        "## Churn (`bench-suite --churn`), {}\n\n- machine: {}\n- commit: {}\n\
         - pools `churn-runc`, `churn-runsc`: busybox, buffer {b}–{b}; {rounds} claims each way\n\n",
        header.date,
        header.machine,
        header.commit,
        b = churn_bench::BUFFER
    );
    let mut platform = Platform::start(&spec)?;
    for rt in ["runc", "runsc"] {
        let _spinner = spinner(&format!("filling churn-{rt}"));
        platform
            .wait_ready(
                &churn_bench::pool_name(rt),
                churn_bench::BUFFER,
                READY_TIMEOUT,
            )
            .await?;
    }
    let under_refill = churn_rows(&platform, rounds, &mut md).await;
    let exit = platform.check_running().err();
    let plot = out.join("churn-cdf.svg");
    std::fs::write(&plot, churn_cdf_svg(&under_refill))
        .with_context(|| format!("writing {}", plot.display()))?;
    drop(platform);
    flat_cost_sweep(&bin, rounds, &mut md).await;
    print!("{md}");
    let path = out.join("churn.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    if let Some(e) = exit {
        bail!("platform: {e:#}");
    }
    Ok(())
}

/// The CDF plot of warm claims at rest and while refills run, per runtime.
fn churn_cdf_svg(under_refill: &[(&str, churn_bench::UnderRefill)]) -> String {
    let to_ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let samples: Vec<(String, Vec<f64>, &str)> = under_refill
        .iter()
        .zip([("#1f77b4", "#ff7f0e"), ("#2ca02c", "#d62728")])
        .flat_map(|((rt, u), (rest, busy))| {
            [
                (
                    format!("{rt}, at rest (n={})", u.at_rest.len()),
                    to_ms(&u.at_rest),
                    rest,
                ),
                (
                    format!("{rt}, while refills run (n={})", u.refilling.len()),
                    to_ms(&u.refilling),
                    busy,
                ),
            ]
        })
        .collect();
    let series: Vec<(&str, &[f64], &str)> = samples
        .iter()
        .map(|(l, v, c)| (l.as_str(), v.as_slice(), *c))
        .collect();
    cdf_svg(
        "Warm claim → first exec, at rest vs while refills run (CDF)",
        &series,
    )
}

/// PSS per warm sandbox, CPU per create and warm claims while refills run,
/// runc and runsc, appended to `md`; returns the claims of the last.
async fn churn_rows(
    platform: &Platform,
    rounds: usize,
    md: &mut String,
) -> Vec<(&'static str, churn_bench::UnderRefill)> {
    let mut under_refill = Vec::new();
    let api = platform.api().clone();
    let dir = platform.data_dir().display().to_string();
    let pss = churn_bench::sandbox_pss(platform.pid(), &dir);
    md.push_str(
        "| runtime | warm sandboxes | PSS per warm sandbox p50 (shim + everything under it) | warm sandboxes per GiB |\n\
         |---|---:|---:|---:|\n",
    );
    for rt in ["runc", "runsc"] {
        let s = summarize_values(pss.get(rt).map_or(&[][..], Vec::as_slice));
        let per_gib = MIB * MIB / s.p50;
        let _ = writeln!(
            md,
            "| {rt} | {} | {} | {per_gib:.0} |",
            s.n,
            mib(s.p50 / MIB)
        );
    }
    for rt in ["runc", "runsc"] {
        let cpu = churn_bench::create_cpu(&api, platform.pid(), platform.data_dir(), rt).await;
        let _ = writeln!(
            md,
            "\nCPU per create, {rt} ({} creates):\n",
            churn_bench::BUFFER
        );
        match cpu {
            Ok(split) => {
                let (rows, total) = split.per_create_ms(churn_bench::BUFFER);
                md.push_str("| part | CPU ms per create |\n|---|---:|\n");
                for (label, v) in rows {
                    let _ = writeln!(md, "| {label} | {v:.1} |");
                }
                let _ = writeln!(md, "| **total** | **{total:.1}** |");
            }
            Err(e) => {
                let _ = writeln!(md, "failed: {e:#}");
            }
        }
    }
    for rt in ["runc", "runsc"] {
        let _ = writeln!(
            md,
            "\nWarm claims (claim → first `true`), {rt}: at rest vs while refills run:\n"
        );
        match churn_bench::claims_under_refill(&api, rt, rounds).await {
            Ok(u) => {
                md.push_str(&churn_bench::cdf_table(&u));
                let _ = writeln!(
                    md,
                    "\n{} of {} back-to-back claims fell back to cold starts.",
                    u.cold,
                    u.refilling.len()
                );
                under_refill.push((rt, u));
            }
            Err(e) => {
                let _ = writeln!(md, "failed: {e:#}");
            }
        }
    }
    under_refill
}

/// Warm claim p50 on a platform holding 10 … 300 warm runc sandboxes (one
/// platform per point; the sweep stops at the first point that fails).
async fn flat_cost_sweep(bin: &Binaries, rounds: usize, md: &mut String) {
    md.push_str(
        "\nFlat cost: warm claims on a full pool of N warm sandboxes (runc, one platform per N):\n\n\
         | warm sandboxes | n | p50 | p95 | p50 vs N=10 |\n|---:|---:|---:|---:|---:|\n",
    );
    let mut base = None;
    for n in churn_bench::SWEEP {
        let spec = PlatformSpec {
            sandpool: bin.sandpool.clone(),
            runtime_bin: bin.runtime_bin.clone(),
            name: format!("spbench-flat{n}"),
            bridge: "spbench4".into(),
            subnet: "10.213.244.0/22".into(),
            pools: vec![churn_bench::sweep_pool_flag(n)],
            max_sandboxes: Some(n as u32 + 32),
        };
        let measured = async {
            let mut platform = Platform::start(&spec)?;
            {
                let _spinner = spinner(&format!("filling {n} warm sandboxes"));
                platform
                    .wait_ready(churn_bench::SWEEP_POOL, n, Duration::from_secs(300))
                    .await?;
            }
            churn_bench::claims_at(platform.api(), n, rounds).await
        };
        match measured.await {
            Ok(s) => {
                let vs = s.vs_baseline(base.as_ref());
                base.get_or_insert(s);
                let _ = writeln!(
                    md,
                    "| {n} | {} | {} | {} | {vs} |",
                    s.n,
                    ms(s.p50),
                    ms(s.p95)
                );
            }
            Err(e) => {
                let one_line = format!("{e:#}").replace('\n', " ");
                let _ = writeln!(md, "| {n} | 0 | – | – | failed: {one_line} |");
                break;
            }
        }
    }
}

struct Outcomes {
    warm: anyhow::Result<Latencies>,
    cold: anyhow::Result<Latencies>,
    sustained: anyhow::Result<Sustained>,
    exec: anyhow::Result<Summary>,
    runtime_rss: anyhow::Result<RuntimeRss>,
    serve_rss: anyhow::Result<ServeRss>,
    refill: anyhow::Result<Refill>,
    /// runc, then runsc.
    recycle: [anyhow::Result<RecycleVsCreate>; 2],
    /// Set when `sandpool serve` is gone by the end.
    platform_exit: Option<anyhow::Error>,
}

/// Wait for the platform, then every scenario in turn (a failed one doesn't stop the others).
async fn run_all(
    platform: &mut Platform,
    rounds: usize,
    sustained_n: usize,
) -> anyhow::Result<Outcomes> {
    {
        let _spinner = spinner("starting platform");
        platform.wait_ready(POOL, BUFFER_MIN, READY_TIMEOUT).await?;
    }
    let api = platform.api().clone();
    Ok(Outcomes {
        warm: run(
            &WARM,
            sequential_claims(&api, &WARM, &warm_claim(POOL), rounds),
        )
        .await,
        cold: run(&COLD, sequential_claims(&api, &COLD, &cold_claim(), rounds)).await,
        sustained: run(&SUSTAINED, sustained_claims(&api, sustained_n)).await,
        exec: run(&EXEC, exec_round_trips(&api, EXEC_ROUNDS)).await,
        runtime_rss: run(&RUNTIME_RSS, idle_runtime_rss(&api, platform.data_dir())).await,
        serve_rss: run(&SERVE_RSS, async { serve_rss(platform.pid()) }).await,
        refill: run(&REFILL, pool_refill(&api)).await,
        recycle: [
            run(
                &RECYCLE_RUNC,
                recycle_bench::recycle_vs_create(&api, "runc", rounds),
            )
            .await,
            run(
                &RECYCLE_RUNSC,
                recycle_bench::recycle_vs_create(&api, "runsc", rounds),
            )
            .await,
        ],
        platform_exit: platform.check_running().err(),
    })
}

const NOTES: &str = "\
Notes:
- Claim latency (warm, cold, sustained) = `POST /v1/sandboxes` → endpoint lookup → first `true` over execd \
completed; the `DELETE` after each claim is not timed. Warm and cold claims start from a full pool, so refills \
don't compete with them.
- Sustained: claims/s = claims / wall time of the whole run, each claim create → exec → delete, 8 in flight; \
p50–p99 are per-claim latency under that load. Cold fallbacks (claims that found the pool empty and started a \
container) are counted from the platform's metrics.
- Runtime RSS: each sandbox runs the static runtime twice: PID 1 is its init fork (reaps orphans, forwards \
signals), the API server is that init's child. Per sandbox = init + server VmRSS, over the idle warm sandboxes \
of a full pool.
- Node agent RSS: standalone mode runs node agent, scheduler and gateway in one `sandpool serve` process, so the \
number covers all three; its private containerd is a separate process (shown separately), shims are not counted. \
Measured at rest after the load scenarios; peak = VmHWM.
- Recycle vs create: pools `turn-<runtime>-del` and `turn-<runtime>-rec` (busybox, bufferMin 0, bufferMax 1, \
poolMin 1) differ only in their release policy. Each round claims the one warm sandbox, runs `true`, then times \
the `DELETE` and the time until the pool has a warm sandbox again (polled every 2 ms): delete+create for one, \
the node's reset for the other; rounds interleaved.
- Pool refill: every warm sandbox is claimed at once (and kept) from a full pool; time from the start of that \
drain until the pool has bufferMin warm sandboxes again; rate = new sandboxes / that time.
";

/// Bound a scenario in time and report how it ended (progress is on stderr).
async fn run<T>(
    s: &Scenario,
    scenario: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let res = tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .unwrap_or_else(|_| Err(anyhow!("timed out after {} s", SCENARIO_TIMEOUT.as_secs())));
    match &res {
        Ok(_) => eprintln!("done: {}", s.name),
        Err(e) => eprintln!("FAILED: {}: {e:#}", s.name),
    }
    res
}

fn bar(name: &str, len: u64) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:<18} [{bar:32}] {pos}/{len} {elapsed} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_prefix(name.to_string())
        .with_finish(ProgressFinish::AndClear)
}

fn spinner(name: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:<18} {spinner} {elapsed} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let s = ProgressBar::new_spinner()
        .with_style(style)
        .with_prefix(name.to_string())
        .with_finish(ProgressFinish::AndClear);
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

// ------------------------------------------------------------------ scenarios

/// Wait for a full pool, so that measurements start from the same rest state.
async fn at_rest(api: &Api) -> anyhow::Result<()> {
    api.wait_available(POOL, BUFFER_MIN, REFILL_TIMEOUT).await
}

/// Claims of pool `bench` that fell back to a cold start so far (None: metrics unreadable).
async fn cold_fallbacks(api: &Api) -> Option<u64> {
    api.claim_count(POOL, "cold").await.ok()
}

struct Latencies {
    samples: Vec<Duration>,
    summary: Summary,
    cold_fallbacks: Option<u64>,
}

impl Latencies {
    fn fallback_note(&self) -> String {
        match self.cold_fallbacks {
            Some(0) => String::new(),
            Some(k) => format!("; {k} of {} fell back to cold starts", self.summary.n),
            None => "; cold fallbacks unknown (metrics unreadable)".into(),
        }
    }
}

/// create → first exec (timed), then delete.
async fn claim_exec_delete(api: &Api, body: &serde_json::Value) -> anyhow::Result<Duration> {
    let (latency, id) = api.claim_and_exec(body).await?;
    api.delete(&id).await?;
    Ok(latency)
}

/// `rounds` claims one after another, each from a full pool.
async fn sequential_claims(
    api: &Api,
    s: &Scenario,
    body: &serde_json::Value,
    rounds: usize,
) -> anyhow::Result<Latencies> {
    let bar = bar(s.name, rounds as u64);
    let before = cold_fallbacks(api).await;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        at_rest(api).await?;
        samples.push(claim_exec_delete(api, body).await?);
        bar.inc(1);
    }
    let after = cold_fallbacks(api).await;
    Ok(Latencies {
        summary: summarize(&samples),
        samples,
        cold_fallbacks: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
    })
}

struct Sustained {
    latencies: Latencies,
    wall: Duration,
}

/// `count` claims, `CONCURRENCY` in flight, starting from a full pool.
async fn sustained_claims(api: &Api, count: usize) -> anyhow::Result<Sustained> {
    at_rest(api).await?;
    let bar = bar(SUSTAINED.name, count as u64);
    let body = warm_claim(POOL);
    let (body, progress) = (&body, &bar);
    let before = cold_fallbacks(api).await;
    let t = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = stream::iter(0..count)
        .map(|_| async move {
            let r = claim_exec_delete(api, body).await;
            progress.inc(1);
            r
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let wall = t.elapsed();
    let samples = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let after = cold_fallbacks(api).await;
    let latencies = Latencies {
        summary: summarize(&samples),
        samples,
        cold_fallbacks: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
    };
    Ok(Sustained { latencies, wall })
}

/// `n` sequential `true` commands in one claimed sandbox; summary in µs.
async fn exec_round_trips(api: &Api, n: usize) -> anyhow::Result<Summary> {
    at_rest(api).await?;
    let bar = bar(EXEC.name, n as u64);
    let id = api.create(&warm_claim(POOL)).await?;
    let timed = async {
        let execd = api.execd(&id).await?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            api.exec(&execd, "true").await?;
            samples.push(t.elapsed());
            bar.inc(1);
        }
        anyhow::Ok(samples)
    }
    .await;
    let released = api.delete(&id).await;
    let samples = timed?;
    released?;
    Ok(summarize(&samples))
}

/// VmRSS (KiB) of the runtime processes of one sandbox.
struct SandboxRss {
    init_kib: u64,
    server_kib: u64,
}

struct RuntimeRss(Vec<SandboxRss>);

impl RuntimeRss {
    /// (init + server, init, server), in KiB.
    fn summaries(&self) -> (Summary, Summary, Summary) {
        let of = |f: fn(&SandboxRss) -> u64| {
            summarize_values(&self.0.iter().map(|s| f(s) as f64).collect::<Vec<_>>())
        };
        (
            of(|s| s.init_kib + s.server_kib),
            of(|s| s.init_kib),
            of(|s| s.server_kib),
        )
    }
}

/// RSS of the runtimes of the warm sandboxes of a full, idle pool.
async fn idle_runtime_rss(api: &Api, data_dir: &Path) -> anyhow::Result<RuntimeRss> {
    let _spinner = spinner(RUNTIME_RSS.name);
    at_rest(api).await?;
    // Let the newest sandboxes finish starting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sandbox_runtimes(data_dir)
}

struct Proc {
    pid: u32,
    ppid: u32,
    /// NUL-separated argv.
    cmdline: Vec<u8>,
}

impl Proc {
    fn argv0(&self) -> &[u8] {
        self.cmdline.split(|b| *b == 0).next().unwrap_or_default()
    }

    fn is_runtime(&self) -> bool {
        self.argv0() == RUNTIME_PATH_IN_SANDBOX.as_bytes()
    }
}

/// Every process in /proc (those that exit while we look are skipped).
fn processes() -> anyhow::Result<Vec<Proc>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let Some(ppid) = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:")?.trim().parse().ok())
        else {
            continue;
        };
        out.push(Proc { pid, ppid, cmdline });
    }
    Ok(out)
}

/// The sandboxes of this platform: a runtime whose parent is a containerd
/// shim of this platform's private containerd (its socket is under
/// `data_dir`) is a sandbox's PID 1, the init fork; its runtime children are
/// the server.
fn sandbox_runtimes(data_dir: &Path) -> anyhow::Result<RuntimeRss> {
    let procs = processes()?;
    let by_pid: HashMap<u32, &Proc> = procs.iter().map(|p| (p.pid, p)).collect();
    let ours = data_dir.as_os_str().as_encoded_bytes();
    let of_this_platform =
        |shim: &Proc| !shim.is_runtime() && shim.cmdline.windows(ours.len()).any(|w| w == ours);
    let mut sandboxes = Vec::new();
    for init in procs.iter().filter(|p| p.is_runtime()) {
        if !by_pid
            .get(&init.ppid)
            .is_some_and(|shim| of_this_platform(shim))
        {
            continue;
        }
        let servers: Vec<&Proc> = procs
            .iter()
            .filter(|p| p.ppid == init.pid && p.is_runtime())
            .collect();
        if servers.is_empty() {
            continue; // still starting
        }
        let (Some(init_kib), Some(server_kib)) = (
            rss_kib(init.pid),
            servers.iter().map(|p| rss_kib(p.pid)).sum::<Option<u64>>(),
        ) else {
            continue;
        };
        sandboxes.push(SandboxRss {
            init_kib,
            server_kib,
        });
    }
    if sandboxes.is_empty() {
        bail!(
            "no sandbox runtime ({RUNTIME_PATH_IN_SANDBOX} under a shim of {}) in /proc",
            data_dir.display()
        );
    }
    Ok(RuntimeRss(sandboxes))
}

struct ServeRss {
    rss_kib: u64,
    peak_kib: u64,
    containerd_kib: Option<u64>,
}

/// RSS of `sandpool serve` (node agent, scheduler and gateway in one process)
/// and of the private containerd it started.
fn serve_rss(pid: u32) -> anyhow::Result<ServeRss> {
    let _spinner = spinner(SERVE_RSS.name);
    let containerd = processes()?
        .into_iter()
        .find(|p| p.ppid == pid && p.argv0().rsplit(|b| *b == b'/').next() == Some(b"containerd"));
    Ok(ServeRss {
        rss_kib: rss_kib(pid)
            .with_context(|| format!("no VmRSS for sandpool serve (pid {pid})"))?,
        peak_kib: status_kib(pid, "VmHWM")
            .with_context(|| format!("no VmHWM for sandpool serve (pid {pid})"))?,
        containerd_kib: containerd.and_then(|p| rss_kib(p.pid)),
    })
}

struct Refill {
    refilled: u64,
    elapsed: Duration,
}

/// Claim every warm sandbox at once, keep them, and time the pool's way back
/// to `BUFFER_MIN`; then release them.
async fn pool_refill(api: &Api) -> anyhow::Result<Refill> {
    at_rest(api).await?;
    let bar = bar(REFILL.name, BUFFER_MIN);
    let before = api.pool_status(POOL).await?;
    let body = warm_claim(POOL);
    let t = Instant::now();
    let claims: Vec<anyhow::Result<String>> = stream::iter(0..before.available)
        .map(|_| api.create(&body))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let (ids, failed): (Vec<_>, Vec<_>) = claims.into_iter().partition(Result::is_ok);
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    let measured = async {
        if let Some(Err(e)) = failed.into_iter().next() {
            return Err(e.context("draining the pool"));
        }
        bar.set_message(format!("{} claimed", ids.len()));
        loop {
            let now = api.pool_status(POOL).await?;
            bar.set_position(now.available.min(BUFFER_MIN));
            if now.available >= BUFFER_MIN {
                // total = warm + allocated: what it gained is what the pool created.
                return Ok(Refill {
                    refilled: now.total.saturating_sub(before.total),
                    elapsed: t.elapsed(),
                });
            }
            if t.elapsed() > REFILL_TIMEOUT {
                bail!(
                    "pool did not refill to {BUFFER_MIN} in {} s (now {now:?})",
                    REFILL_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    let released: Vec<anyhow::Result<()>> = stream::iter(&ids)
        .map(|id| api.delete(id))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let refill = measured?;
    released
        .into_iter()
        .collect::<anyhow::Result<()>>()
        .context("releasing the drained claims")?;
    if refill.refilled == 0 {
        bail!(
            "the pool reports no new sandboxes (total {} before)",
            before.total
        );
    }
    Ok(refill)
}

// --------------------------------------------------------------------- report

struct Header {
    date: String,
    machine: String,
    commit: String,
    rounds: usize,
}

impl Header {
    fn now(rounds: usize) -> Header {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.trim() == "model name")
                        .map(|(_, v)| v.trim().to_string())
                })
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let nproc = output("nproc", &[]).unwrap_or_else(|| "?".into());
        let kernel = output("uname", &["-r"]).unwrap_or_else(|| "?".into());
        Header {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            machine: format!("{cpu}, {nproc} CPUs (nproc), Linux {kernel}"),
            commit: commit(),
            rounds,
        }
    }

    fn markdown(&self, sustained_n: usize) -> String {
        format!(
            "## sandpool benchmark suite, {}\n\n\
             - machine: {}\n\
             - commit: {}\n\
             - platform: one standalone `sandpool serve`; pool `{POOL}` = busybox, buffer {BUFFER_MIN}–{BUFFER_MAX}; \
             {} warm and {} cold claims, {sustained_n} sustained, {EXEC_ROUNDS} execs\n",
            self.date, self.machine, self.commit, self.rounds, self.rounds
        )
    }
}

/// Trimmed stdout of a command that succeeded with some output.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    let s = String::from_utf8(o.stdout).ok()?.trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

fn commit() -> String {
    // Run as root in a checkout someone else owns, git refuses without this.
    let git = |args: &[&str]| output("git", &[&["-c", "safe.directory=*"], args].concat());
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown".into(),
        Some(c) if git(&["status", "--porcelain", "--untracked-files=no"]).is_some() => {
            format!("{c} (with uncommitted changes)")
        }
        Some(c) => c,
    }
}

struct Row {
    label: &'static str,
    n: usize,
    cols: [String; 3],
    result: String,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Table {
    /// A row from a scenario's outcome: `cells` gives n, p50/p95/p99 and the result.
    fn add<T>(
        &mut self,
        s: &Scenario,
        outcome: &anyhow::Result<T>,
        cells: impl FnOnce(&T) -> (usize, [String; 3], String),
    ) {
        let row = match outcome {
            Ok(v) => {
                let (n, cols, result) = cells(v);
                Row {
                    label: s.label,
                    n,
                    cols,
                    result,
                }
            }
            Err(e) => {
                self.failures.push(format!("{}: {e:#}", s.name));
                let one_line = format!("{e:#}").replace('\n', " ").replace('|', "\\|");
                Row {
                    label: s.label,
                    n: 0,
                    cols: dashes(),
                    result: format!("**failed**: {one_line}"),
                }
            }
        };
        self.rows.push(row);
    }

    fn markdown(&self) -> String {
        let mut md = String::from(
            "| scenario | n | p50 | p95 | p99 | result |\n|---|---:|---:|---:|---:|---|\n",
        );
        for r in &self.rows {
            let [p50, p95, p99] = &r.cols;
            let _ = writeln!(
                md,
                "| {} | {} | {p50} | {p95} | {p99} | {} |",
                r.label, r.n, r.result
            );
        }
        md
    }
}

fn dashes() -> [String; 3] {
    ["–", "–", "–"].map(String::from)
}

/// Microseconds as milliseconds, with precision to match.
fn ms(us: f64) -> String {
    let v = us / 1000.0;
    match v {
        v if v < 10.0 => format!("{v:.2} ms"),
        v if v < 100.0 => format!("{v:.1} ms"),
        v => format!("{v:.0} ms"),
    }
}

fn mib(v: f64) -> String {
    format!("{v:.1} MiB")
}

fn latency_cols(s: &Summary) -> [String; 3] {
    [ms(s.p50), ms(s.p95), ms(s.p99)]
}

fn latency_label(name: &str, l: &anyhow::Result<Latencies>) -> String {
    match l {
        Ok(l) => format!("{name}, p50 {}", ms(l.summary.p50)),
        Err(_) => format!("{name} (failed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_marks_failures() {
        let mut t = Table::default();
        t.add(&WARM, &Ok(1u32), |_| {
            (3, ["1".into(), "2".into(), "3".into()], "ok".into())
        });
        t.add(
            &COLD,
            &Err::<u32, _>(anyhow!("a | b\nc")),
            |_| unreachable!(),
        );
        let md = t.markdown();
        assert!(
            md.contains(&format!("| {} | 3 | 1 | 2 | 3 | ok |", WARM.label)),
            "{md}"
        );
        assert!(md.contains("**failed**: a \\| b c"), "{md}");
        assert_eq!(t.failures.len(), 1);
    }
}
