//! Custom resources, generated into CRDs by `crdgen` (committed under
//! `deploy/helm/sandpool/files/crds/`; a test keeps them equal).
//!
//! * OpenSandbox `sandbox.opensandbox.io/v1alpha1`: [`Pool`], [`BatchSandbox`],
//!   [`SandboxSnapshot`].
//! * agent-sandbox `agents.x-k8s.io/v1beta1`: [`Sandbox`]; and
//!   `extensions.agents.x-k8s.io/v1beta1`: [`SandboxTemplate`],
//!   [`SandboxClaim`], [`SandboxWarmPool`] (v1alpha1 still served,
//!   deprecated; see [`agents`]).
//!
//! Pod templates are typed in Rust (`PodTemplateSpec`) but their CRD schema
//! is kept small: containers (name, image, command, args) are validated and
//! the rest of the pod spec is preserved for the apiserver to validate when
//! the controller creates the pod — the full PodSpec schema would make every
//! CRD ~0.5 MB.

// kube's `printcolumn(...)` lists repeat keys by design
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub const OPENSANDBOX_GROUP: &str = "sandbox.opensandbox.io";
/// BatchSandbox annotation with the JSON list of delivered sandbox IPs.
pub const ENDPOINTS_ANNOTATION: &str = "sandbox.opensandbox.io/endpoints";
/// Pod label naming its Pool.
pub const POOL_LABEL: &str = "sandbox.opensandbox.io/pool";
/// Pod label naming the BatchSandbox it is allocated to (absent = available).
pub const ALLOCATED_TO_LABEL: &str = "sandbox.opensandbox.io/allocated-to";
/// Pod label naming the BatchSandbox (uid) whose tenant last ran in it: set
/// with [`ALLOCATED_TO_LABEL`] and kept through a release until the pod is
/// reset (every process of the tenant proven gone) or deleted. A claim's
/// egress NetworkPolicy selects its pod by it (`crate::tenant_egress`).
pub const TENANT_LABEL: &str = "sandpool.io/tenant";
/// Pod annotation: the name of the BatchSandbox it is allocated to.
pub const BATCH_NAME_ANNOTATION: &str = "sandbox.opensandbox.io/batch";
/// Pod annotation: the shard index inside its BatchSandbox.
pub const SHARD_ANNOTATION: &str = "sandbox.opensandbox.io/shard";
/// Pod annotation: the batch task was started in this pod.
pub const TASK_ANNOTATION: &str = "sandbox.opensandbox.io/task";
pub const BATCH_FINALIZER: &str = "sandbox.opensandbox.io/release-pods";

/// agent-sandbox: the pod a Sandbox runs in (set when adopted from a warm pool).
pub const POD_NAME_ANNOTATION: &str = "agents.x-k8s.io/pod-name";
/// agent-sandbox: label of a warm pool's Sandboxes (and their pods), the
/// FNV-1a hash of the pool's name (upstream's `SandboxWarmPoolLabel`).
pub const WARM_POOL_LABEL: &str = "agents.x-k8s.io/warm-pool-sandbox";
/// agent-sandbox: the FNV-1a hash of the template's name.
pub const TEMPLATE_HASH_LABEL: &str = "agents.x-k8s.io/sandbox-template-ref-hash";
/// agent-sandbox: `warm` (adopted from a warm pool) or `cold`.
pub const LAUNCH_TYPE_LABEL: &str = "agents.x-k8s.io/launch-type";
/// agent-sandbox: a warm Sandbox's template.
pub const TEMPLATE_REF_ANNOTATION: &str = "agents.x-k8s.io/sandbox-template-ref";
/// agent-sandbox: a claim's Sandbox (named after the claim, or a warm one it adopted).
pub const CLAIM_SANDBOX_ANNOTATION: &str = "agents.x-k8s.io/sandbox-name";
/// agent-sandbox: the uid of the claim a Sandbox serves.
pub const CLAIM_UID_LABEL: &str = "agents.x-k8s.io/claim-uid";
/// agent-sandbox: label of a claimed pod, the hash of its Sandbox name.
pub const SANDBOX_NAME_HASH_LABEL: &str = "agents.x-k8s.io/sandbox-name-hash";
pub const CLAIM_FINALIZER: &str = "extensions.agents.x-k8s.io/release-sandbox";

