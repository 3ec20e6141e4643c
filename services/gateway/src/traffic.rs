//! E2B private traffic (`network.allowPublicTraffic: false`): the ports of
//! such a sandbox answer through the E2B routing (by host or `E2b-Sandbox-*`
//! headers) only to requests carrying its traffic access token in
//! `e2b-traffic-access-token`; anything else gets 403, as upstream's proxy
//! answers. envd's port is not asked for it: envd checks its own token.
//! The token is derived from the sandbox's runtime token
//! ([`sandpool_proto::auth::traffic_token`]), so nothing more is stored; the
//! claim only records that its traffic is private, under a reserved
//! metadata key the gateway sets and never shows.
//!
//! E2B `network.maskRequestHost` is kept the same way (its own reserved
//! key): requests proxied into the sandbox's ports, envd's excepted, carry
//! it as their `Host` (`${PORT}` replaced by the port) and the original
//! `Host` in `X-Forwarded-Host`, as upstream's orchestrator proxy sends them.

use std::collections::HashMap;

use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The reserved claim metadata key marking a sandbox's traffic private.
pub const PRIVATE_KEY: &str = "sandpool.io/private-traffic";
/// The request header carrying the traffic access token.
pub const HEADER: &str = "e2b-traffic-access-token";
/// envd's port: guarded by envd's own token, not by the traffic token.
const ENVD_PORT: u32 = 49983;

/// The reserved claim metadata key holding the sandbox's
/// `network.maskRequestHost`.
pub const MASK_KEY: &str = "sandpool.io/mask-request-host";
/// What a mask's `${PORT}` becomes: the port the request is for (upstream's
/// placeholder).
pub const PORT_PLACEHOLDER: &str = "${PORT}";

/// How requests reach a sandbox's ports: its E2B ingress settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ingress {
    /// `network.allowPublicTraffic: false`: the traffic token is asked for.
    pub private: bool,
    /// `network.maskRequestHost`: the `Host` requests to its ports carry.
    pub mask_request_host: Option<String>,
}

impl Ingress {
    /// The ingress a claim's reserved `metadata` records.
    pub fn of(metadata: &HashMap<String, String>) -> Self {
        Ingress {
            private: is_private(metadata.iter()),
            mask_request_host: metadata.get(MASK_KEY).cloned(),
        }
    }

    /// The reserved metadata recording it (what [`Self::of`] reads back).
    pub fn marks(&self) -> Vec<(&'static str, &str)> {
        let mut m = Vec::new();
        if self.private {
            m.push((PRIVATE_KEY, "true"));
        }
        if let Some(h) = &self.mask_request_host {
            m.push((MASK_KEY, h.as_str()));
        }
        m
    }

    /// The `Host` a request to `port` is sent with instead of its own
    /// (`None`: unmasked). envd's port is never masked, as upstream.
    pub fn masked_host(&self, port: u32) -> Option<String> {
        let mask = self.mask_request_host.as_deref()?;
        (port != ENVD_PORT).then(|| mask.replace(PORT_PLACEHOLDER, &port.to_string()))
    }
}

/// E2B `network.maskRequestHost` of a create's `network`, checked as
/// upstream's API checks it: a host with an optional `:port` (Go's
/// `net.SplitHostPort`, whose port may be anything, e.g. `${PORT}`) whose
/// host is a valid ASCII domain name or address; an empty mask is none.
pub fn mask_request_host(network: Option<&Value>) -> Result<Option<String>, ApiError> {
    let mask = match network.and_then(|n| n.get("maskRequestHost")) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "network.maskRequestHost must be a string, got {other}"
            )));
        }
    };
    let invalid = || ApiError::Invalid(format!("mask request host is not valid: {mask}"));
    let host = split_host_port_optional(mask).ok_or_else(invalid)?;
    // the host as a URL parser (IDNA to ASCII, forbidden code points) reads it
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let url = reqwest::Url::parse(&format!("http://{bracketed}/")).map_err(|_| invalid())?;
    let ascii = url.host_str().unwrap_or_default();
    if !ascii.trim_matches(['[', ']']).eq_ignore_ascii_case(host) {
        if host.is_ascii() {
            return Err(invalid());
        }
        return Err(ApiError::Invalid(format!(
            "mask request host '{host}' is not ASCII. Please use ASCII characters only."
        )));
    }
    Ok(Some(mask.clone()))
}

/// Go's `net.SplitHostPort`, a missing port allowed: the host of
/// `host[:port]` or `[v6][:port]` (`None`: malformed).
fn split_host_port_optional(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if host.contains(['[', ']']) || !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        // `[v6]` alone is a missing port: the whole is the host, as upstream
        return Some(if after.is_empty() { s } else { host });
    }
    match s.rsplit_once(':') {
        None => Some(s),
        Some((host, _)) if host.contains([':', '[', ']']) => None,
        Some((_, port)) if port.contains(['[', ']']) => None,
        Some((host, _)) => Some(host),
    }
}

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

    fn mask(v: Value) -> Result<Option<String>, String> {
        mask_request_host(Some(&serde_json::json!({ "maskRequestHost": v })))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_mask_is_a_host_with_an_optional_port_as_upstream_checks_it() {
        for ok in [
            "custom-host.example.com:${PORT}",
            "custom-host.example.com",
            "Example.COM:8080",
            "localhost:",
            "10.0.0.1:80",
            "[::1]:${PORT}",
        ] {
            assert_eq!(mask(ok.into()), Ok(Some(ok.to_string())), "{ok}");
        }
        assert_eq!(mask("".into()), Ok(None), "empty: no mask");
        assert!(matches!(mask_request_host(None), Ok(None)));
        assert_eq!(mask(Value::Null), Ok(None));
        for bad in ["a:b:c", "[::1", "a b.com", "x/y:80", "[a]b:1"] {
            assert_eq!(
                mask(bad.into()),
                Err(format!("mask request host is not valid: {bad}")),
                "{bad}"
            );
        }
        assert_eq!(
            mask("bücher.de:80".into()),
            Err(
                "mask request host 'bücher.de' is not ASCII. Please use ASCII characters only."
                    .into()
            )
        );
        let e = mask(8080.into()).expect_err("number");
        assert!(
            e.starts_with("network.maskRequestHost must be a string"),
            "{e}"
        );
    }

    #[test]
    fn a_masked_host_names_the_port_and_spares_envd() {
        let i = Ingress {
            private: false,
            mask_request_host: Some("h.example:${PORT}".into()),
        };
        assert_eq!(i.masked_host(8080).as_deref(), Some("h.example:8080"));
        assert_eq!(i.masked_host(49999).as_deref(), Some("h.example:49999"));
        assert_eq!(i.masked_host(ENVD_PORT), None, "envd is never masked");
        assert_eq!(Ingress::default().masked_host(8080), None);
        // what a claim records is what the gateway reads back
        let md: HashMap<String, String> = i
            .marks()
            .into_iter()
            .chain([(PRIVATE_KEY, "true")])
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let back = Ingress::of(&md);
        assert!(back.private);
        assert_eq!(back.mask_request_host, i.mask_request_host);
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
