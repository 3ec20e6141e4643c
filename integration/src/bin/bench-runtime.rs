//! Benchmark of the in-sandbox runtime on loopback (not a test):
//! exec round trip of `true` over the execd HTTP API and over gRPC, against a
//! direct fork/exec of the same shell command measured in the same run, and
//! the runtime's idle RSS.
//!
//!     cargo run --release -p sandpool-integration --bin bench-runtime

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use sandpool_integration::{Summary, free_port, platform::run_command, rss_kib, summarize};
use sandpool_proto::v1::{self as pb, runtime_client::RuntimeClient};

#[derive(Parser, Debug)]
struct Args {
    /// Runtime binary (default: the release build next to this binary).
    #[arg(long)]
    runtime_bin: Option<PathBuf>,
    /// Measured iterations per scenario (bounded: at most 20000).
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn row(name: &str, s: &Summary, base: Option<&Summary>) -> String {
    let ratio = s.vs_baseline(base);
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio} |",
        s.n, s.p50, s.p90, s.p99, s.mean
    )
}

#[allow(clippy::too_many_lines)] // a benchmark's main: one measured sequence, read top to bottom
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let iterations = args.iterations.clamp(1, 20_000);
    let bin = match args.runtime_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("sandpool-runtime"),
    };
    if !bin.exists() {
        bail!(
            "runtime binary {} not found; build it with `cargo build --release -p sandpool-runtime`",
            bin.display()
        );
    }
    let port = free_port()?;
    let data = std::env::temp_dir().join(format!("sandpool-bench-{}", std::process::id()));
    let child = Child(
        Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let pid = child.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if http
            .get(format!("{base}/ping"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("runtime did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid).unwrap_or(0);

    // Baseline: fork/exec `bash -c true` directly from this process.
    let shell = if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let direct = time_runs(iterations, args.warmup, || {
        let mut c = Command::new(shell);
        c.args(["-c", "true"]);
        c
    })?;

    // Second baseline: fork/exec the `true` binary itself (no shell).
    let true_bin = ["/usr/bin/true", "/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("true");
    let direct_true = time_runs(iterations, args.warmup, || Command::new(true_bin))?;

    // execd HTTP: POST /command {"command":"true"} and read the stream to its end.
    let mut over_http = Vec::with_capacity(iterations);
    for i in 0..iterations + args.warmup {
        let t = Instant::now();
        let url = format!("{base}/command");
        run_command(&http, url, None, "true", "unexpected stream").await?;
        if i >= args.warmup {
            over_http.push(t.elapsed());
        }
    }

    // gRPC Exec on the same port.
    let ch = tonic::transport::Endpoint::from_shared(base.clone())?
        .connect()
        .await?;
    let mut grpc = RuntimeClient::new(ch);
    let mut over_grpc = Vec::with_capacity(iterations);
    for i in 0..iterations + args.warmup {
        let t = Instant::now();
        let start = pb::ExecInput {
            input: Some(pb::exec_input::Input::Start(pb::ExecStart {
                command: "true".into(),
                ..Default::default()
            })),
        };
        let mut out = grpc
            .exec(futures_util::stream::iter(vec![start]))
            .await?
            .into_inner();
        let mut code = None;
        while let Some(m) = out.message().await? {
            if let Some(pb::exec_output::Output::Exited(e)) = m.output {
                code = Some(e.exit_code);
            }
        }
        if code != Some(0) {
            bail!("gRPC exec failed: {code:?}");
        }
        if i >= args.warmup {
            over_grpc.push(t.elapsed());
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(pid).unwrap_or(0);
    drop(child);
    let _ = std::fs::remove_dir_all(&data);

    let (d, dt, h, g) = (
        summarize(&direct),
        summarize(&direct_true),
        summarize(&over_http),
        summarize(&over_grpc),
    );
    println!("| scenario | n | p50 µs | p90 µs | p99 µs | mean µs | p50 vs baseline |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "{}",
        row(
            &format!("baseline: fork/exec `{shell} -c true` directly"),
            &d,
            None
        )
    );
    println!(
        "{}",
        row(
            &format!("direct fork/exec `{true_bin}` (no shell)"),
            &dt,
            Some(&d)
        )
    );
    println!(
        "{}",
        row(
            "runtime execd HTTP `POST /command` `true` (full stream)",
            &h,
            Some(&d)
        )
    );
    println!(
        "{}",
        row("runtime gRPC `Exec` `true` (full stream)", &g, Some(&d))
    );
    println!();
    println!("| memory | KiB | MiB |");
    println!("|---|---|---|");
    println!(
        "| runtime RSS idle after start | {rss_idle} | {:.2} |",
        rss_idle as f64 / 1024.0
    );
    println!(
        "| runtime RSS idle after {} execs | {rss_after} | {:.2} |",
        2 * (iterations + args.warmup),
        rss_after as f64 / 1024.0
    );
    Ok(())
}

/// Run a command `warmup + n` times; the wall time of the last `n` runs.
fn time_runs(
    n: usize,
    warmup: usize,
    command: impl Fn() -> Command,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + warmup {
        let t = Instant::now();
        let st = command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()?;
        if !st.status.success() {
            bail!("baseline command failed");
        }
        if i >= warmup {
            times.push(t.elapsed());
        }
    }
    Ok(times)
}
