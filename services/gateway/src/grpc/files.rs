//! The public file streams: Upload and Download relayed chunk by chunk to
//! the sandbox runtime (nothing is held whole in the gateway).

use futures_util::StreamExt;
use sandpool_proto::{public as api, v1 as pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::{
    call::{Call, deadline_exceeded, from_runtime, to_status},
    runtime::SandboxRuntime,
};
use crate::{Gateway, error::ApiError};

pub type DownloadStream = ReceiverStream<Result<api::DownloadResponse, Status>>;

pub async fn upload(
    gw: &Gateway,
    call: Call,
    mut inbound: Streaming<api::UploadRequest>,
) -> Result<api::UploadResponse, Status> {
    let first = inbound.message().await?;
    let Some(api::upload_request::Request::Open(open)) = first.and_then(|m| m.request) else {
        return Err(to_status(ApiError::Invalid(
            "the first Upload request must be `open`".into(),
        )));
    };
    let rt = SandboxRuntime::of(gw, &call, &open.sandbox_id).await?;
    let (tx, rx) = mpsc::channel::<pb::WriteFileRequest>(4);
    let _ = tx
        .send(pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Open(pb::WriteFileOpen {
                path: open.path,
                mode: open.mode,
                append: open.append,
                create_parents: open.create_parents,
            })),
        })
        .await;
    // caller → runtime one chunk at a time; a caller whose stream breaks
    // makes the whole call fail (the runtime's call is dropped with it)
    let forward = async move {
        while let Some(m) = inbound.message().await? {
            if let Some(api::upload_request::Request::Data(d)) = m.request {
                let part = Some(pb::write_file_request::Part::Data(d));
                if tx.send(pb::WriteFileRequest { part }).await.is_err() {
                    break;
                }
            }
        }
        Ok::<(), Status>(())
    };
    let mut client = rt.client.clone();
    let write = async {
        client
            .write_file(rt.request(ReceiverStream::new(rx)))
            .await
            .map_err(from_runtime)
    };
    let both = async { futures_util::future::try_join(forward, write).await };
    let (_, stat) = tokio::select! {
        r = both => r?,
        () = call.expired() => return Err(deadline_exceeded()),
    };
    let stat = stat.into_inner();
    Ok(api::UploadResponse {
        path: stat.path,
        size: stat.size,
    })
}

pub async fn download(
    gw: &Gateway,
    call: Call,
    r: api::DownloadRequest,
) -> Result<DownloadStream, Status> {
    let rt = SandboxRuntime::of(gw, &call, &r.sandbox_id).await?;
    let req = pb::ReadFileRequest {
        path: r.path,
        offset: r.offset,
        length: r.length,
    };
    let mut client = rt.client.clone();
    let mut chunks = client
        .read_file(rt.request(req))
        .await
        .map_err(from_runtime)?
        .into_inner();
    let (tx, rx) = mpsc::channel(4);
    let relay = async move {
        loop {
            let next = tokio::select! {
                n = chunks.next() => n,
                () = tx.closed() => return,
                () = call.expired() => {
                    let _ = tx.send(Err(deadline_exceeded())).await;
                    return;
                }
            };
            let item = match next {
                None => return,
                Some(Ok(c)) => Ok(api::DownloadResponse { data: c.data }),
                Some(Err(s)) => Err(from_runtime(s)),
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    };
    tokio::spawn(relay.in_current_span());
    Ok(ReceiverStream::new(rx))
}
