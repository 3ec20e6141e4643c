//! E2B control-plane REST API (the paths the `e2b` Python SDK 2.x calls, both
//! path generations), on the scheduler. A template name is a pool name; the
//! sandbox id is the claim id. Errors are E2B's `{"code": int, "message"}`.
//!
//! Sandbox traffic for E2B (envd on 49983, code interpreter on 49999) is
//! routed by [`route_by_e2b_headers`]: `E2b-Sandbox-Id`/`E2b-Sandbox-Port`
//! headers or a `{port}-{sandboxID}.{domain}` host.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, patch, post, put},
};
use chrono::Utc;
use sandpool_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Gateway, auth, error::ApiError, extract, rfc3339_ms, traffic::Ingress};

mod builds;
pub(crate) mod envd_init;
mod list;
mod metrics;
mod ready;
mod routing;
mod snapshots;
mod templates;
mod transforms;

pub use builds::{
    BuildFuture, BuildLog, BuildRequest, BuildStep, BuildStore, Builds, StepKind, TemplateBuilder,
};
pub use routing::{parse_sandbox_host, route_by_e2b_headers};

/// The envd protocol version sandpool's runtime answers for
/// (`sandpool_runtime::envd::ENVD_VERSION`; kept equal by a test there).
pub const ENVD_VERSION: &str = "0.6.4";
pub const DEFAULT_TIMEOUT_S: u64 = 300;
pub const ENVD_PORT: u16 = 49983;

/// E2B's error body: numeric code.
pub struct E2bError(ApiError);

impl From<ApiError> for E2bError {
    fn from(e: ApiError) -> Self {
        E2bError(e)
    }
}

/// E2B's error body `{"code", "message"}` with `status` (and sandpool's
/// `error_code` when there is one).
fn error_response(status: StatusCode, message: String, error_code: Option<&str>) -> Response {
    let mut body = json!({"code": status.as_u16(), "message": message});
    if let Some(c) = error_code {
        body["error_code"] = json!(c);
    }
    (status, Json(body)).into_response()
}

/// Any path of the E2B API without a route: E2B's 404, not an empty body.
async fn no_route(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no route {method} {}", uri.path()),
        Some("NOT_FOUND"),
    )
}

/// An E2B template route sandpool does not serve (no SDK release it
/// supports calls it): 501 naming the route and what to use instead.
async fn template_route_unsupported(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "{method} {} is not supported by sandpool: templates are built with \
             POST /v3/templates (Template.build), tagged with /templates/tags, \
             and listed with GET /templates",
            uri.path()
        ),
        Some("NOT_IMPLEMENTED"),
    )
}

/// A method an E2B route does not have: E2B's 405, not an empty body.
async fn wrong_method(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
        Some("METHOD_NOT_ALLOWED"),
    )
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let mut r = error_response(status, self.0.to_string(), Some(self.0.code()));
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        r
    }
}

pub(crate) type Result<T> = std::result::Result<T, E2bError>;

