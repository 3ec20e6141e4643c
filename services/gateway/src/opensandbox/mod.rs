//! OpenSandbox lifecycle API (`/v1/sandboxes`, SDK 1.1.x wire format):
//! sandboxes, snapshots, and endpoints/pools; sandbox traffic goes through
//! [`crate::proxy`].

pub(crate) mod credential_vault;
mod egress_api;
mod endpoints;
mod network;
mod sandboxes;
mod snapshots;
mod volumes;

use axum::{
    Json, Router,
    extract::Request,
    http::StatusCode,
    routing::{any, get, patch, post},
};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

use crate::{Gateway, auth, error::ApiError, proxy, rfc3339_ms};

pub use sandboxes::{Create, parse_create};

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub const RUNTIME_PORT: u32 = 44772;

/// Where a sandbox's `port` answers. A network-less (checkpointable)
/// sandbox is reached only through the node agent's tunnel to its runtime
/// (`runtime_port` on the agent's host, not 44772): any other port would be
/// the host's own, so it is refused.
pub fn sandbox_port(sb: &pb::SandboxInfo, port: u32) -> Result<u32> {
    let tunnelled = sb.runtime_port != 0 && sb.runtime_port != RUNTIME_PORT;
    match (port == RUNTIME_PORT, tunnelled) {
        (true, true) => Ok(sb.runtime_port),
        (false, true) => Err(ApiError::Unsupported(format!(
            "port {port} of sandbox {} (it has no network, so only its runtime, port {RUNTIME_PORT}, is reachable)",
            sb.sandbox_id
        ))),
        (_, false) => Ok(port),
    }
}

/// The ports a network-less sandbox's tunnel carries besides its runtime's
/// own: envd and the code interpreter, served by the same runtime, which
/// answers a request on 44772 naming one of them in [`PORT_HEADER`] with
/// that port's service.
pub const TUNNELLED_PORTS: [u32; 2] = [49983, 49999];

/// The header naming the in-sandbox port of a request sent through a
/// network-less sandbox's tunnel (the runtime's `ports` module reads it).
pub const PORT_HEADER: &str = "x-sandpool-port";

/// Where the gateway sends traffic for `port` of `sb`: the port to connect
/// to, and the in-sandbox port to name in [`PORT_HEADER`] when the request
/// goes through a network-less sandbox's tunnel to another of its
/// runtime's ports (envd, the code interpreter).
pub fn sandbox_target(sb: &pb::SandboxInfo, port: u32) -> Result<(u32, Option<u32>)> {
    match sandbox_port(sb, port) {
        Ok(p) => Ok((p, None)),
        Err(_) if TUNNELLED_PORTS.contains(&port) => Ok((sb.runtime_port, Some(port))),
        Err(_) => Err(ApiError::Unsupported(format!(
            "port {port} of sandbox {} (it has no network, so only its runtime's ports {RUNTIME_PORT}, {} and {} are reachable)",
            sb.sandbox_id, TUNNELLED_PORTS[0], TUNNELLED_PORTS[1]
        ))),
    }
}

