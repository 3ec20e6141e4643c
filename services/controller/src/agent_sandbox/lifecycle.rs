//! A claim's `lifecycle`: it expires at `shutdownTime` or
//! `ttlSecondsAfterFinished` after its sandbox finished (its mirrored
//! `Finished` condition), whichever is first; then `shutdownPolicy`
//! `Delete`/`DeleteForeground` deletes the claim (and with it the Sandbox),
//! `Retain` (upstream's default) deletes the Sandbox and keeps the claim
//! with `Ready=False` (`ClaimExpired`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::{condition, same_conditions};
use crate::context::{Context, delete_ignoring_missing, patch_status};
use crate::crd::{ClaimShutdownPolicy, Sandbox, SandboxClaim, SandboxClaimSpec};
use crate::error::{Result, is_not_found};

/// The condition a Sandbox (and, mirrored, its claim) has once its pod ended.
pub const FINISHED: &str = "Finished";
/// The Ready reason of a claim past its expiry (`Retain`).
pub const CLAIM_EXPIRED: &str = "ClaimExpired";

/// The `Finished` condition among `conds`, when true.
pub fn finished(conds: &[Condition]) -> Option<&Condition> {
    conds
        .iter()
        .find(|c| c.type_ == FINISHED && c.status == "True")
}

/// When the claim expires: the earlier of its shutdown time and
/// `ttlSecondsAfterFinished` after the `Finished` condition among `conds`
/// turned true; `None`: never.
pub fn expire_at(spec: &SandboxClaimSpec, conds: &[Condition]) -> Option<Timestamp> {
    let shutdown = spec.shutdown_time().map(|t| t.0);
    let ttl = spec
        .lifecycle
        .as_ref()
        .and_then(|l| l.ttl_seconds_after_finished);
    let after_finished = ttl.zip(finished(conds)).and_then(|(ttl, c)| {
        c.last_transition_time
            .0
            .checked_add(SignedDuration::from_secs(i64::from(ttl)))
            .ok()
    });
    match (shutdown, after_finished) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What happens at expiry: `lifecycle.shutdownPolicy`, `Retain` when
/// unset (upstream's default); sandpool's older top-level `shutdownTime`
/// without `lifecycle` deletes.
pub fn policy(spec: &SandboxClaimSpec) -> ClaimShutdownPolicy {
    match &spec.lifecycle {
        Some(l) => l.shutdown_policy.unwrap_or(ClaimShutdownPolicy::Retain),
        None => ClaimShutdownPolicy::Delete,
    }
}

/// The claim is past its expiry: act on its shutdown policy.
pub async fn expire(ctx: &Context, claim: &SandboxClaim, ns: &str) -> Result<Action> {
    let name = claim.name_any();
    let claims: Api<SandboxClaim> = ctx.api(ns);
    let policy = policy(&claim.spec);
    if policy != ClaimShutdownPolicy::Retain {
        ctx.event(
            claim,
            false,
            CLAIM_EXPIRED,
            format!("claim expired: deleting it (shutdownPolicy {policy:?})"),
        )
        .await;
        let dp = if policy == ClaimShutdownPolicy::DeleteForeground {
            DeleteParams::foreground()
        } else {
            DeleteParams::background()
        };
        match claims.delete(&name, &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    retain(ctx, claim, ns).await
}

/// `Retain`: the claim's own Sandbox goes, the claim stays `ClaimExpired`
/// (keeping a mirrored `Finished` condition).
async fn retain(ctx: &Context, claim: &SandboxClaim, ns: &str) -> Result<Action> {
    let name = claim.name_any();
    let sandboxes: Api<Sandbox> = ctx.api(ns);
    if let Some(sb) = super::claim_sandbox(claim, ctx, ns).await? {
        let ours = sb
            .owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && Some(&r.uid) == claim.uid().as_ref());
        if ours && sb.metadata.deletion_timestamp.is_none() {
            delete_ignoring_missing(&sandboxes, &sb.name_any()).await?;
        }
    }
    let old = claim
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conds = vec![condition(
        false,
        CLAIM_EXPIRED,
        "Claim expired. Sandbox cleanup initiated.".into(),
        &old,
        claim.metadata.generation,
    )];
    conds.extend(finished(&old).cloned());
    let gone = claim.status.as_ref().is_none_or(|s| s.sandbox.is_none());
    if !(gone && same_conditions(&old, &conds)) {
        if !old.iter().any(|c| c.reason == CLAIM_EXPIRED) {
            ctx.event(
                claim,
                false,
                CLAIM_EXPIRED,
                "claim expired: its sandbox is deleted, the claim kept (shutdownPolicy Retain)"
                    .into(),
            )
            .await;
        }
        patch_status(
            &ctx.api::<SandboxClaim>(ns),
            &name,
            json!({"conditions": conds, "sandbox": null}),
        )
        .await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn spec(v: serde_json::Value) -> SandboxClaimSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn finished_at(t: &str) -> Vec<Condition> {
        vec![Condition {
            type_: FINISHED.into(),
            status: "True".into(),
            reason: "PodSucceeded".into(),
            message: String::new(),
            last_transition_time: Time(t.parse().expect("time")),
            observed_generation: None,
        }]
    }

    #[test]
    fn expiry_is_the_earlier_of_shutdown_time_and_ttl_after_finished() {
        let ts = |s: &str| Some(s.parse::<Timestamp>().expect("ts"));
        let ttl = spec(json!({"lifecycle": {"ttlSecondsAfterFinished": 60}}));
        assert_eq!(expire_at(&ttl, &[]), None, "not finished: no ttl");
        assert_eq!(
            expire_at(&ttl, &finished_at("2030-01-01T00:00:00Z")),
            ts("2030-01-01T00:01:00Z")
        );
        let both = spec(json!({"lifecycle": {"ttlSecondsAfterFinished": 60,
            "shutdownTime": "2030-01-01T00:00:30Z"}}));
        assert_eq!(
            expire_at(&both, &finished_at("2030-01-01T00:00:00Z")),
            ts("2030-01-01T00:00:30Z")
        );
        let mut not_true = finished_at("2030-01-01T00:00:00Z");
        not_true[0].status = "False".into();
        assert_eq!(expire_at(&ttl, &not_true), None);
    }

    #[test]
    fn retain_is_the_default_under_lifecycle() {
        assert_eq!(
            policy(&spec(
                json!({"lifecycle": {"shutdownTime": "2030-01-01T00:00:00Z"}})
            )),
            ClaimShutdownPolicy::Retain
        );
        assert_eq!(
            policy(&spec(json!({"shutdownTime": "2030-01-01T00:00:00Z"}))),
            ClaimShutdownPolicy::Delete
        );
        assert_eq!(
            policy(&spec(
                json!({"lifecycle": {"shutdownPolicy": "DeleteForeground"}})
            )),
            ClaimShutdownPolicy::DeleteForeground
        );
    }
}
