//! Sandbox traffic proxy: `/v1/sandboxes/{id}/proxy/{port}/{path}` forwards to
//! the sandbox's `IP:port`, streaming both ways, adding the runtime access
//! token for the runtime port (the caller authenticated with its API key).

use axum::{
    body::Body,
    extract::{Path, Request, State},
    response::Response,
};
use futures_util::TryStreamExt;
use sandpool_proto::v1 as pb;

use crate::{Gateway, error::ApiError, opensandbox::RUNTIME_PORT};

/// Headers that are the connection's, not the request's: never forwarded
/// either way (also used by the sandbox router).
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// How the proxied request authenticates to the sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The caller proved its API key; add the runtime token for the runtime port.
    RuntimeToken,
    /// Pass the caller's headers as they are (E2B: the SDK sends envd's token).
    Passthrough,
}

pub async fn proxy_root(
    State(gw): State<Gateway>,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(gw, id, port, String::new(), req, Auth::RuntimeToken).await
}

pub async fn proxy_path(
    State(gw): State<Gateway>,
    Path((id, port, path)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(gw, id, port, path, req, Auth::RuntimeToken).await
}

/// Forward `req` to `path` on the sandbox's `port`, streaming both ways.
pub async fn forward(
    gw: Gateway,
    id: String,
    port: String,
    path: String,
    req: Request,
    auth: Auth,
) -> Result<Response, ApiError> {
    let port: u32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| ApiError::Invalid(format!("bad port {port}")))?;
    // refused before the claim lookup and before a byte of the body is read
    // (a client sending `Expect: 100-continue` never gets its 100)
    check_length(&gw, req.headers())?;
    let (mut claim, ingress) = gw.get_claim_traffic(&id).await?;
    if claim.state == pb::ClaimState::Paused as i32
        && claim.auto_resume
        // a filesystem-only pause is resumed by an explicit request only
        // (E2B: traffic cannot cold-boot a sandbox)
        && !claim.paused_filesystem_only
        && auth == Auth::Passthrough
    {
        claim = auto_resume(&gw, &id).await?;
    }
    if claim.state == pb::ClaimState::Paused as i32 {
        return Err(match auth {
            // E2B's proxy knows only running sandboxes: a paused one is not found
            Auth::Passthrough => ApiError::SandboxNotFound(id),
            Auth::RuntimeToken => {
                ApiError::Conflict(format!("sandbox {id} is paused; resume it first"))
            }
        });
    }
    let sb = claim
        .sandbox
        .ok_or_else(|| ApiError::Internal("claim without sandbox".into()))?;
    // the API-key route is the owner's; E2B's routing is anyone's, unless
    // the sandbox's traffic is private
    if ingress.private && auth == Auth::Passthrough {
        crate::traffic::check(req.headers(), &sb.access_token, port)?;
    }
    let host = ingress.masked_host(port);
    send(&gw, (&id, &sb), (port, host.as_deref()), &path, req, auth).await
}

/// E2B `autoResume`: paused claim `id` resumes for a fresh run of the TTL it
/// was made with (E2B restarts the creation timeout). A resume racing
/// another request's is fine: whichever resumed it, the claim is read again.
async fn auto_resume(gw: &Gateway, id: &str) -> Result<pb::Claim, ApiError> {
    let resumed = gw.resume_claim(id).await;
    let (c, _) = gw.get_claim_traffic(id).await?;
    let resumed = match resumed {
        Err(e) if c.state == pb::ClaimState::Paused as i32 => return Err(e),
        r => r.is_ok(),
    };
    if resumed && c.ttl_seconds > 0 {
        let ttl_ms = i64::try_from(c.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let at = chrono::Utc::now().timestamp_millis().saturating_add(ttl_ms);
        return gw.renew(id, at).await;
    }
    Ok(c)
}

/// 413 when the declared body is over `gw.max_proxy_body`.
fn check_length(gw: &Gateway, h: &http::HeaderMap) -> Result<(), ApiError> {
    let declared = h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > gw.max_proxy_body => Err(ApiError::TooLarge(format!(
            "request body of {n} bytes exceeds {} bytes",
            gw.max_proxy_body
        ))),
        _ => Ok(()),
    }
}

