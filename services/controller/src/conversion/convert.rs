//! Pure v1alpha1 ⇄ v1beta1 conversion of the agent-sandbox kinds, on the
//! JSON objects a `ConversionReview` carries.
//!
//! Both versions share one (union) schema, so a conversion only moves the
//! fields whose spelling differs and leaves everything else untouched:
//!
//! * `Sandbox`: `spec.replicas` 0/1 (v1alpha1) ⇄ `spec.operatingMode`
//!   `Suspended`/`Running` (v1beta1); v1alpha1 has no `status.nodeName` and
//!   always reports `status.replicas` (0 when suspended, else 1, unless the
//!   stored status has one).
//! * `SandboxClaim`: v1alpha1's `warmpool: <pool>` ⇄ v1beta1's
//!   `warmPoolRef.name`; a v1beta1 claim without `sandboxTemplateRef` reads in
//!   v1alpha1 (which requires it) with the pool's name there, as upstream does.
//!   `warmpool: none`/`default` stays as it is (sandpool's controller honours
//!   it in either version) instead of upstream's `shadow-pool-<template>`.
//! * `SandboxWarmPool`: v1alpha1 requires `spec.replicas` (1 when v1beta1
//!   left it out) and has no `status.observedGeneration`.
//! * `SandboxTemplate`: only `apiVersion` changes.

use serde_json::{Map, Value, json};

use crate::crd::{AGENTS_OLD_VERSION, AGENTS_VERSION};
use crate::error::{Error, Result};

const CORE_GROUP: &str = "agents.x-k8s.io";
const EXTENSIONS_GROUP: &str = "extensions.agents.x-k8s.io";

/// The API group a kind of ours belongs to, `None` for a kind we do not convert.
fn group_of(kind: &str) -> Option<&'static str> {
    match kind {
        "Sandbox" => Some(CORE_GROUP),
        "SandboxClaim" | "SandboxWarmPool" | "SandboxTemplate" => Some(EXTENSIONS_GROUP),
        _ => None,
    }
}

fn failed(reason: impl Into<String>) -> Error {
    Error::Conversion(reason.into())
}

/// `group/version` split, with the version checked to be one we serve.
fn split_version(api_version: &str) -> Result<(&str, &str)> {
    let (group, version) = api_version
        .split_once('/')
        .ok_or_else(|| failed(format!("apiVersion {api_version:?} has no group")))?;
    if version != AGENTS_VERSION && version != AGENTS_OLD_VERSION {
        return Err(failed(format!("unsupported version {api_version:?}")));
    }
    Ok((group, version))
}

/// Converts one object to `desired` (`group/version`).
pub fn convert_object(object: Value, desired: &str) -> Result<Value> {
    let Value::Object(mut obj) = object else {
        return Err(failed("the object is not a JSON object"));
    };
    let from = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| failed("the object has no apiVersion"))?
        .to_string();
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| failed("the object has no kind"))?
        .to_string();
    let (from_group, from_version) = split_version(&from)?;
    let (to_group, to_version) = split_version(desired)?;
    let group = group_of(&kind).ok_or_else(|| failed(format!("unknown kind {kind:?}")))?;
    if from_group != group || to_group != group {
        return Err(failed(format!(
            "cannot convert {kind} from {from} to {desired}: {kind} belongs to {group}"
        )));
    }
    if from_version != to_version {
        let to_beta = to_version == AGENTS_VERSION;
        match (kind.as_str(), to_beta) {
            ("Sandbox", true) => sandbox_to_beta(&mut obj),
            ("Sandbox", false) => sandbox_to_alpha(&mut obj),
            ("SandboxClaim", true) => claim_to_beta(&mut obj),
            ("SandboxClaim", false) => claim_to_alpha(&mut obj),
            ("SandboxWarmPool", false) => warm_pool_to_alpha(&mut obj),
            _ => {}
        }
    }
    obj.insert("apiVersion".into(), Value::String(desired.to_string()));
    Ok(Value::Object(obj))
}

/// `obj[key]` as an object, created (empty) when absent or not an object.
fn object_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = obj.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn sandbox_to_beta(obj: &mut Map<String, Value>) {
    let spec = object_at(obj, "spec");
    if let Some(replicas) = spec.remove("replicas") {
        let mode = if replicas.as_i64() == Some(0) {
            "Suspended"
        } else {
            "Running"
        };
        spec.insert("operatingMode".into(), json!(mode));
    }
}

fn sandbox_to_alpha(obj: &mut Map<String, Value>) {
    let spec = object_at(obj, "spec");
    let suspended = match spec.remove("operatingMode") {
        Some(mode) => mode.as_str() == Some("Suspended"),
        None => spec.get("replicas").and_then(Value::as_i64) == Some(0),
    };
    let replicas = i64::from(!suspended);
    spec.insert("replicas".into(), json!(replicas));
    let status = object_at(obj, "status");
    status.remove("nodeName");
    status.entry("replicas").or_insert(json!(replicas));
}

