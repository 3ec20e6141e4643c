//! Pool template revisions and OpenSandbox's `updateStrategy` and
//! `scaleStrategy`: every pod is labelled with the hash of the template it
//! was made from; idle pods of an older revision are replaced, and pods are
//! created, with at most `maxUnavailable` pods not Ready at a time, as
//! upstream's pool controller (`pool_update.go`, `scalePool`).

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};

use crate::crd::{MaxUnavailableStrategy, PoolSpec};
use crate::pods;

/// Pod label: the revision (template hash) a pool pod was made from.
pub const REVISION_LABEL: &str = "sandbox.opensandbox.io/pool-revision";

/// The revision of a pool's pod template: a short hash of its JSON form.
pub fn revision(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_string(template).unwrap_or_default();
    pods::short_hash(&json)
}

/// Whether `pod` was made from `revision`.
pub fn is_current(pod: &Pod, revision: &str) -> bool {
    pods::labels_of(pod)
        .get(REVISION_LABEL)
        .is_some_and(|r| r == revision)
}

/// How many Ready idle pods of an older revision to replace now, as
/// upstream: the update budget (`updateStrategy.maxUnavailable` of the
/// pool's `total` pods, rounded up, default 25%, at least 1) less the
/// `unready` pods.
pub fn to_replace(spec: &PoolSpec, total: u32, stale: usize, unready: u32) -> usize {
    let budget = MaxUnavailableStrategy::limit(spec.update_strategy.as_ref(), total);
    stale.min(budget.saturating_sub(unready) as usize)
}

/// How many pods to create of the `wanted`, as upstream: at most
/// `scaleStrategy.maxUnavailable` (of the `desired_total` pods, rounded up,
/// default 25%, at least 1) not Ready at a time, counting the `unready`.
pub fn to_create(spec: &PoolSpec, desired_total: u32, wanted: u32, unready: u32) -> u32 {
    let limit = MaxUnavailableStrategy::limit(spec.scale_strategy.as_ref(), desired_total);
    wanted.min(limit.saturating_sub(unready))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> PoolSpec {
        let mut v =
            json!({"capacitySpec": {"bufferMin": 4, "bufferMax": 4, "poolMin": 0, "poolMax": 8}});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn the_revision_follows_the_template() {
        let a: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "a"}]}}))
                .expect("t");
        let mut b = a.clone();
        assert_eq!(revision(&a), revision(&b));
        b.spec.as_mut().expect("spec").containers[0].image = Some("b".into());
        assert_ne!(revision(&a), revision(&b));
    }

    #[test]
    fn updates_replace_within_max_unavailable_of_all_pods() {
        // default 25% of 8 pods = 2
        assert_eq!(to_replace(&spec(json!({})), 8, 5, 0), 2);
        assert_eq!(to_replace(&spec(json!({})), 8, 5, 1), 1);
        assert_eq!(to_replace(&spec(json!({})), 8, 5, 3), 0);
        // of the pods there are, rounded up: 25% of 3 = 1
        assert_eq!(to_replace(&spec(json!({})), 3, 3, 0), 1);
        let s = spec(json!({"updateStrategy": {"maxUnavailable": 3}}));
        assert_eq!(to_replace(&s, 8, 5, 0), 3);
        let s = spec(json!({"updateStrategy": {"maxUnavailable": "50%"}}));
        assert_eq!(to_replace(&s, 8, 5, 0), 4);
        assert_eq!(to_replace(&s, 3, 3, 0), 2);
        assert_eq!(to_replace(&s, 8, 1, 0), 1);
        // a zero budget still lets one through, else an update never ends
        let s = spec(json!({"updateStrategy": {"maxUnavailable": 0}}));
        assert_eq!(to_replace(&s, 8, 5, 0), 1);
    }

    #[test]
    fn scaling_is_paced_by_max_unavailable_of_the_desired_pods() {
        // upstream's default: 25% of the desired total, at least 1
        assert_eq!(to_create(&spec(json!({})), 8, 6, 0), 2);
        assert_eq!(to_create(&spec(json!({})), 2, 2, 0), 1);
        assert_eq!(to_create(&spec(json!({})), 8, 6, 1), 1);
        let s = spec(json!({"scaleStrategy": {"maxUnavailable": 2}}));
        assert_eq!(to_create(&s, 8, 6, 0), 2);
        assert_eq!(to_create(&s, 8, 6, 1), 1);
        assert_eq!(to_create(&s, 8, 6, 2), 0);
        let s = spec(json!({"scaleStrategy": {"maxUnavailable": "100%"}}));
        assert_eq!(to_create(&s, 8, 6, 0), 6);
        let s = spec(json!({"scaleStrategy": {"maxUnavailable": "25%"}}));
        assert_eq!(to_create(&s, 10, 6, 0), 3);
    }
}
