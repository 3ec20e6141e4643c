//! The agent-sandbox sandbox router: what the `k8s-agent-sandbox` SDK reaches
//! by default (Service `sandbox-router-svc` port 8080 in
//! `agent-sandbox-system`, through a tunnel, a Gateway or a direct URL). Every
//! request names its sandbox in headers and is forwarded, path and query as
//! they are, to that sandbox's headless Service:
//!
//! * `X-Sandbox-ID` — the Sandbox's name (required),
//! * `X-Sandbox-Namespace` — its namespace (default `default`),
//! * `X-Sandbox-Port` — the port in the sandbox (default 8888),
//! * `X-Sandbox-Timeout` — seconds the answer may take (capped).
//!
//! The target is `http://{id}.{namespace}.svc.{cluster domain}:{port}`. The
//! SDK's `X-Sandbox-Pod-IP` is ignored: a caller-chosen IP would make the
//! router an open proxy. Like upstream's router this listener has no
//! authentication; it is off unless `--sandbox-router-listen` is given, it
//! forwards only to allowed ports (8888 by default), and in the chart only
//! pods the NetworkPolicy admits reach it.

use std::time::Duration;

use axum::{
    Router,
    extract::{Request, State},
    response::Response,
    routing::get,
};

use crate::{error::ApiError, proxy};

/// The headers the router reads, and never forwards.
const ID: &str = "x-sandbox-id";
const NAMESPACE: &str = "x-sandbox-namespace";
const PORT: &str = "x-sandbox-port";
const TIMEOUT: &str = "x-sandbox-timeout";
const SANDBOX_HEADER_PREFIX: &str = "x-sandbox-";

/// The router's settings.
#[derive(Clone)]
pub struct RouterConfig {
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Sandbox ports requests may go to.
    pub allowed_ports: Vec<u16>,
    /// Longest wait for a sandbox's answer (upstream's proxy timeout: 180 s).
    pub max_timeout: Duration,
    /// Largest request body forwarded.
    pub max_body: usize,
    pub http: reqwest::Client,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            cluster_domain: "cluster.local".into(),
            allowed_ports: vec![8888],
            max_timeout: Duration::from_secs(180),
            max_body: 1 << 30,
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .unwrap_or_default(),
        }
    }
}

/// The router's HTTP service: `/healthz`, and every other path forwarded.
pub fn app(cfg: RouterConfig) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(forward)
        .with_state(cfg)
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::Invalid(format!("header {name} is not text")))
        })
        .transpose()
}

/// Where a request goes: the sandbox's Service URL (without path) and how
/// long the answer may take.
fn target(cfg: &RouterConfig, h: &http::HeaderMap) -> Result<(String, Duration), ApiError> {
    let id = header(h, ID)?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::Invalid("the X-Sandbox-ID header is required".into()))?;
    let ns = header(h, NAMESPACE)?
        .filter(|v| !v.is_empty())
        .unwrap_or("default");
    if !crate::is_dns_label(id) || !crate::is_dns_label(ns) {
        return Err(ApiError::Invalid(format!(
            "invalid sandbox {id:?} or namespace {ns:?}"
        )));
    }
    let port = match header(h, PORT)? {
        None => 8888,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| ApiError::Invalid(format!("invalid X-Sandbox-Port {p:?}")))?,
    };
    if !cfg.allowed_ports.contains(&port) {
        return Err(ApiError::Forbidden(format!(
            "port {port} is not routed (allowed: {:?})",
            cfg.allowed_ports
        )));
    }
    let timeout = header(h, TIMEOUT)?
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0)
        .map_or(cfg.max_timeout, |t| {
            Duration::from_secs_f64(t).min(cfg.max_timeout)
        });
    let url = format!("http://{id}.{ns}.svc.{}:{port}", cfg.cluster_domain);
    Ok((url, timeout))
}

async fn forward(State(cfg): State<RouterConfig>, req: Request) -> Result<Response, ApiError> {
    let (base, timeout) = target(&cfg, req.headers())?;
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("{base}{path_and_query}");
    let (parts, body) = req.into_parts();
    let out = proxy::forward_headers(
        cfg.http.request(parts.method, &url).timeout(timeout),
        &parts.headers,
        |name, _| name.starts_with(SANDBOX_HEADER_PREFIX),
    );
    let resp = out
        .body(proxy::limited_body(body, cfg.max_body))
        .send()
        .await
        .map_err(ApiError::sandbox_unreachable(format!("{base} unreachable")))?;
    proxy::stream_back(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    #[test]
    fn the_target_is_the_sandboxs_service_on_an_allowed_port() {
        let cfg = RouterConfig::default();
        let (url, t) = target(
            &cfg,
            &headers(&[
                ("X-Sandbox-ID", "sb-1"),
                ("X-Sandbox-Namespace", "team-a"),
                ("X-Sandbox-Port", "8888"),
                ("X-Sandbox-Timeout", "2.5"),
            ]),
        )
        .expect("target");
        assert_eq!(url, "http://sb-1.team-a.svc.cluster.local:8888");
        assert_eq!(t, Duration::from_millis(2500));
        // defaults: namespace default, port 8888, the router's own timeout
        let (url, t) = target(&cfg, &headers(&[("X-Sandbox-ID", "sb")])).expect("target");
        assert_eq!(url, "http://sb.default.svc.cluster.local:8888");
        assert_eq!(t, cfg.max_timeout);
        // a longer timeout than the router's is capped
        let (_, t) = target(
            &cfg,
            &headers(&[("X-Sandbox-ID", "sb"), ("X-Sandbox-Timeout", "99999")]),
        )
        .expect("target");
        assert_eq!(t, cfg.max_timeout);
    }

    #[test]
    fn names_that_are_not_dns_labels_and_other_ports_are_refused() {
        let cfg = RouterConfig::default();
        for h in [
            vec![],
            vec![("X-Sandbox-ID", "a.b")],
            vec![("X-Sandbox-ID", "evil.com:80/x#")],
            vec![
                ("X-Sandbox-ID", "sb"),
                ("X-Sandbox-Namespace", "kube-system.svc"),
            ],
            vec![("X-Sandbox-ID", "Upper")],
            vec![("X-Sandbox-ID", "sb"), ("X-Sandbox-Port", "x")],
        ] {
            let e = target(&cfg, &headers(&h)).expect_err("refused");
            assert!(matches!(e, ApiError::Invalid(_)), "{h:?}: {e}");
        }
        let e = target(
            &cfg,
            &headers(&[("X-Sandbox-ID", "sb"), ("X-Sandbox-Port", "443")]),
        )
        .expect_err("port");
        assert!(matches!(e, ApiError::Forbidden(_)), "{e}");
    }
}