pub fn router(gw: Gateway) -> Router {
    let v1 = Router::new()
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route("/sandboxes/{id}", get(sandboxes::get_one).delete(sandboxes::delete))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/renew-expiration", post(sandboxes::renew))
        .route("/sandboxes/{id}/endpoints/{port}", get(endpoints::endpoint))
        .route(
            "/sandboxes/{id}/networkpolicy",
            get(network::get_policy)
                .put(network::change_policy)
                .patch(network::change_policy)
                .delete(network::change_policy),
        )
        .route("/sandboxes/{id}/metadata", patch(sandboxes::patch_metadata))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create_snapshot))
        .route("/snapshots", get(snapshots::list_snapshots))
        .route("/snapshots/{id}", get(snapshots::get_snapshot).delete(snapshots::delete_snapshot))
        .route("/templates", any(|| async { ApiError::Unsupported("templates".into()) }))
        .route("/sandboxes/{id}/proxy/{port}", any(proxy::proxy_root))
        .route("/sandboxes/{id}/proxy/{port}/{*path}", any(proxy::proxy_path))
        .route("/metrics/events", post(|| async { StatusCode::NO_CONTENT }))
        .route("/pools", get(endpoints::list_pools))
        .route("/pools/{name}", get(endpoints::get_pool))
        .fallback(|req: Request| async move {
            (StatusCode::NOT_FOUND, Json(json!({"code": "NOT_FOUND", "message": format!("no route {} {}", req.method(), req.uri().path())})))
        })
        .route_layer(axum::middleware::from_fn_with_state(
            (gw.clone(), auth::Api::OpenSandbox),
            auth::require_key,
        ))
        // the egress sidecar's API: its own authorisation (API key or the
        // sandbox's egress token), see `egress_api`
        .route(
            "/sandboxes/{id}/proxy/18080/policy",
            get(egress_api::policy)
                .post(egress_api::policy)
                .put(egress_api::policy)
                .patch(egress_api::policy)
                .delete(egress_api::policy),
        )
        .route(
            "/sandboxes/{id}/proxy/18080/credential-vault",
            get(credential_vault::root)
                .post(credential_vault::root)
                .patch(credential_vault::root)
                .delete(credential_vault::root),
        )
        .route(
            "/sandboxes/{id}/proxy/18080/credential-vault/{*rest}",
            get(credential_vault::sub),
        );
    Router::new()
        .route(
            "/health",
            get(|| async { Json(json!({"status": "healthy"})) }),
        )
        .route(
            "/version",
            get(|| async {
                Json(json!({"version": env!("CARGO_PKG_VERSION"), "name": "sandpool"}))
            }),
        )
        .nest("/v1", v1)
        .with_state(gw)
}

/// OpenSandbox state of a claim.
fn state_name(s: i32) -> &'static str {
    match pb::ClaimState::try_from(s) {
        Ok(pb::ClaimState::Pending) => "Pending",
        Ok(pb::ClaimState::Bound) => "Running",
        Ok(pb::ClaimState::Paused) => "Paused",
        Ok(pb::ClaimState::Released) | Ok(pb::ClaimState::Expired) => "Terminated",
        Ok(pb::ClaimState::Failed) => "Failed",
        _ => "Pending",
    }
}

fn sandbox_json(c: &pb::Claim) -> Value {
    let mut v = json!({
        "id": c.claim_id,
        "status": { "state": state_name(c.state), "lastTransitionAt": rfc3339_ms(c.created_unix_ms) },
        "entrypoint": c.entrypoint,
        "createdAt": rfc3339_ms(c.created_unix_ms),
        "image": { "uri": c.image },
        "metadata": c.metadata,
    });
    if !c.message.is_empty() {
        // the node's report, e.g. `OOMKilled: ...` / `DiskLimitExceeded: ...`
        let reason = c.message.split_once(':').map_or("Failed", |(r, _)| r);
        v["status"]["reason"] = json!(reason);
        v["status"]["message"] = json!(c.message);
    }
    if c.expires_unix_ms > 0 {
        v["expiresAt"] = json!(rfc3339_ms(c.expires_unix_ms));
    }
    if !c.pool.is_empty() {
        v["extensions"] = json!({ "poolRef": c.pool });
    }
    v
}

/// `page` / `pageSize` of an OpenSandbox list.
struct Paging {
    page: usize,
    size: usize,
}

impl Default for Paging {
    fn default() -> Self {
        Paging { page: 1, size: 20 }
    }
}

