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
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~65 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 19))
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
        registry: Registry::default(),
    };
    registry.register(
        "claim_duration_seconds",
        "Time from a claim request to a ready sandbox",
        m.claim_seconds.clone(),
    );
    registry.register(
        "pool_sandboxes",
        "Sandboxes of a pool by state",
        m.pool_sandboxes.clone(),
    );
    registry.register(
        "pool_refills",
        "Sandboxes created to refill a pool",
        m.pool_refills.clone(),
    );
    registry.register(
        "exec_duration_seconds",
        "Command start latency through the gateway (request to response head)",
        m.exec_seconds.clone(),
    );
    registry.register("errors", "Errors by service and kind", m.errors.clone());
    registry.register(
        "reconciles",
        "Kubernetes controller reconciles by result",
        m.reconciles.clone(),
    );
    registry.register(
        "http_requests",
        "HTTP requests by service and status class",
        m.http_requests.clone(),
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

pub fn observe_claim(pool: &str, outcome: &'static str, took: Duration) {
    get()
        .claim_seconds
        .get_or_create(&vec![
            ("pool", pool.to_string()),
            ("outcome", outcome.to_string()),
        ])
        .observe(took.as_secs_f64());
}

pub fn set_pool(pool: &str, total: u32, allocated: u32, available: u32) {
    for (state, v) in [
        ("total", total),
        ("allocated", allocated),
        ("available", available),
    ] {
        get()
            .pool_sandboxes
            .get_or_create(&vec![
                ("pool", pool.to_string()),
                ("state", state.to_string()),
            ])
            .set(i64::from(v));
    }
}

pub fn refilled(pool: &str, n: u64) {
    get()
        .pool_refills
        .get_or_create(&vec![("pool", pool.to_string())])
        .inc_by(n);
}

pub fn observe_exec(api: &'static str, took: Duration) {
    get()
        .exec_seconds
        .get_or_create(&vec![("api", api.to_string())])
        .observe(took.as_secs_f64());
}

pub fn error(service: &'static str, kind: &str) {
    get()
        .errors
        .get_or_create(&vec![
            ("service", service.to_string()),
            ("kind", kind.to_string()),
        ])
        .inc();
}

pub fn reconciled(controller: &'static str, result: &str) {
    get()
        .reconciles
        .get_or_create(&vec![
            ("controller", controller.to_string()),
            ("result", result.to_string()),
        ])
        .inc();
}

pub fn http_request(service: &'static str, status: u16) {
    let class = format!("{}xx", status / 100);
    get()
        .http_requests
        .get_or_create(&vec![("service", service.to_string()), ("code", class)])
        .inc();
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
