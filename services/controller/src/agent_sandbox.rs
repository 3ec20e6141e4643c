//! agent-sandbox controllers: `SandboxWarmPool` keeps warm pods of a
//! template; `SandboxClaim` adopts one (optimistically, by resourceVersion)
//! from its warm pool (`warmPoolRef`) or any pool of its template
//! (`sandboxTemplateRef`) into a `Sandbox` annotated
//! `agents.x-k8s.io/pod-name`, or creates a cold one; `Sandbox`
//! ([`sandbox`]) runs (or tracks) its pod and reports readiness.

mod claim_env;
mod lifecycle;
mod pod_metadata;
mod sandbox;
mod template;
mod volumes;

pub use pod_metadata::{ALLOWED_LABEL_DOMAINS, LABEL_DOMAINS_FILE, label_domains};
pub use sandbox::{CLUSTER_DOMAIN, reconcile_sandbox, service_ports};
pub use template::{network_policy_name, reconcile_template};

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::{
    Context, delete_ignoring_missing, finalized, list_pods, namespace_of, now, patch_status, until,
};
use crate::crd::{
    CLAIM_FINALIZER, ClaimedSandbox, POD_NAME_ANNOTATION, PodMetadata, SANDBOX_NAME_HASH_LABEL,
    Sandbox, SandboxClaim, SandboxClaimStatus, SandboxSpec, SandboxTemplate, SandboxWarmPool,
    SandboxWarmPoolStatus, TEMPLATE_HASH_LABEL, UpdateStrategyType, WARM_POOL_LABEL,
};
use crate::error::{Error, Result, is_already_exists, is_conflict, is_not_found};
use crate::pods::{self, controller_ref, short_hash};

const EXT_API: &str = "extensions.agents.x-k8s.io/v1beta1";
const CORE_API: &str = "agents.x-k8s.io/v1beta1";