impl Paging {
    /// Take `k=v` if it is a paging parameter; others are ignored.
    fn param(&mut self, k: &str, v: &str) -> Result<()> {
        match k {
            "page" => {
                self.page = v
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| ApiError::Invalid(format!("bad page {v}")))?
            }
            "pageSize" => {
                self.size = v
                    .parse()
                    .ok()
                    .filter(|p| (1..=200).contains(p))
                    .ok_or_else(|| {
                        ApiError::Invalid(format!("pageSize must be 1..=200, got {v}"))
                    })?
            }
            _ => {}
        }
        Ok(())
    }

    fn json(&self, all: Vec<Value>) -> Value {
        let total = all.len();
        let items: Vec<Value> = all
            .into_iter()
            .skip((self.page - 1) * self.size)
            .take(self.size)
            .collect();
        let total_pages = total.div_ceil(self.size);
        json!({
            "items": items,
            "pagination": { "page": self.page, "pageSize": self.size, "totalItems": total, "totalPages": total_pages, "hasNextPage": self.page < total_pages }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_shape_has_sdk_required_fields() {
        let c = pb::Claim {
            claim_id: "c1".into(),
            pool: "p".into(),
            state: pb::ClaimState::Bound as i32,
            created_unix_ms: 1_700_000_000_000,
            expires_unix_ms: 1_700_000_600_000,
            entrypoint: vec!["tail".into(), "-f".into(), "/dev/null".into()],
            ..Default::default()
        };
        let v = sandbox_json(&c);
        for k in ["id", "status", "entrypoint", "createdAt"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["status"]["state"], "Running");
        assert_eq!(v["extensions"]["poolRef"], "p");
        assert_eq!(v["expiresAt"], "2023-11-14T22:23:20.000Z");
    }

    #[test]
    fn a_failed_sandbox_says_why() {
        let c = pb::Claim {
            state: pb::ClaimState::Failed as i32,
            message: "DiskLimitExceeded: the sandbox wrote more than its limit".into(),
            ..Default::default()
        };
        let v = sandbox_json(&c);
        assert_eq!(
            (&v["status"]["state"], &v["status"]["reason"]),
            (&json!("Failed"), &json!("DiskLimitExceeded"))
        );
        assert_eq!(v["status"]["message"], json!(c.message));
        let running = sandbox_json(&pb::Claim::default());
        assert!(running["status"].get("reason").is_none());
    }

    #[test]
    fn network_less_sandboxes_expose_only_their_runtime() {
        let tunnelled = pb::SandboxInfo {
            sandbox_id: "sb".into(),
            ip: "127.0.0.1".into(),
            runtime_port: 40001,
            ..Default::default()
        };
        assert_eq!(sandbox_port(&tunnelled, RUNTIME_PORT).unwrap(), 40001);
        let e = sandbox_port(&tunnelled, 49983).unwrap_err();
        assert_eq!(
            e.status(),
            StatusCode::NOT_IMPLEMENTED,
            "never the host's own port 49983"
        );
        let bridged = pb::SandboxInfo {
            ip: "10.213.0.5".into(),
            runtime_port: RUNTIME_PORT,
            ..Default::default()
        };
        assert_eq!(
            (
                sandbox_port(&bridged, RUNTIME_PORT).unwrap(),
                sandbox_port(&bridged, 49983).unwrap()
            ),
            (RUNTIME_PORT, 49983)
        );
    }

    #[test]
    fn network_less_sandboxes_reach_envd_and_the_interpreter_through_the_runtime_tunnel() {
        let tunnelled = pb::SandboxInfo {
            sandbox_id: "sb".into(),
            ip: "127.0.0.1".into(),
            runtime_port: 40001,
            ..Default::default()
        };
        assert_eq!(
            sandbox_target(&tunnelled, RUNTIME_PORT).unwrap(),
            (40001, None)
        );
        assert_eq!(
            sandbox_target(&tunnelled, 49983).unwrap(),
            (40001, Some(49983))
        );
        assert_eq!(
            sandbox_target(&tunnelled, 49999).unwrap(),
            (40001, Some(49999))
        );
        let e = sandbox_target(&tunnelled, 8080).unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        let bridged = pb::SandboxInfo {
            ip: "10.213.0.5".into(),
            runtime_port: RUNTIME_PORT,
            ..Default::default()
        };
        assert_eq!(sandbox_target(&bridged, 49983).unwrap(), (49983, None));
        assert_eq!(sandbox_target(&bridged, 8080).unwrap(), (8080, None));
    }

    #[test]
    fn paging() {
        let mut p = Paging::default();
        p.param("page", "2").unwrap();
        p.param("pageSize", "2").unwrap();
        p.param("other", "x").unwrap();
        let v = p.json((0..5).map(|i| json!(i)).collect());
        assert_eq!(v["items"], json!([2, 3]));
        assert_eq!(
            (
                v["pagination"]["totalPages"].as_u64(),
                v["pagination"]["hasNextPage"].as_bool()
            ),
            (Some(3), Some(true))
        );
        assert!(p.param("pageSize", "0").is_err() && p.param("page", "x").is_err());
    }
}
