//! Durable records (pools, claims) and proto conversions.

use std::collections::BTreeMap;

use sandpool_core::{
    ReleasePolicy, RuntimeClass, Template,
    claim::ClaimState,
    egress::{EgressAction, EgressPolicy, EgressRule},
    pool::CapacitySpec,
};
use sandpool_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SchedError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolRec {
    pub name: String,
    pub template: Template,
    pub capacity: CapacitySpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxRef {
    pub id: String,
    pub node: String,
    pub ip: String,
    pub port: u32,
    pub token: String,
    pub runtime_class: i32,
}

/// When a claim made at `now_ms` with a TTL of `ttl_seconds` expires (0: no
/// TTL, never). A TTL too long for the clock saturates to never as well
/// instead of overflowing.
pub fn expiry_ms(now_ms: i64, ttl_seconds: u64) -> i64 {
    if ttl_seconds == 0 {
        return 0;
    }
    i64::try_from(ttl_seconds).map_or(i64::MAX, |t| now_ms.saturating_add(t.saturating_mul(1000)))
}

impl SandboxRef {
    /// Where node `node`'s sandbox `info` is reached.
    pub fn of(node: &str, info: &pb::SandboxInfo) -> SandboxRef {
        SandboxRef {
            id: info.sandbox_id.clone(),
            node: node.to_string(),
            ip: info.ip.clone(),
            port: info.runtime_port,
            token: info.access_token.clone(),
            runtime_class: info.runtime_class,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClaimRec {
    pub id: String,
    pub pool: String,
    pub state: ClaimState,
    pub sandbox: SandboxRef,
    pub created_ms: i64,
    pub expires_ms: i64,
    #[serde(default)]
    pub paused_remaining_ms: i64,
    pub metadata: BTreeMap<String, String>,
    pub cold: bool,
    pub entrypoint: Vec<String>,
    pub image: String,
    pub claim_us: u64,
    #[serde(default)]
    pub batch: Option<String>,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn template_to_pb(t: &Template) -> pb::SandboxTemplate {
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
        labels: Default::default(),
        run_as_root: t.run_as_root,
        checkpointable: t.checkpointable,
        egress: t.egress.as_ref().map(egress_to_pb),
    }
}

/// The proto enum value `v` (a `what`) through `convert`; an unknown value
/// is invalid.
fn from_pb<P: TryFrom<i32>, T>(v: i32, what: &str, convert: impl FnOnce(P) -> T) -> Result<T> {
    P::try_from(v)
        .map(convert)
        .map_err(|_| SchedError::Invalid(format!("unknown {what} {v}")))
}

fn action_to_pb(a: EgressAction) -> i32 {
    match a {
        EgressAction::Allow => pb::EgressAction::Allow as i32,
        EgressAction::Deny => pb::EgressAction::Deny as i32,
    }
}

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

/// A gRPC egress policy, checked (actions, addresses, ports, size).
pub fn egress_from_pb(e: &pb::EgressPolicy) -> Result<EgressPolicy> {
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
            port: u16::try_from(r.port).map_err(|_| {
                SchedError::Invalid(format!("egress rule {i}: port {} is above 65535", r.port))
            })?,
        });
    }
    let p = EgressPolicy {
        default_action: action(e.default_action)?,
        rules,
    };
    p.validate().map_err(SchedError::Invalid)?;
    Ok(p)
}

pub fn template_from_pb(t: &pb::SandboxTemplate) -> Result<Template> {
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
        egress: t.egress.as_ref().map(egress_from_pb).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::expiry_ms;

    #[test]
    fn expiry_is_now_plus_ttl_and_never_overflows() {
        assert_eq!(expiry_ms(1_000, 0), 0, "no TTL: never");
        assert_eq!(expiry_ms(1_000, 5), 6_000);
        // TTLs past the clock's range mean never, not a wrapped (past) time
        assert_eq!(expiry_ms(1_000, u64::MAX), i64::MAX);
        assert_eq!(expiry_ms(1_000, i64::MAX as u64), i64::MAX);
        assert_eq!(expiry_ms(1_000, (i64::MAX / 1000) as u64 + 1), i64::MAX);
    }
}
