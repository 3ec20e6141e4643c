//! `PUT /_sandpool/template-files/{secret}`: the upload link of
//! `GET /templates/{id}/files/{hash}`. The secret (one use) stands for the
//! API key, as a presigned URL's signature does; the body (the SDK's tar,
//! gzipped or not) is streamed to `<hash>.tar` in the builder's files dir.

use axum::{
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::super::Result;
use crate::{Gateway, error::ApiError};

/// The largest build-context upload taken.
const MAX_UPLOAD: u64 = 2 << 30;

pub(in crate::e2b) async fn upload(
    State(gw): State<Gateway>,
    Path(secret): Path<String>,
    body: Body,
) -> Result<Response> {
    let builder = gw.builds.builder()?;
    let Some((_, hash)) = gw.builds.uploads.lock().remove(&secret) else {
        return Err(ApiError::Forbidden("no such upload link (each is used once)".into()).into());
    };
    let dir = builder.files_dir();
    let io = |what: &str, e: std::io::Error| ApiError::Internal(format!("{what}: {e}"));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| io("creating the template files dir", e))?;
    let part = dir.join(format!("{hash}.tar.{secret}.part"));
    let mut f = tokio::fs::File::create(&part)
        .await
        .map_err(|e| io("creating the upload file", e))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    let written: std::result::Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::BodyRead(e.into()))?;
            total += chunk.len() as u64;
            if total > MAX_UPLOAD {
                return Err(ApiError::TooLarge(format!(
                    "the upload is over {MAX_UPLOAD} bytes"
                )));
            }
            f.write_all(&chunk)
                .await
                .map_err(|e| io("writing the upload", e))?;
        }
        f.flush().await.map_err(|e| io("writing the upload", e))
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e.into());
    }
    tokio::fs::rename(&part, dir.join(format!("{hash}.tar")))
        .await
        .map_err(|e| io("storing the upload", e))?;
    Ok(StatusCode::OK.into_response())
}
