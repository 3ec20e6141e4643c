//! agent-sandbox controllers: `SandboxWarmPool` ([`warm_pool`]) keeps warm
//! Sandboxes of a template; `SandboxClaim` adopts a ready one
//! (optimistically, by resourceVersion) from its warm pool (`warmPoolRef`)
//! or any pool of its template (`sandboxTemplateRef`), annotating itself
//! with its name, or creates a cold one named after itself; `Sandbox`
//! ([`sandbox`]) runs (or tracks) its pod and reports readiness.

mod claim_env;
mod lifecycle;
mod pod_metadata;
mod sandbox;
mod template;
mod volumes;
mod warm_pool;

pub use pod_metadata::{ALLOWED_LABEL_DOMAINS, LABEL_DOMAINS_FILE, label_domains};
pub use sandbox::{CLUSTER_DOMAIN, reconcile_sandbox, service_ports};
pub use template::{network_policy_name, reconcile_template};
pub use warm_pool::reconcile_warm_pool;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::{Context, delete_ignoring_missing, finalized, now, patch_status, until};
use crate::crd::{
    CLAIM_FINALIZER, CLAIM_SANDBOX_ANNOTATION, CLAIM_UID_LABEL, ClaimedSandbox, LAUNCH_TYPE_LABEL,
    Sandbox, SandboxClaim, SandboxClaimStatus, SandboxSpec, SandboxTemplate, SandboxWarmPool,
    TEMPLATE_HASH_LABEL, WARM_POOL_LABEL,
};
use crate::error::{Error, Result, is_already_exists, is_not_found};
use crate::pods::{controller_ref, short_hash};
use warm_pool::pool_hash;

const EXT_API: &str = "extensions.agents.x-k8s.io/v1beta1";
const CORE_API: &str = "agents.x-k8s.io/v1beta1";

/// The template ref hash label value of the template `template`
/// (upstream's `SandboxTemplateRefHash`: FNV-1a of the name).
pub fn template_hash(template: &str) -> String {
    short_hash(template)
}

async fn get_template(ctx: &Context, ns: &str, name: &str) -> Result<SandboxTemplate> {
    match ctx.api::<SandboxTemplate>(ns).get(name).await {
        Ok(t) => Ok(t),
        Err(e) if is_not_found(&e) => Err(Error::NotFound {
            kind: "SandboxTemplate",
            name: name.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

// ------------------------------------------------------------------ claim

pub async fn reconcile_claim(claim: Arc<SandboxClaim>, ctx: Arc<Context>) -> Result<Action> {
    finalized(&ctx, CLAIM_FINALIZER, claim, async |ev, ns| match ev {
        Finalizer::Apply(c) => apply_claim(&c, &ctx, ns).await,
        Finalizer::Cleanup(c) => {
            // the Sandbox (and through owner references its pod) goes first
            if let Some(sb) = claim_sandbox(&c, &ctx, ns).await? {
                delete_ignoring_missing(&ctx.api::<Sandbox>(ns), &sb.name_any()).await?;
            }
            Ok(Action::await_change())
        }
    })
    .await
}

fn condition(
    ready: bool,
    reason: &str,
    message: String,
    old: &[Condition],
    generation: Option<i64>,
) -> Condition {
    typed_condition("Ready", ready, reason, message, old, generation)
}

fn typed_condition(
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    old: &[Condition],
    generation: Option<i64>,
) -> Condition {
    let status = if value { "True" } else { "False" };
    // keep the transition time when the status did not change
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    }
}

fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
        })
}

/// Where a claim's sandbox comes from: the template, and the label selector
/// of the warm pods it may adopt (`None`: always cold).
struct Source {
    template: SandboxTemplate,
    warm: Option<String>,
    /// The template's and the claim's, merged.
    volume_claim_templates: Vec<serde_json::Value>,
}

