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

pub async fn get_policy(State(gw): State<Gateway>, Path(id): Path<String>) -> Result<Json<Value>> {
    let c = gw.get_claim(&id).await?;
    Ok(Json(egress::opensandbox_status(c.egress.as_ref())))
}

/// `PUT` replaces the policy (a `NetworkPolicy`; `{}` allows all), `PATCH`
/// adds or replaces rules by target (a list of `NetworkRule`), `DELETE`
/// removes the rules of the listed targets (a list of strings). A patch or
/// delete works on the sandbox's own policy (allow-all if it set none).
/// Answers with the policy the sandbox now has.
pub async fn change_policy(
    method: Method,
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Json<Value>> {
    let v: Value = extract::parse_json(&body)?;
    let mut p = gw.get_claim(&id).await?.egress.unwrap_or_default();
    if method == Method::PUT {
        p = egress::from_opensandbox(Some(&v))?.unwrap_or_default();
    } else if method == Method::PATCH {
        egress::patch_rules(&mut p, egress::os_rules("body", &v)?);
    } else {
        let targets: Vec<String> = serde_json::from_value(v)
            .map_err(|_| ApiError::Invalid("the body must be a list of rule targets".into()))?;
        egress::delete_targets(&mut p, &targets);
    }
    let c: pb::Claim = gw.set_claim_egress(&id, p).await?;
    Ok(Json(egress::opensandbox_status(c.egress.as_ref())))
}
