//! A code interpreter compatible with `e2b-code-interpreter` (port 49999):
//! `POST /execute` streams JSON lines (stdout, stderr, result, error,
//! keepalive, number_of_executions); `/contexts` manages contexts. As
//! upstream's, a default Python and (where the image has its kernel) a
//! default JavaScript context exist from the start, and a run that names a
//! language uses (or makes) that language's default context. Each context is
//! one process of the [`engine`] (a Jupyter kernel for its language where the
//! image has one) whose state persists between calls.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use parking_lot::Mutex as SyncMutex;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::{AppState, auth::TokenGuard};

pub mod engine;
pub mod execd;
mod limits;

use engine::Kernel;
pub use engine::Prestart;

/// The working directory of the default context (and of a created context
/// that names none).
const DEFAULT_CWD: &str = "/home/user";

/// Time between keepalive lines of a running execution (upstream: 5 s).
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(2);

struct Context {
    id: String,
    /// Creation order: `GET /contexts` lists the oldest (the default) first.
    seq: u64,
    language: String,
    cwd: String,
    kernel: Mutex<Option<Kernel>>,
}

#[derive(Clone)]
pub struct InterpState {
    pub app: AppState,
    contexts: Arc<SyncMutex<HashMap<String, Arc<Context>>>>,
    /// The id of the default Python context, which exists from the start
    /// (as upstream's) and is what `/execute` uses when it names no context.
    default_id: Arc<str>,
    /// The default context of each language (by canonical name), used by a
    /// run that names a language and no context.
    defaults: Arc<SyncMutex<HashMap<String, String>>>,
}

impl InterpState {
    pub fn new(app: AppState) -> Self {
        let default = new_context(None, "python", DEFAULT_CWD);
        let default_id: Arc<str> = default.id.as_str().into();
        let mut defaults = HashMap::from([("python".to_string(), default.id.clone())]);
        let mut contexts = HashMap::from([(default.id.clone(), default)]);
        // upstream starts a JavaScript context beside the Python one
        if engine::available("javascript") {
            let js = new_context(None, "javascript", DEFAULT_CWD);
            defaults.insert("javascript".into(), js.id.clone());
            contexts.insert(js.id.clone(), js);
        }
        let st = InterpState {
            app,
            contexts: Arc::new(SyncMutex::new(contexts)),
            default_id,
            defaults: Arc::new(SyncMutex::new(defaults)),
        };
        if st.app.cfg.interp_prestart.enabled() {
            st.prestart();
        }
        st
    }

    /// Start the default Python context's kernel now (as the runtime
    /// starts, while the sandbox waits warm), with the sandbox's env vars
    /// as they are; a run finding them changed since updates or replaces it
    /// (see [`run_cell`]).
    fn prestart(&self) {
        let Some(ctx) = self.lock().get(&*self.default_id).cloned() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let env = self.app.sandbox_env.clone();
        rt.spawn(async move {
            let mut guard = ctx.kernel.lock().await;
            if guard.is_some() {
                return;
            }
            let env = env.lock().clone();
            match Kernel::spawn(&ctx.cwd, env, engine::Flavour::E2b, &ctx.language).await {
                Ok(k) => *guard = Some(k),
                Err(e) => {
                    tracing::warn!(error = %e, "the default context's kernel did not pre-start")
                }
            }
        });
    }
    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.contexts.lock()
    }
}

/// A refused request: its status and the message of its `{"error": ...}` body.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> Refusal {
    Refusal(status, msg.into())
}

pub fn router(st: InterpState) -> Router {
    let routes = Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/execute", post(execute))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", axum::routing::delete(delete_context))
        .route("/contexts/{id}/restart", post(restart_context));
    // Every path but `/health` needs the token. The e2b-code-interpreter SDK
    // sends `X-Access-Token` (envd's token) on `/execute` only, and
    // `E2B-Traffic-Access-Token` on every call when the sandbox has a traffic
    // token: sandpool's gateway always hands one out (derived from the
    // runtime token, see `sandpool_proto::auth::traffic_token`).
    TokenGuard {
        accepted: TokenGuard::accepting(
            st.app.cfg.access_token.as_deref(),
            "x-access-token",
            Some("e2b-traffic-access-token"),
        ),
        guards: |path| path != "/health",
        refuse: || {
            err(
                StatusCode::UNAUTHORIZED,
                "invalid or missing X-Access-Token (or E2B-Traffic-Access-Token)",
            )
            .into_response()
        },
    }
    .apply(routes)
    .with_state(st)
}

