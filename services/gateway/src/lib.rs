//! The sandpool gateway: the OpenSandbox lifecycle REST API (what the
//! `opensandbox` Python SDK 1.1.x calls) on top of the scheduler's gRPC API,
//! plus a proxy so SDKs outside the node network reach sandbox ports.

pub mod auth;
mod calls;
pub mod e2b;
pub mod egress;
pub mod error;
pub mod extract;
pub mod grpc;
pub mod limit;
pub mod opensandbox;
pub mod proxy;
pub mod sandbox_router;
pub mod tenancy;
mod timeout;
pub mod traffic;

use std::sync::Arc;

use sandpool_proto::{auth::AuthChannel, v1::scheduler_client::SchedulerClient};

#[derive(Clone)]
pub struct Gateway {
    /// the scheduler, with this process's service token on every call
    pub scheduler: SchedulerClient<AuthChannel>,
    /// the accepted API keys, hashed (keys are never kept in clear)
    keys: Arc<tenancy::KeyStore>,
    /// live sandboxes allowed per non-admin key
    pub max_sandboxes_per_key: u32,
    /// creates under way per key (part of the quota)
    creating: Arc<tenancy::Creating>,
    pub http: reqwest::Client,
    pub max_body: usize,
    /// Largest request body the proxy forwards to a sandbox (413 beyond).
    pub max_proxy_body: u64,
    /// Longest sandbox timeout a caller may ask for, in seconds.
    pub max_timeout_s: u64,
    /// Per-client request rate limit (None = off).
    pub limiter: Option<Arc<limit::RateLimiter>>,
    /// E2B template builds and their builder (none: builds answer 501).
    pub builds: Arc<e2b::Builds>,
    /// OpenSandbox credential vaults by claim id (secrets: in memory only,
    /// never logged nor returned; see `opensandbox::credential_vault`).
    pub vaults: Arc<
        parking_lot::Mutex<
            std::collections::HashMap<String, sandpool_core::credential_vault::Vault>,
        >,
    >,
}

impl Gateway {
    pub fn new(scheduler: SchedulerClient<AuthChannel>, api_keys: &[String]) -> Self {
        Gateway {
            scheduler,
            keys: Arc::new(tenancy::KeyStore::new(api_keys, None)),
            max_sandboxes_per_key: DEFAULT_MAX_SANDBOXES_PER_KEY,
            creating: Arc::default(),
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_idle_timeout(std::time::Duration::from_secs(30))
                // header names as upstream's (Go) proxy writes them into a
                // sandbox (`Host`, `X-Forwarded-Host`): servers that echo
                // what they got see E2B's spelling
                .http1_title_case_headers()
                .build()
                .unwrap_or_default(),
            max_body: 1 << 20,
            max_proxy_body: DEFAULT_MAX_PROXY_BODY,
            max_timeout_s: DEFAULT_MAX_TIMEOUT_S,
            limiter: limit::RateLimiter::new(DEFAULT_RATE_PER_SEC, DEFAULT_RATE_BURST)
                .map(Arc::new),
            builds: Arc::default(),
            vaults: Arc::default(),
        }
    }

    /// Build E2B templates with `builder` (`sandpool serve`: buildah).
    pub fn with_template_builder(mut self, builder: Arc<dyn e2b::TemplateBuilder>) -> Self {
        self.builds = Arc::new(e2b::Builds::new(Some(builder)));
        self
    }

    /// Keep E2B template build records in `store` (`sandpool serve`: the
    /// scheduler's redb store), loading those it holds; after
    /// [`Self::with_template_builder`].
    pub fn with_build_store(mut self, store: Arc<dyn e2b::BuildStore>) -> Self {
        let builder = self.builds.builder.clone();
        self.builds = Arc::new(e2b::Builds::new(builder).with_store(store));
        self
    }

    /// Set the longest sandbox timeout callers may ask for, in seconds.
    pub fn with_max_timeout(mut self, secs: u64) -> Self {
        self.max_timeout_s = secs;
        self
    }