/// Why a claim cannot be served (yet): `(reason, message)` of its condition.
type Refusal = (&'static str, String);

/// The claim's template and warm pods: `warmPoolRef` names the pool (its
/// template); `sandboxTemplateRef` names the template (any pool of it, or
/// per v1alpha1's `warmpool`: `none`, or one pool by name).
async fn claim_source(
    claim: &SandboxClaim,
    ctx: &Context,
    ns: &str,
) -> Result<std::result::Result<Source, Refusal>> {
    let (tname, warm) = if let Some(wp) = &claim.spec.warm_pool_ref {
        match ctx.api::<SandboxWarmPool>(ns).get_opt(&wp.name).await? {
            Some(pool) => (
                pool.spec.sandbox_template_ref.name,
                Some(format!("{WARM_POOL_LABEL}={}", pool_hash(&wp.name))),
            ),
            None => {
                return Ok(Err((
                    "WarmPoolNotFound",
                    format!("SandboxWarmPool {:?} not found", wp.name),
                )));
            }
        }
    } else if let Some(t) = &claim.spec.sandbox_template_ref {
        let warm = match claim.spec.warmpool.as_deref() {
            Some("none") => None,
            None | Some("default" | "") => Some(format!(
                "{TEMPLATE_HASH_LABEL}={},{WARM_POOL_LABEL}",
                template_hash(&t.name)
            )),
            Some(pool) => Some(format!("{WARM_POOL_LABEL}={}", pool_hash(pool))),
        };
        (t.name.clone(), warm)
    } else {
        return Ok(Err((
            "InvalidClaim",
            "spec.warmPoolRef or spec.sandboxTemplateRef is required".into(),
        )));
    };
    let mut template = match get_template(ctx, ns, &tname).await {
        Ok(t) => t,
        Err(e @ Error::NotFound { .. }) => return Ok(Err(("TemplateNotFound", e.to_string()))),
        Err(e) => return Err(e),
    };
    let volume_claim_templates = match volumes::merge_claim_templates(
        &template.spec.volume_claim_templates,
        &claim.spec.volume_claim_templates,
        template.spec.volume_claim_templates_policy,
    ) {
        Ok(v) => v,
        Err(msg) => {
            return Ok(Err((
                "VolumeClaimTemplatesRejected",
                format!("volume claim templates rejected: {msg}"),
            )));
        }
    };
    if let Some(extra) = &claim.spec.additional_pod_metadata {
        let meta = template
            .spec
            .pod_template
            .metadata
            .get_or_insert_with(Default::default);
        let labels = meta.labels.get_or_insert_with(Default::default);
        let mut annotations = meta.annotations.take().unwrap_or_default();
        let merged = pod_metadata::merge(labels, &mut annotations, extra, &ctx.label_domains);
        meta.annotations = Some(annotations);
        if let Err(msg) = merged {
            return Ok(Err((
                "InvalidMetadata",
                format!("additionalPodMetadata: {msg}"),
            )));
        }
    }
    // a warm Sandbox has neither the claim's variables nor its volumes: cold
    let warm =
        warm.filter(|_| claim.spec.env.is_empty() && claim.spec.volume_claim_templates.is_empty());
    if !claim.spec.env.is_empty() {
        let policy = template.spec.env_vars_injection_policy;
        if let Err(msg) =
            claim_env::inject(&mut template.spec.pod_template, &claim.spec.env, policy)
        {
            return Ok(Err((
                "EnvVarsInjectionRejected",
                format!("environment variable injection rejected: {msg}"),
            )));
        }
    }
    Ok(Ok(Source {
        template,
        warm,
        volume_claim_templates,
    }))
}

/// The claim's `Sandbox`: the one its `agents.x-k8s.io/sandbox-name`
/// annotation names (an adopted warm one), else one labelled with its uid
/// (adopted, annotation not written yet), else the one named after it.
async fn claim_sandbox(claim: &SandboxClaim, ctx: &Context, ns: &str) -> Result<Option<Sandbox>> {
    let api: Api<Sandbox> = ctx.api(ns);
    if let Some(n) = claim.annotations().get(CLAIM_SANDBOX_ANNOTATION) {
        return Ok(api.get_opt(n).await?);
    }
    if let Some(uid) = claim.uid() {
        let lp = ListParams::default().labels(&format!("{CLAIM_UID_LABEL}={uid}"));
        if let Some(sb) = api.list(&lp).await?.items.into_iter().next() {
            return Ok(Some(sb));
        }
    }
    Ok(api.get_opt(&claim.name_any()).await?)
}

/// The claim's `Sandbox`: a warm one adopted for it (the claim annotated
/// with its name), else a cold one named after the claim; an existing one
/// (a racing reconcile created it) is returned as is.
async fn create_claim_sandbox(
    claim: &SandboxClaim,
    ctx: &Context,
    ns: &str,
    source: &Source,
) -> Result<Sandbox> {
    let name = claim.name_any();
    let sandboxes: Api<Sandbox> = ctx.api(ns);
    let claim_owner = controller_ref(
        EXT_API,
        "SandboxClaim",
        &name,
        &claim.uid().unwrap_or_default(),
    );
    if let Some(sel) = &source.warm {
        let how = warm_pool::Adoption {
            owner: claim_owner.clone(),
            claim_uid: claim.uid().unwrap_or_default(),
            extra: claim.spec.additional_pod_metadata.as_ref(),
            shutdown_time: claim
                .spec
                .shutdown_time()
                .map(serde_json::to_value)
                .transpose()?,
            volume_claim_templates: &source.volume_claim_templates,
        };
        // boxed: the adoption's future is large for the reconciler's stack
        if let Some(sb) = Box::pin(warm_pool::adopt_warm_sandbox(ctx, ns, sel, &how)).await? {
            let annotate =
                json!({"metadata": {"annotations": {CLAIM_SANDBOX_ANNOTATION: sb.name_any()}}});
            ctx.api::<SandboxClaim>(ns)
                .patch(&name, &PatchParams::default(), &Patch::Merge(annotate))
                .await?;
            let msg = format!("sandbox {} adopted from the warm pool", sb.name_any());
            ctx.event(claim, false, "SandboxAdopted", msg).await;
            return Ok(sb);
        }
    }
    let mut spec = SandboxSpec::new(source.template.spec.pod_template.clone());
    // the template's NetworkPolicy selects its sandboxes' pods by this label
    spec.pod_template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(
            TEMPLATE_HASH_LABEL.to_string(),
            template_hash(&source.template.name_any()),
        );
    spec.service = source.template.spec.service;
    spec.volume_claim_templates = source.volume_claim_templates.clone();
    spec.shutdown_time = claim.spec.shutdown_time().cloned();
    let sb = Sandbox {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some([(LAUNCH_TYPE_LABEL.to_string(), "cold".to_string())].into()),
            owner_references: Some(vec![claim_owner]),
            ..Default::default()
        },
        spec,
        status: None,
    };
    match sandboxes.create(&PostParams::default(), &sb).await {
        Ok(s) => {
            let msg = format!("sandbox {name} cold (no warm sandbox)");
            ctx.event(claim, false, "SandboxCreated", msg).await;
            Ok(s)
        }
        Err(e) if is_already_exists(&e) => Ok(sandboxes.get(&name).await?),
        Err(e) => Err(e.into()),
    }
}