/// A context (its process starts with its first execution), with `id` or a
/// new one.
fn new_context(id: Option<&str>, language: &str, cwd: &str) -> Arc<Context> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Arc::new(Context {
        id: id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string),
        seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        language: language.to_string(),
        cwd: cwd.to_string(),
        kernel: Mutex::new(None),
    })
}

fn context_json(c: &Context) -> Value {
    json!({"id": c.id, "language": c.language, "cwd": c.cwd})
}

/// Every language a context can have, by canonical name.
const LANGUAGES: &[&str] = &["python", "javascript", "typescript", "r", "java", "bash"];

/// A language's canonical name, as upstream normalizes it (case and
/// spaces ignored, `js` and `ts` the short names; none is Python).
fn canonical(lang: &str) -> String {
    match lang.trim().to_lowercase().as_str() {
        "" | "python3" => "python".into(),
        "js" => "javascript".into(),
        "ts" => "typescript".into(),
        "sh" => "bash".into(),
        other => other.into(),
    }
}

/// The language a request names, by its canonical name (none: Python), or
/// the 500 upstream answers when no kernel of that language can start. Bash
/// code runs in a long-lived shell of the context's process.
fn language(lang: &str) -> Result<&'static str, Refusal> {
    let name = canonical(lang);
    let Some(known) = LANGUAGES.iter().copied().find(|l| *l == name) else {
        return Err(not_available(&name));
    };
    if engine::available(known) {
        Ok(known)
    } else {
        Err(not_available(known))
    }
}

/// The refusal of a language this sandbox cannot run, naming those it can.
fn not_available(lang: &str) -> Refusal {
    let here: Vec<&str> = LANGUAGES
        .iter()
        .copied()
        .filter(|l| engine::available(l))
        .collect();
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "Failed to create context: no kernel for language {lang:?} in this sandbox (available here: {})",
            here.join(", ")
        ),
    )
}

/// The parts of an `/execute` request: the code, its context (the one it
/// names, else the default context of the language it names, else the
/// default Python one) and the environment variables to set.
async fn execute_request(
    st: &InterpState,
    body: Body,
) -> Result<(String, Arc<Context>, Value), Refusal> {
    let v: Value = axum::body::to_bytes(body, st.app.cfg.max_json_bytes)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "invalid JSON body"))?;
    let Some(code) = v["code"].as_str().map(str::to_string) else {
        return Err(err(StatusCode::BAD_REQUEST, "code is required"));
    };
    let asked = v["language"].as_str().filter(|l| !l.is_empty());
    let named = v["context_id"].as_str().filter(|s| !s.is_empty());
    if asked.is_some() && named.is_some() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "Only one of context_id or language can be provided",
        ));
    }
    let env = v["env_vars"].clone();
    limits::check_env(&env)?;
    let ctx = match (named, asked) {
        (Some(id), _) => st
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("context {id} not found")))?,
        (None, Some(lang)) => default_context(st, language(lang)?)?,
        // (made again, with its id, if it was deleted)
        (None, None) => st
            .lock()
            .entry(st.default_id.to_string())
            .or_insert_with(|| new_context(Some(&st.default_id), "python", DEFAULT_CWD))
            .clone(),
    };
    Ok((code, ctx, env))
}

/// The default context of `lang` (in the user's home), made if there is
/// none (or it was deleted); the default Python one keeps its id.
fn default_context(st: &InterpState, lang: &'static str) -> Result<Arc<Context>, Refusal> {
    let mut defaults = st.defaults.lock();
    let mut all = st.lock();
    if let Some(c) = defaults.get(lang).and_then(|id| all.get(id)) {
        return Ok(c.clone());
    }
    let c = if lang == "python" {
        new_context(Some(&st.default_id), lang, DEFAULT_CWD)
    } else {
        limits::check_room(&all, &st.default_id)?;
        new_context(None, lang, DEFAULT_CWD)
    };
    defaults.insert(lang.to_string(), c.id.clone());
    all.insert(c.id.clone(), c.clone());
    Ok(c)
}

