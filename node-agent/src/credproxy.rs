//! The node's credential proxy (OpenSandbox's Credential Vault): plain
//! HTTP (TCP port 80) from a sandbox that has a vault is redirected by its
//! netns table ([`crate::egress::ruleset_full`]) to one listener on the
//! bridge address. A connection's source address names the sandbox (its
//! processes have no raw sockets to forge it); each request is matched
//! against that sandbox's vault ([`Vault::select`]): the one matching
//! binding's headers are set (any of those names the client sent are
//! dropped first), several matching at the same precedence are answered
//! 403, none leaves the request as it is. The request then goes to the
//! connection's original destination (`SO_ORIGINAL_DST`, never the `Host`
//! header, so the egress policy the sandbox's table already applied to that
//! address holds), and secret values in the response's headers are
//! replaced by `[REDACTED]`. A source that is no registered sandbox is
//! closed at once. Secrets live in this process's memory only; nothing
//! here logs a header value.
//!
//! HTTPS is not intercepted (no TLS man-in-the-middle): bindings whose
//! schemes include `https` are refused by the gateway.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Incoming, header::HeaderValue};
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use sandpool_core::credential_vault::{RequestFacts, Selection, Vault};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::error::{AgentError, Result};

/// TCP port of the credential proxy on the bridge address.
pub const PORT: u16 = 15380;
/// The sandbox port whose traffic is redirected (plain HTTP).
pub const HTTP_PORT: u16 = 80;

type Body = BoxBody<Bytes, hyper::Error>;

/// Where an accepted connection was going before its redirect.
pub trait Destination: Send + Sync + 'static {
    fn original(&self, s: &TcpStream) -> io::Result<SocketAddr>;
}

/// The kernel's record of a DNAT-ed connection (`SO_ORIGINAL_DST`, IPv4).
pub struct OriginalDst;

impl Destination for OriginalDst {
    fn original(&self, s: &TcpStream) -> io::Result<SocketAddr> {
        let a = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::OriginalDst)
            .map_err(io::Error::from)?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        Ok(SocketAddr::from((ip, u16::from_be(a.sin_port))))
    }
}

#[derive(Clone)]
struct Client {
    id: String,
    vault: Arc<Vault>,
}

struct Shared {
    clients: RwLock<HashMap<IpAddr, Client>>,
    dest: Box<dyn Destination>,
    listen: SocketAddr,
}

/// The running proxy; it stops when dropped.
pub struct CredProxy {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for CredProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CredProxy {
    /// Listen on `at`; `dest` finds each connection's original destination.
    pub async fn start(at: SocketAddr, dest: Box<dyn Destination>) -> Result<Self> {
        let listener = TcpListener::bind(at)
            .await
            .map_err(|e| AgentError::network(format!("binding the credential proxy on {at}"), e))?;
        let listen = listener
            .local_addr()
            .map_err(|e| AgentError::network("credential proxy address", e))?;
        let shared = Arc::new(Shared {
            clients: RwLock::default(),
            dest,
            listen,
        });
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, peer)) => {
                        tokio::spawn(serve(Arc::clone(&s), conn, peer));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "credential proxy accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(CredProxy { shared, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Serve sandbox `id` (source address `ip`) with `vault`.
    pub fn set_client(&self, id: &str, ip: IpAddr, vault: Vault) {
        let mut g = self.shared.clients.write();
        g.retain(|_, c| c.id != id);
        g.insert(
            ip,
            Client {
                id: id.to_string(),
                vault: Arc::new(vault),
            },
        );
    }

    /// Stop serving sandbox `id`.
    pub fn remove_client(&self, id: &str) {
        self.shared.clients.write().retain(|_, c| c.id != id);
    }

    /// Whether sandbox `id` has a vault here (its port 80 is redirected).
    pub fn serves(&self, id: &str) -> bool {
        self.shared.clients.read().values().any(|c| c.id == id)
    }
}

async fn serve(s: Arc<Shared>, conn: TcpStream, peer: SocketAddr) {
    let Some(client) = s.clients.read().get(&peer.ip()).cloned() else {
        return; // not a sandbox with a vault: closed
    };
    let dest = match s.dest.original(&conn) {
        Ok(d) if d != s.listen => d,
        _ => return,
    };
    let svc = hyper::service::service_fn(move |req| forward(Arc::clone(&client.vault), dest, req));
    // a client that shuts its write side after the request (`nc`) still
    // gets the answer
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(conn), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(sandbox = %peer, error = %e, "credential proxy connection ended");
    }
}

fn plain(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(msg.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

/// What the vault says about `req`: the headers set, or an answer instead.
fn apply(vault: &Vault, dest: SocketAddr, req: &mut Request<Incoming>) -> Option<Response<Body>> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
    .to_string();
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    let facts = RequestFacts {
        scheme: "http",
        host: &host,
        port: dest.port(),
        method: &method,
        path: &path,
    };
    match vault.select(&facts) {
        Selection::None => None,
        Selection::Ambiguous => Some(plain(
            StatusCode::FORBIDDEN,
            "credential binding ambiguous\n",
        )),
        Selection::Inject { headers, .. } => {
            for h in headers {
                let (Ok(name), Ok(value)) = (
                    hyper::header::HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_str(h.value.expose()),
                ) else {
                    return Some(plain(
                        StatusCode::BAD_GATEWAY,
                        "credential value is not a valid header value\n",
                    ));
                };
                req.headers_mut().remove(&name);
                let mut value = value;
                value.set_sensitive(true);
                req.headers_mut().insert(name, value);
            }
            None
        }
    }
}

async fn forward(
    vault: Arc<Vault>,
    dest: SocketAddr,
    mut req: Request<Incoming>,
) -> std::result::Result<Response<Body>, hyper::Error> {
    if let Some(answer) = apply(&vault, dest, &mut req) {
        return Ok(answer);
    }
    let Ok(up) = TcpStream::connect(dest).await else {
        return Ok(plain(StatusCode::BAD_GATEWAY, "upstream unreachable\n"));
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = send.send_request(req).await?;
    let redactions = vault.redactions();
    for v in resp.headers_mut().values_mut() {
        let Ok(text) = v.to_str() else { continue };
        if redactions.iter().any(|r| text.contains(r.as_str())) {
            let mut t = text.to_string();
            for r in &redactions {
                t = t.replace(r.as_str(), "[REDACTED]");
            }
            if let Ok(nv) = HeaderValue::from_str(&t) {
                *v = nv;
            }
        }
    }
    Ok(resp.map(BodyExt::boxed))
}

#[cfg(test)]
mod tests;
