//! OpenSandbox's Credential Vault (`credentialProxy` at create, then the
//! egress sidecar's `/credential-vault` API on port 18080, reached as
//! [`super::egress_api`] is: this gateway route, with the sandbox's egress
//! token or the owner's API key).
//!
//! The vault's rules are `sandpool_core::credential_vault`'s. The gateway
//! keeps each claim's vault in memory only (never on disk, never logged,
//! never returned with its secrets) and hands the whole vault to the
//! sandbox's node through the scheduler (which does not store it); the
//! node's credential proxy injects the headers into the sandbox's plain
//! HTTP requests. A restart of the gateway or of the node forgets vaults
//! (as upstream's sidecar does when it restarts): write them again.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
};
use sandpool_core::credential_vault::{
    CreateRequest, MutationRequest, SanitizedState, Vault, VaultError,
};
use sandpool_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Result, egress_api, network};
use crate::{Gateway, error::ApiError, extract, tenancy};

/// Reserved claim metadata: the claim was created with
/// `credentialProxy.enabled` (never shown, never the caller's to set).
pub const KEY: &str = "sandpool.io/credential-proxy";

/// The sandbox port the node's credential proxy intercepts (plain HTTP).
const HTTP_PORT: u16 = 80;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    enabled: bool,
}

/// Whether a create body's `credentialProxy` enables the proxy.
pub(super) fn enabled(v: Option<&Value>) -> Result<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(v) => serde_json::from_value::<Config>(v.clone())
            .map(|c| c.enabled)
            .map_err(|e| ApiError::Invalid(format!("credentialProxy: {e}"))),
    }
}

fn api_error(e: VaultError) -> ApiError {
    match e {
        VaultError::NotFound => ApiError::NotFound(e.to_string()),
        VaultError::Exists | VaultError::RevisionMismatch { .. } => {
            ApiError::Conflict(e.to_string())
        }
        VaultError::Invalid(m) => ApiError::Invalid(m),
        VaultError::Unsupported(m) => ApiError::Unsupported(m),
    }
}

/// The sandbox's egress policy in the core's form (domain rules allowed).
fn core_policy(p: &pb::EgressPolicy) -> Result<sandpool_core::egress::EgressPolicy> {
    sandpool_proto::template::egress_from_pb_with_names(p).map_err(ApiError::Invalid)
}

/// Refuse a new egress policy for claim `id` that no longer explicitly
/// allows a host its vault's bindings name.
pub(crate) fn check_policy(gw: &Gateway, id: &str, p: &pb::EgressPolicy) -> Result<()> {
    let vaults = gw.vaults.lock();
    let Some(v) = vaults.get(id).filter(|v| v.has_bindings()) else {
        return Ok(());
    };
    v.check_policy(&core_policy(p)?).map_err(api_error)
}

/// Authorize as the `/policy` API does, then serve under the caller's view.
async fn authorized<F, T>(gw: &Gateway, id: &str, headers: &HeaderMap, work: F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    match egress_api::authorize(gw, id, headers).await? {
        Some(p) => tenancy::scoped(p, work).await,
        None => work.await,
    }
}

/// The claim, which must have been created with the proxy enabled.
async fn proxied_claim(gw: &Gateway, id: &str) -> Result<pb::Claim> {
    let (c, on) = gw.get_claim_credential_proxy(id).await?;
    if !on {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} was not created with credentialProxy.enabled: it has no credential vault"
        )));
    }
    Ok(c)
}

fn sanitized(gw: &Gateway, id: &str) -> Result<SanitizedState> {
    gw.vaults
        .lock()
        .get(id)
        .ok_or(VaultError::NotFound)
        .and_then(Vault::sanitized)
        .map_err(api_error)
}