pub fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/sandboxes", post(create).get(list::list_v1))
        .route("/v2/sandboxes", post(create).get(list::list_v2))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/network", put(set_network))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics::metrics))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/snapshots", get(snapshots::list))
        .route(
            "/templates",
            get(templates::list).post(template_route_unsupported),
        )
        .route(
            "/templates/{id}",
            get(templates::get)
                .delete(snapshots::delete)
                .post(template_route_unsupported)
                .patch(template_route_unsupported),
        )
        // v1/v2 creates and rebuilds, PATCH and tag details: 501 naming them
        .route(
            "/v2/templates",
            get(template_route_unsupported).post(template_route_unsupported),
        )
        .route("/v2/templates/{id}", patch(template_route_unsupported))
        .route(
            "/templates/{id}/builds/{build}",
            post(template_route_unsupported),
        )
        .route("/default-templates", get(template_route_unsupported))
        .route("/templates/{id}/tags/{detail}", get(template_route_unsupported))
        .route(
            "/templates/{id}/tags/{tag}/assignments",
            get(template_route_unsupported),
        )
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route(
            "/templates/tags",
            post(builds::tags::assign).delete(builds::tags::remove),
        )
        .route("/templates/{id}/tags", get(builds::tags::list))
        .route("/v3/templates", post(builds::create))
        .route("/templates/{id}/files/{hash}", get(builds::files))
        .route("/v2/templates/{id}/builds/{build}", post(builds::start))
        .route("/templates/{id}/builds/{build}/status", get(builds::status))
        .route("/templates/{id}/builds/{build}/logs", get(builds::logs))
        .method_not_allowed_fallback(wrong_method)
        .route_layer(axum::middleware::from_fn_with_state(
            (gw.clone(), auth::Api::E2b),
            auth::require_key,
        ))
        // the upload link's secret stands for the key (a presigned URL)
        .route(
            "/_sandpool/template-files/{secret}",
            put(builds::upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        // everything outside `/v1` (OpenSandbox's, with its own) is E2B's
        .fallback(no_route)
        .with_state(gw)
}

/// An E2B request body: E2B's error shape; empty means `{}`.
type JsonBody<T> = extract::JsonOrEmpty<T, E2bError>;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID", default)]
    template_id: String,
    #[serde(default, deserialize_with = "crate::timeout::whole_seconds")]
    timeout: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(rename = "allow_internet_access", default)]
    allow_internet_access: Option<bool>,
    #[serde(default)]
    network: Option<Value>,
    /// `secure`: sandpool always requires the envd access token (see
    /// docs/compatibility.md), so either value is honoured.
    #[serde(default, rename = "secure")]
    _secure: Option<bool>,
    /// Pause instead of kill when the timeout ends.
    #[serde(default)]
    auto_pause: Option<bool>,
    /// Full (memory, the default) or filesystem-only (`false`) pause at the
    /// timeout, with `autoPause`.
    #[serde(default, rename = "autoPauseMemory")]
    auto_pause_memory: Option<bool>,
    /// `{"enabled": bool}`: a paused sandbox resumes on its next request.
    #[serde(default)]
    auto_resume: Option<Value>,
    /// MCP servers (an object). Upstream's API only records their names;
    /// the SDK itself starts `mcp-gateway --config <mcp>` in the sandbox as
    /// root once it is created, and kills the sandbox when that fails. Here
    /// too: the field is checked, and the rest is the SDK's and the image's.
    #[serde(default)]
    mcp: Option<Value>,
    /// Anything else: refused unless unset (see [`refuse_unhonoured`]).
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// Create fields sandpool does not honour (`iam`, `volumeMounts`, unknown fields), answered 501
/// naming the field instead of being dropped. What the SDKs send when a
/// caller asks for none of it (null, false, empty, `{"enabled": false}`)
/// asks for nothing.
fn refuse_unhonoured(other: &BTreeMap<String, Value>) -> std::result::Result<(), ApiError> {
    for (k, v) in other {
        let unset = match v {
            Value::Null | Value::Bool(false) => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty() || o.get("enabled") == Some(&Value::Bool(false)),
            _ => false,
        };
        if !unset {
            return Err(ApiError::Unsupported(format!("the create field {k}")));
        }
    }
    Ok(())
}

/// The create field `autoResume`: `{"enabled": bool}` (or a bare bool).
fn auto_resume(v: Option<&Value>) -> std::result::Result<bool, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Object(o)) => match o.get("enabled") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::Invalid(format!(
                "autoResume.enabled must be a boolean, got {other}"
            ))),
        },
        Some(other) => Err(ApiError::Invalid(format!(
            "autoResume must be {{\"enabled\": bool}}, got {other}"
        ))),
    }
}

pub(crate) async fn get_claim(gw: &Gateway, id: &str) -> Result<pb::Claim> {
    Ok(gw.get_claim(id).await?)
}

fn domain_of(headers: &HeaderMap) -> Value {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(|h| json!(h))
        .unwrap_or(Value::Null)
}

