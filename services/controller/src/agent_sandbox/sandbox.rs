//! The `Sandbox` controller: runs (or tracks an adopted) pod unless the
//! sandbox is suspended, keeps its headless Service when `spec.service`
//! asks for one, and reports the pod's address (`podIPs`, `serviceFQDN`)
//! with `Ready` and `Suspended` conditions.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use super::{CORE_API, condition, expired, requeue, same_conditions, typed_condition};
use crate::context::{Context, delete_ignoring_missing, namespace_of, now, patch_status};
use crate::crd::{
    POD_NAME_ANNOTATION, SANDBOX_NAME_HASH_LABEL, Sandbox, SandboxStatus, ShutdownPolicy,
};
use crate::error::{Result, is_already_exists};
use crate::pods::{self, controller_ref, short_hash};

/// The DNS domain of the cluster's Services (`serviceFQDN`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The Service ports of a sandbox: each distinct (port, protocol) of its
/// containers, by port, named as the container names it (else `p-<port>-<proto>`).
pub fn service_ports(containers: &[Container]) -> Vec<ServicePort> {
    let mut by_port: BTreeMap<(i32, String), Option<String>> = BTreeMap::new();
    for p in containers.iter().flat_map(|c| c.ports.iter().flatten()) {
        if p.container_port == 0 {
            continue;
        }
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let slot = by_port.entry((p.container_port, proto)).or_default();
        if slot.is_none() {
            slot.clone_from(&p.name);
        }
    }
    let mut taken: Vec<String> = by_port.values().flatten().cloned().collect();
    by_port
        .into_iter()
        .map(|((port, proto), name)| {
            let name = name.unwrap_or_else(|| {
                let base = format!("p-{port}-{}", proto.to_lowercase());
                let mut n = base.clone();
                let mut i = 2;
                while taken.contains(&n) {
                    n = format!("{base}-{i}");
                    i += 1;
                }
                taken.push(n.clone());
                n
            });
            ServicePort {
                name: Some(name),
                protocol: Some(proto),
                port,
                target_port: Some(IntOrString::Int(port)),
                ..Default::default()
            }
        })
        .collect()
}

/// Create (`spec.service: true`), delete (`false`, if ours) or keep (unset)
/// the sandbox's headless Service; the name of the one in use.
async fn reconcile_service(ctx: &Context, sb: &Sandbox, ns: &str) -> Result<Option<String>> {
    let name = sb.name_any();
    let api: Api<Service> = ctx.api(ns);
    let existing = api.get_opt(&name).await?;
    let ours = existing.as_ref().is_some_and(|s| {
        s.owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && Some(&r.uid) == sb.uid().as_ref())
    });
    match (sb.spec.service, existing) {
        (Some(false), Some(_)) if ours => {
            delete_ignoring_missing(&api, &name).await?;
            Ok(None)
        }
        (Some(true) | None, Some(_)) if ours => Ok(Some(name)),
        (Some(true), None) => {
            let hash = short_hash(&name);
            let svc = Service {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.to_string()),
                    labels: Some([(SANDBOX_NAME_HASH_LABEL.to_string(), hash.clone())].into()),
                    owner_references: Some(vec![sandbox_owner(sb)]),
                    ..Default::default()
                },
                spec: Some(ServiceSpec {
                    cluster_ip: Some("None".into()),
                    selector: Some([(SANDBOX_NAME_HASH_LABEL.to_string(), hash)].into()),
                    ports: Some(service_ports(
                        sb.spec
                            .pod_template
                            .spec
                            .as_ref()
                            .map(|s| s.containers.as_slice())
                            .unwrap_or_default(),
                    )),
                    ..Default::default()
                }),
                status: None,
            };
            match api.create(&PostParams::default(), &svc).await {
                Ok(_) => Ok(Some(name)),
                Err(e) if is_already_exists(&e) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(None),
    }
}

pub(super) fn sandbox_owner(sb: &Sandbox) -> OwnerReference {
    controller_ref(
        CORE_API,
        "Sandbox",
        &sb.name_any(),
        &sb.uid().unwrap_or_default(),
    )
}

/// Remove the sandbox's pod (suspend, retained expiry);
/// an adopted pod's annotation goes too so that a resume starts a new pod.
async fn remove_pod(ctx: &Context, sb: &Sandbox, ns: &str, pod: Option<&Pod>) -> Result<()> {
    if let Some(p) = pod {
        delete_ignoring_missing(&ctx.api::<Pod>(ns), &p.name_any()).await?;
    }
    if sb.annotations().contains_key(POD_NAME_ANNOTATION) {
        ctx.api::<Sandbox>(ns)
            .patch(
                &sb.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {POD_NAME_ANNOTATION: null}}})),
            )
            .await?;
    }
    Ok(())
}

