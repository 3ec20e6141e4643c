//! sandboxd's REST files API (port 8080), as upstream's sandboxd answers it:
//!
//! * `GET /v1/files/{path}`: a file's bytes (`application/octet-stream`,
//!   `Range` honoured), or a directory's `{path, entries: [{name, size, type,
//!   modified_at, mode}]}`; `HEAD` the same without a body (the SDK's
//!   `exists`: 200 or 404);
//! * `PUT /v1/files/{path}?mode=0644`: the raw body (or a multipart body's
//!   `file` part) written atomically, its directories created; 204;
//! * `DELETE /v1/files/{path}?recursive=true`: 204; a non-empty directory
//!   without `recursive` is 409; the root itself is emptied, not removed;
//! * `GET /v1/health` → `{status, uptime_seconds}`, `GET /v1/metadata` →
//!   `{env}` (the `SANDBOX_` variables whose names do not look secret).
//!
//! The SDK sends a path as one segment (`/` as `%2F`). A query parameter
//! other than those above is refused (400) rather than ignored.

use std::path::Path as FsPath;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ApiError, SandboxdState};
use crate::{blocking, error::RuntimeError};

type ApiResult<T> = Result<T, ApiError>;

/// The REST routes.
pub fn router(st: SandboxdState) -> Router {
    let files = || {
        get(get_file)
            .put(put_file)
            .delete(delete_file)
            .with_state(st.clone())
    };
    let root = || {
        get(get_root)
            .put(put_root)
            .delete(delete_root)
            .with_state(st.clone())
    };
    Router::new()
        .route("/v1/files", root())
        .route("/v1/files/", root())
        .route("/v1/files/{*path}", files())
        .route("/v1/health", get(health).with_state(st.clone()))
        .route("/v1/metadata", get(metadata).with_state(st))
        .fallback(|| async {
            ApiError(RuntimeError::FileNotFound(
                "no such sandboxd endpoint".into(),
            ))
        })
}

/// The query's parameters, refusing any not in `allowed`.
fn query(raw: Option<String>, allowed: &[&str]) -> ApiResult<Vec<(String, String)>> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(RuntimeError::InvalidRequest(format!(
            "query parameter {k:?} is not supported here (supported: {allowed:?})"
        ))
        .into());
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

async fn health(State(st): State<SandboxdState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "uptime_seconds": st.started.elapsed().as_secs(),
    }))
}

/// Variables served on `/v1/metadata`: upstream's prefix.
const METADATA_PREFIX: &str = "SANDBOX_";
/// Name parts that keep a variable off `/v1/metadata` (it may be a secret).
const SENSITIVE: [&str; 5] = ["TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "KEY"];

/// The variables `/v1/metadata` shows of `env`.
pub fn metadata_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> std::collections::BTreeMap<String, String> {
    env.into_iter()
        .filter(|(k, _)| {
            let up = k.to_ascii_uppercase();
            k.starts_with(METADATA_PREFIX) && !SENSITIVE.iter().any(|s| up.contains(s))
        })
        .collect()
}

async fn metadata(State(st): State<SandboxdState>) -> Json<serde_json::Value> {
    let mut env: std::collections::HashMap<String, String> = std::env::vars().collect();
    env.extend(st.app.with_sandbox_env(Default::default()));
    Json(serde_json::json!({ "env": metadata_env(env) }))
}

async fn get_root(
    st: State<SandboxdState>,
    q: RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    get_file(st, Path(String::new()), q, headers).await
}

async fn get_file(
    State(st): State<SandboxdState>,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    query(q, &[])?;
    let target = st.confine(&path)?;
    let shown = path.clone();
    let t2 = target.clone();
    let md =
        blocking(move || std::fs::metadata(&t2).map_err(|e| RuntimeError::io(&shown, e))).await?;
    if md.is_dir() {
        let entries = blocking(move || list(&target)).await?;
        let shown = format!("/{}", path.trim_start_matches('/'));
        return Ok(Json(serde_json::json!({"path": shown, "entries": entries})).into_response());
    }
    serve_file(&target, &path, &md, &headers).await
}

/// One entry of a listing, as upstream writes it.
#[derive(serde::Serialize, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub modified_at: String,
    pub mode: String,
}

