//! Conversions between the CRDs and the scheduler's protobuf messages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use sandpool_proto::v1 as pb;
use serde_json::json;
use tonic::Status;

use crate::crd::{BatchSandbox, Pool};

pub(super) fn ms(t: &k8s_openapi::jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

/// A pool's pods share no claim's NetworkPolicy: a pool template's egress
/// policy is refused (a claim's own is enforced, see `egress`).
pub(super) const POOL_EGRESS_UNSUPPORTED: &str = "a pool template's egress policy is not supported in Kubernetes mode: give the policy on the claim (OpenSandbox networkPolicy, E2B network options), or use a Kubernetes NetworkPolicy";
/// Credential vaults need the standalone node agent's credential proxy.
pub(super) const VAULT_UNSUPPORTED: &str =
    "the credential vault is not supported in Kubernetes mode";

/// A sandbox container's CPU limit when the template asks for none: one
/// core, standalone's default (`node-agent` `limits::DEFAULT_CPU_MILLIS`).
pub(super) const DEFAULT_CPU: &str = "1";
/// Memory limit when none is asked: 512Mi, standalone's default.
pub(super) const DEFAULT_MEMORY: &str = "512Mi";
/// Ephemeral storage limit (the container's writable layer, logs and
/// emptyDirs; the kubelet evicts the pod beyond it): 4Gi, standalone's
/// default disk limit (`serve --sandbox-disk-limit`).
pub(super) const DEFAULT_EPHEMERAL_STORAGE: &str = "4Gi";

/// The limits of a sandbox container made from a template asking for `r`:
/// its CPU and memory, else the defaults, and the default ephemeral storage,
/// so that no sandbox runs unlimited. A pids limit is refused naming the
/// field: Kubernetes limits a pod's pids per node (the kubelet's
/// `podPidsLimit`), not per pod spec.
pub(super) fn container_limits(
    r: Option<&pb::Resources>,
) -> Result<BTreeMap<String, Quantity>, Status> {
    let r = r.cloned().unwrap_or_default();
    if r.pids > 0 {
        return Err(Status::unimplemented(format!(
            "resources.pids {} is not supported in Kubernetes mode: a pod's pids are limited per node (the kubelet's podPidsLimit)",
            r.pids
        )));
    }
    let or = |v: String, d: &str| Quantity(if v.is_empty() { d.to_string() } else { v });
    Ok(BTreeMap::from([
        ("cpu".to_string(), or(r.cpu, DEFAULT_CPU)),
        ("memory".to_string(), or(r.memory, DEFAULT_MEMORY)),
        (
            "ephemeral-storage".to_string(),
            Quantity(DEFAULT_EPHEMERAL_STORAGE.to_string()),
        ),
    ]))
}

/// A Kubernetes API error as a gRPC status.
pub(super) fn kube_status(e: kube::Error) -> Status {
    match &e {
        kube::Error::Api(s) if s.is_not_found() => Status::not_found(s.message.clone()),
        kube::Error::Api(s) if s.is_conflict() || s.is_already_exists() => {
            Status::already_exists(s.message.clone())
        }
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            Status::invalid_argument(s.message.clone())
        }
        kube::Error::Api(s) if s.code == 403 => Status::permission_denied(s.message.clone()),
        _ => Status::unavailable(format!("kubernetes API: {e}")),
    }
}

/// A pool claim's resource limits must be the pool pods' own: Kubernetes
/// mode does not resize a running pod (empty fields ask for nothing).
pub(super) fn check_pool_limits(
    pool: &str,
    t: Option<&PodTemplateSpec>,
    asked: &pb::Resources,
) -> Result<(), Status> {
    let limits = t
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    for (name, want) in [("cpu", &asked.cpu), ("memory", &asked.memory)] {
        let have = limits.get(name).map(|q| q.0.as_str());
        if !want.is_empty() && have != Some(want.as_str()) {
            return Err(Status::unimplemented(format!(
                "resourceLimits.{name} {want:?} differs from pool {pool}'s pod limit {have:?}: Kubernetes mode does not resize a pool's pods (ask for the pool's limits, or create from an image)"
            )));
        }
    }
    if asked.pids > 0 {
        return Err(Status::unimplemented(
            "a pids limit on a pool claim is not supported in Kubernetes mode",
        ));
    }
    Ok(())
}

pub(super) fn template_of(t: &PodTemplateSpec) -> pb::SandboxTemplate {
    let c = t.spec.as_ref().and_then(|s| s.containers.first());
    pb::SandboxTemplate {
        image: c.and_then(|c| c.image.clone()).unwrap_or_default(),
        command: c.and_then(|c| c.command.clone()).unwrap_or_default(),
        env: c
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect(),
        runtime_class: match t
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
        {
            Some("gvisor" | "runsc") => pb::RuntimeClass::Runsc as i32,
            _ => pb::RuntimeClass::Runc as i32,
        },
        ..Default::default()
    }
}

