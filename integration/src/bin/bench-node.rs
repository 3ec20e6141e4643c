//! Benchmark of the node agent on real containerd (root; not a test):
//! warm sandbox create+start (runtime answering on its bridge IP) for runc and
//! runsc, entrypoint injection, pause and resume (cgroup freezer) and release,
//! against `ctr run -d` / `ctr task pause|resume` of the same image with the
//! same runtime, measured in the same run. Checkpoint, restore and fork of a
//! checkpointable (network-less) runsc sandbox on the Python image, against a
//! fresh warm create of the same template in the same run.
//!
//!     cargo build --release -p sandpool-runtime -p sandpool-integration
//!     ./target/release/bench-node --runtime-bin <static sandpool-runtime> --iterations 20

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use sandpool_integration::{Summary, summarize};
use sandpool_node_agent::{
    agent::{Agent, AgentConfig},
    containerd::Ctr,
    daemon::ContainerdDaemon,
    image,
    net::NetConfig,
};
use sandpool_proto::v1 as pb;

#[derive(Parser, Debug)]
struct Args {
    /// Static sandpool-runtime binary mounted into sandboxes.
    #[arg(long, env = "SANDPOOL_RUNTIME_STATIC_BIN")]
    runtime_bin: PathBuf,
    /// Sandboxes per scenario (bounded: at most 200).
    #[arg(long, default_value_t = 20)]
    iterations: usize,
}

fn row(name: &str, s: &Summary, base: Option<&Summary>) -> String {
    let ratio = s.vs_baseline(base);
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {ratio} |",
        s.n,
        s.p50 / 1000.0,
        s.p90 / 1000.0,
        s.max / 1000.0
    )
}

/// A template of `image` with one CPU, `memory` and 256 pids on `class`.
fn template(image: &str, memory: &str, class: pb::RuntimeClass) -> pb::SandboxTemplate {
    pb::SandboxTemplate {
        image: image.into(),
        resources: Some(pb::Resources {
            cpu: "1".into(),
            memory: memory.into(),
            pids: 256,
        }),
        runtime_class: class as i32,
        ..Default::default()
    }
}

