//! bench-suite's churn scenarios (issue 22), per runtime class, on a pool
//! `churn-<runtime>` (busybox, buffer [`BUFFER`]):
//!
//! * **CPU of one create, and where it goes**: the CPU time of every
//!   process of the platform (`/proc/<pid>/stat`, own and reaped children)
//!   before and after [`BUFFER`] warm claims and the refill that follows,
//!   split into containerd, shim start (containerd's reaped children), the
//!   shims, runc/runsc (the shims' reaped children), the sandboxes' own
//!   processes, and `sandpool serve` (node agent, scheduler, gateway; its
//!   reaped children are `ip`/`iptables`), divided by the creates.
//! * **PSS of a warm sandbox**: its shim and everything under it (runtime
//!   init and server; for runsc the sandbox and gofer), from
//!   `/proc/<pid>/smaps_rollup`; warm sandboxes per GiB from it.
//! * **Warm claims while refills run**: claims back to back (each claim
//!   drains the buffer, so refills run all along) against claims each made
//!   on a full, quiet pool, as a CDF table.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    Summary,
    platform::{Api, warm_claim},
    summarize,
};

/// Warm sandboxes of each churn pool.
pub const BUFFER: u64 = 8;
/// How long a refill back to [`BUFFER`] may take.
const REFILL_TIMEOUT: Duration = Duration::from_secs(120);
/// `/proc/<pid>/stat` ticks per second (USER_HZ on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// The churn pool of `runtime`.
pub fn pool_name(runtime: &str) -> String {
    format!("churn-{runtime}")
}

/// `sandpool serve --pool` value of `runtime`'s churn pool.
pub fn pool_flag(runtime: &str) -> String {
    format!(
        "{}:busybox:{BUFFER}:{BUFFER}:0:64:{runtime}",
        pool_name(runtime)
    )
}

/// One process from `/proc/<pid>/stat`: CPU in ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCpu {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// utime + stime
    pub own: u64,
    /// cutime + cstime: children it waited for
    pub children: u64,
}

/// Parse a `/proc/<pid>/stat` line (`comm` may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<ProcCpu> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    // fields after comm: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|s| s.parse::<i64>().ok());
    Some(ProcCpu {
        pid,
        ppid: field(4)? as u32,
        comm,
        own: (field(14)? + field(15)?).max(0) as u64,
        children: (field(16)? + field(17)?).max(0) as u64,
    })
}

/// Every process now, with its command line.
fn snapshot() -> HashMap<u32, (ProcCpu, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let p = parse_stat(&stat)?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        Some((pid, (p, cmdline)))
    })
    .collect()
}

/// What a process is to the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Serve,
    Containerd,
    Shim,
    /// under a shim: runtime init and server, runsc sandbox and gofer
    Sandbox,
}

/// The platform's processes in `procs`: `sandpool serve` (`serve`), its
/// containerd, the shims serving `data_dir`'s containerd, and everything under them.
pub fn classify(
    procs: &HashMap<u32, (ProcCpu, String)>,
    serve: u32,
    data_dir: &str,
) -> HashMap<u32, Part> {
    let mut parts = HashMap::new();
    for (pid, (p, cmdline)) in procs {
        if *pid == serve {
            parts.insert(*pid, Part::Serve);
        } else if p.ppid == serve && p.comm == "containerd" {
            parts.insert(*pid, Part::Containerd);
        } else if p.comm.starts_with("containerd-shim") && cmdline.contains(data_dir) {
            parts.insert(*pid, Part::Shim);
        }
    }
    // descendants of shims (a few passes: trees are shallow)
    for _ in 0..6 {
        let found: Vec<u32> = procs
            .iter()
            .filter(|(pid, (p, _))| {
                !parts.contains_key(pid)
                    && matches!(parts.get(&p.ppid), Some(Part::Shim | Part::Sandbox))
            })
            .map(|(pid, _)| *pid)
            .collect();
        if found.is_empty() {
            break;
        }
        parts.extend(found.into_iter().map(|pid| (pid, Part::Sandbox)));
    }
    parts
}

/// Where the CPU of the creates went, in ticks (over all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSplit {
    pub containerd: u64,
    /// containerd's reaped children (`containerd-shim-runc-v2 start`)
    pub shim_start: u64,
    pub shims: u64,
    /// the shims' reaped children: `runc create/start/delete` (or runsc)
    pub oci_runtime: u64,
    pub sandboxes: u64,
    pub serve: u64,
    /// serve's reaped children: `ip`, `iptables`
    pub serve_children: u64,
}

impl CpuSplit {
    pub fn total(&self) -> u64 {
        self.containerd
            + self.shim_start
            + self.shims
            + self.oci_runtime
            + self.sandboxes
            + self.serve
            + self.serve_children
    }

