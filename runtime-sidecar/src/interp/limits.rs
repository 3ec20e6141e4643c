//! Bounds on what a caller can make the code interpreter hold: the number of
//! contexts (each one a Python process once it runs code), the size of a
//! context's fields and of the environment an `/execute` sets.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::Value;

use super::{Context, Refusal, err};

/// Contexts created through `POST /contexts` per runtime (the default
/// context comes on top).
pub const MAX_CONTEXTS: usize = 32;
/// Longest working directory of a context (Linux `PATH_MAX`).
pub const MAX_CWD_BYTES: usize = 4096;
/// Largest `POST /contexts` body.
pub const MAX_CREATE_BODY_BYTES: usize = 1 << 20;
/// Most environment variables one `/execute` sets.
pub const MAX_ENV_VARS: usize = 256;
/// Largest total size (names and values) of the environment one `/execute` sets.
pub const MAX_ENV_BYTES: usize = 256 << 10;

/// A context's working directory: not empty, no NUL, at most [`MAX_CWD_BYTES`].
pub fn check_cwd(cwd: &str) -> Result<(), Refusal> {
    if cwd.is_empty() || cwd.contains('\0') {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "cwd must be a non-empty path without NUL bytes",
        ));
    }
    at_most(cwd.len(), MAX_CWD_BYTES, "cwd is", "bytes")
}

/// `400`, saying "`what` `n` `unit`", when `n` exceeds `max`.
fn at_most(n: usize, max: usize, what: &str, unit: &str) -> Result<(), Refusal> {
    if n > max {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("{what} {n} {unit}; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// Room for one more created context in `contexts` (the default one,
/// `default_id`, does not count).
pub fn check_room(
    contexts: &HashMap<String, std::sync::Arc<Context>>,
    default_id: &str,
) -> Result<(), Refusal> {
    let created = contexts.keys().filter(|k| *k != default_id).count();
    if created >= MAX_CONTEXTS {
        return Err(err(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many contexts: {created} of {MAX_CONTEXTS} in use; delete one (DELETE /contexts/{{id}}) first"
            ),
        ));
    }
    Ok(())
}

/// The `env_vars` of an `/execute`: absent/null, or an object of at most
/// [`MAX_ENV_VARS`] entries and [`MAX_ENV_BYTES`] in all.
pub fn check_env(env: &Value) -> Result<(), Refusal> {
    let Some(map) = env.as_object() else {
        return Ok(());
    };
    at_most(map.len(), MAX_ENV_VARS, "env_vars has", "entries")?;
    let bytes: usize = map
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or_else(|| v.to_string().len(), str::len))
        .sum();
    at_most(bytes, MAX_ENV_BYTES, "env_vars is", "bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_and_env_bounds() {
        assert!(check_cwd("/home/user").is_ok());
        assert!(check_cwd("").is_err());
        assert!(check_cwd("/a\0b").is_err());
        assert!(check_cwd(&"a".repeat(MAX_CWD_BYTES)).is_ok());
        assert!(check_cwd(&"a".repeat(MAX_CWD_BYTES + 1)).is_err());
        assert!(check_env(&Value::Null).is_ok());
        assert!(check_env(&serde_json::json!({"A": "1"})).is_ok());
        let many: serde_json::Map<String, Value> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("K{i}"), Value::from("v")))
            .collect();
        let e = check_env(&Value::Object(many)).unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        let big = serde_json::json!({"A": "x".repeat(MAX_ENV_BYTES)});
        assert_eq!(check_env(&big).unwrap_err().0, StatusCode::BAD_REQUEST);
    }
}
