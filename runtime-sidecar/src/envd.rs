//! E2B's envd protocol (port 49983), so the stock `e2b` SDK can run processes
//! and use files in a sandpool sandbox.
//!
//! * Connect RPC with the JSON codec: unary calls are `application/json`;
//!   server-streaming calls (`process.Process/Start`, `/Connect`) take one
//!   enveloped request and answer a stream of envelopes
//!   (`[flags u8][len u32 BE][json]`) ending with an end-of-stream envelope
//!   (flags `0x02`, `{}` or `{"error":{...}}`).
//! * Plain HTTP: `GET /health` (204), `GET /envs`, `GET /metrics`,
//!   `GET|POST /files`, `POST /init`.
//! * Auth: `X-Access-Token` equal to the sandbox token (the same token as
//!   execd's), except `/health`, `/files` and `/init`... which E2B lets through
//!   with a signature; here `/files` needs the token too.
//!
//! Processes are the command registry's; their output is fanned out to every
//! stream attached to them (`Start`, then any `Connect`) and keeps being
//! drained when nobody listens, so background processes never block.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::{
    AppState,
    commands::{CommandRecord, CommandSpec, Output},
    error::RuntimeError,
    files::{self, FileKind},
};

/// The envd version this implementation answers for: process Start/Connect/
/// List/SendInput/SendSignal/CloseStdin, filesystem Stat/MakeDir/Move/ListDir/
/// Remove, /files (multipart and octet-stream), /metrics, default user.
pub const ENVD_VERSION: &str = "0.5.7";

const END_STREAM: u8 = 0x02;

/// A process started through envd: its record and its output fan-out.
struct EnvdProcess {
    rec: Arc<CommandRecord>,
    tag: Option<String>,
    cmd: String,
    args: Vec<String>,
    envs: HashMap<String, String>,
    cwd: Option<String>,
    events: broadcast::Sender<Value>,
}

#[derive(Clone, Default)]
pub struct Envd {
    procs: Arc<Mutex<HashMap<u32, Arc<EnvdProcess>>>>,
    env: Arc<Mutex<HashMap<String, String>>>,
    watchers: Arc<Mutex<HashMap<String, Watcher>>>,
}

/// A polled watcher (`CreateWatcher`): events buffered until fetched.
struct Watcher {
    events: Arc<Mutex<std::collections::VecDeque<Value>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

const MAX_BUFFERED_EVENTS: usize = 10_000;

impl Envd {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Arc<EnvdProcess>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub struct EnvdState {
    pub app: AppState,
    pub envd: Envd,
}

/// Connect error codes.
#[derive(Debug)]
pub struct ConnectError {
    code: &'static str,
    message: String,
}

impl ConnectError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
        }
    }
    fn status(&self) -> StatusCode {
        match self.code {
            "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "permission_denied" => StatusCode::FORBIDDEN,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

impl From<RuntimeError> for ConnectError {
    fn from(e: RuntimeError) -> Self {
        let code = match e {
            RuntimeError::InvalidRequest(_)
            | RuntimeError::MissingQuery(_)
            | RuntimeError::IsADirectory(_)
            | RuntimeError::NotADirectory(_) => "invalid_argument",
            RuntimeError::FileNotFound(_) | RuntimeError::CommandNotFound(_) => "not_found",
            RuntimeError::AlreadyExists(_) => "already_exists",
            RuntimeError::Conflict(_) => "failed_precondition",
            RuntimeError::PayloadTooLarge(_) => "resource_exhausted",
            RuntimeError::Unauthorized => "unauthenticated",
            RuntimeError::PermissionDenied(_) => "permission_denied",
            RuntimeError::NotImplemented(_) => "unimplemented",
            RuntimeError::RangeNotSatisfiable(_) => "out_of_range",
            RuntimeError::Io { .. } | RuntimeError::Internal(_) => "internal",
        };
        ConnectError::new(code, e.to_string())
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.json())).into_response()
    }
}

type CResult<T> = Result<T, ConnectError>;

