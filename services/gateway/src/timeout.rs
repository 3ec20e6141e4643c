//! Sandbox timeouts asked for through either API: whole positive seconds,
//! at most `Gateway::max_timeout_s`, turned into expiry times without overflow.

use crate::{Gateway, error::ApiError};

impl Gateway {
    /// A create's timeout in seconds (0: none asked for, which stays 0);
    /// 400 naming `field` over the maximum.
    pub fn check_timeout(&self, field: &str, secs: u64) -> Result<u64, ApiError> {
        if secs > self.max_timeout_s {
            return Err(ApiError::Invalid(format!(
                "{field} must be at most {} seconds, got {secs}",
                self.max_timeout_s
            )));
        }
        Ok(secs)
    }

    /// The expiry of a timeout change made at `now_ms` for `secs` seconds:
    /// 400 naming `field` unless positive, and at most the maximum (a longer
    /// one is cut to it, as E2B cuts one to its plan's longest).
    pub fn timeout_expiry(&self, field: &str, now_ms: i64, secs: i64) -> Result<i64, ApiError> {
        let secs = u64::try_from(secs)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| ApiError::Invalid(format!("{field} must be positive, got {secs}")))?;
        Ok(expiry_ms(now_ms, secs.min(self.max_timeout_s)))
    }

    /// 400 naming `field` when `at_ms` is more than the maximum after `now_ms`.
    pub fn check_expiry(&self, field: &str, now_ms: i64, at_ms: i64) -> Result<i64, ApiError> {
        if at_ms > expiry_ms(now_ms, self.max_timeout_s) {
            return Err(ApiError::Invalid(format!(
                "{field} must be at most {} seconds from now",
                self.max_timeout_s
            )));
        }
        Ok(at_ms)
    }
}

/// A JSON timeout in whole seconds (E2B bodies), refused with the field's
/// kind named when it is a fraction or out of `i64`'s range.
pub fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::{Deserialize, de::Error};
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            D::Error::custom(format!(
                "timeout must be a whole number of seconds, got {v}"
            ))
        }),
    }
}

/// `now_ms` plus `secs` seconds, saturating instead of overflowing.
pub fn expiry_ms(now_ms: i64, secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).map_or(i64::MAX, |d| now_ms.saturating_add(d))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    fn gateway() -> Gateway {
        // never dialled: every request here is refused before the scheduler
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Gateway::new(
            sandpool_proto::v1::scheduler_client::SchedulerClient::with_interceptor(
                ch,
                Default::default(),
            ),
            &["k1".to_string()],
        )
    }

    async fn post(app: &axum::Router, path: &str, key: (&str, &str), body: &str) -> (u16, Value) {
        let req = http::Request::post(path)
            .header(key.0, key.1)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .expect("request");
        let r = app.clone().oneshot(req).await.expect("response");
        let status = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn huge_and_negative_create_timeouts_are_400_naming_the_field() {
        let app = crate::app(gateway());
        let os = ("OPEN-SANDBOX-API-KEY", "k1");
        let e2b = ("X-API-Key", "k1");
        for t in [
            "1000000000000000000",
            "1e18",
            "99999999999999",
            "86401",
            "-1",
            "0",
        ] {
            let body = format!(r#"{{"image":{{"uri":"busybox"}},"timeout":{t}}}"#);
            let (status, v) = post(&app, "/v1/sandboxes", os, &body).await;
            assert_eq!(status, 400, "OpenSandbox timeout {t}: {v}");
            assert!(
                v["message"].as_str().unwrap_or("").contains("timeout"),
                "{v}"
            );
            let body = format!(r#"{{"snapshotId":"ck","timeout":{t}}}"#);
            assert_eq!(
                post(&app, "/v1/sandboxes", os, &body).await.0,
                400,
                "restore {t}"
            );
            let body = format!(r#"{{"templateID":"base","timeout":{t}}}"#);
            let (status, v) = post(&app, "/sandboxes", e2b, &body).await;
            assert_eq!(status, 400, "E2B timeout {t}: {v}");
            assert!(
                v["message"].as_str().unwrap_or("").contains("timeout"),
                "{v}"
            );
        }
    }

    #[tokio::test]
    async fn a_renewal_past_the_maximum_is_refused_naming_expires_at() {
        let gw = gateway();
        let now = 1_700_000_000_000;
        let year_9999 = 253_402_214_400_000;
        let e = gw
            .check_expiry("expiresAt", now, year_9999)
            .expect_err("past the max");
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("expiresAt"), "{e}");
        let max = now + 86_400_000;
        assert_eq!(gw.check_expiry("expiresAt", now, max).ok(), Some(max));
        assert!(gw.check_expiry("expiresAt", i64::MAX, i64::MAX).is_ok());
    }

    #[tokio::test]
    async fn timeout_changes_are_positive_capped_and_never_overflow() {
        let gw = gateway();
        let now = 1_700_000_000_000;
        let max = now + 86_400_000;
        for secs in [99_999_999_999_999, i64::MAX, 86_401] {
            assert_eq!(
                gw.timeout_expiry("timeout", now, secs).ok(),
                Some(max),
                "{secs}"
            );
        }
        assert_eq!(
            gw.timeout_expiry("timeout", now, 60).ok(),
            Some(now + 60_000)
        );
        for secs in [0, -1, i64::MIN] {
            let e = gw
                .timeout_expiry("duration", now, secs)
                .expect_err("refused");
            assert!(e.to_string().contains("duration"), "{e}");
        }
        assert_eq!(expiry_ms(i64::MAX - 1, u64::MAX), i64::MAX);
        assert_eq!(expiry_ms(now, u64::MAX / 999), i64::MAX);
    }
}
