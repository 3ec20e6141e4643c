//! `sandpool-runtime`: the daemon inside every sandbox.
//!
//! One TCP port (44772 by default) serves both
//! * the OpenSandbox **execd** HTTP API ([`http_api`]), and
//! * the **`sandpool.v1.Runtime`** gRPC service ([`grpc`]),
//!
//! told apart by path (`/sandpool.v1.Runtime/*` is gRPC). The shared pieces are
//! the [`commands`] registry, [`files`] operations, multipart [`upload`], the
//! [`entrypoint`] (process injection) and the [`events`] framing.

pub mod asb;
pub mod auth;
pub mod commands;
pub mod entrypoint;
pub mod envd;
pub mod error;
pub mod events;
pub mod files;
pub mod grpc;
pub mod http_api;
pub mod interp;
pub mod opensandbox_bootstrap;
pub mod ports;
pub mod privilege;
pub mod pty;
pub mod request_id;
pub mod sandboxd;
pub mod session;
pub mod sysmetrics;
pub mod upload;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::Router;
use tower_http::trace::TraceLayer;

pub use auth::{constant_time_eq, token_ok};
pub use error::{Result, RuntimeError};

/// The default runtime port (execd's port).
pub const DEFAULT_PORT: u16 = 44772;

#[derive(Debug, Clone)]
pub struct Config {
    /// Required `X-EXECD-ACCESS-TOKEN` (and gRPC `x-execd-access-token`), if any.
    pub access_token: Option<String>,
    /// Where background command logs and other runtime state live.
    pub data_dir: PathBuf,
    /// Largest JSON request body.
    pub max_json_bytes: usize,
    pub upload: upload::UploadLimits,
    /// Finished commands kept for status/log queries.
    pub max_finished_commands: usize,
    /// Interval of `ping` events on command streams.
    pub ping_interval: Duration,
    /// The home directory relative envd paths resolve against; `None` reads
    /// `$HOME` (falling back to `/root`). Tests point it at a tempdir.
    pub home: Option<PathBuf>,
    /// envd polled watchers (`CreateWatcher`), and separately open
    /// `WatchDir` streams, per runtime: each is an inotify instance (the
    /// kernel's default is 128 per user).
    pub max_watchers: usize,
    /// Whether the code interpreter starts its default Python context's
    /// kernel when the runtime starts (while the sandbox waits warm).
    pub interp_prestart: interp::Prestart,
}

