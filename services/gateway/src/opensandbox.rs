//! OpenSandbox lifecycle API (`/v1/sandboxes`, SDK 1.1.x wire format).

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{any, get, patch, post},
};
use chrono::DateTime;
use sandpool_proto::v1 as pb;
use sandpool_telemetry::grpc_request as traced;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Gateway, error::ApiError, proxy, query_pairs, rfc3339_ms};

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

pub fn router(gw: Gateway) -> Router {
    let v1 = Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).delete(delete))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/renew-expiration", post(renew))
        .route("/sandboxes/{id}/endpoints/{port}", get(endpoint))
        .route("/sandboxes/{id}/metadata", patch(|| async { ApiError::Unsupported("PATCH metadata".into()) }))
        .route("/sandboxes/{id}/snapshots", post(create_snapshot))
        .route("/snapshots", get(list_snapshots))
        .route("/snapshots/{id}", get(get_snapshot).delete(delete_snapshot))
        .route("/templates", any(|| async { ApiError::Unsupported("templates".into()) }))
        .route("/sandboxes/{id}/proxy/{port}", any(proxy::proxy_root))
        .route("/sandboxes/{id}/proxy/{port}/{*path}", any(proxy::proxy_path))
        .route("/metrics/events", post(|| async { StatusCode::NO_CONTENT }))
        .route("/pools", get(list_pools))
        .route("/pools/{name}", get(get_pool))
        .fallback(|req: Request| async move {
            (StatusCode::NOT_FOUND, Json(json!({"code": "NOT_FOUND", "message": format!("no route {} {}", req.method(), req.uri().path())})))
        })
        .route_layer(axum::middleware::from_fn_with_state(gw.clone(), require_key));
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

async fn require_key(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    if gw.auth_enabled() {
        match req
            .headers()
            .get("open-sandbox-api-key")
            .and_then(|v| v.to_str().ok())
        {
            None | Some("") => return ApiError::MissingKey.into_response(),
            Some(k) if !gw.key_ok(k) => return ApiError::InvalidKey.into_response(),
            Some(_) => {}
        }
    }
    next.run(req).await
}

async fn json_body<T: serde::de::DeserializeOwned>(gw: &Gateway, body: Body) -> Result<T> {
    crate::parse_json(&crate::read_body(gw, body).await?)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ImageSpec {
    #[serde(default)]
    uri: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Limits {
    #[serde(default)]
    cpu: Option<String>,
    #[serde(default)]
    memory: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    #[serde(default)]
    image: Option<ImageSpec>,
    /// seconds; null/absent = no expiry
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    resource_limits: Option<Limits>,
    #[serde(default)]
    env: Option<HashMap<String, String>>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    extensions: Option<HashMap<String, Value>>,
    #[serde(default)]
    snapshot_id: Option<String>,
    #[serde(default)]
    volumes: Option<Vec<Value>>,
}

fn parse_timeout(v: &Option<Value>) -> Result<u64> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(s) if s > 0 => Ok(s as u64),
            Some(s) => Err(ApiError::Invalid(format!(
                "timeout must be a positive number of seconds, got {s}"
            ))),
            None => Err(ApiError::Invalid(format!(
                "timeout must be an integer number of seconds, got {n}"
            ))),
        },
        Some(other) => Err(ApiError::Invalid(format!(
            "timeout must be an integer number of seconds, got {other}"
        ))),
    }
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
    if c.expires_unix_ms > 0 {
        v["expiresAt"] = json!(rfc3339_ms(c.expires_unix_ms));
    }
    if !c.pool.is_empty() {
        v["extensions"] = json!({ "poolRef": c.pool });
    }
    v
}

fn claim_not_found(id: &str) -> impl FnOnce(String) -> ApiError + '_ {
    move |_| ApiError::SandboxNotFound(id.to_string())
}

fn check_keys<'a>(keys: impl Iterator<Item = &'a String>) -> Result<()> {
    for k in keys {
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::Invalid(format!("bad key {k:?} in env/metadata")));
        }
    }
    Ok(())
}

/// What an OpenSandbox create body asks for.
#[derive(Debug)]
pub enum Create {
    /// a sandbox from a pool or an image
    Claim(Box<pb::ClaimRequest>),
    /// a sandbox from a snapshot (`snapshotId`)
    Restore(pb::RestoreCheckpointRequest),
}

