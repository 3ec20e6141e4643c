//! Refill pacing (issue 22): how large a pool's buffer should be for the
//! recent claim rate, and how many refill creates may run at once given
//! the free CPU and the claims in flight. Pure decisions; the scheduler
//! does the I/O (reads `/proc/stat`, times creates, counts claims).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::pool::{CapacitySpec, PoolCounts, scale_decision};

/// The claims of one pool over a sliding window, for its recent rate.
#[derive(Debug, Clone)]
pub struct ClaimRate {
    window: Duration,
    at: VecDeque<Instant>,
}

impl Default for ClaimRate {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl ClaimRate {
    /// Claims older than `window` no longer count.
    pub fn new(window: Duration) -> Self {
        ClaimRate {
            window,
            at: VecDeque::new(),
        }
    }

    /// A claim was made `at`.
    pub fn record(&mut self, at: Instant) {
        self.at.push_back(at);
    }

    /// Claims per second over the window ending `now` (older ones are dropped).
    pub fn per_sec(&mut self, now: Instant) -> f64 {
        while self
            .at
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            self.at.pop_front();
        }
        self.at.len() as f64 / self.window.as_secs_f64()
    }
}

/// The buffer the recent demand needs: the claims expected while refills
/// catch up (twice the claims arriving during one create of `create_secs`),
/// rounded (an occasional claim asks for nothing extra), within
/// `[bufferMin, bufferMax]`.
pub fn demand_buffer(spec: &CapacitySpec, claims_per_sec: f64, create_secs: f64) -> u32 {
    let need = (2.0 * claims_per_sec.max(0.0) * create_secs.max(0.0)).round();
    let need = if need.is_finite() {
        need.min(u32::MAX as f64) as u32
    } else {
        u32::MAX
    };
    need.clamp(spec.buffer_min, spec.buffer_max.max(spec.buffer_min))
}

/// [`scale_decision`] with the buffer raised to `target` (from
/// [`demand_buffer`]): creates until warm + creating reaches `target`
/// (within poolMax and `max_inflight`), else the upstream decision. A
/// buffer over bufferMax still shrinks as upstream does.
pub fn refill_decision(spec: &CapacitySpec, c: PoolCounts, target: u32, max_inflight: u32) -> i64 {
    let upstream = scale_decision(spec, c, max_inflight);
    if upstream < 0 {
        return upstream;
    }
    let buffer = c.warm + c.creating;
    let want = target.min(spec.buffer_max).saturating_sub(buffer) as i64;
    let room = (spec.pool_max as i64 - c.total() as i64).max(0);
    let inflight_room = (max_inflight as i64 - c.creating as i64).max(0);
    upstream.max(want.min(room).min(inflight_room))
}

/// Cumulative CPU time of the machine (the `cpu` line of `/proc/stat`), in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// user, nice, system, irq, softirq, steal
    pub busy: u64,
    /// idle and iowait
    pub idle: u64,
}

impl CpuTimes {
    /// The aggregate `cpu ` line of a `/proc/stat` text (`None` if absent or malformed).
    pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if v.len() < 4 {
            return None;
        }
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // guest and guest_nice (8, 9) are already inside user and nice
        Some(CpuTimes {
            busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
            idle: at(3) + at(4),
        })
    }

    /// Idle cores between `self` (earlier) and `later` on a machine of
    /// `cores` cores: 0.0 ..= cores; `None` when no time passed.
    pub fn idle_cores(&self, later: &CpuTimes, cores: u32) -> Option<f64> {
        let busy = later.busy.saturating_sub(self.busy);
        let idle = later.idle.saturating_sub(self.idle);
        let all = busy + idle;
        (all > 0).then(|| idle as f64 / all as f64 * f64::from(cores))
    }
}

/// Idle cores from successive `/proc/stat` samples: a sample closer than
/// `min_ticks` to the last one used leaves the estimate as it was (a
/// refill pass woken right after another would see too few ticks).
#[derive(Debug, Clone, Default)]
pub struct CpuSampler {
    last: Option<CpuTimes>,
    idle: Option<f64>,
}

impl CpuSampler {
    /// Ticks between two samples for a new estimate (100 ms of 2 cores).
    pub const MIN_TICKS: u64 = 20;

