//! The end of a BatchSandbox's life at its expiry: deleted, or, for a claim
//! that asked for it (annotation [`ON_EXPIRY_ANNOTATION`] `pause`: E2B
//! `autoPause`), paused instead: its pod is frozen through the node agent of
//! its node exactly as a REST pause does ([`crate::kube_scheduler`]'s
//! `freeze`), with no timeout until it is resumed (which gives it
//! [`RESUMED_TTL_MS`] unless the resume sets one) or released. A claim that
//! cannot be paused (no node agent, gVisor, no ready pod, ...) is deleted as
//! before, with a Warning event naming why.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use sandpool_core::claim::{ClaimEvent, OnExpiry, RESUMED_TTL_MS};
use tonic::Status;

use crate::context::{Context, delete_ignoring_missing};
use crate::crd::BatchSandbox;
use crate::error::Result;
use crate::kube_scheduler::CLAIM_LABEL;
pub use crate::kube_scheduler::ON_EXPIRY_ANNOTATION;

/// What an expired batch's end is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Deleted (the default).
    Delete,
    /// Paused instead (a claim that asked for it).
    Pause,
    /// Deleted although it asked for something else, for this reason.
    DeleteInstead(String),
}

/// The end of expired `batch` (no I/O): a pause when it is a claim whose
/// [`ON_EXPIRY_ANNOTATION`] says `pause`.
pub fn decide(batch: &BatchSandbox) -> Expiry {
    let word = batch.annotations().get(ON_EXPIRY_ANNOTATION);
    match OnExpiry::parse(word.map(String::as_str)) {
        Ok(OnExpiry::Release) => Expiry::Delete,
        Err(e) => Expiry::DeleteInstead(format!("{ON_EXPIRY_ANNOTATION}: {e}")),
        Ok(OnExpiry::Pause)
            if batch.labels().get(CLAIM_LABEL).map(String::as_str) != Some("true") =>
        {
            Expiry::DeleteInstead(format!(
                "{ON_EXPIRY_ANNOTATION}: pause applies to claims only (label {CLAIM_LABEL}=true)"
            ))
        }
        Ok(OnExpiry::Pause) => Expiry::Pause,
    }
}

/// Act on `batch`'s expiry at `at` (see the module doc).
pub async fn expire(
    batch: &BatchSandbox,
    ctx: &Context,
    ns: &str,
    at: Timestamp,
) -> Result<Action> {
    let batches: Api<BatchSandbox> = ctx.api(ns);
    let why = match decide(batch) {
        Expiry::Delete => None,
        Expiry::DeleteInstead(why) => Some(why),
        Expiry::Pause => match pause(batch, ctx, ns).await {
            Ok(()) => {
                let note = format!(
                    "expired at {at}; paused ({ON_EXPIRY_ANNOTATION}: pause) until resumed or released"
                );
                ctx.event(batch, false, "PausedOnExpiry", note).await;
                return Ok(Action::await_change());
            }
            Err(s) => Some(format!("pausing it failed: {}", s.message())),
        },
    };
    match why {
        None => {
            let note = format!("expired at {at}; deleting");
            ctx.event(batch, false, "Expired", note).await;
        }
        Some(why) => {
            let note = format!("expired at {at}; {why}; deleting instead");
            ctx.event(batch, true, "PauseOnExpiryFailed", note).await;
        }
    }
    delete_ignoring_missing(&batches, &batch.name_any()).await?;
    Ok(Action::await_change())
}

/// Pause claim `batch` (running in `pod`) as a REST pause does; `left_ms`
/// is the TTL set aside for its resume (`None`: what is left of its own).
pub(crate) async fn pause_claim(
    batch: &BatchSandbox,
    pod: Option<&Pod>,
    ctx: &Context,
    ns: &str,
    left_ms: Option<i64>,
) -> std::result::Result<(), Status> {
    let batches = ctx.api(ns);
    crate::kube_scheduler::freeze(
        ctx.nodes.as_ref(),
        &batches,
        (batch, pod),
        ClaimEvent::Pause,
        left_ms,
    )
    .await
    .map(drop)
}

/// Pause claim `batch` at its expiry, setting [`RESUMED_TTL_MS`] aside for
/// its resume.
async fn pause(batch: &BatchSandbox, ctx: &Context, ns: &str) -> std::result::Result<(), Status> {
    let pod = crate::kube_scheduler::claim_pod(&ctx.api(ns), batch).await?;
    pause_claim(batch, pod.as_ref(), ctx, ns, Some(RESUMED_TTL_MS)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BatchSandboxSpec;

    fn spec() -> BatchSandboxSpec {
        serde_json::from_value(serde_json::json!({"replicas": 1})).expect("spec")
    }

    fn batch(claim: bool, on_expiry: Option<&str>) -> BatchSandbox {
        let mut b = BatchSandbox::new("b", spec());
        if claim {
            b.labels_mut().insert(CLAIM_LABEL.into(), "true".into());
        }
        if let Some(w) = on_expiry {
            b.annotations_mut()
                .insert(ON_EXPIRY_ANNOTATION.into(), w.into());
        }
        b
    }

    #[test]
    fn a_claim_asking_for_a_pause_is_paused_everything_else_deleted() {
        assert_eq!(decide(&batch(true, Some("pause"))), Expiry::Pause);
        assert_eq!(decide(&batch(true, None)), Expiry::Delete);
        assert_eq!(decide(&batch(true, Some("delete"))), Expiry::Delete);
        assert_eq!(decide(&batch(false, None)), Expiry::Delete);
        let Expiry::DeleteInstead(why) = decide(&batch(false, Some("pause"))) else {
            panic!("a plain batch is not paused");
        };
        assert!(why.contains("claims only"), "{why}");
        let Expiry::DeleteInstead(why) = decide(&batch(true, Some("sleep"))) else {
            panic!("an unknown word is not honoured");
        };
        assert!(why.contains("\"sleep\""), "{why}");
    }
}