/// `/v1/sandboxes/{id}/proxy/18080/credential-vault`: `GET` the vault
/// without secrets, `POST` create it (201), `PATCH` change it, `DELETE` it
/// (204).
pub async fn root(
    method: Method,
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Response> {
    authorized(&gw, &id, &headers, serve_root(method, &gw, &id, &body)).await
}

async fn serve_root(method: Method, gw: &Gateway, id: &str, body: &[u8]) -> Result<Response> {
    let c = proxied_claim(gw, id).await?;
    if method == Method::GET {
        return Ok(Json(sanitized(gw, id)?).into_response());
    }
    let _serial = network::CHANGES.lock().await;
    let mut next = gw.vaults.lock().get(id).cloned().unwrap_or_default();
    let (status, state) = if method == Method::DELETE {
        next.delete().map_err(api_error)?;
        (StatusCode::NO_CONTENT, None)
    } else {
        let policy = core_policy(&network::effective(gw, &c).await?)?;
        let state = if method == Method::POST {
            let req: CreateRequest = extract::parse_json(body)?;
            next.create(req, &policy)
        } else {
            let req: MutationRequest = extract::parse_json(body)?;
            next.patch(req, &policy)
        }
        .map_err(api_error)?;
        next.check_interceptable(HTTP_PORT).map_err(api_error)?;
        let status = if method == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (status, Some(state))
    };
    let wire = serde_json::to_vec(&next)
        .map_err(|e| ApiError::Internal(format!("encoding the credential vault: {e}")))?;
    gw.set_claim_credential_vault(id, wire).await?;
    let mut vaults = gw.vaults.lock();
    if next.exists() {
        vaults.insert(id.to_string(), next);
    } else {
        vaults.remove(id);
    }
    Ok(match state {
        Some(s) => (status, Json(s)).into_response(),
        None => status.into_response(),
    })
}

/// `GET .../credential-vault/{credentials,bindings}[/{name}]`.
pub async fn sub(
    State(gw): State<Gateway>,
    Path((id, rest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    authorized(&gw, &id, &headers, serve_sub(&gw, &id, &rest)).await
}

async fn serve_sub(gw: &Gateway, id: &str, rest: &str) -> Result<Json<Value>> {
    proxied_claim(gw, id).await?;
    let s = sanitized(gw, id)?;
    let missing = |what: &str, name: &str| ApiError::NotFound(format!("{what} {name:?} not found"));
    let v = match rest.trim_end_matches('/').split_once('/') {
        None if rest == "credentials" => {
            json!({"revision": s.revision, "credentials": s.credentials})
        }
        None if rest == "bindings" => json!({"revision": s.revision, "bindings": s.bindings}),
        Some(("credentials", name)) => s
            .credentials
            .iter()
            .find(|c| c.name == name)
            .map(|c| json!(c))
            .ok_or_else(|| missing("credential", name))?,
        Some(("bindings", name)) => s
            .bindings
            .iter()
            .find(|b| b.name == name)
            .map(|b| json!(b))
            .ok_or_else(|| missing("binding", name))?,
        _ => {
            return Err(ApiError::NotFound(format!(
                "no credential vault resource {rest:?}"
            )));
        }
    };
    Ok(Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_field_is_enabled_or_refused_naming_it() {
        assert!(!enabled(None).expect("absent"));
        assert!(!enabled(Some(&Value::Null)).expect("null"));
        assert!(!enabled(Some(&json!({}))).expect("default off"));
        assert!(enabled(Some(&json!({"enabled": true}))).expect("on"));
        let e = enabled(Some(&json!({"enabled": true, "mitm": 1}))).expect_err("unknown");
        assert!(
            e.to_string().starts_with("credentialProxy: unknown field"),
            "{e}"
        );
        assert!(enabled(Some(&json!(true))).is_err());
    }

    #[test]
    fn vault_errors_keep_upstreams_statuses() {
        assert_eq!(
            api_error(VaultError::NotFound).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(api_error(VaultError::Exists).status(), StatusCode::CONFLICT);
        let stale = VaultError::RevisionMismatch {
            expected: 1,
            current: 2,
        };
        assert_eq!(api_error(stale).status(), StatusCode::CONFLICT);
        assert_eq!(
            api_error(VaultError::Invalid("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        let tls = api_error(VaultError::Unsupported("scheme https".into()));
        assert_eq!(tls.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(tls.to_string(), "scheme https is not supported by sandpool");
    }
}
