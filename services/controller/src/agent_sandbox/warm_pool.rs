//! The `SandboxWarmPool` controller, as upstream's: it keeps `replicas`
//! Sandboxes of its template (generateName `<pool>-`, labelled
//! `agents.x-k8s.io/warm-pool-sandbox=<hash of the pool>`, owned by the
//! pool; the Sandbox controller runs their pods, which carry the label too),
//! and [`adopt_warm_sandbox`] hands a ready one to a claim.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::{EXT_API, get_template, template_hash};
use crate::context::{
    Context, delete_ignoring_missing, merge_patch_ignoring_missing, namespace_of, patch_status,
};
use crate::crd::{
    CLAIM_UID_LABEL, LAUNCH_TYPE_LABEL, PodMetadata, Sandbox, SandboxSpec, SandboxTemplate,
    SandboxWarmPool, SandboxWarmPoolStatus, TEMPLATE_HASH_LABEL, TEMPLATE_REF_ANNOTATION,
    UpdateStrategyType, WARM_POOL_LABEL,
};
use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::pods::{self, controller_ref, short_hash};

/// The warm pool label value of the pool `name` (upstream's `NameHash`).
pub(super) fn pool_hash(name: &str) -> String {
    short_hash(name)
}

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
            "spec.updateStrategy.type Recreate is not supported by sandpool; warm sandboxes are replaced on replenish only".into(),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let selector = format!("{WARM_POOL_LABEL}={}", pool_hash(&name));
    let api: Api<Sandbox> = ctx.api(&ns);
    let uid = wp.uid().unwrap_or_default();
    let mut live = Vec::new();
    for sb in api.list(&ListParams::default().labels(&selector)).await? {
        // only the pool's own (a label alone does not make a member)
        let ours = sb
            .owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && r.uid == uid);
        if !ours || sb.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if finished(&sb) {
            delete_ignoring_missing(&api, &sb.name_any()).await?;
        } else {
            live.push(sb);
        }
    }
    let want = usize::try_from(wp.spec.replicas).unwrap_or(0);
    let mut created = 0;
    if live.len() < want {
        let owner = controller_ref(EXT_API, "SandboxWarmPool", &name, &uid);
        for _ in live.len()..want {
            let sb = warm_sandbox(&name, &ns, &template, owner.clone());
            api.create(&PostParams::default(), &sb).await?;
            created += 1;
        }
    } else if live.len() > want {
        // not-ready sandboxes go first
        live.sort_by_key(is_ready);
        for sb in live.drain(..live.len() - want) {
            delete_ignoring_missing(&api, &sb.name_any()).await?;
        }
    }
    let status = warm_pool_status(&wp, &live, created, &selector);
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

/// A warm Sandbox of `template` for the pool `pool`: its blueprint (pod
/// template, service, volume claim templates), the pool and template
/// labels on it and on its pod template, owned by the pool.
fn warm_sandbox(
    pool: &str,
    ns: &str,
    template: &SandboxTemplate,
    owner: OwnerReference,
) -> Sandbox {
    let tname = template.name_any();
    let labels = [
        (WARM_POOL_LABEL.to_string(), pool_hash(pool)),
        (TEMPLATE_HASH_LABEL.to_string(), template_hash(&tname)),
    ];
    let mut spec = SandboxSpec::new(template.spec.pod_template.clone());
    spec.pod_template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .extend(labels.clone());
    spec.service = template.spec.service;
    spec.volume_claim_templates = template.spec.volume_claim_templates.clone();
    let mut meta_labels: std::collections::BTreeMap<String, String> = labels.into();
    meta_labels.insert(LAUNCH_TYPE_LABEL.into(), "warm".into());
    Sandbox {
        metadata: ObjectMeta {
            generate_name: Some(format!("{pool}-")),
            namespace: Some(ns.to_string()),
            labels: Some(meta_labels),
            annotations: Some([(TEMPLATE_REF_ANNOTATION.to_string(), tname)].into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// The Sandbox's `Ready` condition is `True`.
pub(super) fn is_ready(sb: &Sandbox) -> bool {
    sb.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Its pod ended (a warm sandbox that will never become ready).
fn finished(sb: &Sandbox) -> bool {
    sb.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "Ready" && matches!(c.reason.as_str(), "PodSucceeded" | "PodFailed")
        })
    })
}

/// The warm pool's status: its Sandboxes (`live` ones and `created` ones),
/// the selector the scale subresource reads (HPA/KEDA count the Sandboxes
/// and pods it selects), and the generation it reflects.
fn warm_pool_status(
    wp: &SandboxWarmPool,
    live: &[Sandbox],
    created: usize,
    selector: &str,
) -> SandboxWarmPoolStatus {
    SandboxWarmPoolStatus {
        replicas: (live.len() + created) as i32,
        ready_replicas: live.iter().filter(|s| is_ready(s)).count() as i32,
        selector: Some(selector.to_string()),
        observed_generation: wp.metadata.generation,
        ..wp.status.clone().unwrap_or_default()
    }
}

/// What a claim asks of the warm Sandbox it adopts.
pub(super) struct Adoption<'a> {
    pub owner: OwnerReference,
    pub claim_uid: String,
    pub extra: Option<&'a PodMetadata>,
    pub shutdown_time: Option<serde_json::Value>,
    /// Its volume claim templates must be these (the template's now).
    pub volume_claim_templates: &'a [serde_json::Value],
}

