//! `/v1/sandboxes`: create (from a pool, an image or a snapshot), get, list,
//! delete, pause, resume, renew, patch metadata.

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::DateTime;
use sandpool_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Paging, Result, sandbox_json, state_name};
use crate::{Gateway, error::ApiError, extract, rfc3339_ms};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ImageSpec {
    #[serde(default)]
    uri: String,
    /// Registry credentials for pulling `uri` (never stored nor returned).
    #[serde(default)]
    auth: Option<ImageAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageAuth {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `image.auth` as the credentials of the create's pull: both fields are
/// needed, and only a create from `image.uri` pulls.
fn image_auth(req: &CreateRequest, pool: &str) -> Result<Option<pb::ImageAuth>> {
    let Some(a) = req.image.as_ref().and_then(|i| i.auth.as_ref()) else {
        return Ok(None);
    };
    if !pool.is_empty() {
        return Err(ApiError::Invalid(
            "image.auth is for a create from image.uri; a create from extensions.poolRef runs the pool's image".into(),
        ));
    }
    let field = |v: &Option<String>, name: &str| match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(ApiError::Invalid(format!(
            "image.auth.{name} is required (a non-empty string) when image.auth is given"
        ))),
    };
    Ok(Some(pb::ImageAuth {
        username: field(&a.username, "username")?,
        password: field(&a.password, "password")?,
    }))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Limits {
    #[serde(default)]
    cpu: Option<String>,
    #[serde(default)]
    memory: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    #[serde(default)]
    image: Option<ImageSpec>,
    /// seconds; null/absent = no expiry
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    resource_limits: Option<Limits>,
    #[serde(default)]
    env: Option<HashMap<String, String>>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    extensions: Option<HashMap<String, Value>>,
    #[serde(default)]
    snapshot_id: Option<String>,
    #[serde(default)]
    volumes: Option<Vec<Value>>,
    #[serde(default)]
    network_policy: Option<Value>,
    #[serde(default)]
    credential_proxy: Option<Value>,
    /// Anything else the body holds: refused unless unset (see [`refuse_unhonoured`]).
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// Fields of a create body that sandpool does not honour, answered 501
/// naming the field instead of being dropped (`volumes`: see [`super::volumes`]). `secureAccess: false` (what
/// the SDK always sends) asks for nothing.
fn refuse_unhonoured(req: &CreateRequest) -> Result<()> {
    for (k, v) in &req.other {
        let unset = v.is_null() || (k == "secureAccess" && v == &Value::Bool(false));
        if !unset {
            return Err(ApiError::Unsupported(format!("the create field {k}")));
        }
    }
    Ok(())
}

fn parse_timeout(v: &Option<Value>) -> Result<u64> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(s) if s > 0 => Ok(s as u64),
            Some(s) => Err(ApiError::Invalid(format!(
                "timeout must be a positive number of seconds, got {s}"
            ))),
            None => Err(ApiError::Invalid(format!(
                "timeout must be an integer number of seconds, got {n}"
            ))),
        },
        Some(other) => Err(ApiError::Invalid(format!(
            "timeout must be an integer number of seconds, got {other}"
        ))),
    }
}

fn check_keys<'a>(keys: impl Iterator<Item = &'a String>) -> Result<()> {
    for k in keys {
        if k.is_empty() || k.len() > 256 {
            return Err(ApiError::Invalid(format!("bad key {k:?} in env/metadata")));
        }
    }
    Ok(())
}

/// What an OpenSandbox create body asks for.
#[derive(Debug)]
pub enum Create {
    /// a sandbox from a pool or an image
    Claim(Box<pb::ClaimRequest>),
    /// a sandbox from a snapshot (`snapshotId`)
    Restore(Box<pb::RestoreCheckpointRequest>),
}

/// An OpenSandbox create body as the claim or restore it asks for (pure: the
/// gateway's whole validation of `POST /sandboxes`, fuzzed in `fuzz/`).
pub fn parse_create(body: &[u8]) -> Result<Create> {
    let req: CreateRequest = extract::parse_json(body)?;
    refuse_unhonoured(&req)?;
    match req.snapshot_id.as_deref() {
        Some(s) if !s.is_empty() => restore_of(req).map(|r| Create::Restore(Box::new(r))),
        _ => claim_of(req).map(|c| Create::Claim(Box::new(c))),
    }
}