/// Whether header `name` with `value` carries one of the platform's own
/// credentials (the API key headers of both APIs, or an `Authorization`
/// holding an API key): those never reach code in a sandbox.
fn is_platform_credential(gw: &Gateway, name: &str, value: &http::HeaderValue) -> bool {
    if PLATFORM_KEY_HEADERS.contains(&name) {
        return true;
    }
    if name != "authorization" {
        return false;
    }
    let Ok(v) = value.to_str() else {
        return false;
    };
    let v = v.trim();
    let token = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => v,
    };
    gw.key_ok(token)
}

/// The headers the gateway itself authenticates callers with.
const PLATFORM_KEY_HEADERS: &[&str] = &["open-sandbox-api-key", "x-api-key"];

/// Send `req` to `path` on `port` of claim `id`'s sandbox `sb` and stream
/// the answer back; with `masked_host` (E2B `maskRequestHost`) as its
/// `Host`, its own `Host` in `X-Forwarded-Host`, as upstream's proxy sends it.
async fn send(
    gw: &Gateway,
    (id, sb): (&str, &pb::SandboxInfo),
    (port, masked_host): (u32, Option<&str>),
    path: &str,
    req: Request,
    auth: Auth,
) -> Result<Response, ApiError> {
    let (host_port, named) = crate::opensandbox::sandbox_target(sb, port)?;
    let mut url = format!("http://{}:{host_port}/{path}", sb.ip);
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    let (parts, body) = req.into_parts();
    let mut out = forward_headers(
        gw.http.request(parts.method.clone(), &url),
        &parts.headers,
        |name, v| {
            name == crate::opensandbox::PORT_HEADER
                || (masked_host.is_some() && name == "x-forwarded-host")
                || is_platform_credential(gw, name, v)
        },
    );
    if let Some(host) = masked_host {
        out = out.header(http::header::HOST, host);
        if let Some(orig) = parts.headers.get(http::header::HOST) {
            out = out.header("x-forwarded-host", orig);
        }
    }
    if let Some(p) = named {
        out = out.header(crate::opensandbox::PORT_HEADER, p.to_string());
    }
    if auth == Auth::RuntimeToken && port == RUNTIME_PORT {
        out = out.header("x-execd-access-token", sb.access_token.as_str());
    }
    let mut h = http::HeaderMap::new();
    sandpool_telemetry::inject_current(&mut h);
    for (k, v) in h.iter() {
        out = out.header(k, v);
    }
    // exec latency as the gateway sees it: request sent to response head
    // (commands stream their output after that)
    let exec_api = match path {
        "command" => Some("execd"),
        "process.Process/Start" => Some("envd"),
        "execute" => Some("interpreter"),
        _ => None,
    };
    // a body without a declared length is cut off at the same limit
    let limit = usize::try_from(gw.max_proxy_body).unwrap_or(usize::MAX);
    let t0 = std::time::Instant::now();
    let resp =
        out.body(limited_body(body, limit))
            .send()
            .await
            .map_err(ApiError::sandbox_unreachable(format!(
                "sandbox {id} port {port} unreachable"
            )))?;
    if let Some(api) = exec_api {
        sandpool_telemetry::metrics::observe_exec(api, t0.elapsed());
    }
    stream_back(resp)
}

/// `out` with the request headers `h`, less the hop-by-hop ones and those
/// `skip(name, value)` picks.
pub(crate) fn forward_headers(
    mut out: reqwest::RequestBuilder,
    h: &http::HeaderMap,
    skip: impl Fn(&str, &http::HeaderValue) -> bool,
) -> reqwest::RequestBuilder {
    for (k, v) in h {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || skip(name, v) {
            continue;
        }
        out = out.header(k, v);
    }
    out
}

