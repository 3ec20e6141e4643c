//! The OpenSandbox execd HTTP API (wire-compatible with the `opensandbox`
//! Python SDK 1.1.x).

use std::{collections::HashMap, io::SeekFrom, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, delete, get, post},
};
use bytes::Bytes;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt},
    sync::mpsc,
};

use crate::{
    AppState,
    auth::TokenGuard,
    channel_body,
    commands::{CommandSpec, Output, parse_signal},
    error::{Result, RuntimeError},
    events::{LineSplitter, StreamEvent},
    files::{self, Permission},
    interp::execd as code,
    session, upload,
};

/// The header in which upstream's `opensandbox-server` has its clients send a
/// sandbox's secure-access token (the endpoint headers it returns carry the
/// BatchSandbox's `opensandbox.io/secure-access-token` annotation, which
/// sandpool's controller sets to the pod's runtime token): the runtime token
/// is accepted there too, so the unchanged server's SDK calls authenticate.
pub const SECURE_ACCESS_HEADER: &str = "opensandbox-secure-access";

/// Longest line sent as one event; a longer one is cut (upstream execd has no
/// limit, this bound keeps a runaway line from using unbounded memory).
const MAX_LINE_BYTES: usize = 4 << 20;
const SEARCH_LIMIT: usize = 10_000;
const LOG_READ_MAX: usize = 4 << 20;

pub fn router(state: AppState) -> Router {
    let unsupported =
        |what: &'static str| any(move || async move { RuntimeError::NotImplemented(what.into()) });
    let routes = Router::new()
        .route("/ping", get(ping))
        .route("/command", post(run_command).delete(interrupt_command))
        .route("/command/status/{id}", get(command_status))
        .route("/command/{id}/logs", get(command_logs))
        .route("/files/upload", post(upload_files))
        .route("/files/download", get(download_file))
        .route("/files/info", get(files_info))
        .route("/files", delete(remove_files))
        .route("/files/permissions", post(chmod_files))
        .route("/files/mv", post(move_files))
        .route("/files/search", get(search_files))
        .route("/files/replace", post(replace_content))
        .route("/directories/list", get(list_directory))
        .route("/directories", post(make_dirs).delete(remove_dirs))
        .route("/metrics", get(metrics))
        .route("/metrics/watch", get(watch_metrics))
        .route("/code", post(code::run_code).delete(code::interrupt))
        .route("/code/context", post(code::create_context))
        .route("/code/contexts", get(code::list_contexts).delete(code::delete_language))
        .route("/code/contexts/{id}", get(code::get_context).delete(code::delete_context))
        .route("/session", post(session::create_session))
        .route("/session/{id}", delete(session::delete_session))
        .route("/session/{id}/run", post(session::run_in_session))
        .route("/pty", unsupported("PTY sessions (/pty)"))
        .route("/pty/{*rest}", unsupported("PTY sessions (/pty)"))
        .route("/proxy/{port}", unsupported("the port proxy (/proxy)"))
        .route("/proxy/{port}/{*rest}", unsupported("the port proxy (/proxy)"))
        .fallback(|req: Request| async move {
            (StatusCode::NOT_FOUND, Json(json!({"code": "NOT_FOUND", "message": format!("no route {} {}", req.method(), req.uri().path())})))
        });
    // `X-EXECD-ACCESS-TOKEN`, when a token is configured (or the same token
    // in `OpenSandbox-Secure-Access`, see [`SECURE_ACCESS_HEADER`]); `/ping`
    // stays open (as upstream execd does) so health probes need no secret.
    TokenGuard {
        accepted: state.cfg.access_token.as_deref().map(|t| {
            [
                ("x-execd-access-token", t.to_string()),
                (SECURE_ACCESS_HEADER, t.to_string()),
            ]
            .into()
        }),
        guards: |path| path != "/ping",
        refuse: || RuntimeError::Unauthorized.into_response(),
    }
    .apply(routes)
    .with_state(state)
    // outermost, so the token guard's 401s and the 404 fallback carry it too
    .layer(axum::middleware::from_fn(crate::request_id::echo))
}