/// One Connect envelope.
pub fn envelope(flags: u8, msg: &Value) -> Bytes {
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(flags);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

/// Parse the first envelope of a streaming request (bounded).
pub fn parse_envelope(buf: &[u8], max: usize) -> CResult<Value> {
    if buf.len() < 5 {
        return Err(ConnectError::new(
            "invalid_argument",
            "streaming request: missing envelope",
        ));
    }
    let flags = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if flags & 0x01 != 0 {
        return Err(ConnectError::new(
            "unimplemented",
            "compressed envelopes are not supported",
        ));
    }
    if len > max {
        return Err(ConnectError::new(
            "resource_exhausted",
            format!("envelope of {len} bytes exceeds {max}"),
        ));
    }
    if buf.len() < 5 + len {
        return Err(ConnectError::new(
            "invalid_argument",
            format!("truncated envelope: {} of {len} bytes", buf.len() - 5),
        ));
    }
    serde_json::from_slice(&buf[5..5 + len])
        .map_err(|e| ConnectError::new("invalid_argument", format!("bad JSON in envelope: {e}")))
}

/// A field by its proto3-JSON name or its original snake_case name.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel)
        .or_else(|| v.get(snake))
        .filter(|x| !x.is_null())
}

fn str_field(v: &Value, camel: &str, snake: &str) -> Option<String> {
    field(v, camel, snake)
        .and_then(|x| x.as_str())
        .map(str::to_string)
}

pub fn router(st: EnvdState) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route("/envs", get(envs))
        .route("/metrics", get(metrics))
        .route("/init", post(init))
        .route("/files", get(download).post(upload))
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/StreamInput", post(stream_input))
        .route(
            "/process.Process/{method}",
            post(|| async {
                ConnectError::new(
                    "unimplemented",
                    "this process method is not supported by sandpool yet",
                )
            }),
        )
        .route("/filesystem.Filesystem/Stat", post(fs_stat))
        .route("/filesystem.Filesystem/MakeDir", post(fs_make_dir))
        .route("/filesystem.Filesystem/Move", post(fs_move))
        .route("/filesystem.Filesystem/ListDir", post(fs_list_dir))
        .route("/filesystem.Filesystem/Remove", post(fs_remove))
        .route("/filesystem.Filesystem/WatchDir", post(watch_dir))
        .route("/filesystem.Filesystem/CreateWatcher", post(create_watcher))
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(get_watcher_events),
        )
        .route("/filesystem.Filesystem/RemoveWatcher", post(remove_watcher))
        .route(
            "/filesystem.Filesystem/{method}",
            post(|| async {
                ConnectError::new(
                    "unimplemented",
                    "this filesystem method is not supported by sandpool yet",
                )
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            st.clone(),
            require_token,
        ))
        .with_state(st)
}

async fn require_token(State(st): State<EnvdState>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/health"
        && !crate::token_ok(
            req.headers(),
            "x-access-token",
            st.app.cfg.access_token.as_ref(),
        )
    {
        return ConnectError::new("unauthenticated", "invalid or missing X-Access-Token")
            .into_response();
    }
    next.run(req).await
}

async fn read_body(st: &EnvdState, body: Body) -> CResult<Bytes> {
    axum::body::to_bytes(body, st.app.cfg.max_json_bytes)
        .await
        .map_err(|e| ConnectError::new("resource_exhausted", format!("request body: {e}")))
}

async fn unary_json(st: &EnvdState, body: Body) -> CResult<Value> {
    let b = read_body(st, body).await?;
    if b.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&b)
        .map_err(|e| ConnectError::new("invalid_argument", format!("bad JSON: {e}")))
}

async fn envs(State(st): State<EnvdState>) -> Json<Value> {
    let mut m: serde_json::Map<String, Value> = std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    for (k, v) in st.envd.env.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    m.remove("EXECD_ACCESS_TOKEN");
    Json(Value::Object(m))
}

async fn metrics(State(st): State<EnvdState>) -> Json<Value> {
    let m = st.app.metrics.sample().await;
    Json(json!({
        "ts": m.timestamp / 1000,
        "cpu_count": m.cpu_count as u64,
        "cpu_used_pct": m.cpu_used_pct,
        "mem_total": (m.mem_total_mib * 1048576.0) as u64,
        "mem_used": (m.mem_used_mib * 1048576.0) as u64,
        "mem_cache": 0,
        "mem_total_mib": m.mem_total_mib as u64,
        "mem_used_mib": m.mem_used_mib as u64,
        "disk_used": 0,
        "disk_total": 0,
    }))
}