impl Config {
    /// The home directory relative envd paths resolve against.
    pub fn home(&self) -> String {
        self.home
            .as_ref()
            .map(|h| h.to_string_lossy().into_owned())
            .or_else(|| std::env::var("HOME").ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/root".into())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            access_token: None,
            data_dir: std::env::temp_dir().join("sandpool-runtime"),
            max_json_bytes: 10 << 20,
            upload: upload::UploadLimits::default(),
            max_finished_commands: 1024,
            ping_interval: Duration::from_secs(3),
            home: None,
            max_watchers: 32,
            interp_prestart: interp::Prestart::Off,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub commands: Arc<commands::CommandRegistry>,
    pub entrypoint: Arc<entrypoint::Entrypoint>,
    pub metrics: Arc<sysmetrics::MetricsSampler>,
    pub started: Instant,
    /// Milliseconds after `started` of the last request served (activity).
    pub last_activity_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Set by the first request that is not a health check.
    pub used: Arc<std::sync::atomic::AtomicBool>,
    /// The sandbox's env vars (E2B `envVars`, set through envd's `/init`;
    /// OpenSandbox create `env`, delivered with the entrypoint's inject):
    /// execd commands, envd processes and code interpreter contexts start
    /// with them.
    pub sandbox_env: Arc<parking_lot::Mutex<std::collections::HashMap<String, String>>>,
    /// execd bash sessions (`/session`).
    pub sessions: Arc<session::Sessions>,
    /// execd code contexts (`/code`).
    pub code: Arc<interp::execd::CodeContexts>,
}

impl AppState {
    pub fn new(cfg: Config) -> Result<Self> {
        let log_dir = cfg.data_dir.join("commands");
        let sessions_dir = cfg.data_dir.join("sessions");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| RuntimeError::io(&log_dir.to_string_lossy(), e))?;
        Ok(AppState {
            commands: Arc::new(commands::CommandRegistry::new(
                log_dir,
                cfg.max_finished_commands,
            )),
            cfg: Arc::new(cfg),
            entrypoint: Arc::new(entrypoint::Entrypoint::default()),
            metrics: Arc::new(sysmetrics::MetricsSampler::default()),
            started: Instant::now(),
            last_activity_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            used: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            sandbox_env: Arc::default(),
            sessions: Arc::new(session::Sessions::new(sessions_dir)),
            code: Arc::default(),
        })
    }

    /// A command's environment: the sandbox's env vars, overridden by the
    /// request's own.
    pub fn with_sandbox_env(
        &self,
        request: std::collections::HashMap<String, String>,
    ) -> std::collections::HashMap<String, String> {
        let mut env = self.sandbox_env.lock().clone();
        env.extend(request);
        env
    }

    /// Note a request (anything but a health check) as activity.
    pub fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
        self.used.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the sandbox has been idle: 0 while a command runs (the
    /// entrypoint, a long-lived process by nature, does not count).
    pub fn idle_ms(&self) -> u64 {
        if self.commands.running_count() > 0 {
            return 0;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(
            self.last_activity_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Kill every process the runtime started (shutdown).
    pub fn kill_all(&self) {
        self.commands.kill_all();
        self.entrypoint.kill();
    }
}

/// Every request but a health check counts as activity (idle auto-pause).
async fn note_activity(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !req.uri().path().ends_with("/Health") {
        state.touch();
    }
    next.run(req).await
}

/// A request's tracing span, named for the service it reaches.
type MakeSpan = fn(&http::Request<axum::body::Body>) -> tracing::Span;

/// `router` with activity tracking and a tracing span per request (made by
/// `make_span`) that continues the caller's W3C trace.
fn traced(router: Router, state: AppState, make_span: MakeSpan) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(move |req: &http::Request<_>| {
        let span = make_span(req);
        sandpool_telemetry::extract_parent(&span, req.headers());
        span
    });
    router
        .layer(axum::middleware::from_fn_with_state(state, note_activity))
        .layer(trace)
}

/// The whole service: execd HTTP routes + gRPC, with a tracing span per
/// request that continues the caller's W3C trace.
pub fn app(state: AppState) -> Router {
    use sandpool_proto::v1::runtime_server::RuntimeServer;
    use tonic::server::NamedService;
    let grpc = tonic::service::Routes::new(RuntimeServer::with_interceptor(
        grpc::RuntimeService::new(state.clone()),
        grpc::auth_interceptor(state.cfg.access_token.clone()),
    ))
    .prepare();
    let name = <RuntimeServer<grpc::RuntimeService> as NamedService>::NAME;
    let grpc_path = format!("/{name}/{{*method}}");
    let router = http_api::router(state.clone()).route_service(&grpc_path, grpc);
    traced(
        router,
        state,
        |req| tracing::info_span!("runtime.request", method = %req.method(), path = %req.uri().path()),
    )
}

/// The E2B envd service (port 49983), sharing the runtime's state and token.
pub fn envd_app(state: AppState) -> Router {
    let router = envd::router(envd::EnvdState {
        app: state.clone(),
        envd: envd::Envd::default(),
    });
    traced(
        router,
        state,
        |req| tracing::info_span!("envd.request", method = %req.method(), path = %req.uri().path()),
    )
}

/// The agent-sandbox runtime API (port 8888), untokened by upstream's
/// design, with relative paths under `root`.
pub fn asb_app(state: AppState, root: PathBuf) -> Router {
    let router = asb::router(asb::AsbState {
        app: state.clone(),
        root,
    });
    traced(
        router,
        state,
        |req| tracing::info_span!("asb.request", method = %req.method(), path = %req.uri().path()),
    )
}

/// sandboxd's REST files API (port 8080), untokened by upstream's design,
/// its paths confined to the state's root.
pub fn sandboxd_rest_app(st: sandboxd::SandboxdState) -> Router {
    let state = st.app.clone();
    traced(
        sandboxd::rest::router(st),
        state,
        |req| tracing::info_span!("sandboxd.request", method = %req.method(), path = %req.uri().path()),
    )
}

/// sandboxd's gRPC `process.v1.ProcessService` (port 9090), untokened by
/// upstream's design.
pub fn sandboxd_grpc_app(st: sandboxd::SandboxdState) -> Router {
    use sandpool_proto::sandboxd_process::process_service_server::ProcessServiceServer;
    use tonic::server::NamedService;
    let state = st.app.clone();
    let grpc = tonic::service::Routes::new(ProcessServiceServer::new(
        sandboxd::process::ProcessSvc::new(st),
    ))
    .prepare();
    let name = <ProcessServiceServer<sandboxd::process::ProcessSvc> as NamedService>::NAME;
    let router = Router::new().route_service(&format!("/{name}/{{*method}}"), grpc);
    traced(
        router,
        state,
        |req| tracing::info_span!("sandboxd.grpc", path = %req.uri().path()),
    )
}

/// The code interpreter (port 49999), sharing the runtime's token.
pub fn interp_app(state: AppState) -> Router {
    let router = interp::router(interp::InterpState::new(state.clone()));
    traced(
        router,
        state,
        |req| tracing::info_span!("interp.request", method = %req.method(), path = %req.uri().path()),
    )
}

/// Serve `app` on `listener` (TCP_NODELAY) until `shutdown` resolves.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serve on `listener` until `shutdown` resolves; then kill what was started.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small event frames must not wait for Nagle + delayed ACK (~40 ms).
    let res = serve_app(listener, app(state.clone()), shutdown).await;
    state.kill_all();
    res
}

/// A streaming body fed by a channel of frames.
fn channel_body(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> axum::body::Body {
    use futures_util::StreamExt;
    axum::body::Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>),
    )
}

/// A `content_type` answer streaming the frames sent on `rx`.
fn channel_response(
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    content_type: &'static str,
) -> axum::response::Response {
    let mut r = axum::response::Response::new(channel_body(rx));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Run blocking filesystem work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::failed("worker failed", e))?
}