async fn create_context(State(st): State<InterpState>, body: Body) -> Response {
    let v: Value = match axum::body::to_bytes(body, limits::MAX_CREATE_BODY_BYTES)
        .await
        .ok()
        .and_then(|b| {
            if b.is_empty() {
                Some(json!({}))
            } else {
                serde_json::from_slice(&b).ok()
            }
        }) {
        Some(v) => v,
        None => {
            return err(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid JSON body (at most {} bytes)",
                    limits::MAX_CREATE_BODY_BYTES
                ),
            )
            .into_response();
        }
    };
    let lang = match language(v["language"].as_str().unwrap_or("")) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let cwd = v["cwd"].as_str().unwrap_or(DEFAULT_CWD);
    if let Err(r) = limits::check_cwd(cwd) {
        return r.into_response();
    }
    let c = new_context(None, lang, cwd);
    {
        let mut g = st.lock();
        if let Err(r) = limits::check_room(&g, &st.default_id) {
            return r.into_response();
        }
        g.insert(c.id.clone(), c.clone());
    }
    Json(context_json(&c)).into_response()
}

/// Every context, oldest first (the default one first, the newest last).
async fn list_contexts(State(st): State<InterpState>) -> Json<Value> {
    let mut all: Vec<Arc<Context>> = st.lock().values().cloned().collect();
    all.sort_by_key(|c| c.seq);
    Json(Value::Array(all.iter().map(|c| context_json(c)).collect()))
}

async fn delete_context(State(st): State<InterpState>, Path(id): Path<String>) -> Response {
    match st.lock().remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => err(StatusCode::NOT_FOUND, format!("context {id} not found")).into_response(),
    }
}

async fn restart_context(State(st): State<InterpState>, Path(id): Path<String>) -> Response {
    let c = st.lock().get(&id).cloned();
    match c {
        Some(c) => {
            c.kernel.lock().await.take();
            StatusCode::NO_CONTENT.into_response()
        }
        None => err(StatusCode::NOT_FOUND, format!("context {id} not found")).into_response(),
    }
}

/// `POST /execute`: run code in a context (the default Python one when none
/// is named), streaming JSON lines as the code produces output.
async fn execute(State(st): State<InterpState>, body: Body) -> Response {
    let (code, ctx, env) = match execute_request(&st, body).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let env = if env.is_object() { env } else { json!({}) };
    let req = json!({"code": code, "env": env, "language": ctx.language});
    tokio::spawn(run_cell(st, ctx, req, tx));
    crate::channel_response(rx, "application/x-ndjson")
}

/// One JSON line of an `/execute` answer.
fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

/// The `error` line of a kernel that could not run the cell.
fn kernel_error(msg: impl Into<String>) -> Bytes {
    line(&json!({"type": "error", "name": "KernelError", "value": msg.into(), "traceback": ""}))
}

/// Run `req` in `ctx`'s process (started if need be), one cell at a time,
/// sending its output lines to `tx`. A process that has other sandbox-level
/// env vars than the sandbox now has (started before envd's `/init`: a
/// pre-started kernel) takes them in place (a Python one, with no name read
/// only at start-up changed), or is replaced.
async fn run_cell(st: InterpState, ctx: Arc<Context>, mut req: Value, tx: mpsc::Sender<Bytes>) {
    let mut guard = ctx.kernel.lock().await;
    if tx.is_closed() {
        // the client left while an earlier cell ran: this one never starts
        return;
    }
    let env = st.app.sandbox_env.lock().clone();
    if let Some(k) = guard.as_mut().filter(|k| k.env != env) {
        if ctx.language == "python" && engine::env_update_in_place(&k.env, &env) {
            req["sandbox_env"] = json!(env);
            k.env = env.clone();
        } else {
            guard.take();
        }
    }
    if guard.is_none() {
        match Kernel::spawn(&ctx.cwd, env, engine::Flavour::E2b, &ctx.language).await {
            Ok(k) => *guard = Some(k),
            Err(e) => {
                let _ = tx.send(kernel_error(e)).await;
                return;
            }
        }
    }
    let Some(k) = guard.as_mut() else { return };
    if !k.send(&req).await {
        guard.take();
        let msg = "the context's process died; it restarts on the next call";
        let _ = tx.send(kernel_error(msg)).await;
        return;
    }
    if !stream_cell(k, &tx).await {
        guard.take();
        let _ = tx.send(kernel_error("the context's process exited")).await;
    }
}

