//! A sandbox's default env vars (E2B `envVars`) go to its envd through
//! `/init`, as E2B's orchestrator hands them to envd when a sandbox boots:
//! once its claim is made, and again when a filesystem-only resume starts
//! it afresh (its runtime held them in memory only; the claim keeps them,
//! `Claim.sandbox_env`).

use std::collections::HashMap;

use sandpool_proto::v1 as pb;
use serde_json::json;

use crate::{Gateway, error::ApiError};

use super::ENVD_PORT;

/// `POST /init` `{"envVars": envs}` to sandbox `sb`'s envd.
pub(crate) async fn send(
    gw: &Gateway,
    sb: &pb::SandboxInfo,
    envs: &HashMap<String, String>,
) -> Result<(), ApiError> {
    let (envd, named) = crate::opensandbox::sandbox_target(sb, u32::from(ENVD_PORT))?;
    let mut init = gw.http.post(format!("http://{}:{envd}/init", sb.ip));
    if let Some(p) = named {
        init = init.header(crate::opensandbox::PORT_HEADER, p.to_string());
    }
    let sent = init
        .header("x-access-token", &sb.access_token)
        .json(&json!({ "envVars": envs }))
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(r.status().to_string()),
        Err(e) => Err(e.to_string()),
    }
    .map_err(|e| ApiError::BadGateway(format!("setting env vars in sandbox: {e}")))
}

/// After claim `c` resumed: a sandbox that was paused filesystem-only
/// (`was_filesystem_only`) gets the claim's env vars again.
pub(crate) async fn after_resume(
    gw: &Gateway,
    was_filesystem_only: bool,
    c: &pb::Claim,
) -> Result<(), ApiError> {
    match c.sandbox.as_ref() {
        Some(sb) if was_filesystem_only && !c.sandbox_env.is_empty() => {
            send(gw, sb, &c.sandbox_env).await
        }
        _ => Ok(()),
    }
}
