//! The one token check of every HTTP route set (execd, envd, the code
//! interpreter): a middleware parameterised by the header that carries the
//! token, the paths it guards and the shape of a refusal.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use subtle::ConstantTimeEq;

/// Where a route set expects the sandbox token and how it refuses.
#[derive(Clone)]
pub struct TokenGuard {
    /// The (header, token) pairs that pass, any one matching; `None` (no
    /// token configured) lets everything through.
    pub accepted: Option<Arc<[(&'static str, String)]>>,
    /// Whether a request path needs the token.
    pub guards: fn(&str) -> bool,
    /// The answer to a missing or wrong token.
    pub refuse: fn() -> Response,
}

impl TokenGuard {
    /// The pairs `accepted` for a configured runtime `token`: `header`
    /// carrying the token itself, and `traffic_header` (if any) carrying the
    /// sandbox's traffic token derived from it.
    pub fn accepting(
        token: Option<&str>,
        header: &'static str,
        traffic_header: Option<&'static str>,
    ) -> Option<Arc<[(&'static str, String)]>> {
        let t = token?;
        let mut v = vec![(header, t.to_string())];
        if let Some(h) = traffic_header {
            v.push((h, sandpool_proto::auth::traffic_token(t)));
        }
        Some(v.into())
    }

    /// Guard the routes of `router` (a route layer: a request no route
    /// matches reaches the fallback without the check).
    pub fn apply<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        router.route_layer(axum::middleware::from_fn_with_state(self, require_token))
    }
}

async fn require_token(State(g): State<TokenGuard>, req: Request, next: Next) -> Response {
    if (g.guards)(req.uri().path()) && !passes(&g, req.headers()) {
        return (g.refuse)();
    }
    next.run(req).await
}

/// Whether `headers` carry one of the accepted tokens (or none is configured).
fn passes(g: &TokenGuard, headers: &http::HeaderMap) -> bool {
    g.accepted
        .as_deref()
        .is_none_or(|a| a.iter().any(|(h, t)| token_ok(headers, h, Some(t))))
}

/// Whether `header` carries `expected` (constant-time), or no token is configured.
pub fn token_ok(headers: &http::HeaderMap, header: &str, expected: Option<&str>) -> bool {
    match expected {
        None => true,
        Some(e) => headers
            .get(header)
            .is_some_and(|v| constant_time_eq(v.as_bytes(), e.as_bytes())),
    }
}

/// Compare secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        let mut h = http::HeaderMap::new();
        assert!(token_ok(&h, "x-access-token", None));
        assert!(!token_ok(&h, "x-access-token", Some("t")));
        h.insert("x-access-token", http::HeaderValue::from_static("t"));
        assert!(token_ok(&h, "x-access-token", Some("t")));
        assert!(!token_ok(&h, "x-access-token", Some("u")));
    }
}
