//! Helpers shared by sandpool's benchmark commands and cross-component tests.

use std::time::Duration;

pub mod churn_bench;
pub mod platform;
pub mod plot;
pub mod recycle_bench;

/// Summary of a sample: microseconds from [`summarize`], the input unit from [`summarize_values`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted data.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary in microseconds.
pub fn summarize(samples: &[Duration]) -> Summary {
    let v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    summarize_values(&v)
}

/// Summary of a sample in its own unit (KiB, ms, ...).
pub fn summarize_values(values: &[f64]) -> Summary {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    Summary {
        n: v.len(),
        p50: pct(&v, 50.0),
        p90: pct(&v, 90.0),
        p95: pct(&v, 95.0),
        p99: pct(&v, 99.0),
        mean,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

impl Summary {
    /// The p50 of this sample against `base`'s for a table: `1.23×`, or
    /// `1.00× (baseline)` for the baseline itself (`None`).
    pub fn vs_baseline(&self, base: Option<&Summary>) -> String {
        base.map(|b| format!("{:.2}×", self.p50 / b.p50))
            .unwrap_or_else(|| "1.00× (baseline)".into())
    }
}

/// Resident set size of a process in KiB (from /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// A KiB field of /proc/PID/status (`VmRSS`, `VmHWM`, ...).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = s
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    value.split_whitespace().next()?.parse().ok()
}

/// The first port of the kernel's ephemeral range (outgoing connections).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port that is free now, taken below the kernel's ephemeral
/// range: a port from bind :0 can be taken again by any outgoing connection
/// before the server under test binds it. Never the same port twice in one
/// process.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FLOOR: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().min(65_536);
    if low <= FLOOR {
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port());
    }
    // One seed per process: with the counter, it walks distinct ports.
    static SEED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        nanos ^ std::process::id().wrapping_mul(2_654_435_761)
    });
    let width = low - FLOOR;
    for _ in 0..1000 {
        // a stride that is prime to nearly every width walks distinct ports
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FLOOR + seed.wrapping_add(n.wrapping_mul(7919)) % width;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free loopback port below the ephemeral range",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..20).map(|_| free_port().expect("a free port")).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!(
                low <= 10_000 || (10_000..low).contains(&u32::from(p)),
                "port {p} in the ephemeral range from {low}"
            );
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("still free");
        }
    }

    #[test]
    fn percentiles_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = summarize(&d);
        assert_eq!(
            (s.n, s.p50, s.p90, s.p95, s.p99, s.min, s.max),
            (100, 50.0, 90.0, 95.0, 99.0, 1.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert!(summarize(&[]).p50.is_nan());
        assert_eq!(summarize_values(&[3.0, 1.0, 2.0]).p50, 2.0);
    }

    #[test]
    fn rss_of_self_is_positive() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        assert_eq!(status_kib(std::process::id(), "NoSuchField"), None);
    }
}
