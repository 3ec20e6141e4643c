//! A Pool's `recycleStrategy: Restart` in Kubernetes mode: a pod a
//! BatchSandbox gives back goes back to its pool only after a reset that
//! is proven, and is deleted otherwise.
//!
//! 1. The release ([`release`]) does not free the pod: its allocation label
//!    becomes [`RECYCLING`], so no claim can take it and the pool counts it
//!    as allocated, and its batch annotations go.
//! 2. The pool controller ([`drive`]) records the pod's app containers
//!    (name → container id and restart count) in [`RECORD_ANNOTATION`] and
//!    asks the node agent of its node to reset it (`Release` with
//!    `RELEASE_POLICY_RECYCLE`, see the node agent's `cri::reset`): every
//!    process of the tenant killed and checked gone, the writable emptyDir
//!    volumes emptied, a new runtime access token written to the runtime's
//!    volume. The answer must name every app container killed; the new
//!    token goes to [`pods::TOKEN_ANNOTATION`].
//! 3. The kubelet restarts the killed containers (restartPolicy `Always`),
//!    each a new CRI container with a new rootfs from the image. The pod
//!    rejoins the pool (its allocation label removed) once every recorded
//!    container has a new container id, a higher restart count, is running
//!    and ready, and the pod is Ready ([`verdict`]). Its tenant's egress
//!    NetworkPolicies are deleted first and its tenant label goes with the
//!    allocation label ([`crate::tenant_egress`]): they guard the pod until
//!    the reset is proven.
//! 4. Anything else deletes the pod with a Warning `RecycleFailed` event
//!    naming why: a pod the reset cannot cover ([`refusal`]: restartPolicy
//!    not `Always`, an emptyDir that init containers fill and the tenant
//!    can write), a node agent error or incomplete evidence, the pod not
//!    back within [`RESTART_WAIT`] (or the time the pool's upstream
//!    `restart-config` annotation gives, [`super::restart_config`]), the
//!    pod failing meanwhile, or that annotation asking what cannot be
//!    honoured.
//!
//! Upstream restarts the containers with `kill 1` through pod exec and
//! waits for new container ids, up to 3 tries; it keeps emptyDir contents
//! and the pod's token (docs/compatibility.md says why sandpool differs).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::{Context, delete_ignoring_missing};
use crate::crd::{
    ALLOCATED_TO_LABEL, BATCH_NAME_ANNOTATION, ENDPOINTS_ANNOTATION, POOL_LABEL, Pool, PoolSpec,
    RecycleType, SHARD_ANNOTATION, TASK_ANNOTATION, TENANT_LABEL,
};
use crate::error::Result;
use crate::pods;

/// The allocation label's value while a pod is being reset.
pub const RECYCLING: &str = "sandpool.io-recycling";
/// The reset in progress: [`Record`] as JSON.
pub const RECORD_ANNOTATION: &str = "sandpool.io/recycle-record";
/// Where the runtime reads a rotated token (the node agent writes it).
pub const TOKEN_FILE_ENV: &str = "EXECD_ACCESS_TOKEN_FILE";
pub const TOKEN_FILE: &str = "/opt/sandpool/access-token";
/// Longest wait for the kubelet to bring the reset pod back Ready.
pub const RESTART_WAIT: Duration = Duration::from_secs(120);
/// The node agent's evidence label: the app containers it killed.
pub const RESET_KILLED: &str = "sandpool.io/reset-killed-containers";

/// A reset in progress.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub started_ms: i64,
    /// App container name → (container id, restart count) before the reset.
    pub containers: BTreeMap<String, (String, i32)>,
    /// How long the pod has to come back, when not [`RESTART_WAIT`] (the
    /// pool's [`super::restart_config`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// Whether `spec` recycles (`Restart`).
pub fn restarts(spec: &PoolSpec) -> bool {
    spec.recycle_strategy.as_ref().and_then(|r| r.type_) == Some(RecycleType::Restart)
}