    /// The machine's times are `now` (on `cores` cores): the current idle
    /// cores estimate (`None` until two samples were far enough apart).
    pub fn sample(&mut self, now: CpuTimes, cores: u32) -> Option<f64> {
        match self.last {
            None => self.last = Some(now),
            Some(last) => {
                let ticks = (now.busy + now.idle).saturating_sub(last.busy + last.idle);
                if ticks >= Self::MIN_TICKS {
                    self.idle = last.idle_cores(&now, cores);
                    self.last = Some(now);
                }
            }
        }
        self.idle
    }
}

/// What one refill create costs in cores while it runs (containerd, shim,
/// runc and the runtime's start; measured by bench-suite's CPU-ms row).
pub const CORES_PER_CREATE: f64 = 0.5;

/// How many refill creates may run at once, over all pools: one per
/// [`CORES_PER_CREATE`] of `idle_cores` (unknown: `max`), within 1..=`max`;
/// only one while claims are in flight, so claims get the CPU first and
/// refills still make progress.
pub fn refill_slots(idle_cores: Option<f64>, max: u32, claims_in_flight: u32) -> u32 {
    let max = max.max(1);
    if claims_in_flight > 0 {
        return 1;
    }
    match idle_cores {
        None => max,
        Some(idle) => {
            let n = (idle.max(0.0) / CORES_PER_CREATE).floor();
            (n.min(f64::from(max)) as u32).max(1)
        }
    }
}

/// A running average of how long a refill create takes, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CreateTime(f64);

impl Default for CreateTime {
    /// Before any create was timed: a warm create of a small image on a
    /// 2-CPU machine (`docs/benchmarks.md`).
    fn default() -> Self {
        CreateTime(0.3)
    }
}

impl CreateTime {
    /// A create took `took`: an exponential average weighing it 1/4.
    pub fn observe(&mut self, took: Duration) {
        self.0 = 0.75 * self.0 + 0.25 * took.as_secs_f64();
    }

