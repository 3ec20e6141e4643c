//! sandboxd, the runtime of kubernetes-sigs/agent-sandbox's KEP-539.2, as the
//! `k8s-agent-sandbox` Python SDK (1.0.8) calls it when given a
//! `SandboxdPodTunnelConnectionConfig` or `SandboxdInClusterConnectionConfig`:
//!
//! * a REST files API (port 8080, [`rest`]): `GET|HEAD|PUT|DELETE
//!   /v1/files/{path}`, `GET /v1/health`, `GET /v1/metadata`; errors are
//!   `{code, message}` with gRPC-style codes (`NOT_FOUND`, `PERMISSION_DENIED`,
//!   `INVALID_ARGUMENT`, `CONFLICT`, ...);
//! * the gRPC `process.v1.ProcessService` (port 9090, [`process`]): `Execute`,
//!   `Start` (streamed), `WriteStdin`, `SendSignal`, `ResizeTTY`.
//!
//! Every path, and a process's working directory, is confined to the root
//! directory (upstream's `/workspace`): `..` and symlinks may not leave it
//! (403 / `PERMISSION_DENIED`).
//!
//! Like the 8888 API ([`crate::asb`]) it has no token, by upstream's design:
//! served only when the runtime is started with `--sandboxd-listen` /
//! `--sandboxd-grpc-listen` (the controller does so where it serves 8888).

pub mod process;
pub mod rest;

use std::{
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use axum::{
    Json,
    response::{IntoResponse, Response},
};

use crate::{AppState, commands::CommandRecord, error::RuntimeError};

/// The port of the REST files API.
pub const REST_PORT: u16 = 8080;
/// The port of the gRPC ProcessService.
pub const GRPC_PORT: u16 = 9090;
/// The root directory upstream's sandboxd confines paths to.
pub const DEFAULT_ROOT: &str = "/workspace";

/// State shared by both sandboxd listeners.
#[derive(Clone)]
pub struct SandboxdState {
    pub app: AppState,
    /// The root, symlinks resolved.
    root: PathBuf,
    started: Instant,
    /// Processes begun by `Start`, by the id their `InitEvent` gave.
    procs: Arc<parking_lot::Mutex<std::collections::HashMap<i32, Arc<CommandRecord>>>>,
}

impl SandboxdState {
    /// State rooted at `root` (which must exist).
    pub fn new(app: AppState, root: &Path) -> Self {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        SandboxdState {
            app,
            root,
            started: Instant::now(),
            procs: Default::default(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `user` (relative, or absolute: both under the root) as a path inside
    /// the root, see [`confine`].
    pub fn confine(&self, user: &str) -> Result<PathBuf, RuntimeError> {
        confine(&self.root, user)
    }
}

/// `user` joined to `root` (an absolute, symlink-free directory), `.` and
/// `..` applied lexically, then its symlinks resolved: through the nearest
/// existing ancestor when the path does not exist yet, so neither `..` nor a
/// symlink (even under a directory still to be created) leads out of
/// `root`. Escaping is [`RuntimeError::PermissionDenied`].
pub fn confine(root: &Path, user: &str) -> Result<PathBuf, RuntimeError> {
    if user.contains('\0') {
        return Err(RuntimeError::InvalidRequest(format!(
            "path {user:?} contains a NUL byte"
        )));
    }
    let mut joined = PathBuf::from("/");
    for c in root.join(user.trim_start_matches('/')).components() {
        match c {
            Component::Normal(n) => joined.push(n),
            Component::ParentDir => {
                joined.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let resolved = resolve_existing(&joined)?;
    if resolved.starts_with(root) {
        Ok(resolved)
    } else {
        Err(RuntimeError::PermissionDenied(format!(
            "path {user:?} leads outside the sandbox root"
        )))
    }
}

/// `path` with the symlinks of its longest existing ancestor resolved and
/// the rest appended.
fn resolve_existing(path: &Path) -> Result<PathBuf, RuntimeError> {
    let mut base = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&base) {
            Ok(mut r) => {
                r.extend(rest.iter().rev());
                return Ok(r);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => {
                let Some(name) = base.file_name().map(|n| n.to_os_string()) else {
                    return Ok(path.to_path_buf());
                };
                rest.push(name);
                base.pop();
            }
            // a file in the middle of the path: nothing beyond it exists
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotADirectory) => {
                return Err(RuntimeError::NotADirectory(path.display().to_string()));
            }
            Err(e) => return Err(RuntimeError::io(&path.display().to_string(), e)),
        }
    }
}

/// A [`RuntimeError`] answered in sandboxd's shape: `{code, message}`, the
/// code named as gRPC names it (`NOT_FOUND`, `INVALID_ARGUMENT`, ...).
pub struct ApiError(pub RuntimeError);

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        ApiError(e)
    }
}

/// The gRPC name of `code` in upper snake case, as sandboxd's REST errors
/// carry it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = e.http_status();
        let code = match &e {
            // upstream answers a conflict (a non-empty directory) as CONFLICT
            RuntimeError::Conflict(_) => "CONFLICT",
            other => code_name(other.grpc_code()),
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "sandboxd request failed");
        }
        let body = serde_json::json!({"code": code, "message": e.to_string()});
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let r = std::fs::canonicalize(d.path()).expect("canon").join("ws");
        std::fs::create_dir_all(r.join("sub")).expect("mkdir");
        (d, r)
    }

    #[test]
    fn paths_stay_under_the_root() {
        let (_d, r) = root();
        assert_eq!(confine(&r, "").expect("root"), r);
        assert_eq!(confine(&r, "/").expect("slash"), r);
        assert_eq!(confine(&r, "a/b.txt").expect("rel"), r.join("a/b.txt"));
        assert_eq!(confine(&r, "/etc/hosts").expect("abs"), r.join("etc/hosts"));
        assert_eq!(confine(&r, "sub/../x").expect("dotdot"), r.join("x"));
        for bad in ["..", "../x", "sub/../../x", "../ws-evil/x"] {
            assert!(
                matches!(confine(&r, bad), Err(RuntimeError::PermissionDenied(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            confine(&r, "a\0b"),
            Err(RuntimeError::InvalidRequest(_))
        ));
    }

    #[test]
    fn symlinks_may_not_lead_out_even_below_missing_directories() {
        let (d, r) = root();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, r.join("link")).expect("link");
        std::os::unix::fs::symlink(r.join("sub"), r.join("inner")).expect("inner");
        for bad in ["link", "link/f", "link/new/dir/f"] {
            assert!(
                matches!(confine(&r, bad), Err(RuntimeError::PermissionDenied(_))),
                "{bad}"
            );
        }
        assert_eq!(confine(&r, "inner/f").expect("inner"), r.join("sub/f"));
    }

    #[test]
    fn error_codes_are_named_as_grpc_names_them() {
        assert_eq!(
            code_name(RuntimeError::FileNotFound("x".into()).grpc_code()),
            "NOT_FOUND"
        );
        assert_eq!(
            code_name(RuntimeError::PermissionDenied("x".into()).grpc_code()),
            "PERMISSION_DENIED"
        );
        assert_eq!(
            code_name(RuntimeError::InvalidRequest("x".into()).grpc_code()),
            "INVALID_ARGUMENT"
        );
    }
}