/// The schema of an embedded pod template (see the module docs).
pub fn pod_template_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "A pod template (core/v1 PodTemplateSpec). Containers are validated here; the rest of the pod spec is validated by the apiserver when the pod is created.",
        "x-kubernetes-preserve-unknown-fields": true,
        "required": ["spec"],
        "properties": {
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "properties": {
                    "containers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "image": {"type": "string"},
                                "command": {"type": "array", "items": {"type": "string"}},
                                "args": {"type": "array", "items": {"type": "string"}}
                            }
                        }
                    },
                    "runtimeClassName": {"type": "string"}
                }
            }
        }
    })
}

/// An OpenSandbox pod template: upstream gives it no schema (any object is
/// kept); the controller refuses a template without containers when it
/// makes the pod (an `InvalidSpec` condition and event).
fn opensandbox_template_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "A pod template (core/v1 PodTemplateSpec), validated when the controller creates the pods (as upstream, the CRD keeps any object).",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// An upstream `x-kubernetes-preserve-unknown-fields` value with no type.
fn free_value_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

pub(crate) fn free_object_list_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

// ---------------------------------------------------------------- OpenSandbox

/// OpenSandbox `capacitySpec`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySpec {
    #[schemars(range(min = 0))]
    pub buffer_min: i32,
    #[schemars(range(min = 0))]
    pub buffer_max: i32,
    #[schemars(range(min = 0))]
    pub pool_min: i32,
    /// `0` is valid (as upstream): the pool holds no pods.
    #[schemars(range(min = 0))]
    pub pool_max: i32,
}

impl CapacitySpec {
    /// Into the domain type (negative values were refused by the schema; clamp anyway).
    pub fn to_core(self) -> sandpool_core::pool::CapacitySpec {
        let u = |v: i32| u32::try_from(v).unwrap_or(0);
        sandpool_core::pool::CapacitySpec {
            buffer_min: u(self.buffer_min),
            buffer_max: u(self.buffer_max),
            pool_min: u(self.pool_min),
            pool_max: u(self.pool_max),
        }
    }
}

/// A pool of warm pods, kept between `bufferMin..bufferMax` idle and
/// `poolMin..poolMax` in total.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "sandbox.opensandbox.io",
    version = "v1alpha1",
    kind = "Pool",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    status = "PoolStatus",
    doc = "A pool of pre-warmed sandbox pods (OpenSandbox API).",
    printcolumn(name = "TOTAL", type_ = "integer", json_path = ".status.total"),
    printcolumn(name = "ALLOCATED", type_ = "integer", json_path = ".status.allocated"),
    printcolumn(name = "AVAILABLE", type_ = "integer", json_path = ".status.available"),
    printcolumn(name = "UPDATED", type_ = "integer", json_path = ".status.updated"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("anyOf" = [{"required": ["capacitySpec"]}, {"required": ["capacity"]}]))]
pub struct PoolSpec {
    /// The pod template of the pool's sandboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opensandbox_template_schema")]
    pub template: Option<PodTemplateSpec>,
    /// Required (as upstream), unless the deprecated `capacity` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_spec: Option<CapacitySpec>,
    /// Deprecated (older OpenSandbox chart docs): `capacitySpec.bufferMin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_buffer_size: Option<i32>,
    /// Deprecated: `capacitySpec.bufferMax`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_buffer_size: Option<i32>,
    /// Deprecated: `capacitySpec.poolMax`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub capacity: Option<i32>,
    /// Deprecated: a single-container template (`spec.image`, `spec.command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_template: Option<LegacySandboxTemplate>,
    /// OpenSandbox `recycleStrategy`: what happens to a pod returned to the
    /// pool. `Delete` (the default) deletes it; `Restart` resets it in
    /// place and returns it once the reset is proven (else deletes it);
    /// `Noop` is refused with an `UnsupportedField` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle_strategy: Option<RecycleStrategy>,
    /// OpenSandbox `scaleStrategy`: at most `maxUnavailable` pods are being
    /// created (not yet Ready) at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_strategy: Option<MaxUnavailableStrategy>,
    /// OpenSandbox `updateStrategy`: idle pods of an older template revision
    /// are replaced, at most `maxUnavailable` not Ready at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<MaxUnavailableStrategy>,
}

