//! E2B private traffic (`network.allowPublicTraffic: false`): the ports of
//! such a sandbox answer through the E2B routing (by host or `E2b-Sandbox-*`
//! headers) only to requests carrying its traffic access token in
//! `e2b-traffic-access-token`; anything else gets 403, as upstream's proxy
//! answers. envd's port is not asked for it: envd checks its own token.
//! The token is derived from the sandbox's runtime token
//! ([`sandpool_proto::auth::traffic_token`]), so nothing more is stored; the
//! claim only records that its traffic is private, under a reserved
//! metadata key the gateway sets and never shows.

use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The reserved claim metadata key marking a sandbox's traffic private.
pub const PRIVATE_KEY: &str = "sandpool.io/private-traffic";
/// The request header carrying the traffic access token.
pub const HEADER: &str = "e2b-traffic-access-token";
/// envd's port: guarded by envd's own token, not by the traffic token.
const ENVD_PORT: u32 = 49983;

/// Whether a claim's `metadata` marks its traffic private.
pub fn is_private<'a>(mut metadata: impl Iterator<Item = (&'a String, &'a String)>) -> bool {
    metadata.any(|(k, v)| k == PRIVATE_KEY && v == "true")
}

/// The sandbox's traffic token (what E2B calls `trafficAccessToken`).
pub fn token(access_token: &str) -> String {
    sandpool_proto::auth::traffic_token(access_token)
}

/// 403 unless `headers` carry the traffic token of the sandbox whose runtime
/// token is `access_token` (constant-time), for any `port` but envd's.
pub fn check(headers: &http::HeaderMap, access_token: &str, port: u32) -> Result<(), ApiError> {
    if port == ENVD_PORT {
        return Ok(());
    }
    let expected = token(access_token);
    match headers.get(HEADER) {
        Some(got) if bool::from(got.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::Forbidden(format!(
            "wrong {HEADER}: this sandbox's traffic is private"
        ))),
        None => Err(ApiError::Forbidden(format!(
            "missing {HEADER}: this sandbox's traffic is private (network.allowPublicTraffic is false)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ports_need_the_traffic_token_and_envd_does_not() {
        let mut h = http::HeaderMap::new();
        let e = check(&h, "rt", 8000).expect_err("missing");
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        assert!(
            e.to_string().contains("missing e2b-traffic-access-token"),
            "{e}"
        );
        assert!(check(&h, "rt", ENVD_PORT).is_ok(), "envd has its own token");
        // the runtime token is not the traffic token
        h.insert(HEADER, http::HeaderValue::from_static("rt"));
        assert!(
            check(&h, "rt", 8000)
                .expect_err("wrong")
                .to_string()
                .contains("wrong")
        );
        h.insert(HEADER, token("rt").parse().expect("header"));
        assert!(check(&h, "rt", 8000).is_ok());
        assert!(check(&h, "other sandbox", 8000).is_err(), "per sandbox");
    }

    #[test]
    fn only_the_reserved_key_with_true_marks_a_claim_private() {
        let m =
            |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(is_private(m(PRIVATE_KEY, "true").iter()));
        assert!(!is_private(m(PRIVATE_KEY, "false").iter()));
        assert!(!is_private(m("other", "true").iter()));
    }
}