/// `POST /init`: default env vars for processes (the token is the sandbox's own).
async fn init(State(st): State<EnvdState>, body: Body) -> CResult<StatusCode> {
    let v = unary_json(&st, body).await?;
    if let Some(Value::Object(m)) = field(&v, "envVars", "env_vars") {
        let mut env = st.envd.env.lock().unwrap_or_else(|p| p.into_inner());
        for (k, val) in m {
            if let Some(s) = val.as_str() {
                env.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ processes

fn process_event(o: &Output) -> Value {
    match o {
        Output::Stdout(b) => json!({"event": {"data": {"stdout": B64.encode(b)}}}),
        Output::Stderr(b) => json!({"event": {"data": {"stderr": B64.encode(b)}}}),
        Output::Exit(e) => {
            let status = if e.signal != 0 {
                format!("signal: {}", signal_name(e.signal))
            } else {
                format!("exit status {}", e.code)
            };
            let mut end = json!({"exitCode": e.code, "exited": e.signal == 0, "status": status});
            if e.timed_out {
                end["error"] = json!("timed out");
            }
            json!({"event": {"end": end}})
        }
    }
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(nix::sys::signal::Signal::SIGKILL) => "killed".into(),
        Ok(nix::sys::signal::Signal::SIGTERM) => "terminated".into(),
        Ok(s) => s.as_str().trim_start_matches("SIG").to_ascii_lowercase(),
        Err(_) => sig.to_string(),
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    use futures_util::StreamExt;
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>),
    );
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+json"),
    );
    r
}

/// Keepalive interval requested by the client (`Keepalive-Ping-Interval`, seconds).
fn keepalive(headers: &HeaderMap) -> Duration {
    let s = headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    Duration::from_secs(s.clamp(1, 3600))
}

/// Pipe a process's events to one client stream until its end event (or the client leaves).
fn attach(events: broadcast::Receiver<Value>, first: Option<Value>, every: Duration) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        let mut events = events;
        if let Some(f) = first
            && tx.send(envelope(0, &f)).await.is_err()
        {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(v) => {
                        let end = v["event"].get("end").is_some();
                        if tx.send(envelope(0, &v)).await.is_err() {
                            return;
                        }
                        if end {
                            let _ = tx.send(envelope(END_STREAM, &json!({}))).await;
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "envd stream lagged; output events dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(envelope(END_STREAM, &json!({}))).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if tx.send(envelope(0, &json!({"event": {"keepalive": {}}}))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    stream_response(rx)
}

/// `process.Process/Start`: spawn, then stream start/data/end events. The
/// process outlives the stream (E2B background commands).
async fn start(State(st): State<EnvdState>, headers: HeaderMap, body: Body) -> Response {
    match start_inner(&st, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            // streaming calls report errors in the end-of-stream envelope
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(envelope(END_STREAM, &json!({"error": e.json()})));
            stream_response(rx)
        }
    }
}

async fn start_inner(st: &EnvdState, headers: &HeaderMap, body: Body) -> CResult<Response> {
    let b = read_body(st, body).await?;
    let req = parse_envelope(&b, st.app.cfg.max_json_bytes)?;
    let p = field(&req, "process", "process")
        .ok_or_else(|| ConnectError::new("invalid_argument", "process is required"))?;
    let cmd = str_field(p, "cmd", "cmd")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ConnectError::new("invalid_argument", "process.cmd is required"))?;
    let args: Vec<String> = field(p, "args", "args")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    let mut envs: HashMap<String, String> = st
        .envd
        .env
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(m) = field(p, "envs", "envs")
        .and_then(|m| serde_json::from_value::<HashMap<String, String>>(m.clone()).ok())
    {
        envs.extend(m);
    }
    let cwd = str_field(p, "cwd", "cwd").filter(|c| !c.is_empty());
    let tag = str_field(&req, "tag", "tag");
    let stdin = field(&req, "stdin", "stdin")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if field(&req, "pty", "pty").is_some() {
        return Err(ConnectError::new(
            "unimplemented",
            "PTY processes are not supported by sandpool yet",
        ));
    }
    let timeout = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_millis);
    let mut argv = vec![cmd.clone()];
    argv.extend(args.iter().cloned());
    let spec = CommandSpec {
        command: String::new(),
        argv,
        cwd: cwd.clone(),
        envs: envs.clone(),
        uid: None,
        gid: None,
        timeout,
        stdin,
    };
    let (events, first_rx) = broadcast::channel::<Value>(1024);
    let (otx, mut orx) = mpsc::channel::<Output>(64);
    let rec = st.app.commands.start_detached(spec, otx)?;
    let pid = rec.pid;
    let proc_ = Arc::new(EnvdProcess {
        rec,
        tag,
        cmd,
        args,
        envs,
        cwd,
        events: events.clone(),
    });
    st.envd.lock().insert(pid, proc_);
    // Drain the process output into the fan-out, whoever listens.
    let envd = st.envd.clone();
    tokio::spawn(async move {
        while let Some(o) = orx.recv().await {
            let end = matches!(o, Output::Exit(_));
            let _ = events.send(process_event(&o));
            if end {
                break;
            }
        }
        // keep finished processes out of List
        envd.lock().remove(&pid);
    });
    Ok(attach(
        first_rx,
        Some(json!({"event": {"start": {"pid": pid}}})),
        keepalive(headers),
    ))
}