/// OpenSandbox `scaleStrategy` / `updateStrategy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaxUnavailableStrategy {
    /// A number (`5`) or a percentage of `poolMax` (`"20%"`); default 25%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

impl MaxUnavailableStrategy {
    /// The limit for a pool of `total` pods (percentages round up, at least 1).
    pub fn limit(s: Option<&Self>, total: u32) -> u32 {
        let v = s.and_then(|s| s.max_unavailable.clone());
        let n = match v {
            Some(IntOrString::Int(i)) => u32::try_from(i).unwrap_or(0),
            Some(IntOrString::String(p)) => percent_of(&p, total).unwrap_or(total.div_ceil(4)),
            None => total.div_ceil(4),
        };
        n.max(1)
    }
}

fn percent_of(p: &str, total: u32) -> Option<u32> {
    let pct: u64 = p.trim().strip_suffix('%')?.trim().parse().ok()?;
    u32::try_from((u64::from(total) * pct).div_ceil(100)).ok()
}

/// OpenSandbox `recycleStrategy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RecycleStrategy {
    /// `Delete` (default), `Restart` or `Noop`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Delete"))]
    pub type_: Option<RecycleType>,
}

/// OpenSandbox `recycleStrategy.type`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecycleType {
    Delete,
    Restart,
    Noop,
}

