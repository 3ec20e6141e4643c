//! Filesystem operations shared by the HTTP (execd) and gRPC APIs.

use std::{
    fs::{self, Metadata},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// execd's `FileInfo`. `mode` is the permission bits written as an integer
/// whose decimal digits are the octal mode (0o755 -> 755).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileKind,
    pub size: u64,
    pub modified_at: String,
    pub created_at: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    #[serde(skip)]
    pub uid: u32,
    #[serde(skip)]
    pub gid: u32,
    #[serde(skip)]
    pub modified_ms: i64,
    #[serde(skip)]
    pub created_ms: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// Permission/ownership change as sent by the SDK (`owner`, `group` names, `mode` int).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Permission {
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub mode: Option<u32>,
}

/// 755 -> 0o755. Rejects digits 8/9 and values above 7777.
pub fn mode_from_decimal_digits(m: u32) -> Result<u32> {
    let s = m.to_string();
    if s.len() > 4 {
        return Err(RuntimeError::InvalidRequest(format!(
            "invalid mode {m}: at most 4 octal digits"
        )));
    }
    u32::from_str_radix(&s, 8)
        .map_err(|_| RuntimeError::InvalidRequest(format!("invalid mode {m}: not octal")))
}

/// 0o755 -> 755.
pub fn mode_to_decimal_digits(bits: u32) -> u32 {
    format!("{:o}", bits & 0o7777).parse().unwrap_or(0)
}

pub fn require_path(p: &str) -> Result<&str> {
    if p.is_empty() {
        return Err(RuntimeError::MissingQuery(
            "missing query parameter 'path'".into(),
        ));
    }
    if p.contains('\0') {
        return Err(RuntimeError::InvalidRequest(
            "path contains a NUL byte".into(),
        ));
    }
    Ok(p)
}