    /// Milliseconds per create of each part, labelled, and the total.
    pub fn per_create_ms(&self, creates: u64) -> (Vec<(&'static str, f64)>, f64) {
        let ms = |t: u64| t as f64 * 1e3 / TICKS_PER_SEC / creates.max(1) as f64;
        let parts = vec![
            ("containerd", ms(self.containerd)),
            ("shim start", ms(self.shim_start)),
            ("shims", ms(self.shims)),
            ("runc/runsc", ms(self.oci_runtime)),
            ("sandbox processes", ms(self.sandboxes)),
            ("serve (agent+scheduler+gateway)", ms(self.serve)),
            ("serve's children (ip, iptables)", ms(self.serve_children)),
        ];
        (parts, ms(self.total()))
    }
}

/// The CPU the platform's processes spent between `before` and `after`
/// (processes new in `after` count whole; ones gone are lost unless a
/// parent reaped them).
pub fn cpu_split(
    before: &HashMap<u32, (ProcCpu, String)>,
    after: &HashMap<u32, (ProcCpu, String)>,
    parts: &HashMap<u32, Part>,
) -> CpuSplit {
    let mut s = CpuSplit::default();
    for (pid, part) in parts {
        let Some((a, _)) = after.get(pid) else {
            continue;
        };
        // the same process only (a pid may have been reused)
        let b = before.get(pid).filter(|(b, _)| b.comm == a.comm);
        let own = a.own - b.map_or(0, |(b, _)| b.own.min(a.own));
        let children = a.children - b.map_or(0, |(b, _)| b.children.min(a.children));
        match part {
            Part::Serve => {
                s.serve += own;
                s.serve_children += children;
            }
            Part::Containerd => {
                s.containerd += own;
                s.shim_start += children;
            }
            Part::Shim => {
                s.shims += own;
                s.oci_runtime += children;
            }
            Part::Sandbox => s.sandboxes += own + children,
        }
    }
    s
}

/// Proportional set size of `pid` in KiB (`smaps_rollup`).
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The processes of the sandbox a shim serves: the shim, the processes
/// naming its container id (`-id <id>`; runsc's sandbox and gofer, should
/// they not be under the shim), and everything under those.
pub fn sandbox_tree(procs: &HashMap<u32, (ProcCpu, String)>, shim: u32) -> HashSet<u32> {
    let mut tree = HashSet::from([shim]);
    let id = procs.get(&shim).and_then(|(_, cmd)| {
        let mut args = cmd.split_whitespace();
        args.find(|a| *a == "-id")?;
        args.next().map(str::to_string)
    });
    if let Some(id) = id {
        tree.extend(
            procs
                .iter()
                .filter(|(pid, (p, cmd))| {
                    **pid != shim && !p.comm.starts_with("containerd") && cmd.contains(&id)
                })
                .map(|(pid, _)| *pid),
        );
    }
    for _ in 0..6 {
        let under: Vec<u32> = procs
            .iter()
            .filter(|(pid, (p, _))| !tree.contains(pid) && tree.contains(&p.ppid))
            .map(|(pid, _)| *pid)
            .collect();
        if under.is_empty() {
            break;
        }
        tree.extend(under);
    }
    tree
}

/// PSS (KiB) of each shim of the platform with its sandbox's processes
/// ([`sandbox_tree`]), by runtime class (`runsc` when one of them runs runsc).
pub fn sandbox_pss(serve: u32, data_dir: &str) -> HashMap<&'static str, Vec<f64>> {
    let procs = snapshot();
    let parts = classify(&procs, serve, data_dir);
    let mut out: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for (shim, _) in parts.iter().filter(|(_, p)| **p == Part::Shim) {
        let tree = sandbox_tree(&procs, *shim);
        // gVisor's processes re-exec runsc (comm `exe`): look at their command lines
        let runsc = tree
            .iter()
            .any(|pid| procs.get(pid).is_some_and(|(_, cmd)| cmd.contains("runsc")));
        let kib: u64 = tree.iter().filter_map(|pid| pss_kib(*pid)).sum();
        out.entry(if runsc { "runsc" } else { "runc" })
            .or_default()
            .push(kib as f64);
    }
    out
}

/// Wait until `pool` has [`BUFFER`] warm sandboxes.
async fn until_full(api: &Api, pool: &str) -> anyhow::Result<()> {
    until_available(api, pool, BUFFER).await
}

