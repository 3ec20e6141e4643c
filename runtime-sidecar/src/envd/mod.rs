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
//!   execd's), except on `/health`; `/files` takes the token or a signed URL
//!   ([`signing`]).
//!
//! Processes are the command registry's; their output is fanned out to every
//! stream attached to them (`Start`, then any `Connect`) and keeps being
//! drained when nobody listens, so background processes never block.
//!
//! Split by concern: [`connect`] framing and errors, [`process`]es,
//! [`filesystem`] RPCs, directory [`watch`]ing and plain-HTTP [`files`]
//! with its URL [`signing`].

mod connect;
mod files;
mod filesystem;
mod messages;
mod metadata;
mod process;
mod responses;
mod signing;
mod user;
mod watch;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{MethodRouter, get, post},
};
use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use connect::CResult;
pub use connect::{ConnectError, envelope, parse_envelope};
use files::{download, upload};
use filesystem::{fs_list_dir, fs_make_dir, fs_move, fs_remove, fs_stat};
use process::{
    EnvdProcess, close_stdin, connect, list, send_input, send_signal, start, stream_input, update,
};
use watch::{Watcher, create_watcher, get_watcher_events, remove_watcher, watch_dir};

use crate::{AppState, auth::TokenGuard};

/// The envd version this implementation answers for: process Start/Connect/
/// List/SendInput/SendSignal/CloseStdin, filesystem Stat/MakeDir/Move/ListDir/
/// Remove, /files (multipart and octet-stream), /metrics, default user,
/// file metadata (`user.e2b.*` xattrs, 0.6.2), watch events with their entry
/// (`include_entry`, 0.6.3), watching a network mount (NFS, CIFS, SMB,
/// FUSE) only with `allow_network_mounts` (0.6.4).
pub const ENVD_VERSION: &str = "0.6.4";

#[derive(Clone, Default)]
pub struct Envd {
    procs: Arc<Mutex<HashMap<u32, Arc<EnvdProcess>>>>,
    watchers: Arc<Mutex<HashMap<String, Watcher>>>,
    /// Open `WatchDir` streams (each an inotify thread while it lasts).
    watch_streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl Envd {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Arc<EnvdProcess>>> {
        self.procs.lock()
    }
}

#[derive(Clone)]
pub struct EnvdState {
    pub app: AppState,
    pub envd: Envd,
}

/// The answer to the methods of `service` sandpool does not implement.
fn unsupported(service: &'static str) -> MethodRouter<EnvdState> {
    post(move || async move {
        let message = format!("this {service} method is not supported by sandpool yet");
        ConnectError::new("unimplemented", message)
    })
}

pub fn router(st: EnvdState) -> Router {
    let routes = Router::new()
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
        .route("/process.Process/Update", post(update))
        .route("/process.Process/{method}", unsupported("process"))
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
        .route("/filesystem.Filesystem/{method}", unsupported("filesystem"))
        .layer(axum::middleware::from_fn(user::guard));
    // `X-Access-Token`, except on `/health`
    TokenGuard {
        accepted: TokenGuard::accepting(st.app.cfg.access_token.as_deref(), "x-access-token", None),
        // `/files` checks the token itself: it also takes signed URLs
        guards: |path| path != "/health" && path != "/files",
        refuse: || {
            ConnectError::new("unauthenticated", "invalid or missing X-Access-Token")
                .into_response()
        },
    }
    .apply(routes)
    .with_state(st)
}

async fn read_body(st: &EnvdState, body: Body) -> CResult<Bytes> {
    axum::body::to_bytes(body, st.app.cfg.max_json_bytes)
        .await
        .map_err(|e| ConnectError::new("resource_exhausted", format!("request body: {e}")))
}

/// The first envelope of a streaming Connect request body as `T`.
async fn streamed<T: DeserializeOwned>(st: &EnvdState, body: Body) -> CResult<T> {
    let b = read_body(st, body).await?;
    connect::parse_message(&b, st.app.cfg.max_json_bytes)
}

/// `v`, or `invalid_argument` saying that `what` is required.
fn required<T>(v: Option<T>, what: &str) -> CResult<T> {
    v.ok_or_else(|| ConnectError::new("invalid_argument", format!("{what} is required")))
}

/// A unary Connect request body as `T` (an empty body is the default message).
async fn unary<T: DeserializeOwned + Default>(st: &EnvdState, body: Body) -> CResult<T> {
    let b = read_body(st, body).await?;
    if b.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&b)
        .map_err(|e| ConnectError::new("invalid_argument", format!("bad JSON: {e}")))
}

async fn envs(State(st): State<EnvdState>) -> Json<Value> {
    let mut m: serde_json::Map<String, Value> = std::env::vars()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    for (k, v) in st.app.sandbox_env.lock().iter() {
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

/// Most default env vars `/init` keeps for processes.
pub const MAX_INIT_ENV_VARS: usize = 1024;
/// Largest total size (names and values) of those env vars.
pub const MAX_INIT_ENV_BYTES: usize = 1 << 20;

/// `POST /init`: default env vars for processes (the token is the sandbox's
/// own). The merged set is bounded; a request that would exceed it changes nothing.
async fn init(State(st): State<EnvdState>, body: Body) -> CResult<StatusCode> {
    let req: messages::InitRequest = unary(&st, body).await?;
    let mut env = st.app.sandbox_env.lock();
    let mut merged = env.clone();
    for (k, val) in req.env_vars {
        if let Value::String(s) = val {
            merged.insert(k, s);
        }
    }
    let bytes: usize = merged.iter().map(|(k, v)| k.len() + v.len()).sum();
    if merged.len() > MAX_INIT_ENV_VARS || bytes > MAX_INIT_ENV_BYTES {
        return Err(ConnectError::new(
            "resource_exhausted",
            format!(
                "env vars would be {} entries, {bytes} bytes; at most {MAX_INIT_ENV_VARS} entries and {MAX_INIT_ENV_BYTES} bytes are kept",
                merged.len()
            ),
        ));
    }
    *env = merged;
    Ok(StatusCode::NO_CONTENT)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> CResult<T> {
    crate::blocking(f).await.map_err(ConnectError::from)
}
