//! `SandboxTemplate`: its `networkPolicy` becomes a NetworkPolicy named
//! `<template>-network-policy`, owned by the template, selecting the pods of
//! the template's sandboxes (label `agents.x-k8s.io/sandbox-template-ref-hash`)
//! with both policy types; `networkPolicyManagement: Unmanaged` removes it.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{EXT_API, template_hash};
use crate::context::{Context, delete_ignoring_missing, namespace_of};
use crate::crd::{NetworkPolicyManagement, SandboxTemplate, TEMPLATE_HASH_LABEL};
use crate::error::{Result, is_already_exists};
use crate::pods::controller_ref;

/// The name of a template's NetworkPolicy.
pub fn network_policy_name(template: &str) -> String {
    format!("{template}-network-policy")
}

/// The NetworkPolicy spec the template asks for: `None` when it asks for none.
fn desired_spec(t: &SandboxTemplate) -> Option<Value> {
    if t.spec.network_policy_management == Some(NetworkPolicyManagement::Unmanaged) {
        return None;
    }
    let np = t.spec.network_policy.as_ref()?;
    let mut spec = json!({
        "podSelector": {"matchLabels": {TEMPLATE_HASH_LABEL: template_hash(&t.name_any())}},
        "policyTypes": ["Ingress", "Egress"],
    });
    for key in ["ingress", "egress"] {
        if let Some(rules) = np.get(key) {
            spec[key] = rules.clone();
        }
    }
    Some(spec)
}

pub async fn reconcile_template(t: Arc<SandboxTemplate>, ctx: Arc<Context>) -> Result<Action> {
    if t.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace_of(t.as_ref())?;
    let name = t.name_any();
    let api: Api<NetworkPolicy> = ctx.api(&ns);
    let np_name = network_policy_name(&name);
    let Some(spec) = desired_spec(&t) else {
        // only a policy this template owns is removed
        if let Some(old) = api.get_opt(&np_name).await?
            && old
                .owner_references()
                .iter()
                .any(|o| o.kind == "SandboxTemplate" && o.name == name)
        {
            delete_ignoring_missing(&api, &np_name).await?;
        }
        return Ok(Action::await_change());
    };
    let spec = serde_json::from_value(spec)?;
    match api.get_opt(&np_name).await? {
        Some(mut old) => {
            if old.spec.as_ref() != Some(&spec) {
                old.spec = Some(spec);
                api.replace(&np_name, &PostParams::default(), &old).await?;
            }
        }
        None => {
            let np = NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(np_name.clone()),
                    namespace: Some(ns.clone()),
                    owner_references: Some(vec![controller_ref(
                        EXT_API,
                        "SandboxTemplate",
                        &name,
                        &t.uid().unwrap_or_default(),
                    )]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            match api.create(&PostParams::default(), &np).await {
                Ok(_) => {}
                Err(e) if is_already_exists(&e) => return Ok(Action::requeue(ctx.settle)),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}