/// A Restart pool's runtime reads its token from the file the node agent
/// rewrites on each reset.
pub fn prepare(spec: &PoolSpec, pod: &mut Pod) {
    if !restarts(spec) {
        return;
    }
    if let Some(main) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        main.env
            .get_or_insert_with(Vec::new)
            .push(k8s_openapi::api::core::v1::EnvVar {
                name: TOKEN_FILE_ENV.into(),
                value: Some(TOKEN_FILE.into()),
                ..Default::default()
            });
    }
}

/// Why a pod cannot be reset in place, if it cannot.
pub fn refusal(spec: &PodSpec) -> Option<String> {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if policy != "Always" {
        return Some(format!(
            "restartPolicy {policy}: the kubelet would not restart the killed containers"
        ));
    }
    let init_written: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() != Some("Always"))
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .filter(|m| m.read_only != Some(true))
        .map(|m| m.name.as_str())
        .collect();
    let empty_dirs = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.empty_dir.is_some())
        .map(|v| v.name.as_str());
    for v in empty_dirs.filter(|v| init_written.contains(v)) {
        let tenant_writes = spec
            .containers
            .iter()
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .any(|m| m.name == v && m.read_only != Some(true));
        if tenant_writes {
            return Some(format!(
                "emptyDir {v} is filled by init containers and writable by the tenant: \
                 emptying it would lose what the init containers put there, keeping it would \
                 keep the tenant's changes"
            ));
        }
    }
    None
}

/// What a reset pod's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every recorded container restarted anew and the pod is Ready.
    Done,
    Wait,
    Failed(String),
}

/// Judge a reset pod by its status (`now_ms`: the clock).
pub fn verdict(record: &Record, pod: &Pod, now_ms: i64) -> Verdict {
    if pods::is_finished(pod) {
        return Verdict::Failed(format!("the pod ended ({})", pods::phase(pod)));
    }
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let back = record.containers.iter().all(|(name, (id, restarts))| {
        statuses.into_iter().flatten().any(|s| {
            s.name == *name
                && s.container_id.as_deref().is_some_and(|c| c != id)
                && s.restart_count > *restarts
                && s.ready
                && s.state.as_ref().is_some_and(|st| st.running.is_some())
        })
    });
    if back && pods::is_ready(pod) {
        return Verdict::Done;
    }
    let wait = record.wait_ms.map_or(RESTART_WAIT, Duration::from_millis);
    if now_ms.saturating_sub(record.started_ms) > wait.as_millis() as i64 {
        return Verdict::Failed(format!(
            "the kubelet did not bring the restarted containers back ready within {wait:?}"
        ));
    }
    Verdict::Wait
}

/// The record of `pod` before its reset: its running app containers.
fn record_of(pod: &Pod, now_ms: i64) -> Record {
    let containers = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
        .map(|s| {
            (
                s.name.clone(),
                (s.container_id.clone().unwrap_or_default(), s.restart_count),
            )
        })
        .collect();
    Record {
        started_ms: now_ms,
        containers,
        wait_ms: None,
    }
}