/// The older OpenSandbox single-container template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LegacySandboxTemplate {
    pub spec: LegacySandboxTemplateSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LegacySandboxTemplateSpec {
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

impl LegacySandboxTemplate {
    pub fn to_pod_template(&self) -> PodTemplateSpec {
        use k8s_openapi::api::core::v1::{Container, PodSpec};
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "sandbox".into(),
                    image: Some(self.spec.image.clone()),
                    command: (!self.spec.command.is_empty()).then(|| self.spec.command.clone()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }
}

impl PoolSpec {
    /// A pool in the current shape (no deprecated fields).
    pub fn new(template: PodTemplateSpec, capacity: CapacitySpec) -> Self {
        PoolSpec {
            template: Some(template),
            capacity_spec: Some(capacity),
            min_buffer_size: None,
            max_buffer_size: None,
            capacity: None,
            sandbox_template: None,
            recycle_strategy: None,
            scale_strategy: None,
            update_strategy: None,
        }
    }

    /// `template`, else the deprecated `sandboxTemplate`.
    pub fn pod_template(&self) -> Option<PodTemplateSpec> {
        self.template.clone().or_else(|| {
            self.sandbox_template
                .as_ref()
                .map(LegacySandboxTemplate::to_pod_template)
        })
    }

    /// Why the pool's `recycleStrategy` cannot be honoured: `Noop` would
    /// hand a used pod to the next tenant without a reset.
    pub fn unsupported_recycle(&self) -> Option<String> {
        let t = self.recycle_strategy.as_ref()?.type_?;
        (t == RecycleType::Noop).then(|| {
            "spec.recycleStrategy.type \"Noop\" is not supported by sandpool: a used pod is never \
             handed to another tenant without a reset; use Restart (reset in place, proven, else \
             deleted) or Delete"
                .to_string()
        })
    }

    /// `capacitySpec`, else one from the deprecated fields.
    pub fn capacity(&self) -> Option<CapacitySpec> {
        self.capacity_spec.or_else(|| {
            let max = self.capacity?;
            let bmin = self.min_buffer_size.unwrap_or(0);
            Some(CapacitySpec {
                buffer_min: bmin,
                buffer_max: self.max_buffer_size.unwrap_or(bmin),
                pool_min: 0,
                pool_max: max,
            })
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub total: i32,
    pub allocated: i32,
    pub available: i32,
    /// The hash of the pool's current pod template.
    pub revision: String,
    /// Pods made from the current template revision.
    pub updated: i32,
    /// `Ready=False` with why, while reconciling fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A process task run in each sandbox of a batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessTask {
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessTask>,
    /// Kill the task after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TaskTemplateSpec {
    #[serde(default)]
    pub spec: TaskSpec,
}

/// N sandboxes, from a pool (`poolRef`) or created from `template`, with an
/// optional task each.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "sandbox.opensandbox.io",
    version = "v1alpha1",
    kind = "BatchSandbox",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    status = "BatchSandboxStatus",
    shortname = "bsbx",
    doc = "A batch of sandboxes, optionally from a Pool, optionally running a task each (OpenSandbox API).",
    printcolumn(name = "DESIRED", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "TOTAL", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "ALLOCATED", type_ = "integer", json_path = ".status.allocated"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(
        name = "TASK_RUNNING",
        type_ = "integer",
        json_path = ".status.taskRunning",
        priority = "1"
    ),
    printcolumn(
        name = "TASK_SUCCEED",
        type_ = "integer",
        json_path = ".status.taskSucceed",
        priority = "1"
    ),
    printcolumn(
        name = "TASK_FAILED",
        type_ = "integer",
        json_path = ".status.taskFailed",
        priority = "1"
    ),
    printcolumn(
        name = "TASK_UNKNOWN",
        type_ = "integer",
        json_path = ".status.taskUnknown",
        priority = "1"
    ),
    printcolumn(name = "EXPIRE", type_ = "string", json_path = ".spec.expireTime"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BatchSandboxSpec {
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Take warm pods from this Pool (in the same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ref: Option<String>,
    /// The pod template (required without `poolRef`; with `poolRef` the
    /// pool's template is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "opensandbox_template_schema")]
    pub template: Option<PodTemplateSpec>,
    /// Deprecated: a single-container template (`spec.image`, `spec.command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_template: Option<LegacySandboxTemplate>,
    /// The batch is deleted (its pods released) at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<Time>,
    /// Delete the batch this long after all its tasks finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_template: Option<TaskTemplateSpec>,
    /// Per-shard JSON merge patches over `taskTemplate` (shard i gets patch i).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_object_list_schema")]
    pub shard_task_patches: Vec<serde_json::Value>,
    /// OpenSandbox `shardPatches`: shard i's pod gets patch i, a strategic
    /// merge patch over `template` (see `batch::shards`). With `poolRef` it
    /// is not honoured (an `UnsupportedField` event and condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_value_schema")]
    pub shard_patches: Option<serde_json::Value>,
    /// OpenSandbox `pause`: pause (`true`) or resume (`false`) the batch's
    /// sandbox. As upstream, a pause commits the pod's root file systems into
    /// the SandboxSnapshot `<batch>-pause` and deletes the pod; a resume makes
    /// it again from the snapshot's images, on the node that holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    /// What happens to a sandbox whose task completed: `Retain` (default)
    /// keeps it until the batch is deleted; `Release` releases it once its
    /// task exited (see `batch::release`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "Retain"))]
    pub task_resource_policy_when_completed: Option<TaskResourcePolicy>,
}

/// OpenSandbox `taskResourcePolicyWhenCompleted`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TaskResourcePolicy {
    Retain,
    Release,
}

/// OpenSandbox `BatchSandbox` `status.phase` (upstream's values).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BatchSandboxPhase {
    /// No sandbox is Ready yet.
    Pending,
    /// At least one sandbox is Ready.
    Succeed,
    Pausing,
    Paused,
    Resuming,
    /// A sandbox's pod failed (ended, or its container cannot start).
    Failed,
}

impl BatchSandboxSpec {
    /// `template`, else the deprecated `sandboxTemplate`.
    pub fn pod_template(&self) -> Option<PodTemplateSpec> {
        self.template.clone().or_else(|| {
            self.sandbox_template
                .as_ref()
                .map(LegacySandboxTemplate::to_pod_template)
        })
    }
}

fn one() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct BatchSandboxStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub replicas: i32,
    pub allocated: i32,
    pub ready: i32,
    pub task_running: i32,
    pub task_succeed: i32,
    pub task_failed: i32,
    pub task_unknown: i32,
    /// Tasks not started yet (upstream's count).
    pub task_pending: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BatchSandboxPhase>,
    /// The generation whose `spec.pause` was last acted on (upstream's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_observed_generation: Option<i64>,
    /// When all tasks had finished (for `ttlSecondsAfterFinished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// `Ready=False` with why, while reconciling fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------- agent-sandbox

mod agents;
pub use agents::*;
mod snapshot;
pub use snapshot::*;

/// Every CRD, in a stable order.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        Pool::crd(),
        BatchSandbox::crd(),
        SandboxSnapshot::crd(),
        served_versions(Sandbox::crd()),
        served_versions(SandboxTemplate::crd()),
        served_versions(SandboxClaim::crd()),
        served_versions(SandboxWarmPool::crd()),
    ]
}
