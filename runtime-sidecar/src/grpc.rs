//! `sandpool.v1.Runtime` over tonic, on the same port as the HTTP API.

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt};
use sandpool_proto::v1::{self as pb, runtime_server::Runtime};
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    AppState,
    commands::{CommandSpec, Output},
    entrypoint::{EntrypointState, InjectSpec, Phase},
    error::RuntimeError,
    files,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The answer of a `Runtime` method.
type Reply<T> = Result<Response<T>, Status>;

pub struct RuntimeService {
    st: AppState,
}

impl RuntimeService {
    pub fn new(st: AppState) -> Self {
        RuntimeService { st }
    }
}

/// Checks `x-execd-access-token` metadata when a token is configured.
pub fn auth_interceptor(
    token: Option<String>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        if let Some(expected) = &token {
            let ok = req
                .metadata()
                .get(sandpool_proto::ACCESS_TOKEN_METADATA)
                .map(|v| crate::constant_time_eq(v.as_bytes(), expected.as_bytes()))
                .unwrap_or(false);
            if !ok {
                return Err(Status::unauthenticated(
                    "invalid or missing x-execd-access-token",
                ));
            }
        }
        Ok(req)
    }
}

fn file_stat(i: files::FileInfo) -> pb::FileStat {
    let kind = match i.kind {
        files::FileKind::File => pb::FileType::File,
        files::FileKind::Directory => pb::FileType::Dir,
        files::FileKind::Symlink => pb::FileType::Symlink,
        files::FileKind::Other => pb::FileType::Other,
    };
    pb::FileStat {
        path: i.path,
        r#type: kind as i32,
        size: i.size,
        mode: files::mode_from_decimal_digits(i.mode).unwrap_or(0),
        uid: i.uid,
        gid: i.gid,
        owner: i.owner,
        group: i.group,
        modified_unix_ms: i.modified_ms,
        created_unix_ms: i.created_ms,
    }
}