    /// Set the per-client limit (`per_sec` 0 = off).
    pub fn with_rate_limit(mut self, per_sec: f64, burst: f64) -> Self {
        self.limiter = limit::RateLimiter::new(per_sec, burst).map(Arc::new);
        self
    }

    /// Also accept the keys of `path` (`sandpool key create`), re-read when it changes.
    pub fn with_keys_file(mut self, api_keys: &[String], path: std::path::PathBuf) -> Self {
        self.keys = Arc::new(tenancy::KeyStore::new(api_keys, Some(path)));
        self
    }

    /// Live sandboxes allowed per non-admin key.
    pub fn with_max_sandboxes_per_key(mut self, n: u32) -> Self {
        self.max_sandboxes_per_key = n;
        self
    }

    /// Who `key` is, if it is one of the accepted API keys.
    pub fn principal(&self, key: &str) -> Option<tenancy::Principal> {
        self.keys.check(key)
    }

    /// Whether `key` is one of the accepted API keys.
    pub fn key_ok(&self, key: &str) -> bool {
        self.principal(key).is_some()
    }

    pub fn auth_enabled(&self) -> bool {
        self.keys.enabled()
    }
}

pub fn rfc3339_ms(ms: i64) -> String {
    // past chrono's range is the farthest time it has, never 1970
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or(if ms > 0 {
            chrono::DateTime::<chrono::Utc>::MAX_UTC
        } else {
            chrono::DateTime::<chrono::Utc>::MIN_UTC
        })
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whether `s` is a DNS-1123 label: Kubernetes object and namespace names
/// (the sandbox router) and upstream's volume names.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Prometheus metrics of this process (served on its own listener, not
/// behind the API key: keep it off public interfaces).
pub fn metrics_app() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { sandpool_telemetry::metrics::response() }),
    )
}

/// Default longest sandbox timeout: 24 h (E2B's longest plan).
pub const DEFAULT_MAX_TIMEOUT_S: u64 = 86_400;
/// Default largest proxied request body: the runtime's largest file plus
/// room for a multipart envelope.
pub const DEFAULT_MAX_PROXY_BODY: u64 = (1 << 30) + (1 << 20);

/// Defaults: generous for one agent framework, a wall against runaway loops.
pub const DEFAULT_RATE_PER_SEC: f64 = 1000.0;
pub const DEFAULT_RATE_BURST: f64 = 2000.0;
/// Live sandboxes per non-admin API key.
pub const DEFAULT_MAX_SANDBOXES_PER_KEY: u32 = 50;

/// 429 once a client (API key, else peer address) exceeds its rate.
async fn rate_limit(
    axum::extract::State(gw): axum::extract::State<Gateway>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(l) = &gw.limiter {
        let h = req.headers();
        let client = h
            .get("open-sandbox-api-key")
            .or_else(|| h.get("x-api-key"))
            .or_else(|| h.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                req.extensions()
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip().to_string())
            })
            .unwrap_or_default();
        if let Err(wait) = l.check(&client, std::time::Instant::now()) {
            let e = error::ApiError::RateLimited(wait);
            if grpc::is_grpc(req.headers()) {
                return grpc::refusal(e);
            }
            return e.into_response();
        }
    }
    next.run(req).await
}

/// `X-Request-ID` on every OpenSandbox response (`/v1`, its proxy routes,
/// `/health`, `/version`), errors and 429s included, as the OpenSandbox
/// server does; E2B's API and E2B-routed sandbox traffic are left as they are.
async fn opensandbox_request_id(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let p = req.uri().path();
    let opensandbox = (p == "/v1" || p.starts_with("/v1/") || p == "/health" || p == "/version")
        && !req.headers().contains_key("e2b-sandbox-id");
    if !opensandbox {
        return next.run(req).await;
    }
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| http::HeaderValue::from_str(v).ok())
        .unwrap_or_else(new_request_id);
    let mut resp = next.run(req).await;
    resp.headers_mut().insert("x-request-id", id);
    resp
}

/// A fresh request id: 32 hex digits (time and a process-wide counter;
/// unique, not secret).
fn new_request_id() -> http::HeaderValue {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    http::HeaderValue::from_str(&format!("{t:016x}{n:016x}"))
        .unwrap_or(http::HeaderValue::from_static("-"))
}