fn ctr(sock: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ctr")
        .args(["-a", sock, "-n", "sandpool-bench"])
        .args(args)
        .output()
        .context("running ctr")?;
    if !out.status.success() {
        bail!("ctr {:?}: {}", args, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[allow(clippy::too_many_lines)] // a benchmark's main: one measured sequence, read top to bottom
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.iterations.clamp(1, 200);
    let dir = tempfile_dir()?;
    let mut daemon = ContainerdDaemon::start(&dir.join("containerd"))?;
    let sock = daemon.socket.display().to_string();
    let ctr_client =
        Ctr::connect(&daemon.socket, "sandpool-bench", Duration::from_secs(30)).await?;
    let mut cfg = AgentConfig::new(dir.join("agent"), std::fs::canonicalize(&args.runtime_bin)?);
    cfg.net = NetConfig::new(&cfg.data_dir, "spbench0", "10.213.250.0/24");
    cfg.node_name = "bench".into();
    let agent = Agent::start(cfg, ctr_client).await?;
    agent.ensure_image("busybox").await?;
    let wrapper = agent
        .cfg
        .data_dir
        .join("bin/runsc-sandpool")
        .display()
        .to_string();

    let mut table = Vec::new();
    let mut notes = Vec::new();
    for (class, label, runtime_flag) in [
        (pb::RuntimeClass::Runc, "runc", None),
        (pb::RuntimeClass::Runsc, "runsc", Some(wrapper.as_str())),
    ] {
        eprintln!("[{label}] ctr run baseline ×{n}");
        let (mut base, mut base_pause, mut base_resume) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n + 2 {
            let id = format!("ctr-{label}-{i}");
            let mut a = vec!["run", "-d", "--null-io"];
            if let Some(bin) = runtime_flag {
                a.extend(["--runc-binary", bin]);
            }
            // runsc needs a non-root netns; give ctr one too, as sandpool does
            let ns_arg = format!("network:/var/run/netns/{id}");
            let t = Instant::now();
            if runtime_flag.is_some() {
                Command::new("ip").args(["netns", "add", &id]).status()?;
                a.extend(["--with-ns", &ns_arg]);
            }
            a.extend([image::BUSYBOX, &id, "sleep", "1000"]);
            ctr(&sock, &a)?;
            let took = t.elapsed();
            let t = Instant::now();
            ctr(&sock, &["task", "pause", &id])?;
            let paused = t.elapsed();
            let t = Instant::now();
            ctr(&sock, &["task", "resume", &id])?;
            let resumed = t.elapsed();
            if i >= 2 {
                base.push(took);
                base_pause.push(paused);
                base_resume.push(resumed);
            }
            let _ = ctr(&sock, &["task", "kill", "-s", "SIGKILL", &id]);
            for _ in 0..100 {
                if ctr(&sock, &["task", "delete", &id]).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ctr(&sock, &["container", "delete", &id])?;
            if runtime_flag.is_some() {
                Command::new("ip").args(["netns", "del", &id]).status()?;
            }
        }

        eprintln!("[{label}] sandpool warm create ×{n}");
        let template = template("busybox", "256Mi", class);
        let (mut create, mut inject, mut release) = (Vec::new(), Vec::new(), Vec::new());
        let (mut pause, mut resume, mut answering) = (Vec::new(), Vec::new(), Vec::new());
        let mut checkpoint = String::new();
        for i in 0..n + 2 {
            let t = Instant::now();
            let sb = agent.create("bench", template.clone(), None).await?;
            let c = t.elapsed();
            let (_, inj) = agent
                .inject(
                    &sb.id,
                    pb::InjectRequest {
                        argv: vec!["sleep".into(), "1000".into()],
                        env: [("A".to_string(), "1".to_string())].into(),
                        ..Default::default()
                    },
                )
                .await?;
            let t = Instant::now();
            agent.pause(&sb.id).await?;
            let p = t.elapsed();
            let t = Instant::now();
            agent.resume(&sb.id).await?;
            let rs = t.elapsed();
            // until the thawed runtime serves a request again
            agent.runtime_health(&sb.id).await?;
            let ans = t.elapsed();
            if checkpoint.is_empty() {
                checkpoint = match agent.checkpoint(&sb.id, false, "", "").await {
                    Ok(c) => format!("ok ({} bytes)", c.size_bytes),
                    Err(e) => e.to_string(),
                };
            }
            let t = Instant::now();
            agent.release(&sb.id, pb::ReleasePolicy::Delete).await?;
            let r = t.elapsed();
            if i >= 2 {
                create.push(c);
                inject.push(inj);
                release.push(r);
                pause.push(p);
                resume.push(rs);
                answering.push(ans);
            }
        }
        let b = summarize(&base);
        table.push(row(
            &format!("{label}: `ctr run -d` busybox `sleep` (baseline; no network, no readiness)"),
            &b,
            None,
        ));
        table.push(row(
            &format!(
                "{label}: sandpool warm create (netns+CNI IP, container, task, runtime healthy)"
            ),
            &summarize(&create),
            Some(&b),
        ));
        table.push(row(
            &format!("{label}: inject entrypoint via runtime gRPC"),
            &summarize(&inject),
            Some(&b),
        ));
        table.push(row(
            &format!("{label}: release (kill, delete, snapshot, CNI DEL, netns)"),
            &summarize(&release),
            Some(&b),
        ));
        let bp = summarize(&base_pause);
        let br = summarize(&base_resume);
        table.push(row(
            &format!("{label}: `ctr task pause` (baseline, includes the ctr process)"),
            &bp,
            None,
        ));
        table.push(row(
            &format!("{label}: sandpool pause (freeze via containerd)"),
            &summarize(&pause),
            Some(&bp),
        ));
        table.push(row(
            &format!("{label}: `ctr task resume` (baseline, includes the ctr process)"),
            &br,
            None,
        ));
        table.push(row(
            &format!("{label}: sandpool resume (thaw via containerd)"),
            &summarize(&resume),
            Some(&br),
        ));
        table.push(row(
            &format!("{label}: sandpool resume until the runtime answers"),
            &summarize(&answering),
            Some(&br),
        ));
        notes.push(format!("{label} checkpoint on this node: {checkpoint}"));
    }
    checkpoint_rows(&agent, n.min(10), &mut table, &mut notes).await?;
    daemon.stop(Duration::from_secs(10));
    agent.cfg.net.remove_isolation();
    drop(agent);
    let _ = Command::new("ip")
        .args(["link", "del", "spbench0"])
        .status();
    let _ = std::fs::remove_dir_all(&dir);

    println!("| scenario | n | p50 ms | p90 ms | max ms | p50 vs baseline |");
    println!("|---|---|---|---|---|---|");
    for r in table {
        println!("{r}");
    }
    println!();
    for n in notes {
        println!("- {n}");
    }
    Ok(())
}

/// Checkpointable runsc + Python: a process holding ~40 MB of Python objects
/// is checkpointed (stopping the sandbox), restored, and forked into 3.
async fn checkpoint_rows(
    agent: &std::sync::Arc<Agent>,
    m: usize,
    table: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    eprintln!("[runsc checkpointable, python] ×{m}");
    agent.ensure_image("python").await?;
    let template = pb::SandboxTemplate {
        checkpointable: true,
        ..template("python", "512Mi", pb::RuntimeClass::Runsc)
    };
    let state = "import time\nx = [str(i) for i in range(500000)]\ntime.sleep(1e6)\n";
    let (mut create, mut ck, mut restore, mut fork, mut sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..m + 1 {
        let t = Instant::now();
        let sb = agent.create("bench-ck", template.clone(), None).await?;
        let c = t.elapsed();
        agent
            .inject(
                &sb.id,
                pb::InjectRequest {
                    argv: vec!["python3".into(), "-c".into(), state.into()],
                    ..Default::default()
                },
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await; // the list is built
        let t = Instant::now();
        let info = agent.checkpoint(&sb.id, false, "", "").await?;
        let k = t.elapsed();
        let t = Instant::now();
        let r = agent.restore(&info.checkpoint_id, None).await?;
        let rs = t.elapsed();
        let t = Instant::now();
        let forks = agent.fork(&info.checkpoint_id, 3).await?;
        let f = t.elapsed();
        for s in forks.iter().chain([&r]) {
            agent.release(&s.id, pb::ReleasePolicy::Delete).await?;
        }
        agent.delete_checkpoint(&info.checkpoint_id)?;
        if i >= 1 {
            create.push(c);
            ck.push(k);
            restore.push(rs);
            fork.push(f);
            sizes.push(info.size_bytes);
        }
    }
    let b = summarize(&create);
    table.push(row("runsc checkpointable, python image: warm create (baseline: a fresh sandbox until its runtime answers)", &b, None));
    table.push(row("runsc checkpointable, python: checkpoint (quiesce sockets, `runsc checkpoint`, rootfs copy)", &summarize(&ck), Some(&b)));
    table.push(row(
        "runsc checkpointable, python: restore into a new sandbox until its runtime answers",
        &summarize(&restore),
        Some(&b),
    ));
    table.push(row(
        "runsc checkpointable, python: fork into 3 sandboxes (all answering)",
        &summarize(&fork),
        Some(&b),
    ));
    sizes.sort_unstable();
    notes.push(format!(
        "checkpoint size (python process holding 500k strings; memory image + rootfs changes): median {:.1} MB, max {:.1} MB",
        sizes[sizes.len() / 2] as f64 / 1e6,
        sizes[sizes.len() - 1] as f64 / 1e6
    ));
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("spbench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
