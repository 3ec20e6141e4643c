//! A claim's `env[]` injected into its sandbox's pod template, as the
//! template's `envVarsInjectionPolicy` allows: `Disallowed` (the default)
//! refuses any; `Allowed` adds new variables only (and refuses a target
//! container with `envFrom`, whose names it cannot check); `Overrides` adds
//! and replaces. Each entry goes to `containerName`, else the first container.

use k8s_openapi::api::core::v1::{EnvVar, PodTemplateSpec};
use serde::Deserialize;
use serde_json::Value;

use crate::crd::InjectionPolicy;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimEnv {
    name: String,
    value: String,
    #[serde(default)]
    container_name: Option<String>,
}

/// Inject `env` into `tpl`; `Err(message)` when the policy rejects it.
pub fn inject(
    tpl: &mut PodTemplateSpec,
    env: &[Value],
    policy: Option<InjectionPolicy>,
) -> Result<(), String> {
    let policy = policy.unwrap_or(InjectionPolicy::Disallowed);
    if env.is_empty() {
        return Ok(());
    }
    if policy == InjectionPolicy::Disallowed {
        return Err("the template's envVarsInjectionPolicy is Disallowed".into());
    }
    let containers = &mut tpl.spec.get_or_insert_with(Default::default).containers;
    for raw in env {
        let e: ClaimEnv = serde_json::from_value(raw.clone())
            .map_err(|e| format!("spec.env entry {raw}: {e}"))?;
        let container = match &e.container_name {
            Some(n) => containers.iter_mut().find(|c| c.name == *n),
            None => containers.first_mut(),
        }
        .ok_or_else(|| {
            format!(
                "no container {:?} for variable {:?}",
                e.container_name.as_deref().unwrap_or("(first)"),
                e.name
            )
        })?;
        if policy == InjectionPolicy::Allowed
            && container.env_from.as_ref().is_some_and(|f| !f.is_empty())
        {
            return Err(format!(
                "container {:?} uses envFrom; the Allowed policy cannot rule out overriding its variables",
                container.name
            ));
        }
        let vars = container.env.get_or_insert_with(Vec::new);
        let var = EnvVar {
            name: e.name.clone(),
            value: Some(e.value),
            value_from: None,
        };
        match vars.iter_mut().find(|v| v.name == e.name) {
            Some(_) if policy != InjectionPolicy::Overrides => {
                return Err(format!(
                    "overriding variable {:?} is not allowed by the template's envVarsInjectionPolicy",
                    e.name
                ));
            }
            Some(existing) => *existing = var,
            None => vars.push(var),
        }
    }
    Ok(())
}
