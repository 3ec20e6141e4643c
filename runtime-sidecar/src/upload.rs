//! Streaming `multipart/form-data` upload (`POST /files/upload`).
//!
//! The SDK sends repeated pairs: a `metadata` part (JSON `{"path","owner",
//! "group","mode"}`) followed by a `file` part, usually with chunked transfer
//! encoding. Each file is streamed to a temporary file next to its target;
//! the files are renamed into place once the whole request was received
//! ([`staging`]), so neither memory nor a target ever holds a partial upload,
//! and a refused request leaves nothing behind. Limits produce
//! `PAYLOAD_TOO_LARGE`.

mod staging;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::{
    error::{Result, RuntimeError},
    files::{self, Permission},
};
use staging::{Staged, Staging};

#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Largest metadata part.
    pub max_metadata_bytes: u64,
    /// Most files in one request.
    pub max_files: usize,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_file_bytes: 1 << 30,
            max_metadata_bytes: 64 << 10,
            max_files: 1000,
        }
    }
}

/// A request body as the multipart reader takes it: a stream of byte chunks
/// or errors.
pub trait BodyStream:
    Stream<Item = std::result::Result<Bytes, Self::Error>> + Send + 'static
{
    type Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static;
}

impl<S, E> BodyStream for S
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    type Error = E;
}

#[derive(Debug, Deserialize)]
struct FileMetadata {
    path: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    mode: Option<u32>,
}

#[derive(Debug, PartialEq)]
pub struct UploadedFile {
    pub path: String,
    pub size: u64,
}

/// Removes the temp file unless the upload was committed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn multer_error(e: multer::Error, limits: &UploadLimits) -> RuntimeError {
    match e {
        multer::Error::FieldSizeExceeded { field_name, .. } => {
            RuntimeError::PayloadTooLarge(format!(
                "multipart field {} exceeds {} bytes",
                field_name.unwrap_or_default(),
                limits.max_metadata_bytes
            ))
        }
        multer::Error::StreamSizeExceeded { .. } => {
            RuntimeError::PayloadTooLarge("upload exceeds the size limit".into())
        }
        other => RuntimeError::InvalidRequest(format!("malformed multipart body: {other}")),
    }
}

/// A multipart reader bounded by `limits`: the whole stream holds at most
/// every file at its max plus framing slack, a `metadata` part at most
/// `max_metadata_bytes`.
fn multipart<S: BodyStream>(
    stream: S,
    boundary: String,
    limits: &UploadLimits,
) -> multer::Multipart<'static> {
    let whole = limits
        .max_file_bytes
        .saturating_mul(limits.max_files as u64)
        .saturating_add(1 << 20);
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .for_field("metadata", limits.max_metadata_bytes)
            .whole_stream(whole),
    );
    multer::Multipart::with_constraints(stream, boundary, constraints)
}

/// Stream one multipart field into a temp file for `path` (see [`write_stream`]).
async fn write_field(
    field: &mut multer::Field<'static>,
    staging: &mut Staging,
    path: &str,
    perm: &Permission,
    limits: &UploadLimits,
) -> Result<()> {
    write_stream(field, staging, path, perm, limits, |e| {
        multer_error(e, limits)
    })
    .await
}

/// Write a stream of chunks to a temp file next to `path`, enforcing the
/// file size limit, and stage it for the rename into place; nothing is left
/// behind on error.
async fn write_stream<S, E>(
    chunks: &mut S,
    staging: &mut Staging,
    path: &str,
    perm: &Permission,
    limits: &UploadLimits,
    map_err: impl Fn(E) -> RuntimeError,
) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    use futures_util::StreamExt;
    files::require_path(path)?;
    let target = Path::new(path);
    if target.is_dir() {
        return Err(RuntimeError::IsADirectory(path.to_string()));
    }
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    staging.create_dir_all(dir).await?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.sandpool-upload-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut out = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| RuntimeError::io(path, e))?;
    staging.chown(&tmp)?;
    let mut size: u64 = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(&map_err)?;
        size += chunk.len() as u64;
        if size > limits.max_file_bytes {
            return Err(RuntimeError::PayloadTooLarge(format!(
                "{path} exceeds the file size limit of {} bytes",
                limits.max_file_bytes
            )));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| RuntimeError::io(path, e))?;
    }
    out.flush().await.map_err(|e| RuntimeError::io(path, e))?;
    drop(out);
    files::set_permissions(&tmp.to_string_lossy(), perm)?;
    guard.0 = None;
    staging.push(Staged {
        tmp,
        target: target.to_path_buf(),
        path: path.to_string(),
        size,
    });
    Ok(())
}