/// The whole HTTP app: OpenSandbox (`/v1`), E2B (`/sandboxes`, `/v2`), and
/// E2B sandbox traffic routed by header or host before anything else.
pub fn app(gw: Gateway) -> axum::Router {
    opensandbox::router(gw.clone())
        .merge(e2b::router(gw.clone()))
        .merge(grpc::router(gw.clone()))
        .layer(axum::middleware::from_fn_with_state(gw.clone(), e2b::route_by_e2b_headers))
        .layer(axum::middleware::from_fn_with_state(gw.clone(), rate_limit))
        .layer(axum::middleware::from_fn(opensandbox_request_id))
        .layer(axum::middleware::map_response(|r: axum::response::Response| async move {
            sandpool_telemetry::metrics::http_request("gateway", r.status().as_u16());
            r
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(
        |req: &http::Request<axum::body::Body>| {
            let span = tracing::info_span!("gateway.request", method = %req.method(), path = %req.uri().path());
            sandpool_telemetry::extract_parent(&span, req.headers());
            span
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn gateway() -> Gateway {
        // never dialled: /health does not reach the scheduler
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Gateway::new(
            SchedulerClient::with_interceptor(ch, Default::default()),
            &["k1".to_string()],
        )
    }

    async fn health(app: &axum::Router, key: &str) -> axum::response::Response {
        let req = http::Request::get("/health")
            .header("OPEN-SANDBOX-API-KEY", key)
            .body(axum::body::Body::empty())
            .expect("request");
        app.clone().oneshot(req).await.expect("response")
    }

    #[tokio::test]
    async fn over_the_rate_a_client_gets_429_with_retry_after() {
        // one token per 1000 s: none refills while the test runs, however slowly
        let app = app(gateway().with_rate_limit(0.001, 2.0));
        assert_eq!(health(&app, "k1").await.status(), 200);
        assert_eq!(health(&app, "k1").await.status(), 200);
        let r = health(&app, "k1").await;
        assert_eq!(r.status(), 429);
        // the wait for the next token (1000 s less what already refilled), rounded up
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("whole seconds");
        assert!(
            (990..=1000).contains(&retry_after),
            "retry-after {retry_after}"
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["code"], "RATE_LIMITED");
        assert_eq!(
            health(&app, "other").await.status(),
            200,
            "another client is not affected"
        );
        // off
        let app = app_off();
        for _ in 0..50 {
            assert_eq!(health(&app, "k1").await.status(), 200);
        }
    }

    fn app_off() -> axum::Router {
        app(gateway().with_rate_limit(0.0, 0.0))
    }

    #[tokio::test]
    async fn opensandbox_responses_echo_the_request_id() {
        let app = app(gateway().with_rate_limit(0.001, 1.0));
        let send = |uri: &str, key: &str| {
            let req = http::Request::get(uri)
                .header("OPEN-SANDBOX-API-KEY", key)
                .header("X-Request-ID", "rid-7")
                .body(axum::body::Body::empty())
                .expect("request");
            app.clone().oneshot(req)
        };
        for (uri, key, status) in [
            ("/health", "k1", 200),
            ("/health", "k1", 429),
            ("/v1/sandboxes", "wrong", 401),
            ("/v1/no/such/route", "k2", 404),
        ] {
            let r = send(uri, key).await.expect("response");
            assert_eq!(r.status(), status, "{uri}");
            assert_eq!(r.headers()["x-request-id"], "rid-7", "{uri}");
        }
        let req = http::Request::get("/health").body(axum::body::Body::empty());
        let r = app
            .clone()
            .oneshot(req.expect("request"))
            .await
            .expect("response");
        let fresh = r.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            fresh.len() == 32 && fresh.chars().all(|c| c.is_ascii_hexdigit()),
            "{fresh}"
        );
        let r = send("/no-such-e2b-route", "k3").await.expect("response");
        assert!(
            r.headers().get("x-request-id").is_none(),
            "E2B is left alone"
        );
    }
}
