//! Sandbox templates: validation, and their encoding in container labels
//! (what a restarted agent rebuilds its state from).

use std::collections::HashMap;

use sandpool_proto::v1 as pb;

use crate::{
    error::{AgentError, Result},
    quantity,
    spec::{self, Limits},
};

use super::{Sandbox, labels};

/// The template as stored in a container label or checkpoint metadata.
pub(crate) fn template_label(t: &pb::SandboxTemplate) -> Result<String> {
    let stored =
        sandpool_proto::template::from_pb_template(t).map_err(AgentError::InvalidTemplate)?;
    serde_json::to_string(&stored).map_err(|e| AgentError::InvalidTemplate(e.to_string()))
}

/// A template read back from [`template_label`] (or the label an older
/// agent wrote: the same fields, enums by proto number).
pub(crate) fn template_of_label(label: &str) -> serde_json::Result<pb::SandboxTemplate> {
    serde_json::from_str::<sandpool_core::Template>(label)
        .map(|t| sandpool_proto::template::to_pb(&t))
}

pub fn state_label(s: pb::SandboxState) -> &'static str {
    match s {
        pb::SandboxState::Warm => "warm",
        pb::SandboxState::Claimed => "claimed",
        pb::SandboxState::Paused => "paused",
        pb::SandboxState::Creating => "creating",
        pb::SandboxState::Releasing => "releasing",
        pb::SandboxState::Failed => "failed",
        pb::SandboxState::Unspecified => "unspecified",
    }
}

fn parse_state(s: &str) -> Option<pb::SandboxState> {
    Some(match s {
        "warm" => pb::SandboxState::Warm,
        "claimed" => pb::SandboxState::Claimed,
        "paused" => pb::SandboxState::Paused,
        "creating" => pb::SandboxState::Creating,
        "releasing" => pb::SandboxState::Releasing,
        "failed" => pb::SandboxState::Failed,
        _ => return None,
    })
}

pub fn runtime_label(r: pb::RuntimeClass) -> &'static str {
    match r {
        pb::RuntimeClass::Runsc => "runsc",
        _ => "runc",
    }
}

fn parse_runtime(s: &str) -> Option<pb::RuntimeClass> {
    match s {
        "runc" => Some(pb::RuntimeClass::Runc),
        "runsc" => Some(pb::RuntimeClass::Runsc),
        _ => None,
    }
}

/// A template checked and turned into what the create path needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTemplate {
    pub image: String,
    pub limits: Limits,
    pub runtime_class: pb::RuntimeClass,
    pub release_policy: pb::ReleasePolicy,
    pub env: Vec<(String, String)>,
    pub run_as_root: bool,
    pub checkpointable: bool,
    /// The pool's egress policy, checked (`None`: everything allowed).
    pub egress: Option<sandpool_core::egress::EgressPolicy>,
}

