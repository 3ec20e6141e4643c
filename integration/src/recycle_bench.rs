//! The bench-suite's "recycle vs create" scenario: two small pools of one
//! runtime class, alike but for their release policy (`delete`: released
//! sandboxes are destroyed and the pool creates a new one; `recycle`: the
//! node resets them and they return to the pool). Each round claims the
//! pool's one warm sandbox, runs `true`, deletes the claim, and times the
//! `DELETE` and the turnover: from the `DELETE` until the pool has a warm
//! sandbox again. Both pools are measured in the same run, rounds
//! interleaved, so their ratio compares like with like.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::{
    Summary,
    platform::{Api, warm_claim},
    summarize,
};

/// Bound of one turnover.
const TURNOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The pools of one runtime class: (delete pool, recycle pool).
pub fn pool_names(runtime: &str) -> (String, String) {
    (format!("turn-{runtime}-del"), format!("turn-{runtime}-rec"))
}

/// `sandpool serve --pool` values of the scenario's pools for `runtime`:
/// bufferMin 0, bufferMax 1, poolMin 1, so each holds one sandbox, replaced
/// (delete) or recycled after each claim.
pub fn pool_flags(runtime: &str) -> [String; 2] {
    let (del, rec) = pool_names(runtime);
    [
        format!("{del}:busybox:0:1:1:2:{runtime}"),
        format!("{rec}:busybox:0:1:1:2:{runtime}:recycle"),
    ]
}

/// One pool's rounds.
#[derive(Debug, Clone)]
pub struct Turnovers {
    /// `DELETE` until a warm sandbox is back.
    pub turnover: Summary,
    /// The `DELETE` call alone.
    pub release: Summary,
    /// Claims that got the same sandbox (address) as the round before.
    pub reused: usize,
}

/// Both pools of one runtime class.
#[derive(Debug, Clone)]
pub struct RecycleVsCreate {
    pub delete: Turnovers,
    pub recycle: Turnovers,
}

impl RecycleVsCreate {
    /// How many times faster the recycle turnover is (p50).
    pub fn ratio(&self) -> f64 {
        self.delete.turnover.p50 / self.recycle.turnover.p50
    }
}

/// Per-round samples of one pool.
#[derive(Default)]
struct Samples {
    turnover: Vec<Duration>,
    release: Vec<Duration>,
    reused: usize,
    last_endpoint: Option<String>,
}

impl Samples {
    fn summary(&self) -> Turnovers {
        Turnovers {
            turnover: summarize(&self.turnover),
            release: summarize(&self.release),
            reused: self.reused,
        }
    }
}

/// Wait (polling every 2 ms) until `pool` has a warm sandbox.
async fn until_warm(api: &Api, pool: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    while api.pool_status(pool).await?.available < 1 {
        if t.elapsed() > TURNOVER_TIMEOUT {
            bail!("pool {pool} had no warm sandbox within {TURNOVER_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// One round on `pool`: claim, exec, then the timed release and turnover.
async fn round(api: &Api, pool: &str, s: &mut Samples) -> anyhow::Result<()> {
    until_warm(api, pool).await?;
    let (_, id) = api.claim_and_exec(&warm_claim(pool)).await?;
    let endpoint = api.execd(&id).await?.endpoint;
    if s.last_endpoint.as_ref() == Some(&endpoint) {
        s.reused += 1;
    }
    s.last_endpoint = Some(endpoint);
    let t = Instant::now();
    api.delete(&id).await?;
    s.release.push(t.elapsed());
    until_warm(api, pool).await?;
    s.turnover.push(t.elapsed());
    Ok(())
}

/// `rounds` rounds on each of `runtime`'s two pools, interleaved.
pub async fn recycle_vs_create(
    api: &Api,
    runtime: &str,
    rounds: usize,
) -> anyhow::Result<RecycleVsCreate> {
    let (del, rec) = pool_names(runtime);
    let (mut d, mut r) = (Samples::default(), Samples::default());
    for _ in 0..rounds {
        round(api, &del, &mut d).await?;
        round(api, &rec, &mut r).await?;
    }
    Ok(RecycleVsCreate {
        delete: d.summary(),
        recycle: r.summary(),
    })
}

/// The table's result cell: both turnovers, the ratio, the `DELETE` calls
/// and how many claims got the previous claim's sandbox.
pub fn result_cell(r: &RecycleVsCreate, rounds: usize) -> String {
    let ms = |us: f64| format!("{:.1} ms", us / 1e3);
    format!(
        "recycle {:.1}× faster back to warm (p50 {} vs delete+create {}); DELETE call p50 {} vs {}; \
         same sandbox again {}/{rounds} (recycle) vs {}/{rounds} (delete)",
        r.ratio(),
        ms(r.recycle.turnover.p50),
        ms(r.delete.turnover.p50),
        ms(r.recycle.release.p50),
        ms(r.delete.release.p50),
        r.recycle.reused,
        r.delete.reused,
    )
}
