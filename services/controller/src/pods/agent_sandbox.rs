//! agent-sandbox pods: the template's containers are kept as written
//! (command, args, ports and probes), with sandpool's runtime beside them as
//! a native sidecar, unless the template asks for sandpool's agent-sandbox
//! API (then the runtime wraps the first container and serves 8888).

use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    ASB_API_ANNOTATION, ENVD_PORT, RUNTIME_PORT, RuntimeInjection, TOKEN_ENV, merge_template_meta,
    runtime_pod, serve_agent_sandbox_api,
};
use crate::error::{Error, Result};

/// The name of the runtime's sidecar in an agent-sandbox pod.
pub const RUNTIME_SIDECAR: &str = "sandpool-runtime";

/// Whether the pod template asks for sandpool's agent-sandbox runtime API:
/// its label or annotation [`ASB_API_ANNOTATION`] is `"true"`.
pub fn asks_for_sandpool_api(template: &PodTemplateSpec) -> bool {
    let Some(meta) = template.metadata.as_ref() else {
        return false;
    };
    [&meta.labels, &meta.annotations]
        .into_iter()
        .flatten()
        .any(|m| m.get(ASB_API_ANNOTATION).map(String::as_str) == Some("true"))
}

/// The pod of an agent-sandbox `template`. When the template asks for
/// sandpool's API ([`asks_for_sandpool_api`]), the runtime wraps its first
/// container (its command and args run under the runtime) and serves 8888.
/// Otherwise the image serves its own API: every container stays exactly as
/// the template wrote it, and the runtime (its port 44772 and access token)
/// runs beside them as a native sidecar (an init container restarted
/// `Always`) sharing the pod's network. Either way the pod is labelled
/// [`ASB_API_ANNOTATION`]`=true`: its 8888 has no token.
pub fn agent_sandbox_pod(
    template: &PodTemplateSpec,
    inj: &RuntimeInjection,
    meta: ObjectMeta,
    token: &str,
) -> Result<Pod> {
    if asks_for_sandpool_api(template) {
        let mut pod = runtime_pod(template, inj, meta, token)?;
        serve_agent_sandbox_api(&mut pod);
        return Ok(pod);
    }
    let mut spec = template.spec.clone().unwrap_or_default();
    let mut meta = merge_template_meta(template, meta);
    // the image's own 8888 is as untokened as sandpool's: the chart's
    // NetworkPolicy selects these pods by this label too
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(ASB_API_ANNOTATION.into(), "true".into());
    if spec.containers.is_empty() {
        let name = meta.name.clone().or(meta.generate_name.clone());
        return Err(Error::invalid(
            "pod template",
            &name.unwrap_or_default(),
            "it has no containers",
        ));
    }
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, runtime_sidecar(inj, token));
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

/// The runtime as a native sidecar: the runtime image's own binary, with
/// the access token, port 44772 and a readiness probe on it.
fn runtime_sidecar(inj: &RuntimeInjection, token: &str) -> Container {
    Container {
        name: RUNTIME_SIDECAR.into(),
        image: Some(inj.image.clone()),
        image_pull_policy: inj.image_pull_policy.clone(),
        restart_policy: Some("Always".into()),
        command: Some(vec![
            "/sandpool-runtime".into(),
            format!("--listen=0.0.0.0:{RUNTIME_PORT}"),
            format!("--envd-listen=0.0.0.0:{ENVD_PORT}"),
        ]),
        env: Some(vec![EnvVar {
            name: TOKEN_ENV.into(),
            value: Some(token.into()),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("execd".into()),
            container_port: RUNTIME_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(super::runtime_readiness_probe()),
        ..Default::default()
    }
}