/// Refuse removal targets that would take out far more than one entry: an
/// empty path, the root directory (`/`, `//`, `/.`, `/..`, ...), the working
/// directory (`.`, `a/..`) and any path whose last component is `.` or `..`
/// (`/tmp/x/..` is `/tmp`). Checked before anything touches the filesystem.
pub fn require_removable(p: &str) -> Result<&str> {
    if p.trim().is_empty() {
        return Err(RuntimeError::InvalidRequest(format!(
            "refusing to remove {p:?}: the path is empty"
        )));
    }
    require_path(p)?;
    let last = p.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if matches!(last, "." | "..") {
        return Err(RuntimeError::InvalidRequest(format!(
            "refusing to remove {p:?}: the path ends in {last:?}"
        )));
    }
    // lexical depth below the root (or the working directory)
    let mut depth = 0usize;
    for c in Path::new(p).components() {
        match c {
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::ParentDir => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if depth == 0 {
        let what = if p.starts_with('/') {
            "the root directory"
        } else {
            "the working directory"
        };
        return Err(RuntimeError::InvalidRequest(format!(
            "refusing to remove {p:?}: it is {what}"
        )));
    }
    Ok(p)
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The name `lookup` finds for `id`, else the id as a number.
fn name_of(id: u32, lookup: impl FnOnce(u32) -> Option<String>) -> String {
    lookup(id).unwrap_or_else(|| id.to_string())
}

fn user_name(uid: u32) -> String {
    name_of(uid, |id| {
        Some(nix::unistd::User::from_uid(id.into()).ok()??.name)
    })
}

fn group_name(gid: u32) -> String {
    name_of(gid, |id| {
        Some(nix::unistd::Group::from_gid(id.into()).ok()??.name)
    })
}

pub fn info_from_metadata(path: &str, md: &Metadata) -> FileInfo {
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let modified_ms = md.mtime() * 1000 + md.mtime_nsec() / 1_000_000;
    let created_ms = md
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(md.ctime() * 1000 + md.ctime_nsec() / 1_000_000);
    FileInfo {
        path: path.to_string(),
        kind,
        size: md.len(),
        modified_at: rfc3339(modified_ms),
        created_at: rfc3339(created_ms),
        owner: user_name(md.uid()),
        group: group_name(md.gid()),
        mode: mode_to_decimal_digits(md.permissions().mode()),
        uid: md.uid(),
        gid: md.gid(),
        modified_ms,
        created_ms,
    }
}

/// `lstat` of a path.
pub fn stat(path: &str) -> Result<FileInfo> {
    let md = fs::symlink_metadata(require_path(path)?).map_err(|e| RuntimeError::io(path, e))?;
    Ok(info_from_metadata(path, &md))
}

/// A regular file that can be read, with its size; directories are refused.
pub fn open_for_read(path: &str) -> Result<(fs::File, u64)> {
    let md = fs::metadata(require_path(path)?).map_err(|e| RuntimeError::io(path, e))?;
    if md.is_dir() {
        return Err(RuntimeError::IsADirectory(path.to_string()));
    }
    let f = fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
    Ok((f, md.len()))
}

/// What `path` is (not following a symlink), once it is known to be removable.
fn removable_metadata(path: &str) -> Result<Metadata> {
    fs::symlink_metadata(require_removable(path)?).map_err(|e| RuntimeError::io(path, e))
}

/// Remove a file (or symlink). Directories are refused: use [`remove_dir`].
pub fn remove_file(path: &str) -> Result<()> {
    let md = removable_metadata(path)?;
    if md.is_dir() {
        return Err(RuntimeError::IsADirectory(path.to_string()));
    }
    fs::remove_file(path).map_err(|e| RuntimeError::io(path, e))
}

/// Remove a directory and everything below it.
pub fn remove_dir(path: &str) -> Result<()> {
    let md = removable_metadata(path)?;
    if !md.is_dir() {
        return Err(RuntimeError::NotADirectory(path.to_string()));
    }
    fs::remove_dir_all(path).map_err(|e| RuntimeError::io(path, e))
}

/// Remove anything; `recursive` is required for non-empty directories.
pub fn remove_any(path: &str, recursive: bool) -> Result<()> {
    let md = removable_metadata(path)?;
    if md.is_dir() {
        if recursive {
            fs::remove_dir_all(path)
        } else {
            fs::remove_dir(path)
        }
        .map_err(|e| RuntimeError::io(path, e))
    } else {
        fs::remove_file(path).map_err(|e| RuntimeError::io(path, e))
    }
}

/// chmod/chown by names or numbers.
pub fn set_permissions(path: &str, perm: &Permission) -> Result<()> {
    require_path(path)?;
    if let Some(m) = perm.mode {
        let bits = mode_from_decimal_digits(m)?;
        fs::set_permissions(path, fs::Permissions::from_mode(bits))
            .map_err(|e| RuntimeError::io(path, e))?;
    }
    let uid = id_of(perm.owner.as_deref(), resolve_user)?;
    let gid = id_of(perm.group.as_deref(), resolve_group)?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(path, uid.map(Into::into), gid.map(Into::into))
            .map_err(|e| RuntimeError::io(path, std::io::Error::from(e)))?;
    }
    Ok(())
}

/// The id a non-empty owner or group `name` stands for (none if unset).
fn id_of(name: Option<&str>, resolve: fn(&str) -> Result<u32>) -> Result<Option<u32>> {
    name.filter(|s| !s.is_empty()).map(resolve).transpose()
}

/// A numeric id as given, else the id `lookup` finds for the `kind` `name`.
fn resolve_id(name: &str, kind: &str, lookup: impl FnOnce(&str) -> Option<u32>) -> Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    lookup(name).ok_or_else(|| RuntimeError::InvalidRequest(format!("unknown {kind} {name}")))
}

pub fn resolve_user(name: &str) -> Result<u32> {
    resolve_id(name, "user", |n| {
        let user = nix::unistd::User::from_name(n).ok().flatten();
        user.map(|u| u.uid.as_raw())
    })
}

pub fn resolve_group(name: &str) -> Result<u32> {
    resolve_id(name, "group", |n| {
        let group = nix::unistd::Group::from_name(n).ok().flatten();
        group.map(|g| g.gid.as_raw())
    })
}

/// `mkdir -p` then apply permissions.
pub fn make_dirs(path: &str, perm: &Permission) -> Result<()> {
    require_path(path)?;
    if let Ok(md) = fs::symlink_metadata(path)
        && !md.is_dir()
    {
        return Err(RuntimeError::NotADirectory(path.to_string()));
    }
    fs::create_dir_all(path).map_err(|e| RuntimeError::io(path, e))?;
    let perm = Permission {
        mode: Some(perm.mode.unwrap_or(755)),
        ..perm.clone()
    };
    set_permissions(path, &perm)
}

/// Rename `src` to `dest`, creating `dest`'s parent directories; falls back to
/// copy + remove for regular files across filesystems.
pub fn rename(src: &str, dest: &str) -> Result<()> {
    require_path(src)?;
    require_path(dest)?;
    fs::symlink_metadata(src).map_err(|e| RuntimeError::io(src, e))?;
    if fs::symlink_metadata(dest).is_ok() {
        return Err(RuntimeError::AlreadyExists(format!("destination {dest}")));
    }
    if let Some(parent) = Path::new(dest)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        fs::create_dir_all(parent).map_err(|e| RuntimeError::io(&parent.to_string_lossy(), e))?;
    }
    match fs::rename(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) && Path::new(src).is_file() => {
            fs::copy(src, dest).map_err(|e| RuntimeError::io(dest, e))?;
            fs::remove_file(src).map_err(|e| RuntimeError::io(src, e))
        }
        Err(e) => Err(RuntimeError::io(src, e)),
    }
}