/// The entries of `dir` by name: a symlink as what it points to, a broken
/// one left out (the wire knows only `file` and `directory`).
pub fn list(dir: &FsPath) -> Result<Vec<Entry>, RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.display().to_string();
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(|e| RuntimeError::io(&d, e))? {
        let ent = ent.map_err(|e| RuntimeError::io(&d, e))?;
        let Ok(md) = std::fs::metadata(ent.path()) else {
            continue;
        };
        let modified: chrono::DateTime<chrono::Utc> = md
            .modified()
            .map(Into::into)
            .unwrap_or(chrono::DateTime::UNIX_EPOCH);
        out.push(Entry {
            name: ent.file_name().to_string_lossy().into_owned(),
            size: md.len(),
            kind: if md.is_dir() { "directory" } else { "file" },
            modified_at: modified.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            mode: format!("{:04o}", md.permissions().mode() & 0o777),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A file's bytes, or the one byte range its `Range` header asks for.
async fn serve_file(
    target: &FsPath,
    shown: &str,
    md: &std::fs::Metadata,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let size = md.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match range {
        Some(r) => match crate::http_api::parse_range(r, size) {
            Ok((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
            Err(err @ RuntimeError::RangeNotSatisfiable(_)) => {
                let mut resp = ApiError(err).into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
            Err(e) => return Err(e.into()),
        },
        None => (StatusCode::OK, 0, size),
    };
    let mut file = tokio::fs::File::open(target)
        .await
        .map_err(|e| RuntimeError::io(shown, e))?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| RuntimeError::io(shown, e))?;
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
    if let Ok(t) = md.modified() {
        let t: chrono::DateTime<chrono::Utc> = t.into();
        if let Ok(v) = HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {}-{}/{}", start, start + len - 1, size);
        if let Ok(v) = HeaderValue::from_str(&cr) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// `?mode=` as the octal digits written in decimal (`0755` → 755).
pub fn parse_mode(m: &str) -> Result<u32, RuntimeError> {
    let bad = || RuntimeError::InvalidRequest(format!("mode {m:?} must match ^0[0-7]{{3}}$"));
    let digits = m.strip_prefix('0').ok_or_else(bad)?;
    if digits.len() != 3 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    digits.parse().map_err(|_| bad())
}

async fn put_root(st: State<SandboxdState>, q: RawQuery, req: Request) -> ApiResult<StatusCode> {
    put_file(st, Path(String::new()), q, req).await
}

async fn put_file(
    State(st): State<SandboxdState>,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult<StatusCode> {
    let q = query(q, &["mode"])?;
    let mode = param(&q, "mode")
        .map(parse_mode)
        .transpose()?
        .unwrap_or(644);
    let target = st.confine(&path)?;
    if target.is_dir() {
        return Err(RuntimeError::InvalidRequest(format!("{path:?} is a directory")).into());
    }
    let full = target.to_string_lossy().into_owned();
    let limits = st.app.cfg.upload.clone();
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().into_data_stream();
    if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(&ct)
            .map_err(|e| RuntimeError::invalid_input("bad multipart Content-Type", e))?;
        let mut mp = multer::Multipart::new(body, boundary);
        loop {
            let field = mp
                .next_field()
                .await
                .map_err(|e| RuntimeError::invalid_input("invalid multipart body", e))?
                .ok_or_else(|| {
                    RuntimeError::InvalidRequest(
                        "multipart body is missing the required \"file\" part".into(),
                    )
                })?;
            if field.name() == Some("file") {
                crate::upload::receive_file(field, &full, &limits, mode, None).await?;
                break;
            }
        }
    } else {
        crate::upload::receive_file(body, &full, &limits, mode, None).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Go's `strconv.ParseBool`, what upstream reads `recursive` with.
pub fn parse_bool(v: &str) -> Result<bool, RuntimeError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(RuntimeError::InvalidRequest(format!(
            "recursive {v:?} must be a boolean"
        ))),
    }
}

async fn delete_root(st: State<SandboxdState>, q: RawQuery) -> ApiResult<StatusCode> {
    delete_file(st, Path(String::new()), q).await
}

async fn delete_file(
    State(st): State<SandboxdState>,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let q = query(q, &["recursive"])?;
    let recursive = param(&q, "recursive")
        .map(parse_bool)
        .transpose()?
        .unwrap_or(false);
    let target = st.confine(&path)?;
    let root = st.root().to_path_buf();
    blocking(move || remove(&root, &target, &path, recursive)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove `target` (`shown` in errors): a file, an empty directory, or with
/// `recursive` a whole tree; `root` itself is emptied instead.
pub fn remove(
    root: &FsPath,
    target: &FsPath,
    shown: &str,
    recursive: bool,
) -> Result<(), RuntimeError> {
    let io = |e| RuntimeError::io(shown, e);
    let md = std::fs::symlink_metadata(target).map_err(io)?;
    let not_empty = || {
        RuntimeError::Conflict("directory is not empty; pass recursive=true to remove it".into())
    };
    if target == root {
        if !recursive {
            return Err(not_empty());
        }
        for ent in std::fs::read_dir(root).map_err(io)? {
            let p = ent.map_err(io)?.path();
            let r = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
            r.map_err(io)?;
        }
        return Ok(());
    }
    let r = match (md.is_dir(), recursive) {
        (true, true) => std::fs::remove_dir_all(target),
        (true, false) => std::fs::remove_dir(target),
        (false, _) => std::fs::remove_file(target),
    };
    r.map_err(|e| match e.kind() {
        std::io::ErrorKind::DirectoryNotEmpty => not_empty(),
        _ => io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_four_octal_digits_led_by_zero() {
        assert_eq!(parse_mode("0644").expect("0644"), 644);
        assert_eq!(parse_mode("0755").expect("0755"), 755);
        for bad in ["644", "0648", "00644", "0x64", "", "07777"] {
            let e = parse_mode(bad).expect_err(bad);
            assert!(e.to_string().contains("mode"), "{e}");
        }
    }

    #[test]
    fn recursive_reads_as_go_reads_a_boolean() {
        assert!(parse_bool("True").expect("True"));
        assert!(!parse_bool("0").expect("0"));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn metadata_shows_the_prefixed_variables_without_secrets() {
        let env = [
            ("SANDBOX_NAME", "a"),
            ("SANDBOX_API_TOKEN", "x"),
            ("SANDBOX_db_password", "x"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let shown = metadata_env(env);
        assert_eq!(shown.keys().collect::<Vec<_>>(), ["SANDBOX_NAME"]);
    }

    #[test]
    fn unknown_query_parameters_are_refused_by_name() {
        let Err(ApiError(e)) = query(Some("mode=0644&owner=me".into()), &["mode"]) else {
            panic!("accepted");
        };
        assert!(e.to_string().contains("owner"), "{e}");
        assert!(query(Some("mode=0644".into()), &["mode"]).is_ok());
    }

    #[test]
    fn the_root_is_emptied_and_a_full_directory_needs_recursive() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().to_path_buf();
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/f"), b"x").expect("write");
        let e = remove(&root, &root.join("a"), "a", false).expect_err("not empty");
        assert!(matches!(e, RuntimeError::Conflict(_)), "{e}");
        assert!(matches!(
            remove(&root, &root, "", false),
            Err(RuntimeError::Conflict(_))
        ));
        remove(&root, &root, "", true).expect("empty the root");
        assert!(root.is_dir());
        assert_eq!(std::fs::read_dir(&root).expect("rd").count(), 0);
    }
}