/// Repeated-key query parsing (`?path=a&path=b`).
struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    fn from_uri(uri: &http::Uri) -> Self {
        QueryPairs(
            form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(a, _)| a == k)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn require(&self, k: &str) -> Result<&str> {
        self.get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RuntimeError::MissingQuery(format!("missing query parameter '{k}'")))
    }
    fn require_all(&self, k: &str) -> Result<Vec<String>> {
        let v = self.all(k);
        if v.is_empty() || v.iter().any(|p| p.is_empty()) {
            return Err(RuntimeError::MissingQuery(format!(
                "missing query parameter '{k}'"
            )));
        }
        Ok(v)
    }
    fn number<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>> {
        self.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    RuntimeError::InvalidRequest(format!(
                        "query parameter '{k}' must be a non-negative integer"
                    ))
                })
            })
            .transpose()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for QueryPairs {
    type Rejection = RuntimeError;
    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self> {
        Ok(QueryPairs::from_uri(&parts.uri))
    }
}

/// Read a JSON body within the configured limit, with execd-style errors.
pub(crate) async fn json_body<T: DeserializeOwned>(st: &AppState, body: Body) -> Result<T> {
    let bytes = axum::body::to_bytes(body, st.cfg.max_json_bytes)
        .await
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit")
            {
                RuntimeError::PayloadTooLarge(format!(
                    "request body exceeds {} bytes",
                    st.cfg.max_json_bytes
                ))
            } else {
                RuntimeError::invalid_input("reading request body", e)
            }
        })?;
    serde_json::from_slice(&bytes).map_err(|e| RuntimeError::invalid_input("invalid JSON body", e))
}

use crate::blocking;

async fn ping() -> StatusCode {
    StatusCode::OK
}

#[derive(Debug, Deserialize)]
struct RunCommandRequest {
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    background: bool,
    /// milliseconds
    #[serde(default)]
    timeout: Option<i64>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    envs: Option<HashMap<String, String>>,
}

impl RunCommandRequest {
    fn into_spec(self) -> Result<CommandSpec> {
        let argv = self.argv.unwrap_or_default();
        let command = self.command.unwrap_or_default();
        if command.trim().is_empty() && argv.is_empty() {
            return Err(RuntimeError::InvalidRequest(
                "one of 'command' or 'argv' is required".into(),
            ));
        }
        let timeout = match self.timeout {
            None | Some(0) => None,
            Some(t) if t < 0 => {
                return Err(RuntimeError::InvalidRequest(format!(
                    "timeout must be positive, got {t}"
                )));
            }
            Some(t) => Some(Duration::from_millis(t as u64)),
        };
        Ok(CommandSpec {
            command,
            argv,
            cwd: self.cwd.filter(|c| !c.is_empty()),
            envs: self.envs.unwrap_or_default(),
            uid: self.uid,
            gid: self.gid,
            timeout,
            stdin: false,
            pty: None,
        })
    }
}