/// E2B's `POST /files` multipart: every `file` part is written to its
/// filename (a full path), or to `single_path` when given for one file.
/// Relative paths resolve against `home`.
pub async fn receive_named<S: BodyStream>(
    stream: S,
    boundary: String,
    limits: &UploadLimits,
    single_path: Option<String>,
    to: &Dest<'_>,
) -> Result<Vec<UploadedFile>> {
    let mut mp = multipart(stream, boundary, limits);
    let mut staging = Staging::owned_by(to.owner);
    while let Some(mut field) = mp.next_field().await.map_err(|e| multer_error(e, limits))? {
        if field.name() != Some("file") {
            return Err(RuntimeError::InvalidRequest(format!(
                "unexpected multipart field {:?}; expected 'file'",
                field.name().unwrap_or("")
            )));
        }
        staging.check_room(limits)?;
        let named = field
            .file_name()
            .map(str::to_string)
            .filter(|n| !n.is_empty());
        let path = match (&single_path, named) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(n)) => n,
            _ => {
                return Err(RuntimeError::InvalidRequest(
                    "file part without a filename (the destination path)".into(),
                ));
            }
        };
        let path = resolve(&path, to.home);
        let perm = Permission {
            mode: Some(644),
            ..Default::default()
        };
        write_field(&mut field, &mut staging, &path, &perm, limits).await?;
    }
    staging.commit_some().await
}

/// E2B's `POST /files` octet-stream body (optionally gzip-encoded) to `path`.
pub async fn receive_raw<S, E>(
    stream: S,
    path: &str,
    limits: &UploadLimits,
    gzip: bool,
    to: &Dest<'_>,
) -> Result<UploadedFile>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let path = resolve(path, to.home);
    let written = receive_file(stream, &path, limits, 644, to.owner).await?;
    if !gzip {
        return Ok(written);
    }
    let (p2, max) = (path.clone(), limits.max_file_bytes);
    tokio::task::spawn_blocking(move || gunzip_in_place(&p2, max))
        .await
        .map_err(|e| RuntimeError::failed("gunzip worker", e))?
}

/// Stream `stream` into the file at the absolute `path` with `mode` (its
/// octal digits written as decimal, 644 = 0o644): staged next to it and
/// renamed into place, its directories created (`owner`'s when set).
pub async fn receive_file<S, E>(
    mut stream: S,
    path: &str,
    limits: &UploadLimits,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<UploadedFile>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let perm = Permission {
        mode: Some(mode),
        ..Default::default()
    };
    let mut staging = Staging::owned_by(owner);
    write_stream(&mut stream, &mut staging, path, &perm, limits, |e| {
        RuntimeError::InvalidRequest(format!("reading upload: {e}"))
    })
    .await?;
    staging
        .commit()
        .await?
        .pop()
        .ok_or_else(|| RuntimeError::InvalidRequest("no file in upload".into()))
}

fn gunzip_in_place(path: &str, max: u64) -> Result<UploadedFile> {
    use std::{io::Read, os::unix::fs::MetadataExt};
    let src = std::fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
    let tmp = format!("{path}.sandpool-gunzip-{}", uuid::Uuid::new_v4().simple());
    let mut guard = TempGuard(Some(PathBuf::from(&tmp)));
    let mut out = std::fs::File::create(&tmp).map_err(|e| RuntimeError::io(path, e))?;
    // the decompressed file keeps the owner the upload gave the file
    let md = src.metadata().map_err(|e| RuntimeError::io(path, e))?;
    std::os::unix::fs::fchown(&out, Some(md.uid()), Some(md.gid()))
        .map_err(|e| RuntimeError::io(path, e))?;
    let mut dec = flate2::read::GzDecoder::new(src).take(max + 1);
    let n = std::io::copy(&mut dec, &mut out)
        .map_err(|e| RuntimeError::invalid_input(format!("{path}: bad gzip body"), e))?;
    if n > max {
        let _ = std::fs::remove_file(path);
        return Err(RuntimeError::PayloadTooLarge(format!(
            "{path} exceeds the file size limit of {max} bytes once decompressed"
        )));
    }
    std::fs::rename(&tmp, path).map_err(|e| RuntimeError::io(path, e))?;
    guard.0 = None;
    Ok(UploadedFile {
        path: path.to_string(),
        size: n,
    })
}