/// An OpenSandbox create body as the claim or restore it asks for (pure: the
/// gateway's whole validation of `POST /sandboxes`, fuzzed in `fuzz/`).
pub fn parse_create(body: &[u8]) -> Result<Create> {
    let req: CreateRequest = crate::parse_json(body)?;
    match req.snapshot_id.as_deref() {
        Some(s) if !s.is_empty() => restore_of(req).map(Create::Restore),
        _ => claim_of(req).map(|c| Create::Claim(Box::new(c))),
    }
}

/// A create body with a `snapshotId`.
fn restore_of(req: CreateRequest) -> Result<pb::RestoreCheckpointRequest> {
    let snapshot = req.snapshot_id.unwrap_or_default();
    if req.image.as_ref().is_some_and(|i| !i.uri.is_empty()) {
        return Err(ApiError::Invalid(
            "give either image or snapshotId, not both".into(),
        ));
    }
    if req
        .extensions
        .as_ref()
        .is_some_and(|e| e.contains_key("poolRef"))
    {
        return Err(ApiError::Invalid(
            "a restore from snapshotId goes to the snapshot's own pool: drop extensions.poolRef"
                .into(),
        ));
    }
    if req.env.as_ref().is_some_and(|e| !e.is_empty())
        || req.volumes.as_ref().is_some_and(|v| !v.is_empty())
    {
        return Err(ApiError::Invalid("env and volumes cannot change on a restore from snapshotId (the processes keep theirs)".into()));
    }
    let metadata = req.metadata.unwrap_or_default();
    check_keys(metadata.keys())?;
    Ok(pb::RestoreCheckpointRequest {
        checkpoint_id: snapshot,
        count: 1,
        ttl_seconds: parse_timeout(&req.timeout)?,
        metadata,
    })
}

/// A create body without a `snapshotId`.
fn claim_of(req: CreateRequest) -> Result<pb::ClaimRequest> {
    let ttl = parse_timeout(&req.timeout)?;
    let pool = match req.extensions.as_ref().and_then(|e| e.get("poolRef")) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(p)) if !p.is_empty() => p.clone(),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "extensions.poolRef must be a non-empty string, got {other}"
            )));
        }
    };
    if !pool.is_empty() && req.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::Invalid(
            "volumes are not supported with extensions.poolRef".into(),
        ));
    }
    let entrypoint = req.entrypoint.clone().unwrap_or_default();
    let env = req.env.clone().unwrap_or_default();
    let metadata = req.metadata.clone().unwrap_or_default();
    check_keys(env.keys().chain(metadata.keys()))?;
    let template = if pool.is_empty() {
        let image = req
            .image
            .as_ref()
            .map(|i| i.uri.trim().to_string())
            .unwrap_or_default();
        if image.is_empty() {
            return Err(ApiError::Invalid(
                "image.uri is required without extensions.poolRef".into(),
            ));
        }
        let limits = req.resource_limits.unwrap_or_default();
        Some(pb::SandboxTemplate {
            image,
            resources: Some(pb::Resources {
                cpu: limits.cpu.unwrap_or_default(),
                memory: limits.memory.unwrap_or_default(),
                pids: 0,
            }),
            runtime_class: pb::RuntimeClass::Runc as i32,
            release_policy: pb::ReleasePolicy::Delete as i32,
            ..Default::default()
        })
    } else {
        None
    };
    Ok(pb::ClaimRequest {
        pool,
        pool_only: false,
        ttl_seconds: ttl,
        process: Some(pb::InjectRequest {
            argv: entrypoint,
            env,
            ..Default::default()
        }),
        metadata,
        claim_id: String::new(),
        template,
        mounts: Vec::new(),
        image: String::new(),
    })
}

async fn create(State(gw): State<Gateway>, body: Body) -> Result<Response> {
    let claim = match parse_create(&crate::read_body(&gw, body).await?)? {
        Create::Claim(c) => *c,
        Create::Restore(restore) => return create_from_snapshot(&gw, restore).await,
    };
    let pool2 = claim.pool.clone();
    let c = gw
        .scheduler
        .clone()
        .create_claim(traced(claim))
        .await
        .map_err(|s| {
            ApiError::from_status(s, move |m| {
                if pool2.is_empty() {
                    ApiError::Invalid(m)
                } else {
                    ApiError::PoolNotFound(pool2)
                }
            })
        })?
        .into_inner();
    Ok((StatusCode::ACCEPTED, Json(sandbox_json(&c))).into_response())
}

