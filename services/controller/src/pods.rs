//! Pods: building warm pods with the runtime injected, and reading their state.
//! Pure functions (no API calls).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Pod, PodSpec,
    PodTemplateSpec, Probe, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{Error, Result};

mod agent_sandbox;
pub mod opensandbox_bootstrap;
pub use agent_sandbox::{RUNTIME_SIDECAR, agent_sandbox_pod, asks_for_sandpool_api};

/// The runtime's port in every sandbox (OpenSandbox execd port).
pub const RUNTIME_PORT: i32 = 44772;
pub const ENVD_PORT: i32 = 49983;
const RUNTIME_VOLUME: &str = "sandpool-runtime";
const RUNTIME_DIR: &str = "/opt/sandpool";
pub const RUNTIME_PATH: &str = "/opt/sandpool/sandpool-runtime";
/// The runtime reads its access token from this variable.
pub const TOKEN_ENV: &str = "EXECD_ACCESS_TOKEN";
/// The runtime token of a pod after its reset (`pool::recycle`).
pub const TOKEN_ANNOTATION: &str = "sandpool.io/access-token";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sandpool");

/// How pods get the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeInjection {
    /// Image holding `/sandpool-runtime` (static binary).
    pub image: String,
    pub image_pull_policy: Option<String>,
}

/// A pod from `template` whose first container runs under `sandpool-runtime`:
/// an init container copies the runtime into an emptyDir; the container's own
/// command (+args) becomes the runtime's entrypoint (a container without a
/// `command` runs only the runtime: its process is injected at claim time).
/// The runtime gets a fresh access token, port 44772 and a readiness probe.
pub fn runtime_pod(
    template: &PodTemplateSpec,
    inj: &RuntimeInjection,
    meta: ObjectMeta,
    token: &str,
) -> Result<Pod> {
    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    let meta = merge_template_meta(template, meta);
    let name = meta
        .name
        .clone()
        .or(meta.generate_name.clone())
        .unwrap_or_default();
    let Some(main) = spec.containers.first_mut() else {
        return Err(Error::invalid(
            "pod template",
            &name,
            "it has no containers",
        ));
    };
    run_under_runtime(main, token);
    add_runtime_install(&mut spec, inj);
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

/// `meta` with the template's labels and annotations under its own, and the
/// managed-by label.
pub(crate) fn merge_template_meta(template: &PodTemplateSpec, mut meta: ObjectMeta) -> ObjectMeta {
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.extend(meta.labels.take().unwrap_or_default());
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    meta.labels = Some(labels);
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.extend(meta.annotations.take().unwrap_or_default());
    if !annotations.is_empty() {
        meta.annotations = Some(annotations);
    }
    meta
}

/// The main container runs the runtime (its command + args become the
/// runtime's entrypoint) with the access token, port, mount and readiness probe.
fn run_under_runtime(main: &mut Container, token: &str) {
    let mut cmd = vec![
        RUNTIME_PATH.to_string(),
        format!("--listen=0.0.0.0:{RUNTIME_PORT}"),
        format!("--envd-listen=0.0.0.0:{ENVD_PORT}"),
    ];
    let entry: Vec<String> = main
        .command
        .take()
        .unwrap_or_default()
        .into_iter()
        .chain(main.args.take().unwrap_or_default())
        .collect();
    if !entry.is_empty() {
        cmd.push("--".into());
        cmd.extend(entry);
    }
    main.command = Some(cmd);
    let env = main.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != TOKEN_ENV);
    env.push(EnvVar {
        name: TOKEN_ENV.into(),
        value: Some(token.into()),
        ..Default::default()
    });
    let ports = main.ports.get_or_insert_with(Vec::new);
    if !ports.iter().any(|p| p.container_port == RUNTIME_PORT) {
        ports.push(ContainerPort {
            name: Some("execd".into()),
            container_port: RUNTIME_PORT,
            ..Default::default()
        });
    }
    main.volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: RUNTIME_VOLUME.into(),
            mount_path: RUNTIME_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    opensandbox_bootstrap::mount(main);
    if main.readiness_probe.is_none() {
        main.readiness_probe = Some(runtime_readiness_probe());
    }
}

/// Ready once sandpool's runtime answers `/ping` on its port.
fn runtime_readiness_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ping".into()),
            port: IntOrString::Int(RUNTIME_PORT),
            ..Default::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(30),
        ..Default::default()
    }
}

/// The agent-sandbox runtime API's port (what the k8s-agent-sandbox SDK calls).
pub const ASB_PORT: i32 = 8888;
/// Pod template label or annotation: `"true"` asks for sandpool's
/// agent-sandbox API on 8888 (see [`agent_sandbox_pod`]); without it the
/// image serves its own. As a pod label (`"true"`) it marks the
/// agent-sandbox pods, whose 8888 (sandpool's or the image's) has no token:
/// the chart's NetworkPolicy selects them.
pub const ASB_API_ANNOTATION: &str = "sandpool.io/agent-sandbox-api";