/// Give a pool pod back (see the module doc). Returns `false` when its
/// pool does not recycle (or is gone): the caller deletes it.
pub async fn release(ctx: &Context, api: &Api<Pod>, pod: &Pod) -> Result<bool> {
    let Some(pool) = pods::labels_of(pod).get(POOL_LABEL) else {
        return Ok(false);
    };
    let ns = pod.namespace().unwrap_or_default();
    let Some(pool) = ctx.api::<Pool>(&ns).get_opt(pool).await? else {
        return Ok(false);
    };
    if !restarts(&pool.spec) || pool.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let patch = json!({"metadata": {
        "labels": {ALLOCATED_TO_LABEL: RECYCLING},
        "annotations": {SHARD_ANNOTATION: null, BATCH_NAME_ANNOTATION: null,
            TASK_ANNOTATION: null, ENDPOINTS_ANNOTATION: null, RECORD_ANNOTATION: null},
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if crate::error::is_not_found(&e) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Drive the resets of `pool`'s pods being recycled; returns how many are
/// still in progress and how many were returned or deleted.
pub async fn drive(
    ctx: &Context,
    pool: &Pool,
    api: &Api<Pod>,
    all: &[Pod],
) -> Result<(usize, usize)> {
    let (mut busy, mut ended) = (0, 0);
    let wait = super::restart_config::restart_wait(pool.annotations());
    for p in all.iter().filter(|p| {
        !pods::is_terminating(p)
            && pods::labels_of(p)
                .get(ALLOCATED_TO_LABEL)
                .map(String::as_str)
                == Some(RECYCLING)
    }) {
        let step = match pods::annotation(p, RECORD_ANNOTATION) {
            None => match start(ctx, api, p, &wait).await? {
                Ok(()) => Verdict::Wait,
                Err(why) => Verdict::Failed(why),
            },
            Some(raw) => match serde_json::from_str::<Record>(raw) {
                Ok(r) => verdict(&r, p, now_ms()),
                Err(e) => Verdict::Failed(format!("unreadable reset record: {e}")),
            },
        };
        match step {
            Verdict::Wait => busy += 1,
            Verdict::Done => {
                ended += 1;
                // the tenant's processes are gone: its egress policies go,
                // then the pod rejoins the pool selected by none of them
                crate::tenant_egress::remove(&ctx.client, p).await?;
                let patch = json!({"metadata": {
                    "labels": {ALLOCATED_TO_LABEL: null, TENANT_LABEL: null},
                    "annotations": {RECORD_ANNOTATION: null},
                }});
                api.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                let msg = format!("pod {} reset and back in the pool", p.name_any());
                ctx.event(pool, false, "Recycled", msg).await;
            }
            Verdict::Failed(why) => {
                ended += 1;
                delete_ignoring_missing(api, &p.name_any()).await?;
                let msg = format!("pod {} deleted instead of reused: {why}", p.name_any());
                ctx.event(pool, true, "RecycleFailed", msg).await;
            }
        }
    }
    Ok((busy, ended))
}

/// Record the pod and have its node reset it; the inner error says why
/// it cannot be reused.
async fn start(
    ctx: &Context,
    api: &Api<Pod>,
    pod: &Pod,
    wait: &std::result::Result<Duration, String>,
) -> Result<std::result::Result<(), String>> {
    let wait = match wait {
        Ok(w) => *w,
        Err(why) => return Ok(Err(why.clone())),
    };
    match reset(ctx, pod).await {
        Ok((mut record, token)) => {
            record.wait_ms = (wait != RESTART_WAIT).then_some(wait.as_millis() as u64);
            let patch = json!({"metadata": {"annotations": {
                RECORD_ANNOTATION: serde_json::to_string(&record)?,
                pods::TOKEN_ANNOTATION: token,
            }}});
            api.patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
            Ok(Ok(()))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// Check the pod can be reset and have its node reset it: the record and
/// the new token, or why not.
async fn reset(ctx: &Context, pod: &Pod) -> std::result::Result<(Record, String), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    if let Some(why) = refusal(&spec) {
        return Err(why);
    }
    let node = pods::node_name(pod);
    if node.is_empty() || pods::phase(pod) != "Running" {
        return Err(format!("the pod is not running ({})", pods::phase(pod)));
    }
    let record = record_of(pod, now_ms());
    if record.containers.is_empty() {
        return Err("no app container is running".to_string());
    }
    let id = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let info = ctx
        .nodes
        .reset(node, &id)
        .await
        .map_err(|s| format!("reset by the node agent failed: {}", s.message()))?;
    let killed: Vec<&str> = info
        .labels
        .get(RESET_KILLED)
        .map(|k| k.split(',').collect())
        .unwrap_or_default();
    if let Some(missed) = record
        .containers
        .keys()
        .find(|c| !killed.contains(&c.as_str()))
    {
        return Err(format!(
            "the node agent's reset does not name container {missed}"
        ));
    }
    if info.access_token.is_empty() {
        return Err("the node agent's reset gave no new access token".to_string());
    }
    Ok((record, info.access_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn status(id: &str, restarts: i32, ready: bool, running: bool) -> serde_json::Value {
        let state = if running {
            json!({"running": {}})
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        json!({"name": "sandbox", "containerID": id, "restartCount": restarts, "ready": ready,
            "image": "i", "imageID": "i", "state": state})
    }

    fn with(statuses: serde_json::Value, pod_ready: bool) -> Pod {
        let r = if pod_ready { "True" } else { "False" };
        pod(
            json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": r}], "containerStatuses": statuses}}),
        )
    }

    #[test]
    fn a_reset_pod_is_back_only_with_new_ready_containers() {
        let rec = Record {
            started_ms: 1_000,
            containers: [("sandbox".to_string(), ("containerd://old".to_string(), 0))].into(),
            wait_ms: None,
        };
        let now = 2_000;
        // not restarted yet, or the same container, or not ready
        for (p, why) in [
            (
                with(json!([status("containerd://old", 0, true, true)]), true),
                "same",
            ),
            (
                with(json!([status("containerd://old", 1, true, true)]), true),
                "same id",
            ),
            (
                with(json!([status("containerd://new", 1, false, true)]), false),
                "not ready",
            ),
            (
                with(json!([status("containerd://new", 1, true, false)]), true),
                "waiting",
            ),
            (
                with(json!([status("containerd://new", 1, true, true)]), false),
                "pod not ready",
            ),
            (with(json!([]), true), "no status"),
        ] {
            assert_eq!(verdict(&rec, &p, now), Verdict::Wait, "{why}");
        }
        let back = with(json!([status("containerd://new", 1, true, true)]), true);
        assert_eq!(verdict(&rec, &back, now), Verdict::Done);
        // too late, or ended
        let late = with(json!([status("containerd://old", 0, true, true)]), true);
        let too_late = 1_000 + RESTART_WAIT.as_millis() as i64 + 1;
        assert!(matches!(verdict(&rec, &late, too_late), Verdict::Failed(m) if m.contains("120s")));
        let ended = pod(json!({"metadata": {"name": "p"}, "status": {"phase": "Failed"}}));
        assert!(matches!(verdict(&rec, &ended, now), Verdict::Failed(_)));
    }

    #[test]
    fn pods_the_reset_cannot_cover_are_refused() {
        let spec = |v: serde_json::Value| -> PodSpec { serde_json::from_value(v).expect("spec") };
        let ok = spec(json!({"containers": [{"name": "c",
            "volumeMounts": [{"name": "scratch", "mountPath": "/s"}, {"name": "bin", "mountPath": "/b", "readOnly": true}]}],
            "initContainers": [{"name": "i", "volumeMounts": [{"name": "bin", "mountPath": "/b"}]}],
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "bin", "emptyDir": {}}]}));
        assert_eq!(refusal(&ok), None);
        let mut never = ok.clone();
        never.restart_policy = Some("Never".into());
        assert!(
            refusal(&never)
                .expect("refused")
                .contains("restartPolicy Never")
        );
        // upstream's sample: init containers fill opensandbox-bin, the tenant can write it
        let sample = spec(json!({"containers": [{"name": "sandbox",
            "volumeMounts": [{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}]}],
            "initContainers": [{"name": "execd-installer",
                "volumeMounts": [{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}]}],
            "volumes": [{"name": "opensandbox-bin", "emptyDir": {}}]}));
        assert!(
            refusal(&sample)
                .expect("refused")
                .contains("emptyDir opensandbox-bin")
        );
    }

    #[test]
    fn a_restart_pool_runtime_reads_the_token_file() {
        let mut spec: PoolSpec =
            serde_json::from_value(json!({"recycleStrategy": {"type": "Restart"}})).expect("spec");
        let mut p =
            pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        prepare(&spec, &mut p);
        let env = |p: &Pod| {
            p.spec.as_ref().expect("spec").containers[0]
                .env
                .clone()
                .unwrap_or_default()
        };
        assert!(
            env(&p)
                .iter()
                .any(|e| e.name == TOKEN_FILE_ENV && e.value.as_deref() == Some(TOKEN_FILE))
        );
        spec.recycle_strategy = None;
        let mut q =
            pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        prepare(&spec, &mut q);
        assert!(env(&q).is_empty());
    }
}
