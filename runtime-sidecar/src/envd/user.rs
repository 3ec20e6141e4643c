//! The user an envd call runs as: E2B's SDK names it in
//! `Authorization: Basic base64("<user>:")` (and `/files` in `?username=`).
//! No user, `user`, or the runtime's own user is the sandbox's default user;
//! `root` needs a runtime that is root (a `--run-as-root` pool); a user the
//! sandbox does not have is refused as E2B's envd refuses it
//! (`unauthenticated`, "invalid username").

use axum::{
    extract::Request,
    http::{HeaderMap, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};

use super::connect::{CResult, ConnectError};

/// The name of sandpool's unprivileged sandbox user (uid 61000).
const DEFAULT_NAME: &str = "user";
const DEFAULT_UID: u32 = 61000;

/// Whom an envd call runs as. `switch` is set when that is not the
/// runtime's own identity (only a root runtime can switch).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub home: Option<String>,
    pub name: String,
    pub switch: bool,
}

/// The user named by `Authorization: Basic`, if any (an empty name is none).
pub(super) fn requested(h: &HeaderMap) -> CResult<Option<String>> {
    let Some(v) = h.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || ConnectError::new("unauthenticated", "invalid Authorization header");
    let v = v.to_str().map_err(|_| bad())?;
    let Some(b64) = v.strip_prefix("Basic ") else {
        return Ok(None); // not a user name: the access token travels elsewhere
    };
    let raw = B64.decode(b64.trim()).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let name = s.split_once(':').map_or(s.as_str(), |(u, _)| u);
    Ok((!name.is_empty()).then(|| name.to_string()))
}

/// Whom `name` (none: the default user) runs as, for a runtime whose
/// effective uid is `euid`.
pub(super) fn resolve(name: Option<&str>, euid: u32) -> CResult<RunAs> {
    let me = || RunAs {
        uid: euid,
        gid: nix::unistd::getegid().as_raw(),
        home: None,
        name: name.unwrap_or(DEFAULT_NAME).to_string(),
        switch: false,
    };
    let Some(name) = name else {
        return Ok(me());
    };
    let entry = nix::unistd::User::from_name(name).ok().flatten();
    let uid = match (&entry, name) {
        (Some(u), _) => u.uid.as_raw(),
        (None, DEFAULT_NAME) => DEFAULT_UID,
        (None, "root") => 0,
        (None, _) => {
            return Err(ConnectError::new(
                "unauthenticated",
                format!("invalid username: '{name}' (no such user in the sandbox)"),
            ));
        }
    };
    if uid == euid || (name == DEFAULT_NAME && euid != 0) {
        return Ok(me());
    }
    if euid != 0 {
        return Err(ConnectError::new(
            "permission_denied",
            format!(
                "cannot run as user '{name}': the sandbox's runtime runs as uid {euid}, not \
                 root, so it cannot switch users (root needs a pool created with --run-as-root)"
            ),
        ));
    }
    Ok(RunAs {
        uid,
        gid: entry.as_ref().map_or(uid, |u| u.gid.as_raw()),
        home: Some(entry.map_or_else(
            || format!("/home/{name}"),
            |u| u.dir.to_string_lossy().into_owned(),
        )),
        name: name.to_string(),
        switch: true,
    })
}

/// The user of a request (Basic auth, else `/files`'s `?username=`).
pub(super) fn of_request(h: &HeaderMap, uri: &Uri) -> CResult<RunAs> {
    let name = match requested(h)? {
        Some(n) => Some(n),
        None => super::files::query(uri)
            .remove("username")
            .filter(|u| !u.is_empty()),
    };
    resolve(name.as_deref(), nix::unistd::geteuid().as_raw())
}

/// Refuse a call whose user cannot be run as, before its handler runs.
pub(super) async fn guard(req: Request, next: Next) -> Response {
    match of_request(req.headers(), req.uri()) {
        Ok(_) => next.run(req).await,
        Err(e) if req.uri().path() == "/files" => {
            let status = match e.code() {
                "permission_denied" => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            };
            let body = serde_json::json!({"code": status.as_u16(), "message": e.message()});
            (status, axum::Json(body)).into_response()
        }
        Err(e) if is_stream(req.headers()) => e.into_stream(),
        Err(e) => e.into_response(),
    }
}

/// Whether the call is a Connect stream (its errors end the stream).
fn is_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/connect+"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", B64.encode(format!("{user}:")));
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn basic_auth_names_the_user() {
        assert_eq!(requested(&basic("root")).unwrap().as_deref(), Some("root"));
        assert_eq!(requested(&basic("")).unwrap(), None);
        assert_eq!(requested(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn an_unprivileged_runtime_refuses_root_and_keeps_the_default_user() {
        assert!(!resolve(None, DEFAULT_UID).unwrap().switch);
        assert!(!resolve(Some("user"), DEFAULT_UID).unwrap().switch);
        let e = resolve(Some("root"), DEFAULT_UID).unwrap_err();
        assert_eq!(e.code(), "permission_denied");
        assert!(e.message().contains("--run-as-root"), "{}", e.message());
        let e = resolve(Some("no-such-user-xyz"), DEFAULT_UID).unwrap_err();
        assert_eq!(e.code(), "unauthenticated");
    }

    #[test]
    fn a_root_runtime_switches_to_the_default_user() {
        assert!(!resolve(Some("root"), 0).unwrap().switch);
        let u = resolve(Some("user"), 0).unwrap();
        assert!(u.switch && u.uid != 0, "{u:?}");
        assert!(u.home.is_some());
    }
}