pub(super) fn pool_to_pb(p: &Pool) -> pb::Pool {
    let cap = p.spec.capacity().unwrap_or_default().to_core();
    let st = p.status.clone().unwrap_or_default();
    pb::Pool {
        name: p.name_any(),
        template: p.spec.pod_template().as_ref().map(template_of),
        capacity: Some(pb::CapacitySpec {
            buffer_min: cap.buffer_min,
            buffer_max: cap.buffer_max,
            pool_min: cap.pool_min,
            pool_max: cap.pool_max,
        }),
        status: Some(pb::PoolStatus {
            total: u32::try_from(st.total).unwrap_or(0),
            allocated: u32::try_from(st.allocated).unwrap_or(0),
            available: u32::try_from(st.available).unwrap_or(0),
            // the kubelet pulls: no image phase in Kubernetes mode
            ..Default::default()
        }),
    }
}

/// The metadata annotation of a claim whose annotation was `current`, after
/// a merge patch: `set` adds or replaces keys, then `remove` deletes keys.
pub(super) fn patched_metadata(
    current: Option<&String>,
    r: pb::PatchClaimMetadataRequest,
) -> String {
    let mut m: BTreeMap<String, String> = current
        .and_then(|m| serde_json::from_str(m).ok())
        .unwrap_or_default();
    m.extend(r.set);
    for k in &r.remove {
        m.remove(k);
    }
    json!(m).to_string()
}

pub(super) fn batch_to_pb(b: &BatchSandbox) -> pb::Batch {
    let st = b.status.clone().unwrap_or_default();
    let u = |v: i32| u32::try_from(v).unwrap_or(0);
    pb::Batch {
        name: b.name_any(),
        pool: b.spec.pool_ref.clone().unwrap_or_default(),
        replicas: u(b.spec.replicas),
        allocated: u(st.allocated),
        ready: u(st.ready),
        tasks: Some(pb::TaskCounts {
            running: u(st.task_running),
            succeeded: u(st.task_succeed),
            failed: u(st.task_failed),
            unknown: u(st.task_unknown),
        }),
        claims: Vec::new(),
    }
}

impl super::KubeScheduler {
    /// What a claim's pod runs: its own template, or its pool's (a `poolRef`
    /// claim has none of its own); empty when the pool is gone.
    pub(super) async fn claim_template(
        &self,
        b: &BatchSandbox,
    ) -> Result<pb::SandboxTemplate, Status> {
        let template = self.claim_pod_template(b).await?;
        Ok(template.as_ref().map(template_of).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_sandbox_container_is_unlimited_and_a_pids_limit_is_refused_naming_it() {
        let q = |l: &BTreeMap<String, Quantity>, k: &str| l.get(k).map(|q| q.0.clone());
        let none = container_limits(None).expect("defaults");
        assert_eq!(q(&none, "cpu").as_deref(), Some("1"));
        assert_eq!(q(&none, "memory").as_deref(), Some("512Mi"));
        assert_eq!(q(&none, "ephemeral-storage").as_deref(), Some("4Gi"));
        let asked = pb::Resources {
            cpu: "250m".into(),
            memory: "2Gi".into(),
            pids: 0,
        };
        let l = container_limits(Some(&asked)).expect("asked");
        assert_eq!(q(&l, "cpu").as_deref(), Some("250m"));
        assert_eq!(q(&l, "memory").as_deref(), Some("2Gi"));
        assert_eq!(q(&l, "ephemeral-storage").as_deref(), Some("4Gi"));
        let pids = pb::Resources {
            pids: 100,
            ..Default::default()
        };
        let e = container_limits(Some(&pids)).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert!(e.message().contains("resources.pids"), "{e}");
    }

    #[test]
    fn a_metadata_patch_merges_into_the_claims_annotation() {
        let current = r#"{"keep":"1","team":"a","old":"x"}"#.to_string();
        let r = pb::PatchClaimMetadataRequest {
            claim_id: "c".into(),
            set: [("team".to_string(), "b".to_string())].into(),
            remove: vec!["old".into(), "absent".into()],
        };
        let m: BTreeMap<String, String> =
            serde_json::from_str(&patched_metadata(Some(&current), r.clone())).expect("json");
        let want = BTreeMap::from([("keep".into(), "1".into()), ("team".into(), "b".into())]);
        assert_eq!(m, want);
        let fresh: BTreeMap<String, String> =
            serde_json::from_str(&patched_metadata(None, r)).expect("json");
        assert_eq!(fresh, BTreeMap::from([("team".into(), "b".into())]));
    }
}
