use std::net::Ipv4Addr;

use sandpool_core::credential_vault::{CreateRequest, Vault};
use sandpool_core::egress::{EgressAction, EgressPolicy, EgressRule};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Always the same destination (a loopback test has no DNAT).
struct Fixed(SocketAddr);

impl Destination for Fixed {
    fn original(&self, _: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}

/// A server that answers every request with the request head it got as
/// its body, and the `Authorization` it got in an `X-Echo` header.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let at = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("-")
                    .to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-echo: {auth}\r\nconnection: close\r\n\r\n{head}",
                    head.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    at
}

fn vault(port: u16) -> Vault {
    let policy = EgressPolicy {
        default_action: EgressAction::Deny,
        rules: vec![EgressRule {
            action: EgressAction::Allow,
            cidr: "target.test".into(),
            port: 0,
        }],
    };
    let req: CreateRequest = serde_json::from_value(json!({
        "credentials": [{"name": "t", "source": {"value": "real-secret"}}],
        "bindings": [{"name": "b", "match": {"schemes": ["http"], "ports": [port],
            "hosts": ["target.test"], "methods": ["GET"], "paths": ["/v1/*"]},
            "auth": {"type": "bearer", "credential": "t"}}]
    }))
    .expect("request");
    let mut v = Vault::default();
    v.create(req, &policy).expect("create");
    v
}

async fn get(proxy: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(proxy).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: target.test\r\nAuthorization: Bearer fake\r\nConnection: close\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out).await;
    out
}

#[tokio::test]
async fn a_matching_request_gets_the_secret_and_the_response_hides_it() {
    let up = echo_server().await;
    let p = CredProxy::start((Ipv4Addr::LOCALHOST, 0).into(), Box::new(Fixed(up)))
        .await
        .expect("start");
    p.set_client("sb1", IpAddr::V4(Ipv4Addr::LOCALHOST), vault(up.port()));
    assert!(p.serves("sb1"));

    let hit = get(p.local_addr(), "/v1/models?x=1").await;
    assert!(hit.starts_with("HTTP/1.1 200"), "{hit}");
    assert!(hit.contains("authorization: Bearer real-secret"), "{hit}");
    assert!(
        !hit.contains("Bearer fake"),
        "the client's header is replaced: {hit}"
    );
    assert!(hit.contains("x-echo: [REDACTED]"), "{hit}");

    let miss = get(p.local_addr(), "/other").await;
    assert!(miss.contains("authorization: Bearer fake"), "{miss}");
    assert!(!miss.contains("real-secret"), "{miss}");

    // a source without a vault is closed unanswered
    p.remove_client("sb1");
    assert!(!p.serves("sb1"));
    assert_eq!(get(p.local_addr(), "/v1/models").await, "");
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let up = echo_server().await;
    let p = CredProxy::start((Ipv4Addr::LOCALHOST, 0).into(), Box::new(Fixed(up)))
        .await
        .expect("start");
    p.set_client("sb1", IpAddr::V4(Ipv4Addr::LOCALHOST), vault(up.port()));
    let mut c = TcpStream::connect(p.local_addr()).await.expect("connect");
    c.write_all(b"GET /v1/x HTTP/1.1\r\nHost: target.test\r\n\r\n")
        .await
        .expect("write");
    c.shutdown().await.expect("half close, as nc does");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out).await;
    assert!(out.contains("authorization: Bearer real-secret"), "{out:?}");
}
