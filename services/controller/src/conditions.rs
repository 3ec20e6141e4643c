//! Reconcile failures reported where `kubectl describe` shows them: a
//! `Ready=False` condition (reason, message) written through the status
//! subresource, and a Warning Event. Every controller's reconcile runs
//! inside [`reported`]; a reconciler that refuses an object without failing
//! (an invalid spec, a missing template) calls [`failed`] itself.

use std::cell::Cell;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::finalizer;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::{Context, patch_status};
use crate::crd::{BatchSandbox, Pool, Sandbox, SandboxClaim, SandboxWarmPool};
use crate::error::{Error, Result};

/// Upstream's condition type (agent-sandbox and OpenSandbox BatchSandbox).
pub const READY: &str = "Ready";
/// The longest message a metav1.Condition takes.
const MAX_MESSAGE: usize = 32768;

tokio::task_local! {
    /// Set when the reconcile under way reported a failure itself.
    static REPORTED: Cell<bool>;
}

/// A resource whose status carries conditions.
pub trait WithConditions:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    fn conditions(&self) -> &[Condition];
    /// A successful reconcile writes the Ready condition itself (else a
    /// failure's condition is removed once a reconcile succeeds).
    const WRITES_READY: bool = false;
}

impl WithConditions for Pool {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl WithConditions for BatchSandbox {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl WithConditions for SandboxWarmPool {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl WithConditions for SandboxClaim {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    const WRITES_READY: bool = true;
}

impl WithConditions for Sandbox {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    const WRITES_READY: bool = true;
}

/// The condition reason (CamelCase, as the apiserver's pattern wants) of `e`.
pub fn reason_of(e: &Error) -> String {
    match e {
        Error::NotFound { kind, .. } => format!("{kind}NotFound"),
        Error::Invalid { .. } => "InvalidSpec".into(),
        Error::Kube(kube::Error::Api(s))
            if !s.reason.is_empty() && s.reason.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            s.reason.clone()
        }
        Error::Kube(_) => "KubernetesAPIError".into(),
        Error::Finalizer(f) => match f.as_ref() {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => reason_of(e),
            _ => "FinalizerError".into(),
        },
        Error::Runtime { .. } | Error::RuntimeConnect { .. } | Error::RuntimeCall { .. } => {
            "RuntimeError".into()
        }
        Error::Json(_) => "SerializationError".into(),
        Error::Conversion(_) => "ConversionFailed".into(),
        Error::Webhook { .. } => "WebhookError".into(),
    }
}

/// What to tell the user about `e` (a finalizer's wrapping left out).
pub fn message_of(e: &Error) -> String {
    match e {
        Error::Finalizer(f) => match f.as_ref() {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => message_of(e),
            other => other.to_string(),
        },
        // the apiserver's own sentence, without kube's debug dump
        Error::Kube(kube::Error::Api(s)) if !s.message.is_empty() => s.message.clone(),
        e => e.to_string(),
    }
}

/// `old` with its Ready condition replaced by `Ready=False` (`reason`,
/// `message`); the transition time stays when it was False already.
pub fn not_ready(
    old: &[Condition],
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    let mut message = message.to_string();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    let since = old
        .iter()
        .find(|c| c.type_ == READY && c.status == "False")
        .map_or_else(
            || Time(crate::context::now()),
            |c| c.last_transition_time.clone(),
        );
    let mut out: Vec<Condition> = old.iter().filter(|c| c.type_ != READY).cloned().collect();
    out.push(Condition {
        type_: READY.into(),
        status: "False".into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    });
    out
}

/// Report that `obj` cannot be reconciled: a Warning Event, and `Ready=False`
/// with `reason` and `message` on its status (unless it says so already).
/// Failures to report are logged, never fatal.
pub async fn failed<K: WithConditions>(ctx: &Context, obj: &K, reason: &str, message: String) {
    let _ = REPORTED.try_with(|r| r.set(true));
    ctx.event(obj, true, reason, message.clone()).await;
    if obj.meta().deletion_timestamp.is_some() {
        return;
    }
    let old = obj.conditions();
    let said = old.iter().any(|c| {
        c.type_ == READY && c.status == "False" && c.reason == reason && c.message == message
    });
    if said {
        return;
    }
    let Some(ns) = obj.namespace() else { return };
    let conditions = not_ready(old, reason, &message, obj.meta().generation);
    let api = ctx.api::<K>(&ns);
    if let Err(e) = patch_status(&api, &obj.name_any(), json!({ "conditions": conditions })).await {
        tracing::debug!(error = %e, object = %obj.name_any(), "writing the failure condition failed");
    }
}

/// Drop the Ready condition a failure left, now that a reconcile succeeded.
async fn recovered<K: WithConditions>(ctx: &Context, obj: &K) {
    let old = obj.conditions();
    if !old.iter().any(|c| c.type_ == READY && c.status == "False") {
        return;
    }
    let Some(ns) = obj.namespace() else { return };
    let rest: Vec<&Condition> = old.iter().filter(|c| c.type_ != READY).collect();
    let api = ctx.api::<K>(&ns);
    if let Err(e) = patch_status(&api, &obj.name_any(), json!({ "conditions": rest })).await {
        tracing::debug!(error = %e, object = %obj.name_any(), "clearing the failure condition failed");
    }
}

/// Run `reconcile` on `obj`; a failure is reported on the object (see
/// [`failed`]) and returned for the retry.
pub async fn reported<K, F, Fut>(obj: Arc<K>, ctx: Arc<Context>, reconcile: F) -> Result<Action>
where
    K: WithConditions,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    let run = reconcile(obj.clone(), ctx.clone());
    let (result, reported) = REPORTED
        .scope(Cell::new(false), async {
            let r = run.await;
            (r, REPORTED.with(Cell::get))
        })
        .await;
    match &result {
        Err(e) => failed(&ctx, obj.as_ref(), &reason_of(e), message_of(e)).await,
        Ok(_) if !K::WRITES_READY && !reported => recovered(&ctx, obj.as_ref()).await,
        Ok(_) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_camel_case_words() {
        let e = Error::NotFound {
            kind: "Pool",
            name: "p".into(),
        };
        assert_eq!(reason_of(&e), "PoolNotFound");
        assert_eq!(
            reason_of(&Error::invalid("Pool", "p", "bad")),
            "InvalidSpec"
        );
    }

    #[test]
    fn a_repeated_failure_keeps_its_transition_time_and_other_conditions() {
        let first = not_ready(&[], "Forbidden", "no runtime class", Some(1));
        let mut old = first.clone();
        old.push(Condition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: "Scaling".into(),
            message: String::new(),
            last_transition_time: Time(crate::context::now()),
            observed_generation: None,
        });
        let again = not_ready(&old, "PoolNotFound", "Pool p not found", Some(2));
        assert_eq!(again.len(), 2);
        let ready = again.iter().find(|c| c.type_ == READY).expect("ready");
        assert_eq!(ready.reason, "PoolNotFound");
        assert_eq!(ready.last_transition_time, first[0].last_transition_time);
        assert!(again.iter().any(|c| c.type_ == "Progressing"));
        let long = not_ready(&[], "X", &"é".repeat(MAX_MESSAGE), None);
        assert!(long[0].message.len() <= MAX_MESSAGE);
    }
}