/// Pure validation of a template (image existence is checked later).
pub fn validate_template(t: &pb::SandboxTemplate) -> Result<ValidTemplate> {
    if t.image.trim().is_empty() {
        return Err(AgentError::InvalidTemplate("image is required".into()));
    }
    let runtime_class = match pb::RuntimeClass::try_from(t.runtime_class) {
        Ok(pb::RuntimeClass::Unspecified) | Ok(pb::RuntimeClass::Runc) => pb::RuntimeClass::Runc,
        Ok(pb::RuntimeClass::Runsc) => pb::RuntimeClass::Runsc,
        Err(_) => {
            return Err(AgentError::InvalidTemplate(format!(
                "unknown runtime class {} (use RUNC or RUNSC)",
                t.runtime_class
            )));
        }
    };
    let release_policy = match pb::ReleasePolicy::try_from(t.release_policy) {
        Ok(pb::ReleasePolicy::Unspecified) | Ok(pb::ReleasePolicy::Delete) => {
            pb::ReleasePolicy::Delete
        }
        Ok(pb::ReleasePolicy::Recycle) => pb::ReleasePolicy::Recycle,
        Err(_) => {
            return Err(AgentError::InvalidTemplate(format!(
                "unknown release policy {}",
                t.release_policy
            )));
        }
    };
    let egress = t.egress.as_ref().map(crate::egress::parse).transpose()?;
    let r = t.resources.clone().unwrap_or_default();
    let limits = Limits {
        cpu_millis: quantity::cpu_millis(&r.cpu)?,
        memory_bytes: quantity::memory_bytes(&r.memory)?,
        pids: r.pids,
    };
    let mut env: Vec<(String, String)> =
        t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    env.sort();
    for (k, _) in &env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(AgentError::InvalidTemplate(format!("bad env name {k:?}")));
        }
    }
    if t.checkpointable && runtime_class != pb::RuntimeClass::Runsc {
        return Err(AgentError::InvalidTemplate(
            "checkpointable sandboxes need runtime class RUNSC (runc checkpoint needs a CRIU that works on this kernel)".into(),
        ));
    }
    Ok(ValidTemplate {
        image: t.image.trim().to_string(),
        limits,
        runtime_class,
        release_policy,
        env,
        run_as_root: t.run_as_root,
        checkpointable: t.checkpointable,
        egress,
    })
}

/// The requested sandbox id, or a fresh one.
pub(super) fn new_id(id: Option<String>) -> Result<String> {
    match id.filter(|i| !i.is_empty()) {
        Some(i) if valid_id(&i) => Ok(i),
        Some(i) => Err(AgentError::InvalidTemplate(format!(
            "bad sandbox id {i:?}: use [A-Za-z0-9_-], at most 64"
        ))),
        None => Ok(format!(
            "sb-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..20]
        )),
    }
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !id.starts_with('-')
}

