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

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use sandpool_core::claim::{ClaimEvent, ClaimState, KUBERNETES_FS_PAUSE_UNSUPPORTED, OnExpiry};
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
pub(crate) fn core_state(b: &BatchSandbox, pod: Option<&Pod>) -> ClaimState {
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

/// The TTL claim `b` set aside while paused ([`PAUSED_ANNOTATION`], ms; 0:
/// none or not paused).
fn ttl_set_aside_ms(b: &BatchSandbox) -> i64 {
    b.annotations()
        .get(PAUSED_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// When claim `b` ends, as the scheduler API reports it (Unix ms, 0 =
/// never): its `expireTime`, or, while paused, now plus the TTL set aside
/// (as standalone reports a paused claim).
pub(super) fn reported_expiry(b: &BatchSandbox) -> i64 {
    if let Some(t) = &b.spec.expire_time {
        return t.0.as_millisecond();
    }
    let left = ttl_set_aside_ms(b);
    if left > 0 {
        now_ms().saturating_add(left)
    } else {
        0
    }
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
        return Ok(paused_patch(left));
    }
    let left = ttl_set_aside_ms(b);
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

/// The patch of a pause that sets `left_ms` of TTL aside (`0`: none).
fn paused_patch(left_ms: i64) -> serde_json::Value {
    json!({
        "metadata": {"annotations": {PAUSED_ANNOTATION: left_ms.to_string()}},
        "spec": {"expireTime": null},
    })
}

/// The patch of a new timeout `at` of claim `b`: its `expireTime`, or, while
/// it is paused, the TTL it gets back on resume (the clock stays stopped,
/// as in standalone mode; a paused claim is never deleted by its timeout).
pub(super) fn renew_patch(b: &BatchSandbox, at: Timestamp) -> serde_json::Value {
    if b.annotations().contains_key(PAUSED_ANNOTATION) {
        return paused_patch((at.as_millisecond() - now_ms()).max(1));
    }
    json!({"spec": {"expireTime": Time(at)}})
}

/// Freeze (`Pause`) or thaw (`Resume`) claim `b`'s `pod` through the node
/// agent of its node and record it on the claim ([`state_patch`]; a pause
/// with `left_ms` sets that much TTL aside instead of what was left): the
/// REST pause and resume, and the batch controller's pause of a claim at
/// its expiry ([`crate::batch::expire`]). A transition the claim state
/// machine refuses is a failed precondition, and nothing is called.
pub(crate) async fn freeze(
    nodes: &dyn NodeAgents,
    batches: &kube::Api<BatchSandbox>,
    (b, pod): (&BatchSandbox, Option<&Pod>),
    event: ClaimEvent,
    left_ms: Option<i64>,
) -> Result<BatchSandbox, Status> {
    let id = b.name_any();
    core_state(b, pod)
        .on(event)
        .map_err(|e| Status::failed_precondition(format!("claim {id}: {e}")))?;
    let pod = pod.ok_or_else(|| Status::failed_precondition(format!("claim {id} has no pod")))?;
    crate::node_agents::set_pod_paused(nodes, pod, event == ClaimEvent::Pause).await?;
    let patch = match left_ms {
        Some(left) if event == ClaimEvent::Pause => paused_patch(left),
        _ => state_patch(b, event)?,
    };
    batches
        .patch(&id, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_status)
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
        let on = (&b, pod.as_ref());
        let b = freeze(self.nodes.as_ref(), &self.batches(), on, event, None).await?;
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
        return Err(Status::unimplemented(KUBERNETES_FS_PAUSE_UNSUPPORTED));
    }
    Ok(r.claim_id)
}

/// What the claim's timeout does (`pause`: [`OnExpiry::Pause`]; the batch
/// controller acts on it, see [`crate::batch::expire`]).
pub const ON_EXPIRY_ANNOTATION: &str = "sandpool.io/on-expiry";
/// With `pause`: a paused claim resumes on traffic (E2B `autoResume`).
pub const AUTO_RESUME_ANNOTATION: &str = "sandpool.io/auto-resume";
/// With `pause`: the TTL the claim was made with, which an auto-resume
/// restarts (`Claim.ttl_seconds`).
pub const TTL_SECONDS_ANNOTATION: &str = "sandpool.io/ttl-seconds";

/// The annotations recording what claim request `r` asks its timeout to do
/// (none for a release). A filesystem-only pause is refused (501 naming the
/// field, [`KUBERNETES_FS_PAUSE_UNSUPPORTED`]), and `auto_resume` without
/// `pause_on_expiry` is a bad request (nothing to resume from).
pub(super) fn on_expiry_annotations(
    r: &pb::ClaimRequest,
) -> Result<BTreeMap<String, String>, Status> {
    if r.pause_filesystem_only {
        return Err(Status::unimplemented(format!(
            "pause_filesystem_only (E2B autoPauseMemory: false, SDK on_timeout mode \"filesystem\"): {KUBERNETES_FS_PAUSE_UNSUPPORTED}"
        )));
    }
    if !r.pause_on_expiry {
        if r.auto_resume {
            return Err(Status::invalid_argument(
                "auto_resume needs pause_on_expiry (a claim released at its timeout cannot resume)",
            ));
        }
        return Ok(BTreeMap::new());
    }
    let mut a = BTreeMap::from([(
        ON_EXPIRY_ANNOTATION.to_string(),
        OnExpiry::Pause.as_str().to_string(),
    )]);
    if r.auto_resume {
        a.insert(AUTO_RESUME_ANNOTATION.into(), "true".into());
    }
    if r.ttl_seconds > 0 {
        a.insert(TTL_SECONDS_ANNOTATION.into(), r.ttl_seconds.to_string());
    }
    Ok(a)
}

/// What claim `b`'s timeout does, as the claim reports it:
/// `(pause_on_expiry, auto_resume, ttl_seconds)`.
pub(super) fn on_expiry(b: &BatchSandbox) -> (bool, bool, u64) {
    let a = b.annotations();
    let pause =
        OnExpiry::parse(a.get(ON_EXPIRY_ANNOTATION).map(String::as_str)) == Ok(OnExpiry::Pause);
    let resume = pause && a.get(AUTO_RESUME_ANNOTATION).map(String::as_str) == Some("true");
    let ttl = a
        .get(TTL_SECONDS_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    (pause, resume, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BatchSandboxSpec;

    fn spec() -> BatchSandboxSpec {
        serde_json::from_value(serde_json::json!({"replicas": 1})).expect("spec")
    }

    fn claim(annotations: BTreeMap<String, String>) -> BatchSandbox {
        let mut b = BatchSandbox::new("c", spec());
        b.metadata.annotations = Some(annotations);
        b
    }

    #[test]
    fn a_pause_on_expiry_is_recorded_and_read_back() {
        let r = pb::ClaimRequest {
            pause_on_expiry: true,
            auto_resume: true,
            ttl_seconds: 90,
            ..Default::default()
        };
        let a = on_expiry_annotations(&r).expect("recorded");
        assert_eq!(a[ON_EXPIRY_ANNOTATION], "pause");
        assert_eq!(on_expiry(&claim(a)), (true, true, 90));
        let plain = on_expiry_annotations(&pb::ClaimRequest::default()).expect("none");
        assert!(plain.is_empty());
        assert_eq!(on_expiry(&claim(plain)), (false, false, 0));
    }

    #[test]
    fn a_filesystem_pause_or_a_resume_without_pause_is_refused_naming_it() {
        let fs = pb::ClaimRequest {
            pause_on_expiry: true,
            pause_filesystem_only: true,
            ..Default::default()
        };
        let e = on_expiry_annotations(&fs).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert!(e.message().contains("pause_filesystem_only"), "{e}");
        let resume = pb::ClaimRequest {
            auto_resume: true,
            ..Default::default()
        };
        let e = on_expiry_annotations(&resume).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("auto_resume"), "{e}");
    }

    #[test]
    fn a_new_timeout_of_a_paused_claim_is_set_aside_not_started() {
        let at = Timestamp::from_millisecond(now_ms() + 60_000).expect("time");
        let running = claim(BTreeMap::new());
        let p = renew_patch(&running, at);
        assert!(p["spec"]["expireTime"].is_string(), "{p}");
        let paused = claim(BTreeMap::from([(PAUSED_ANNOTATION.into(), "5".into())]));
        let p = renew_patch(&paused, at);
        assert!(p["spec"]["expireTime"].is_null(), "{p}");
        let left: i64 = p["metadata"]["annotations"][PAUSED_ANNOTATION]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("ms left");
        assert!((50_000..=60_000).contains(&left), "{left}");
    }

    #[test]
    fn a_paused_claim_reports_now_plus_its_ttl_set_aside() {
        assert_eq!(reported_expiry(&claim(BTreeMap::new())), 0);
        let paused = claim(BTreeMap::from([(PAUSED_ANNOTATION.into(), "60000".into())]));
        let at = reported_expiry(&paused);
        let now = now_ms();
        assert!((now + 50_000..=now + 60_000).contains(&at), "{at} vs {now}");
        let mut running = claim(BTreeMap::new());
        let t = Timestamp::from_millisecond(now + 5_000).expect("time");
        running.spec.expire_time = Some(Time(t));
        assert_eq!(reported_expiry(&running), now + 5_000);
    }
}