pub(crate) fn event_stream_response(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// `code` run as a foreground shell command, streamed as `/command` streams
/// (execd's `/code` with no language).
pub(crate) async fn run_as_command(st: &AppState, code: String) -> Result<Response> {
    let req = RunCommandRequest {
        command: Some(code),
        argv: None,
        cwd: None,
        background: false,
        timeout: None,
        uid: None,
        gid: None,
        envs: None,
    };
    let mut spec = req.into_spec()?;
    spec.envs = st.with_sandbox_env(std::mem::take(&mut spec.envs));
    let (tx, rx) = mpsc::channel::<Output>(16);
    let rec = st.commands.start(spec, tx)?;
    let (ftx, frx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(stream_events(rec.id.clone(), rx, ftx, st.cfg.ping_interval));
    Ok(event_stream_response(channel_body(frx)))
}

async fn run_command(State(st): State<AppState>, body: Body) -> Result<Response> {
    let req: RunCommandRequest = json_body(&st, body).await?;
    let background = req.background;
    let mut spec = req.into_spec()?;
    spec.envs = st.with_sandbox_env(std::mem::take(&mut spec.envs));
    if background {
        let rec = st.commands.start_background(spec)?;
        tracing::info!(id = %rec.id, "background command started");
        let frames = [
            StreamEvent::init(&rec.id).frame(),
            StreamEvent::complete(0).frame(),
        ];
        let stream =
            futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
        return Ok(event_stream_response(Body::from_stream(stream)));
    }
    let (tx, rx) = mpsc::channel::<Output>(16);
    let rec = st.commands.start(spec, tx)?;
    let (ftx, frx) = mpsc::channel::<Bytes>(16);
    let ping_every = st.cfg.ping_interval;
    let id = rec.id.clone();
    tokio::spawn(stream_events(id, rx, ftx, ping_every));
    Ok(event_stream_response(channel_body(frx)))
}

/// Turn a command's raw output into execd events: one event per line as soon
/// as it is complete (see [`LineSplitter`]); an unterminated last line at
/// exit, as upstream execd does. Returns when
/// the command ended or the client went away (which kills the command, since
/// dropping `rx` makes the output pumps fail).
pub(crate) async fn stream_events(
    id: String,
    mut rx: mpsc::Receiver<Output>,
    ftx: mpsc::Sender<Bytes>,
    ping_every: Duration,
) {
    use crate::events::EventType::{Stderr, Stdout};
    if ftx.send(StreamEvent::init(&id).frame()).await.is_err() {
        return;
    }
    let mut out = LineSplitter::new(MAX_LINE_BYTES);
    let mut err = LineSplitter::new(MAX_LINE_BYTES);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let mut frames: Vec<Bytes> = Vec::new();
        let mut done = false;
        tokio::select! {
            o = rx.recv() => match o {
                Some(Output::Stdout(b)) => frames.extend(out.push(&b).into_iter().map(|l| StreamEvent::with_text(Stdout, l).frame())),
                Some(Output::Stderr(b)) => frames.extend(err.push(&b).into_iter().map(|l| StreamEvent::with_text(Stderr, l).frame())),
                Some(Output::Exit(e)) => {
                    frames.extend(out.finish().map(|l| StreamEvent::with_text(Stdout, l).frame()));
                    frames.extend(err.finish().map(|l| StreamEvent::with_text(Stderr, l).frame()));
                    let ms = u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX);
                    frames.push(if e.code == 0 {
                        StreamEvent::complete(ms).frame()
                    } else {
                        StreamEvent::exit_error(e.code, e.signal).frame()
                    });
                    done = true;
                }
                None => {
                    frames.push(StreamEvent::runtime_error("RuntimeError", "command output ended unexpectedly").frame());
                    done = true;
                }
            },
            _ = ping.tick() => frames.push(StreamEvent::ping().frame()),
        }
        for f in frames {
            if ftx.send(f).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
    }
}

async fn interrupt_command(State(st): State<AppState>, q: QueryPairs) -> Result<StatusCode> {
    let id = q.require("id")?;
    let sig = match q.get("signal") {
        Some(s) => parse_signal(s)?,
        None => nix::sys::signal::Signal::SIGKILL,
    };
    st.commands.get(id)?.signal(sig)?;
    Ok(StatusCode::OK)
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn command_status(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let rec = st.commands.get(&id)?;
    let mut v = json!({
        "id": rec.id,
        "content": rec.content,
        "running": rec.running(),
        "started_at": rfc3339(rec.started_at),
    });
    if let Some(e) = rec.exit_info() {
        v["exit_code"] = json!(crate::events::go_exit_code(e.code, e.signal));
        v["finished_at"] = json!(rfc3339(e.finished_at));
        if e.code != 0 {
            // upstream keeps the Go error text of a failed command
            v["error"] = json!(crate::events::process_state(e.code, e.signal));
        }
    }
    Ok(Json(v))
}

async fn command_logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: QueryPairs,
) -> Result<Response> {
    let cursor: u64 = q.number("cursor")?.unwrap_or(0);
    let (data, next) = st.commands.read_log(&id, cursor, LOG_READ_MAX).await?;
    let mut r = Response::new(Body::from(data));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert("EXECD-COMMANDS-TAIL-CURSOR", HeaderValue::from(next));
    Ok(r)
}

async fn upload_files(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            RuntimeError::InvalidRequest("missing Content-Type: multipart/form-data".into())
        })?;
    let boundary = multer::parse_boundary(ct)
        .map_err(|e| RuntimeError::invalid_input("bad multipart Content-Type", e))?;
    let done = upload::receive(body.into_data_stream(), boundary, &st.cfg.upload).await?;
    tracing::info!(
        files = done.len(),
        bytes = done.iter().map(|f| f.size).sum::<u64>(),
        "upload complete"
    );
    Ok(Json(json!(
        done.iter()
            .map(|f| json!({"path": f.path, "size": f.size}))
            .collect::<Vec<_>>()
    )))
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive (start, end).
pub fn parse_range(h: &str, size: u64) -> Result<(u64, u64)> {
    let unsatisfiable =
        || RuntimeError::RangeNotSatisfiable(format!("{h} for a file of {size} bytes"));
    let spec = h
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(|| RuntimeError::InvalidRequest(format!("unsupported Range {h}")))?;
    if spec.contains(',') {
        return Err(RuntimeError::InvalidRequest(
            "multiple ranges are not supported".into(),
        ));
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| RuntimeError::InvalidRequest(format!("malformed Range {h}")))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| RuntimeError::InvalidRequest(format!("malformed Range {h}")))
    };
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Err(RuntimeError::InvalidRequest(format!("malformed Range {h}"))),
        (true, false) => {
            let n = num(b)?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size - 1)
        }
        (false, true) => (num(a)?, size.saturating_sub(1)),
        (false, false) => (num(a)?, num(b)?.min(size.saturating_sub(1))),
    };
    if start >= size || start > end {
        return Err(unsatisfiable());
    }
    Ok((start, end))
}

