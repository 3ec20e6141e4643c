//! `process.Process`: Start/Connect streams, List, SendInput, SendSignal,
//! CloseStdin, Update (terminal size) and the client-streaming StreamInput.
//! Processes are the command registry's; their output (a terminal's as `pty`
//! data) is fanned out to every attached stream.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use bytes::{Bytes, BytesMut};
use tokio::sync::{broadcast, mpsc};

use super::{
    EnvdState,
    connect::{
        CResult, ConnectError, END_STREAM, Streamed, deadline, deadline_exceeded, envelope,
        keepalive, parse_message, request_timeout, stream_response, until,
    },
    messages::{
        ProcessInput, ProcessSelector, SelectRequest, SendInputRequest, SendSignalRequest,
        SignalValue, StartRequest, StreamInputRequest, UpdateRequest,
    },
    required,
    responses::{
        DataOut, Empty, EndEvent, Event, ListResponse, ProcessConfigOut, ProcessEvent, ProcessInfo,
    },
    streamed, unary,
};
use crate::commands::{CommandRecord, CommandSpec, Output};

/// A process started through envd: its record and its output fan-out.
pub(super) struct EnvdProcess {
    rec: Arc<CommandRecord>,
    tag: Option<String>,
    cmd: String,
    args: Vec<String>,
    envs: HashMap<String, String>,
    cwd: Option<String>,
    events: broadcast::Sender<Event<ProcessEvent>>,
}

/// The envd event of one output item; a terminal's output is `pty` data.
pub(super) fn process_event(o: &Output, pty: bool) -> Event<ProcessEvent> {
    let event = match o {
        Output::Stdout(b) if pty => ProcessEvent::Data(DataOut::Pty(B64.encode(b))),
        Output::Stdout(b) => ProcessEvent::Data(DataOut::Stdout(B64.encode(b))),
        Output::Stderr(b) => ProcessEvent::Data(DataOut::Stderr(B64.encode(b))),
        Output::Exit(e) => {
            let status = if e.signal != 0 {
                format!("signal: {}", signal_name(e.signal))
            } else {
                format!("exit status {}", e.code)
            };
            ProcessEvent::End(EndEvent {
                error: e.timed_out.then(|| "timed out".to_string()),
                exit_code: e.code,
                exited: e.signal == 0,
                status,
            })
        }
    };
    Event { event }
}

pub(super) fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(nix::sys::signal::Signal::SIGKILL) => "killed".into(),
        Ok(nix::sys::signal::Signal::SIGTERM) => "terminated".into(),
        Ok(s) => s.as_str().trim_start_matches("SIG").to_ascii_lowercase(),
        Err(_) => sig.to_string(),
    }
}

