//! agent-sandbox kinds, field for field with upstream's v0.5.6 CRDs.
//!
//! Versions: `v1beta1` is served and stored; `v1alpha1` is served,
//! deprecated, with the same schema. The generated CRDs convert with
//! `strategy: None` (the apiserver only rewrites `apiVersion`); the chart
//! switches them to the controller's webhook ([`crate::conversion`]). Both
//! versions carry the *union* of upstream's v1alpha1 and v1beta1 fields —
//! `Sandbox.spec.replicas` (v1alpha1) beside `spec.operatingMode` (v1beta1),
//! `SandboxClaim.spec.sandboxTemplateRef`/`warmpool` (v1alpha1) beside
//! `spec.warmPoolRef` (v1beta1) — and no field is pruned when an object
//! written in one version is read in the other. The only per-version
//! difference is which claim reference is required (see
//! [`served_versions`]). Fields the controllers cannot honour are accepted
//! by the schema and refused by the controller with a status condition
//! naming the field (docs/compatibility.md).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, CustomResourceSubresourceScale,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{free_object_list_schema, pod_template_schema};

/// The stored version of the agent-sandbox kinds.
pub const AGENTS_VERSION: &str = "v1beta1";
/// The older version, still served (deprecated).
pub const AGENTS_OLD_VERSION: &str = "v1alpha1";

fn free_object_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn one() -> i32 {
    1
}

/// `Sandbox.spec.operatingMode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperatingMode {
    Running,
    Suspended,
}

/// `Sandbox.spec.shutdownPolicy`: what happens to the Sandbox at `shutdownTime`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ShutdownPolicy {
    Delete,
    Retain,
}

/// `SandboxClaim.spec.lifecycle.shutdownPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClaimShutdownPolicy {
    Delete,
    DeleteForeground,
    Retain,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NetworkPolicyManagement {
    Managed,
    Unmanaged,
}

/// `envVarsInjectionPolicy` / `volumeClaimTemplatesPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InjectionPolicy {
    Allowed,
    Overrides,
    Disallowed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum UpdateStrategyType {
    Recreate,
    OnReplenish,
}

/// A single sandbox pod (agent-sandbox API).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "agents.x-k8s.io",
    version = "v1beta1",
    kind = "Sandbox",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    status = "SandboxStatus",
    shortname = "sandbox",
    doc = "A single isolated sandbox pod (agent-sandbox API).",
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "POD", type_ = "string", json_path = ".status.podName"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    #[schemars(schema_with = "pod_template_schema")]
    pub pod_template: PodTemplateSpec,
    /// Running (default) or Suspended (no pod; the Sandbox is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_mode: Option<OperatingMode>,
    /// v1alpha1's switch: 1 runs the pod, 0 suspends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub replicas: Option<i32>,
    /// Create a headless Service named after the Sandbox (`status.serviceFQDN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
    /// The sandbox expires at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// At `shutdownTime`: Delete the Sandbox (sandpool's default), or Retain
    /// it with its pod and Service removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_policy: Option<ShutdownPolicy>,
    /// PersistentVolumeClaims for the pod (`<name>-<sandbox>`, owned by the Sandbox).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_object_list_schema")]
    pub volume_claim_templates: Vec<Value>,
}

impl SandboxSpec {
    /// A running sandbox of `pod_template`, everything else unset.
    pub fn new(pod_template: PodTemplateSpec) -> Self {
        SandboxSpec {
            pod_template,
            operating_mode: None,
            replicas: None,
            service: None,
            shutdown_time: None,
            shutdown_policy: None,
            volume_claim_templates: Vec::new(),
        }
    }