async fn apply_claim(claim: &SandboxClaim, ctx: &Context, ns: &str) -> Result<Action> {
    let name = claim.name_any();
    let claims: Api<SandboxClaim> = ctx.api(ns);
    let old_conditions = claim
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    if lifecycle::expire_at(&claim.spec, &old_conditions).is_some_and(|t| t <= now()) {
        return lifecycle::expire(ctx, claim, ns).await;
    }
    let sandbox = match claim_sandbox(claim, ctx, ns).await? {
        Some(s) => s,
        None => match claim_source(claim, ctx, ns).await? {
            Ok(source) => Box::pin(create_claim_sandbox(claim, ctx, ns, &source)).await?,
            Err((reason, message)) => {
                let cond = condition(
                    false,
                    reason,
                    message,
                    &old_conditions,
                    claim.metadata.generation,
                );
                if !same_conditions(&old_conditions, std::slice::from_ref(&cond)) {
                    ctx.event(claim, true, reason, cond.message.clone()).await;
                    patch_status(&claims, &name, json!({"conditions": [cond]})).await?;
                }
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
        },
    };
    let sb_status = sandbox.status.clone().unwrap_or_default();
    let sb_ready = sb_status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned();
    // the Sandbox's Ready condition, forwarded (as upstream)
    let (ready, reason, message) = match sb_ready {
        Some(c) => (c.status == "True", c.reason, c.message),
        None => (
            false,
            "SandboxNotReady".to_string(),
            format!("sandbox {} is not ready", sandbox.name_any()),
        ),
    };
    let mut conditions = vec![condition(
        ready,
        &reason,
        message,
        &old_conditions,
        claim.metadata.generation,
    )];
    // the Sandbox's Finished condition, mirrored (ttlSecondsAfterFinished counts from it)
    conditions.extend(lifecycle::finished(&sb_status.conditions).cloned());
    let status = SandboxClaimStatus {
        conditions,
        sandbox: Some(ClaimedSandbox {
            name: sandbox.name_any(),
            pod_ips: sb_status.pod_ips,
        }),
    };
    let unchanged = claim.status.as_ref().is_some_and(|s| {
        s.sandbox == status.sandbox && same_conditions(&s.conditions, &status.conditions)
    });
    if !unchanged {
        patch_status(&claims, &name, serde_json::to_value(&status)?).await?;
    }
    let expiry = lifecycle::expire_at(&claim.spec, &status.conditions).map(Time);
    Ok(requeue(ctx, ready, expiry.as_ref()))
}

/// Past its shutdown time, `obj` is deleted (with an `Expired` event) and
/// this is `true`.
async fn expired<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    shutdown_time: Option<&Time>,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(t) = shutdown_time.filter(|t| t.0 <= now()) else {
        return Ok(false);
    };
    ctx.event(
        obj,
        false,
        "Expired",
        format!("shutdown time {} reached", t.0),
    )
    .await;
    delete_ignoring_missing(api, &obj.name_any()).await?;
    Ok(true)
}

/// When to look again: in five minutes once ready (`ctx.settle` while
/// not), and at the shutdown time at the latest.
fn requeue(ctx: &Context, ready: bool, shutdown_time: Option<&Time>) -> Action {
    let mut next = if ready {
        Duration::from_secs(300)
    } else {
        ctx.settle
    };
    if let Some(t) = shutdown_time {
        next = next.min(until(t.0).max(Duration::from_millis(100)));
    }
    Action::requeue(next)
}