fn select(st: &EnvdState, v: &Value) -> CResult<Arc<EnvdProcess>> {
    let sel = field(v, "process", "process")
        .ok_or_else(|| ConnectError::new("invalid_argument", "process selector is required"))?;
    let g = st.envd.lock();
    if let Some(pid) = field(sel, "pid", "pid").and_then(Value::as_u64) {
        return g.get(&(pid as u32)).cloned().ok_or_else(|| {
            ConnectError::new("not_found", format!("process with pid {pid} not found"))
        });
    }
    if let Some(tag) = str_field(sel, "tag", "tag") {
        return g
            .values()
            .find(|p| p.tag.as_deref() == Some(tag.as_str()))
            .cloned()
            .ok_or_else(|| {
                ConnectError::new("not_found", format!("process with tag {tag} not found"))
            });
    }
    Err(ConnectError::new(
        "invalid_argument",
        "selector needs pid or tag",
    ))
}

/// `process.Process/Connect`: attach to a running process's output.
async fn connect(State(st): State<EnvdState>, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let b = read_body(&st, body).await?;
        let req = parse_envelope(&b, st.app.cfg.max_json_bytes)?;
        let p = select(&st, &req)?;
        Ok::<_, ConnectError>(attach(
            p.events.subscribe(),
            Some(json!({"event": {"start": {"pid": p.rec.pid}}})),
            keepalive(&headers),
        ))
    }
    .await;
    res.unwrap_or_else(|e| {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(envelope(END_STREAM, &json!({"error": e.json()})));
        stream_response(rx)
    })
}

async fn list(State(st): State<EnvdState>) -> Json<Value> {
    let procs: Vec<Value> = st
        .envd
        .lock()
        .values()
        .filter(|p| p.rec.running())
        .map(|p| {
            let mut v =
                json!({"config": {"cmd": p.cmd, "args": p.args, "envs": p.envs}, "pid": p.rec.pid});
            if let Some(c) = &p.cwd {
                v["config"]["cwd"] = json!(c);
            }
            if let Some(t) = &p.tag {
                v["tag"] = json!(t);
            }
            v
        })
        .collect();
    Json(json!({"processes": procs}))
}

async fn send_input(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let v = unary_json(&st, body).await?;
    let p = select(&st, &v)?;
    let input = field(&v, "input", "input")
        .ok_or_else(|| ConnectError::new("invalid_argument", "input is required"))?;
    if field(input, "pty", "pty").is_some() {
        return Err(ConnectError::new(
            "unimplemented",
            "PTY input is not supported",
        ));
    }
    let data = str_field(input, "stdin", "stdin").unwrap_or_default();
    let bytes = B64
        .decode(data.as_bytes())
        .map_err(|e| ConnectError::new("invalid_argument", format!("stdin is not base64: {e}")))?;
    p.rec.write_stdin(&bytes).await?;
    Ok(Json(json!({})))
}

