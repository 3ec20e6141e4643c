//! `/v1/sandboxes/{id}/endpoints/{port}` (where a sandbox port answers) and
//! `/v1/pools`.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, header},
};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

use super::{RUNTIME_PORT, Result, egress_api, sandbox_port};
use crate::{Gateway, error::ApiError, extract};

pub async fn endpoint(
    State(gw): State<Gateway>,
    Path((id, port)): Path<(String, String)>,
    headers: HeaderMap,
    extract::Query(q, _): extract::Query,
) -> Result<([(&'static str, &'static str); 1], Json<Value>)> {
    let port: u32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| ApiError::Invalid(format!("bad port {port}")))?;
    let use_proxy = q
        .iter()
        .any(|(k, v)| k == "use_server_proxy" && v.eq_ignore_ascii_case("true"));
    let (c, egress_token) = gw.get_claim_egress_token(&id).await?;
    let sb = c
        .sandbox
        .ok_or_else(|| ApiError::Internal("claim without sandbox".into()))?;
    // a port a network-less sandbox does not expose resolves to the proxy,
    // which answers 501 with the reason when used
    let direct = sandbox_port(&sb, port).ok();
    // the egress sidecar's port is the gateway's own route in either mode
    let direct = direct.filter(|_| !use_proxy && port != egress_api::PORT);
    let Some(direct) = direct else {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let mut v = json!({ "endpoint": format!("{host}/v1/sandboxes/{id}/proxy/{port}") });
        if let Some(t) = egress_token.filter(|_| port == egress_api::PORT) {
            v["headers"] = json!({ egress_api::AUTH_HEADER: t });
        }
        return Ok(([ORIGIN], Json(v)));
    };
    let mut v = json!({ "endpoint": format!("{}:{direct}", sb.ip) });
    if port == RUNTIME_PORT {
        v["headers"] = json!({ "X-EXECD-ACCESS-TOKEN": sb.access_token });
    }
    Ok(([ORIGIN], Json(v)))
}

/// Reported with every endpoint: the OpenSandbox 1.1 SDK then sends its
/// egress policy calls to the lifecycle API (`/sandboxes/{id}/networkpolicy`),
/// which the node enforces. SDKs that ignore it (and any client) reach the
/// egress sidecar's `/policy` API through the endpoint of port 18080, which
/// the gateway serves itself ([`egress_api`]); see docs/compatibility.md.
const ORIGIN: (&str, &str) = ("open-sandbox-origin", "template");

fn pool_json(p: &pb::Pool) -> Value {
    let c = p.capacity.unwrap_or_default();
    let s = p.status.clone().unwrap_or_default();
    json!({
        "name": p.name,
        "template": { "image": p.template.as_ref().map(|t| t.image.clone()).unwrap_or_default() },
        "capacitySpec": { "bufferMin": c.buffer_min, "bufferMax": c.buffer_max, "poolMin": c.pool_min, "poolMax": c.pool_max },
        "status": { "total": s.total, "allocated": s.allocated, "available": s.available }
    })
}

pub async fn get_pool(State(gw): State<Gateway>, Path(name): Path<String>) -> Result<Json<Value>> {
    Ok(Json(pool_json(&gw.get_pool(&name).await?)))
}

pub async fn list_pools(State(gw): State<Gateway>) -> Result<Json<Value>> {
    let pools = gw.list_pools().await?;
    Ok(Json(
        json!({ "items": pools.iter().map(pool_json).collect::<Vec<_>>() }),
    ))
}
