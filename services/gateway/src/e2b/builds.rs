//! E2B template builds (the `Template.build` flow of the e2b SDK 2.x):
//! `POST /v3/templates` registers a build, `GET /templates/{id}/files/{hash}`
//! hands out an upload link for a `COPY` step's files, which are `PUT` there
//! (a per-upload secret in the path stands for the API key, as a presigned
//! URL does), `POST /v2/templates/{id}/builds/{buildID}` starts the build
//! from its steps, and `GET /templates/{id}/builds/{buildID}/status` polls it
//! with its logs. The build itself is the [`TemplateBuilder`]'s (buildah in
//! `sandpool serve`); a ready build becomes the pool named by the template,
//! so `Sandbox.create(name)` gets it. Without a builder every build route
//! answers 501 saying why.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use parking_lot::Mutex;
use sandpool_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{JsonBody, Result, ready, templates};
use crate::{Gateway, error::ApiError, rfc3339_ms, tenancy};

mod steps;
mod store;
pub(super) mod tags;
mod upload;

pub use store::BuildStore;

pub use steps::{BuildStep, StepKind};
pub(super) use upload::upload;

/// What a builder is asked to make: an image named `image` from `base`
/// and `steps`; a `COPY` step's files are `files_dir/<filesHash>.tar`.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub template: String,
    pub build_id: String,
    /// The image the result is stored under in the node's containerd.
    pub image: String,
    pub base: String,
    /// `user:password` for the base image's registry.
    pub base_credentials: Option<(String, String)>,
    pub steps: Vec<BuildStep>,
    pub files_dir: PathBuf,
}

/// One line of a build's log, as the builder reports it.
pub type BuildLog = Arc<dyn Fn(String) + Send + Sync>;

/// A builder's work: `Ok` once the image is in the node's containerd,
/// else why not.
pub type BuildFuture = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;

/// Builds template images (buildah in `sandpool serve`).
pub trait TemplateBuilder: Send + Sync {
    /// Why builds cannot run here (501 with this reason), or `Ok`.
    fn check(&self) -> std::result::Result<(), String>;
    /// Where uploaded `COPY` files are kept, one `<hash>.tar` each.
    fn files_dir(&self) -> PathBuf;
    fn build(&self, req: BuildRequest, log: BuildLog) -> BuildFuture;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Waiting,
    Building,
    Ready,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Building => "building",
            Status::Ready => "ready",
            Status::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LogEntry {
    ms: i64,
    level: &'static str,
    message: String,
}

/// A [`LogEntry`] as stored.
#[derive(Deserialize)]
struct StoredLogEntry {
    ms: i64,
    level: String,
    message: String,
}

impl<'de> Deserialize<'de> for LogEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let e = StoredLogEntry::deserialize(d)?;
        let level = match e.level.as_str() {
            "error" => "error",
            "warn" => "warn",
            "debug" => "debug",
            _ => "info",
        };
        Ok(LogEntry {
            ms: e.ms,
            level,
            message: e.message,
        })
    }
}

/// One build of a template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BuildRecord {
    pub template: String,
    pub build_id: String,
    pub status: Status,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub cpu_count: u64,
    pub memory_mb: u64,
    logs: Vec<LogEntry>,
    reason: Option<(String, Option<String>)>,
    /// The build's tags (`default` when the create named none).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The builds and upload links of this gateway; the build records are
/// kept in a [`BuildStore`] when it has one (see `store.rs`).
pub struct Builds {
    pub(crate) started_ms: i64,
    pub(crate) builder: Option<Arc<dyn TemplateBuilder>>,
    builds: Mutex<HashMap<String, BuildRecord>>,
    store: Option<Arc<dyn BuildStore>>,
    /// upload secret → (template, files hash)
    uploads: Mutex<HashMap<String, (String, String)>>,
}

impl Default for Builds {
    fn default() -> Self {
        Builds::new(None)
    }
}