async fn send_signal(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let v = unary_json(&st, body).await?;
    let p = select(&st, &v)?;
    let sig = match field(&v, "signal", "signal") {
        Some(Value::String(s)) => match s.as_str() {
            "SIGNAL_SIGKILL" => nix::sys::signal::Signal::SIGKILL,
            "SIGNAL_SIGTERM" => nix::sys::signal::Signal::SIGTERM,
            other => {
                return Err(ConnectError::new(
                    "invalid_argument",
                    format!("unknown signal {other}"),
                ));
            }
        },
        Some(Value::Number(n)) => {
            nix::sys::signal::Signal::try_from(n.as_i64().unwrap_or(0) as i32)
                .map_err(|_| ConnectError::new("invalid_argument", format!("unknown signal {n}")))?
        }
        _ => return Err(ConnectError::new("invalid_argument", "signal is required")),
    };
    p.rec.signal(sig)?;
    Ok(Json(json!({})))
}

async fn close_stdin(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let v = unary_json(&st, body).await?;
    select(&st, &v)?.rec.close_stdin().await;
    Ok(Json(json!({})))
}

// ----------------------------------------------------------------- filesystem

fn entry_json(i: &files::FileInfo) -> Value {
    let kind = match i.kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Directory => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    let bits = files::mode_from_decimal_digits(i.mode).unwrap_or(0);
    let name = std::path::Path::new(&i.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| i.path.clone());
    let mut v = json!({
        "name": name,
        "type": kind,
        "path": i.path,
        "size": i.size,
        "mode": bits,
        "permissions": permissions_string(i.kind, bits),
        "owner": i.owner,
        "group": i.group,
        "modifiedTime": i.modified_at,
    });
    if i.kind == FileKind::Symlink
        && let Ok(t) = std::fs::read_link(&i.path)
    {
        v["symlinkTarget"] = json!(t.to_string_lossy());
    }
    v
}

fn permissions_string(kind: FileKind, bits: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let b = (bits >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> CResult<T> {
    crate::blocking(f).await.map_err(ConnectError::from)
}

fn path_of(st: &EnvdState, v: &Value) -> CResult<String> {
    str_field(v, "path", "path")
        .filter(|p| !p.is_empty())
        .map(|p| crate::upload::resolve(&p, &st.app.cfg.home()))
        .ok_or_else(|| ConnectError::new("invalid_argument", "path is required"))
}

async fn fs_stat(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let path = path_of(&st, &unary_json(&st, body).await?)?;
    let info = blocking(move || files::stat(&path)).await?;
    Ok(Json(json!({"entry": entry_json(&info)})))
}

async fn fs_make_dir(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let path = path_of(&st, &unary_json(&st, body).await?)?;
    let info = blocking(move || {
        if std::path::Path::new(&path).exists() {
            return Err(RuntimeError::AlreadyExists(path));
        }
        files::make_dirs(&path, &files::Permission::default())?;
        files::stat(&path)
    })
    .await?;
    Ok(Json(json!({"entry": entry_json(&info)})))
}

async fn fs_move(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let v = unary_json(&st, body).await?;
    let src = str_field(&v, "source", "source")
        .map(|p| crate::upload::resolve(&p, &st.app.cfg.home()))
        .ok_or_else(|| ConnectError::new("invalid_argument", "source is required"))?;
    let dest = str_field(&v, "destination", "destination")
        .map(|p| crate::upload::resolve(&p, &st.app.cfg.home()))
        .ok_or_else(|| ConnectError::new("invalid_argument", "destination is required"))?;
    let info = blocking(move || {
        files::rename(&src, &dest)?;
        files::stat(&dest)
    })
    .await?;
    Ok(Json(json!({"entry": entry_json(&info)})))
}

async fn fs_list_dir(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let v = unary_json(&st, body).await?;
    let path = path_of(&st, &v)?;
    let depth = field(&v, "depth", "depth")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 64) as usize;
    let entries = blocking(move || files::list_dir(&path, depth)).await?;
    Ok(Json(
        json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>()}),
    ))
}

async fn fs_remove(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let path = path_of(&st, &unary_json(&st, body).await?)?;
    blocking(move || files::remove_any(&path, true)).await?;
    Ok(Json(json!({})))
}