/// The sandbox's pod: the adopted one, else one named after the sandbox
/// (created when missing).
async fn ensure_pod(ctx: &Context, sb: &Sandbox, ns: &str) -> Result<Option<Pod>> {
    let name = sb.name_any();
    let pod_api: Api<Pod> = ctx.api(ns);
    let adopted = sb.annotations().get(POD_NAME_ANNOTATION).cloned();
    let pod_name = adopted.clone().unwrap_or_else(|| name.clone());
    if let Some(p) = pod_api.get_opt(&pod_name).await? {
        return Ok(Some(p));
    }
    if adopted.is_some() {
        return Ok(None);
    }
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(ns.to_string()),
        labels: Some([(SANDBOX_NAME_HASH_LABEL.to_string(), short_hash(&name))].into()),
        owner_references: Some(vec![sandbox_owner(sb)]),
        ..Default::default()
    };
    super::volumes::ensure_claims(ctx, sb, ns).await?;
    let pod = ctx.agent_sandbox_pod(&super::volumes::with_claim_volumes(sb)?, meta)?;
    match pod_api.create(&PostParams::default(), &pod).await {
        Ok(p) => Ok(Some(p)),
        Err(e) if is_already_exists(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What the sandbox should be doing, from its spec.
enum Mode {
    Run,
    Suspend,
}

fn mode(sb: &Sandbox) -> Mode {
    if sb.spec.suspended() {
        Mode::Suspend
    } else {
        Mode::Run
    }
}

/// `(ready, reason, message)` of the Ready condition.
fn readiness(
    sb: &Sandbox,
    mode: &Mode,
    pod: Option<&Pod>,
    service: Option<&String>,
) -> (bool, &'static str, String) {
    let adopted = sb.annotations().get(POD_NAME_ANNOTATION);
    match (mode, pod) {
        (Mode::Suspend, Some(_)) => (false, "SandboxSuspended", "Sandbox is suspending".into()),
        (Mode::Suspend, None) => (false, "SandboxSuspended", "Sandbox is suspended".into()),
        (Mode::Run, Some(p)) if pods::is_finished(p) => (
            false,
            if pods::phase(p) == "Succeeded" {
                "PodSucceeded"
            } else {
                "PodFailed"
            },
            format!("pod {} has ended", p.name_any()),
        ),
        (Mode::Run, Some(p)) if pods::is_ready(p) => {
            if sb.spec.service == Some(true) && service.is_none() {
                (
                    false,
                    "DependenciesNotReady",
                    "Pod is Ready; Service does not exist".into(),
                )
            } else {
                (
                    true,
                    "DependenciesReady",
                    format!("pod {} is ready", p.name_any()),
                )
            }
        }
        (Mode::Run, Some(p)) => (
            false,
            "DependenciesNotReady",
            format!("pod {} is starting", p.name_any()),
        ),
        (Mode::Run, None) if adopted.is_some() => (
            false,
            "PodMissing",
            format!("adopted pod {} is gone", adopted.map_or("", |s| s.as_str())),
        ),
        (Mode::Run, None) => (false, "DependenciesNotReady", "Pod does not exist".into()),
    }
}

fn suspended_condition(
    sb: &Sandbox,
    mode: &Mode,
    pod: Option<&Pod>,
    old: &[Condition],
) -> Condition {
    let (status, reason, message) = match (mode, pod) {
        (Mode::Suspend, None) => (true, "PodTerminated", "the pod is gone"),
        (Mode::Suspend, Some(_)) => (false, "PodTerminating", "the pod is being removed"),
        _ => (false, "NotSuspended", "the sandbox is not suspended"),
    };
    typed_condition(
        "Suspended",
        status,
        reason,
        message.into(),
        old,
        sb.metadata.generation,
    )
}

/// `Finished=True` (`PodSucceeded`/`PodFailed`) once the pod ended; absent
/// while it runs or there is none.
fn finished_condition(sb: &Sandbox, pod: Option<&Pod>, old: &[Condition]) -> Option<Condition> {
    let p = pod.filter(|p| pods::is_finished(p))?;
    let (reason, message) = if pods::phase(p) == "Succeeded" {
        ("PodSucceeded", "Pod completed successfully")
    } else {
        ("PodFailed", "Pod failed")
    };
    Some(typed_condition(
        super::lifecycle::FINISHED,
        true,
        reason,
        message.into(),
        old,
        sb.metadata.generation,
    ))
}

pub async fn reconcile_sandbox(sb: Arc<Sandbox>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace_of(sb.as_ref())?;
    let name = sb.name_any();
    if sb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let sandboxes: Api<Sandbox> = ctx.api(&ns);
    let old = sb.status.clone().unwrap_or_default();
    let shutdown = sb.spec.shutdown_time.as_ref();
    if sb.spec.shutdown_policy == Some(ShutdownPolicy::Retain)
        && shutdown.is_some_and(|t| t.0 <= now())
    {
        return retire(&ctx, &sb, &ns, &old).await;
    }
    if expired(&ctx, &sandboxes, sb.as_ref(), shutdown).await? {
        return Ok(Action::await_change());
    }
    let mode = mode(&sb);
    let pod = match mode {
        Mode::Run => ensure_pod(&ctx, &sb, &ns).await?,
        Mode::Suspend => {
            let current = sb
                .annotations()
                .get(POD_NAME_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| name.clone());
            let pod_api: Api<Pod> = ctx.api(&ns);
            let p = pod_api.get_opt(&current).await?;
            remove_pod(&ctx, &sb, &ns, p.as_ref()).await?;
            // still there while it terminates (reported as suspending)
            match p {
                Some(_) => pod_api.get_opt(&current).await?,
                None => None,
            }
        }
    };
    let service = reconcile_service(&ctx, &sb, &ns).await?;
    let (ready, reason, message) = readiness(&sb, &mode, pod.as_ref(), service.as_ref());
    let mut conditions = vec![
        condition(
            ready,
            reason,
            message,
            &old.conditions,
            sb.metadata.generation,
        ),
        suspended_condition(&sb, &mode, pod.as_ref(), &old.conditions),
    ];
    conditions.extend(finished_condition(&sb, pod.as_ref(), &old.conditions));
    let status = SandboxStatus {
        conditions,
        pod_name: pod.as_ref().map(ResourceExt::name_any),
        pod_ips: pod.as_ref().map(pods::pod_ips).unwrap_or_default(),
        node_name: pod
            .as_ref()
            .map(|p| pods::node_name(p).to_string())
            .filter(|n| !n.is_empty()),
        selector: Some(format!("{SANDBOX_NAME_HASH_LABEL}={}", short_hash(&name))),
        service_fqdn: service
            .as_ref()
            .map(|s| format!("{s}.{ns}.svc.{CLUSTER_DOMAIN}")),
        service,
        replicas: Some(i32::from(pod.is_some())),
    };
    write_status(&sandboxes, &name, &old, status).await?;
    Ok(requeue(&ctx, ready, shutdown))
}

async fn write_status(
    api: &Api<Sandbox>,
    name: &str,
    old: &SandboxStatus,
    status: SandboxStatus,
) -> Result<()> {
    let same = same_conditions(&old.conditions, &status.conditions)
        && SandboxStatus {
            conditions: Vec::new(),
            ..old.clone()
        } == SandboxStatus {
            conditions: Vec::new(),
            ..status.clone()
        };
    if !same {
        // merge patch: fields that went away are nulled
        let mut v = serde_json::to_value(&status)?;
        for f in ["podName", "podIPs", "nodeName", "service", "serviceFQDN"] {
            if v.get(f).is_none() {
                v[f] = serde_json::Value::Null;
            }
        }
        patch_status(api, name, v).await?;
    }
    Ok(())
}

/// `shutdownPolicy: Retain` past `shutdownTime`: pod and Service go, the
/// Sandbox stays with `Ready=False` (`SandboxExpired`).
async fn retire(ctx: &Context, sb: &Sandbox, ns: &str, old: &SandboxStatus) -> Result<Action> {
    let name = sb.name_any();
    let current = sb
        .annotations()
        .get(POD_NAME_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| name.clone());
    let pod = ctx.api::<Pod>(ns).get_opt(&current).await?;
    remove_pod(ctx, sb, ns, pod.as_ref()).await?;
    let svc: Api<Service> = ctx.api(ns);
    if let Some(s) = svc.get_opt(&name).await?
        && s.owner_references()
            .iter()
            .any(|r| Some(&r.uid) == sb.uid().as_ref())
    {
        delete_ignoring_missing(&svc, &name).await?;
    }
    let status = SandboxStatus {
        conditions: vec![condition(
            false,
            "SandboxExpired",
            "shutdown time reached; the sandbox is retained".into(),
            &old.conditions,
            sb.metadata.generation,
        )],
        replicas: Some(0),
        ..Default::default()
    };
    write_status(&ctx.api::<Sandbox>(ns), &name, old, status).await?;
    Ok(Action::await_change())
}