impl Builds {
    pub fn new(builder: Option<Arc<dyn TemplateBuilder>>) -> Self {
        Builds {
            started_ms: Utc::now().timestamp_millis(),
            builder,
            builds: Mutex::default(),
            store: None,
            uploads: Mutex::default(),
        }
    }

    /// The builder, or 501 saying why there is none.
    fn builder(&self) -> std::result::Result<Arc<dyn TemplateBuilder>, ApiError> {
        let b = self.builder.clone().ok_or_else(|| {
            ApiError::NotImplemented(
                "template builds need buildah and a node agent in this `sandpool serve` \
                 (none is configured here)"
                    .into(),
            )
        })?;
        b.check().map_err(ApiError::NotImplemented)?;
        Ok(b)
    }

    /// The newest ready build of `template`.
    pub(crate) fn ready_build(&self, template: &str) -> Option<BuildRecord> {
        self.builds
            .lock()
            .values()
            .filter(|b| b.template == template && b.status == Status::Ready)
            .max_by_key(|b| b.updated_ms)
            .cloned()
    }

    fn get(&self, template: &str, build_id: &str) -> std::result::Result<BuildRecord, ApiError> {
        self.builds
            .lock()
            .get(build_id)
            .filter(|b| b.template == templates::pool_name(template))
            .cloned()
            .ok_or_else(|| {
                ApiError::PoolNotFound(format!("build {build_id} of template {template}"))
            })
    }

    /// Change build `build_id`'s record, and store it.
    fn update(&self, build_id: &str, f: impl FnOnce(&mut BuildRecord)) {
        let changed = self.builds.lock().get_mut(build_id).map(|b| {
            f(b);
            b.updated_ms = Utc::now().timestamp_millis();
            b.clone()
        });
        if let Some(b) = changed {
            self.persist(&b);
        }
    }

    /// Add a log line to build `build_id` (stored with its next status change).
    fn log(&self, build_id: &str, level: &'static str, message: String) {
        if let Some(b) = self.builds.lock().get_mut(build_id) {
            let ms = Utc::now().timestamp_millis();
            b.logs.push(LogEntry { ms, level, message });
            b.updated_ms = ms;
        }
    }
}

/// Build records kept at most (the oldest finished ones go first).
const MAX_BUILDS: usize = 256;
/// A build created but not started for this long may go.
const ABANDONED_MS: i64 = 3_600_000;

/// Bound the records: past [`MAX_BUILDS`], drop the oldest finished (or
/// abandoned) builds, never a template's newest ready one (its pool's).
fn prune(m: &mut HashMap<String, BuildRecord>, now_ms: i64) {
    if m.len() <= MAX_BUILDS {
        return;
    }
    let mut newest: HashMap<&str, (i64, &str)> = HashMap::new();
    for b in m.values().filter(|b| b.status == Status::Ready) {
        let e = newest
            .entry(b.template.as_str())
            .or_insert((b.updated_ms, &b.build_id));
        if b.updated_ms > e.0 {
            *e = (b.updated_ms, &b.build_id);
        }
    }
    let keep: std::collections::HashSet<String> =
        newest.values().map(|(_, id)| id.to_string()).collect();
    let mut old: Vec<(i64, String)> = m
        .values()
        .filter(|b| !keep.contains(&b.build_id))
        .filter(|b| match b.status {
            Status::Ready | Status::Error => true,
            Status::Waiting => now_ms - b.created_ms > ABANDONED_MS,
            Status::Building => false,
        })
        .map(|b| (b.updated_ms, b.build_id.clone()))
        .collect();
    old.sort();
    let over = m.len() - MAX_BUILDS;
    for (_, id) in old.into_iter().take(over) {
        m.remove(&id);
    }
}

/// Template builds change pools for everyone: an admin key's only.
fn admin_only() -> std::result::Result<(), ApiError> {
    match tenancy::restricted() {
        Some(_) => Err(ApiError::Forbidden(
            "template builds need an admin API key".into(),
        )),
        None => Ok(()),
    }
}