/// Forward the running cell's events to `tx` until its end (`true`), or
/// until the process exits (`false`). A keepalive line every
/// [`KEEPALIVE`] makes a client that left noticed (writing to it fails);
/// the cell is then interrupted (SIGINT, a `KeyboardInterrupt` in the
/// code), as upstream interrupts its kernel, so the next execution in the
/// context need not wait for it. The rest of its output is read and dropped,
/// keeping the process in step.
async fn stream_cell(k: &mut Kernel, tx: &mpsc::Sender<Bytes>) -> bool {
    let start = tokio::time::Instant::now() + KEEPALIVE;
    let mut keepalive = tokio::time::interval_at(start, KEEPALIVE);
    let mut client_left = false;
    loop {
        let out = tokio::select! {
            l = k.next() => l,
            _ = keepalive.tick(), if !client_left => {
                if tx.send(line(&json!({"type": "keepalive"}))).await.is_err() {
                    client_left = k.interrupt();
                }
                continue;
            }
            () = tx.closed(), if !client_left => {
                client_left = k.interrupt();
                continue;
            }
        };
        let Some(ev) = out else { return false };
        if engine::is_end(&ev) {
            let n = ev["execution_count"].clone();
            let done = json!({"type": "number_of_executions", "execution_count": n});
            let _ = tx.send(line(&done)).await;
            return true;
        }
        let mut ev = e2b_event(ev);
        ev["timestamp"] = json!(chrono::Utc::now().timestamp_micros());
        if !client_left && tx.send(line(&ev)).await.is_err() {
            client_left = k.interrupt();
        }
    }
}

/// E2B's `Result` field of each MIME type it names; others go to `extra`.
const E2B_FIELDS: &[(&str, &str)] = &[
    ("text/plain", "text"),
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("application/pdf", "pdf"),
    ("text/latex", "latex"),
    ("application/json", "json"),
    ("application/javascript", "javascript"),
    // E2B's own types, from the formatters `e2b_kernel.py` adds
    ("e2b/data", "data"),
    ("e2b/chart", "chart"),
];

/// An engine event as the e2b-code-interpreter SDK reads it: a result's
/// MIME bundle as `Result` fields (the text of the cell's value without one
/// pair of enclosing quotes, as upstream's: `bar` for `'bar'`), an error's
/// traceback as one string.
pub fn e2b_event(mut ev: Value) -> Value {
    match ev["type"].as_str() {
        Some("result") => {
            let main = ev["is_main_result"].as_bool().unwrap_or(false);
            let mut out = serde_json::Map::new();
            out.insert("type".into(), json!("result"));
            let mut extra = serde_json::Map::new();
            if let Some(data) = ev["data"].as_object() {
                for (mime, v) in data {
                    match E2B_FIELDS.iter().find(|(m, _)| m == mime) {
                        Some((_, field)) => {
                            out.insert((*field).into(), v.clone());
                        }
                        None => {
                            extra.insert(mime.clone(), v.clone());
                        }
                    }
                }
            }
            if let Some(Value::String(t)) = out.get_mut("text").filter(|_| main) {
                *t = unquote(t).to_string();
            }
            if !extra.is_empty() {
                out.insert("extra".into(), Value::Object(extra));
            }
            out.insert("is_main_result".into(), json!(main));
            Value::Object(out)
        }
        Some("error") => {
            if let Some(tb) = ev["traceback"].as_array() {
                let lines: Vec<&str> = tb.iter().filter_map(Value::as_str).collect();
                ev["traceback"] = json!(lines.join("\n"));
            }
            ev
        }
        _ => ev,
    }
}

