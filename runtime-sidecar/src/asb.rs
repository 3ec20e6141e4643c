//! The agent-sandbox runtime API: what the `k8s-agent-sandbox` Python SDK
//! (kubernetes-sigs/agent-sandbox, its "python-runtime" shape) calls on port
//! 8888 of a sandbox, directly or through the sandbox router:
//!
//! * `POST /execute` `{command, timeout_seconds?}` → `{stdout, stderr, exit_code, timed_out}`
//! * `POST /upload` multipart, one `file` part whose filename is the destination
//! * `GET /download/{path}` → the file's bytes
//! * `GET /list/{path}` → `[{name, size, type, mod_time}]`
//! * `GET /exists/{path}` → `{path, exists}`
//! * `GET /` → health
//!
//! Relative paths resolve against the API's root directory (upstream's
//! `/app`), which is also the working directory of commands.
//!
//! The API has no token, by upstream's design: it is served only when the
//! runtime is started with `--asb-listen` (the controller does so for
//! agent-sandbox pods), never by default.

use std::{path::PathBuf, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    AppState, blocking,
    commands::{CommandSpec, Output},
    error::{Result, RuntimeError},
};

/// The port the SDK reaches this API on.
pub const ASB_PORT: u16 = 8888;
/// The root directory upstream's runtime works in.
pub const DEFAULT_ROOT: &str = "/app";
/// Output kept per stream of one `/execute` (the rest is dropped).
const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Exit code reported for a command killed at its `timeout_seconds`
/// (what the SDK reports for a timed-out command, as `timeout(1)` does).
const TIMED_OUT_EXIT_CODE: i32 = 124;

/// State of the agent-sandbox API: the runtime's state and the root directory.
#[derive(Clone)]
pub struct AsbState {
    pub app: AppState,
    pub root: PathBuf,
}

/// The agent-sandbox API routes.
pub fn router(st: AsbState) -> Router {
    Router::new()
        .route("/", get(health))
        .route("/execute", post(execute))
        .route("/upload", post(upload))
        .route("/download/{*path}", get(download))
        .route("/list", get(list_root))
        .route("/list/", get(list_root))
        .route("/list/{*path}", get(list))
        .route("/exists/{*path}", get(exists))
        .with_state(st)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "message": "Sandbox Runtime is active."}))
}

impl AsbState {
    /// `path` as the runtime sees it: absolute as given, relative under the root.
    fn resolve(&self, path: &str) -> PathBuf {
        if path.is_empty() || path == "." {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }
}

#[derive(Deserialize)]
struct ExecuteRequest {
    command: String,
    #[serde(default)]
    timeout_seconds: Option<f64>,
}

#[derive(Serialize)]
struct ExecuteResponse {
    stdout: String,
    stderr: String,
    exit_code: i32,
    timed_out: bool,
}

/// Bytes of one output stream, capped at [`MAX_OUTPUT_BYTES`].
fn append_capped(buf: &mut Vec<u8>, b: &[u8]) {
    let room = MAX_OUTPUT_BYTES.saturating_sub(buf.len());
    buf.extend_from_slice(&b[..b.len().min(room)]);
}

async fn execute(State(st): State<AsbState>, Json(req): Json<ExecuteRequest>) -> Result<Response> {
    let timeout = match req.timeout_seconds {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s.min(1e9))),
        Some(s) => {
            return Err(RuntimeError::InvalidRequest(format!(
                "timeout_seconds must be a positive number, not {s}"
            )));
        }
    };
    let spec = CommandSpec {
        command: req.command,
        cwd: Some(st.root.to_string_lossy().into_owned()),
        envs: st.app.with_sandbox_env(Default::default()),
        timeout,
        ..Default::default()
    };
    let (tx, mut rx) = mpsc::channel::<Output>(16);
    st.app.commands.start(spec, tx)?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut exit = None;
    while let Some(o) = rx.recv().await {
        match o {
            Output::Stdout(b) => append_capped(&mut out, &b),
            Output::Stderr(b) => append_capped(&mut err, &b),
            Output::Exit(e) => exit = Some(e),
        }
    }
    let exit =
        exit.ok_or_else(|| RuntimeError::Internal("command output ended unexpectedly".into()))?;
    Ok(Json(ExecuteResponse {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        exit_code: if exit.timed_out {
            TIMED_OUT_EXIT_CODE
        } else {
            exit.code
        },
        timed_out: exit.timed_out,
    })
    .into_response())
}