fn sandbox_json(c: &pb::Claim, headers: &HeaderMap) -> Value {
    let sb = c.sandbox.clone().unwrap_or_default();
    json!({
        "templateID": c.pool,
        "sandboxID": c.claim_id,
        "clientID": sb.node,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": sb.access_token,
        // The code interpreter (49999) needs a token on every call; the
        // e2b-code-interpreter SDK sends this one on context management. It
        // is also the one a private sandbox's ports ask for.
        "trafficAccessToken": crate::traffic::token(&sb.access_token),
        "domain": domain_of(headers),
    })
}

pub(crate) fn state(c: &pb::Claim) -> &'static str {
    if c.state == pb::ClaimState::Paused as i32 {
        "paused"
    } else {
        "running"
    }
}

/// `GET /sandboxes/{id}` of claim `c` with its E2B `ingress`.
pub(crate) fn detail_json(c: &pb::Claim, ingress: &Ingress) -> Value {
    let mut v = json!({
        "templateID": c.pool,
        "sandboxID": c.claim_id,
        "clientID": c.sandbox.as_ref().map(|s| s.node.clone()).unwrap_or_default(),
        "startedAt": rfc3339_ms(c.created_unix_ms),
        "endAt": rfc3339_ms(if c.expires_unix_ms > 0 { c.expires_unix_ms } else { c.created_unix_ms.saturating_add(100 * 365 * 86_400_000) }),
        "envdVersion": ENVD_VERSION,
        "cpuCount": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memoryMB": 0,
        "diskSizeMB": 0,
        "state": state(c),
        "metadata": c.metadata,
        "lifecycle": {
            "onTimeout": if c.pause_on_expiry { "pause" } else { "kill" },
            "autoResume": c.auto_resume,
        },
    });
    if let Some(e) = &c.egress {
        v["network"] = crate::egress::e2b_network(e);
    }
    if ingress.private {
        v["network"]["allowPublicTraffic"] = json!(false);
    }
    if let Some(h) = &ingress.mask_request_host {
        v["network"]["maskRequestHost"] = json!(h);
    }
    v
}

/// What an E2B create body asks for.
#[derive(Debug)]
pub struct NewClaim {
    pub claim: pb::ClaimRequest,
    /// The `templateID` as given (a snapshot's id or name when no pool has it).
    pub template: String,
    /// The env vars of every envd process.
    pub envs: BTreeMap<String, String>,
    /// `network.allowPublicTraffic` and `network.maskRequestHost` (see
    /// [`crate::traffic`]).
    pub ingress: Ingress,
    /// `network.rules`: the headers set on the sandbox's HTTP requests to
    /// each domain, as a credential vault (see [`transforms`]).
    pub transforms: Option<sandpool_core::credential_vault::CreateRequest>,
}

