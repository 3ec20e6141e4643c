//! OpenSandbox `SandboxSnapshot` (`sbxsnap`), field for field with
//! upstream's CRD: the root file systems of a BatchSandbox's pod committed
//! into images (see [`crate::snapshot`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A snapshot of a BatchSandbox: the caller names the sandbox, the
/// controller fills the status.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sandbox.opensandbox.io",
    version = "v1alpha1",
    kind = "SandboxSnapshot",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    status = "SandboxSnapshotStatus",
    shortname = "sbxsnap",
    doc = "The root file systems of a BatchSandbox's pod committed into images (OpenSandbox API).",
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "SANDBOX", type_ = "string", json_path = ".spec.sandboxName"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSnapshotSpec {
    /// The BatchSandbox (same namespace) whose pod is committed.
    pub sandbox_name: String,
}

/// Upstream's phases.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SandboxSnapshotPhase {
    Pending,
    Committing,
    Succeed,
    Failed,
}

/// Upstream's condition types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SnapshotConditionType {
    Ready,
    Failed,
}

/// Upstream's condition statuses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SnapshotConditionStatus {
    True,
    False,
}

/// A condition of a SandboxSnapshot (upstream's own type, not metav1's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSnapshotCondition {
    #[serde(rename = "type")]
    pub type_: SnapshotConditionType,
    pub status: SnapshotConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// One container's snapshot image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSnapshot {
    pub container_name: String,
    /// The snapshot image's name.
    #[serde(rename = "imageUri")]
    pub image_uri: String,
    /// The digest of its manifest (set once committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SandboxSnapshotStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<SandboxSnapshotCondition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<SandboxSnapshotPhase>,
    /// The node the source pod runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_node_name: Option<String>,
    /// The source pod (resolved by the controller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_pod_name: Option<String>,
}