async fn download_file(
    State(_st): State<AppState>,
    q: QueryPairs,
    headers: HeaderMap,
) -> Result<Response> {
    let path = q.require("path")?.to_string();
    let line_window = ["offset", "limit"]
        .iter()
        .any(|k| q.get(k).is_some_and(|v| !v.is_empty()));
    if line_window && headers.contains_key(header::RANGE) {
        return Err(RuntimeError::InvalidRequest(
            "line-based reading (offset/limit) and byte range (Range header) are mutually exclusive".into(),
        ));
    }
    let p2 = path.clone();
    let (file, size) = blocking(move || files::open_for_read(&p2)).await?;
    let mut file = tokio::fs::File::from_std(file);
    if line_window {
        // upstream: `offset` is 1-based and defaults to the first line,
        // `limit` defaults to every line after it
        let offset = line_param(&q, "offset")?.unwrap_or(1);
        return lines_response(file, offset - 1, line_param(&q, "limit")?).await;
    }
    let filename = std::path::Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let disposition = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        filename.replace('"', "")
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, start, len) = match range {
        Some(r) => match parse_range(&r, size) {
            Ok((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
            Err(err @ RuntimeError::RangeNotSatisfiable(_)) => {
                let mut resp = err.into_response();
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}"))
                        .unwrap_or(HeaderValue::from_static("bytes */0")),
                );
                return Ok(resp);
            }
            Err(e) => return Err(e),
        },
        None => (StatusCode::OK, 0, size),
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| RuntimeError::io(&path, e))?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_DISPOSITION, disposition);
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {}-{}/{}", start, start + len - 1, size);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr)
                .map_err(|e| RuntimeError::failed("Content-Range header", e))?,
        );
    }
    Ok(resp)
}