/// An E2B create body as the claim it asks for (pure: the gateway's whole
/// validation of `POST /sandboxes`, fuzzed in `fuzz/`).
pub fn parse_create(body: &[u8]) -> std::result::Result<NewClaim, ApiError> {
    let req: NewSandbox = if body.iter().all(u8::is_ascii_whitespace) {
        NewSandbox::default()
    } else {
        extract::parse_json(body)?
    };
    if req.template_id.trim().is_empty() {
        return Err(ApiError::Invalid("templateID is required".into()));
    }
    refuse_unhonoured(&req.other)?;
    if let Some(m) = req.mcp.as_ref().filter(|m| !(m.is_null() || m.is_object())) {
        return Err(ApiError::Invalid(format!(
            "mcp must be an object of MCP server configurations, got {m}"
        )));
    }
    let auto_resume = auto_resume(req.auto_resume.as_ref())?;
    if auto_resume && req.auto_pause != Some(true) {
        return Err(ApiError::Invalid(
            "autoResume needs autoPause (a sandbox that is killed at its timeout cannot resume)"
                .into(),
        ));
    }
    let pause_filesystem_only =
        req.auto_pause == Some(true) && req.auto_pause_memory == Some(false);
    if pause_filesystem_only && auto_resume {
        return Err(ApiError::Invalid(
            "autoResume cannot be combined with autoPauseMemory: false (a filesystem-only snapshot is resumed by connect, not by traffic)"
                .into(),
        ));
    }
    let timeout = match req.timeout {
        None => DEFAULT_TIMEOUT_S,
        Some(t) if t > 0 => t as u64,
        Some(t) => {
            return Err(ApiError::Invalid(format!(
                "timeout must be positive, got {t}"
            )));
        }
    };
    // "name:tag" and "ns/name" templates map to the pool named by the last name part.
    let pool = req
        .template_id
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    if pool.is_empty() {
        return Err(ApiError::Invalid(format!(
            "templateID {:?} names no template",
            req.template_id
        )));
    }
    let metadata = req.metadata.unwrap_or_default();
    let mounts = kruise_mounts(&metadata)?;
    let image = match metadata.get(IMAGE_KEY).map(|i| i.trim()) {
        Some("") => return Err(ApiError::Invalid(format!("metadata {IMAGE_KEY} is empty"))),
        Some(i) => i.to_string(),
        None => String::new(),
    };
    let mut egress = crate::egress::from_e2b(req.allow_internet_access, req.network.as_ref())?;
    let transforms = transforms::parse(req.network.as_ref())?;
    if let Some(t) = &transforms {
        transforms::fit(egress.as_mut(), t)?;
    }
    let ingress = Ingress {
        private: crate::egress::private_traffic(req.network.as_ref())?,
        mask_request_host: crate::traffic::mask_request_host(req.network.as_ref())?,
    };
    let envs = req.env_vars.unwrap_or_default();
    sandpool_core::claim::check_sandbox_env(&envs)
        .map_err(|e| ApiError::Invalid(format!("envVars: {e}")))?;
    let claim = pb::ClaimRequest {
        pool,
        ttl_seconds: timeout,
        metadata: metadata.into_iter().collect(),
        mounts,
        image,
        egress,
        pause_on_expiry: req.auto_pause.unwrap_or(false),
        auto_resume,
        pause_filesystem_only,
        sandbox_env: envs.clone().into_iter().collect(),
        ..Default::default()
    };
    Ok(NewClaim {
        claim,
        template: req.template_id,
        envs,
        ingress,
        transforms,
    })
}

