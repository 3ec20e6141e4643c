//! A Sandbox's `volumeClaimTemplates`: one PersistentVolumeClaim per
//! template, named `<template>-<sandbox>`, labelled with the sandbox's name
//! hash and owned by the Sandbox (so it outlives a suspension and a retained
//! expiry, and goes with the Sandbox), mounted into the pod as the volume
//! named after the template (replacing a pod volume of that name).

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::sandbox::sandbox_owner;
use crate::context::Context;
use crate::crd::{SANDBOX_NAME_HASH_LABEL, Sandbox};
use crate::error::{Error, Result, is_already_exists};
use crate::pods::short_hash;

/// The name of a volume claim template (`metadata.name`).
fn template_name(vct: &Value) -> Option<&str> {
    vct.pointer("/metadata/name").and_then(Value::as_str)
}

/// `(template name, PVC name)` of each of the sandbox's templates.
fn claims(sb: &Sandbox) -> Result<Vec<(String, String)>> {
    let sandbox = sb.name_any();
    sb.spec
        .volume_claim_templates
        .iter()
        .map(|vct| {
            let name = template_name(vct).ok_or_else(|| {
                Error::invalid(
                    "Sandbox",
                    &sandbox,
                    "spec.volumeClaimTemplates[].metadata.name is required",
                )
            })?;
            Ok((name.to_string(), format!("{name}-{sandbox}")))
        })
        .collect()
}

/// The pod template with a volume per claim template, replacing pod
/// volumes of the same names.
pub fn with_claim_volumes(sb: &Sandbox) -> Result<PodTemplateSpec> {
    let mut tpl = sb.spec.pod_template.clone();
    let claims = claims(sb)?;
    if claims.is_empty() {
        return Ok(tpl);
    }
    let spec = tpl.spec.get_or_insert_with(Default::default);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| !claims.iter().any(|(name, _)| *name == v.name));
    volumes.extend(claims.into_iter().map(|(name, claim_name)| Volume {
        name,
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name,
            read_only: None,
        }),
        ..Default::default()
    }));
    Ok(tpl)
}

/// Create the sandbox's missing PVCs; an existing one is used when this
/// sandbox owns it, adopted when unowned but carrying the sandbox's name
/// hash label, and refused otherwise.
pub async fn ensure_claims(ctx: &Context, sb: &Sandbox, ns: &str) -> Result<()> {
    let api: Api<PersistentVolumeClaim> = ctx.api(ns);
    let hash = short_hash(&sb.name_any());
    let owner = sandbox_owner(sb);
    for (vct, (_, pvc_name)) in sb.spec.volume_claim_templates.iter().zip(claims(sb)?) {
        if let Some(pvc) = api.get_opt(&pvc_name).await? {
            let controller = pvc
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .cloned();
            match controller {
                Some(o) if o.uid == owner.uid => {}
                None if pvc.labels().get(SANDBOX_NAME_HASH_LABEL) == Some(&hash) => {
                    let patch = json!({"metadata": {"ownerReferences": [owner.clone()]}});
                    api.patch(&pvc_name, &PatchParams::default(), &Patch::Merge(patch))
                        .await?;
                }
                _ => {
                    return Err(Error::invalid(
                        "PersistentVolumeClaim",
                        &pvc_name,
                        format!("not owned by Sandbox {}", sb.name_any()),
                    ));
                }
            }
            continue;
        }
        let meta: ObjectMeta =
            serde_json::from_value(vct.get("metadata").cloned().unwrap_or(Value::Null))?;
        let mut labels = meta.labels.unwrap_or_default();
        labels.insert(SANDBOX_NAME_HASH_LABEL.to_string(), hash.clone());
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(pvc_name),
                namespace: Some(ns.to_string()),
                labels: Some(labels),
                annotations: meta.annotations,
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            spec: Some(serde_json::from_value(
                vct.get("spec").cloned().unwrap_or_else(|| json!({})),
            )?),
            status: None,
        };
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {}
            Err(e) if is_already_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The volume claim templates of a claim's sandbox: the template's, plus
/// the claim's as the template's `volumeClaimTemplatesPolicy` allows
/// (`Disallowed`, the default, rejects any; `Allowed` adds new names only;
/// `Overrides` also replaces the template's of the same name).
/// `Err(message)` when the policy rejects them.
pub(super) fn merge_claim_templates(
    template: &[Value],
    claim: &[Value],
    policy: Option<crate::crd::InjectionPolicy>,
) -> std::result::Result<Vec<Value>, String> {
    use crate::crd::InjectionPolicy;
    let mut out = template.to_vec();
    if claim.is_empty() {
        return Ok(out);
    }
    let policy = policy.unwrap_or(InjectionPolicy::Disallowed);
    if policy == InjectionPolicy::Disallowed {
        return Err("the template's volumeClaimTemplatesPolicy is Disallowed".into());
    }
    for vct in claim {
        let name =
            template_name(vct).ok_or("spec.volumeClaimTemplates[].metadata.name is required")?;
        match out.iter().position(|t| template_name(t) == Some(name)) {
            Some(_) if policy != InjectionPolicy::Overrides => {
                return Err(format!(
                    "overriding volume claim template {name:?} is not allowed by the template's volumeClaimTemplatesPolicy"
                ));
            }
            Some(i) => out[i] = vct.clone(),
            None => out.push(vct.clone()),
        }
    }
    Ok(out)
}