/// A template name sandpool can use as a pool name.
fn check_name(name: &str) -> std::result::Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(format!(
            "template name {name:?}: use lowercase letters, digits, '-' and '_' (at most 63)"
        )))
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewBuild {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    cpu_count: Option<u64>,
    #[serde(default, rename = "memoryMB")]
    memory_mb: Option<u64>,
    /// Sandboxes get the disk of their node: any request is met or not at all.
    #[serde(default, rename = "minFreeDiskMB")]
    _min_free_disk_mb: Option<u64>,
    #[serde(default, rename = "teamID")]
    _team_id: Option<String>,
}

/// `POST /v3/templates`: a new build of template `name`.
pub(super) async fn create(
    State(gw): State<Gateway>,
    crate::extract::JsonOrEmpty(req, _): JsonBody<NewBuild>,
) -> Result<Response> {
    admin_only()?;
    gw.builds.builder()?;
    let given = req.name.or(req.alias).unwrap_or_default();
    let name = templates::pool_name(&given).to_string();
    check_name(&name)?;
    let mut tags = req.tags.unwrap_or_default();
    if let Some((_, t)) = given.rsplit('/').next().unwrap_or_default().split_once(':') {
        tags.push(t.to_string());
    }
    if tags.is_empty() {
        tags.push("default".into());
    }
    let now = Utc::now().timestamp_millis();
    let build_id = uuid::Uuid::new_v4().to_string();
    let rec = BuildRecord {
        template: name.clone(),
        build_id: build_id.clone(),
        status: Status::Waiting,
        created_ms: now,
        updated_ms: now,
        cpu_count: req.cpu_count.unwrap_or(0),
        memory_mb: req.memory_mb.unwrap_or(0),
        logs: Vec::new(),
        reason: None,
        tags: tags.clone(),
    };
    let pruned: Vec<String> = {
        let mut m = gw.builds.builds.lock();
        m.insert(build_id.clone(), rec.clone());
        let before: Vec<String> = m.keys().cloned().collect();
        prune(&mut m, now);
        before
            .into_iter()
            .filter(|id| !m.contains_key(id))
            .collect()
    };
    gw.builds.persist(&rec);
    gw.builds.forget(&pruned);
    let body = json!({
        "templateID": name,
        "buildID": build_id,
        "public": false,
        "names": [name],
        "aliases": [name],
        "tags": tags,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /templates/{id}/files/{hash}`: whether a `COPY` step's files are
/// here, else where to `PUT` them.
pub(super) async fn files(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Path((template, hash)): Path<(String, String)>,
) -> Result<Response> {
    admin_only()?;
    let b = gw.builds.builder()?;
    steps::check_hash(&hash)?;
    if b.files_dir().join(format!("{hash}.tar")).is_file() {
        return Ok((StatusCode::CREATED, Json(json!({"present": true}))).into_response());
    }
    let secret = hex::encode(uuid::Uuid::new_v4().as_bytes());
    let name = templates::pool_name(&template).to_string();
    gw.builds
        .uploads
        .lock()
        .insert(secret.clone(), (name, hash));
    let url = format!("{}/_sandpool/template-files/{secret}", base_url(&headers));
    Ok((
        StatusCode::CREATED,
        Json(json!({"present": false, "url": url})),
    )
        .into_response())
}

/// `scheme://host` the caller reached this gateway at.
fn base_url(headers: &HeaderMap) -> String {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let host = h("x-forwarded-host").or(h("host")).unwrap_or("127.0.0.1");
    let scheme = h("x-forwarded-proto").unwrap_or("http");
    format!("{scheme}://{host}")
}

/// `POST /v2/templates/{id}/builds/{buildID}`: start the build from the
/// steps the SDK sends; refused (400/501 naming the step) before it starts
/// when sandpool cannot honour a step.
pub(super) async fn start(
    State(gw): State<Gateway>,
    Path((template, build_id)): Path<(String, String)>,
    crate::extract::JsonOrEmpty(body, _): JsonBody<Value>,
) -> Result<Response> {
    admin_only()?;
    let builder = gw.builds.builder()?;
    let rec = gw.builds.get(&template, &build_id)?;
    if rec.status != Status::Waiting {
        return Err(ApiError::Conflict(format!(
            "build {build_id} was already started ({})",
            rec.status.as_str()
        ))
        .into());
    }
    let spec = steps::parse_start(&body)?;
    let base = match &spec.from_template {
        Some(t) => template_image(&gw, t).await?,
        None => spec.from_image.clone(),
    };
    let req = BuildRequest {
        template: rec.template.clone(),
        build_id: build_id.clone(),
        image: format!("sandpool.local/templates/{}:{}", rec.template, build_id),
        base,
        base_credentials: spec.credentials.clone(),
        steps: spec.steps.clone(),
        files_dir: builder.files_dir(),
    };
    steps::check_files(&req)?;
    gw.builds.update(&build_id, |b| b.status = Status::Building);
    tokio::spawn(run(gw.clone(), builder, req, spec, rec));
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The image of the template (pool) `t`, a `fromTemplate` base.
async fn template_image(gw: &Gateway, t: &str) -> std::result::Result<String, ApiError> {
    let p = gw
        .get_pool(templates::pool_name(t))
        .await
        .map_err(|_| ApiError::Invalid(format!("fromTemplate {t:?}: no such template")))?;
    Ok(p.template.map(|t| t.image).unwrap_or_default())
}

/// Run one build to its end, then make its pool.
async fn run(
    gw: Gateway,
    builder: Arc<dyn TemplateBuilder>,
    req: BuildRequest,
    spec: steps::StartSpec,
    rec: BuildRecord,
) {
    let builds = Arc::clone(&gw.builds);
    let id = req.build_id.clone();
    let sink_id = id.clone();
    let log: BuildLog = Arc::new(move |line| builds.log(&sink_id, "info", line));
    let image = req.image.clone();
    let outcome = match builder.build(req, Arc::clone(&log)).await {
        Ok(()) => gw
            .apply_pool(with_ready_cmd(
                build_pool(&rec, &image, spec.start_cmd.as_deref()),
                spec.ready_cmd.as_deref(),
            ))
            .await
            .map(|_| ())
            .map_err(|e| format!("making the template's pool: {e}")),
        Err(e) => Err(e),
    };
    let outcome = match (outcome, spec.ready_cmd.as_deref()) {
        (Ok(()), Some(cmd)) => check_ready(&gw, &rec.template, cmd, &log).await,
        (o, _) => o,
    };
    match outcome {
        Ok(()) => {
            log(format!(
                "template {} is ready (image {image})",
                rec.template
            ));
            gw.builds.update(&id, |b| b.status = Status::Ready);
        }
        Err(e) => {
            gw.builds.log(&id, "error", e.clone());
            let step = steps::failed_step(&e);
            gw.builds.update(&id, |b| {
                b.status = Status::Error;
                b.reason = Some((e, step));
            });
        }
    }
}

/// A built template with a readyCmd: one sandbox of it started, its start
/// command run and its readyCmd polled; when that never exits 0 the build
/// fails and the template's pool is removed (no create could succeed).
async fn check_ready(
    gw: &Gateway,
    template: &str,
    cmd: &str,
    log: &BuildLog,
) -> std::result::Result<(), String> {
    log(format!(
        "waiting for readyCmd {cmd:?} in a sandbox of the template"
    ));
    let req = pb::ClaimRequest {
        pool: template.to_string(),
        ttl_seconds: 300,
        ..Default::default()
    };
    let claim = gw
        .create_claim(req, ApiError::PoolNotFound)
        .await
        .map_err(|e| format!("starting a sandbox of the template: {e}"))?;
    let waited = match claim.sandbox.as_ref() {
        Some(sb) => ready::wait(sb, cmd, ready::READY_BOUND).await,
        None => Err("the claim has no sandbox".into()),
    };
    let _ = gw.release_claim(&claim.claim_id).await;
    if let Err(e) = &waited {
        let _ = gw.delete_pool(template).await;
        log(format!("template {template} removed: {e}"));
    }
    waited
}

/// `pool` with the template's readyCmd (a label its creates read).
fn with_ready_cmd(mut pool: pb::Pool, ready_cmd: Option<&str>) -> pb::Pool {
    if let (Some(c), Some(t)) = (ready_cmd, pool.template.as_mut()) {
        t.labels
            .insert(ready::READY_LABEL.to_string(), c.to_string());
    }
    pool
}

/// The pool a ready build of `rec` becomes: its image, start command and
/// resources; cold-started on demand, one kept warm.
fn build_pool(rec: &BuildRecord, image: &str, start_cmd: Option<&str>) -> pb::Pool {
    let cpu = if rec.cpu_count > 0 {
        rec.cpu_count.to_string()
    } else {
        String::new()
    };
    pb::Pool {
        name: rec.template.clone(),
        template: Some(pb::SandboxTemplate {
            image: image.to_string(),
            command: start_cmd
                .map(|c| vec!["/bin/sh".into(), "-c".into(), c.into()])
                .unwrap_or_default(),
            resources: Some(pb::Resources {
                cpu,
                memory: templates::memory_quantity(rec.memory_mb),
                pids: 0,
            }),
            // E2B runs the startCmd or nothing, never the image's own
            // Entrypoint/Cmd
            labels: BTreeMap::from([
                ("sandpool.dev/template-build".into(), rec.build_id.clone()),
                (
                    sandpool_core::start::IMAGE_COMMAND_LABEL.into(),
                    sandpool_core::start::IMAGE_COMMAND_NONE.into(),
                ),
            ])
            .into_iter()
            .collect(),
            ..Default::default()
        }),
        capacity: Some(pb::CapacitySpec {
            buffer_min: 0,
            buffer_max: 1,
            pool_min: 0,
            pool_max: 64,
        }),
        status: None,
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatusQuery {
    #[serde(default)]
    logs_offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

/// At most this many log entries per status call (E2B's default and cap).
const MAX_LOG_ENTRIES: usize = 100;

/// `GET /templates/{id}/builds/{buildID}/status`: E2B's `TemplateBuildInfo`.
pub(super) async fn status(
    State(gw): State<Gateway>,
    Path((template, build_id)): Path<(String, String)>,
    Query(q): Query<StatusQuery>,
) -> Result<Response> {
    let b = gw.builds.get(&template, &build_id)?;
    let limit = q.limit.unwrap_or(MAX_LOG_ENTRIES).min(MAX_LOG_ENTRIES);
    let entries: Vec<&LogEntry> = b
        .logs
        .iter()
        .skip(q.logs_offset.unwrap_or(0))
        .take(limit)
        .collect();
    Ok(Json(status_json(&b, &entries)).into_response())
}

fn entry_json(e: &LogEntry) -> Value {
    json!({"timestamp": rfc3339_ms(e.ms), "level": e.level, "message": e.message})
}

fn status_json(b: &BuildRecord, entries: &[&LogEntry]) -> Value {
    let mut v = json!({
        "templateID": b.template,
        "buildID": b.build_id,
        "status": b.status.as_str(),
        "logs": entries.iter().map(|e| e.message.clone()).collect::<Vec<_>>(),
        "logEntries": entries.iter().map(|e| entry_json(e)).collect::<Vec<_>>(),
    });
    if let Some((message, step)) = &b.reason {
        v["reason"] = json!({"message": message});
        if let Some(s) = step {
            v["reason"]["step"] = json!(s);
        }
    }
    v
}

/// `GET /templates/{id}/builds/{buildID}/logs`: E2B's `TemplateBuildLogsResponse`.
pub(super) async fn logs(
    State(gw): State<Gateway>,
    Path((template, build_id)): Path<(String, String)>,
) -> Result<Response> {
    let b = gw.builds.get(&template, &build_id)?;
    let logs: Vec<Value> = b.logs.iter().map(entry_json).collect();
    Ok(Json(json!({"logs": logs})).into_response())
}

#[cfg(test)]
mod tests;