/// Wait until `pool` has `n` warm sandboxes (polled every 5 ms).
async fn until_available(api: &Api, pool: &str, n: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    while api.pool_status(pool).await?.available < n {
        if t.elapsed() > REFILL_TIMEOUT {
            bail!("pool {pool} not back to {n} warm within {REFILL_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Warm sandboxes of the flat-cost sweep's points (one platform each, runc).
pub const SWEEP: [u64; 4] = [10, 50, 100, 300];
/// The flat-cost sweep's pool.
pub const SWEEP_POOL: &str = "flat";

/// `sandpool serve --pool` value of the sweep's pool holding `n` warm sandboxes.
pub fn sweep_pool_flag(n: u64) -> String {
    format!("{SWEEP_POOL}:busybox:{n}:{n}:0:{}:runc", n + 16)
}

/// `rounds` warm claims on the sweep's pool of `n`, each made on the full
/// pool (after the refill of the one before) and deleted after.
pub async fn claims_at(api: &Api, n: u64, rounds: usize) -> anyhow::Result<Summary> {
    let mut took = Vec::new();
    for _ in 0..rounds {
        until_available(api, SWEEP_POOL, n).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (t, id) = api.claim_and_exec(&warm_claim(SWEEP_POOL)).await?;
        took.push(t);
        api.delete(&id).await?;
    }
    Ok(summarize(&took))
}

/// CPU of [`BUFFER`] creates of `runtime`: claim the full pool's warm
/// sandboxes (kept), wait for the refill, then release them.
pub async fn create_cpu(
    api: &Api,
    serve: u32,
    data_dir: &Path,
    runtime: &str,
) -> anyhow::Result<CpuSplit> {
    let pool = pool_name(runtime);
    let dir = data_dir.display().to_string();
    until_full(api, &pool).await?;
    let before = snapshot();
    let mut ids = Vec::new();
    for _ in 0..BUFFER {
        ids.push(api.create(&warm_claim(&pool)).await?);
    }
    let refilled = until_full(api, &pool).await;
    let after = snapshot();
    for id in &ids {
        api.delete(id).await?;
    }
    refilled?;
    let parts = classify(&after, serve, &dir);
    Ok(cpu_split(&before, &after, &parts))
}

/// Warm claim latencies of `runtime`'s pool: `n` each way.
#[derive(Debug, Clone)]
pub struct UnderRefill {
    /// each claim on a full, quiet pool
    pub at_rest: Vec<Duration>,
    /// claims back to back: refills run all along
    pub refilling: Vec<Duration>,
    /// claims of the back-to-back run that fell back to cold starts
    pub cold: u64,
}

/// `n` claims on a full pool (each waits for the refill of the one before),
/// then `n` back to back (each deleted before the next, untimed).
pub async fn claims_under_refill(
    api: &Api,
    runtime: &str,
    n: usize,
) -> anyhow::Result<UnderRefill> {
    let pool = pool_name(runtime);
    let mut at_rest = Vec::new();
    for _ in 0..n {
        until_full(api, &pool).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (took, id) = api.claim_and_exec(&warm_claim(&pool)).await?;
        at_rest.push(took);
        api.delete(&id).await?;
    }
    until_full(api, &pool).await?;
    let cold0 = api.claim_count(&pool, "cold").await.unwrap_or(0);
    let mut refilling = Vec::new();
    for _ in 0..n {
        let (took, id) = api.claim_and_exec(&warm_claim(&pool)).await?;
        refilling.push(took);
        api.delete(&id).await?;
    }
    let cold = api
        .claim_count(&pool, "cold")
        .await
        .context("cold claims")?
        .saturating_sub(cold0);
    Ok(UnderRefill {
        at_rest,
        refilling,
        cold,
    })
}

/// Nearest-rank percentiles of a CDF table.
const CDF_AT: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 100.0];

/// A text CDF of the two samples (ms), with the ratio at each percentile.
pub fn cdf_table(u: &UnderRefill) -> String {
    let sorted = |v: &[Duration]| {
        let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let (rest, busy) = (sorted(&u.at_rest), sorted(&u.refilling));
    let at = |v: &[f64], p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v.get(rank.clamp(1, v.len().max(1)) - 1)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut md = String::from(
        "| percentile | at rest (ms) | while refills run (ms) | ratio |\n|---:|---:|---:|---:|\n",
    );
    for p in CDF_AT {
        let (a, b) = (at(&rest, p), at(&busy, p));
        let _ = writeln!(md, "| p{p:.0} | {a:.1} | {b:.1} | {:.2}× |", b / a);
    }
    md
}

/// Summaries of both samples.
pub fn summaries(u: &UnderRefill) -> (Summary, Summary) {
    (summarize(&u.at_rest), summarize(&u.refilling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, comm: &str, own: u64, children: u64) -> ProcCpu {
        ProcCpu {
            pid,
            ppid,
            comm: comm.into(),
            own,
            children,
        }
    }

    #[test]
    fn stat_lines_parse_with_spaces_and_parens_in_comm() {
        let line = "4242 (my (odd) proc) S 17 4242 4242 0 -1 4194560 100 0 0 0 7 3 11 5 20 0 1 0 100 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(proc(4242, 17, "my (odd) proc", 10, 16))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0 1"), None);
    }

    #[test]
    fn cpu_is_split_by_part_and_counts_new_processes_whole() {
        let entry = |p: ProcCpu, cmd: &str| (p.pid, (p, cmd.to_string()));
        let before: HashMap<_, _> = [
            entry(proc(10, 1, "sandpool", 100, 5), "sandpool serve"),
            entry(proc(11, 10, "containerd", 50, 0), "containerd"),
            entry(
                proc(20, 1, "containerd-shim", 3, 4),
                "shim -address /d/c.sock",
            ),
        ]
        .into();
        let after: HashMap<_, _> = [
            entry(proc(10, 1, "sandpool", 130, 9), "sandpool serve"),
            entry(proc(11, 10, "containerd", 70, 12), "containerd"),
            entry(
                proc(20, 1, "containerd-shim", 5, 4),
                "shim -address /d/c.sock",
            ),
            // a new shim, its runc already reaped, and its runtime
            entry(
                proc(30, 1, "containerd-shim", 6, 25),
                "shim -address /d/c.sock",
            ),
            entry(proc(31, 30, "sandpool-runtim", 8, 0), "/sandpool-runtime"),
            entry(proc(32, 31, "sandpool-runtim", 2, 0), "/sandpool-runtime"),
            // another platform's shim and an unrelated process
            entry(
                proc(40, 1, "containerd-shim", 9, 9),
                "shim -address /other/c.sock",
            ),
            entry(proc(50, 1, "cc1", 900, 0), "cc1"),
        ]
        .into();
        let parts = classify(&after, 10, "/d/");
        assert_eq!(parts.get(&31), Some(&Part::Sandbox));
        assert_eq!(parts.get(&32), Some(&Part::Sandbox), "grandchildren too");
        assert!(!parts.contains_key(&40) && !parts.contains_key(&50));
        let s = cpu_split(&before, &after, &parts);
        assert_eq!(
            s,
            CpuSplit {
                containerd: 20,
                shim_start: 12,
                shims: 2 + 6,
                oci_runtime: 25,
                sandboxes: 10,
                serve: 30,
                serve_children: 4,
            }
        );
        let (rows, total) = s.per_create_ms(2);
        assert_eq!(total, (20 + 12 + 8 + 25 + 10 + 30 + 4) as f64 * 10.0 / 2.0);
        assert_eq!(rows[3], ("runc/runsc", 125.0));
    }

    #[test]
    fn a_sandbox_tree_holds_its_shim_what_is_under_it_and_what_names_its_id() {
        let entry = |p: ProcCpu, cmd: &str| (p.pid, (p, cmd.to_string()));
        let procs: HashMap<_, _> = [
            entry(
                proc(20, 1, "containerd-shim", 0, 0),
                "shim -namespace n -id sb-1 -address /d/c.sock",
            ),
            entry(proc(21, 20, "exe", 0, 0), "runsc-sandbox boot sb-1"),
            entry(proc(22, 21, "exe", 0, 0), "runsc-sandbox child"),
            // reparented to init, but naming the id
            entry(
                proc(23, 1, "exe", 0, 0),
                "runsc-gofer gofer --bundle /run/sb-1",
            ),
            entry(
                proc(30, 1, "containerd-shim", 0, 0),
                "shim -namespace n -id sb-2 -address /d/c.sock",
            ),
            entry(proc(31, 30, "sandpool-runtim", 0, 0), "/sandpool-runtime"),
            entry(proc(40, 1, "containerd", 0, 0), "containerd sb-1"),
        ]
        .into();
        assert_eq!(sandbox_tree(&procs, 20), HashSet::from([20, 21, 22, 23]));
        assert_eq!(sandbox_tree(&procs, 30), HashSet::from([30, 31]));
    }

    #[test]
    fn the_cdf_table_shows_both_samples_and_their_ratio() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect();
        let u = UnderRefill {
            at_rest: ms(&[4, 2, 3, 1]),
            refilling: ms(&[8, 4, 6, 2]),
            cold: 0,
        };
        let t = cdf_table(&u);
        assert!(t.contains("| p50 | 2.0 | 4.0 | 2.00× |"), "{t}");
        assert!(t.contains("| p100 | 4.0 | 8.0 | 2.00× |"), "{t}");
    }
}
