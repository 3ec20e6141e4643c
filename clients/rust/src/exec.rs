//! A running command: stdin in, output out, signals, its exit.

use tokio::sync::mpsc;

use crate::{Error, Result, Stub, api};

/// What a finished command said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// The signal that ended it (0: it exited).
    pub signal: i32,
}

/// A command started with [`crate::Sandbox::exec_with`]. Dropping it before
/// the command exits kills the command.
pub struct ExecSession {
    input: Option<mpsc::Sender<api::ExecRequest>>,
    output: tonic::Streaming<api::ExecResponse>,
    /// the command's id and pid, once started
    pub started: Option<api::ExecStarted>,
}

/// One piece of a command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(api::ExecExited),
}

fn req(r: api::exec_request::Request) -> api::ExecRequest {
    api::ExecRequest { request: Some(r) }
}

impl ExecSession {
    pub(crate) async fn start(
        mut stub: Stub,
        start: api::ExecStart,
        deadline: Option<std::time::Duration>,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.send(req(api::exec_request::Request::Start(start))).await;
        let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(d) = deadline {
            // the server kills the command when it passes (DEADLINE_EXCEEDED)
            call.set_timeout(d);
        }
        let output = stub.exec(call).await?.into_inner();
        Ok(ExecSession {
            input: Some(tx),
            output,
            started: None,
        })
    }

    async fn send(&self, r: api::exec_request::Request) -> Result<()> {
        match &self.input {
            Some(tx) => tx.send(req(r)).await.map_err(|_| Error::NoExit),
            None => Ok(()),
        }
    }

    /// Write `bytes` to the command's stdin (start it with `stdin: true`).
    pub async fn write_stdin(&self, bytes: &[u8]) -> Result<()> {
        self.send(api::exec_request::Request::Stdin(bytes.to_vec()))
            .await
    }

    /// Close the command's stdin.
    pub async fn close_stdin(&self) -> Result<()> {
        self.send(api::exec_request::Request::CloseStdin(true))
            .await
    }

    /// Send signal `sig` (e.g. 15) to the command.
    pub async fn signal(&self, sig: i32) -> Result<()> {
        self.send(api::exec_request::Request::Signal(sig)).await
    }

    /// The next piece of output; `None` once the stream ended.
    pub async fn next(&mut self) -> Result<Option<Event>> {
        use api::exec_response::Response as R;
        loop {
            let Some(m) = self.output.message().await? else {
                return Ok(None);
            };
            match m.response {
                Some(R::Started(s)) => self.started = Some(s),
                Some(R::Stdout(b)) => return Ok(Some(Event::Stdout(b))),
                Some(R::Stderr(b)) => return Ok(Some(Event::Stderr(b))),
                Some(R::Exited(e)) => {
                    self.input = None;
                    return Ok(Some(Event::Exited(e)));
                }
                None => {}
            }
        }
    }

    /// Everything until the command exits.
    pub async fn output(mut self) -> Result<ExecOutput> {
        let mut out = ExecOutput::default();
        while let Some(ev) = self.next().await? {
            match ev {
                Event::Stdout(b) => out.stdout.extend_from_slice(&b),
                Event::Stderr(b) => out.stderr.extend_from_slice(&b),
                Event::Exited(e) => {
                    out.exit_code = e.exit_code;
                    out.signal = e.signal;
                    return Ok(out);
                }
            }
        }
        Err(Error::NoExit)
    }
}
