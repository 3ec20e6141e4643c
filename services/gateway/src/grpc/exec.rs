//! The public Exec: the caller's stream relayed to the sandbox runtime's
//! Exec and back. A caller that goes away, or whose deadline passes,
//! before the command exits has the command killed (the runtime keeps a
//! command whose client left running).

use sandpool_proto::{public as api, v1 as pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::{
    call::{Call, deadline_exceeded, from_runtime},
    runtime::SandboxRuntime,
};
use crate::{Gateway, error::ApiError};

pub type ExecStream = ReceiverStream<Result<api::ExecResponse, Status>>;

fn start_of(s: api::ExecStart) -> pb::ExecInput {
    pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(pb::ExecStart {
            command: s.command,
            argv: s.argv,
            cwd: s.cwd,
            env: s.env,
            uid: None,
            gid: None,
            timeout_ms: s.timeout_ms,
            stdin: s.stdin,
        })),
    }
}

fn input_of(r: api::ExecRequest) -> Option<pb::ExecInput> {
    use api::exec_request::Request as R;
    use pb::exec_input::Input as I;
    let input = match r.request? {
        R::Start(_) => return None,
        R::Stdin(b) => I::Stdin(b),
        R::CloseStdin(c) => I::CloseStdin(c),
        R::Signal(s) => I::Signal(s),
    };
    Some(pb::ExecInput { input: Some(input) })
}

fn output_of(o: pb::ExecOutput) -> Option<api::ExecResponse> {
    use api::exec_response::Response as R;
    use pb::exec_output::Output as O;
    let response = match o.output? {
        O::Started(s) => R::Started(api::ExecStarted {
            exec_id: s.id,
            pid: s.pid,
        }),
        O::Stdout(b) => R::Stdout(b),
        O::Stderr(b) => R::Stderr(b),
        O::Exited(e) => R::Exited(api::ExecExited {
            exit_code: e.exit_code,
            signal: e.signal,
            duration_ms: e.duration_ms,
            timed_out: e.timed_out,
        }),
    };
    Some(api::ExecResponse {
        response: Some(response),
    })
}

pub async fn exec(
    gw: &Gateway,
    call: Call,
    mut inbound: Streaming<api::ExecRequest>,
) -> Result<ExecStream, Status> {
    let first = inbound.message().await?;
    let Some(api::exec_request::Request::Start(start)) = first.and_then(|m| m.request) else {
        return Err(super::call::to_status(ApiError::Invalid(
            "the first Exec request must be `start`".into(),
        )));
    };
    let rt = SandboxRuntime::of(gw, &call, &start.sandbox_id).await?;
    let (in_tx, in_rx) = mpsc::channel::<pb::ExecInput>(16);
    let _ = in_tx.send(start_of(start)).await;
    // caller → command: stdin, close, signals (until the caller's stream ends)
    tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            if let Some(i) = input_of(m)
                && in_tx.send(i).await.is_err()
            {
                break;
            }
        }
    });
    let mut client = rt.client.clone();
    let outputs = client
        .exec(rt.request(ReceiverStream::new(in_rx)))
        .await
        .map_err(from_runtime)?
        .into_inner();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(relay(rt, call, outputs, tx).in_current_span());
    Ok(ReceiverStream::new(rx))
}

/// Command → caller until the command exits; kills it when the caller goes
/// away or its deadline passes first.
async fn relay(
    rt: SandboxRuntime,
    call: Call,
    mut outputs: Streaming<pb::ExecOutput>,
    tx: mpsc::Sender<Result<api::ExecResponse, Status>>,
) {
    let mut exec_id = String::new();
    let finished = loop {
        let next = tokio::select! {
            m = outputs.message() => m,
            () = tx.closed() => break false,
            () = call.expired() => {
                let _ = tx.send(Err(deadline_exceeded())).await;
                break false;
            }
        };
        let o = match next {
            Ok(Some(o)) => o,
            Ok(None) => break true,
            Err(s) => {
                let _ = tx.send(Err(from_runtime(s))).await;
                break false;
            }
        };
        if let Some(pb::exec_output::Output::Started(s)) = &o.output {
            exec_id = s.id.clone();
        }
        let exited = matches!(o.output, Some(pb::exec_output::Output::Exited(_)));
        if let Some(r) = output_of(o) {
            // a caller that stopped reading holds the command back (bounded)
            tokio::select! {
                sent = tx.send(Ok(r)) => if sent.is_err() { break false },
                () = call.expired() => {
                    let _ = tx.try_send(Err(deadline_exceeded()));
                    break false;
                }
            }
        }
        if exited {
            break true;
        }
    };
    if !finished && !exec_id.is_empty() {
        kill(&rt, exec_id).await;
    }
}

async fn kill(rt: &SandboxRuntime, id: String) {
    let req = pb::SignalRequest {
        id: id.clone(),
        signal: SIGKILL,
    };
    let mut client = rt.client.clone();
    if let Err(e) = client.signal(rt.request(req)).await {
        tracing::warn!(exec = %id, error = %e, "killing an abandoned command failed");
    }
}

/// SIGKILL's number (9 on every Linux architecture).
const SIGKILL: i32 = 9;
