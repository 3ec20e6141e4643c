//! Upstream's Pool annotation `sandbox.opensandbox.io/restart-config` for
//! `recycleStrategy: Restart`: JSON `{"blacklist": [container names],
//! "retryInterval": Go duration, "maxRetries": n, "restartCommand": [argv]}`.
//! Upstream execs `restartCommand` (default `kill 1`) in every running
//! container not blacklisted, up to `maxRetries` times (default 3, also for
//! 0 or less) at least `retryInterval` apart (default 30s), and deletes the
//! pod when the containers are not back by then; a value it cannot parse
//! falls back to the defaults.
//!
//! sandpool's reset kills every process of every app container through the
//! node agent and checks them gone, so there is nothing to send again: the
//! tries become the time the kubelet has to bring the pod back,
//! `maxRetries × retryInterval` (without the annotation sandpool's own
//! [`RESTART_WAIT`]). What cannot be honoured is refused, naming the field,
//! and the pod is deleted instead of reset: a `blacklist` (a container left
//! running keeps the previous tenant's processes and files: security), a
//! `restartCommand` other than `kill 1` (sandpool runs no command in the
//! tenant's containers), and a value that does not parse (upstream's silent
//! fallback would hide the mistake).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::recycle::RESTART_WAIT;

/// The annotation on a Pool.
pub const RESTART_CONFIG_ANNOTATION: &str = "sandbox.opensandbox.io/restart-config";
/// Upstream's defaults.
const DEFAULT_MAX_RETRIES: u32 = 3;
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// The annotation's fields (others are ignored, as upstream's JSON decoding
/// ignores them).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct RestartConfig {
    #[serde(default)]
    blacklist: Vec<String>,
    #[serde(default)]
    retry_interval: String,
    #[serde(default)]
    max_retries: i64,
    #[serde(default)]
    restart_command: Vec<String>,
}

/// How long a reset pod of a pool with `annotations` has to come back
/// Ready, or why its pods cannot be reset (see the module doc).
pub fn restart_wait(annotations: &BTreeMap<String, String>) -> Result<Duration, String> {
    let Some(raw) = annotations.get(RESTART_CONFIG_ANNOTATION) else {
        return Ok(RESTART_WAIT);
    };
    let bad = |why: String| format!("annotation {RESTART_CONFIG_ANNOTATION}: {why}");
    let cfg: RestartConfig =
        serde_json::from_str(raw).map_err(|e| bad(format!("not the JSON upstream reads: {e}")))?;
    if !cfg.blacklist.is_empty() {
        return Err(bad(format!(
            "blacklist {:?} is not supported: a container left running would keep the previous tenant's processes and files",
            cfg.blacklist
        )));
    }
    if !cfg.restart_command.is_empty() && cfg.restart_command != ["kill", "1"] {
        return Err(bad(format!(
            "restartCommand {:?} is not supported: the node agent kills every process of the sandbox, no command runs in it",
            cfg.restart_command
        )));
    }
    let tries = u32::try_from(cfg.max_retries)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_RETRIES);
    let interval = if cfg.retry_interval.is_empty() {
        DEFAULT_RETRY_INTERVAL
    } else {
        go_duration(&cfg.retry_interval)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                bad(format!(
                    "retryInterval {:?} is not a positive Go duration (such as \"30s\" or \"1m30s\")",
                    cfg.retry_interval
                ))
            })?
    };
    interval
        .checked_mul(tries)
        .ok_or_else(|| bad("maxRetries × retryInterval is too long".into()))
}

/// A Go `time.ParseDuration` value without a sign: decimal numbers, each
/// with a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `1h30m` or
/// `1.5s`; `0` alone is zero.
fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|n| *n > 0)?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(Duration::try_from_secs_f64(value * nanos_per / 1e9).ok()?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(raw: &str) -> Result<Duration, String> {
        restart_wait(&[(RESTART_CONFIG_ANNOTATION.to_string(), raw.to_string())].into())
    }

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        assert_eq!(go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "30", "s", "1x", "-1s", "1.2.3s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_tries_are_the_time_to_come_back() {
        assert_eq!(restart_wait(&BTreeMap::new()), Ok(RESTART_WAIT));
        assert_eq!(
            wait("{}"),
            Ok(Duration::from_secs(90)),
            "upstream's defaults"
        );
        assert_eq!(
            wait(r#"{"maxRetries": 2, "retryInterval": "45s", "other": 1}"#),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            wait(r#"{"maxRetries": 0, "retryInterval": "10s"}"#),
            Ok(Duration::from_secs(30)),
            "0 is upstream's default of 3"
        );
        assert_eq!(
            wait(r#"{"restartCommand": ["kill", "1"], "blacklist": []}"#),
            Ok(Duration::from_secs(90))
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_field() {
        for (raw, field) in [
            (r#"{"blacklist": ["sidecar"]}"#, "blacklist"),
            (r#"{"restartCommand": ["/bin/reset"]}"#, "restartCommand"),
            (r#"{"retryInterval": "soon"}"#, "retryInterval"),
            (r#"{"retryInterval": "0s"}"#, "retryInterval"),
            (r#"{"maxRetries": "3"}"#, "JSON"),
            ("not json", "JSON"),
        ] {
            let e = wait(raw).expect_err(raw);
            assert!(
                e.contains(RESTART_CONFIG_ANNOTATION) && e.contains(field),
                "{raw}: {e}"
            );
        }
    }
}
