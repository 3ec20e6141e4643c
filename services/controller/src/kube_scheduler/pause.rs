//! Pause and resume of a claim in Kubernetes mode: the claim's pod is frozen
//! (thawed) by the node agent of the node it runs on, the DaemonSet pod on
//! that node, reached at its pod IP with the service token. The paused state
//! lives on the claim's `BatchSandbox` (annotation [`PAUSED_ANNOTATION`]),
//! so every scheduler replica reports it; as in standalone mode a paused
//! claim's TTL clock stops (its `expireTime` is set aside and put back, with
//! what was left, on resume) and a transition the claim state machine
//! refuses (pause a paused claim, resume a running one) is a conflict. A
//! claim paused through its BatchSandbox's own `spec.pause` (snapshot and
//! delete, by the batch controller) is paused too, and is resumed through
//! it (`spec.pause: false`).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use sandpool_core::claim::{ClaimEvent, ClaimState};
use sandpool_proto::v1 as pb;
use serde_json::json;
use tonic::Status;

use super::{KubeScheduler, kube_status};
use crate::crd::BatchSandbox;
pub use crate::node_agents::{DaemonSetAgents, NODE_AGENT_PORT, NODE_AGENT_SELECTOR, NodeAgents};
use crate::pods;

/// On a paused claim's `BatchSandbox`: the milliseconds its TTL had left
/// when it was paused (`0`: it had none).
pub const PAUSED_ANNOTATION: &str = "sandpool.io/paused-ttl-remaining-ms";

/// Longest wait, after a resume, for the pod to be ready again.
const RESUME_READY_WAIT: Duration = Duration::from_secs(30);

/// The claim's state as [`claim_state`] reads it, in the core state machine.
fn core_state(b: &BatchSandbox, pod: Option<&Pod>) -> ClaimState {
    if b.metadata.deletion_timestamp.is_some() {
        ClaimState::Released
    } else if b.annotations().contains_key(PAUSED_ANNOTATION) || paused_by_spec(b) {
        ClaimState::Paused
    } else if pod.is_some_and(pods::is_ready) {
        ClaimState::Bound
    } else {
        ClaimState::Pending
    }
}

/// Paused through the BatchSandbox's own `spec.pause` (kubectl, upstream's
/// server): snapshotted and its pod deleted, or on the way there.
fn paused_by_spec(b: &BatchSandbox) -> bool {
    b.spec.pause == Some(true)
}

/// The claim's public state: released, paused, bound (its pod ready) or pending.
pub(super) fn claim_state(b: &BatchSandbox, pod: Option<&Pod>) -> pb::ClaimState {
    match core_state(b, pod) {
        ClaimState::Released => pb::ClaimState::Released,
        ClaimState::Paused => pb::ClaimState::Paused,
        ClaimState::Bound => pb::ClaimState::Bound,
        _ => pb::ClaimState::Pending,
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// The patch that records `event` on the claim: the paused mark with the
/// TTL left (pause), or the mark gone and the TTL restarted (resume).
pub fn state_patch(b: &BatchSandbox, event: ClaimEvent) -> Result<serde_json::Value, Status> {
    if event == ClaimEvent::Pause {
        let left = b
            .spec
            .expire_time
            .as_ref()
            .map_or(0, |t| (t.0.as_millisecond() - now_ms()).max(1));
        return Ok(json!({
            "metadata": {"annotations": {PAUSED_ANNOTATION: left.to_string()}},
            "spec": {"expireTime": null},
        }));
    }
    let left: i64 = b
        .annotations()
        .get(PAUSED_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let expire = if left > 0 {
        let t = Timestamp::from_millisecond(now_ms().saturating_add(left))
            .map_err(|e| Status::internal(format!("restarting the TTL: {e}")))?;
        json!(Time(t))
    } else {
        serde_json::Value::Null
    };
    Ok(json!({
        "metadata": {"annotations": {PAUSED_ANNOTATION: null}},
        "spec": {"expireTime": expire},
    }))
}

impl KubeScheduler {
    /// Where pause and resume go (default: the chart's DaemonSet, no token).
    pub fn with_node_agents(mut self, nodes: std::sync::Arc<dyn NodeAgents>) -> Self {
        self.nodes = nodes;
        self
    }

    /// Pause or resume claim `id` (see the module doc).
    pub(super) async fn set_claim_paused(
        &self,
        id: &str,
        event: ClaimEvent,
    ) -> Result<pb::Claim, Status> {
        let b = self.get_claim_batch(id).await?;
        let pod = self.pod_of(&b).await?;
        core_state(&b, pod.as_ref())
            .on(event)
            .map_err(|e| Status::failed_precondition(format!("claim {id}: {e}")))?;
        if paused_by_spec(&b) {
            return self.resume_by_spec(id).await;
        }
        let pod =
            pod.ok_or_else(|| Status::failed_precondition(format!("claim {id} has no pod")))?;
        crate::node_agents::set_pod_paused(self.nodes.as_ref(), &pod, event == ClaimEvent::Pause)
            .await?;
        let b = self
            .batches()
            .patch(
                id,
                &PatchParams::default(),
                &Patch::Merge(state_patch(&b, event)?),
            )
            .await
            .map_err(kube_status)?;
        if event == ClaimEvent::Resume {
            // a thawed pod's readiness probe may have failed while frozen:
            // report it bound once the kubelet sees it ready again
            if let Ok((b, _)) = self.wait_ready(id, RESUME_READY_WAIT).await {
                return self.claim_of(&b).await;
            }
        }
        self.claim_of(&b).await
    }

    /// Resume claim `id` paused through its `spec.pause`: `spec.pause: false`,
    /// which the batch controller acts on (a new pod from the pause
    /// snapshot's images, on the node that holds them); answered once that
    /// pod is ready, or as it stands after [`RESUME_READY_WAIT`].
    async fn resume_by_spec(&self, id: &str) -> Result<pb::Claim, Status> {
        let b = self
            .batches()
            .patch(
                id,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"pause": false}})),
            )
            .await
            .map_err(kube_status)?;
        if let Ok((b, _)) = self.wait_ready(id, RESUME_READY_WAIT).await {
            return self.claim_of(&b).await;
        }
        self.claim_of(&b).await
    }
}

/// The claim a pause asks for, refused when it is filesystem-only (see
/// [`sandpool_core::claim::KUBERNETES_FS_PAUSE_UNSUPPORTED`]).
pub(super) fn frozen_only(r: pb::PauseClaimRequest) -> Result<String, Status> {
    if r.filesystem_only {
        return Err(Status::unimplemented(
            sandpool_core::claim::KUBERNETES_FS_PAUSE_UNSUPPORTED,
        ));
    }
    Ok(r.claim_id)
}
