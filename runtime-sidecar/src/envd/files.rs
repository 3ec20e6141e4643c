//! envd's plain-HTTP `/files`: download (`GET`) and upload (`POST`,
//! multipart or octet-stream), with the token or a signed URL.

use std::collections::HashMap;

use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    EnvdState,
    signing::{self, Operation, Refusal},
};
use crate::{error::RuntimeError, files};

pub(super) fn query(uri: &http::Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The refusal of a `/files` request that carries neither the token nor a
/// valid signature for `operation`, as E2B's envd answers it.
fn refused(
    st: &EnvdState,
    req: &Request,
    q: &HashMap<String, String>,
    operation: Operation,
) -> Option<Response> {
    let token = st.app.cfg.access_token.as_deref();
    let now = chrono::Utc::now().timestamp();
    let (status, message) = match signing::check(token, req.headers(), q, operation, now) {
        Ok(()) => return None,
        Err(Refusal::Unauthorized(m)) => (StatusCode::UNAUTHORIZED, m.to_string()),
        Err(Refusal::BadExpiration(m)) => (StatusCode::BAD_REQUEST, m),
    };
    let body = json!({"code": status.as_u16(), "message": message});
    Some((status, Json(body)).into_response())
}

pub(super) async fn download(State(st): State<EnvdState>, req: Request) -> Response {
    let q = query(req.uri());
    if let Some(r) = refused(&st, &req, &q, Operation::Read) {
        return r;
    }
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
        // streamed to its end without a Content-Length, as envd's (gzip)
        // answer to the SDK: procfs files report a size of 0 and sysfs ones
        // 4096, whatever they hold
        Ok(Ok((f, _size))) => {
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(f),
                64 * 1024,
            );
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Ok(Err(e)) => {
            let status = match e {
                RuntimeError::FileNotFound(_) => StatusCode::NOT_FOUND,
                RuntimeError::IsADirectory(_)
                | RuntimeError::InvalidRequest(_)
                | RuntimeError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
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
pub(super) async fn upload(State(st): State<EnvdState>, req: Request) -> Response {
    let q = query(req.uri());
    if let Some(r) = refused(&st, &req, &q, Operation::Write) {
        return r;
    }
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
    let md = match super::metadata::from_headers(req.headers()) {
        Ok(md) => md,
        Err(e) => return upload_error(&e),
    };
    let who = match super::user::of_request(req.headers(), req.uri()) {
        Ok(who) => who,
        Err(e) => return upload_error(&RuntimeError::InvalidRequest(e.message().to_string())),
    };
    let home = who.home.clone().unwrap_or_else(|| st.app.cfg.home());
    let to = crate::upload::Dest {
        home: &home,
        // a switched user owns what it writes, as with E2B's envd
        owner: who.switch.then_some((who.uid, who.gid)),
    };
    let limits = st.app.cfg.upload.clone();
    let res = if ct.starts_with("multipart/form-data") {
        match multer::parse_boundary(&ct) {
            Ok(boundary) => {
                crate::upload::receive_named(
                    req.into_body().into_data_stream(),
                    boundary,
                    &limits,
                    q.get("path").cloned(),
                    &to,
                )
                .await
            }
            Err(e) => Err(RuntimeError::InvalidRequest(format!(
                "bad multipart Content-Type: {e}"
            ))),
        }
    } else if let Some(path) = q.get("path").filter(|p| !p.is_empty()) {
        crate::upload::receive_raw(req.into_body().into_data_stream(), path, &limits, gz, &to)
            .await
            .map(|f| vec![f])
    } else {
        Err(RuntimeError::InvalidRequest(
            "octet-stream upload needs ?path=".into(),
        ))
    };
    let done = match res.and_then(|done| with_metadata(done, &md)) {
        Ok(done) => done,
        Err(e) => return upload_error(&e),
    };
    Json(Value::Array(
        done.iter()
            .map(|(f, md)| {
                let name = std::path::Path::new(&f.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut v = json!({"path": f.path, "name": name, "type": "file"});
                if !md.is_empty() {
                    v["metadata"] = json!(md);
                }
                v
            })
            .collect(),
    ))
    .into_response()
}

/// Give each uploaded file the upload's metadata (replacing what it had)
/// and pair it with the metadata it now really has.
fn with_metadata(
    done: Vec<crate::upload::UploadedFile>,
    md: &super::metadata::Metadata,
) -> crate::Result<Vec<(crate::upload::UploadedFile, super::metadata::Metadata)>> {
    done.into_iter()
        .map(|f| {
            let p = std::path::Path::new(&f.path);
            super::metadata::write(p, md)?;
            let kept = super::metadata::read(p);
            Ok((f, kept))
        })
        .collect()
}

fn upload_error(e: &RuntimeError) -> Response {
    let status = e.http_status();
    (
        status,
        Json(json!({"code": status.as_u16(), "message": e.to_string()})),
    )
        .into_response()
}