/// A request body as a stream that fails past `limit` bytes (a body without
/// a declared length is cut off there).
pub(crate) fn limited_body(body: Body, limit: usize) -> reqwest::Body {
    let body = Body::new(http_body_util::Limited::new(body, limit));
    reqwest::Body::wrap_stream(body.into_data_stream())
}

/// The sandbox's answer `resp`, status, end-to-end headers and streamed body.
pub(crate) fn stream_back(resp: reqwest::Response) -> Result<Response, ApiError> {
    let mut r = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            r = r.header(k, v);
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    r.body(Body::from_stream(stream))
        .map_err(ApiError::ProxyResponse)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn gateway() -> Gateway {
        // never dialled: these requests end before a claim lookup
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Gateway::new(
            pb::scheduler_client::SchedulerClient::with_interceptor(ch, Default::default()),
            &["platform-key".to_string()],
        )
    }

    /// A sandbox port that answers with the request headers it got, as JSON.
    async fn echo_upstream() -> u16 {
        let app = axum::Router::new().fallback(|h: http::HeaderMap| async move {
            let m: serde_json::Map<String, serde_json::Value> = h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            axum::Json(m)
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(l, app).await });
        port
    }

    /// The request headers the echo upstream on `port` got for `req`, sent with `auth`.
    async fn headers_seen(gw: &Gateway, port: u16, req: Request, auth: Auth) -> serde_json::Value {
        let sb = pb::SandboxInfo {
            ip: "127.0.0.1".into(),
            ..Default::default()
        };
        let r = send(gw, ("c1", &sb), (u32::from(port), None), "x", req, auth)
            .await
            .expect("proxied");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        serde_json::from_slice(&body).expect("json")
    }

    #[tokio::test]
    async fn platform_credentials_never_reach_the_sandbox() {
        let gw = gateway();
        let port = echo_upstream().await;
        for auth in [Auth::Passthrough, Auth::RuntimeToken] {
            let req = http::Request::post("/x")
                .header("OPEN-SANDBOX-API-KEY", "platform-key")
                .header("X-API-Key", "platform-key")
                .header("Authorization", "Bearer platform-key")
                .header("X-Access-Token", "envd-token")
                .header("X-App", "kept")
                .body(Body::empty())
                .expect("request");
            let seen = headers_seen(&gw, port, req, auth).await;
            for h in ["open-sandbox-api-key", "x-api-key", "authorization"] {
                assert!(seen.get(h).is_none(), "{h} leaked: {seen}");
            }
            assert!(
                !seen.to_string().contains("platform-key"),
                "the key leaked: {seen}"
            );
            // the sandbox's own credentials and other headers pass
            assert_eq!(seen["x-access-token"], "envd-token");
            assert_eq!(seen["x-app"], "kept");
        }
        // an Authorization that is not a platform key is the sandbox's business
        let req = http::Request::get("/x")
            .header("Authorization", "Bearer app-token")
            .body(Body::empty())
            .expect("request");
        let seen = headers_seen(&gw, port, req, Auth::Passthrough).await;
        assert_eq!(seen["authorization"], "Bearer app-token");
    }

    #[tokio::test]
    async fn an_oversized_upload_with_expect_continue_gets_413_before_its_body() {
        let mut gw = gateway();
        gw.max_proxy_body = 1000;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, crate::app(gw)).await });
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /v1/sandboxes/c1/proxy/44772/upload HTTP/1.1\r\nHost: x\r\n\
              OPEN-SANDBOX-API-KEY: platform-key\r\nContent-Length: 1001\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .expect("head");
        // the answer comes without a byte of the body being sent
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "no answer before the body");
        let head = String::from_utf8_lossy(&got);
        assert!(
            head.starts_with("HTTP/1.1 413"),
            "expected 413 first, got {head:?}"
        );
        assert!(!head.contains("100 Continue"), "{head:?}");
    }
}