/// Whether `name` is one of the staging files uploads write before they are
/// renamed into place (`.<name>.sandpool-upload-<uuid>`,
/// `<name>.sandpool-gunzip-<uuid>`): watchers report the target instead.
pub fn is_staging_name(name: &str) -> bool {
    ["sandpool-upload-", "sandpool-gunzip-"]
        .iter()
        .any(|marker| {
            name.rsplit_once('.').is_some_and(|(stem, suffix)| {
                !stem.is_empty()
                    && suffix.strip_prefix(marker).is_some_and(|id| {
                        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
                    })
            })
        })
}

/// Where an E2B upload goes: relative paths resolve against `home`; the
/// files and the directories it creates are `owner`'s (uid, gid) when set
/// (envd creates them, chowns them to the caller's user, then writes).
pub struct Dest<'a> {
    pub home: &'a str,
    pub owner: Option<(u32, u32)>,
}

/// Relative paths are relative to the user's home, as in E2B.
pub fn resolve(path: &str, home: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", home.trim_end_matches('/'), path)
    }
}

/// Receive every metadata/file pair of a multipart body.
pub async fn receive<S: BodyStream>(
    stream: S,
    boundary: String,
    limits: &UploadLimits,
) -> Result<Vec<UploadedFile>> {
    let mut mp = multipart(stream, boundary, limits);
    let mut pending: Option<FileMetadata> = None;
    let mut staging = Staging::default();
    while let Some(mut field) = mp.next_field().await.map_err(|e| multer_error(e, limits))? {
        match field.name() {
            Some("metadata") => {
                if let Some(m) = &pending {
                    return Err(RuntimeError::InvalidRequest(format!(
                        "metadata for {} has no file part",
                        m.path
                    )));
                }
                let raw = field.bytes().await.map_err(|e| multer_error(e, limits))?;
                let meta: FileMetadata = serde_json::from_slice(&raw).map_err(|e| {
                    RuntimeError::InvalidRequest(format!("invalid metadata part: {e}"))
                })?;
                files::require_path(&meta.path)?;
                pending = Some(meta);
            }
            Some("file") => {
                let meta = pending.take().ok_or_else(|| {
                    RuntimeError::InvalidRequest(
                        "file part without a preceding metadata part".into(),
                    )
                })?;
                staging.check_room(limits)?;
                let perm = Permission {
                    owner: meta.owner.clone(),
                    group: meta.group.clone(),
                    mode: meta.mode.or(Some(644)),
                };
                write_field(&mut field, &mut staging, &meta.path, &perm, limits).await?;
            }
            other => {
                return Err(RuntimeError::InvalidRequest(format!(
                    "unexpected multipart field {:?}; expected 'metadata' and 'file'",
                    other.unwrap_or("")
                )));
            }
        }
    }
    if let Some(m) = pending {
        return Err(RuntimeError::InvalidRequest(format!(
            "metadata for {} has no file part",
            m.path
        )));
    }
    staging.commit_some().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_recognised() {
        let id = uuid::Uuid::new_v4().simple().to_string();
        assert!(is_staging_name(&format!(".a.txt.sandpool-upload-{id}")));
        assert!(is_staging_name(&format!("a.txt.sandpool-gunzip-{id}")));
        for plain in [
            "a.txt",
            ".sandpool-upload-x",
            &format!(".sandpool-upload-{id}"),
            &format!("a.sandpool-upload-{}", &id[..31]),
        ] {
            assert!(!is_staging_name(plain), "{plain}");
        }
    }
    use std::convert::Infallible;

    #[tokio::test]
    async fn an_upload_for_a_named_user_is_that_users_with_the_dirs_it_made() {
        use std::os::unix::fs::MetadataExt;
        // chown needs root: the runtime that switches users is root
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_string_lossy().into_owned();
        let before = std::fs::metadata(d.path()).unwrap().uid();
        let to = Dest {
            home: &home,
            owner: Some((4242, 4343)),
        };
        let limits = UploadLimits::default();
        let f = receive_raw(
            chunked(b"hi".to_vec()),
            "new/sub/a.txt",
            &limits,
            false,
            &to,
        )
        .await
        .unwrap();
        assert_eq!(f.path, format!("{home}/new/sub/a.txt"));
        for p in ["new", "new/sub", "new/sub/a.txt"] {
            let md = std::fs::metadata(d.path().join(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (4242, 4343), "{p}");
        }
        // what existed keeps its owner
        assert_eq!(std::fs::metadata(d.path()).unwrap().uid(), before);
        // gzip: the decompressed file too
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"zipped").unwrap();
        let z = gz.finish().unwrap();
        receive_raw(chunked(z), "z.txt", &limits, true, &to)
            .await
            .unwrap();
        let md = std::fs::metadata(d.path().join("z.txt")).unwrap();
        assert_eq!((md.uid(), md.gid()), (4242, 4343));
        // no owner: the runtime's
        let mine = Dest {
            home: &home,
            owner: None,
        };
        receive_raw(chunked(b"x".to_vec()), "mine/b.txt", &limits, false, &mine)
            .await
            .unwrap();
        let md = std::fs::metadata(d.path().join("mine/b.txt")).unwrap();
        assert_eq!(md.uid(), nix::unistd::geteuid().as_raw());
    }

    fn body(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, data) in parts {
            v.extend_from_slice(b"--B\r\n");
            v.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n")
                    .as_bytes(),
            );
            v.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
            v.extend_from_slice(data);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"--B--\r\n");
        v
    }

    /// Feed the body in small chunks, as chunked transfer encoding would.
    fn chunked(
        b: Vec<u8>,
    ) -> impl Stream<Item = std::result::Result<Bytes, Infallible>> + Send + 'static {
        let chunks: Vec<_> = b.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures_util::stream::iter(chunks)
    }

    fn meta(path: &Path, mode: u32) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({"path": path, "owner": null, "group": null, "mode": mode}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn writes_pairs_and_applies_mode() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("x/a.txt"), d.path().join("b.bin"));
        let data = body(&[
            ("metadata", &meta(&a, 600)),
            ("file", b"hello"),
            ("metadata", &meta(&b, 755)),
            ("file", &[0u8, 1, 2]),
        ]);
        let got = receive(chunked(data), "B".into(), &UploadLimits::default())
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(std::fs::read(&a).unwrap(), b"hello");
        assert_eq!(std::fs::read(&b).unwrap(), [0, 1, 2]);
        assert_eq!(files::stat(&a.to_string_lossy()).unwrap().mode, 600);
        assert_eq!(files::stat(&b.to_string_lossy()).unwrap().mode, 755);
    }

    /// Upload one file of `len` bytes as `dir/name`, files limited to 99 bytes.
    async fn upload_one(dir: &Path, name: &str, len: usize) -> Result<Vec<UploadedFile>> {
        let data = body(&[
            ("metadata", &meta(&dir.join(name), 644)),
            ("file", &vec![7u8; len]),
        ]);
        let limits = UploadLimits {
            max_file_bytes: 99,
            ..Default::default()
        };
        receive(chunked(data), "B".into(), &limits).await
    }

    #[tokio::test]
    async fn oversize_file_is_refused_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let e = upload_one(d.path(), "big", 100).await.unwrap_err();
        assert!(matches!(e, RuntimeError::PayloadTooLarge(_)), "{e}");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no target and no temp file left"
        );
    }

    #[tokio::test]
    async fn exact_limit_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(upload_one(d.path(), "fits", 99).await.unwrap()[0].size, 99);
    }

    /// Every entry under `dir`, recursively (hidden temp files included).
    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(entries(&p));
            }
            out.push(p);
        }
        out
    }

    #[tokio::test]
    async fn refused_uploads_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let limits = UploadLimits {
            max_files: 3,
            ..Default::default()
        };
        // one file too many: the first three were complete before the refusal
        let paths: Vec<_> = (0..4)
            .map(|i| d.path().join(format!("new/sub{i}/f{i}")))
            .collect();
        let metas: Vec<_> = paths.iter().map(|p| meta(p, 644)).collect();
        let mut parts: Vec<(&str, &[u8])> = Vec::new();
        for m in &metas {
            parts.extend([("metadata", m.as_slice()), ("file", b"data".as_slice())]);
        }
        let e = receive(chunked(body(&parts)), "B".into(), &limits)
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::PayloadTooLarge(_)), "{e}");
        assert_eq!(entries(d.path()), Vec::<PathBuf>::new());
        // E2B's named parts: a bad part after two good files
        let named = |p: &Path, data: &str| {
            format!(
                "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\r\n{data}\r\n",
                p.display()
            )
        };
        let raw = format!(
            "{}{}--B\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--B--\r\n",
            named(&paths[0], "a"),
            named(&paths[1], "b")
        );
        let e = receive_named(
            chunked(raw.into_bytes()),
            "B".into(),
            &limits,
            None,
            &Dest {
                home: "/",
                owner: None,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidRequest(_)), "{e}");
        assert_eq!(entries(d.path()), Vec::<PathBuf>::new());
        // an existing file is untouched by a refused upload that names it
        std::fs::write(d.path().join("keep"), "old").unwrap();
        let keep = meta(&d.path().join("keep"), 644);
        let parts: Vec<(&str, &[u8])> = vec![
            ("metadata", &keep),
            ("file", b"new"),
            ("metadata", &metas[0]),
        ];
        assert!(
            receive(chunked(body(&parts)), "B".into(), &limits)
                .await
                .is_err()
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("keep")).unwrap(),
            "old"
        );
        assert_eq!(entries(d.path()), vec![d.path().join("keep")]);
        // within the limit, everything lands
        let got = receive(chunked(body(&parts[..2])), "B".into(), &limits)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            std::fs::read_to_string(d.path().join("keep")).unwrap(),
            "new"
        );
    }

    #[tokio::test]
    async fn oversize_metadata_and_too_many_files() {
        let d = tempfile::tempdir().unwrap();
        let big_meta = vec![b' '; 200];
        let limits = UploadLimits {
            max_metadata_bytes: 100,
            ..Default::default()
        };
        let e = receive(
            chunked(body(&[("metadata", &big_meta), ("file", b"x")])),
            "B".into(),
            &limits,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RuntimeError::PayloadTooLarge(_)), "{e}");

        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let limits = UploadLimits {
            max_files: 1,
            ..Default::default()
        };
        let data = body(&[
            ("metadata", &meta(&a, 644)),
            ("file", b"1"),
            ("metadata", &meta(&b, 644)),
            ("file", b"2"),
        ]);
        let e = receive(chunked(data), "B".into(), &limits)
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::PayloadTooLarge(_)), "{e}");
    }

    #[tokio::test]
    async fn malformed_bodies_are_invalid_requests() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let cases: Vec<Vec<u8>> = vec![
            body(&[("file", b"no metadata")]),
            body(&[("metadata", b"{not json")]),
            body(&[("metadata", &meta(&a, 644))]),
            body(&[("metadata", &meta(&a, 999)), ("file", b"bad mode")]),
            body(&[("other", b"x")]),
            body(&[]),
            b"--B\r\ngarbage without end".to_vec(),
        ];
        for c in cases {
            let e = receive(chunked(c.clone()), "B".into(), &UploadLimits::default())
                .await
                .unwrap_err();
            assert!(
                matches!(e, RuntimeError::InvalidRequest(_)),
                "{e} for {:?}",
                String::from_utf8_lossy(&c)
            );
        }
        assert!(!a.exists());
        let leftovers: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn directory_target_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let data = body(&[("metadata", &meta(d.path(), 644)), ("file", b"x")]);
        let e = receive(chunked(data), "B".into(), &UploadLimits::default())
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::IsADirectory(_)), "{e}");
    }
}