pub fn process_state(s: EntrypointState) -> pb::ProcessState {
    let phase = match s.phase {
        Phase::NotStarted => pb::ProcessPhase::NotStarted,
        Phase::Running => pb::ProcessPhase::Running,
        Phase::Exited => pb::ProcessPhase::Exited,
    };
    pb::ProcessState {
        phase: phase as i32,
        pid: s.pid,
        exit_code: s.exit_code,
        started_at_unix_ms: s.started_unix_ms,
        finished_at_unix_ms: s.finished_unix_ms,
        spawn_us: s.spawn_us,
        argv: s.argv,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Status> {
    crate::blocking(f).await.map_err(Status::from)
}

/// Run `f` (a file operation ending in a stat) on the blocking pool and
/// answer its stat.
async fn stat_reply(
    f: impl FnOnce() -> crate::error::Result<files::FileInfo> + Send + 'static,
) -> Reply<pb::FileStat> {
    Ok(Response::new(file_stat(blocking(f).await?)))
}

fn mode_bits(mode: u32, default: u32) -> u32 {
    if mode == 0 { default } else { mode & 0o7777 }
}

#[tonic::async_trait]
impl Runtime for RuntimeService {
    #[tracing::instrument(skip_all, name = "runtime.health")]
    async fn health(&self, _: Request<pb::HealthRequest>) -> Reply<pb::HealthResponse> {
        Ok(Response::new(pb::HealthResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: u64::try_from(self.st.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            running_commands: u32::try_from(self.st.commands.running_count()).unwrap_or(u32::MAX),
            idle_ms: self.st.idle_ms(),
            used: self.st.used.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    type ExecStream = BoxStream<pb::ExecOutput>;

    #[tracing::instrument(skip_all, name = "runtime.exec")]
    async fn exec(&self, req: Request<Streaming<pb::ExecInput>>) -> Reply<Self::ExecStream> {
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("empty Exec stream: the first message must be `start`")
        })?;
        let Some(pb::exec_input::Input::Start(start)) = first.input else {
            return Err(Status::invalid_argument(
                "the first Exec message must be `start`",
            ));
        };
        let spec = CommandSpec {
            command: start.command,
            argv: start.argv,
            cwd: (!start.cwd.is_empty()).then_some(start.cwd),
            envs: self.st.with_sandbox_env(start.env.into_iter().collect()),
            uid: start.uid,
            gid: start.gid,
            timeout: (start.timeout_ms > 0).then(|| Duration::from_millis(start.timeout_ms)),
            stdin: start.stdin,
            pty: None,
        };
        let (tx, mut rx) = mpsc::channel::<Output>(16);
        let rec = self.st.commands.start(spec, tx)?;
        // Client → process: stdin, close, signals.
        let input_rec = rec.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.input {
                    Some(pb::exec_input::Input::Stdin(b))
                        if input_rec.write_stdin(&b).await.is_err() =>
                    {
                        break;
                    }
                    Some(pb::exec_input::Input::Stdin(_)) => {}
                    Some(pb::exec_input::Input::CloseStdin(true)) => input_rec.close_stdin().await,
                    Some(pb::exec_input::Input::Signal(n)) => {
                        if let Ok(sig) = nix::sys::signal::Signal::try_from(n) {
                            let _ = input_rec.signal(sig);
                        }
                    }
                    _ => {}
                }
            }
        });
        let (otx, orx) = mpsc::channel::<Result<pb::ExecOutput, Status>>(16);
        let started = pb::ExecOutput {
            output: Some(pb::exec_output::Output::Started(pb::ExecStarted {
                id: rec.id.clone(),
                pid: rec.pid,
            })),
        };
        tokio::spawn(async move {
            if otx.send(Ok(started)).await.is_err() {
                return;
            }
            while let Some(o) = rx.recv().await {
                let (out, last) = match o {
                    Output::Stdout(b) => (pb::exec_output::Output::Stdout(b.to_vec()), false),
                    Output::Stderr(b) => (pb::exec_output::Output::Stderr(b.to_vec()), false),
                    Output::Exit(e) => (
                        pb::exec_output::Output::Exited(pb::ExecExited {
                            exit_code: e.code,
                            signal: e.signal,
                            duration_ms: u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX),
                            timed_out: e.timed_out,
                        }),
                        true,
                    ),
                };
                if otx
                    .send(Ok(pb::ExecOutput { output: Some(out) }))
                    .await
                    .is_err()
                    || last
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(orx))))
    }

    #[tracing::instrument(skip_all, name = "runtime.signal")]
    async fn signal(&self, req: Request<pb::SignalRequest>) -> Reply<pb::SignalResponse> {
        let r = req.into_inner();
        let sig = nix::sys::signal::Signal::try_from(r.signal)
            .map_err(|_| Status::invalid_argument(format!("unknown signal {}", r.signal)))?;
        self.st.commands.get(&r.id)?.signal(sig)?;
        Ok(Response::new(pb::SignalResponse {}))
    }

    #[tracing::instrument(skip_all, name = "runtime.inject")]
    async fn inject(&self, req: Request<pb::InjectRequest>) -> Reply<pb::ProcessState> {
        let r = req.into_inner();
        let env: std::collections::HashMap<String, String> = r.env.into_iter().collect();
        let spec = InjectSpec {
            argv: r.argv,
            env: env.clone(),
            cwd: (!r.cwd.is_empty()).then_some(r.cwd),
            uid: r.uid,
            gid: r.gid,
            replace: r.replace,
        };
        let s = self.st.entrypoint.inject(spec).await?;
        // the create-time env is the sandbox's: every later command sees it
        self.st.sandbox_env.lock().extend(env);
        Ok(Response::new(process_state(s)))
    }

    async fn entrypoint_status(
        &self,
        _: Request<pb::EntrypointStatusRequest>,
    ) -> Reply<pb::ProcessState> {
        Ok(Response::new(process_state(self.st.entrypoint.status())))
    }

    type ReadFileStream = BoxStream<pb::FileChunk>;

    #[tracing::instrument(skip_all, name = "runtime.read_file")]
    async fn read_file(&self, req: Request<pb::ReadFileRequest>) -> Reply<Self::ReadFileStream> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let r = req.into_inner();
        let path = r.path.clone();
        let (f, size) = blocking(move || files::open_for_read(&path)).await?;
        if r.offset > size {
            return Err(Status::out_of_range(format!(
                "offset {} beyond end of {} ({size} bytes)",
                r.offset, r.path
            )));
        }
        let mut f = tokio::fs::File::from_std(f);
        f.seek(std::io::SeekFrom::Start(r.offset))
            .await
            .map_err(|e| Status::from(RuntimeError::io(&r.path, e)))?;
        let len = if r.length == 0 {
            size - r.offset
        } else {
            r.length.min(size - r.offset)
        };
        let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 64 * 1024).map(|c| {
            c.map(|b| pb::FileChunk { data: b.to_vec() })
                .map_err(|e| Status::internal(e.to_string()))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, name = "runtime.write_file")]
    async fn write_file(
        &self,
        req: Request<Streaming<pb::WriteFileRequest>>,
    ) -> Reply<pb::FileStat> {
        let mut inbound = req.into_inner();
        let Some(pb::WriteFileRequest {
            part: Some(pb::write_file_request::Part::Open(open)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument(
                "the first WriteFile message must be `open`",
            ));
        };
        files::require_path(&open.path)?;
        let target = std::path::PathBuf::from(&open.path);
        if target.is_dir() {
            return Err(RuntimeError::IsADirectory(open.path).into());
        }
        if open.create_parents
            && let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RuntimeError::io(&parent.to_string_lossy(), e))?;
        }
        let max = self.st.cfg.upload.max_file_bytes;
        let mut opts = tokio::fs::OpenOptions::new();
        opts.create(true).write(true);
        if open.append {
            opts.append(true)
        } else {
            opts.truncate(true)
        };
        let mut file = opts
            .open(&target)
            .await
            .map_err(|e| RuntimeError::io(&open.path, e))?;
        let mut written: u64 = 0;
        while let Some(msg) = inbound.message().await? {
            if let Some(pb::write_file_request::Part::Data(d)) = msg.part {
                written += d.len() as u64;
                if written > max {
                    drop(file);
                    if !open.append {
                        let _ = tokio::fs::remove_file(&target).await;
                    }
                    return Err(RuntimeError::PayloadTooLarge(format!(
                        "{} exceeds {max} bytes",
                        open.path
                    ))
                    .into());
                }
                file.write_all(&d)
                    .await
                    .map_err(|e| RuntimeError::io(&open.path, e))?;
            } else {
                return Err(Status::invalid_argument("only `data` may follow `open`"));
            }
        }
        file.flush()
            .await
            .map_err(|e| RuntimeError::io(&open.path, e))?;
        let path = open.path.clone();
        let mode = mode_bits(open.mode, 0o644);
        stat_reply(move || {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| RuntimeError::io(&path, e))?;
            files::stat(&path)
        })
        .await
    }

    async fn stat(&self, req: Request<pb::PathRequest>) -> Reply<pb::FileStat> {
        let p = req.into_inner().path;
        stat_reply(move || files::stat(&p)).await
    }

    async fn list_dir(&self, req: Request<pb::ListDirRequest>) -> Reply<pb::ListDirResponse> {
        let r = req.into_inner();
        let depth = (r.depth as usize).clamp(1, 64);
        let entries = blocking(move || files::list_dir(&r.path, depth)).await?;
        Ok(Response::new(pb::ListDirResponse {
            entries: entries.into_iter().map(file_stat).collect(),
        }))
    }

    async fn make_dir(&self, req: Request<pb::MakeDirRequest>) -> Reply<pb::FileStat> {
        let r = req.into_inner();
        let mode = files::mode_to_decimal_digits(mode_bits(r.mode, 0o755));
        stat_reply(move || {
            files::make_dirs(
                &r.path,
                &files::Permission {
                    mode: Some(mode),
                    ..Default::default()
                },
            )?;
            files::stat(&r.path)
        })
        .await
    }

    async fn remove(&self, req: Request<pb::RemoveRequest>) -> Reply<pb::RemoveResponse> {
        let r = req.into_inner();
        blocking(move || files::remove_any(&r.path, r.recursive)).await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn r#move(&self, req: Request<pb::MoveRequest>) -> Reply<pb::FileStat> {
        let r = req.into_inner();
        stat_reply(move || {
            files::rename(&r.src, &r.dest)?;
            files::stat(&r.dest)
        })
        .await
    }
}