/// Pipe a process's events to one client stream until its end event (or the
/// client leaves, or its `deadline` passes: then the stream ends with
/// `deadline_exceeded`, never with the end event of the process it killed).
pub(super) fn attach(
    events: broadcast::Receiver<Event<ProcessEvent>>,
    first: Option<Event<ProcessEvent>>,
    every: Duration,
    deadline: Option<tokio::time::Instant>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        let mut events = events;
        if let Some(f) = first
            && tx.send(envelope(0, &f)).await.is_err()
        {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                biased;
                _ = until(deadline) => {
                    let _ = tx.send(deadline_exceeded()).await;
                    return;
                }
                ev = events.recv() => match ev {
                    Ok(v) => {
                        let end = v.is_end();
                        if end && deadline.is_some() && v.timed_out() {
                            let _ = tx.send(deadline_exceeded()).await;
                            return;
                        }
                        if tx.send(envelope(0, &v)).await.is_err() {
                            return;
                        }
                        if end {
                            let _ = tx.send(envelope(END_STREAM, &Empty {})).await;
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "envd stream lagged; output events dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(envelope(END_STREAM, &Empty {})).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if tx.send(envelope(0, &Event { event: ProcessEvent::Keepalive {} })).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    stream_response(rx)
}

/// `process.Process/Start`: spawn, then stream start/data/end events. The
/// process outlives the stream (E2B background commands).
pub(super) async fn start(State(st): State<EnvdState>, headers: HeaderMap, body: Body) -> Streamed {
    Ok(start_inner(&st, &headers, body).await?)
}

pub(super) async fn start_inner(
    st: &EnvdState,
    headers: &HeaderMap,
    body: Body,
) -> CResult<Response> {
    let req: StartRequest = streamed(st, body).await?;
    let p = required(req.process, "process")?;
    if p.cmd.is_empty() {
        return Err(ConnectError::new(
            "invalid_argument",
            "process.cmd is required",
        ));
    }
    let (cmd, args) = (p.cmd, p.args);
    let mut envs: HashMap<String, String> = st.app.sandbox_env.lock().clone();
    envs.extend(p.envs);
    let cwd = p.cwd.filter(|c| !c.is_empty());
    let who = super::user::resolve(
        super::user::requested(headers)?.as_deref(),
        nix::unistd::geteuid().as_raw(),
    )?;
    let home = who.home.clone().unwrap_or_else(|| st.app.cfg.home());
    if who.switch {
        envs.insert("HOME".into(), home.clone());
        envs.insert("USER".into(), who.name.clone());
        envs.insert("LOGNAME".into(), who.name.clone());
    }
    let workdir = working_dir(cwd.as_deref(), &home)?;
    let tag = req.tag;
    let stdin = req.stdin.unwrap_or(false);
    let pty = req.pty.as_ref().map(|p| p.size());
    let timeout = request_timeout(headers);
    let deadline = deadline(headers);
    let mut argv = vec![cmd.clone()];
    argv.extend(args.iter().cloned());
    let spec = CommandSpec {
        command: String::new(),
        argv,
        cwd: Some(workdir),
        envs: envs.clone(),
        uid: who.switch.then_some(who.uid),
        gid: who.switch.then_some(who.gid),
        timeout,
        stdin,
        pty,
    };
    let (events, first_rx) = broadcast::channel::<Event<ProcessEvent>>(1024);
    let (otx, mut orx) = mpsc::channel::<Output>(64);
    let rec = st.app.commands.start_detached(spec, otx)?;
    let pid = rec.pid;
    let proc_ = Arc::new(EnvdProcess {
        rec,
        tag,
        cmd,
        args,
        envs,
        cwd,
        events: events.clone(),
    });
    st.envd.lock().insert(pid, proc_);
    // Drain the process output into the fan-out, whoever listens.
    let envd = st.envd.clone();
    tokio::spawn(async move {
        while let Some(o) = orx.recv().await {
            let end = matches!(o, Output::Exit(_));
            let _ = events.send(process_event(&o, pty.is_some()));
            if end {
                break;
            }
        }
        // keep finished processes out of List
        envd.lock().remove(&pid);
    });
    Ok(attach(
        first_rx,
        Some(Event {
            event: ProcessEvent::Start { pid },
        }),
        keepalive(headers),
        deadline,
    ))
}

/// Where a process starts, as in E2B: the home directory when `cwd` is
/// unset, `~` expanded, relative paths resolved against the home; it must exist.
pub(super) fn working_dir(cwd: Option<&str>, home: &str) -> CResult<String> {
    let dir = match cwd {
        None | Some("~") => home.to_string(),
        Some(c) => match c.strip_prefix("~/") {
            Some(rest) => crate::upload::resolve(rest, home),
            None if c.starts_with('~') => {
                return Err(ConnectError::new(
                    "invalid_argument",
                    format!("cwd '{c}': cannot expand user-specific home dir"),
                ));
            }
            None => crate::upload::resolve(c, home),
        },
    };
    if !std::path::Path::new(&dir).is_dir() {
        return Err(ConnectError::new(
            "invalid_argument",
            format!("cwd '{dir}' does not exist"),
        ));
    }
    Ok(dir)
}

/// The running process a selector names (by pid, else by tag).
pub(super) fn select(st: &EnvdState, sel: Option<&ProcessSelector>) -> CResult<Arc<EnvdProcess>> {
    let sel = required(sel, "process selector")?;
    let g = st.envd.lock();
    if let Some(pid) = sel.pid {
        return g.get(&pid).cloned().ok_or_else(|| {
            ConnectError::new("not_found", format!("process with pid {pid} not found"))
        });
    }
    if let Some(tag) = &sel.tag {
        return g
            .values()
            .find(|p| p.tag.as_ref() == Some(tag))
            .cloned()
            .ok_or_else(|| {
                ConnectError::new("not_found", format!("process with tag {tag} not found"))
            });
    }
    Err(ConnectError::new(
        "invalid_argument",
        "selector needs pid or tag",
    ))
}

/// `process.Process/Connect`: attach to a running process's output (a
/// client deadline ends the stream, not the process).
pub(super) async fn connect(
    State(st): State<EnvdState>,
    headers: HeaderMap,
    body: Body,
) -> Streamed {
    let deadline = deadline(&headers);
    let req: SelectRequest = streamed(&st, body).await?;
    let p = select(&st, req.process.as_ref())?;
    Ok(attach(
        p.events.subscribe(),
        Some(Event {
            event: ProcessEvent::Start { pid: p.rec.pid },
        }),
        keepalive(&headers),
        deadline,
    ))
}

pub(super) async fn list(State(st): State<EnvdState>) -> Response {
    let procs = st.envd.lock();
    let processes = procs
        .values()
        .filter(|p| p.rec.running())
        .map(|p| ProcessInfo {
            config: ProcessConfigOut::new(&p.cmd, &p.args, &p.envs, p.cwd.as_deref()),
            pid: p.rec.pid,
            tag: p.tag.as_deref(),
        })
        .collect();
    Json(ListResponse { processes }).into_response()
}

pub(super) async fn send_input(State(st): State<EnvdState>, body: Body) -> CResult<Json<Empty>> {
    let req: SendInputRequest = unary(&st, body).await?;
    let p = select(&st, req.process.as_ref())?;
    write_input(&p, required(req.input, "input")?).await?;
    Ok(Json(Empty {}))
}

/// Write `stdin` or `pty` input; each only to a process of its kind.
async fn write_input(p: &EnvdProcess, input: ProcessInput) -> CResult<()> {
    let decode = |what: &str, data: &str| {
        B64.decode(data.as_bytes()).map_err(|e| {
            ConnectError::new("invalid_argument", format!("{what} is not base64: {e}"))
        })
    };
    match (input.stdin, input.pty, p.rec.is_pty) {
        (_, Some(data), true) => p.rec.write_pty(&decode("pty", &data)?).await?,
        (_, Some(_), false) => {
            return Err(ConnectError::new(
                "internal",
                "error writing to tty: the process has no terminal; write its stdin instead",
            ));
        }
        (Some(_), None, true) => {
            return Err(ConnectError::new(
                "internal",
                "error writing to stdin: the process runs on a terminal; write its pty instead",
            ));
        }
        // no input at all: nothing to write (an empty message)
        (None, None, true) => {}
        (stdin, None, false) => {
            let data = stdin.unwrap_or_default();
            p.rec.write_stdin(&decode("stdin", &data)?).await?;
        }
    }
    Ok(())
}

/// `process.Process/Update`: resize a process's terminal.
pub(super) async fn update(State(st): State<EnvdState>, body: Body) -> CResult<Json<Empty>> {
    let req: UpdateRequest = unary(&st, body).await?;
    let p = select(&st, req.process.as_ref())?;
    if let Some(pty) = req.pty {
        if !p.rec.is_pty {
            return Err(ConnectError::new(
                "internal",
                "error resizing tty: the process has no terminal",
            ));
        }
        p.rec.resize_pty(pty.size()).await?;
    }
    Ok(Json(Empty {}))
}

pub(super) async fn send_signal(State(st): State<EnvdState>, body: Body) -> CResult<Json<Empty>> {
    let req: SendSignalRequest = unary(&st, body).await?;
    let p = select(&st, req.process.as_ref())?;
    let sig = match req.signal {
        Some(SignalValue::Name(s)) => match s.as_str() {
            "SIGNAL_SIGKILL" => nix::sys::signal::Signal::SIGKILL,
            "SIGNAL_SIGTERM" => nix::sys::signal::Signal::SIGTERM,
            other => {
                return Err(ConnectError::new(
                    "invalid_argument",
                    format!("unknown signal {other}"),
                ));
            }
        },
        Some(SignalValue::Number(n)) => {
            nix::sys::signal::Signal::try_from(n.as_i64().unwrap_or(0) as i32)
                .map_err(|_| ConnectError::new("invalid_argument", format!("unknown signal {n}")))?
        }
        None => return Err(ConnectError::new("invalid_argument", "signal is required")),
    };
    p.rec.signal(sig)?;
    Ok(Json(Empty {}))
}

pub(super) async fn close_stdin(State(st): State<EnvdState>, body: Body) -> CResult<Json<Empty>> {
    let req: SelectRequest = unary(&st, body).await?;
    let p = select(&st, req.process.as_ref())?;
    if p.rec.is_pty {
        return Err(ConnectError::new(
            "unknown",
            "error closing stdin: a terminal has no stdin to close; send Ctrl+D (0x04) instead",
        ));
    }
    p.rec.close_stdin().await;
    Ok(Json(Empty {}))
}

/// `process.Process/StreamInput`: a client stream of envelopes — `start`
/// (selects the process), then `data` (stdin bytes) and `keepalive` — answered
/// with one empty message and the end of stream.
pub(super) async fn stream_input(State(st): State<EnvdState>, body: Body) -> Response {
    use futures_util::StreamExt;
    let max = st.app.cfg.max_json_bytes;
    let result: CResult<()> = async {
        let mut stream = body.into_data_stream();
        let mut buf = BytesMut::new();
        let mut target: Option<Arc<EnvdProcess>> = None;
        loop {
            // take every complete envelope in the buffer
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if len > max {
                    return Err(ConnectError::new(
                        "resource_exhausted",
                        format!("envelope of {len} bytes exceeds {max}"),
                    ));
                }
                if buf.len() < 5 + len {
                    break;
                }
                let frame = buf.split_to(5 + len);
                if frame[0] & END_STREAM != 0 {
                    return Ok(());
                }
                let msg: StreamInputRequest = parse_message(&frame, max)?;
                if let Some(start) = msg.start {
                    target = Some(select(&st, start.process.as_ref())?);
                } else if let Some(data) = msg.data {
                    let p = target.as_ref().ok_or_else(|| {
                        ConnectError::new("failed_precondition", "data before start")
                    })?;
                    write_input(p, required(data.input, "data.input")?).await?;
                }
            }
            match stream.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(ConnectError::new(
                        "canceled",
                        format!("request stream: {e}"),
                    ));
                }
                None => return Ok(()),
            }
        }
    }
    .await;
    let (tx, rx) = mpsc::channel(2);
    match result {
        Ok(()) => {
            let _ = tx.try_send(envelope(0, &Empty {}));
            let _ = tx.try_send(envelope(END_STREAM, &Empty {}));
        }
        Err(e) => {
            let _ = tx.try_send(e.end_stream());
        }
    }
    stream_response(rx)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn working_dir_defaults_to_home_and_resolves_against_it() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        assert_eq!(working_dir(None, home).unwrap(), home);
        assert_eq!(working_dir(Some("~"), home).unwrap(), home);
        assert_eq!(working_dir(Some("a"), home).unwrap(), format!("{home}/a"));
        assert_eq!(working_dir(Some("~/a"), home).unwrap(), format!("{home}/a"));
        assert_eq!(working_dir(Some("/"), home).unwrap(), "/");
        for bad in ["b", "~root", "/no/such/dir"] {
            assert_eq!(
                working_dir(Some(bad), home).unwrap_err().json()["code"],
                "invalid_argument"
            );
        }
    }

    #[test]
    fn events() {
        let hi = Output::Stdout(Bytes::from_static(b"hi\n"));
        let v = serde_json::to_value(process_event(&hi, false)).unwrap();
        assert_eq!(v["event"]["data"]["stdout"], "aGkK");
        let v = serde_json::to_value(process_event(&hi, true)).unwrap();
        assert_eq!(v["event"]["data"], json!({"pty": "aGkK"}));
        let exit = crate::commands::ExitInfo {
            code: 3,
            signal: 0,
            duration: Duration::ZERO,
            timed_out: false,
            finished_at: chrono::Utc::now(),
        };
        let v = serde_json::to_value(process_event(&Output::Exit(exit), true)).unwrap();
        assert_eq!(
            v["event"]["end"],
            json!({"exitCode": 3, "exited": true, "status": "exit status 3"})
        );
    }
}
