//! [`Sandbox`]: one sandbox of the caller's, with its exec, file and
//! lifecycle calls.

use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_stream::StreamExt;

use crate::{Client, Error, ExecOutput, ExecSession, Result, api, retrying};

/// Size of the chunks [`Sandbox::upload`] sends.
const CHUNK: usize = 256 << 10;

/// One sandbox.
#[derive(Clone)]
pub struct Sandbox {
    client: Client,
    info: api::Sandbox,
}

impl Sandbox {
    pub(crate) fn new(client: Client, info: api::Sandbox) -> Self {
        Sandbox { client, info }
    }

    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// What the server said about it last.
    pub fn info(&self) -> &api::Sandbox {
        &self.info
    }

    /// Run `command` with `bash -c` and collect its output.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput> {
        self.exec_with(api::ExecStart {
            command: command.into(),
            ..Default::default()
        })
        .await?
        .output()
        .await
    }

    /// Start `start` (its sandbox id is filled in) and stream it: stdin,
    /// signals, output as it comes.
    pub async fn exec_with(&self, start: api::ExecStart) -> Result<ExecSession> {
        self.exec_within(start, None).await
    }

    /// As [`Sandbox::exec_with`], the call bounded by `deadline` (the gRPC
    /// deadline: when it passes the command is killed and the stream ends
    /// with DEADLINE_EXCEEDED).
    pub async fn exec_within(
        &self,
        mut start: api::ExecStart,
        deadline: Option<std::time::Duration>,
    ) -> Result<ExecSession> {
        start.sandbox_id = self.info.id.clone();
        ExecSession::start(self.client.stub(), start, deadline).await
    }

    /// Write `bytes` to `path` (parents created).
    pub async fn write_file(&self, path: &str, bytes: &[u8]) -> Result<u64> {
        self.upload(path, std::io::Cursor::new(bytes.to_vec()))
            .await
    }

    /// Write what `src` yields to `path` (parents created), in chunks:
    /// never more than a chunk in memory.
    pub async fn upload(
        &self,
        path: &str,
        mut src: impl AsyncRead + Unpin + Send + 'static,
    ) -> Result<u64> {
        let open = api::UploadRequest {
            request: Some(api::upload_request::Request::Open(api::UploadOpen {
                sandbox_id: self.info.id.clone(),
                path: path.into(),
                create_parents: true,
                ..Default::default()
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx.send(open).await;
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = src.read(&mut buf).await.map_err(Error::Io)?;
                if n == 0 {
                    return Ok::<(), Error>(());
                }
                let data = api::upload_request::Request::Data(buf[..n].to_vec());
                let m = api::UploadRequest {
                    request: Some(data),
                };
                if tx.send(m).await.is_err() {
                    return Ok(());
                }
            }
        });
        let mut stub = self.client.stub();
        let r = stub
            .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        reader
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        Ok(r?.into_inner().size)
    }

    /// Upload local file `local` to `path`.
    pub async fn upload_file(&self, local: &Path, path: &str) -> Result<u64> {
        let f = tokio::fs::File::open(local).await.map_err(Error::Io)?;
        self.upload(path, f).await
    }

    /// Stream `path` into `dst` chunk by chunk; the bytes written.
    pub async fn download(&self, path: &str, dst: &mut (impl AsyncWrite + Unpin)) -> Result<u64> {
        let mut stub = self.client.stub();
        let req = api::DownloadRequest {
            sandbox_id: self.info.id.clone(),
            path: path.into(),
            ..Default::default()
        };
        let mut chunks = stub.download(req).await?.into_inner();
        let mut n = 0u64;
        while let Some(c) = chunks.next().await {
            let c = c?.data;
            dst.write_all(&c).await.map_err(Error::Io)?;
            n += c.len() as u64;
        }
        dst.flush().await.map_err(Error::Io)?;
        Ok(n)
    }

    /// The whole of `path`.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.download(path, &mut out).await?;
        Ok(out)
    }

    /// Expire `secs` seconds from now.
    pub async fn renew(&mut self, secs: u64) -> Result<()> {
        let mut stub = self.client.stub();
        let req = api::RenewSandboxRequest {
            id: self.info.id.clone(),
            timeout_seconds: secs,
        };
        self.info = stub.renew(req).await?.into_inner();
        Ok(())
    }

    pub async fn pause(&mut self) -> Result<()> {
        let mut stub = self.client.stub();
        let id = self.info.id.clone();
        self.info = stub
            .pause(api::PauseSandboxRequest { id })
            .await?
            .into_inner();
        Ok(())
    }

    pub async fn resume(&mut self) -> Result<()> {
        let mut stub = self.client.stub();
        let id = self.info.id.clone();
        self.info = stub
            .resume(api::ResumeSandboxRequest { id })
            .await?
            .into_inner();
        Ok(())
    }

    /// Snapshot it (a checkpointable sandbox), retried safely.
    pub async fn snapshot(&self, name: &str, leave_running: bool) -> Result<api::SandboxSnapshot> {
        let req = api::SnapshotSandboxRequest {
            id: self.info.id.clone(),
            name: name.into(),
            leave_running,
            idempotency_key: uuid::Uuid::new_v4().simple().to_string(),
        };
        retrying(|| {
            let mut s = self.client.stub();
            let req = req.clone();
            async move { s.snapshot(req).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Its state changes, until it ends.
    pub async fn watch(&self) -> Result<tonic::Streaming<api::SandboxEvent>> {
        let mut stub = self.client.stub();
        let id = self.info.id.clone();
        Ok(stub.watch(api::WatchRequest { id }).await?.into_inner())
    }

    pub async fn delete(self) -> Result<()> {
        self.client.delete(&self.info.id).await
    }
}