/// `process.Process/StreamInput`: a client stream of envelopes — `start`
/// (selects the process), then `data` (stdin bytes) and `keepalive` — answered
/// with one empty message and the end of stream.
async fn stream_input(State(st): State<EnvdState>, body: Body) -> Response {
    use futures_util::StreamExt;
    let max = st.app.cfg.max_json_bytes;
    let result: CResult<()> = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        let mut target: Option<Arc<EnvdProcess>> = None;
        loop {
            // take every complete envelope in the buffer
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if len > max {
                    return Err(ConnectError::new(
                        "resource_exhausted",
                        format!("envelope of {len} bytes exceeds {max}"),
                    ));
                }
                if buf.len() < 5 + len {
                    break;
                }
                let frame = buf.split_to(5 + len);
                if frame[0] & END_STREAM != 0 {
                    return Ok(());
                }
                let msg = parse_envelope(&frame, max)?;
                if let Some(start) = field(&msg, "start", "start") {
                    target = Some(select(&st, start)?);
                } else if let Some(data) = field(&msg, "data", "data") {
                    let p = target.as_ref().ok_or_else(|| {
                        ConnectError::new("failed_precondition", "data before start")
                    })?;
                    let input = field(data, "input", "input").ok_or_else(|| {
                        ConnectError::new("invalid_argument", "data.input is required")
                    })?;
                    let b64 = str_field(input, "stdin", "stdin").unwrap_or_default();
                    let bytes = B64.decode(b64.as_bytes()).map_err(|e| {
                        ConnectError::new("invalid_argument", format!("stdin is not base64: {e}"))
                    })?;
                    p.rec.write_stdin(&bytes).await?;
                }
            }
            match stream.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(ConnectError::new(
                        "canceled",
                        format!("request stream: {e}"),
                    ));
                }
                None => return Ok(()),
            }
        }
    }
    .await;
    let (tx, rx) = mpsc::channel(2);
    match result {
        Ok(()) => {
            let _ = tx.try_send(envelope(0, &json!({})));
            let _ = tx.try_send(envelope(END_STREAM, &json!({})));
        }
        Err(e) => {
            let _ = tx.try_send(envelope(END_STREAM, &json!({"error": e.json()})));
        }
    }
    stream_response(rx)
}

// ------------------------------------------------------------------- watching

