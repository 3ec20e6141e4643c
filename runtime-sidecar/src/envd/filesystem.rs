//! `filesystem.Filesystem` unary RPCs: Stat, MakeDir, Move, ListDir, Remove.

use axum::{Json, body::Body, extract::State, http::HeaderMap};

use super::{
    EnvdState, blocking,
    connect::CResult,
    messages::{MoveRequest, PathRequest},
    required,
    responses::{Empty, EntryInfo, EntryResponse, ListDirResponse},
    unary,
};
use crate::{
    error::RuntimeError,
    files::{self, FileKind},
};

/// The answer of the RPCs that answer one entry (Stat, MakeDir, Move).
type EntryReply = CResult<Json<EntryResponse>>;

/// `filesystem.EntryInfo` of a stat result.
pub(super) fn entry_info(i: &files::FileInfo) -> EntryInfo {
    let path = std::path::Path::new(&i.path);
    let is_symlink = i.kind == FileKind::Symlink;
    // a symlink's `type` is its target's (a dangling one stays a symlink),
    // `is_symlink` marks the link itself
    let kind = match i.kind {
        FileKind::Symlink => match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => "FILE_TYPE_DIRECTORY",
            Ok(m) if m.is_file() => "FILE_TYPE_FILE",
            Ok(_) => "FILE_TYPE_UNSPECIFIED",
            Err(_) => "FILE_TYPE_SYMLINK",
        },
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Directory => "FILE_TYPE_DIRECTORY",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    let bits = files::mode_from_decimal_digits(i.mode).unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| i.path.clone());
    // as envd's: the link resolved to the absolute path it ends at (a link to
    // `test.txt` in /home/user/d answers /home/user/d/test.txt); a link that
    // does not resolve answers its own path
    let symlink_target = is_symlink.then(|| {
        std::fs::canonicalize(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|_| i.path.clone())
    });
    EntryInfo {
        group: i.group.clone(),
        is_symlink,
        metadata: super::metadata::read(path),
        mode: bits,
        modified_time: i.modified_at.clone(),
        name,
        owner: i.owner.clone(),
        path: i.path.clone(),
        permissions: permissions_string(i.kind, bits),
        size: i.size,
        symlink_target,
        kind,
    }
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
    let path = req.path.as_deref().filter(|p| !p.is_empty());
    resolved(st, path, "path")
}

/// The path `p` names (relative ones resolved against the home directory);
/// `what` is required.
fn resolved(st: &EnvdState, p: Option<&str>, what: &str) -> CResult<String> {
    required(p, what).map(|p| crate::upload::resolve(p, &st.app.cfg.home()))
}

/// Run `f` (a file operation ending in a stat) off the async threads and
/// answer its entry.
async fn entry_reply(
    f: impl FnOnce() -> crate::Result<files::FileInfo> + Send + 'static,
) -> EntryReply {
    let info = blocking(f).await?;
    Ok(Json(EntryResponse {
        entry: entry_info(&info),
    }))
}

pub(super) async fn fs_stat(State(st): State<EnvdState>, body: Body) -> EntryReply {
    let path = path_of(&st, &unary(&st, body).await?)?;
    entry_reply(move || files::stat(&path)).await
}

/// `MakeDir`: the directory and its missing parents; a user the call
/// switched to (a root runtime) owns the ones it made, as with E2B's envd.
pub(super) async fn fs_make_dir(
    State(st): State<EnvdState>,
    headers: HeaderMap,
    body: Body,
) -> EntryReply {
    let who = super::user::resolve(
        super::user::requested(&headers)?.as_deref(),
        nix::unistd::geteuid().as_raw(),
    )?;
    let req: PathRequest = unary(&st, body).await?;
    let path = match (&who.home, req.path.as_deref()) {
        (Some(home), Some(p)) if who.switch && !p.is_empty() => crate::upload::resolve(p, home),
        _ => path_of(&st, &req)?,
    };
    let owner = who.switch.then_some((who.uid, who.gid));
    entry_reply(move || {
        if std::path::Path::new(&path).exists() {
            return Err(RuntimeError::AlreadyExists(path));
        }
        let missing = missing_dirs(std::path::Path::new(&path));
        files::make_dirs(&path, &files::Permission::default())?;
        if let Some((uid, gid)) = owner {
            for d in &missing {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))
                    .map_err(|e| RuntimeError::io(&d.to_string_lossy(), e))?;
            }
        }
        files::stat(&path)
    })
    .await
}

/// `dir` and those of its ancestors that do not exist yet.
fn missing_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    dir.ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err())
        .map(std::path::Path::to_path_buf)
        .collect()
}

pub(super) async fn fs_move(State(st): State<EnvdState>, body: Body) -> EntryReply {
    let req: MoveRequest = unary(&st, body).await?;
    let src = resolved(&st, req.source.as_deref(), "source")?;
    let dest = resolved(&st, req.destination.as_deref(), "destination")?;
    entry_reply(move || {
        files::rename(&src, &dest)?;
        files::stat(&dest)
    })
    .await
}

pub(super) async fn fs_list_dir(
    State(st): State<EnvdState>,
    body: Body,
) -> CResult<Json<ListDirResponse>> {
    let req: PathRequest = unary(&st, body).await?;
    let path = path_of(&st, &req)?;
    let depth = req.depth.unwrap_or(1).clamp(1, 64) as usize;
    let entries = blocking(move || files::list_dir(&path, depth)).await?;
    Ok(Json(ListDirResponse {
        entries: entries.iter().map(entry_info).collect(),
    }))
}

/// `Remove`: the path and everything below it; a path that does not exist
/// is already removed (E2B answers OK, not `not_found`).
pub(super) async fn fs_remove(State(st): State<EnvdState>, body: Body) -> CResult<Json<Empty>> {
    let path = path_of(&st, &unary(&st, body).await?)?;
    blocking(move || match files::remove_any(&path, true) {
        Err(RuntimeError::FileNotFound(_)) => Ok(()),
        other => other,
    })
    .await?;
    Ok(Json(Empty {}))
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
