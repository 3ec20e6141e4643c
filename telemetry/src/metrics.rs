//! Prometheus metrics shared by every sandpool service (one registry per
//! process; `sandpool serve` runs all services in one process, so one
//! `/metrics` covers them). Rendered in the OpenMetrics text format.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    /// Claim latency (API call to sandbox ready), by pool and outcome
    /// (`warm`, `cold`, `error`, `exhausted`).
    pub claim_seconds: HistogramFamily,
    /// Sandboxes of a pool by state (`total`, `allocated`, `available`).
    pub pool_sandboxes: Family<Labels, Gauge>,
    /// Sandboxes created to refill a pool.
    pub pool_refills: Family<Labels, Counter>,
    /// Command start latency through the gateway proxy (request sent to
    /// response head), by API (`execd`, `envd`, `interpreter`).
    pub exec_seconds: HistogramFamily,
    /// Errors by service and kind.
    pub errors: Family<Labels, Counter>,
    /// Reconciles of the Kubernetes controllers by controller and result.
    pub reconciles: Family<Labels, Counter>,
    /// HTTP requests served, by service and status class.
    pub http_requests: Family<Labels, Counter>,
    /// Sandboxes stopped by a limit, by reason (`OOMKilled`,
    /// `DiskLimitExceeded`).
    pub limit_kills: Family<Labels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~65 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
}

/// Register each listed metric of `m` in `registry` under its name and help text.
macro_rules! register {
    ($registry:ident, $m:ident, $($field:ident: $name:literal, $help:literal;)*) => {
        $($registry.register($name, $help, $m.$field.clone());)*
    };
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("sandpool");
    let m = Metrics {
        claim_seconds: HistogramFamily::new_with_constructor(latency_histogram),
        pool_sandboxes: Family::default(),
        pool_refills: Family::default(),
        exec_seconds: HistogramFamily::new_with_constructor(latency_histogram),
        errors: Family::default(),
        reconciles: Family::default(),
        http_requests: Family::default(),
        limit_kills: Family::default(),
        registry: Registry::default(),
    };
    register!(registry, m,
        claim_seconds: "claim_duration_seconds", "Time from a claim request to a ready sandbox";
        pool_sandboxes: "pool_sandboxes", "Sandboxes of a pool by state";
        pool_refills: "pool_refills", "Sandboxes created to refill a pool";
        exec_seconds: "exec_duration_seconds",
            "Command start latency through the gateway (request to response head)";
        errors: "errors", "Errors by service and kind";
        reconciles: "reconciles", "Kubernetes controller reconciles by result";
        http_requests: "http_requests", "HTTP requests by service and status class";
        limit_kills: "sandbox_limit_kills", "Sandboxes stopped by a limit, by reason";
    );
    Metrics { registry, ..m }
});

pub fn get() -> &'static Metrics {
    &METRICS
}

/// The registry in the Prometheus/OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::new();
    if encode(&mut out, &METRICS.registry).is_err() {
        out.clear();
    }
    out
}

/// The label set `pairs` (names with their values).
fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Add `n` to the counter of `family` labelled `pairs`.
fn count(family: &Family<Labels, Counter>, pairs: &[(&'static str, &str)], n: u64) {
    family.get_or_create(&labels(pairs)).inc_by(n);
}

/// Record `took` in the histogram of `family` labelled `pairs`.
fn observe(family: &HistogramFamily, pairs: &[(&'static str, &str)], took: Duration) {
    family
        .get_or_create(&labels(pairs))
        .observe(took.as_secs_f64());
}

pub fn observe_claim(pool: &str, outcome: &'static str, took: Duration) {
    observe(
        &get().claim_seconds,
        &[("pool", pool), ("outcome", outcome)],
        took,
    );
}

pub fn set_pool(pool: &str, total: u32, allocated: u32, available: u32) {
    for (state, v) in [
        ("total", total),
        ("allocated", allocated),
        ("available", available),
    ] {
        get()
            .pool_sandboxes
            .get_or_create(&labels(&[("pool", pool), ("state", state)]))
            .set(i64::from(v));
    }
}

pub fn refilled(pool: &str, n: u64) {
    count(&get().pool_refills, &[("pool", pool)], n);
}

pub fn observe_exec(api: &'static str, took: Duration) {
    observe(&get().exec_seconds, &[("api", api)], took);
}

pub fn limit_killed(reason: &'static str) {
    count(&get().limit_kills, &[("reason", reason)], 1);
}

pub fn error(service: &'static str, kind: &str) {
    count(&get().errors, &[("service", service), ("kind", kind)], 1);
}

pub fn reconciled(controller: &'static str, result: &str) {
    count(
        &get().reconciles,
        &[("controller", controller), ("result", result)],
        1,
    );
}

pub fn http_request(service: &'static str, status: u16) {
    let class = format!("{}xx", status / 100);
    count(
        &get().http_requests,
        &[("service", service), ("code", &class)],
        1,
    );
}

/// The `/metrics` response (content type of the text format).
pub fn response() -> ([(http::HeaderName, &'static str); 1], String) {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_show_up_in_the_rendering() {
        observe_claim("unit-pool", "warm", Duration::from_millis(7));
        set_pool("unit-pool", 4, 1, 3);
        error("gateway", "not_found");
        let text = render();
        assert!(
            text.contains(
                "sandpool_claim_duration_seconds_count{pool=\"unit-pool\",outcome=\"warm\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("sandpool_pool_sandboxes{pool=\"unit-pool\",state=\"available\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sandpool_errors_total{service=\"gateway\",kind=\"not_found\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn hostile_label_values_cannot_forge_lines() {
        let hostile = "x\"} 1\nsandpool_forged_total 7\n# EOF\n\\";
        observe_claim(hostile, "warm", Duration::from_millis(1));
        error("gateway", hostile);
        let text = render();
        assert!(
            !text.lines().any(|l| l.starts_with("sandpool_forged")),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| *l == "# EOF").count(), 1, "{text}");
        assert!(
            text.contains(r#"pool="x\"} 1\nsandpool_forged_total 7\n# EOF\n\\""#),
            "{text}"
        );
    }
}
