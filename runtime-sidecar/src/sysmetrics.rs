//! `/metrics` of execd: CPU and memory of the sandbox, preferring cgroup
//! limits over host totals when the sandbox is limited.

use std::time::Instant;

use parking_lot::Mutex;

use serde::Serialize;

#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Metrics {
    pub cpu_count: f64,
    pub cpu_used_pct: f64,
    pub mem_total_mib: f64,
    pub mem_used_mib: f64,
    pub timestamp: i64,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    busy: u64,
    total: u64,
}

fn read_cpu() -> Option<CpuSample> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(s.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<CpuSample> {
    let mut it = line.split_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some(CpuSample {
        busy: total - idle,
        total,
    })
}

fn parse_meminfo(s: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some((total, total.saturating_sub(avail)))
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// (limit, usage) of the cgroup the runtime lives in, when limited.
fn cgroup_memory() -> Option<(u64, u64)> {
    if let (Some(limit), Some(usage)) = (
        read_u64("/sys/fs/cgroup/memory.max"),
        read_u64("/sys/fs/cgroup/memory.current"),
    ) {
        return Some((limit, usage));
    }
    let limit = read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes")?;
    let usage = read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes")?;
    Some((limit, usage))
}

#[derive(Debug, Default)]
pub struct MetricsSampler {
    last: Mutex<Option<(Instant, CpuSample)>>,
}

impl MetricsSampler {
    /// CPU usage since the previous call (or over a 100 ms window the first time).
    pub async fn sample(&self) -> Metrics {
        let prev = { *self.last.lock() };
        let prev = match prev {
            Some((t, s)) if t.elapsed().as_millis() >= 50 => Some(s),
            _ => {
                let s = read_cpu();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                s
            }
        };
        let now = read_cpu();
        let cpu_used_pct = match (prev, now) {
            (Some(a), Some(b)) if b.total > a.total => {
                100.0 * (b.busy.saturating_sub(a.busy)) as f64 / (b.total - a.total) as f64
            }
            _ => 0.0,
        };
        if let Some(n) = now {
            *self.last.lock() = Some((Instant::now(), n));
        }
        let (mut total, mut used) = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo(&s))
            .unwrap_or((0, 0));
        if let Some((limit, usage)) = cgroup_memory()
            && limit < total
        {
            total = limit;
            used = usage;
        }
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Metrics {
            cpu_count: cpus as f64,
            cpu_used_pct: (cpu_used_pct * 100.0).round() / 100.0,
            mem_total_mib: (total as f64 / 1048576.0 * 100.0).round() / 100.0,
            mem_used_mib: (used as f64 / 1048576.0 * 100.0).round() / 100.0,
            timestamp: crate::events::now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let s = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        assert_eq!((s.busy, s.total), (150, 1000));
        assert!(parse_cpu_line("intr 1 2 3").is_none());
        let (t, u) =
            parse_meminfo("MemTotal:  1024 kB\nMemFree: 10 kB\nMemAvailable:  256 kB\n").unwrap();
        assert_eq!((t, u), (1024 * 1024, 768 * 1024));
    }

    #[tokio::test]
    async fn sample_is_sane() {
        let m = MetricsSampler::default().sample().await;
        assert!(m.cpu_count >= 1.0);
        assert!((0.0..=100.0).contains(&m.cpu_used_pct));
        assert!(m.mem_total_mib > 0.0 && m.mem_used_mib <= m.mem_total_mib);
    }
}