/// A line-window query parameter: absent (or empty) is `None`, anything but
/// a positive integer is 400.
fn line_param(q: &QueryPairs, k: &str) -> Result<Option<u64>> {
    let Some(raw) = q.get(k).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match raw.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(RuntimeError::InvalidRequest(format!(
            "invalid query parameter '{k}': {raw}"
        ))),
    }
}

/// Line-based read as upstream does it: skip `skip` lines, then at most
/// `limit` lines (all when `None`), each without its `\n` (or `\r\n`),
/// joined with `\n` and no newline after the last.
async fn lines_response(file: tokio::fs::File, skip: u64, limit: Option<u64>) -> Result<Response> {
    let mut reader = tokio::io::BufReader::new(file);
    let mut out = Vec::new();
    let mut line = Vec::new();
    let (mut idx, mut written) = (0u64, 0u64);
    while limit.is_none_or(|l| written < l) {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| RuntimeError::failed("reading the file", e))?;
        if n == 0 {
            break;
        }
        idx += 1;
        if idx <= skip {
            continue;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if written > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(&line);
        written += 1;
        if out.len() > LOG_READ_MAX * 4 {
            return Err(RuntimeError::PayloadTooLarge(
                "line range exceeds 16 MiB; use Range instead".into(),
            ));
        }
    }
    let mut r = Response::new(Body::from(out));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(r)
}

async fn files_info(q: QueryPairs) -> Result<Json<serde_json::Map<String, serde_json::Value>>> {
    let paths = q.all("path");
    blocking(move || {
        let mut m = serde_json::Map::new();
        for p in paths {
            let info = files::stat(&p)?;
            m.insert(
                p,
                serde_json::to_value(info)
                    .map_err(|e| RuntimeError::failed("encoding file info", e))?,
            );
        }
        Ok(Json(m))
    })
    .await
}

async fn remove_files(q: QueryPairs) -> Result<StatusCode> {
    let paths = q.require_all("path")?;
    for_each(paths, |p| unless_missing(files::remove_file(&p))).await
}

/// Apply `op` to every item off the async threads, in order, stopping at
/// the first error; `200 OK` when all succeeded.
async fn for_each<I>(items: I, op: fn(I::Item) -> Result<()>) -> Result<StatusCode>
where
    I: IntoIterator + Send + 'static,
{
    blocking(move || {
        items.into_iter().try_for_each(op)?;
        Ok(StatusCode::OK)
    })
    .await
}

/// A removal of something already gone counts as done.
fn unless_missing(r: Result<()>) -> Result<()> {
    match r {
        Err(RuntimeError::FileNotFound(_)) => Ok(()),
        other => other,
    }
}

async fn chmod_files(State(st): State<AppState>, body: Body) -> Result<StatusCode> {
    let req: HashMap<String, Permission> = json_body(&st, body).await?;
    for_each(req, |(p, perm)| {
        files::stat(&p)?;
        files::set_permissions(&p, &perm)
    })
    .await
}

#[derive(Deserialize)]
struct MoveItem {
    src: String,
    dest: String,
}

async fn move_files(State(st): State<AppState>, body: Body) -> Result<StatusCode> {
    let req: Vec<MoveItem> = json_body(&st, body).await?;
    for_each(req, |m| files::rename(&m.src, &m.dest)).await
}

async fn search_files(q: QueryPairs) -> Result<Json<Vec<files::FileInfo>>> {
    let path = q.require("path")?.to_string();
    let pattern = q
        .get("pattern")
        .filter(|p| !p.is_empty())
        .unwrap_or("**")
        .to_string();
    blocking(move || files::search(&path, &pattern, SEARCH_LIMIT).map(Json)).await
}

