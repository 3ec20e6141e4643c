//! OpenSandbox execd's code interpreter API on the runtime's port:
//! `POST /code` (run, an SSE stream), `DELETE /code?id=` (interrupt),
//! `POST /code/context`, `GET|DELETE /code/contexts[?language=]`,
//! `GET|DELETE /code/contexts/{id}`. Each context is one [`engine`]
//! process: a Jupyter kernel where the image has `ipykernel`.
//!
//! The wire follows upstream execd (`components/execd`): the stream is
//! `init` (text: the context id), then the cell's `stdout`/`stderr` chunks,
//! `execution_count` + `result` (`results`: the MIME bundle, `text/plain`
//! renamed `text`) for the cell's value, `status` "error" + `error`
//! (`ename`, `evalue`, `traceback`) for an exception, and
//! `execution_complete` (`execution_time` in ms) at the end; a `ping` every
//! 3 s while the cell runs. JSON is written as Go writes it (`<`, `>`, `&`
//! escaped). As upstream, only the cell's value (`execute_result`) is a
//! `result`: `display_data` (e.g. a figure shown with `plt.show()`) is dropped.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use super::engine::{self, Kernel};
use crate::{
    AppState,
    error::{Result, RuntimeError},
    events::{ErrorInfo, EventType, StreamEvent},
};

/// Languages a context can have here (upstream also has java, javascript,
/// typescript and go kernels, which these images do not carry).
const LANGUAGES: &[&str] = &["python", "bash"];
/// Languages upstream execd knows, as `/code` takes them.
const KNOWN: &[&str] = &[
    "bash",
    "python",
    "java",
    "javascript",
    "typescript",
    "go",
    "sql",
    "command",
    "background-command",
];
/// Most code contexts per runtime (each one a process).
const MAX_CONTEXTS: usize = 64;

/// One code context: its kernel process (started when it is created).
pub struct CodeContext {
    id: String,
    language: String,
    seq: u64,
    kernel: Arc<Mutex<Option<Kernel>>>,
    /// The kernel process's pid (0: none), for interrupts and deletes that
    /// come while a cell holds `kernel`.
    pid: AtomicI32,
}

impl Drop for CodeContext {
    fn drop(&mut self) {
        self.kill();
    }
}

