//! `filesystem.Filesystem` unary RPCs: Stat, MakeDir, Move, ListDir, Remove.

use axum::{Json, body::Body, extract::State};
use serde_json::{Value, json};

use super::{
    EnvdState, blocking,
    connect::{CResult, ConnectError},
    messages::{MoveRequest, PathRequest},
    unary,
};
use crate::{
    error::RuntimeError,
    files::{self, FileKind},
};

pub(super) fn entry_json(i: &files::FileInfo) -> Value {
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

pub(super) fn permissions_string(kind: FileKind, bits: u32) -> String {
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

/// The request's path, relative ones resolved against the home directory.
pub(super) fn path_of(st: &EnvdState, req: &PathRequest) -> CResult<String> {
    req.path
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| crate::upload::resolve(p, &st.app.cfg.home()))
        .ok_or_else(|| ConnectError::new("invalid_argument", "path is required"))
}

pub(super) async fn fs_stat(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let path = path_of(&st, &unary(&st, body).await?)?;
    let info = blocking(move || files::stat(&path)).await?;
    Ok(Json(json!({"entry": entry_json(&info)})))
}

pub(super) async fn fs_make_dir(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let path = path_of(&st, &unary(&st, body).await?)?;
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

pub(super) async fn fs_move(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let req: MoveRequest = unary(&st, body).await?;
    let src = req
        .source
        .map(|p| crate::upload::resolve(&p, &st.app.cfg.home()))
        .ok_or_else(|| ConnectError::new("invalid_argument", "source is required"))?;
    let dest = req
        .destination
        .map(|p| crate::upload::resolve(&p, &st.app.cfg.home()))
        .ok_or_else(|| ConnectError::new("invalid_argument", "destination is required"))?;
    let info = blocking(move || {
        files::rename(&src, &dest)?;
        files::stat(&dest)
    })
    .await?;
    Ok(Json(json!({"entry": entry_json(&info)})))
}

pub(super) async fn fs_list_dir(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let req: PathRequest = unary(&st, body).await?;
    let path = path_of(&st, &req)?;
    let depth = req.depth.unwrap_or(1).clamp(1, 64) as usize;
    let entries = blocking(move || files::list_dir(&path, depth)).await?;
    Ok(Json(
        json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>()}),
    ))
}

pub(super) async fn fs_remove(State(st): State<EnvdState>, body: Body) -> CResult<Json<Value>> {
    let path = path_of(&st, &unary(&st, body).await?)?;
    blocking(move || files::remove_any(&path, true)).await?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions() {
        assert_eq!(permissions_string(FileKind::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(permissions_string(FileKind::File, 0o640), "-rw-r-----");
    }
}