/// A create body with a `snapshotId`.
fn restore_of(req: CreateRequest) -> Result<pb::RestoreCheckpointRequest> {
    if super::credential_vault::enabled(req.credential_proxy.as_ref())? {
        return Err(ApiError::Unsupported(
            "the create field credentialProxy with snapshotId".into(),
        ));
    }
    let snapshot = req.snapshot_id.unwrap_or_default();
    if req
        .image
        .as_ref()
        .is_some_and(|i| !i.uri.is_empty() || i.auth.is_some())
    {
        return Err(ApiError::Invalid(
            "give either image or snapshotId, not both".into(),
        ));
    }
    if !pool_of(req.extensions.as_ref())?.is_empty()
        || req
            .extensions
            .as_ref()
            .is_some_and(|e| e.contains_key("poolRef"))
    {
        return Err(ApiError::Invalid(
            "a restore from snapshotId goes to the snapshot's own pool: drop extensions.poolRef"
                .into(),
        ));
    }
    if req.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::Invalid(
            "volumes cannot change on a restore from snapshotId (the processes keep theirs)".into(),
        ));
    }
    let env = req.env.unwrap_or_default();
    check_keys(env.keys())?;
    let argv = req.entrypoint.unwrap_or_default();
    if argv.is_empty() && !env.is_empty() {
        return Err(ApiError::Invalid(
            "env on a restore from snapshotId is the env of its entrypoint: give an entrypoint"
                .into(),
        ));
    }
    if req.network_policy.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::Invalid(
            "networkPolicy cannot be set on a restore from snapshotId (a snapshot's sandbox has no network)".into(),
        ));
    }
    let metadata = req.metadata.unwrap_or_default();
    check_keys(metadata.keys())?;
    // a filesystem restore starts the entrypoint with its env and takes the
    // limits (as upstream's restore of its committed image); a memory
    // restore takes only the checkpointed entrypoint and sets the limits on
    // the restored sandbox (the scheduler decides: see the proto)
    let process = (!argv.is_empty()).then(|| pb::InjectRequest {
        argv,
        env,
        ..Default::default()
    });
    let resources = req
        .resource_limits
        .filter(|l| l.cpu.is_some() || l.memory.is_some())
        .map(|l| pb::Resources {
            cpu: l.cpu.unwrap_or_default(),
            memory: l.memory.unwrap_or_default(),
            pids: 0,
        });
    Ok(pb::RestoreCheckpointRequest {
        checkpoint_id: snapshot,
        count: 1,
        ttl_seconds: parse_timeout(&req.timeout)?,
        metadata,
        process,
        resources,
        ..Default::default()
    })
}

/// The pool a create's `extensions` names (empty: none). Upstream's server
/// knows `poolRef`, `access.renew.extend.seconds` (extend the expiry when the
/// sandbox is accessed) and keys under `opensandbox.extensions.` (Kubernetes
/// pod annotations), and passes over any other key (an opaque container):
/// sandpool honours `poolRef`, refuses the other known ones 501 naming them,
/// and passes over unknown keys as upstream does. Values are strings, as in
/// upstream's schema (null: unset).
fn pool_of(extensions: Option<&HashMap<String, Value>>) -> Result<String> {
    let mut pool = String::new();
    for (k, v) in extensions.into_iter().flatten() {
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("poolRef", Value::String(p)) if !p.is_empty() => pool = p.clone(),
            ("poolRef", other) => {
                return Err(ApiError::Invalid(format!(
                    "extensions.poolRef must be a non-empty string, got {other}"
                )));
            }
            (_, Value::String(_)) if k == RENEW_ON_ACCESS || k.starts_with(ANNOTATION_PREFIX) => {
                return Err(ApiError::Unsupported(format!("extensions.{k}")));
            }
            (_, Value::String(_)) => {}
            (_, other) => {
                return Err(ApiError::Invalid(format!(
                    "extensions.{k} must be a string, got {other}"
                )));
            }
        }
    }
    Ok(pool)
}

