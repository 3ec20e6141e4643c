//! sandboxd's gRPC `process.v1.ProcessService` (port 9090), as upstream's
//! sandboxd answers it:
//!
//! * `Execute`: run `config.command` (an argv; the SDK sends `/bin/sh -c
//!   CMD`) to its end; its exit code and whole output. A deadline the client
//!   sets (`grpc-timeout`) kills the process group and answers
//!   `DEADLINE_EXCEEDED`;
//! * `Start`: the same, streamed: `init {process_id}`, `stdout`/`stderr`
//!   chunks, `exit {exit_code}`; with `pty` on a terminal of that size. The
//!   process is killed when the client goes away;
//! * `WriteStdin` (`input` or `eof`), `SendSignal` (SIGINT, SIGTERM,
//!   SIGKILL to the process group) and `ResizeTTY` on a started process.
//!
//! `config.env_vars` go over the sandbox's environment, `config.cwd` is
//! confined to the root (the default). A process killed by a signal exits
//! with -1, as upstream reports it.

use std::time::Duration;

use sandpool_proto::sandboxd_process::{
    ExecuteRequest, ExecuteResponse, ExitEvent, InitEvent, ProcessConfig, ResizeTtyRequest,
    ResizeTtyResponse, SendSignalRequest, SendSignalResponse, Signal, StartRequest, StartResponse,
    WriteStdinRequest, WriteStdinResponse, process_service_server::ProcessService,
    start_response::Event, write_stdin_request::Payload,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::SandboxdState;
use crate::{
    commands::{CommandRecord, CommandSpec, ExitInfo, Output},
    error::RuntimeError,
    pty::PtySize,
};

/// Output kept per stream of one `Execute` (the rest is dropped), as the
/// 8888 API keeps it.
const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Terminal size of a `Start` whose `pty` gives none.
const DEFAULT_PTY: PtySize = PtySize { cols: 80, rows: 24 };

/// The ProcessService over the runtime's command registry.
#[derive(Clone)]
pub struct ProcessSvc {
    st: SandboxdState,
}

impl ProcessSvc {
    pub fn new(st: SandboxdState) -> Self {
        ProcessSvc { st }
    }

    /// The command `config` asks for, refused with the field it gets wrong.
    pub fn spec(&self, config: Option<ProcessConfig>) -> Result<CommandSpec, Status> {
        let config = config.unwrap_or_default();
        if config.command.is_empty() || config.command[0].is_empty() {
            return Err(Status::invalid_argument("command is required"));
        }
        for k in config.env_vars.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Status::invalid_argument(format!(
                    "env_vars: invalid name {k:?} (non-empty, without '=')"
                )));
            }
        }
        if config.env_vars.values().any(|v| v.contains('\0')) {
            return Err(Status::invalid_argument("env_vars: a value has a NUL byte"));
        }
        let cwd = match config.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => self.st.confine(c).map_err(|e| match e {
                RuntimeError::PermissionDenied(m) => Status::permission_denied(format!("cwd: {m}")),
                other => Status::new(other.grpc_code(), format!("cwd: {other}")),
            })?,
            None => self.st.root().to_path_buf(),
        };
        Ok(CommandSpec {
            argv: config.command,
            cwd: Some(cwd.to_string_lossy().into_owned()),
            envs: self.st.app.with_sandbox_env(config.env_vars),
            ..Default::default()
        })
    }

    fn started(&self, id: i32) -> Result<std::sync::Arc<CommandRecord>, Status> {
        self.st
            .procs
            .lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("process {id} not found")))
    }
}

/// The deadline a client set on its call (`grpc-timeout`: digits and a unit).
pub fn deadline(md: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(v) = md.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument(format!("malformed grpc-timeout {v:?}"));
    let s = v.to_str().map_err(|_| bad())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(bad());
    }
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

/// The exit code upstream reports: the process's own, -1 when a signal
/// ended it.
pub fn exit_code(e: &ExitInfo) -> i32 {
    if e.signal != 0 { -1 } else { e.code }
}

fn append_capped(buf: &mut Vec<u8>, b: &[u8]) {
    let room = MAX_OUTPUT_BYTES.saturating_sub(buf.len());
    buf.extend_from_slice(&b[..b.len().min(room)]);
}

type StartStream = tokio_stream::wrappers::ReceiverStream<Result<StartResponse, Status>>;

#[tonic::async_trait]
impl ProcessService for ProcessSvc {
    type StartStream = StartStream;

    async fn execute(
        &self,
        req: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let timeout = deadline(req.metadata())?;
        let mut spec = self.spec(req.into_inner().config)?;
        spec.timeout = timeout;
        let (tx, mut rx) = mpsc::channel::<Output>(16);
        self.st.app.commands.start(spec, tx)?;
        let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
        while let Some(o) = rx.recv().await {
            match o {
                Output::Stdout(b) => append_capped(&mut out, &b),
                Output::Stderr(b) => append_capped(&mut err, &b),
                Output::Exit(e) => exit = Some(e),
            }
        }
        let exit = exit.ok_or_else(|| Status::internal("command output ended unexpectedly"))?;
        if exit.timed_out {
            return Err(Status::deadline_exceeded(
                "the command outlived the call's deadline and was killed",
            ));
        }
        Ok(Response::new(ExecuteResponse {
            exit_code: exit_code(&exit),
            stdout: out,
            stderr: err,
        }))
    }