/// Adopt a ready warm Sandbox matching `selector` (optimistically, by
/// resourceVersion): it leaves its pool (pool label removed, so the pool
/// refills), is owned by the claim, gets the claim's pod metadata and
/// shutdown time; its pod leaves the pool too. `None` when none could be won.
pub(super) async fn adopt_warm_sandbox(
    ctx: &Context,
    ns: &str,
    selector: &str,
    how: &Adoption<'_>,
) -> Result<Option<Sandbox>> {
    let api: Api<Sandbox> = ctx.api(ns);
    for _round in 0..3 {
        let candidates: Vec<Sandbox> = api
            .list(&ListParams::default().labels(selector))
            .await?
            .into_iter()
            .filter(|s| adoptable(s, how.volume_claim_templates))
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let nodes: Vec<&str> = candidates
            .iter()
            .map(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.node_name.as_deref())
                    .unwrap_or("")
            })
            .collect();
        for i in pods::spread_pick(&nodes, candidates.len()) {
            let sb = &candidates[i];
            let patch = adoption_patch(sb, how);
            match api
                .patch(
                    &sb.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(won) => {
                    release_pod(ctx, ns, &won, how.extra).await?;
                    return Ok(Some(won));
                }
                Err(e) if is_conflict(&e) || is_not_found(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(None)
}

/// A pool member (controlled by a SandboxWarmPool), not deleting, ready,
/// with the volume claim templates the claim needs.
fn adoptable(sb: &Sandbox, vcts: &[serde_json::Value]) -> bool {
    let pooled = sb
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.kind == "SandboxWarmPool");
    pooled
        && sb.metadata.deletion_timestamp.is_none()
        && is_ready(sb)
        && sb.spec.volume_claim_templates == vcts
}

/// The merge patch adopting `sb`: conditional on its resourceVersion.
fn adoption_patch(sb: &Sandbox, how: &Adoption<'_>) -> serde_json::Value {
    let mut pod_labels = json!({WARM_POOL_LABEL: null, CLAIM_UID_LABEL: how.claim_uid});
    let mut pod_annotations = json!({});
    for (k, v) in how.extra.iter().flat_map(|m| &m.labels) {
        pod_labels[k] = json!(v);
    }
    for (k, v) in how.extra.iter().flat_map(|m| &m.annotations) {
        pod_annotations[k] = json!(v);
    }
    json!({
        "metadata": {
            "resourceVersion": sb.resource_version(),
            "labels": {WARM_POOL_LABEL: null, LAUNCH_TYPE_LABEL: "warm", CLAIM_UID_LABEL: how.claim_uid},
            "ownerReferences": [how.owner],
        },
        "spec": {
            "shutdownTime": how.shutdown_time,
            "podTemplate": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}},
        },
    })
}

/// The adopted Sandbox's pod leaves the pool as its Sandbox did, with the
/// claim's pod metadata (a pod not there yet is made from the patched
/// template by the Sandbox controller).
async fn release_pod(
    ctx: &Context,
    ns: &str,
    sb: &Sandbox,
    extra: Option<&PodMetadata>,
) -> Result<()> {
    let mut labels = json!({WARM_POOL_LABEL: null});
    if let Some(uid) = sb.labels().get(CLAIM_UID_LABEL) {
        labels[CLAIM_UID_LABEL] = json!(uid);
    }
    let mut annotations = json!({});
    for (k, v) in extra.iter().flat_map(|m| &m.labels) {
        labels[k] = json!(v);
    }
    for (k, v) in extra.iter().flat_map(|m| &m.annotations) {
        annotations[k] = json!(v);
    }
    let patch = json!({"metadata": {"labels": labels, "annotations": annotations}});
    let pod_api: Api<k8s_openapi::api::core::v1::Pod> = ctx.api(ns);
    merge_patch_ignoring_missing(&pod_api, &sb.name_any(), patch).await
}