pub fn template_hash(ns: &str, template: &str) -> String {
    short_hash(&format!("{ns}/{template}"))
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

// ------------------------------------------------------------------ warm pool

pub async fn reconcile_warm_pool(wp: Arc<SandboxWarmPool>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace_of(wp.as_ref())?;
    let name = wp.name_any();
    if wp.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tname = &wp.spec.sandbox_template_ref.name;
    let template = match get_template(&ctx, &ns, tname).await {
        Ok(t) => t,
        Err(e @ Error::NotFound { .. }) => {
            crate::conditions::failed(&ctx, wp.as_ref(), "TemplateNotFound", e.to_string()).await;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        Err(e) => return Err(e),
    };
    if wp
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_)
        .is_some_and(|t| t == UpdateStrategyType::Recreate)
    {
        ctx.event(
            wp.as_ref(),
            true,
            "UnsupportedField",
            "spec.updateStrategy.type Recreate is not supported by sandpool; warm pods are replaced on replenish only".into(),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let pool_hash = pool_hash(&ns, &name);
    let api: Api<Pod> = ctx.api(&ns);
    let mut live = Vec::new();
    for p in list_pods(&api, &format!("{WARM_POOL_LABEL}={pool_hash}")).await? {
        if pods::is_terminating(&p) {
            continue;
        }
        if pods::is_finished(&p) {
            delete_ignoring_missing(&api, &p.name_any()).await?;
        } else {
            live.push(p);
        }
    }
    let want = usize::try_from(wp.spec.replicas).unwrap_or(0);
    let mut created = 0;
    if live.len() < want {
        let owner = controller_ref(
            EXT_API,
            "SandboxWarmPool",
            &name,
            &wp.uid().unwrap_or_default(),
        );
        for _ in live.len()..want {
            let meta = ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some(ns.clone()),
                labels: Some(
                    [
                        (WARM_POOL_LABEL.to_string(), pool_hash.clone()),
                        (TEMPLATE_HASH_LABEL.to_string(), template_hash(&ns, tname)),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            };
            let pod = ctx.agent_sandbox_pod(&template.spec.pod_template, meta)?;
            api.create(&PostParams::default(), &pod).await?;
            created += 1;
        }
    } else if live.len() > want {
        // not-ready pods go first
        live.sort_by_key(pods::is_ready);
        for p in live.drain(..live.len() - want) {
            delete_ignoring_missing(&api, &p.name_any()).await?;
        }
    }
    let status = warm_pool_status(&wp, &live, created, &pool_hash);
    if wp.status.as_ref() != Some(&status) {
        patch_status(
            &ctx.api::<SandboxWarmPool>(&ns),
            &name,
            serde_json::to_value(&status)?,
        )
        .await?;
    }
    let settling = created > 0 || status.ready_replicas < want as i32;
    Ok(Action::requeue(if settling {
        ctx.settle
    } else {
        Duration::from_secs(60)
    }))
}

/// The warm pool's status: its pods (`live` ones and `created` ones), the
/// selector the scale subresource reads (HPA/KEDA count these pods), and the
/// generation it reflects.
fn warm_pool_status(
    wp: &SandboxWarmPool,
    live: &[Pod],
    created: usize,
    pool_hash: &str,
) -> SandboxWarmPoolStatus {
    SandboxWarmPoolStatus {
        replicas: (live.len() + created) as i32,
        ready_replicas: live.iter().filter(|p| pods::is_ready(p)).count() as i32,
        selector: Some(format!("{WARM_POOL_LABEL}={pool_hash}")),
        observed_generation: wp.metadata.generation,
        ..wp.status.clone().unwrap_or_default()
    }
}

// ------------------------------------------------------------------ claim

pub async fn reconcile_claim(claim: Arc<SandboxClaim>, ctx: Arc<Context>) -> Result<Action> {
    finalized(&ctx, CLAIM_FINALIZER, claim, async |ev, ns| match ev {
        Finalizer::Apply(c) => apply_claim(&c, &ctx, ns).await,
        Finalizer::Cleanup(c) => {
            // the Sandbox (and through owner references its pod) goes first
            delete_ignoring_missing(&ctx.api::<Sandbox>(ns), &c.name_any()).await?;
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

/// Adopt a ready warm pod matching `warm_selector` for the sandbox
/// `sandbox_name`; the pod leaves its warm pool (label removed, so the pool
/// replenishes) and is owned by `owner` from now on. `None` when no warm pod
/// could be won.
pub async fn adopt_warm_pod(
    api: &Api<Pod>,
    warm_selector: &str,
    sandbox_name: &str,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    extra: Option<&PodMetadata>,
) -> Result<Option<Pod>> {
    for _round in 0..3 {
        let candidates: Vec<Pod> = list_pods(api, warm_selector)
            .await?
            .into_iter()
            .filter(pods::is_ready)
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let nodes: Vec<&str> = candidates.iter().map(pods::node_name).collect();
        for i in pods::spread_pick(&nodes, candidates.len()) {
            let p = &candidates[i];
            let mut labels =
                json!({WARM_POOL_LABEL: null, SANDBOX_NAME_HASH_LABEL: short_hash(sandbox_name)});
            let mut annotations = json!({});
            // the claim's additionalPodMetadata (checked against the template)
            for (k, v) in extra.iter().flat_map(|m| &m.labels) {
                labels[k] = json!(v);
            }
            for (k, v) in extra.iter().flat_map(|m| &m.annotations) {
                annotations[k] = json!(v);
            }
            let patch = json!({"metadata": {
                "resourceVersion": p.resource_version(),
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner.clone()],
            }});
            match api
                .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(pod) => return Ok(Some(pod)),
                Err(e) if is_conflict(&e) || is_not_found(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(None)
}

/// The warm pool label value of the pool `name`.
fn pool_hash(ns: &str, name: &str) -> String {
    short_hash(&format!("{ns}/{name}"))
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
                Some(format!("{WARM_POOL_LABEL}={}", pool_hash(ns, &wp.name))),
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
                template_hash(ns, &t.name)
            )),
            Some(pool) => Some(format!("{WARM_POOL_LABEL}={}", pool_hash(ns, pool))),
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
    // a warm pod has neither the claim's variables nor its volumes: cold
    let warm = warm.filter(|_| claim.spec.env.is_empty() && volume_claim_templates.is_empty());
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

/// The claim's `Sandbox`: on a warm pod adopted for it, else cold; an
/// existing one (a racing reconcile created it) is returned as is.
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
    let pod_api: Api<Pod> = ctx.api(ns);
    let adopted = match &source.warm {
        Some(sel) => {
            let extra = claim.spec.additional_pod_metadata.as_ref();
            adopt_warm_pod(&pod_api, sel, &name, claim_owner.clone(), extra).await?
        }
        None => None,
    };
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(p) = &adopted {
        annotations.insert(POD_NAME_ANNOTATION.to_string(), p.name_any());
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
            template_hash(ns, &source.template.name_any()),
        );
    spec.service = source.template.spec.service;
    spec.volume_claim_templates = source.volume_claim_templates.clone();
    spec.shutdown_time = claim.spec.shutdown_time().cloned();
    let sb = Sandbox {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            annotations: Some(annotations),
            owner_references: Some(vec![claim_owner]),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let how = if adopted.is_some() {
        "from the warm pool"
    } else {
        "cold (no warm pod)"
    };
    match sandboxes.create(&PostParams::default(), &sb).await {
        Ok(s) => {
            ctx.event(
                claim,
                false,
                "SandboxCreated",
                format!("sandbox {name} {how}"),
            )
            .await;
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
    let sandboxes: Api<Sandbox> = ctx.api(ns);
    let sandbox = match sandboxes.get_opt(&name).await? {
        Some(s) => s,
        None => match claim_source(claim, ctx, ns).await? {
            Ok(source) => create_claim_sandbox(claim, ctx, ns, &source).await?,
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
            format!("sandbox {name} is not ready"),
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
            name: name.clone(),
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
