//! execd bash sessions (`POST /session`, `POST /session/{id}/run`,
//! `DELETE /session/{id}`): runs of one session share their working
//! directory and exported environment.
//!
//! As upstream execd, each run is its own shell process (the command
//! registry's shell: bash when the sandbox has one, else `sh`) that starts
//! from the state the session's previous run left and, when it exits
//! (`exit` included), saves its `export -p` and `pwd` for the next one. A
//! run is an ordinary foreground command: the same timeout, kill on client
//! disconnect and SSE events as `POST /command`. Shell variables that were
//! not exported and shell functions do not carry over (as upstream).

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::{
    AppState, channel_body,
    commands::{CommandRecord, CommandSpec, Output},
    error::{Result, RuntimeError},
    http_api::{event_stream_response, json_body, stream_events},
};

/// Live sessions per sandbox; creating one more is 429.
pub const MAX_SESSIONS: usize = 16;

/// The saved exported environment of a session (`export -p`).
const ENV_FILE: &str = "env";
/// The saved working directory of a session (`pwd`).
const CWD_FILE: &str = "cwd";

/// One session: its state directory and the runs started in it (killed
/// when it is deleted).
#[derive(Debug)]
struct Session {
    dir: PathBuf,
    runs: Mutex<Vec<Arc<CommandRecord>>>,
}

/// The sandbox's sessions, their state under `dir/<id>`.
#[derive(Debug)]
pub struct Sessions {
    dir: PathBuf,
    live: Mutex<HashMap<String, Arc<Session>>>,
}

/// `text` as one single-quoted shell word.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The script of one run of `command` whose session state is in `dir`: load
/// the saved environment (but `$PWD`, which is where this run starts), and
/// save it and the working directory on exit.
fn run_script(dir: &std::path::Path, command: &str) -> String {
    let d = quoted(&dir.to_string_lossy());
    let mut s = format!(
        "__sp_session_save() {{ export -p > {d}/{ENV_FILE}; pwd > {d}/{CWD_FILE}; }}\n\
         trap __sp_session_save EXIT\n\
         __sp_pwd=$PWD\n\
         if [ -f {d}/{ENV_FILE} ]; then . {d}/{ENV_FILE} 2>/dev/null; fi\n\
         PWD=$__sp_pwd; unset __sp_pwd\n\
         {command}"
    );
    if !command.ends_with('\n') {
        s.push('\n');
    }
    s
}

impl Sessions {
    pub fn new(dir: PathBuf) -> Self {
        Sessions {
            dir,
            live: Mutex::default(),
        }
    }