#[derive(Deserialize)]
struct ReplaceItem {
    old: String,
    new: String,
}

async fn replace_content(
    State(st): State<AppState>,
    q: QueryPairs,
    body: Body,
) -> Result<Response> {
    let verbose = q
        .get("verbose")
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let req: HashMap<String, ReplaceItem> = json_body(&st, body).await?;
    let max = st.cfg.upload.max_file_bytes.min(256 << 20);
    blocking(move || {
        let mut out = serde_json::Map::new();
        for (p, r) in req {
            let n = files::replace_in_file(&p, &r.old, &r.new, max)?;
            out.insert(p, json!({"replacedCount": n}));
        }
        Ok(if verbose {
            Json(serde_json::Value::Object(out)).into_response()
        } else {
            StatusCode::OK.into_response()
        })
    })
    .await
}

async fn list_directory(q: QueryPairs) -> Result<Json<Vec<files::FileInfo>>> {
    let path = q.require("path")?.to_string();
    let depth: usize = q.number("depth")?.unwrap_or(1);
    if depth > 64 {
        return Err(RuntimeError::InvalidRequest(
            "depth must be at most 64".into(),
        ));
    }
    if depth == 0 {
        return Ok(Json(Vec::new()));
    }
    blocking(move || files::list_dir(&path, depth).map(Json)).await
}

async fn make_dirs(State(st): State<AppState>, body: Body) -> Result<StatusCode> {
    let req: HashMap<String, Permission> = json_body(&st, body).await?;
    for_each(req, |(p, perm)| files::make_dirs(&p, &perm)).await
}

async fn remove_dirs(q: QueryPairs) -> Result<StatusCode> {
    let paths = q.require_all("path")?;
    for_each(paths, |p| unless_missing(files::remove_dir(&p))).await
}

async fn metrics(State(st): State<AppState>) -> Json<crate::sysmetrics::Metrics> {
    Json(st.metrics.sample().await)
}

async fn watch_metrics(State(st): State<AppState>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let sampler = Arc::clone(&st.metrics);
    tokio::spawn(async move {
        loop {
            let m = sampler.sample().await;
            let mut v = serde_json::to_vec(&m).unwrap_or_default();
            v.extend_from_slice(b"\n\n");
            if tx.send(Bytes::from(v)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    event_stream_response(channel_body(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let satisfiable = [
            ("bytes=0-9", (0, 9)),
            ("bytes=90-", (90, 99)),
            ("bytes=-10", (90, 99)),
            ("bytes=95-200", (95, 99)),
        ];
        for (h, want) in satisfiable {
            assert_eq!(parse_range(h, 100).unwrap(), want, "{h}");
        }
        for h in ["bytes=100-", "bytes=5-2", "bytes=-0"] {
            assert!(
                matches!(
                    parse_range(h, 100),
                    Err(RuntimeError::RangeNotSatisfiable(_))
                ),
                "{h}"
            );
        }
        for h in ["items=1-2", "bytes=a-b", "bytes=0-1,4-5"] {
            assert!(
                matches!(parse_range(h, 100), Err(RuntimeError::InvalidRequest(_))),
                "{h}"
            );
        }
    }

    #[test]
    fn run_command_request_validation() {
        let r: RunCommandRequest =
            serde_json::from_str(r#"{"command":"echo hi","timeout":1500,"envs":{"A":"1"}}"#)
                .unwrap();
        let s = r.into_spec().unwrap();
        assert_eq!(s.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(s.envs["A"], "1");
        let r: RunCommandRequest = serde_json::from_str(r#"{"command":"x","timeout":-1}"#).unwrap();
        assert!(r.into_spec().is_err());
        let r: RunCommandRequest = serde_json::from_str(r#"{}"#).unwrap();
        assert!(r.into_spec().is_err());
    }
}
