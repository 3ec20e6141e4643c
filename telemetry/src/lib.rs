//! Telemetry shared by every sandpool binary.
//!
//! * Logs go to stderr through `tracing-subscriber`, filtered by `RUST_LOG`
//!   (default `info`).
//! * OTLP trace export is **off by default** and is switched on by the
//!   standard variables `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (gRPC/tonic exporter; the exporter
//!   itself reads the other `OTEL_EXPORTER_OTLP_*` variables). `OTEL_SDK_DISABLED=true`
//!   or `OTEL_TRACES_EXPORTER=none` keep it off. `OTEL_SERVICE_NAME` overrides
//!   the service name.
//! * Trace context crosses HTTP and gRPC hops as W3C `traceparent`/`tracestate`
//!   headers: [`extract_parent`] on the server side, [`inject_current`] on the
//!   client side.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Errors while setting telemetry up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP exporter failed: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("installing the tracing subscriber failed: {0}")]
    Subscriber(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider alive; flushes pending spans on drop.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Whether the standard OTEL variables ask for trace export.
pub mod metrics;

pub fn otlp_requested(get: impl Fn(&str) -> Option<String>) -> bool {
    let truthy = |k: &str| {
        get(k)
            .map(|v| v.trim().eq_ignore_ascii_case("true"))
            .unwrap_or(false)
    };
    if truthy("OTEL_SDK_DISABLED") {
        return false;
    }
    if get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
        return false;
    }
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| get(k).is_some_and(|v| !v.trim().is_empty()))
}

/// Install the global subscriber and propagator. Call once from `main`.
pub fn init(service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    init_with_level(service_name, None)
}

/// Span events the log shows: `SANDPOOL_LOG_SPANS=close` logs each span as
/// it closes with its busy and idle time (where a request's time goes),
/// `full` also its start; unset or anything else, none.
fn span_events(setting: Option<&str>) -> tracing_subscriber::fmt::format::FmtSpan {
    use tracing_subscriber::fmt::format::FmtSpan;
    match setting {
        Some("close") => FmtSpan::CLOSE,
        Some("full") => FmtSpan::NEW | FmtSpan::CLOSE,
        _ => FmtSpan::NONE,
    }
}

/// [`init`] with a default log filter (`RUST_LOG` still wins when set).
pub fn init_with_level(
    service_name: &str,
    level: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l.to_lowercase()).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_span_events(span_events(
            std::env::var("SANDPOOL_LOG_SPANS").ok().as_deref(),
        ));

    let provider = if otlp_requested(|k| std::env::var(k).ok()) {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(TelemetryError::Exporter)?;
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_string());
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(name).build())
                .build(),
        )
    } else {
        None
    };

    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    let res = match &provider {
        Some(p) => {
            let tracer = p.tracer(service_name.to_string());
            opentelemetry::global::set_tracer_provider(p.clone());
            registry
                .with(tracing_opentelemetry::layer().with_tracer(tracer))
                .try_init()
        }
        None => registry.try_init(),
    };
    res.map_err(TelemetryError::Subscriber)?;
    Ok(TelemetryGuard { provider })
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(val)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, val);
        }
    }
}

/// The remote parent carried by W3C headers (HTTP headers or gRPC metadata
/// converted with `MetadataMap::as_ref`).
pub fn extract_context(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Make `span` a child of the trace carried by `headers`, if any.
pub fn extract_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = extract_context(headers);
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Write the current span's trace context into outgoing `headers`.
pub fn inject_current(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// A gRPC request carrying the current span's W3C trace context.
pub fn grpc_request<T>(msg: T) -> tonic::Request<T> {
    let mut h = http::HeaderMap::new();
    inject_current(&mut h);
    let mut r = tonic::Request::new(msg);
    for (k, v) in h.iter() {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(k.as_str().as_bytes()),
            tonic::metadata::MetadataValue::try_from(v.as_bytes()),
        ) {
            r.metadata_mut().insert(k, v);
        }
    }
    r
}

/// The server span of one gRPC call (for tonic's `Server::trace_fn`): named
/// after the method (`/sandpool.v1.Scheduler/PauseClaim`) and continuing the
/// caller's W3C trace. Every RPC of every sandpool server runs in one.
pub fn grpc_server_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    extract_parent(&span, req.headers());
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::format::FmtSpan;

    #[test]
    fn span_events_follow_sandpool_log_spans() {
        assert_eq!(span_events(None), FmtSpan::NONE);
        assert_eq!(span_events(Some("close")), FmtSpan::CLOSE);
        assert_eq!(span_events(Some("full")), FmtSpan::NEW | FmtSpan::CLOSE);
        assert_eq!(span_events(Some("yes")), FmtSpan::NONE);
    }

    #[test]
    fn otlp_is_off_by_default_and_on_with_endpoint() {
        assert!(!otlp_requested(|_| None));
        assert!(otlp_requested(
            |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4317".into())
        ));
        assert!(!otlp_requested(|k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4317".into()),
            "OTEL_SDK_DISABLED" => Some("true".into()),
            _ => None,
        }));
        assert!(!otlp_requested(|k| match k {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://x:4317".into()),
            "OTEL_TRACES_EXPORTER" => Some("none".into()),
            _ => None,
        }));
    }

    #[test]
    fn extracts_w3c_traceparent() {
        use opentelemetry::trace::TraceContextExt;
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = extract_context(&h);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !extract_context(&http::HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }
}