    async fn start(
        &self,
        req: Request<StartRequest>,
    ) -> Result<Response<Self::StartStream>, Status> {
        let timeout = deadline(req.metadata())?;
        let req = req.into_inner();
        let mut spec = self.spec(req.config)?;
        spec.timeout = timeout;
        match req.pty {
            Some(p) if p.cols > 0 && p.rows > 0 => spec.pty = Some(PtySize::new(p.cols, p.rows)),
            Some(_) => spec.pty = Some(DEFAULT_PTY),
            None => spec.stdin = true,
        }
        let (tx, mut rx) = mpsc::channel::<Output>(64);
        let rec = self.st.app.commands.start(spec, tx)?;
        let id = i32::try_from(rec.pid)
            .map_err(|_| Status::internal(format!("pid {} out of range", rec.pid)))?;
        self.st.procs.lock().insert(id, rec);
        let (out_tx, out_rx) = mpsc::channel(64);
        let procs = self.st.procs.clone();
        tokio::spawn(async move {
            let event = |e| Ok(StartResponse { event: Some(e) });
            let mut alive = out_tx
                .send(event(Event::Init(InitEvent { process_id: id })))
                .await
                .is_ok();
            // a client gone: stop reading, which kills the process group
            while alive && let Some(o) = rx.recv().await {
                let e = match o {
                    Output::Stdout(b) => Event::Stdout(b.to_vec()),
                    Output::Stderr(b) => Event::Stderr(b.to_vec()),
                    Output::Exit(x) => Event::Exit(ExitEvent {
                        exit_code: exit_code(&x),
                    }),
                };
                alive = out_tx.send(event(e)).await.is_ok();
            }
            drop(rx);
            procs.lock().remove(&id);
        });
        Ok(Response::new(StartStream::new(out_rx)))
    }

    async fn write_stdin(
        &self,
        req: Request<WriteStdinRequest>,
    ) -> Result<Response<WriteStdinResponse>, Status> {
        let req = req.into_inner();
        let rec = self.started(req.process_id)?;
        match req.payload {
            // a terminal's end of input is what ^D types
            Some(Payload::Eof(())) if rec.is_pty => rec.write_pty(b"\x04").await?,
            Some(Payload::Eof(())) => rec.close_stdin().await,
            Some(Payload::Input(b)) if b.is_empty() => {}
            Some(Payload::Input(b)) if rec.is_pty => rec.write_pty(&b).await?,
            Some(Payload::Input(b)) => rec.write_stdin(&b).await?,
            None => {}
        }
        Ok(Response::new(WriteStdinResponse {}))
    }

    async fn send_signal(
        &self,
        req: Request<SendSignalRequest>,
    ) -> Result<Response<SendSignalResponse>, Status> {
        use nix::sys::signal::Signal as Sig;
        let req = req.into_inner();
        let rec = self.started(req.process_id)?;
        let sig = match Signal::try_from(req.signal) {
            Ok(Signal::Sigint) => Sig::SIGINT,
            Ok(Signal::Sigterm) => Sig::SIGTERM,
            Ok(Signal::Sigkill) => Sig::SIGKILL,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "signal: unsupported or unspecified signal {}",
                    req.signal
                )));
            }
        };
        rec.signal(sig)?;
        Ok(Response::new(SendSignalResponse {}))
    }

    async fn resize_tty(
        &self,
        req: Request<ResizeTtyRequest>,
    ) -> Result<Response<ResizeTtyResponse>, Status> {
        let req = req.into_inner();
        let rec = self.started(req.process_id)?;
        if !rec.is_pty {
            return Err(Status::failed_precondition(format!(
                "process {} has no terminal",
                req.process_id
            )));
        }
        if req.cols == 0 || req.rows == 0 {
            return Err(Status::invalid_argument("cols and rows must be positive"));
        }
        rec.resize_pty(PtySize::new(req.cols, req.rows)).await?;
        Ok(Response::new(ResizeTtyResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    #[test]
    fn deadlines_read_every_unit_and_refuse_the_malformed() {
        let md = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().expect("value"));
            m
        };
        assert_eq!(deadline(&MetadataMap::new()).expect("none"), None);
        assert_eq!(
            deadline(&md("5S")).expect("5S"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            deadline(&md("1500m")).expect("m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            deadline(&md("2M")).expect("M"),
            Some(Duration::from_secs(120))
        );
        for bad in ["5", "S", "5x", "1234567890S"] {
            assert!(deadline(&md(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_signalled_process_exits_with_minus_one() {
        let e = ExitInfo {
            code: 137,
            signal: 9,
            duration: Duration::ZERO,
            timed_out: false,
            finished_at: chrono::Utc::now(),
        };
        assert_eq!(exit_code(&e), -1);
        assert_eq!(exit_code(&ExitInfo { signal: 0, ..e }), 137);
    }
}
