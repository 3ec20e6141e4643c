//! OpenSandbox `BatchSandbox` `status.phase`, and the spec fields sandpool
//! accepts but does not honour (reported, never silently ignored).

use k8s_openapi::api::core::v1::Pod;

use crate::crd::{BatchSandboxPhase, BatchSandboxSpec};

/// Container waiting reasons that mean the sandbox will not start by itself.
pub(super) const STUCK: [&str; 4] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
];

/// The pod failed: it ended as Failed, or a container is stuck (see [`STUCK`]).
pub fn pod_failed(pod: &Pod) -> bool {
    let Some(st) = &pod.status else { return false };
    if st.phase.as_deref() == Some("Failed") {
        return true;
    }
    st.container_statuses
        .iter()
        .chain(st.init_container_statuses.iter())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .any(|r| STUCK.contains(&r))
}

/// Upstream's steady phases: `Failed` when a pod failed, `Succeed` once a
/// sandbox is Ready, else `Pending`. (Pausing, Paused and Resuming belong to
/// `spec.pause`, see [`super::pause`].)
pub fn phase(pods: &[Pod], ready: i32) -> BatchSandboxPhase {
    if pods.iter().any(pod_failed) {
        BatchSandboxPhase::Failed
    } else if ready > 0 {
        BatchSandboxPhase::Succeed
    } else {
        BatchSandboxPhase::Pending
    }
}

/// The fields of `spec` that are set but not honoured, and why.
pub fn unsupported(spec: &BatchSandboxSpec) -> Option<String> {
    super::shards::unsupported(spec).map(|f| {
        format!(
            "{f} is not supported by sandpool in Kubernetes mode; the sandboxes run as if it were unset"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).expect("pod")
    }

    #[test]
    fn phases_follow_the_pods() {
        let ready = pod(json!({"phase": "Running"}));
        assert_eq!(phase(&[], 0), BatchSandboxPhase::Pending);
        assert_eq!(
            phase(std::slice::from_ref(&ready), 1),
            BatchSandboxPhase::Succeed
        );
        let crash = pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i",
            "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
        );
        assert_eq!(phase(&[ready.clone(), crash], 1), BatchSandboxPhase::Failed);
        assert_eq!(
            phase(&[pod(json!({"phase": "Failed"}))], 0),
            BatchSandboxPhase::Failed
        );
        let pulling = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i",
            "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(phase(&[pulling], 0), BatchSandboxPhase::Pending);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let spec =
            |v: serde_json::Value| -> BatchSandboxSpec { serde_json::from_value(v).expect("spec") };
        assert_eq!(unsupported(&spec(json!({"replicas": 1}))), None);
        assert_eq!(
            unsupported(&spec(json!({"pause": false, "shardPatches": [],
                "taskResourcePolicyWhenCompleted": "Retain"}))),
            None
        );
        assert_eq!(
            unsupported(&spec(json!({"pause": true}))),
            None,
            "spec.pause is honoured"
        );
        let msg = unsupported(&spec(
            json!({"poolRef": "p", "shardPatches": [{"metadata": {}}],
            "taskResourcePolicyWhenCompleted": "Release"}),
        ))
        .expect("pooled shard patches");
        assert!(
            msg.contains("spec.shardPatches with spec.poolRef") && !msg.contains("Release"),
            "{msg}"
        );
        assert_eq!(
            unsupported(&spec(json!({"shardPatches": [{"metadata": {}}],
                "taskResourcePolicyWhenCompleted": "Release"}))),
            None,
            "both are honoured for a batch made from its template"
        );
    }
}
