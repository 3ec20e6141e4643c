//! User-defined file metadata (envd 0.6.2): `X-Metadata-<key>` upload
//! headers become `user.e2b.<key>` extended attributes, and `EntryInfo`
//! reports them back with the prefix stripped.

use std::{collections::BTreeMap, ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use axum::http::HeaderMap;

use crate::error::RuntimeError;

/// The xattr namespace the metadata lives in.
const PREFIX: &str = "user.e2b.";
/// The upload header prefix naming one metadata key.
const HEADER_PREFIX: &str = "x-metadata-";

pub(super) type Metadata = BTreeMap<String, String>;

/// The `X-Metadata-*` headers of an upload, keys lowercased (header names
/// already are); empty keys are skipped, a repeated key keeps its first value.
pub(super) fn from_headers(h: &HeaderMap) -> crate::Result<Metadata> {
    let mut out = Metadata::new();
    for (name, value) in h {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if key.is_empty() || out.contains_key(key) {
            continue;
        }
        let value = value
            .to_str()
            .ok()
            .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .ok_or_else(|| {
                RuntimeError::InvalidRequest(format!(
                    "invalid metadata: the value of {key:?} must be printable US-ASCII"
                ))
            })?;
        out.insert(key.to_ascii_lowercase(), value.to_string());
    }
    Ok(out)
}

fn c_path(path: &Path) -> crate::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        RuntimeError::InvalidRequest(format!("path {} holds a NUL byte", path.display()))
    })
}

fn os_error(path: &Path) -> RuntimeError {
    RuntimeError::io(&path.to_string_lossy(), std::io::Error::last_os_error())
}

/// The names of every xattr of `path` (the link itself, not its target).
fn names(path: &Path) -> crate::Result<Vec<Vec<u8>>> {
    let p = c_path(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `p` is NUL-terminated and `buf` is valid for `buf.len()` bytes.
        let n = unsafe { nix::libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n.unsigned_abs());
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(nix::libc::ERANGE) || buf.len() > 1 << 20 {
            return Err(RuntimeError::io(&path.to_string_lossy(), err));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// The value of xattr `name` of `path`.
fn value(path: &Path, name: &[u8]) -> crate::Result<Vec<u8>> {
    let p = c_path(path)?;
    let n = CString::new(name).map_err(|_| os_error(path))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: both strings are NUL-terminated, `buf` is valid for its length.
        let r = unsafe {
            nix::libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if r >= 0 {
            buf.truncate(r.unsigned_abs());
            return Ok(buf);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(nix::libc::ERANGE) || buf.len() > 1 << 20 {
            return Err(RuntimeError::io(&path.to_string_lossy(), err));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// The `user.e2b.*` metadata of `path`, prefix stripped; none where the
/// filesystem keeps no xattrs or the entry cannot be read.
pub(super) fn read(path: &Path) -> Metadata {
    let Ok(names) = names(path) else {
        return Metadata::new();
    };
    names
        .iter()
        .filter_map(|n| {
            let key = n.strip_prefix(PREFIX.as_bytes())?;
            let key = String::from_utf8(key.to_vec()).ok()?;
            let v = value(path, n).ok()?;
            Some((key, String::from_utf8_lossy(&v).into_owned()))
        })
        .collect()
}

/// Replace the whole `user.e2b.*` set of `path` with `md` (an upload
/// overwrites a file's metadata). A filesystem without xattrs keeps none:
/// the file was written, and reading back reports what is really there.
pub(super) fn write(path: &Path, md: &Metadata) -> crate::Result<()> {
    let p = c_path(path)?;
    let old = match names(path) {
        Ok(n) => n,
        Err(_) if md.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    for n in old.iter().filter(|n| n.starts_with(PREFIX.as_bytes())) {
        let n = CString::new(n.as_slice()).map_err(|_| os_error(path))?;
        // SAFETY: both strings are NUL-terminated.
        unsafe { nix::libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    }
    for (k, v) in md {
        let n = CString::new(format!("{PREFIX}{k}")).map_err(|_| os_error(path))?;
        // SAFETY: both strings are NUL-terminated, `v` is valid for its length.
        let r =
            unsafe { nix::libc::lsetxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(nix::libc::EOPNOTSUPP) {
                tracing::warn!(path = %path.display(), "no xattrs here: file metadata not kept");
                return Ok(());
            }
            return Err(RuntimeError::io(&path.to_string_lossy(), err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_lowercased_keys() {
        let mut h = HeaderMap::new();
        h.insert("X-Metadata-Owner", "Alice".parse().unwrap());
        h.insert("x-other", "x".parse().unwrap());
        let md = from_headers(&h).unwrap();
        assert_eq!(md, Metadata::from([("owner".into(), "Alice".into())]));
    }

    #[test]
    fn write_replaces_the_set_and_read_strips_the_prefix() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let first = Metadata::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        write(&f, &first).unwrap();
        assert_eq!(read(&f), first);
        let second = Metadata::from([("c".into(), "3".into())]);
        write(&f, &second).unwrap();
        assert_eq!(read(&f), second);
    }
}