/// v1alpha1 `warmpool` values that name no pool.
fn names_no_pool(warmpool: &str) -> bool {
    matches!(warmpool, "" | "none" | "default")
}

fn claim_to_beta(obj: &mut Map<String, Value>) {
    let spec = object_at(obj, "spec");
    let pool = spec
        .get("warmpool")
        .and_then(Value::as_str)
        .filter(|p| !names_no_pool(p))
        .map(str::to_string);
    if let Some(pool) = pool {
        spec.remove("warmpool");
        spec.entry("warmPoolRef").or_insert(json!({ "name": pool }));
    }
}

fn claim_to_alpha(obj: &mut Map<String, Value>) {
    let spec = object_at(obj, "spec");
    let Some(pool_ref) = spec.remove("warmPoolRef") else {
        return;
    };
    let Some(pool) = pool_ref.get("name").and_then(Value::as_str) else {
        return;
    };
    spec.entry("warmpool").or_insert(json!(pool));
    spec.entry("sandboxTemplateRef")
        .or_insert(json!({ "name": pool }));
}

fn warm_pool_to_alpha(obj: &mut Map<String, Value>) {
    let spec = object_at(obj, "spec");
    spec.entry("replicas").or_insert(json!(1));
    if let Some(Value::Object(status)) = obj.get_mut("status") {
        status.remove("observedGeneration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORE_A: &str = "agents.x-k8s.io/v1alpha1";
    const CORE_B: &str = "agents.x-k8s.io/v1beta1";
    const EXT_A: &str = "extensions.agents.x-k8s.io/v1alpha1";
    const EXT_B: &str = "extensions.agents.x-k8s.io/v1beta1";

    fn conv(obj: Value, to: &str) -> Value {
        convert_object(obj, to).unwrap()
    }

    #[test]
    fn sandbox_replicas_become_operating_mode_and_back() {
        let alpha = json!({"apiVersion": CORE_A, "kind": "Sandbox",
            "metadata": {"name": "s", "labels": {"a": "b"}},
            "spec": {"replicas": 0, "podTemplate": {"spec": {"containers": []}}}});
        let beta = conv(alpha.clone(), CORE_B);
        assert_eq!(beta["apiVersion"], CORE_B);
        assert_eq!(beta["spec"]["operatingMode"], "Suspended");
        assert!(beta["spec"].get("replicas").is_none());
        assert_eq!(beta["metadata"], alpha["metadata"]);
        assert_eq!(beta["spec"]["podTemplate"], alpha["spec"]["podTemplate"]);
        let back = conv(beta, CORE_A);
        assert_eq!(back["spec"], alpha["spec"]);
        assert_eq!(back["status"]["replicas"], 0);

        let running = conv(
            json!({"apiVersion": CORE_A, "kind": "Sandbox",
            "metadata": {"name": "s"}, "spec": {"replicas": 1}}),
            CORE_B,
        );
        assert_eq!(running["spec"]["operatingMode"], "Running");
    }

    #[test]
    fn sandbox_in_v1alpha1_has_replicas_but_no_node_name() {
        let beta = json!({"apiVersion": CORE_B, "kind": "Sandbox", "metadata": {"name": "s"},
            "spec": {"operatingMode": "Running"},
            "status": {"nodeName": "n1", "podIPs": ["10.0.0.1"]}});
        let alpha = conv(beta, CORE_A);
        assert_eq!(alpha["spec"], json!({"replicas": 1}));
        assert_eq!(
            alpha["status"],
            json!({"replicas": 1, "podIPs": ["10.0.0.1"]})
        );
        // no operatingMode: not suspended; a stored status.replicas is kept
        let alpha = conv(
            json!({"apiVersion": CORE_B, "kind": "Sandbox",
            "metadata": {"name": "s"}, "spec": {}, "status": {"replicas": 0}}),
            CORE_A,
        );
        assert_eq!(alpha["spec"]["replicas"], 1);
        assert_eq!(alpha["status"]["replicas"], 0);
        // a beta object without either field stays without them
        let beta = conv(
            json!({"apiVersion": CORE_A, "kind": "Sandbox",
            "metadata": {"name": "s"}, "spec": {}}),
            CORE_B,
        );
        assert_eq!(beta["spec"], json!({}));
    }

    #[test]
    fn claim_named_warm_pool_becomes_warm_pool_ref_and_back() {
        let alpha = json!({"apiVersion": EXT_A, "kind": "SandboxClaim", "metadata": {"name": "c"},
            "spec": {"sandboxTemplateRef": {"name": "t"}, "warmpool": "p",
                     "env": [{"name": "A", "value": "1"}]},
            "status": {"sandbox": {"name": "c"}}});
        let beta = conv(alpha.clone(), EXT_B);
        assert_eq!(beta["spec"]["warmPoolRef"], json!({"name": "p"}));
        assert!(beta["spec"].get("warmpool").is_none());
        assert_eq!(beta["spec"]["sandboxTemplateRef"], json!({"name": "t"}));
        assert_eq!(beta["status"], alpha["status"]);
        assert_eq!(conv(beta, EXT_A), alpha);
    }

    #[test]
    fn claim_without_a_named_pool_keeps_its_template_and_policy() {
        for policy in ["none", "default"] {
            let alpha = json!({"apiVersion": EXT_A, "kind": "SandboxClaim",
                "metadata": {"name": "c"},
                "spec": {"sandboxTemplateRef": {"name": "t"}, "warmpool": policy}});
            let beta = conv(alpha.clone(), EXT_B);
            assert!(beta["spec"].get("warmPoolRef").is_none(), "{policy}");
            assert_eq!(beta["spec"]["warmpool"], policy);
            assert_eq!(conv(beta, EXT_A), alpha);
        }
    }

    #[test]
    fn v1beta1_claim_reads_in_v1alpha1_with_the_pool_as_template() {
        let beta = json!({"apiVersion": EXT_B, "kind": "SandboxClaim", "metadata": {"name": "c"},
            "spec": {"warmPoolRef": {"name": "p"}}});
        let alpha = conv(beta, EXT_A);
        assert_eq!(
            alpha["spec"],
            json!({"warmpool": "p", "sandboxTemplateRef": {"name": "p"}})
        );
        let again = conv(alpha, EXT_B);
        assert_eq!(again["spec"]["warmPoolRef"], json!({"name": "p"}));
    }

    #[test]
    fn warm_pool_in_v1alpha1_has_replicas_and_no_observed_generation() {
        let beta = json!({"apiVersion": EXT_B, "kind": "SandboxWarmPool",
            "metadata": {"name": "w"}, "spec": {"sandboxTemplateRef": {"name": "t"}},
            "status": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 3}});
        let alpha = conv(beta, EXT_A);
        assert_eq!(alpha["spec"]["replicas"], 1);
        assert_eq!(alpha["status"], json!({"replicas": 2, "readyReplicas": 1}));
        let kept = conv(
            json!({"apiVersion": EXT_B, "kind": "SandboxWarmPool",
            "metadata": {"name": "w"}, "spec": {"replicas": 4}}),
            EXT_A,
        );
        assert_eq!(kept["spec"]["replicas"], 4);
        let beta = conv(kept.clone(), EXT_B);
        assert_eq!(beta["spec"], kept["spec"]);
    }

    #[test]
    fn template_only_changes_api_version() {
        let alpha = json!({"apiVersion": EXT_A, "kind": "SandboxTemplate",
            "metadata": {"name": "t"}, "spec": {"podTemplate": {"spec": {"containers": []}}}});
        let beta = conv(alpha.clone(), EXT_B);
        assert_eq!(beta["apiVersion"], EXT_B);
        assert_eq!(beta["spec"], alpha["spec"]);
        assert_eq!(conv(beta, EXT_A), alpha);
    }

    #[test]
    fn same_version_is_unchanged() {
        let beta = json!({"apiVersion": CORE_B, "kind": "Sandbox", "metadata": {"name": "s"},
            "spec": {"operatingMode": "Suspended"}, "status": {"nodeName": "n"}});
        assert_eq!(conv(beta.clone(), CORE_B), beta);
    }

    #[test]
    fn bad_objects_fail_with_a_message() {
        let cases = [
            (json!([1]), CORE_B, "not a JSON object"),
            (json!({"kind": "Sandbox"}), CORE_B, "no apiVersion"),
            (json!({"apiVersion": CORE_A}), CORE_B, "no kind"),
            (
                json!({"apiVersion": CORE_A, "kind": "Sandbox"}),
                "agents.x-k8s.io/v2",
                "unsupported",
            ),
            (
                json!({"apiVersion": CORE_A, "kind": "Sandbox"}),
                "v1beta1",
                "no group",
            ),
            (
                json!({"apiVersion": CORE_A, "kind": "Pod"}),
                CORE_B,
                "unknown kind",
            ),
            (
                json!({"apiVersion": CORE_A, "kind": "Sandbox"}),
                EXT_B,
                "belongs to",
            ),
            (
                json!({"apiVersion": EXT_A, "kind": "Sandbox"}),
                EXT_B,
                "belongs to",
            ),
        ];
        for (obj, to, want) in cases {
            let err = convert_object(obj.clone(), to).unwrap_err().to_string();
            assert!(err.contains(want), "{obj} -> {to}: {err}");
        }
    }
}
