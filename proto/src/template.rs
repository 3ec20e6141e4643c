//! The sandbox template between its proto form (`v1::SandboxTemplate`, on
//! the wire) and its stored form (`sandpool_core::Template`: scheduler
//! records, node-agent labels, checkpoint metadata). One place converts.

use sandpool_core::{
    ReleasePolicy, RuntimeClass, Template,
    egress::{EgressAction, EgressPolicy, EgressRule},
};

use crate::v1 as pb;

/// The proto enum value `v` (a `what`) through `convert`; an unknown value
/// is an error naming it.
fn from_pb<P: TryFrom<i32>, T>(
    v: i32,
    what: &str,
    convert: impl FnOnce(P) -> T,
) -> Result<T, String> {
    P::try_from(v)
        .map(convert)
        .map_err(|_| format!("unknown {what} {v}"))
}

/// The wire form of a stored template.
pub fn to_pb(t: &Template) -> pb::SandboxTemplate {
    pb::SandboxTemplate {
        image: t.image.clone(),
        command: t.command.clone(),
        env: t.env.clone().into_iter().collect(),
        resources: Some(pb::Resources {
            cpu: t.cpu.clone(),
            memory: t.memory.clone(),
            pids: t.pids,
        }),
        runtime_class: match t.runtime_class {
            RuntimeClass::Runsc => pb::RuntimeClass::Runsc as i32,
            RuntimeClass::Runc => pb::RuntimeClass::Runc as i32,
        },
        release_policy: match t.release_policy {
            ReleasePolicy::Recycle => pb::ReleasePolicy::Recycle as i32,
            ReleasePolicy::Delete => pb::ReleasePolicy::Delete as i32,
        },
        labels: t.labels.clone().into_iter().collect(),
        run_as_root: t.run_as_root,
        checkpointable: t.checkpointable,
        egress: t.egress.as_ref().map(egress_to_pb),
    }
}

/// The stored form of a wire template; unknown enum values and bad egress
/// rules are errors naming them.
pub fn from_pb_template(t: &pb::SandboxTemplate) -> Result<Template, String> {
    let r = t.resources.clone().unwrap_or_default();
    Ok(Template {
        image: t.image.clone(),
        command: t.command.clone(),
        env: t.env.clone().into_iter().collect(),
        cpu: r.cpu,
        memory: r.memory,
        pids: r.pids,
        runtime_class: from_pb(t.runtime_class, "runtime class", |c| match c {
            pb::RuntimeClass::Runsc => RuntimeClass::Runsc,
            _ => RuntimeClass::Runc,
        })?,
        release_policy: from_pb(t.release_policy, "release policy", |p| match p {
            pb::ReleasePolicy::Recycle => ReleasePolicy::Recycle,
            _ => ReleasePolicy::Delete,
        })?,
        run_as_root: t.run_as_root,
        checkpointable: t.checkpointable,
        labels: t.labels.clone().into_iter().collect(),
        egress: t.egress.as_ref().map(egress_from_pb).transpose()?,
    })
}

fn action_to_pb(a: EgressAction) -> i32 {
    match a {
        EgressAction::Allow => pb::EgressAction::Allow as i32,
        EgressAction::Deny => pb::EgressAction::Deny as i32,
    }
}

/// The wire form of an egress policy.
pub fn egress_to_pb(e: &EgressPolicy) -> pb::EgressPolicy {
    pb::EgressPolicy {
        default_action: action_to_pb(e.default_action),
        rules: e
            .rules
            .iter()
            .map(|r| pb::EgressRule {
                action: action_to_pb(r.action),
                cidr: r.cidr.clone(),
                port: u32::from(r.port),
            })
            .collect(),
    }
}

/// A wire egress policy, checked (actions, addresses, ports, size); the
/// error names the rule.
pub fn egress_from_pb(e: &pb::EgressPolicy) -> Result<EgressPolicy, String> {
    let p = egress_unchecked(e)?;
    p.validate()?;
    Ok(p)
}

/// [`egress_from_pb`] for an enforcer of domain targets: rules may also
/// name a domain or `*.domain` ([`EgressPolicy::validate_with_names`]).
pub fn egress_from_pb_with_names(e: &pb::EgressPolicy) -> Result<EgressPolicy, String> {
    let p = egress_unchecked(e)?;
    p.validate_with_names()?;
    Ok(p)
}

fn egress_unchecked(e: &pb::EgressPolicy) -> Result<EgressPolicy, String> {
    let action = |a: i32| {
        from_pb(a, "egress action", |a| match a {
            pb::EgressAction::Deny => EgressAction::Deny,
            _ => EgressAction::Allow,
        })
    };
    let mut rules = Vec::with_capacity(e.rules.len());
    for (i, r) in e.rules.iter().enumerate() {
        rules.push(EgressRule {
            action: action(r.action)?,
            cidr: r.cidr.clone(),
            port: u16::try_from(r.port)
                .map_err(|_| format!("egress rule {i}: port {} is above 65535", r.port))?,
        });
    }
    Ok(EgressPolicy {
        default_action: action(e.default_action)?,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_round_trip_and_bad_values_are_named() {
        let t = Template {
            image: "python".into(),
            command: vec!["sleep".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            cpu: "500m".into(),
            memory: "1Gi".into(),
            pids: 64,
            runtime_class: RuntimeClass::Runsc,
            release_policy: ReleasePolicy::Recycle,
            run_as_root: true,
            checkpointable: false,
            labels: [("team".to_string(), "x".to_string())].into(),
            egress: Some(EgressPolicy {
                default_action: EgressAction::Deny,
                rules: vec![EgressRule {
                    action: EgressAction::Allow,
                    cidr: "10.0.0.0/8".into(),
                    port: 443,
                }],
            }),
        };
        assert_eq!(from_pb_template(&to_pb(&t)), Ok(t.clone()));
        let mut bad = to_pb(&t);
        bad.runtime_class = 7;
        assert_eq!(
            from_pb_template(&bad),
            Err("unknown runtime class 7".into())
        );
        let mut bad = to_pb(&t);
        if let Some(e) = bad.egress.as_mut() {
            e.rules[0].port = 70000;
        }
        let e = from_pb_template(&bad).expect_err("port");
        assert!(e.starts_with("egress rule 0: port 70000"), "{e}");
        let mut bad = to_pb(&t);
        if let Some(e) = bad.egress.as_mut() {
            e.rules[0].cidr = "pypi.org".into();
        }
        assert!(
            from_pb_template(&bad)
                .expect_err("domain")
                .starts_with("egress rule 0")
        );
    }
}