async fn create_from_snapshot(
    gw: &Gateway,
    restore: pb::RestoreCheckpointRequest,
) -> Result<Response> {
    let id = restore.checkpoint_id.clone();
    let snapshot = id.clone();
    let mut claims = gw
        .scheduler
        .clone()
        .restore_checkpoint(traced(restore))
        .await
        .map_err(|s| ApiError::from_status(s, |_| ApiError::SnapshotNotFound(id)))?
        .into_inner()
        .claims;
    let c = claims
        .pop()
        .ok_or_else(|| ApiError::Internal("restore made no sandbox".into()))?;
    let mut v = sandbox_json(&c);
    v["snapshotId"] = json!(snapshot);
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

#[derive(Deserialize, Default)]
struct SnapshotRequest {
    #[serde(default)]
    name: Option<String>,
}

fn snapshot_json(c: &pb::CheckpointInfo) -> Value {
    let mut v = json!({
        "id": c.checkpoint_id,
        "sandboxId": if c.owner.is_empty() { &c.sandbox_id } else { &c.owner },
        "status": { "state": "Ready", "lastTransitionAt": rfc3339_ms(c.created_unix_ms) },
        "createdAt": rfc3339_ms(c.created_unix_ms),
        "sizeBytes": c.size_bytes,
        "image": { "uri": c.image },
    });
    if !c.name.is_empty() {
        v["name"] = json!(c.name);
    }
    if !c.pool.is_empty() {
        v["extensions"] = json!({ "poolRef": c.pool });
    }
    v
}

/// `POST /sandboxes/{id}/snapshots`: a checkpoint of the running sandbox
/// (memory and files), which goes on running.
async fn create_snapshot(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response> {
    let bytes = crate::read_body(&gw, body).await?;
    let r: SnapshotRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        SnapshotRequest::default()
    } else {
        crate::parse_json(&bytes)?
    };
    let req = pb::CheckpointClaimRequest {
        claim_id: id.clone(),
        leave_running: true,
        name: r.name.unwrap_or_default(),
    };
    let info = gw
        .scheduler
        .clone()
        .checkpoint_claim(traced(req))
        .await
        .map_err(|s| ApiError::from_status(s, claim_not_found(&id)))?
        .into_inner();
    Ok((StatusCode::ACCEPTED, Json(snapshot_json(&info))).into_response())
}

async fn all_snapshots(gw: &Gateway) -> Result<Vec<pb::CheckpointInfo>> {
    let r = gw
        .scheduler
        .clone()
        .list_checkpoints(traced(pb::ListCheckpointsRequest {}))
        .await
        .map_err(|s| ApiError::from_status(s, ApiError::Internal))?;
    Ok(r.into_inner().checkpoints)
}

async fn get_snapshot(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Json<Value>> {
    let all = all_snapshots(&gw).await?;
    all.iter()
        .find(|c| c.checkpoint_id == id)
        .map(|c| Json(snapshot_json(c)))
        .ok_or(ApiError::SnapshotNotFound(id))
}

async fn list_snapshots(State(gw): State<Gateway>, req: Request) -> Result<Json<Value>> {
    let (mut sandbox, mut name, mut state) = (None, None, None);
    let mut pages = Paging::default();
    for (k, v) in query_pairs(req.uri()) {
        match k.as_str() {
            "sandboxId" => sandbox = Some(v),
            "name" => name = Some(v),
            "state" => state = Some(v),
            _ => pages.param(&k, &v)?,
        }
    }
    let items: Vec<Value> = all_snapshots(&gw)
        .await?
        .iter()
        .map(snapshot_json)
        .filter(|s| {
            sandbox
                .as_ref()
                .is_none_or(|x| s["sandboxId"] == x.as_str())
        })
        .filter(|s| name.as_ref().is_none_or(|x| s["name"] == x.as_str()))
        .filter(|_| {
            state
                .as_ref()
                .is_none_or(|x| x.eq_ignore_ascii_case("Ready"))
        })
        .collect();
    Ok(Json(pages.json(items)))
}

async fn delete_snapshot(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    let r = pb::CheckpointRef {
        checkpoint_id: id.clone(),
    };
    gw.scheduler
        .clone()
        .delete_checkpoint(traced(r))
        .await
        .map_err(|s| ApiError::from_status(s, |_| ApiError::SnapshotNotFound(id)))?;
    Ok(StatusCode::NO_CONTENT)
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

async fn get_one(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Json<Value>> {
    let c = gw
        .scheduler
        .clone()
        .get_claim(traced(pb::ClaimRef {
            claim_id: id.clone(),
        }))
        .await
        .map_err(|s| ApiError::from_status(s, claim_not_found(&id)))?;
    Ok(Json(sandbox_json(&c.into_inner())))
}

async fn delete(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    gw.scheduler
        .clone()
        .release_claim(traced(pb::ClaimRef {
            claim_id: id.clone(),
        }))
        .await
        .map_err(|s| ApiError::from_status(s, claim_not_found(&id)))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    gw.scheduler
        .clone()
        .pause_claim(traced(pb::ClaimRef {
            claim_id: id.clone(),
        }))
        .await
        .map_err(|s| ApiError::from_status(s, claim_not_found(&id)))?;
    Ok(StatusCode::ACCEPTED)
}

async fn resume(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    gw.scheduler
        .clone()
        .resume_claim(traced(pb::ClaimRef {
            claim_id: id.clone(),
        }))
        .await
        .map_err(|s| ApiError::from_status(s, claim_not_found(&id)))?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenewRequest {
    expires_at: String,
}

async fn renew(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>> {
    let r: RenewRequest = json_body(&gw, body).await?;
    let at = DateTime::parse_from_rfc3339(&r.expires_at)
        .map_err(|e| ApiError::Invalid(format!("expiresAt must be RFC 3339: {e}")))?
        .timestamp_millis();
    let c = gw
        .scheduler
        .clone()
        .renew(traced(pb::RenewRequest {
            claim_id: id.clone(),
            expires_unix_ms: at,
        }))
        .await
        .map_err(|s| ApiError::from_status(s, claim_not_found(&id)))?
        .into_inner();
    Ok(Json(json!({ "expiresAt": rfc3339_ms(c.expires_unix_ms) })))
}

async fn endpoint(
    State(gw): State<Gateway>,
    Path((id, port)): Path<(String, String)>,
    headers: HeaderMap,
    req: Request,
) -> Result<Json<Value>> {
    let port: u32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| ApiError::Invalid(format!("bad port {port}")))?;
    let q = query_pairs(req.uri());
    let use_proxy = q
        .iter()
        .any(|(k, v)| k == "use_server_proxy" && v.eq_ignore_ascii_case("true"));
    let c = gw
        .scheduler
        .clone()
        .get_claim(traced(pb::ClaimRef {
            claim_id: id.clone(),
        }))
        .await
        .map_err(|s| ApiError::from_status(s, claim_not_found(&id)))?
        .into_inner();
    let sb = c
        .sandbox
        .ok_or_else(|| ApiError::Internal("claim without sandbox".into()))?;
    // a port a network-less sandbox does not expose resolves to the proxy,
    // which answers 501 with the reason when used
    let direct = sandbox_port(&sb, port).ok();
    let Some(direct) = direct.filter(|_| !use_proxy) else {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        return Ok(Json(
            json!({ "endpoint": format!("{host}/v1/sandboxes/{id}/proxy/{port}") }),
        ));
    };
    let mut v = json!({ "endpoint": format!("{}:{direct}", sb.ip) });
    if port == RUNTIME_PORT {
        v["headers"] = json!({ "X-EXECD-ACCESS-TOKEN": sb.access_token });
    }
    Ok(Json(v))
}

async fn list(State(gw): State<Gateway>, req: Request) -> Result<Json<Value>> {
    let q = query_pairs(req.uri());
    let mut states = Vec::new();
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    let mut pages = Paging::default();
    for (k, v) in &q {
        match k.as_str() {
            "state" => states.push(v.clone()),
            "metadata" => {
                for (mk, mv) in form_urlencoded::parse(v.as_bytes()) {
                    metadata.insert(mk.into_owned(), mv.into_owned());
                }
            }
            _ => pages.param(k, v)?,
        }
    }
    let all = crate::claims_with_metadata(&gw, metadata).await?;
    let items: Vec<Value> = all
        .iter()
        .filter(|c| {
            states.is_empty()
                || states
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(state_name(c.state)))
        })
        .map(sandbox_json)
        .collect();
    Ok(Json(pages.json(items)))
}

fn pool_json(p: &pb::Pool) -> Value {
    let c = p.capacity.unwrap_or_default();
    let s = p.status.unwrap_or_default();
    json!({
        "name": p.name,
        "template": { "image": p.template.as_ref().map(|t| t.image.clone()).unwrap_or_default() },
        "capacitySpec": { "bufferMin": c.buffer_min, "bufferMax": c.buffer_max, "poolMin": c.pool_min, "poolMax": c.pool_max },
        "status": { "total": s.total, "allocated": s.allocated, "available": s.available }
    })
}

async fn get_pool(State(gw): State<Gateway>, Path(name): Path<String>) -> Result<Json<Value>> {
    let p = gw
        .scheduler
        .clone()
        .get_pool(traced(pb::PoolRef { name: name.clone() }))
        .await
        .map_err(|s| ApiError::from_status(s, |_| ApiError::PoolNotFound(name.clone())))?;
    Ok(Json(pool_json(&p.into_inner())))
}

async fn list_pools(State(gw): State<Gateway>) -> Result<Json<Value>> {
    let r = gw
        .scheduler
        .clone()
        .list_pools(traced(pb::ListPoolsRequest {}))
        .await
        .map_err(|s| ApiError::from_status(s, ApiError::Invalid))?;
    Ok(Json(
        json!({ "items": r.into_inner().pools.iter().map(pool_json).collect::<Vec<_>>() }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(&None).unwrap(), 0);
        assert_eq!(parse_timeout(&Some(Value::Null)).unwrap(), 0);
        assert_eq!(parse_timeout(&Some(json!(600))).unwrap(), 600);
        for bad in [json!(-1), json!(0), json!(1.5), json!("600")] {
            assert!(parse_timeout(&Some(bad.clone())).is_err(), "{bad}");
        }
    }

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
    fn restores_parse_from_snapshot_id_and_refuse_what_cannot_change() {
        let Ok(Create::Restore(r)) = parse_create(br#"{"snapshotId":"ck-1","timeout":600,"metadata":{"a":"b"},"entrypoint":["tail","-f","/dev/null"]}"#) else {
            panic!("a restore")
        };
        assert_eq!(
            (r.checkpoint_id.as_str(), r.count, r.ttl_seconds),
            ("ck-1", 1, 600)
        );
        assert_eq!(r.metadata.get("a").map(String::as_str), Some("b"));
        assert!(
            matches!(
                parse_create(br#"{"image":{"uri":"python"}}"#),
                Ok(Create::Claim(_))
            ),
            "not a restore"
        );
        assert!(
            matches!(
                parse_create(br#"{"image":{"uri":"python"},"snapshotId":""}"#),
                Ok(Create::Claim(_))
            ),
            "empty snapshotId"
        );
        for bad in [
            &br#"{"snapshotId":"ck-1","image":{"uri":"python"}}"#[..],
            br#"{"snapshotId":"ck-1","extensions":{"poolRef":"p"}}"#,
            br#"{"snapshotId":"ck-1","env":{"A":"1"}}"#,
            br#"{"snapshotId":"ck-1","timeout":-5}"#,
        ] {
            let e = parse_create(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
        }
    }

    #[test]
    fn snapshot_shape_has_sdk_required_fields() {
        let c = pb::CheckpointInfo {
            checkpoint_id: "ck-1".into(),
            sandbox_id: "sb-1".into(),
            owner: "claim-1".into(),
            created_unix_ms: 1_700_000_000_000,
            name: "before-step-3".into(),
            ..Default::default()
        };
        let v = snapshot_json(&c);
        for k in ["id", "sandboxId", "status", "createdAt"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(
            (
                v["sandboxId"].as_str(),
                v["status"]["state"].as_str(),
                v["name"].as_str()
            ),
            (Some("claim-1"), Some("Ready"), Some("before-step-3"))
        );
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