    /// `operatingMode: Suspended` or `replicas: 0`: the sandbox has no pod.
    pub fn suspended(&self) -> bool {
        self.operating_mode == Some(OperatingMode::Suspended) || self.replicas == Some(0)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The pod the sandbox runs in (sandpool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(rename = "podIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Label selector of the sandbox's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Name of the headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(
        rename = "serviceFQDN",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_fqdn: Option<String>,
    /// 1 while the sandbox has a pod, else 0 (v1alpha1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct TemplateRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A reusable sandbox blueprint (agent-sandbox extensions API).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1beta1",
    kind = "SandboxTemplate",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    shortname = "sandboxtemplate",
    doc = "A reusable sandbox blueprint (agent-sandbox API).",
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTemplateSpec {
    #[schemars(schema_with = "pod_template_schema")]
    pub pod_template: PodTemplateSpec,
    /// Sandboxes of this template get a headless Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
    /// `ingress`/`egress` of the template's NetworkPolicy (`<name>-network-policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_free_object_schema")]
    pub network_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_management: Option<NetworkPolicyManagement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars_injection_policy: Option<InjectionPolicy>,
    /// PVCs for the sandboxes of claims of this template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_object_list_schema")]
    pub volume_claim_templates: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_templates_policy: Option<InjectionPolicy>,
}

fn optional_free_object_schema(g: &mut SchemaGenerator) -> Schema {
    free_object_schema(g)
}

impl SandboxTemplateSpec {
    /// A template of `pod_template`, everything else unset.
    pub fn new(pod_template: PodTemplateSpec) -> Self {
        SandboxTemplateSpec {
            pod_template,
            service: None,
            network_policy: None,
            network_policy_management: None,
            env_vars_injection_policy: None,
            volume_claim_templates: Vec::new(),
            volume_claim_templates_policy: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimLifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// At expiry: `Retain` (upstream's default, what unset means),
    /// `Delete` or `DeleteForeground`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Retain"))]
    pub shutdown_policy: Option<ClaimShutdownPolicy>,
    /// Expire the claim this long after its sandbox finished (its
    /// `Finished` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PodMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A request for a sandbox: from a warm pool (`warmPoolRef`, v1beta1) or a
/// template (`sandboxTemplateRef`, v1alpha1); served from a warm pod when
/// there is a ready one.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1beta1",
    kind = "SandboxClaim",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    status = "SandboxClaimStatus",
    shortname = "sandboxclaim",
    doc = "A claim for a sandbox from a warm pool or a template (agent-sandbox API).",
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "SANDBOX", type_ = "string", json_path = ".status.sandbox.name"),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxClaimSpec {
    /// The warm pool to claim from (its template is used for a cold start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool_ref: Option<TemplateRef>,
    /// The template to claim (any warm pool of it serves the claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_template_ref: Option<TemplateRef>,
    /// v1alpha1's warm-pool choice (`default`, `none` or a pool name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmpool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<ClaimLifecycle>,
    /// sandpool's older place for `lifecycle.shutdownTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// Labels and annotations for the sandbox's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_pod_metadata: Option<PodMetadata>,
    /// Variables for the sandbox's pod, as the template's
    /// `envVarsInjectionPolicy` allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_object_list_schema")]
    pub env: Vec<Value>,
    /// PVCs for the claim's sandbox, as the template's
    /// `volumeClaimTemplatesPolicy` allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_object_list_schema")]
    pub volume_claim_templates: Vec<Value>,
}

impl SandboxClaimSpec {
    /// `lifecycle.shutdownTime`, else the top-level `shutdownTime`.
    pub fn shutdown_time(&self) -> Option<&Time> {
        self.lifecycle
            .as_ref()
            .and_then(|l| l.shutdown_time.as_ref())
            .or(self.shutdown_time.as_ref())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimedSandbox {
    pub name: String,
    #[serde(rename = "podIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxClaimStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<ClaimedSandbox>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct UpdateStrategy {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<UpdateStrategyType>,
}

/// Pre-warmed Sandboxes of one template.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "extensions.agents.x-k8s.io",
    version = "v1beta1",
    kind = "SandboxWarmPool",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    status = "SandboxWarmPoolStatus",
    shortname = "swp",
    doc = "Pre-warmed Sandboxes of one SandboxTemplate (agent-sandbox API).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "READY", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "DESIRED", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxWarmPoolSpec {
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    pub sandbox_template_ref: TemplateRef,
    /// OnReplenish (what sandpool does: warm Sandboxes of an older template
    /// stay until claimed); Recreate is refused with an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SandboxWarmPoolStatus {
    pub replicas: i32,
    pub ready_replicas: i32,
    /// `Ready=False` with why, while reconciling fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `crd` (generated at v1beta1) served at v1beta1 (storage) and v1alpha1
/// (deprecated) with the same schema; a v1alpha1 claim must name
/// `sandboxTemplateRef` as upstream's v1alpha1 did, a v1beta1 claim one of
/// `warmPoolRef`/`sandboxTemplateRef`.
pub fn served_versions(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let kind = crd.spec.names.kind.clone();
    let group = crd.spec.group.clone();
    let Some(mut old) = crd.spec.versions.first().cloned() else {
        return crd;
    };
    old.name = AGENTS_OLD_VERSION.into();
    old.storage = false;
    old.deprecated = Some(true);
    old.deprecation_warning = Some(format!(
        "{group}/{AGENTS_OLD_VERSION} {kind} is deprecated; use {group}/{AGENTS_VERSION} {kind} instead"
    ));
    if kind == "Sandbox" {
        // v1alpha1's `replicas` (0/1) is scalable, as upstream's v1alpha1
        if let Some(sub) = old.subresources.as_mut() {
            sub.scale = Some(CustomResourceSubresourceScale {
                spec_replicas_path: ".spec.replicas".into(),
                status_replicas_path: ".status.replicas".into(),
                label_selector_path: Some(".status.selector".into()),
            });
        }
    }
    if kind == "SandboxClaim" {
        let spec_schema = |v: &mut CustomResourceDefinitionVersion| {
            v.schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| s.properties.as_mut())
                .and_then(|p| p.get_mut("spec"))
                .cloned()
        };
        if let Some(mut spec) = spec_schema(&mut old) {
            spec.required = Some(vec!["sandboxTemplateRef".into()]);
            set_spec_schema(&mut old, spec);
        }
        if let Some(new) = crd.spec.versions.first_mut()
            && let Some(mut spec) = spec_schema(new)
        {
            spec.any_of = Some(
                ["warmPoolRef", "sandboxTemplateRef"]
                    .iter()
                    .map(|f| JSONSchemaProps {
                        required: Some(vec![(*f).into()]),
                        ..Default::default()
                    })
                    .collect(),
            );
            set_spec_schema(new, spec);
        }
    }
    crd.spec.versions.push(old);
    crd
}

fn set_spec_schema(v: &mut CustomResourceDefinitionVersion, spec: JSONSchemaProps) {
    if let Some(p) = v
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .and_then(|s| s.properties.as_mut())
    {
        p.insert("spec".into(), spec);
    }
}