/// sandboxd's REST files API port (the SDK's sandboxd configurations).
pub const SANDBOXD_REST_PORT: i32 = 8080;
/// sandboxd's gRPC ProcessService port.
pub const SANDBOXD_GRPC_PORT: i32 = 9090;

/// Have the runtime of `pod` (built by [`runtime_pod`]) also serve the
/// agent-sandbox runtime API on 8888 and sandboxd (KEP-539.2) on 8080 (REST
/// files) and 9090 (gRPC processes) — untokened, as upstream's SDK expects:
/// only agent-sandbox pods get them, and not when the template's annotation
/// [`ASB_API_ANNOTATION`] says `"false"`.
pub fn serve_agent_sandbox_api(pod: &mut Pod) {
    if annotation(pod, ASB_API_ANNOTATION) == Some("false") {
        return;
    }
    let Some(main) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) else {
        return;
    };
    let Some(cmd) = main.command.as_mut() else {
        return;
    };
    if cmd.first().map(String::as_str) != Some(RUNTIME_PATH) {
        return;
    }
    let at = cmd.iter().position(|a| a == "--").unwrap_or(cmd.len());
    let apis = [
        ("--asb-listen", "sandbox", ASB_PORT),
        ("--sandboxd-listen", "sandboxd", SANDBOXD_REST_PORT),
        (
            "--sandboxd-grpc-listen",
            "sandboxd-grpc",
            SANDBOXD_GRPC_PORT,
        ),
    ];
    for (i, (flag, _, port)) in apis.iter().enumerate() {
        cmd.insert(at + i, format!("{flag}=0.0.0.0:{port}"));
    }
    // what the chart's NetworkPolicy selects to limit who reaches these ports
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ASB_API_ANNOTATION.into(), "true".into());
    let ports = main.ports.get_or_insert_with(Vec::new);
    for (_, name, port) in apis {
        if ports.iter().any(|p| p.container_port == port) {
            continue;
        }
        let taken = ports.iter().any(|p| p.name.as_deref() == Some(name));
        ports.push(ContainerPort {
            name: (!taken).then(|| name.into()),
            container_port: port,
            ..Default::default()
        });
    }
}

/// The init container copying the runtime into the shared emptyDir, and that volume.
fn add_runtime_install(spec: &mut PodSpec, inj: &RuntimeInjection) {
    spec.init_containers.get_or_insert_with(Vec::new).insert(
        0,
        Container {
            name: "sandpool-runtime-install".into(),
            image: Some(inj.image.clone()),
            image_pull_policy: inj.image_pull_policy.clone(),
            command: Some(vec![
                "/sandpool-runtime".into(),
                format!("--install-to={RUNTIME_PATH}"),
                opensandbox_bootstrap::install_arg(),
            ]),
            volume_mounts: Some(vec![VolumeMount {
                name: RUNTIME_VOLUME.into(),
                mount_path: RUNTIME_DIR.into(),
                ..Default::default()
            }]),
            ..Default::default()
        },
    );
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: RUNTIME_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
}

/// A fresh runtime access token (128 random bits, hex).
pub fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// An owner reference making `owner` the controller of a child.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn labels_of(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// The pod ended (it never comes back: delete and replace it).
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Running, Ready=True, has an IP, not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    if is_terminating(pod) {
        return false;
    }
    let Some(st) = &pod.status else { return false };
    st.phase.as_deref() == Some("Running")
        && st.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

/// All the pod's IPs (`status.podIPs`, else `status.podIP`).
pub fn pod_ips(pod: &Pod) -> Vec<String> {
    let listed: Vec<String> = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    if listed.is_empty() {
        pod_ip(pod).map(str::to_string).into_iter().collect()
    } else {
        listed
    }
}

/// `status.phase`, or "" when unknown.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// The runtime access token of a pod built by [`runtime_pod`] (its first
/// container) or [`agent_sandbox_pod`] (the runtime's sidecar).
/// A pod reset for its pool's next tenant carries its new token here
/// (`pool::recycle`); it wins over the one in the spec.
pub fn access_token(pod: &Pod) -> Option<&str> {
    if let Some(t) = annotation(pod, TOKEN_ANNOTATION) {
        return Some(t);
    }
    let spec = pod.spec.as_ref()?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == RUNTIME_SIDECAR && c.restart_policy.as_deref() == Some("Always"));
    sidecar
        .or(spec.containers.first())?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == TOKEN_ENV)?
        .value
        .as_deref()
}

/// Choose `n` of the `candidates` (ready pods), spreading across nodes: take
/// round-robin from the nodes with the most idle pods first. Returns indexes.
pub fn spread_pick(nodes: &[&str], n: usize) -> Vec<usize> {
    let mut by_node: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        by_node.entry(node).or_default().push(i);
    }
    let mut queues: Vec<Vec<usize>> = by_node.into_values().collect();
    // most idle first; each queue is taken from the front
    queues.sort_by_key(|q| std::cmp::Reverse(q.len()));
    for q in &mut queues {
        q.reverse();
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut took = false;
        for q in &mut queues {
            if out.len() == n {
                break;
            }
            if let Some(i) = q.pop() {
                out.push(i);
                took = true;
            }
        }
        if !took {
            break;
        }
    }
    out
}