/// `text` without one pair of enclosing quotes (`'a'` → `a`).
fn unquote(text: &str) -> &str {
    let b = text.as_bytes();
    if b.len() >= 2 && b[0] == b[b.len() - 1] && (b[0] == b'\'' || b[0] == b'"') {
        &text[1..text.len() - 1]
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_results_carry_their_mime_bundle_as_fields() {
        let ev = json!({"type": "result", "is_main_result": true, "data": {
            "text/plain": "'bar'", "text/html": "<b>x</b>", "image/png": "iVBOR",
            "application/json": {"a": 1}, "application/vnd.custom": "c"}});
        let e = e2b_event(ev);
        assert_eq!(e["text"], "bar");
        assert_eq!(e["html"], "<b>x</b>");
        assert_eq!(e["png"], "iVBOR");
        assert_eq!(e["json"], json!({"a": 1}));
        assert_eq!(e["extra"], json!({"application/vnd.custom": "c"}));
        assert_eq!(e["is_main_result"], true);
        assert!(e.get("data").is_none());
        // display data keeps its text as the kernel gave it
        let d = e2b_event(json!({"type": "result", "is_main_result": false,
            "data": {"text/plain": "'<Figure>'", "image/png": "AA"}}));
        assert_eq!(d["text"], "'<Figure>'");
        assert_eq!(d["is_main_result"], false);
    }

    #[test]
    fn e2b_charts_and_data_are_result_fields() {
        let chart = json!({"type": "bar", "title": null, "elements": [
            {"label": "a", "group": "g", "value": 1.0}]});
        let e = e2b_event(json!({"type": "result", "is_main_result": false, "data": {
            "text/plain": "<Figure>", "image/png": "iVBOR", "e2b/chart": chart.clone()}}));
        assert_eq!(e["chart"], chart);
        assert_eq!(e["png"], "iVBOR");
        assert!(e.get("extra").is_none(), "{e}");
        let d = e2b_event(json!({"type": "result", "is_main_result": true, "data": {
            "text/plain": "   a", "text/html": "<table>", "e2b/data": {"a": [1, 2]}}}));
        assert_eq!(d["data"], json!({"a": [1, 2]}));
        assert!(d.get("extra").is_none(), "{d}");
    }

    #[test]
    fn only_e2b_contexts_start_their_kernel_with_e2bs_formatters() {
        let [_, e2b] = engine::Flavour::E2b.startup_args();
        assert!(e2b.contains("e2b/chart") && e2b.contains("e2b/data"));
        let [_, execd] = engine::Flavour::Execd.startup_args();
        assert!(execd.is_empty());
    }

    #[test]
    fn languages_are_named_as_upstream_normalizes_them() {
        assert_eq!(canonical(""), "python");
        assert_eq!(canonical(" JS "), "javascript");
        assert_eq!(canonical("ts"), "typescript");
        assert_eq!(canonical("R"), "r");
        assert_eq!(canonical("Java"), "java");
        assert_eq!(canonical("sh"), "bash");
        assert_eq!(engine::kernelspec("typescript"), Some("javascript"));
        assert_eq!(engine::kernelspec("r"), Some("ir"));
        assert_eq!(engine::kernelspec("python"), None);
        let Refusal(status, msg) = language("cobol").unwrap_err();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(msg.contains("\"cobol\""), "{msg}");
    }

    #[test]
    fn e2b_errors_have_one_traceback_string() {
        let e = e2b_event(json!({"type": "error", "name": "NameError", "value": "x",
            "traceback": ["a", "b"]}));
        assert_eq!(e["traceback"], "a\nb");
        assert_eq!(e["name"], "NameError");
        assert_eq!(unquote("\"q\""), "q");
        assert_eq!(unquote("'"), "'");
        assert_eq!(unquote("[1]"), "[1]");
    }
}