/// Upstream's extension key for renew-on-access (`extensions.access.renew.extend.seconds`).
const RENEW_ON_ACCESS: &str = "access.renew.extend.seconds";
/// Upstream's prefix of extension keys copied to the pod's annotations.
const ANNOTATION_PREFIX: &str = "opensandbox.extensions.";

/// A create body without a `snapshotId`.
fn claim_of(mut req: CreateRequest) -> Result<pb::ClaimRequest> {
    let ttl = parse_timeout(&req.timeout)?;
    let egress = crate::egress::from_opensandbox(req.network_policy.as_ref())?;
    let mut resource_limits = req.resource_limits.take();
    let pool = pool_of(req.extensions.as_ref())?;
    let mounts = super::volumes::mounts_of(req.volumes.as_deref().unwrap_or_default())?;
    let image_auth = image_auth(&req, &pool)?;
    let entrypoint = req.entrypoint.clone().unwrap_or_default();
    let env = req.env.clone().unwrap_or_default();
    let mut metadata = req.metadata.clone().unwrap_or_default();
    check_keys(env.keys().chain(metadata.keys()))?;
    // the mark `create` hands on as reserved metadata
    metadata.remove(super::credential_vault::KEY);
    if super::credential_vault::enabled(req.credential_proxy.as_ref())? {
        if !pool.is_empty() {
            return Err(ApiError::Invalid(
                "credentialProxy.enabled cannot be used together with poolRef.".into(),
            ));
        }
        if req.network_policy.as_ref().is_none_or(Value::is_null) {
            return Err(ApiError::Invalid(
                "credentialProxy.enabled requires networkPolicy.".into(),
            ));
        }
        metadata.insert(super::credential_vault::KEY.into(), "true".into());
    }
    let template = if pool.is_empty() {
        let image = req
            .image
            .as_ref()
            .map(|i| i.uri.trim().to_string())
            .unwrap_or_default();
        if image.is_empty() {
            return Err(ApiError::Invalid(
                "image.uri is required without extensions.poolRef".into(),
            ));
        }
        let limits = resource_limits.take().unwrap_or_default();
        Some(pb::SandboxTemplate {
            image,
            resources: Some(pb::Resources {
                cpu: limits.cpu.unwrap_or_default(),
                memory: limits.memory.unwrap_or_default(),
                pids: 0,
            }),
            runtime_class: pb::RuntimeClass::Runc as i32,
            release_policy: pb::ReleasePolicy::Delete as i32,
            ..Default::default()
        })
    } else {
        None
    };
    // a pool claim's limits are set on the warm sandbox it takes
    let resources = match (&template, resource_limits) {
        (None, Some(l)) if l.cpu.is_some() || l.memory.is_some() => Some(pb::Resources {
            cpu: l.cpu.unwrap_or_default(),
            memory: l.memory.unwrap_or_default(),
            pids: 0,
        }),
        _ => None,
    };
    Ok(pb::ClaimRequest {
        resources,
        pool,
        pool_only: false,
        ttl_seconds: ttl,
        process: Some(pb::InjectRequest {
            argv: entrypoint,
            env,
            ..Default::default()
        }),
        metadata,
        claim_id: String::new(),
        template,
        mounts,
        image: String::new(),
        egress,
        pause_on_expiry: false,
        auto_resume: false,
        pause_filesystem_only: false,
        image_auth,
        // the create's env goes with the process (restarted with it)
        sandbox_env: Default::default(),
    })
}

