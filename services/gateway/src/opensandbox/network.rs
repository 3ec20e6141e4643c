//! `/v1/sandboxes/{id}/networkpolicy`: a sandbox's egress policy read back
//! and changed live (replace, patch rules by target, delete rules by target).

use axum::{
    Json,
    extract::{Path, State},
    http::Method,
};
use sandpool_proto::v1 as pb;
use serde_json::Value;

use super::Result;
use crate::{Gateway, egress, error::ApiError, extract};

/// Held across a policy's read-modify-write (here and on the `/policy` API
/// of port 18080), so parallel changes through one gateway lose none.
pub(super) static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn get_policy(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Json<Value>> {
    let c = gw.get_claim(&id).await?;
    Ok(Json(egress::opensandbox_status(&effective(&gw, &c).await?)))
}

/// The policy sandbox `c` runs under: its own, else its pool's (a cold
/// sandbox without one of its own: everything allowed).
pub(super) async fn effective(gw: &Gateway, c: &pb::Claim) -> Result<pb::EgressPolicy> {
    if let Some(p) = &c.egress {
        return Ok(p.clone());
    }
    if c.pool.is_empty() {
        return Ok(pb::EgressPolicy::default());
    }
    match gw.get_pool(&c.pool).await {
        Ok(pool) => Ok(pool.template.and_then(|t| t.egress).unwrap_or_default()),
        // what it was created under is no longer known: not guessed
        Err(ApiError::PoolNotFound(_)) => Err(ApiError::Conflict(format!(
            "sandbox {} runs under the egress policy of pool {}, which is gone; PUT a whole policy instead",
            c.claim_id, c.pool
        ))),
        Err(e) => Err(e),
    }
}

/// `PUT` replaces the policy (a `NetworkPolicy`; `{}` allows all), `PATCH`
/// adds or replaces rules by target (a list of `NetworkRule`), `DELETE`
/// removes the rules of the listed targets (a list of strings). A patch or
/// delete works on the policy the sandbox runs under (its pool's if it
/// set none of its own).
/// Answers with the policy the sandbox now has.
pub async fn change_policy(
    method: Method,
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Json<Value>> {
    let v: Value = extract::parse_json(&body)?;
    let _serial = CHANGES.lock().await;
    let c = gw.get_claim(&id).await?;
    let mut p = if method == Method::PUT {
        egress::from_opensandbox(Some(&v))?.unwrap_or_default()
    } else {
        effective(&gw, &c).await?
    };
    if method == Method::PATCH {
        egress::patch_rules(&mut p, egress::os_rules("body", &v)?);
    } else if method == Method::DELETE {
        let targets: Vec<String> = serde_json::from_value(v)
            .map_err(|_| ApiError::Invalid("the body must be a list of rule targets".into()))?;
        egress::delete_targets(&mut p, &targets);
    }
    let c: pb::Claim = gw.set_claim_egress(&id, p).await?;
    Ok(Json(egress::opensandbox_status(
        &c.egress.unwrap_or_default(),
    )))
}