    pub fn secs(&self) -> f64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bmin: u32, bmax: u32, pmax: u32) -> CapacitySpec {
        CapacitySpec {
            buffer_min: bmin,
            buffer_max: bmax,
            pool_min: 0,
            pool_max: pmax,
        }
    }

    #[test]
    fn the_claim_rate_counts_the_window_and_forgets_older_claims() {
        let t0 = Instant::now();
        let mut r = ClaimRate::new(Duration::from_secs(10));
        assert_eq!(r.per_sec(t0), 0.0);
        for i in 0..20 {
            r.record(t0 + Duration::from_millis(100 * i));
        }
        assert_eq!(r.per_sec(t0 + Duration::from_secs(2)), 2.0);
        // 11.05 s on, the claims before 1.05 s have left the window
        assert_eq!(r.per_sec(t0 + Duration::from_millis(11_050)), 0.9);
        assert_eq!(r.per_sec(t0 + Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn the_demand_buffer_follows_the_rate_between_buffer_min_and_max() {
        let s = spec(2, 16, 64);
        assert_eq!(demand_buffer(&s, 0.0, 0.3), 2, "no demand: bufferMin");
        // 10 claims/s, 0.3 s per create: 3 arrive per create, twice that
        assert_eq!(demand_buffer(&s, 10.0, 0.3), 6);
        assert_eq!(demand_buffer(&s, 11.0, 0.3), 7, "6.6, rounded");
        let none = spec(0, 16, 64);
        assert_eq!(
            demand_buffer(&none, 0.1, 0.3),
            0,
            "one claim in 10 s: nothing extra"
        );
        assert_eq!(demand_buffer(&s, 1000.0, 0.3), 16, "at most bufferMax");
        assert_eq!(demand_buffer(&s, f64::INFINITY, 1.0), 16);
        assert_eq!(demand_buffer(&s, f64::NAN, 1.0), 2);
        assert_eq!(demand_buffer(&s, -3.0, 1.0), 2);
    }

    #[test]
    fn the_refill_reaches_the_demand_target_within_the_bounds() {
        let s = spec(2, 16, 20);
        let c = |warm, creating, allocated| PoolCounts {
            warm,
            creating,
            allocated,
        };
        // in range with no demand: upstream leaves it alone
        assert_eq!(refill_decision(&s, c(4, 0, 0), 2, 100), 0);
        // demand for 10: six more
        assert_eq!(refill_decision(&s, c(4, 0, 0), 10, 100), 6);
        // creating ones count towards it
        assert_eq!(refill_decision(&s, c(4, 5, 0), 10, 100), 1);
        // bounded by in-flight creates and poolMax
        assert_eq!(refill_decision(&s, c(4, 0, 0), 10, 3), 3);
        assert_eq!(refill_decision(&s, c(4, 0, 14), 10, 100), 2);
        // below bufferMin: upstream's middle when it is higher than demand
        assert_eq!(refill_decision(&s, c(0, 0, 0), 3, 100), 9);
        // over bufferMax: shrinks as upstream, whatever the demand
        assert_eq!(refill_decision(&s, c(18, 0, 0), 16, 100), -9);
        // a target past bufferMax is held to it
        assert_eq!(refill_decision(&s, c(10, 0, 0), 40, 100), 6);
    }

    #[test]
    fn proc_stat_parses_into_busy_and_idle_ticks() {
        let text = "cpu  100 5 50 1000 20 1 2 3 7 0\ncpu0 50 2 25 500 10 0 1 1 0 0\nintr 1\n";
        let t = CpuTimes::parse_proc_stat(text).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                busy: 100 + 5 + 50 + 1 + 2 + 3,
                idle: 1000 + 20
            }
        );
        assert_eq!(CpuTimes::parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(CpuTimes::parse_proc_stat("cpu  1 x 3 4\n"), None);
        assert_eq!(CpuTimes::parse_proc_stat("cpu  1 2\n"), None);
    }

    #[test]
    fn idle_cores_come_from_the_tick_deltas() {
        let a = CpuTimes {
            busy: 100,
            idle: 100,
        };
        let b = CpuTimes {
            busy: 150,
            idle: 250,
        };
        // 150 idle of 200 ticks on 2 cores
        assert_eq!(a.idle_cores(&b, 2), Some(1.5));
        assert_eq!(a.idle_cores(&a, 2), None, "no time passed");
    }

    #[test]
    fn the_sampler_keeps_its_estimate_until_enough_ticks_passed() {
        let mut s = CpuSampler::default();
        assert_eq!(s.sample(CpuTimes { busy: 0, idle: 0 }, 2), None);
        // 10 ticks: too few for an estimate
        assert_eq!(s.sample(CpuTimes { busy: 5, idle: 5 }, 2), None);
        // 40 ticks since the first sample, 30 idle
        assert_eq!(s.sample(CpuTimes { busy: 10, idle: 30 }, 2), Some(1.5));
        // a pass right after: the same estimate
        assert_eq!(s.sample(CpuTimes { busy: 11, idle: 30 }, 2), Some(1.5));
        // 40 more ticks, all busy
        assert_eq!(s.sample(CpuTimes { busy: 50, idle: 30 }, 2), Some(0.0));
    }

    #[test]
    fn refill_slots_follow_free_cpu_and_yield_to_claims() {
        assert_eq!(
            refill_slots(None, 4, 0),
            4,
            "unknown CPU: the configured bound"
        );
        assert_eq!(
            refill_slots(Some(2.0), 8, 0),
            4,
            "two idle cores: four creates"
        );
        assert_eq!(refill_slots(Some(2.0), 3, 0), 3, "never past the bound");
        assert_eq!(
            refill_slots(Some(0.1), 4, 0),
            1,
            "a busy machine still refills"
        );
        assert_eq!(refill_slots(Some(2.0), 4, 1), 1, "claims in flight: one");
        assert_eq!(refill_slots(Some(2.0), 0, 0), 1);
    }

    #[test]
    fn create_time_averages_towards_what_creates_take() {
        let mut t = CreateTime::default();
        assert_eq!(t.secs(), 0.3);
        for _ in 0..40 {
            t.observe(Duration::from_secs(1));
        }
        assert!((t.secs() - 1.0).abs() < 0.01, "{}", t.secs());
    }
}