impl CodeContext {
    fn kill(&self) {
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid > 0 {
            use nix::sys::signal::{Signal, kill};
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    fn summary(&self) -> Value {
        json!({"id": self.id, "language": self.language})
    }
}

/// Every code context of the runtime, and the default one per language
/// (made by a run that names no context).
#[derive(Default)]
pub struct CodeContexts {
    all: parking_lot::Mutex<HashMap<String, Arc<CodeContext>>>,
    defaults: parking_lot::Mutex<HashMap<String, String>>,
    seq: AtomicU64,
}

impl CodeContexts {
    fn get(&self, id: &str) -> Option<Arc<CodeContext>> {
        self.all.lock().get(id).cloned()
    }
    fn remove(&self, id: &str) -> Option<Arc<CodeContext>> {
        self.defaults.lock().retain(|_, v| v != id);
        let c = self.all.lock().remove(id);
        if let Some(c) = &c {
            c.kill();
        }
        c
    }
    fn listed(&self, language: Option<&str>) -> Vec<Arc<CodeContext>> {
        let mut v: Vec<_> = self
            .all
            .lock()
            .values()
            .filter(|c| language.is_none_or(|l| c.language == l))
            .cloned()
            .collect();
        v.sort_by_key(|c| c.seq);
        v
    }
}

/// A context of `language` (one of [`LANGUAGES`]) with its kernel started.
async fn start_context(st: &AppState, language: &str, cwd: Option<&str>) -> Result<CodeContext> {
    let cwd = match cwd.filter(|c| !c.is_empty()) {
        Some(c) => {
            std::fs::create_dir_all(c)
                .map_err(|e| RuntimeError::Internal(format!("creating {c}: {e}")))?;
            c.to_string()
        }
        None => st.cfg.home(),
    };
    let env = st.sandbox_env.lock().clone();
    let kernel = Kernel::spawn(&cwd, env, engine::Flavour::Execd, language)
        .await
        .map_err(RuntimeError::Internal)?;
    Ok(CodeContext {
        id: uuid::Uuid::new_v4().simple().to_string(),
        language: language.to_string(),
        seq: st.code.seq.fetch_add(1, Ordering::Relaxed),
        pid: AtomicI32::new(kernel.pid().unwrap_or(0)),
        kernel: Arc::new(Mutex::new(Some(kernel))),
    })
}

/// `language` if a context can have it here, else the error naming it.
fn runnable(language: &str) -> std::result::Result<&str, String> {
    if LANGUAGES.contains(&language) {
        return Ok(language);
    }
    let what = if language.is_empty() {
        "no language was given".to_string()
    } else {
        format!("language {language:?} is not available in this sandbox")
    };
    Err(format!(
        "{what}; code contexts here run {}",
        LANGUAGES.join(" and ")
    ))
}

fn store(st: &AppState, c: CodeContext) -> Result<Arc<CodeContext>> {
    let mut all = st.code.all.lock();
    if all.len() >= MAX_CONTEXTS {
        return Err(RuntimeError::LimitReached(format!(
            "too many code contexts: {MAX_CONTEXTS} in use; delete one first"
        )));
    }
    let c = Arc::new(c);
    all.insert(c.id.clone(), c.clone());
    Ok(c)
}

#[derive(Deserialize, Default)]
struct ContextRequest {
    #[serde(default)]
    language: String,
    #[serde(default)]
    cwd: String,
}

async fn body_json<T: serde::de::DeserializeOwned>(st: &AppState, body: Body) -> Result<T> {
    crate::http_api::json_body::<T>(st, body)
        .await
        .map_err(|e| match e {
            RuntimeError::PayloadTooLarge(m) => RuntimeError::PayloadTooLarge(m),
            e => RuntimeError::InvalidRequest(format!(
                "error parsing request, MAYBE invalid body format. {e}"
            )),
        })
}

/// `POST /code/context`.
pub async fn create_context(State(st): State<AppState>, body: Body) -> Result<Json<Value>> {
    let req: ContextRequest = body_json(&st, body).await?;
    let lang = runnable(&req.language)
        .map_err(|m| RuntimeError::Internal(format!("error creating code context. {m}")))?;
    let c = start_context(&st, lang, Some(&req.cwd))
        .await
        .map_err(|e| RuntimeError::Internal(format!("error creating code context. {e}")))?;
    let c = store(&st, c)?;
    let mut v = json!({"id": c.id, "language": req.language});
    if !req.cwd.is_empty() {
        v["cwd"] = json!(req.cwd);
    }
    Ok(Json(v))
}

/// `GET /code/contexts[?language=]`.
pub async fn list_contexts(
    State(st): State<AppState>,
    q: axum::extract::Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let lang = q
        .get("language")
        .map(String::as_str)
        .filter(|l| !l.is_empty());
    if let Some(l) = lang.filter(|l| ["command", "background-command", "sql"].contains(l)) {
        return Err(RuntimeError::Internal(format!(
            "unsupported language context operation: {l}"
        )));
    }
    let all = st.code.listed(lang);
    Ok(Json(Value::Array(
        all.iter().map(|c| c.summary()).collect(),
    )))
}

/// `DELETE /code/contexts?language=`: every context of that language.
pub async fn delete_language(
    State(st): State<AppState>,
    q: axum::extract::Query<HashMap<String, String>>,
) -> Result<StatusCode> {
    let lang = required_query(&q, "language")?;
    for c in st.code.listed(Some(lang)) {
        st.code.remove(&c.id);
    }
    Ok(StatusCode::OK)
}

/// The non-empty query parameter `name`, or a missing-parameter error.
fn required_query<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a String> {
    q.get(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RuntimeError::MissingQuery(format!("missing query parameter '{name}'")))
}

fn not_found(id: &str) -> RuntimeError {
    RuntimeError::ContextNotFound(format!("context {id} not found"))
}

/// `GET /code/contexts/{id}`.
pub async fn get_context(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let c = st.code.get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(c.summary()))
}

/// `DELETE /code/contexts/{id}`.
pub async fn delete_context(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    st.code.remove(&id).ok_or_else(|| not_found(&id))?;
    Ok(StatusCode::OK)
}

/// `DELETE /code?id=`: interrupt the running cell of a context (a kernel
/// interrupt); for any other id, as upstream, the command of that id.
pub async fn interrupt(
    State(st): State<AppState>,
    q: axum::extract::Query<HashMap<String, String>>,
) -> Result<StatusCode> {
    let id = required_query(&q, "id")?;
    if let Some(c) = st.code.get(id) {
        let pid = c.pid.load(Ordering::SeqCst);
        if pid > 0 {
            engine::interrupt_pid(pid);
        }
        return Ok(StatusCode::OK);
    }
    match st.commands.get(id) {
        Ok(cmd) => cmd.signal(nix::sys::signal::Signal::SIGKILL)?,
        Err(_) => {
            return Err(RuntimeError::Internal(
                "error interruptting code context. no such session".into(),
            ));
        }
    }
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct RunCodeRequest {
    #[serde(default)]
    context: ContextRef,
    #[serde(default)]
    code: String,
}

#[derive(Deserialize, Default)]
struct ContextRef {
    #[serde(default)]
    id: String,
    #[serde(default)]
    language: String,
}

/// `POST /code`: run code in a context (the language's default context when
/// none is named), as an SSE stream. No language runs the code as a shell
/// command, as upstream does.
pub async fn run_code(State(st): State<AppState>, body: Body) -> Result<Response> {
    let req: RunCodeRequest = body_json(&st, body).await?;
    if req.code.is_empty() {
        return Err(RuntimeError::InvalidRequest(
            "invalid request, validation error Key: 'RunCodeRequest.Code' Error:Field validation for 'Code' failed on the 'required' tag".into(),
        ));
    }
    let lang = req.context.language.as_str();
    if lang.is_empty() || lang == "command" {
        return crate::http_api::run_as_command(&st, req.code).await;
    }
    let failed = |m: String| RuntimeError::Internal(format!("error running codes {m}"));
    if !KNOWN.contains(&lang) {
        return Err(failed(format!("unknown language: {lang}")));
    }
    let ctx = match req.context.id.as_str() {
        "" => default_context(&st, lang).await.map_err(|e| match e {
            RuntimeError::Internal(m) => failed(m),
            e => e,
        })?,
        id => st
            .code
            .get(id)
            .ok_or_else(|| failed("context not found".into()))?,
    };
    // upstream answers "session is busy" to a run while one runs
    let guard = ctx
        .kernel
        .clone()
        .try_lock_owned()
        .map_err(|_| failed("session is busy".into()))?;
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let run = json!({"code": req.code, "language": ctx.language, "env": {}});
    let ping = st.cfg.ping_interval;
    tokio::spawn(stream_cell(ctx, guard, run, tx, ping));
    Ok(crate::http_api::event_stream_response(crate::channel_body(
        rx,
    )))
}

/// The default context of `lang`, started if there is none.
async fn default_context(st: &AppState, lang: &str) -> Result<Arc<CodeContext>> {
    let known = st.code.defaults.lock().get(lang).cloned();
    if let Some(c) = known.and_then(|id| st.code.get(&id)) {
        return Ok(c);
    }
    let lang = runnable(lang).map_err(RuntimeError::Internal)?;
    let c = store(st, start_context(st, lang, None).await?)?;
    st.code
        .defaults
        .lock()
        .insert(lang.to_string(), c.id.clone());
    Ok(c)
}

/// Drop the context's kernel that has exited; the event that says so.
fn kernel_exited(ctx: &CodeContext, kernel: &mut Option<Kernel>) -> StreamEvent {
    kernel.take();
    ctx.pid.store(0, Ordering::SeqCst);
    StreamEvent::runtime_error("KernelError", "the context's kernel exited")
}

/// Run `run` in the context's kernel and send the SSE frames to `tx`. A
/// client that leaves does not stop the cell (as upstream: only an
/// interrupt does); its output is then read and dropped.
async fn stream_cell(
    ctx: Arc<CodeContext>,
    mut guard: tokio::sync::OwnedMutexGuard<Option<Kernel>>,
    run: Value,
    tx: mpsc::Sender<Bytes>,
    ping_every: Duration,
) {
    let send = |ev: StreamEvent| {
        let tx = tx.clone();
        async move { tx.send(go_frame(&ev)).await.is_ok() }
    };
    send(StreamEvent::init(&ctx.id)).await;
    let started = Instant::now();
    let Some(k) = guard.as_mut() else {
        send(StreamEvent::runtime_error(
            "KernelError",
            "the context's kernel is gone",
        ))
        .await;
        return;
    };
    if !k.send(&run).await {
        send(kernel_exited(&ctx, &mut guard)).await;
        return;
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let ev = tokio::select! {
            ev = k.next() => ev,
            _ = ping.tick() => {
                send(StreamEvent::ping()).await;
                continue;
            }
        };
        let Some(ev) = ev else {
            send(kernel_exited(&ctx, &mut guard)).await;
            return;
        };
        let end = engine::is_end(&ev);
        for frame in sse_events(&ev, started.elapsed()) {
            send(frame).await;
        }
        if end {
            return;
        }
    }
}

/// The execd events of one engine event (`elapsed`: since the cell began).
pub fn sse_events(ev: &Value, elapsed: Duration) -> Vec<StreamEvent> {
    let text = |k| ev[k].as_str().unwrap_or_default().to_string();
    match ev["type"].as_str().unwrap_or_default() {
        kind @ ("stdout" | "stderr") if !text("text").is_empty() => {
            let t = if kind == "stdout" {
                EventType::Stdout
            } else {
                EventType::Stderr
            };
            vec![StreamEvent::with_text(t, text("text"))]
        }
        // display data: upstream's execd has no handler for it
        "result" if ev["is_main_result"] != true => Vec::new(),
        "result" => {
            let mut out = Vec::new();
            let count = ev["execution_count"].as_u64().filter(|n| *n > 0);
            if let Some(n) = count.filter(|_| ev["is_main_result"] == true) {
                out.push(StreamEvent {
                    execution_count: Some(n),
                    ..StreamEvent::new(EventType::ExecutionCount)
                });
            }
            // sorted by key, as Go writes a map
            let mut sorted = std::collections::BTreeMap::new();
            for (mime, v) in ev["data"].as_object().into_iter().flatten() {
                let key = if mime == "text/plain" { "text" } else { mime };
                sorted.insert(key.to_string(), v.clone());
            }
            let results: serde_json::Map<String, Value> = sorted.into_iter().collect();
            if !results.is_empty() {
                out.push(StreamEvent {
                    results: Some(results),
                    ..StreamEvent::new(EventType::Result)
                });
            }
            out
        }
        "error" => {
            let traceback = ev["traceback"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|l| l.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                StreamEvent::with_text(EventType::Status, "error"),
                StreamEvent {
                    error: Some(ErrorInfo {
                        ename: text("name"),
                        evalue: text("value"),
                        traceback,
                    }),
                    ..StreamEvent::new(EventType::Error)
                },
            ]
        }
        "end" => {
            let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            // Go's omitempty: no `execution_time` when it is 0 ms
            vec![StreamEvent {
                execution_time: Some(ms).filter(|ms| *ms > 0),
                ..StreamEvent::new(EventType::ExecutionComplete)
            }]
        }
        _ => vec![],
    }
}

/// An event's frame as Go's `encoding/json` writes it: `<`, `>`, `&`,
/// U+2028 and U+2029 escaped (they only occur inside JSON strings).
pub fn go_frame(ev: &StreamEvent) -> Bytes {
    let raw = ev.frame();
    let Ok(s) = std::str::from_utf8(&raw) else {
        return raw;
    };
    if !s.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return raw;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(ev: Value) -> Vec<Value> {
        sse_events(&ev, Duration::from_millis(7))
            .iter()
            .map(|e| {
                let f = go_frame(e);
                assert!(f.ends_with(b"\n\n"));
                serde_json::from_slice(&f[..f.len() - 2]).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_cells_value_is_an_execution_count_then_a_result_with_text() {
        let f = frames(
            json!({"type": "result", "is_main_result": true, "execution_count": 3,
            "data": {"text/plain": "4", "text/html": "<b>4</b>"}}),
        );
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0]["type"], "execution_count");
        assert_eq!(f[0]["execution_count"], 3);
        assert_eq!(f[1]["type"], "result");
        assert_eq!(
            f[1]["results"],
            json!({"text": "4", "text/html": "<b>4</b>"})
        );
        assert!(f[1]["timestamp"].as_i64().unwrap() > 0);
        // display data is dropped, as upstream's execd does
        let d = sse_events(
            &json!({"type": "result", "is_main_result": false,
            "data": {"text/plain": "<Figure>", "image/png": "iVBOR"}}),
            Duration::ZERO,
        );
        assert!(d.is_empty(), "{d:?}");
        // a cell's value without a count (no ipykernel) is still a result
        let d = sse_events(
            &json!({"type": "result", "is_main_result": true,
            "data": {"text/plain": "<Figure>", "image/png": "iVBOR"}}),
            Duration::ZERO,
        );
        assert_eq!(d.len(), 1);
        let raw = go_frame(&d[0]);
        let s = std::str::from_utf8(&raw).unwrap();
        // keys sorted as Go writes a map, `<` escaped as Go does
        assert!(
            s.contains(r#""results":{"image/png":"iVBOR","text":"\u003cFigure\u003e"}"#),
            "{s}"
        );
    }

    #[test]
    fn streams_errors_and_the_end_map_to_execds_events() {
        let out = frames(json!({"type": "stdout", "text": "hi\n"}));
        assert_eq!(out[0]["type"], "stdout");
        assert_eq!(out[0]["text"], "hi\n");
        assert!(frames(json!({"type": "stderr", "text": ""})).is_empty());
        let e = frames(json!({"type": "error", "name": "NameError",
            "value": "name 'x' is not defined", "traceback": ["a", "b"]}));
        assert_eq!(
            e[0],
            json!({"type": "status", "text": "error", "timestamp": e[0]["timestamp"]})
        );
        assert_eq!(
            e[1]["error"],
            json!({"ename": "NameError",
            "evalue": "name 'x' is not defined", "traceback": ["a", "b"]})
        );
        let end = frames(json!({"type": "end", "execution_count": 2}));
        assert_eq!(end[0]["type"], "execution_complete");
        assert_eq!(end[0]["execution_time"], 7);
        let instant = sse_events(&json!({"type": "end"}), Duration::ZERO);
        let f = go_frame(&instant[0]);
        assert!(!std::str::from_utf8(&f).unwrap().contains("execution_time"));
    }

    #[test]
    fn frames_escape_html_characters_as_go_does() {
        let ev = StreamEvent::with_text(EventType::Stdout, "<a & b>\u{2028}");
        let f = go_frame(&ev);
        let s = std::str::from_utf8(&f).unwrap();
        assert!(
            s.starts_with(r#"{"type":"stdout","text":"\u003ca \u0026 b\u003e\u2028","timestamp":"#),
            "{s}"
        );
    }

    #[test]
    fn only_python_and_bash_contexts_run_here_and_the_error_names_the_language() {
        assert_eq!(runnable("python"), Ok("python"));
        assert_eq!(runnable("bash"), Ok("bash"));
        let e = runnable("java").unwrap_err();
        assert!(
            e.contains("\"java\"") && e.contains("python and bash"),
            "{e}"
        );
        assert!(runnable("").unwrap_err().contains("no language"));
    }
}