    /// A new session starting in `cwd` (else the commands' default); its id.
    pub fn create(&self, cwd: Option<&str>) -> Result<String> {
        if let Some(c) = cwd
            && !std::path::Path::new(c).is_dir()
        {
            return Err(RuntimeError::InvalidRequest(format!(
                "working directory {c} does not exist"
            )));
        }
        let mut live = self.live.lock();
        if live.len() >= MAX_SESSIONS {
            return Err(RuntimeError::LimitReached(format!(
                "at most {MAX_SESSIONS} bash sessions per sandbox: delete one first"
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.dir.join(&id);
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(|e| RuntimeError::io(&dir.to_string_lossy(), e))?;
        if let Some(c) = cwd {
            let f = dir.join(CWD_FILE);
            std::fs::write(&f, format!("{c}\n"))
                .map_err(|e| RuntimeError::io(&f.to_string_lossy(), e))?;
        }
        let session = Session {
            dir,
            runs: Mutex::default(),
        };
        live.insert(id.clone(), Arc::new(session));
        Ok(id)
    }

    fn get(&self, id: &str) -> Result<Arc<Session>> {
        self.live
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::SessionNotFound(id.to_string()))
    }

    /// The command of a run of `command` in session `id`: in `cwd` when
    /// given, else where the previous run ended.
    fn run_spec(
        &self,
        id: &str,
        command: &str,
        cwd: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<(Arc<Session>, CommandSpec)> {
        let s = self.get(id)?;
        let saved = std::fs::read_to_string(s.dir.join(CWD_FILE))
            .ok()
            .map(|c| c.trim_end_matches('\n').to_string())
            .filter(|c| !c.is_empty());
        let spec = CommandSpec {
            command: run_script(&s.dir, command),
            argv: Vec::new(),
            cwd: cwd.filter(|c| !c.is_empty()).or(saved),
            envs: HashMap::new(),
            uid: None,
            gid: None,
            timeout,
            stdin: false,
            pty: None,
        };
        Ok((s, spec))
    }

    /// End session `id`: its running commands are killed, its state removed.
    pub fn delete(&self, id: &str) -> Result<()> {
        let s = self
            .live
            .lock()
            .remove(id)
            .ok_or_else(|| RuntimeError::SessionNotFound(id.to_string()))?;
        for run in s.runs.lock().drain(..) {
            if let Err(e) = run.signal(nix::sys::signal::Signal::SIGKILL) {
                tracing::debug!(error = %e, "killing a run of a deleted session");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&s.dir) {
            tracing::warn!(error = %e, dir = %s.dir.display(), "removing a session's state");
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
struct CreateSessionRequest {
    #[serde(default)]
    cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RunInSessionRequest {
    #[serde(default)]
    command: String,
    #[serde(default)]
    cwd: Option<String>,
    /// milliseconds; 0 or absent: none
    #[serde(default)]
    timeout: Option<i64>,
}

/// `POST /session` (the body may be empty): `{"session_id": ...}`.
pub async fn create_session(State(st): State<AppState>, body: Body) -> Result<Response> {
    let bytes = axum::body::to_bytes(body, st.cfg.max_json_bytes)
        .await
        .map_err(|e| RuntimeError::invalid_input("reading request body", e))?;
    let req: CreateSessionRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        CreateSessionRequest::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::invalid_input("invalid JSON body", e))?
    };
    let cwd = req.cwd.filter(|c| !c.is_empty());
    let id = st.sessions.create(cwd.as_deref())?;
    tracing::info!(session = %id, "bash session created");
    Ok(axum::Json(serde_json::json!({ "session_id": id })).into_response())
}

/// `POST /session/{id}/run`: the run's output as execd SSE events.
pub async fn run_in_session(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response> {
    let req: RunInSessionRequest = json_body(&st, body).await?;
    if req.command.trim().is_empty() {
        return Err(RuntimeError::InvalidRequest("command is required".into()));
    }
    let timeout = match req.timeout {
        None | Some(0) => None,
        Some(t) if t < 0 => {
            return Err(RuntimeError::InvalidRequest(format!(
                "timeout must not be negative, got {t}"
            )));
        }
        Some(t) => Some(Duration::from_millis(t.unsigned_abs())),
    };
    let (session, mut spec) = st.sessions.run_spec(&id, &req.command, req.cwd, timeout)?;
    // the sandbox's env (create-time `env`) under what the session exported
    spec.envs = st.with_sandbox_env(std::mem::take(&mut spec.envs));
    let (tx, rx) = mpsc::channel::<Output>(16);
    let rec = st.commands.start(spec, tx)?;
    {
        let mut runs = session.runs.lock();
        runs.retain(|r| r.running());
        runs.push(rec);
    }
    let (ftx, frx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(stream_events(id, rx, ftx, st.cfg.ping_interval));
    Ok(event_stream_response(channel_body(frx)))
}

/// `DELETE /session/{id}`.
pub async fn delete_session(State(st): State<AppState>, Path(id): Path<String>) -> Result<()> {
    st.sessions.delete(&id)?;
    tracing::info!(session = %id, "bash session deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quoted("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn sessions_are_bounded_and_deleted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sessions::new(dir.path().join("sessions"));
        let ids: Vec<String> = (0..MAX_SESSIONS)
            .map(|_| s.create(None).expect("a session"))
            .collect();
        let e = s.create(None).expect_err("one too many");
        assert_eq!(e.http_status(), StatusCode::TOO_MANY_REQUESTS);
        s.delete(&ids[0]).expect("deleted");
        assert!(!dir.path().join("sessions").join(&ids[0]).exists());
        let e = s.delete(&ids[0]).expect_err("gone");
        assert_eq!(e.http_status(), StatusCode::NOT_FOUND);
        s.create(None).expect("room again");
        let e = s.create(Some("/no/such/dir")).expect_err("bad cwd");
        assert_eq!(e.http_status(), StatusCode::BAD_REQUEST);
    }
}
