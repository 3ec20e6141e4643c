//! Service-to-service authentication: every gRPC call between sandpool's own
//! services (gateway → scheduler → node agent, CLI → scheduler) carries a
//! shared bearer token, checked in constant time by the server. Sandbox
//! runtimes are not part of this: each has its own per-sandbox token
//! ([`crate::ACCESS_TOKEN_METADATA`]).

use subtle::ConstantTimeEq;
use tonic::{
    Request, Status, metadata::AsciiMetadataValue, service::Interceptor, transport::Channel,
};

/// The metadata key (`authorization: Bearer <token>`).
pub const SERVICE_TOKEN_METADATA: &str = "authorization";
/// Shortest token accepted (a generated one has 64 hex digits).
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("service token: {0}")]
pub struct TokenError(String);

fn header_value(token: &str) -> Result<AsciiMetadataValue, TokenError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError(format!(
            "must have at least {MIN_TOKEN_LEN} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError("must be printable ASCII without spaces".into()));
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| TokenError("not a valid header value".into()))
}

/// Client side: adds the token to every call (none: adds nothing).
#[derive(Clone, Debug, Default)]
pub struct ServiceToken {
    value: Option<AsciiMetadataValue>,
}

impl ServiceToken {
    pub fn new(token: Option<&str>) -> Result<Self, TokenError> {
        Ok(ServiceToken {
            value: token.map(header_value).transpose()?,
        })
    }
}

impl Interceptor for ServiceToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            req.metadata_mut().insert(SERVICE_TOKEN_METADATA, v.clone());
        }
        Ok(req)
    }
}

/// A channel whose calls carry the service token.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, ServiceToken>;

/// Server side: refuses calls without the token (UNAUTHENTICATED). With no
/// token configured every call passes (tests, a lone process on loopback).
#[derive(Clone, Debug, Default)]
pub struct RequireToken {
    expected: Option<AsciiMetadataValue>,
}

impl RequireToken {
    pub fn new(token: Option<&str>) -> Result<Self, TokenError> {
        Ok(RequireToken {
            expected: token.map(header_value).transpose()?,
        })
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        match req.metadata().get(SERVICE_TOKEN_METADATA) {
            // equal in time independent of where the tokens differ
            Some(got) if bool::from(got.as_bytes().ct_eq(expected.as_bytes())) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong service token")),
            None => Err(Status::unauthenticated(
                "missing service token (authorization: Bearer …)",
            )),
        }
    }
}

/// The sandbox's traffic access token (E2B `trafficAccessToken`), derived
/// from its runtime access token: the gateway's proxy asks for it on the
/// ports of a sandbox whose traffic is private, and the code interpreter
/// takes it instead of the runtime token. Knowing it gives no access to
/// envd or execd (a hash does not reveal its input), and it changes with
/// the runtime token (every claim of a warm sandbox gets a new one).
pub fn traffic_token(access_token: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"sandpool traffic access token v1\n");
    h.update(access_token.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traffic_token_is_distinct_stable_and_per_runtime_token() {
        let t = traffic_token("runtime-token-1");
        assert_eq!(t, traffic_token("runtime-token-1"));
        assert_ne!(t, traffic_token("runtime-token-2"));
        assert_ne!(t, "runtime-token-1");
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    fn sent(token: Option<&str>) -> Request<()> {
        ServiceToken::new(token)
            .unwrap()
            .call(Request::new(()))
            .unwrap()
    }

    #[test]
    fn the_right_token_passes_others_are_unauthenticated() {
        let mut server = RequireToken::new(Some("0123456789abcdef0123")).unwrap();
        assert!(server.call(sent(Some("0123456789abcdef0123"))).is_ok());
        let wrong = server.call(sent(Some("0123456789abcdef0124"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = server.call(sent(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("missing"));
    }

    #[test]
    fn no_token_configured_means_open() {
        assert!(RequireToken::default().call(sent(None)).is_ok());
        assert!(sent(None).metadata().get(SERVICE_TOKEN_METADATA).is_none());
    }

    #[test]
    fn weak_or_unprintable_tokens_are_refused() {
        assert!(ServiceToken::new(Some("short")).is_err());
        assert!(RequireToken::new(Some("has a space in the middle")).is_err());
        assert!(ServiceToken::new(Some("ünïcödé-is-not-ascii-at-all")).is_err());
    }
}