/// A short stable hash (FNV-1a, 8 hex digits) for label values made from names.
pub fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn template() -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [
                {"name": "sandbox-container", "image": "ubuntu:latest", "command": ["sleep"], "args": ["3600"]},
                {"name": "sidecar", "image": "busybox"}
            ]}
        }))
        .expect("template")
    }

    fn inj() -> RuntimeInjection {
        RuntimeInjection {
            image: "ghcr.io/sandpool/sandpool:0.1.0".into(),
            image_pull_policy: None,
        }
    }

    #[test]
    fn injects_runtime_into_the_first_container() {
        let meta = ObjectMeta {
            generate_name: Some("p-".into()),
            ..Default::default()
        };
        let pod = runtime_pod(&template(), &inj(), meta, "tok").expect("pod");
        let spec = pod.spec.as_ref().expect("spec");
        let main = &spec.containers[0];
        assert_eq!(
            main.command.as_deref().expect("command"),
            [
                "/opt/sandpool/sandpool-runtime",
                "--listen=0.0.0.0:44772",
                "--envd-listen=0.0.0.0:49983",
                "--",
                "sleep",
                "3600"
            ]
        );
        assert!(main.args.is_none());
        assert_eq!(access_token(&pod), Some("tok"));
        assert!(
            main.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == 44772)
        );
        assert!(main.readiness_probe.is_some());
        let init = &spec.init_containers.as_ref().expect("init")[0];
        assert_eq!(
            init.image.as_deref(),
            Some("ghcr.io/sandpool/sandpool:0.1.0")
        );
        assert_eq!(
            spec.containers[1].command, None,
            "only the first container is wrapped"
        );
        assert_eq!(labels_of(&pod).get("app").map(String::as_str), Some("x"));
        assert_eq!(
            labels_of(&pod).get(MANAGED_BY.0).map(String::as_str),
            Some("sandpool")
        );
    }

    #[test]
    fn agent_sandbox_pods_serve_the_sdk_api_unless_the_template_opts_out() {
        let mut pod = runtime_pod(&template(), &inj(), ObjectMeta::default(), "tok").expect("pod");
        serve_agent_sandbox_api(&mut pod);
        let main = &pod.spec.as_ref().expect("spec").containers[0];
        let cmd = main.command.as_deref().expect("command");
        assert_eq!(
            cmd[3..6],
            [
                "--asb-listen=0.0.0.0:8888",
                "--sandboxd-listen=0.0.0.0:8080",
                "--sandboxd-grpc-listen=0.0.0.0:9090"
            ],
            "{cmd:?}"
        );
        assert_eq!(
            cmd[6..],
            ["--", "sleep", "3600"],
            "the entrypoint stays last"
        );
        for port in [8888, 8080, 9090] {
            assert!(
                main.ports
                    .iter()
                    .flatten()
                    .any(|p| p.container_port == port),
                "{port}"
            );
        }
        assert_eq!(
            labels_of(&pod).get(ASB_API_ANNOTATION).map(String::as_str),
            Some("true")
        );

        let mut t = template();
        t.metadata.get_or_insert_with(Default::default).annotations =
            Some([(ASB_API_ANNOTATION.to_string(), "false".to_string())].into());
        let mut pod = runtime_pod(&t, &inj(), ObjectMeta::default(), "tok").expect("pod");
        serve_agent_sandbox_api(&mut pod);
        let cmd = pod.spec.as_ref().expect("spec").containers[0]
            .command
            .clone()
            .expect("command");
        assert!(
            !cmd.iter()
                .any(|a| a.starts_with("--asb-listen") || a.starts_with("--sandboxd")),
            "{cmd:?}"
        );
    }

    #[test]
    fn a_template_without_containers_is_refused() {
        let t: PodTemplateSpec =
            serde_json::from_value(serde_json::json!({"spec": {"containers": []}})).expect("t");
        let err = runtime_pod(&t, &inj(), ObjectMeta::default(), "t").expect_err("no containers");
        assert!(err.to_string().contains("no containers"), "{err}");
    }

    #[test]
    fn readiness_needs_running_ready_and_ip() {
        let mut pod = Pod::default();
        assert!(!is_ready(&pod));
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.5".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(is_ready(&pod));
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!is_ready(&pod));
    }

    #[test]
    fn spread_pick_alternates_nodes() {
        let nodes = ["a", "a", "a", "b", "c"];
        let picked = spread_pick(&nodes, 3);
        let picked_nodes: Vec<&str> = picked.iter().map(|&i| nodes[i]).collect();
        assert_eq!(picked_nodes, ["a", "b", "c"]);
        assert_eq!(
            spread_pick(&nodes, 10).len(),
            5,
            "never more than there are"
        );
        assert!(spread_pick(&[], 2).is_empty());
    }

    #[test]
    fn short_hash_is_stable() {
        assert_eq!(
            short_hash("default/python-warmpool"),
            short_hash("default/python-warmpool")
        );
        assert_ne!(short_hash("a"), short_hash("b"));
        assert_eq!(short_hash("a").len(), 8);
    }
}