async fn upload(State(st): State<AsbState>, req: Request) -> Result<Response> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !ct.starts_with("multipart/form-data") {
        return Err(RuntimeError::InvalidRequest(
            "upload needs a multipart/form-data body with a 'file' part".into(),
        ));
    }
    let boundary = multer::parse_boundary(&ct)
        .map_err(|e| RuntimeError::invalid_input("bad multipart Content-Type", e))?;
    let limits = st.app.cfg.upload.clone();
    let root = st.root.to_string_lossy().into_owned();
    let files = crate::upload::receive_named(
        req.into_body().into_data_stream(),
        boundary,
        &limits,
        None,
        &crate::upload::Dest {
            home: &root,
            owner: None,
        },
    )
    .await?;
    let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    Ok(Json(serde_json::json!({
        "message": format!("File '{}' uploaded successfully.", names.join("', '")),
    }))
    .into_response())
}

async fn download(State(st): State<AsbState>, Path(path): Path<String>) -> Result<Response> {
    let full = st.resolve(&path).to_string_lossy().into_owned();
    let shown = path.clone();
    let opened = blocking(move || {
        let md = std::fs::metadata(&full).map_err(|e| RuntimeError::io(&full, e))?;
        if !md.is_file() {
            return Err(RuntimeError::FileNotFound(shown));
        }
        crate::files::open_for_read(&full)
    })
    .await;
    let (file, size) = match opened {
        Ok(f) => f,
        Err(RuntimeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::FileNotFound(path));
        }
        Err(e) => return Err(e),
    };
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    let name = std::path::Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\', '\r', '\n'], "_"))
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[derive(Serialize)]
struct Entry {
    name: String,
    size: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    /// Modification time, seconds since the epoch.
    mod_time: f64,
}

async fn list_root(st: State<AsbState>) -> Result<Response> {
    list(st, Path(String::new())).await
}

async fn list(State(st): State<AsbState>, Path(path): Path<String>) -> Result<Response> {
    let dir = st.resolve(&path);
    let entries = blocking(move || read_entries(&dir, &path)).await?;
    Ok(Json(entries).into_response())
}

/// The entries of directory `dir` (`shown` in errors), by name.
fn read_entries(dir: &std::path::Path, shown: &str) -> Result<Vec<Entry>> {
    let d = dir.to_string_lossy();
    let rd = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RuntimeError::FileNotFound(shown.to_string()),
        std::io::ErrorKind::NotADirectory => RuntimeError::NotADirectory(shown.to_string()),
        _ => RuntimeError::io(&d, e),
    })?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| RuntimeError::io(&d, e))?;
        // a symlink is listed as what it points to, as os.path.isdir would
        let Ok(md) = std::fs::metadata(ent.path()).or_else(|_| ent.metadata()) else {
            continue;
        };
        let mod_time = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        out.push(Entry {
            name: ent.file_name().to_string_lossy().into_owned(),
            size: md.len(),
            kind: if md.is_dir() { "directory" } else { "file" },
            mod_time,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn exists(State(st): State<AsbState>, Path(path): Path<String>) -> Json<serde_json::Value> {
    let full = st.resolve(&path);
    let found = tokio::fs::symlink_metadata(&full).await.is_ok();
    Json(serde_json::json!({"path": path, "exists": found}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn state() -> (AsbState, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let root = dir.path().join("app");
        std::fs::create_dir_all(&root).expect("root");
        let app = AppState::new(Config {
            data_dir: data,
            ..Config::default()
        })
        .expect("state");
        (AsbState { app, root }, dir)
    }

    #[test]
    fn relative_paths_resolve_under_the_root_and_absolute_ones_stay() {
        let (st, _d) = state();
        assert_eq!(st.resolve(""), st.root);
        assert_eq!(st.resolve("."), st.root);
        assert_eq!(st.resolve("a/b.txt"), st.root.join("a/b.txt"));
        assert_eq!(st.resolve("/etc/hosts"), PathBuf::from("/etc/hosts"));
    }

    #[test]
    fn output_is_capped() {
        let mut b = vec![0u8; MAX_OUTPUT_BYTES - 2];
        append_capped(&mut b, b"abcd");
        assert_eq!(b.len(), MAX_OUTPUT_BYTES);
        assert_eq!(&b[b.len() - 2..], b"ab");
    }

    #[test]
    fn listing_a_missing_or_plain_path_is_refused() {
        let (st, _d) = state();
        std::fs::write(st.root.join("f"), b"x").expect("write");
        assert!(matches!(
            read_entries(&st.root.join("nope"), "nope"),
            Err(RuntimeError::FileNotFound(_))
        ));
        assert!(matches!(
            read_entries(&st.root.join("f"), "f"),
            Err(RuntimeError::NotADirectory(_))
        ));
    }
}