impl Sandbox {
    pub(super) fn label_map(&self) -> Result<HashMap<String, String>> {
        let template = template_label(&self.template)?;
        Ok([
            (labels::MANAGED, "true".to_string()),
            (labels::POOL, self.pool.clone()),
            (labels::STATE, state_label(self.state).to_string()),
            (labels::IP, self.ip.to_string()),
            (labels::TOKEN, self.token.clone()),
            (
                labels::RUNTIME,
                runtime_label(self.runtime_class).to_string(),
            ),
            (labels::CREATED, self.created_ms.to_string()),
            (labels::TEMPLATE, template),
            (labels::PORT, self.port.to_string()),
        ]
        .into_iter()
        .chain((!self.image_command.is_empty()).then(|| {
            (
                labels::IMAGE_COMMAND,
                serde_json::Value::from(self.image_command.clone()).to_string(),
            )
        }))
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }

    /// Rebuild from container labels (recovery).
    pub fn from_labels(id: &str, l: &HashMap<String, String>) -> Option<Sandbox> {
        if l.get(labels::MANAGED).map(String::as_str) != Some("true") {
            return None;
        }
        let template: pb::SandboxTemplate = l
            .get(labels::TEMPLATE)
            .and_then(|t| template_of_label(t).ok())?;
        Some(Sandbox {
            id: id.to_string(),
            message: String::new(),
            oom_kills: 0,
            pool: l.get(labels::POOL).cloned().unwrap_or_default(),
            state: parse_state(l.get(labels::STATE)?)?,
            ip: l.get(labels::IP)?.parse().ok()?,
            port: l
                .get(labels::PORT)
                .and_then(|p| p.parse().ok())
                .unwrap_or(spec::RUNTIME_PORT),
            token: l.get(labels::TOKEN)?.clone(),
            runtime_class: parse_runtime(l.get(labels::RUNTIME)?)?,
            template,
            created_ms: l
                .get(labels::CREATED)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            image_command: l
                .get(labels::IMAGE_COMMAND)
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// The tests' busybox template on runsc, recycled, with 64 pids.
    fn template() -> pb::SandboxTemplate {
        let mut t = crate::testkit::template(pb::RuntimeClass::Runsc);
        t.release_policy = pb::ReleasePolicy::Recycle as i32;
        t.egress = Some(pb::EgressPolicy {
            default_action: pb::EgressAction::Deny as i32,
            rules: vec![pb::EgressRule {
                action: pb::EgressAction::Allow as i32,
                cidr: "10.0.0.0/8".into(),
                port: 443,
            }],
        });
        if let Some(r) = t.resources.as_mut() {
            r.pids = 64;
        }
        t
    }

    #[test]
    fn validates_templates() {
        let v = validate_template(&template()).unwrap();
        assert_eq!(
            v.limits,
            Limits {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                pids: 64
            }
        );
        assert_eq!(
            (v.runtime_class, v.release_policy),
            (pb::RuntimeClass::Runsc, pb::ReleasePolicy::Recycle)
        );
        let mut t = template();
        t.runtime_class = 42;
        assert!(
            matches!(validate_template(&t), Err(AgentError::InvalidTemplate(m)) if m.contains("runtime class"))
        );
        let mut t = template();
        t.resources = Some(pb::Resources {
            cpu: "fast".into(),
            ..Default::default()
        });
        assert!(
            matches!(validate_template(&t), Err(AgentError::InvalidTemplate(m)) if m.contains("cpu"))
        );
        let mut t = template();
        t.image = " ".into();
        assert!(validate_template(&t).is_err());
        let mut t = template();
        t.env.insert("A=B".into(), "x".into());
        assert!(validate_template(&t).is_err());
        let mut t = template();
        t.runtime_class = 0;
        t.release_policy = 0;
        let v = validate_template(&t).unwrap();
        assert_eq!(
            (v.runtime_class, v.release_policy),
            (pb::RuntimeClass::Runc, pb::ReleasePolicy::Delete)
        );
        // checkpointable needs runsc
        t.checkpointable = true;
        assert!(
            matches!(validate_template(&t), Err(AgentError::InvalidTemplate(m)) if m.contains("RUNSC"))
        );
        t.runtime_class = pb::RuntimeClass::Runsc as i32;
        assert!(validate_template(&t).unwrap().checkpointable);
    }

    #[test]
    fn labels_round_trip_for_recovery() {
        let sb = Sandbox {
            id: "sb-1".into(),
            message: String::new(),
            oom_kills: 0,
            pool: "p".into(),
            state: pb::SandboxState::Claimed,
            ip: Ipv4Addr::LOCALHOST,
            port: 40123,
            token: "t".into(),
            runtime_class: pb::RuntimeClass::Runsc,
            template: pb::SandboxTemplate {
                checkpointable: true,
                ..template()
            },
            created_ms: 42,
            image_command: vec!["/entry.sh".into(), "serve".into()],
        };
        let l = sb.label_map().unwrap();
        assert!(
            l.values().all(|v| v.len() < 4096),
            "containerd label size limit"
        );
        let back = Sandbox::from_labels("sb-1", &l).unwrap();
        assert_eq!(
            (
                back.pool.as_str(),
                back.state,
                back.ip,
                back.port,
                back.created_ms
            ),
            ("p", pb::SandboxState::Claimed, sb.ip, 40123, 42)
        );
        assert_eq!(back.template, sb.template);
        assert_eq!(back.image_command, sb.image_command);
        let mut none = l.clone();
        none.remove(labels::IMAGE_COMMAND);
        let back = Sandbox::from_labels("sb-1", &none).unwrap();
        assert!(back.image_command.is_empty(), "older labels: none");
        assert!(
            Sandbox::from_labels("x", &HashMap::new()).is_none(),
            "unmanaged containers are ignored"
        );
    }

    #[test]
    fn ids() {
        assert!(valid_id("sb-abc_1"));
        assert!(!valid_id(""));
        assert!(!valid_id("-x"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(65)));
    }
}
