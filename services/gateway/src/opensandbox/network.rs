//! `/v1/sandboxes/{id}/networkpolicy`: a sandbox's egress policy read back
//! and changed live (replace, patch rules by target, delete rules by target).

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::Value;

use super::Result;
use crate::{Gateway, egress, error::ApiError, extract};

pub async fn get_policy(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Json<Value>> {
    let c = gw.get_claim(&id).await?;
    Ok(Json(egress::opensandbox_status(c.egress.as_ref())))
}

/// Replace the policy (a `NetworkPolicy` body; `null` or `{}` allows all).
pub async fn replace_policy(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Json<Value>> {
    let v: Value = extract::parse_json(&body)?;
    let p = egress::from_opensandbox(Some(&v))?.unwrap_or_default();
    let c = gw.set_claim_egress(&id, p).await?;
    Ok(Json(egress::opensandbox_status(c.egress.as_ref())))
}

/// Add or replace rules by target (a list of `NetworkRule`), on the
/// sandbox's own policy (one that set none starts from allow-all).
pub async fn patch_policy(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Json<Value>> {
    let v: Value = extract::parse_json(&body)?;
    let rules = egress::os_rules("body", &v)?;
    let mut p = gw.get_claim(&id).await?.egress.unwrap_or_default();
    egress::patch_rules(&mut p, rules);
    let c = gw.set_claim_egress(&id, p).await?;
    Ok(Json(egress::opensandbox_status(c.egress.as_ref())))
}

/// Remove the rules of the listed targets (a list of strings).
pub async fn delete_rules(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Json<Value>> {
    let targets: Vec<String> = extract::parse_json(&body)
        .map_err(|_| ApiError::Invalid("the body must be a list of rule targets".into()))?;
    let mut p = gw.get_claim(&id).await?.egress.unwrap_or_default();
    egress::delete_targets(&mut p, &targets);
    let c = gw.set_claim_egress(&id, p).await?;
    Ok(Json(egress::opensandbox_status(c.egress.as_ref())))
}