pub async fn create(
    State(gw): State<Gateway>,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Response> {
    let claim = match parse_create(&body)? {
        Create::Claim(mut c) => {
            c.ttl_seconds = gw.check_timeout("timeout", c.ttl_seconds)?;
            *c
        }
        Create::Restore(mut restore) => {
            restore.ttl_seconds = gw.check_timeout("timeout", restore.ttl_seconds)?;
            return create_from_snapshot(&gw, *restore).await;
        }
    };
    let pool = claim.pool.clone();
    let mut claim = claim;
    let cred = claim
        .metadata
        .remove(super::credential_vault::KEY)
        .map(|v| (super::credential_vault::KEY, v));
    let marks: Vec<(&str, &str)> = cred.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = gw
        .create_claim_marked(claim, &marks, move |m| {
            if pool.is_empty() {
                ApiError::Invalid(m)
            } else {
                ApiError::PoolNotFound(pool)
            }
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(sandbox_json(&c))).into_response())
}

async fn create_from_snapshot(
    gw: &Gateway,
    restore: pb::RestoreCheckpointRequest,
) -> Result<Response> {
    let snapshot = restore.checkpoint_id.clone();
    let mut claims = gw.restore_checkpoint(restore).await?;
    let c = claims
        .pop()
        .ok_or_else(|| ApiError::Internal("restore made no sandbox".into()))?;
    let mut v = sandbox_json(&c);
    v["snapshotId"] = json!(snapshot);
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

pub async fn get_one(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Json<Value>> {
    Ok(Json(sandbox_json(&gw.get_claim(&id).await?)))
}

pub async fn delete(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    gw.release_claim(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    gw.pause_claim(&id, false).await?;
    Ok(StatusCode::ACCEPTED)
}

pub async fn resume(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<StatusCode> {
    gw.resume_claim(&id).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RenewRequest {
    expires_at: String,
}

pub async fn renew(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::Json(r, _): extract::Json<RenewRequest>,
) -> Result<Json<Value>> {
    let at = DateTime::parse_from_rfc3339(&r.expires_at)
        .map_err(|source| ApiError::BadTime {
            field: "expiresAt",
            source,
        })?
        .timestamp_millis();
    if let Err(e) = gw.check_expiry("expiresAt", chrono::Utc::now().timestamp_millis(), at) {
        // an unknown sandbox is 404 whatever the time asked for
        gw.get_claim(&id).await?;
        return Err(e);
    }
    let c = gw.renew(&id, at).await?;
    Ok(Json(json!({ "expiresAt": rfc3339_ms(c.expires_unix_ms) })))
}

/// A metadata merge patch (RFC 7396) as the keys it sets and those it
/// deletes: string values add or replace, `null` deletes.
pub fn parse_metadata_patch(body: &[u8]) -> Result<(HashMap<String, String>, Vec<String>)> {
    let patch: serde_json::Map<String, Value> = extract::parse_json(body)?;
    check_keys(patch.keys())?;
    let mut set = HashMap::new();
    let mut remove = Vec::new();
    for (k, v) in patch {
        match v {
            Value::String(s) => {
                set.insert(k, s);
            }
            Value::Null => remove.push(k),
            other => {
                return Err(ApiError::Invalid(format!(
                    "metadata value of {k:?} must be a string or null, got {other}"
                )));
            }
        }
    }
    Ok((set, remove))
}

/// `PATCH /sandboxes/{id}/metadata`: the sandbox as it is afterwards.
pub async fn patch_metadata(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Json<Value>> {
    let (set, remove) = parse_metadata_patch(&body)?;
    let c = gw.patch_claim_metadata(&id, set, remove).await?;
    Ok(Json(sandbox_json(&c)))
}

pub async fn list(
    State(gw): State<Gateway>,
    extract::Query(q, _): extract::Query,
) -> Result<Json<Value>> {
    let mut states = Vec::new();
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    let mut pages = Paging::default();
    for (k, v) in &q {
        match k.as_str() {
            "state" => states.push(v.clone()),
            "metadata" => {
                for (mk, mv) in form_urlencoded::parse(v.as_bytes()) {
                    metadata.insert(mk.into_owned(), mv.into_owned());
                }
            }
            _ => pages.param(k, v)?,
        }
    }
    let all = gw.claims_with_metadata(metadata).await?;
    let items: Vec<Value> = all
        .iter()
        .filter(|c| {
            states.is_empty()
                || states
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(state_name(c.state)))
        })
        .map(sandbox_json)
        .collect();
    Ok(Json(pages.json(items)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(&None).unwrap(), 0);
        assert_eq!(parse_timeout(&Some(Value::Null)).unwrap(), 0);
        assert_eq!(parse_timeout(&Some(json!(600))).unwrap(), 600);
        for bad in [json!(-1), json!(0), json!(1.5), json!("600")] {
            assert!(parse_timeout(&Some(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn restores_parse_from_snapshot_id_and_refuse_what_cannot_change() {
        let Ok(Create::Restore(r)) = parse_create(br#"{"snapshotId":"ck-1","timeout":600,"metadata":{"a":"b"},"entrypoint":["tail","-f","/dev/null"]}"#) else {
            panic!("a restore")
        };
        assert_eq!(
            (r.checkpoint_id.as_str(), r.count, r.ttl_seconds),
            ("ck-1", 1, 600)
        );
        assert_eq!(r.metadata.get("a").map(String::as_str), Some("b"));
        // the entrypoint and limits go with the restore (a filesystem
        // checkpoint's claim starts and takes them)
        assert_eq!(
            r.process.as_ref().map(|p| p.argv.clone()),
            Some(vec!["tail".into(), "-f".into(), "/dev/null".into()])
        );
        assert!(r.resources.is_none());
        let Ok(Create::Restore(r)) = parse_create(
            br#"{"snapshotId":"ck-1","resourceLimits":{"cpu":"1","memory":"2Gi"},"entrypoint":[]}"#,
        ) else {
            panic!("a restore")
        };
        let l = r.resources.expect("limits");
        assert_eq!((l.cpu.as_str(), l.memory.as_str()), ("1", "2Gi"));
        assert!(r.process.is_none(), "an empty entrypoint asks for none");
        assert!(
            matches!(
                parse_create(br#"{"image":{"uri":"python"}}"#),
                Ok(Create::Claim(_))
            ),
            "not a restore"
        );
        assert!(
            matches!(
                parse_create(br#"{"image":{"uri":"python"},"snapshotId":""}"#),
                Ok(Create::Claim(_))
            ),
            "empty snapshotId"
        );
        for bad in [
            &br#"{"snapshotId":"ck-1","image":{"uri":"python"}}"#[..],
            br#"{"snapshotId":"ck-1","extensions":{"poolRef":"p"}}"#,
            br#"{"snapshotId":"ck-1","env":{"A":"1"}}"#,
            br#"{"snapshotId":"ck-1","timeout":-5}"#,
        ] {
            let e = parse_create(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
        }
    }

    #[test]
    fn a_restore_hands_the_entrypoint_its_env() {
        let Ok(Create::Restore(r)) = parse_create(
            br#"{"snapshotId":"ck-1","entrypoint":["python3","a.py"],"env":{"A":"1"}}"#,
        ) else {
            panic!("a restore")
        };
        let p = r.process.expect("process");
        assert_eq!(p.argv, ["python3", "a.py"]);
        assert_eq!(p.env.get("A").map(String::as_str), Some("1"));
        let e = parse_create(br#"{"snapshotId":"ck-1","env":{"A":"1"}}"#).unwrap_err();
        assert!(e.to_string().contains("give an entrypoint"), "{e}");
    }

    /// Upstream's known extension keys other than poolRef are refused
    /// naming them; unknown ones pass as upstream passes over them.
    #[test]
    fn extensions_are_honoured_refused_or_passed_over_as_upstream() {
        for base in [r#""image":{"uri":"busybox"}"#, r#""snapshotId":"ck-1""#] {
            let body = |ext: &str| format!(r#"{{{base},"extensions":{ext}}}"#);
            for (ext, status, says) in [
                (
                    r#"{"access.renew.extend.seconds":"600"}"#,
                    StatusCode::NOT_IMPLEMENTED,
                    "extensions.access.renew.extend.seconds is not supported",
                ),
                (
                    r#"{"opensandbox.extensions.team":"a"}"#,
                    StatusCode::NOT_IMPLEMENTED,
                    "extensions.opensandbox.extensions.team is not supported",
                ),
                (
                    r#"{"x":1}"#,
                    StatusCode::BAD_REQUEST,
                    "extensions.x must be a string",
                ),
            ] {
                let e = parse_create(body(ext).as_bytes()).expect_err(ext);
                assert_eq!(e.status(), status, "{ext}: {e}");
                assert!(e.to_string().contains(says), "{ext}: {e}");
            }
            for ok in [
                r#"{"someVendorKey":"v"}"#,
                r#"{"access.renew.extend.seconds":null}"#,
            ] {
                assert!(parse_create(body(ok).as_bytes()).is_ok(), "{base} {ok}");
            }
        }
        let Ok(Create::Claim(c)) =
            parse_create(br#"{"extensions":{"poolRef":"p","someVendorKey":"v"}}"#)
        else {
            panic!("a claim")
        };
        assert_eq!(c.pool, "p");
    }

    #[test]
    fn credential_proxy_marks_the_claim_and_is_refused_where_upstream_refuses_it() {
        use super::super::credential_vault::KEY;
        let Ok(Create::Claim(c)) = parse_create(
            br#"{"image":{"uri":"busybox"},"networkPolicy":{"defaultAction":"allow"},"credentialProxy":{"enabled":true}}"#,
        ) else {
            panic!("a claim")
        };
        assert_eq!(c.metadata.get(KEY).map(String::as_str), Some("true"));
        let Ok(Create::Claim(c)) = parse_create(
            br#"{"image":{"uri":"busybox"},"metadata":{"sandpool.io/credential-proxy":"true"},"credentialProxy":{"enabled":false}}"#,
        ) else {
            panic!("a claim")
        };
        assert!(
            !c.metadata.contains_key(KEY),
            "a caller cannot set the mark"
        );
        for (bad, status, says) in [
            (&br#"{"image":{"uri":"busybox"},"credentialProxy":{"enabled":true}}"#[..], StatusCode::BAD_REQUEST, "requires networkPolicy"),
            (br#"{"extensions":{"poolRef":"p"},"networkPolicy":{},"credentialProxy":{"enabled":true}}"#, StatusCode::BAD_REQUEST, "together with poolRef"),
            (br#"{"image":{"uri":"busybox"},"networkPolicy":{},"credentialProxy":{"on":true}}"#, StatusCode::BAD_REQUEST, "credentialProxy: unknown field"),
            (br#"{"snapshotId":"ck-1","credentialProxy":{"enabled":true}}"#, StatusCode::NOT_IMPLEMENTED, "credentialProxy with snapshotId"),
        ] {
            let e = parse_create(bad).unwrap_err();
            assert_eq!(e.status(), status, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn image_auth_goes_with_a_cold_create_and_bad_ones_are_named() {
        let Ok(Create::Claim(c)) = parse_create(
            br#"{"image":{"uri":"127.0.0.1:5000/p:1","auth":{"username":"ann","password":"s3cret"}}}"#,
        ) else {
            panic!("a claim")
        };
        let a = c.image_auth.clone().expect("image auth");
        assert_eq!(
            (a.username.as_str(), a.password.as_str()),
            ("ann", "s3cret")
        );
        assert!(!format!("{c:?}").contains("s3cret"), "Debug hides it");
        let Ok(Create::Claim(c)) = parse_create(br#"{"image":{"uri":"busybox","auth":null}}"#)
        else {
            panic!("a claim")
        };
        assert!(c.image_auth.is_none());
        for (bad, names) in [
            (
                &br#"{"image":{"uri":"r/p:1","auth":{"username":"ann"}}}"#[..],
                "image.auth.password",
            ),
            (
                br#"{"image":{"uri":"r/p:1","auth":{"username":"","password":"x"}}}"#,
                "image.auth.username",
            ),
            (
                br#"{"image":{"uri":"r/p:1","auth":{"username":"a","password":"x","token":"t"}}}"#,
                "token",
            ),
            (
                br#"{"image":{"uri":"r/p:1","auth":{"username":"a","password":"x"}},"extensions":{"poolRef":"p"}}"#,
                "poolRef",
            ),
            (
                br#"{"snapshotId":"ck-1","image":{"auth":{"username":"a","password":"x"}}}"#,
                "snapshotId",
            ),
        ] {
            let e = parse_create(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
            assert!(e.to_string().contains(names), "{e}");
            assert!(!e.to_string().contains("\"x\""), "{e}");
        }
    }

    #[test]
    fn pool_claims_carry_their_resource_limits_and_policy() {
        let claim = |body: &[u8]| match parse_create(body) {
            Ok(Create::Claim(c)) => *c,
            other => panic!("a claim: {other:?}"),
        };
        let c = claim(
            br#"{"image":{"uri":"busybox"},"resourceLimits":{"cpu":"1","memory":"2Gi"},"extensions":{"poolRef":"p"},"networkPolicy":{"defaultAction":"deny"}}"#,
        );
        let r = c.resources.expect("pool claim limits");
        assert_eq!((r.cpu.as_str(), r.memory.as_str(), r.pids), ("1", "2Gi", 0));
        assert_eq!(
            c.egress.map(|e| e.default_action),
            Some(pb::EgressAction::Deny as i32)
        );
        // a cold start carries them in its template instead
        let c = claim(br#"{"image":{"uri":"busybox"},"resourceLimits":{"memory":"1Gi"}}"#);
        assert!(c.resources.is_none());
        assert_eq!(
            c.template.and_then(|t| t.resources).map(|r| r.memory),
            Some("1Gi".into())
        );
        let e = parse_create(br#"{"image":{"uri":"busybox"},"resourceLimits":{"gpu":"1"}}"#)
            .expect_err("an unknown limit");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("gpu"), "{e}");
    }

    #[test]
    fn fields_sandpool_does_not_honour_are_refused_naming_them() {
        for (body, field) in [
            (&br#"{"image":{"uri":"busybox"},"secureAccess":true}"#[..], "secureAccess"),
            (br#"{"image":{"uri":"busybox"},"platform":{"os":"linux","arch":"arm64"}}"#, "platform"),
            (br#"{"image":{"uri":"busybox"},"resourceRequests":{"cpu":"1"}}"#, "resourceRequests"),
            (br#"{"image":{"uri":"busybox"},"volumes":[{"name":"v","mountPath":"/v","ossfs":{"bucket":"b"}}]}"#, "ossfs"),
        ] {
            let e = parse_create(body).expect_err(field);
            assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED, "{field}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        // what the SDK sends by default asks for nothing more
        assert!(
            parse_create(
                br#"{"image":{"uri":"busybox"},"secureAccess":false,"platform":null,"volumes":[]}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn volumes_become_the_claims_mounts_with_or_without_a_pool() {
        for body in [
            &br#"{"image":{"uri":"busybox"},"volumes":[{"name":"v","mountPath":"/v","host":{"path":"/srv/d"},"readOnly":true}]}"#[..],
            br#"{"extensions":{"poolRef":"p"},"volumes":[{"name":"v","mountPath":"/v","host":{"path":"/srv/d"},"readOnly":true}]}"#,
        ] {
            let Ok(Create::Claim(c)) = parse_create(body) else {
                panic!("a claim")
            };
            let m: Vec<_> = c.mounts.iter().map(|m| (m.volume.as_str(), m.mount_path.as_str(), m.read_only)).collect();
            assert_eq!(m, vec![("/srv/d", "/v", true)]);
        }
        let e = parse_create(br#"{"extensions":{"poolRef":"p"},"volumes":[{"name":"v"}]}"#)
            .expect_err("no backend");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("\"v\""), "{e}");
    }

    #[test]
    fn a_metadata_patch_sets_strings_and_deletes_nulls() {
        let (set, remove) = parse_metadata_patch(br#"{"team":"b","old":null}"#).expect("a patch");
        assert_eq!(set, HashMap::from([("team".to_string(), "b".to_string())]));
        assert_eq!(remove, vec!["old".to_string()]);
        let (set, remove) = parse_metadata_patch(b"{}").expect("a no-op");
        assert!(set.is_empty() && remove.is_empty());
        for bad in [&br#"{"n":1}"#[..], br#"{"":"x"}"#, br#"["a"]"#, b"not json"] {
            let e = parse_metadata_patch(bad).expect_err("refused");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{e}");
        }
    }
}