/// Entries below `path`, `depth` levels deep (1 = direct children).
pub fn list_dir(path: &str, depth: usize) -> Result<Vec<FileInfo>> {
    let md = fs::metadata(require_path(path)?).map_err(|e| RuntimeError::io(path, e))?;
    if !md.is_dir() {
        return Err(RuntimeError::NotADirectory(path.to_string()));
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(path)
        .min_depth(1)
        .max_depth(depth.max(1))
        .sort_by_file_name()
    {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "skipping unreadable entry");
                continue;
            }
        };
        if let Ok(md) = entry.path().symlink_metadata() {
            out.push(info_from_metadata(&entry.path().to_string_lossy(), &md));
        }
    }
    Ok(out)
}

/// Files below `root` whose name (or path relative to `root`, when the
/// pattern contains `/`) matches the glob `pattern`. At most `limit` results.
pub fn search(root: &str, pattern: &str, limit: usize) -> Result<Vec<FileInfo>> {
    let md = fs::metadata(require_path(root)?).map_err(|e| RuntimeError::io(root, e))?;
    if !md.is_dir() {
        return Err(RuntimeError::NotADirectory(root.to_string()));
    }
    let pattern = if pattern.is_empty() { "*" } else { pattern };
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| RuntimeError::InvalidRequest(format!("invalid pattern {pattern}: {e}")))?
        .compile_matcher();
    let by_path = pattern.contains('/');
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if !entry.file_type().is_file() {
            continue;
        }
        let hit = if by_path {
            entry
                .path()
                .strip_prefix(root)
                .map(|rel| glob.is_match(rel))
                .unwrap_or(false)
        } else {
            glob.is_match(entry.file_name())
        };
        if hit && let Ok(md) = entry.path().symlink_metadata() {
            out.push(info_from_metadata(&entry.path().to_string_lossy(), &md));
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Replace every occurrence of `old` by `new` in a text file no larger than
/// `max_bytes`; returns the number of replacements. The file is rewritten
/// atomically (temp file + rename) and keeps its permissions.
pub fn replace_in_file(path: &str, old: &str, new: &str, max_bytes: u64) -> Result<usize> {
    if old.is_empty() {
        return Err(RuntimeError::InvalidRequest(format!(
            "'old' must not be empty for {path}"
        )));
    }
    let (_, size) = open_for_read(path)?;
    if size > max_bytes {
        return Err(RuntimeError::PayloadTooLarge(format!(
            "{path} is {size} bytes; replace is limited to {max_bytes}"
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => {
            RuntimeError::InvalidRequest(format!("{path} is not UTF-8 text"))
        }
        _ => RuntimeError::io(path, e),
    })?;
    let count = text.matches(old).count();
    if count > 0 {
        let md = fs::metadata(path).map_err(|e| RuntimeError::io(path, e))?;
        let tmp = format!("{path}.sandpool-replace-{}", uuid::Uuid::new_v4().simple());
        let write = || -> std::io::Result<()> {
            fs::write(&tmp, text.replace(old, new))?;
            fs::set_permissions(&tmp, md.permissions())?;
            let _ = nix::unistd::chown(tmp.as_str(), Some(md.uid().into()), Some(md.gid().into()));
            fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(RuntimeError::io(path, e));
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_refuses_empty_root_and_dot_paths() {
        // The checker alone for paths that must never reach the filesystem.
        for p in [
            "", " ", "/", "//", "/.", "/..", "/../..", "/./", ".", "./", "..", "a/..", "/tmp/..",
            "/root/.", "~/..",
        ] {
            match require_removable(p) {
                Err(RuntimeError::InvalidRequest(m)) => {
                    assert!(m.contains(&format!("{p:?}")), "{m} names {p:?}");
                }
                other => panic!("{p:?} must be refused, got {other:?}"),
            }
        }
        assert_eq!(require_removable("/tmp/x").unwrap(), "/tmp/x");
        assert_eq!(require_removable("a/b/../c").unwrap(), "a/b/../c");
        assert_eq!(require_removable("~").unwrap(), "~");

        // Through every removal entry point, only on paths whose worst case
        // (no refusal) stays inside a tempdir; "/" only where a directory is
        // refused anyway.
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_string_lossy().to_string();
        fs::create_dir_all(format!("{root}/keep/sub")).unwrap();
        fs::write(format!("{root}/keep/f"), "x").unwrap();
        for p in [
            format!("{root}/keep/sub/.."),
            format!("{root}/keep/."),
            format!("{root}/keep/sub/../"),
            String::new(),
        ] {
            assert!(
                matches!(remove_any(&p, true), Err(RuntimeError::InvalidRequest(_))),
                "remove_any({p:?})"
            );
            assert!(
                matches!(remove_dir(&p), Err(RuntimeError::InvalidRequest(_))),
                "remove_dir({p:?})"
            );
        }
        assert!(matches!(
            remove_file("/"),
            Err(RuntimeError::InvalidRequest(_))
        ));
        assert!(matches!(
            remove_file(""),
            Err(RuntimeError::InvalidRequest(_))
        ));
        assert!(Path::new(&format!("{root}/keep/sub")).is_dir());
        assert!(Path::new(&format!("{root}/keep/f")).is_file());
        // an ordinary path is still removed
        remove_any(&format!("{root}/keep/sub"), true).unwrap();
        assert!(!Path::new(&format!("{root}/keep/sub")).exists());
    }

    #[test]
    fn mode_digits_roundtrip() {
        assert_eq!(mode_from_decimal_digits(755).unwrap(), 0o755);
        assert_eq!(mode_from_decimal_digits(644).unwrap(), 0o644);
        assert_eq!(mode_to_decimal_digits(0o100644), 644);
        assert!(mode_from_decimal_digits(789).is_err());
        assert!(mode_from_decimal_digits(17777).is_err());
    }

    #[test]
    fn stat_list_search_replace_move_remove() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_string_lossy().to_string();
        make_dirs(
            &format!("{root}/a/b"),
            &Permission {
                mode: Some(700),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(stat(&format!("{root}/a/b")).unwrap().mode, 700);
        fs::write(format!("{root}/a/x.txt"), "hello world hello").unwrap();
        fs::write(format!("{root}/a/b/y.txt"), "y").unwrap();
        fs::write(format!("{root}/a/b/z.log"), "z").unwrap();

        let info = stat(&format!("{root}/a/x.txt")).unwrap();
        assert_eq!((info.kind, info.size), (FileKind::File, 17));
        assert!(DateTime::parse_from_rfc3339(&info.modified_at).is_ok());

        let top: Vec<_> = list_dir(&format!("{root}/a"), 1)
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(top, vec![format!("{root}/a/b"), format!("{root}/a/x.txt")]);
        assert_eq!(list_dir(&format!("{root}/a"), 2).unwrap().len(), 4);

        let hits: Vec<_> = search(&root, "*.txt", 100)
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            hits,
            vec![format!("{root}/a/b/y.txt"), format!("{root}/a/x.txt")]
        );
        assert_eq!(search(&root, "a/b/*", 100).unwrap().len(), 2);
        assert!(matches!(
            search(&root, "[", 100),
            Err(RuntimeError::InvalidRequest(_))
        ));

        assert_eq!(
            replace_in_file(&format!("{root}/a/x.txt"), "hello", "bye", 1 << 20).unwrap(),
            2
        );
        assert_eq!(
            fs::read_to_string(format!("{root}/a/x.txt")).unwrap(),
            "bye world bye"
        );
        assert!(matches!(
            replace_in_file(&format!("{root}/a/x.txt"), "bye", "x", 4),
            Err(RuntimeError::PayloadTooLarge(_))
        ));

        rename(&format!("{root}/a/x.txt"), &format!("{root}/c/d/x.txt")).unwrap();
        assert!(Path::new(&format!("{root}/c/d/x.txt")).exists());
        assert!(matches!(
            rename(&format!("{root}/nope"), &format!("{root}/n2")),
            Err(RuntimeError::FileNotFound(_))
        ));

        assert!(matches!(
            remove_file(&format!("{root}/a")),
            Err(RuntimeError::IsADirectory(_))
        ));
        assert!(matches!(
            remove_dir(&format!("{root}/c/d/x.txt")),
            Err(RuntimeError::NotADirectory(_))
        ));
        remove_dir(&format!("{root}/a")).unwrap();
        assert!(matches!(
            stat(&format!("{root}/a")),
            Err(RuntimeError::FileNotFound(_))
        ));
        assert!(matches!(
            open_for_read(&root),
            Err(RuntimeError::IsADirectory(_))
        ));
        assert!(matches!(stat(""), Err(RuntimeError::MissingQuery(_))));
    }
}