/// Watch `root` (recursively: every subdirectory, including new ones) with
/// inotify on a thread; `sink` gets E2B `FilesystemEvent`s until `stop` is set
/// or it returns false.
fn spawn_watch(
    root: String,
    recursive: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sink: impl Fn(Value) -> bool + Send + 'static,
) -> crate::Result<()> {
    use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify};
    let md = std::fs::metadata(&root).map_err(|e| RuntimeError::io(&root, e))?;
    if !md.is_dir() {
        return Err(RuntimeError::NotADirectory(root));
    }
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| RuntimeError::Internal(format!("inotify: {e}")))?;
    let mask = F::IN_CREATE
        | F::IN_MODIFY
        | F::IN_CLOSE_WRITE
        | F::IN_DELETE
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_ATTRIB;
    let mut dirs: HashMap<nix::sys::inotify::WatchDescriptor, std::path::PathBuf> = HashMap::new();
    let base = std::path::PathBuf::from(&root);
    fn add(
        ino: &Inotify,
        dirs: &mut HashMap<nix::sys::inotify::WatchDescriptor, std::path::PathBuf>,
        base: &std::path::Path,
        dir: &std::path::Path,
        mask: nix::sys::inotify::AddWatchFlags,
    ) {
        if let Ok(wd) = ino.add_watch(dir, mask) {
            dirs.insert(
                wd,
                dir.strip_prefix(base)
                    .map(|p| p.to_path_buf())
                    .unwrap_or_default(),
            );
        }
    }
    add(&ino, &mut dirs, &base, &base, mask);
    if recursive {
        for e in walkdir::WalkDir::new(&base)
            .min_depth(1)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_dir())
        {
            add(&ino, &mut dirs, &base, e.path(), mask);
        }
    }
    std::thread::spawn(move || {
        use std::sync::atomic::Ordering;
        while !stop.load(Ordering::Relaxed) {
            match ino.read_events() {
                Ok(events) => {
                    for ev in events {
                        let Some(name) = ev.name.as_ref().map(|n| n.to_string_lossy().into_owned())
                        else {
                            continue;
                        };
                        let rel = dirs.get(&ev.wd).cloned().unwrap_or_default().join(&name);
                        if recursive
                            && ev.mask.contains(F::IN_CREATE)
                            && ev.mask.contains(F::IN_ISDIR)
                        {
                            let full = base.join(&rel);
                            add(&ino, &mut dirs, &base, &full, mask);
                        }
                        let kind = if ev.mask.intersects(F::IN_CREATE | F::IN_MOVED_TO) {
                            "EVENT_TYPE_CREATE"
                        } else if ev.mask.intersects(F::IN_MODIFY | F::IN_CLOSE_WRITE) {
                            "EVENT_TYPE_WRITE"
                        } else if ev.mask.contains(F::IN_DELETE) {
                            "EVENT_TYPE_REMOVE"
                        } else if ev.mask.contains(F::IN_MOVED_FROM) {
                            "EVENT_TYPE_RENAME"
                        } else if ev.mask.contains(F::IN_ATTRIB) {
                            "EVENT_TYPE_CHMOD"
                        } else {
                            continue;
                        };
                        if !sink(json!({"name": rel.to_string_lossy(), "type": kind})) {
                            return;
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(25)),
                Err(_) => return,
            }
        }
    });
    Ok(())
}

fn watch_args(st: &EnvdState, v: &Value) -> CResult<(String, bool)> {
    Ok((
        path_of(st, v)?,
        field(v, "recursive", "recursive")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    ))
}

/// `filesystem.Filesystem/WatchDir`: a stream of events while the client listens.
async fn watch_dir(State(st): State<EnvdState>, headers: HeaderMap, body: Body) -> Response {
    let res = async {
        let b = read_body(&st, body).await?;
        let (path, recursive) = watch_args(&st, &parse_envelope(&b, st.app.cfg.max_json_bytes)?)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (etx, mut erx) = mpsc::channel::<Value>(256);
        spawn_watch(path, recursive, stop.clone(), move |ev| {
            etx.blocking_send(ev).is_ok()
        })?;
        let (tx, rx) = mpsc::channel::<Bytes>(32);
        let every = keepalive(&headers);
        tokio::spawn(async move {
            let _stop_on_exit = StopOnDrop(stop);
            if tx
                .send(envelope(0, &json!({"event": {"start": {}}})))
                .await
                .is_err()
            {
                return;
            }
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                let msg = tokio::select! {
                    ev = erx.recv() => match ev {
                        Some(ev) => json!({"event": {"filesystem": ev}}),
                        None => return,
                    },
                    _ = tick.tick() => json!({"event": {"keepalive": {}}}),
                };
                if tx.send(envelope(0, &msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok::<_, ConnectError>(stream_response(rx))
    }
    .await;
    res.unwrap_or_else(|e| {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(envelope(END_STREAM, &json!({"error": e.json()})));
        stream_response(rx)
    })
}

struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn create_watcher(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let (path, recursive) = watch_args(&st, &unary_json(&st, body).await?)?;
    let events = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink_events = events.clone();
    spawn_watch(path, recursive, stop.clone(), move |ev| {
        let mut q = sink_events.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_BUFFERED_EVENTS {
            q.pop_front();
        }
        q.push_back(ev);
        true
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    st.envd
        .watchers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), Watcher { events, stop });
    Ok(Json(json!({"watcherId": id})))
}

fn watcher_id(v: &Value) -> CResult<String> {
    str_field(v, "watcherId", "watcher_id")
        .ok_or_else(|| ConnectError::new("invalid_argument", "watcherId is required"))
}

async fn get_watcher_events(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let id = watcher_id(&unary_json(&st, body).await?)?;
    let g = st.envd.watchers.lock().unwrap_or_else(|p| p.into_inner());
    let w = g
        .get(&id)
        .ok_or_else(|| ConnectError::new("not_found", format!("watcher {id} not found")))?;
    let events: Vec<Value> = w
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    Ok(Json(json!({"events": events})))
}

async fn remove_watcher(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let id = watcher_id(&unary_json(&st, body).await?)?;
    st.envd
        .watchers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)
        .ok_or_else(|| ConnectError::new("not_found", format!("watcher {id} not found")))?;
    Ok(Json(json!({})))
}

// ---------------------------------------------------------------------- files

fn query(uri: &http::Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn download(State(st): State<EnvdState>, req: Request) -> Response {
    let q = query(req.uri());
    let Some(path) = q
        .get("path")
        .filter(|p| !p.is_empty())
        .map(|p| crate::upload::resolve(p, &st.app.cfg.home()))
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": 400, "message": "path is required"})),
        )
            .into_response();
    };
    let p2 = path.clone();
    match tokio::task::spawn_blocking(move || files::open_for_read(&p2)).await {
        Ok(Ok((f, size))) => {
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(f),
                64 * 1024,
            );
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            r
        }
        Ok(Err(e)) => {
            let status = match e {
                RuntimeError::FileNotFound(_) => StatusCode::NOT_FOUND,
                RuntimeError::IsADirectory(_) | RuntimeError::InvalidRequest(_) => {
                    StatusCode::BAD_REQUEST
                }
                RuntimeError::PermissionDenied(_) => StatusCode::UNAUTHORIZED,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (
                status,
                Json(json!({"code": status.as_u16(), "message": e.to_string()})),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"code": 500, "message": e.to_string()})),
        )
            .into_response(),
    }
}

/// `POST /files`: multipart (`file` parts named by full path) or octet-stream
/// (`?path=`); parents are created, targets overwritten.
async fn upload(State(st): State<EnvdState>, req: Request) -> Response {
    let q = query(req.uri());
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let gz = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        == Some("gzip");
    let limits = st.app.cfg.upload.clone();
    let res = if ct.starts_with("multipart/form-data") {
        match multer::parse_boundary(&ct) {
            Ok(boundary) => {
                crate::upload::receive_named(
                    req.into_body().into_data_stream(),
                    boundary,
                    &limits,
                    q.get("path").cloned(),
                    &st.app.cfg.home(),
                )
                .await
            }
            Err(e) => Err(RuntimeError::InvalidRequest(format!(
                "bad multipart Content-Type: {e}"
            ))),
        }
    } else if let Some(path) = q.get("path").filter(|p| !p.is_empty()) {
        crate::upload::receive_raw(
            req.into_body().into_data_stream(),
            path,
            &limits,
            gz,
            &st.app.cfg.home(),
        )
        .await
        .map(|f| vec![f])
    } else {
        Err(RuntimeError::InvalidRequest(
            "octet-stream upload needs ?path=".into(),
        ))
    };
    match res {
        Ok(done) => Json(Value::Array(
            done.iter()
                .map(|f| {
                    let name = std::path::Path::new(&f.path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    json!({"path": f.path, "name": name, "type": "file"})
                })
                .collect(),
        ))
        .into_response(),
        Err(e) => {
            let status = e.http_status();
            (
                status,
                Json(json!({"code": status.as_u16(), "message": e.to_string()})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_reject_bad_frames() {
        let e = envelope(0, &json!({"a": 1}));
        assert_eq!(&e[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(parse_envelope(&e, 1024).unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_envelope(&e[..3], 1024).unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(
            parse_envelope(&e[..8], 1024).unwrap_err().code,
            "invalid_argument",
            "truncated"
        );
        assert_eq!(
            parse_envelope(&e, 3).unwrap_err().code,
            "resource_exhausted",
            "oversize frame"
        );
        let mut z = e.to_vec();
        z[0] = 1;
        assert_eq!(parse_envelope(&z, 1024).unwrap_err().code, "unimplemented");
        let mut bad = envelope(0, &json!({})).to_vec();
        bad[5] = b'x';
        assert_eq!(
            parse_envelope(&bad, 1024).unwrap_err().code,
            "invalid_argument"
        );
    }

    #[test]
    fn events_and_permissions() {
        let v = process_event(&Output::Stdout(Bytes::from_static(b"hi\n")));
        assert_eq!(v["event"]["data"]["stdout"], "aGkK");
        let exit = crate::commands::ExitInfo {
            code: 3,
            signal: 0,
            duration: Duration::ZERO,
            timed_out: false,
            finished_at: chrono::Utc::now(),
        };
        let v = process_event(&Output::Exit(exit));
        assert_eq!(
            v["event"]["end"],
            json!({"exitCode": 3, "exited": true, "status": "exit status 3"})
        );
        assert_eq!(permissions_string(FileKind::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(permissions_string(FileKind::File, 0o640), "-rw-r-----");
    }
}
