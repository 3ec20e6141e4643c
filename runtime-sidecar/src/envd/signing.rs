//! Signed `/files` URLs (the SDKs' `download_url` / `upload_url`): a request
//! without `X-Access-Token` passes with
//! `signature=v1_<base64(sha256(path:operation:username:token[:expiration]))>`
//! (unpadded standard base64; `username` empty for the default user) and an
//! optional `signature_expiration` (Unix seconds), as E2B's envd checks them.

use std::collections::HashMap;

use axum::http::HeaderMap;
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD as B64};
use sha2::{Digest, Sha256};

use crate::constant_time_eq;

/// What a signature allows.
#[derive(Debug, Clone, Copy)]
pub(super) enum Operation {
    Read,
    Write,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

/// Why a `/files` request is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// 401, with E2B's message.
    Unauthorized(&'static str),
    /// 400: `signature_expiration` is not an integer.
    BadExpiration(String),
}

/// The signature of `path` for `operation` by `username` with `token`,
/// valid until `expiration` (if any).
pub(super) fn sign(
    path: &str,
    operation: Operation,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut raw = format!("{path}:{}:{username}:{token}", operation.as_str());
    if let Some(e) = expiration {
        raw.push_str(&format!(":{e}"));
    }
    format!("v1_{}", B64.encode(Sha256::digest(raw.as_bytes())))
}

/// Whether a `/files` request with query `q` may `operation` its path: a
/// matching `X-Access-Token`, or a valid, unexpired signature (anything
/// passes when the sandbox has no token).
pub(super) fn check(
    token: Option<&str>,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    operation: Operation,
    now: i64,
) -> Result<(), Refusal> {
    let Some(token) = token else {
        return Ok(());
    };
    let expiration = match q.get("signature_expiration") {
        None => None,
        Some(s) => Some(s.parse::<i64>().map_err(|e| {
            Refusal::BadExpiration(format!(
                "Invalid format for parameter signature_expiration: {e}"
            ))
        })?),
    };
    let header = headers
        .get("x-access-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !header.is_empty() {
        return if constant_time_eq(header, token.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::Unauthorized(
                "access token present in header but does not match",
            ))
        };
    }
    let Some(signature) = q.get("signature") else {
        return Err(Refusal::Unauthorized("missing signature query parameter"));
    };
    let path = q.get("path").map(String::as_str).unwrap_or("");
    let username = q.get("username").map(String::as_str).unwrap_or("");
    let expected = sign(path, operation, username, token, expiration);
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(Refusal::Unauthorized("invalid signature"));
    }
    if expiration.is_some_and(|e| e < now) {
        return Err(Refusal::Unauthorized("signature is already expired"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The SDK's algorithm (e2b `get_signature`), computed by hand for one input.
    #[test]
    fn signatures_are_the_sdks() {
        // e2b.sandbox.signature.get_signature("/a.txt", "read", None, "tok")
        assert_eq!(
            sign("/a.txt", Operation::Read, "", "tok", None),
            "v1_EV/DvoS4mUiocl2RlxlZEymBC6EMYhkDL6kq8QBzt6g"
        );
        assert_ne!(
            sign("/a.txt", Operation::Write, "", "tok", None),
            sign("/a.txt", Operation::Read, "", "tok", None)
        );
    }

    #[test]
    fn checks_header_then_signature_then_expiry() {
        let h = HeaderMap::new();
        let read = Operation::Read;
        let sig = sign("a", read, "", "tok", Some(100));
        let ok = q(&[
            ("path", "a"),
            ("signature", &sig),
            ("signature_expiration", "100"),
        ]);
        assert_eq!(check(Some("tok"), &h, &ok, read, 100), Ok(()));
        assert_eq!(
            check(Some("tok"), &h, &ok, read, 101),
            Err(Refusal::Unauthorized("signature is already expired"))
        );
        assert_eq!(
            check(Some("tok"), &h, &ok, Operation::Write, 0),
            Err(Refusal::Unauthorized("invalid signature"))
        );
        assert_eq!(
            check(Some("tok"), &h, &q(&[("path", "a")]), read, 0),
            Err(Refusal::Unauthorized("missing signature query parameter"))
        );
        assert_eq!(check(None, &h, &q(&[]), read, 0), Ok(()));
        let mut wrong = HeaderMap::new();
        wrong.insert("x-access-token", "nope".parse().unwrap());
        assert_eq!(
            check(Some("tok"), &wrong, &ok, read, 0),
            Err(Refusal::Unauthorized(
                "access token present in header but does not match"
            ))
        );
        let bad = q(&[("signature", &sig), ("signature_expiration", "x")]);
        assert!(matches!(
            check(Some("tok"), &h, &bad, read, 0),
            Err(Refusal::BadExpiration(_))
        ));
    }
}