async fn create(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    extract::RawBody(body, _): extract::RawBody<E2bError>,
) -> Result<Response> {
    let mut new = parse_create(&body)?;
    new.claim.ttl_seconds = gw.check_timeout("timeout", new.claim.ttl_seconds)?;
    builds::tags::check_create_tag(&gw, &new.template)?;
    let pool = new.claim.pool.clone();
    let created = gw
        .create_claim_marked(new.claim.clone(), &new.ingress.marks(), move |_| {
            ApiError::PoolNotFound(format!("template {pool}"))
        })
        .await;
    let c = match created {
        Ok(c) => c,
        // no pool of that name: a snapshot's id or name is a template too
        Err(ApiError::PoolNotFound(m)) => {
            match snapshots::find_snapshot(&gw, &new.template).await {
                Ok(ck) => return snapshots::create_from(&gw, &headers, &ck, new).await,
                Err(_) => return Err(ApiError::PoolNotFound(m).into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = wait_template_ready(&gw, &c).await {
        let _ = gw.release_claim(&c.claim_id).await;
        return Err(e.into());
    }
    // E2B env vars are the defaults of every envd process: hand them to
    // envd (the claim keeps them for a filesystem-only resume)
    if !new.envs.is_empty() {
        let sb = c.sandbox.clone().unwrap_or_default();
        let envs = new.envs.into_iter().collect();
        if let Err(e) = envd_init::send(&gw, &sb, &envs).await {
            let _ = gw.release_claim(&c.claim_id).await;
            return Err(e.into());
        }
    }
    if let Some(t) = new.transforms
        && let Err(e) = transforms::apply(&gw, &c.claim_id, new.claim.egress.as_ref(), t).await
    {
        let _ = gw.release_claim(&c.claim_id).await;
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(sandbox_json(&c, &headers))).into_response())
}

/// A sandbox of a template with a readyCmd is handed out once that
/// command exits 0 in it (see [`ready`]); a readyCmd that never does fails
/// the create.
async fn wait_template_ready(gw: &Gateway, c: &pb::Claim) -> std::result::Result<(), ApiError> {
    let Ok(pool) = gw.get_pool(&c.pool).await else {
        return Ok(());
    };
    let (Some(cmd), Some(sb)) = (ready::ready_cmd(&pool), c.sandbox.as_ref()) else {
        return Ok(());
    };
    let waited = ready::wait(sb, &cmd, ready::CREATE_READY_BOUND).await;
    gw.report_pool_ready(&c.pool, waited.as_ref().map(|_| ()).map_err(String::as_str))
        .await;
    waited.map_err(|e| ApiError::BadGateway(format!("template {}: {e}", c.pool)))
}

async fn info(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Json<Value>> {
    let (c, ingress) = gw.get_claim_traffic(&id).await?;
    Ok(Json(detail_json(&c, &ingress)))
}

async fn kill(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    gw.release_claim(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct Timeout {
    #[serde(default, deserialize_with = "crate::timeout::whole_seconds")]
    timeout: Option<i64>,
    #[serde(default, deserialize_with = "crate::timeout::whole_seconds")]
    duration: Option<i64>,
}

/// `POST /sandboxes/{id}/connect` and `/resume`'s body: the timeout, and
/// `memory: false` to resume a paused sandbox by rebooting it from its
/// files (E2B's `on_resume="reboot"`).
#[derive(Deserialize, Default)]
struct Connect {
    #[serde(default, deserialize_with = "crate::timeout::whole_seconds")]
    timeout: Option<i64>,
    #[serde(default)]
    memory: Option<bool>,
    /// `/resume`'s deprecated `autoPause`: the create's decides.
    #[serde(default, rename = "autoPause")]
    _auto_pause: Option<bool>,
}

async fn renew_for(gw: &Gateway, id: &str, field: &str, seconds: i64) -> Result<()> {
    let at = gw.timeout_expiry(field, Utc::now().timestamp_millis(), seconds)?;
    gw.renew(id, at).await?;
    Ok(())
}

async fn set_timeout(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::JsonOrEmpty(t, _): JsonBody<Timeout>,
) -> Result<StatusCode> {
    let secs = t
        .timeout
        .ok_or_else(|| ApiError::Invalid("timeout is required".into()))?;
    if secs <= 0 {
        // E2B: the sandbox ends now (a negative timeout counts as 0); as
        // upstream, only a running sandbox's timeout changes
        let c = get_claim(&gw, &id).await?;
        if c.state == pb::ClaimState::Paused as i32 {
            return Err(ApiError::Conflict(format!(
                "sandbox {id} is paused: only a running sandbox's timeout can end it"
            ))
            .into());
        }
        // its timeout is now: what it does at its timeout happens now, a
        // pause with `autoPause` (connect resumes it), else the end
        if c.pause_on_expiry && gw.pause_claim(&id, c.pause_filesystem_only).await.is_ok() {
            return Ok(StatusCode::NO_CONTENT);
        }
        gw.release_claim(&id).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    renew_for(&gw, &id, "timeout", secs).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::JsonOrEmpty(t, _): JsonBody<Timeout>,
) -> Result<StatusCode> {
    renew_for(
        &gw,
        &id,
        "duration",
        t.duration.unwrap_or(DEFAULT_TIMEOUT_S as i64),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /sandboxes/{id}/network`: the sandbox's egress rules replaced live
/// (what the body leaves out goes back to its default, as upstream).
async fn set_network(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::JsonOrEmpty(mut body, _): JsonBody<serde_json::Map<String, Value>>,
) -> Result<StatusCode> {
    let allow_internet = match body.remove("allow_internet_access") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(b),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "allow_internet_access must be a boolean, got {other}"
            ))
            .into());
        }
    };
    // set at create only here (upstream: maskRequestHost too; rules are
    // replaced by an update there)
    for k in ["maskRequestHost", "rules"] {
        if body.get(k).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::Unsupported(format!(
                "network.{k} in PUT /sandboxes/{{id}}/network (give it at create)"
            ))
            .into());
        }
    }
    let mut policy =
        crate::egress::from_e2b(allow_internet, Some(&Value::Object(body)))?.unwrap_or_default();
    transforms::close_https(&mut policy, &transforms::claim_domains(&gw, &id));
    gw.set_claim_egress(&id, policy).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::JsonOrEmpty(r, _): JsonBody<snapshots::PauseRequest>,
) -> Result<StatusCode> {
    let filesystem_only = snapshots::check_pause(&r)?;
    let c = get_claim(&gw, &id).await?;
    if c.state == pb::ClaimState::Paused as i32 {
        return Err(ApiError::Conflict(format!("sandbox {id} is already paused")).into());
    }
    gw.pause_claim(&id, filesystem_only).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resume a paused sandbox (201) or confirm a running one (200), then apply
/// the requested timeout.
async fn connect(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extract::JsonOrEmpty(t, _): JsonBody<Connect>,
) -> Result<Response> {
    connect_with(&gw, &id, &headers, t).await
}

async fn connect_with(gw: &Gateway, id: &str, headers: &HeaderMap, t: Connect) -> Result<Response> {
    // a bad timeout is refused before the sandbox is resumed
    let expiry = t
        .timeout
        .map(|secs| gw.timeout_expiry("timeout", Utc::now().timestamp_millis(), secs))
        .transpose()?;
    let c = get_claim(gw, id).await?;
    let resumed = c.state == pb::ClaimState::Paused as i32;
    if resumed {
        // `memory: false`: reboot from the files, whatever the pause kept
        if t.memory == Some(false) && !c.paused_filesystem_only {
            gw.pause_claim(id, true).await?;
        }
        gw.resume_claim(id).await?;
    }
    // a resumed sandbox runs for the timeout asked for; a running one's end
    // only ever moves later (E2B's connect never shortens it)
    let later = |at: i64| c.expires_unix_ms > 0 && at > c.expires_unix_ms;
    if let Some(at) = expiry.filter(|at| resumed || later(*at)) {
        gw.renew(id, at).await?;
    }
    let c = get_claim(gw, id).await?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sandbox_json(&c, headers))).into_response())
}

async fn resume(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let c = get_claim(&gw, &id).await?;
    if c.state != pb::ClaimState::Paused as i32 {
        return Err(ApiError::Conflict(format!("sandbox {id} is not paused")).into());
    }
    // the body is read only for a paused sandbox (as `connect` reads it)
    let t: Connect = extract::json_or_empty(&gw, body).await?;
    connect_with(&gw, &id, &headers, t).await
}

/// OpenKruise Agents' CSI volume metadata: `e2b.agents.kruise.io/csi-volume-name`
/// (a volume of the node) mounted at `e2b.agents.kruise.io/csi-mount-point`.
pub const CSI_VOLUME_KEY: &str = "e2b.agents.kruise.io/csi-volume-name";
pub const CSI_MOUNT_POINT_KEY: &str = "e2b.agents.kruise.io/csi-mount-point";
/// OpenKruise Agents' in-place image upgrade on claim: the claimed sandbox
/// restarts on this image, keeping its identity.
pub const IMAGE_KEY: &str = "e2b.agents.kruise.io/image";

fn kruise_mounts(
    metadata: &BTreeMap<String, String>,
) -> std::result::Result<Vec<pb::VolumeMount>, ApiError> {
    match (
        metadata.get(CSI_VOLUME_KEY),
        metadata.get(CSI_MOUNT_POINT_KEY),
    ) {
        (None, None) => Ok(Vec::new()),
        // (a leading `+` would ask the node to make the volume)
        (Some(v), Some(p)) if !v.is_empty() && !v.starts_with('+') && p.starts_with('/') => {
            Ok(vec![pb::VolumeMount {
                volume: v.clone(),
                mount_path: p.clone(),
                read_only: false,
            }])
        }
        _ => Err(ApiError::Invalid(format!(
            "{CSI_VOLUME_KEY} and {CSI_MOUNT_POINT_KEY} (an absolute path) go together"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_envd_version_is_the_runtimes() {
        assert_eq!(ENVD_VERSION, sandpool_runtime::envd::ENVD_VERSION);
    }

    #[test]
    fn kruise_image_key_asks_for_an_in_place_upgrade() {
        let NewClaim { claim: c, .. } = parse_create(
            br#"{"templateID":"base","metadata":{"e2b.agents.kruise.io/image":" python "}}"#,
        )
        .unwrap();
        assert_eq!((c.pool.as_str(), c.image.as_str()), ("base", "python"));
        let NewClaim { claim: c, .. } = parse_create(br#"{"templateID":"base"}"#).unwrap();
        assert!(c.image.is_empty());
        let e =
            parse_create(br#"{"templateID":"base","metadata":{"e2b.agents.kruise.io/image":""}}"#)
                .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_kruise_volume_name_cannot_ask_the_node_to_make_it() {
        let meta = |v: &str| {
            BTreeMap::from([
                (CSI_VOLUME_KEY.to_string(), v.to_string()),
                (CSI_MOUNT_POINT_KEY.to_string(), "/mnt/v".to_string()),
            ])
        };
        assert_eq!(kruise_mounts(&meta("vol")).unwrap()[0].volume, "vol");
        let e = kruise_mounts(&meta("+vol")).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn create_fields_sandpool_does_not_honour_are_refused_naming_them() {
        for (body, field) in [
            (
                &br#"{"templateID":"base","volumeMounts":[{"name":"v","path":"/v"}]}"#[..],
                "volumeMounts",
            ),
            (br#"{"templateID":"base","somethingNew":1}"#, "somethingNew"),
        ] {
            let e = parse_create(body).expect_err(field);
            assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED, "{field}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        // autoPause (with either snapshot kind) is honoured
        for body in [
            &br#"{"templateID":"base","autoPause":true}"#[..],
            br#"{"templateID":"base","autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":false}}"#,
        ] {
            assert!(parse_create(body).unwrap().claim.pause_on_expiry);
        }
        assert!(
            !parse_create(br#"{"templateID":"base"}"#)
                .unwrap()
                .claim
                .pause_on_expiry
        );
        // what the SDKs send by default
        assert!(parse_create(br#"{"templateID":"base","secure":true,"autoPause":false,"autoResume":{"enabled":false},"mcp":null,"volumeMounts":[]}"#).is_ok());
        let private = br#"{"templateID":"base","network":{"allowPublicTraffic":false}}"#;
        assert!(parse_create(private).unwrap().ingress.private);
        assert_eq!(
            parse_create(br#"{"templateID":"base"}"#).unwrap().ingress,
            Ingress::default()
        );
    }

    #[test]
    fn mcp_servers_are_the_sdks_to_start_and_must_be_an_object() {
        // the SDK starts the gateway in the sandbox: the create just takes them
        for body in [
            &br#"{"templateID":"base","mcp":{"github":{}}}"#[..],
            br#"{"templateID":"base","mcp":{"invalid_server":{}}}"#,
            br#"{"templateID":"base","mcp":{}}"#,
        ] {
            assert!(
                parse_create(body).is_ok(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for bad in [
            &br#"{"templateID":"base","mcp":"github"}"#[..],
            br#"{"templateID":"base","mcp":[{"github":{}}]}"#,
        ] {
            let e = parse_create(bad).expect_err("not an object");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
            assert!(e.to_string().starts_with("mcp must be an object"), "{e}");
        }
    }

    #[test]
    fn mask_request_host_is_kept_with_the_claim_and_shown_in_its_detail() {
        let new = parse_create(
            br#"{"templateID":"base","network":{"maskRequestHost":"custom-host.example.com:${PORT}"}}"#,
        )
        .expect("ok");
        let want = "custom-host.example.com:${PORT}";
        assert_eq!(new.ingress.mask_request_host.as_deref(), Some(want));
        assert_eq!(new.ingress.marks(), [(crate::traffic::MASK_KEY, want)]);
        // no egress policy of its own for a mask alone
        assert!(new.claim.egress.is_none());
        let v = detail_json(&pb::Claim::default(), &new.ingress);
        assert_eq!(v["network"]["maskRequestHost"], want, "{v}");
        let bad = br#"{"templateID":"base","network":{"maskRequestHost":"a:b:c"}}"#;
        let e = parse_create(bad).expect_err("bad host");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.to_string(), "mask request host is not valid: a:b:c");
    }

    #[test]
    fn auto_resume_is_asked_for_with_auto_pause_only() {
        let on = |body: &[u8]| parse_create(body).map(|n| n.claim.auto_resume);
        assert!(
            on(br#"{"templateID":"base","autoPause":true,"autoResume":{"enabled":true}}"#).unwrap()
        );
        assert!(
            !on(br#"{"templateID":"base","autoPause":true,"autoResume":{"enabled":false}}"#)
                .unwrap()
        );
        assert!(!on(br#"{"templateID":"base","autoPause":true}"#).unwrap());
        for bad in [
            &br#"{"templateID":"base","autoResume":{"enabled":true}}"#[..],
            br#"{"templateID":"base","autoPause":false,"autoResume":{"enabled":true}}"#,
            br#"{"templateID":"base","autoPause":true,"autoResume":{"enabled":"yes"}}"#,
            br#"{"templateID":"base","autoPause":true,"autoResume":1}"#,
        ] {
            let e = on(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
            assert!(e.to_string().contains("autoResume"), "{e}");
        }
    }

    #[test]
    fn auto_pause_memory_false_asks_for_a_filesystem_only_pause_without_auto_resume() {
        let fs = |body: &[u8]| parse_create(body).map(|n| n.claim.pause_filesystem_only);
        assert!(fs(br#"{"templateID":"base","autoPause":true,"autoPauseMemory":false}"#).unwrap());
        for full in [
            &br#"{"templateID":"base","autoPause":true}"#[..],
            br#"{"templateID":"base","autoPause":true,"autoPauseMemory":true}"#,
            // no pause at the timeout: nothing to be filesystem-only
            br#"{"templateID":"base","autoPauseMemory":false}"#,
        ] {
            assert!(!fs(full).unwrap(), "{}", String::from_utf8_lossy(full));
        }
        let e = fs(br#"{"templateID":"base","autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":true}}"#)
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
        assert!(e.to_string().contains("autoPauseMemory"), "{e}");
    }

    #[test]
    fn detail_has_sdk_required_fields() {
        let c = pb::Claim {
            claim_id: "c".into(),
            pool: "base".into(),
            created_unix_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let v = detail_json(&c, &Ingress::default());
        assert!(v.get("network").is_none(), "no policy, public: no network");
        assert_eq!(
            detail_json(
                &c,
                &Ingress {
                    private: true,
                    ..Default::default()
                }
            )["network"]["allowPublicTraffic"],
            false
        );
        for k in [
            "templateID",
            "sandboxID",
            "clientID",
            "startedAt",
            "endAt",
            "envdVersion",
            "cpuCount",
            "memoryMB",
            "diskSizeMB",
            "state",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(chrono::DateTime::parse_from_rfc3339(v["endAt"].as_str().unwrap()).is_ok());
    }
}
