//! Rust client of sandpool's public gRPC API (`sandpool.v1.public`), for
//! agent frameworks: [`Client`] connects with an API key, [`Sandbox`] wraps
//! one sandbox (exec, files, lifecycle). The generated stubs are in
//! [`api`] for anything the wrapper does not cover.
//!
//! ```no_run
//! # async fn run() -> Result<(), sandpool_client::Error> {
//! let client = sandpool_client::Client::connect("http://127.0.0.1:8080", Some("key")).await?;
//! let sb = client.create(sandpool_client::Create::pool("default")).await?;
//! let out = sb.exec("echo hello").await?;
//! assert_eq!(out.stdout, b"hello\n");
//! sb.delete().await?;
//! # Ok(()) }
//! ```

mod exec;
mod sandbox;

use std::time::Duration;

pub use exec::{Event, ExecOutput, ExecSession};
pub use sandbox::Sandbox;
/// The generated messages and stubs of `sandpool.v1.public`.
pub use sandpool_proto::public as api;
use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use tonic_types::StatusExt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("bad gateway URL {0}")]
    BadUrl(String),
    #[error("the API key is not a valid header value")]
    BadKey,
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[source] Status),
    #[error("the exec stream ended before the command exited")]
    NoExit,
    #[error("reading or writing a local file: {0}")]
    Io(#[source] std::io::Error),
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Status(s)
    }
}

impl Error {
    /// The gRPC code of a call that failed.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The `ErrorInfo.reason` sandpool gave (e.g. `SANDBOX_NOT_FOUND`).
    pub fn reason(&self) -> Option<String> {
        match self {
            Error::Status(s) => s.get_details_error_info().map(|i| i.reason),
            _ => None,
        }
    }

    /// How long to wait before retrying, when the server said (`RetryInfo`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status(s) => s.get_details_retry_info().and_then(|r| r.retry_delay),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the API key (`authorization: Bearer`) to every call.
#[derive(Clone, Debug)]
pub struct ApiKey(Option<AsciiMetadataValue>);

impl Interceptor for ApiKey {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

pub type Stub = api::sandboxes_client::SandboxesClient<InterceptedService<Channel, ApiKey>>;

/// What a new sandbox is made from, and how.
#[derive(Debug, Clone, Default)]
pub struct Create(pub api::CreateSandboxRequest);

impl Create {
    fn of(source: api::create_sandbox_request::Source) -> Self {
        Create(api::CreateSandboxRequest {
            source: Some(source),
            // a retry of this create never makes a second sandbox
            idempotency_key: uuid::Uuid::new_v4().simple().to_string(),
            ..Default::default()
        })
    }
    /// A warm sandbox of `pool`.
    pub fn pool(pool: &str) -> Self {
        Self::of(api::create_sandbox_request::Source::Pool(pool.into()))
    }
    /// A cold start from OCI image `image`.
    pub fn image(image: &str) -> Self {
        Self::of(api::create_sandbox_request::Source::Image(image.into()))
    }
    /// An E2B-style template id (the pool of its last name part).
    pub fn template(template: &str) -> Self {
        Self::of(api::create_sandbox_request::Source::Template(
            template.into(),
        ))
    }
    /// Expire after `secs` seconds (0: the gateway's default, no expiry).
    pub fn timeout(mut self, secs: u64) -> Self {
        self.0.timeout_seconds = secs;
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.0.env.insert(k.into(), v.into());
        self
    }
    pub fn metadata(mut self, k: &str, v: &str) -> Self {
        self.0.metadata.insert(k.into(), v.into());
        self
    }
}

/// Retries of calls that are safe to repeat.
const ATTEMPTS: u32 = 3;

/// `f` until it succeeds, fails for good, or [`ATTEMPTS`] are used:
/// UNAVAILABLE and RESOURCE_EXHAUSTED are retried after the server's
/// `RetryInfo` (else 200 ms).
pub(crate) async fn retrying<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s)
                if attempt < ATTEMPTS
                    && matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                    ) =>
            {
                let wait = s
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or(Duration::from_millis(200));
                tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
                attempt += 1;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// A connection to a sandpool gateway.
#[derive(Clone)]
pub struct Client {
    stub: Stub,
}

impl Client {
    /// Connect to the gateway at `url` (e.g. `http://127.0.0.1:8080`) with `api_key`.
    pub async fn connect(url: &str, api_key: Option<&str>) -> Result<Self> {
        let key = api_key
            .map(|k| format!("Bearer {k}").parse().map_err(|_| Error::BadKey))
            .transpose()?;
        let connect = |source| Error::Connect {
            url: url.to_string(),
            source,
        };
        let ch = Channel::from_shared(url.to_string())
            .map_err(|e| Error::BadUrl(format!("{url}: {e}")))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(connect)?;
        Ok(Client {
            stub: api::sandboxes_client::SandboxesClient::with_interceptor(ch, ApiKey(key))
                .max_decoding_message_size(64 << 20),
        })
    }

    /// The generated stub, for calls the wrapper does not cover.
    pub fn stub(&self) -> Stub {
        self.stub.clone()
    }

    /// A new sandbox (retried safely: the request carries an idempotency key).
    pub async fn create(&self, c: Create) -> Result<Sandbox> {
        let info = retrying(|| {
            let mut s = self.stub.clone();
            let req = c.0.clone();
            async move { s.create(req).await.map(tonic::Response::into_inner) }
        })
        .await?;
        Ok(Sandbox::new(self.clone(), info))
    }

    /// The caller's sandbox `id`.
    pub async fn get(&self, id: &str) -> Result<Sandbox> {
        let info = retrying(|| {
            let mut s = self.stub.clone();
            let id = id.to_string();
            async move {
                s.get(api::GetSandboxRequest { id })
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await?;
        Ok(Sandbox::new(self.clone(), info))
    }

    /// The caller's live sandboxes.
    pub async fn list(&self) -> Result<Vec<api::Sandbox>> {
        let r = retrying(|| {
            let mut s = self.stub.clone();
            async move { s.list(api::ListSandboxesRequest::default()).await }
        })
        .await?;
        Ok(r.into_inner().sandboxes)
    }

    /// Delete sandbox `id`.
    pub async fn delete(&self, id: &str) -> Result<()> {
        retrying(|| {
            let mut s = self.stub.clone();
            let id = id.to_string();
            async move { s.delete(api::DeleteSandboxRequest { id }).await }
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable(wait_ms: u64) -> Status {
        let mut d = tonic_types::ErrorDetails::with_error_info(
            "UNAVAILABLE",
            "sandpool.io",
            std::collections::HashMap::<String, String>::new(),
        );
        d.set_retry_info(Some(Duration::from_millis(wait_ms)));
        Status::with_error_details(tonic::Code::Unavailable, "restarting", d)
    }

    #[tokio::test]
    async fn unavailable_calls_are_retried_after_the_servers_delay_and_others_are_not() {
        let calls = AtomicU32::new(0);
        let t = std::time::Instant::now();
        let r = retrying(|| async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(unavailable(150)),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(r.expect("second attempt"), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );

        let calls = AtomicU32::new(0);
        let r: Result<()> = retrying(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable(1))
        })
        .await;
        assert_eq!(
            r.expect_err("gives up").reason().as_deref(),
            Some("UNAVAILABLE")
        );
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);

        let calls = AtomicU32::new(0);
        let r: Result<()> = retrying(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::invalid_argument("no"))
        })
        .await;
        assert_eq!(
            r.expect_err("fails").code(),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
