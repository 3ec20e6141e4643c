//! Durable records (pools, claims) and proto conversions.

use std::collections::BTreeMap;

use sandpool_core::{Template, claim::ClaimState, egress::EgressPolicy, pool::CapacitySpec};
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
    /// Why the sandbox failed, as its node reported it (`OOMKilled: ...`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure: String,
    /// The claim's own egress policy (`None`: its pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,
    /// Pause instead of release when the TTL ends (E2B `autoPause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_on_expiry: bool,
    /// Resume when E2B traffic reaches it while paused (E2B `autoResume`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_resume: bool,
    /// With `pause_on_expiry`: that pause is filesystem-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_filesystem_only: bool,
    /// Paused filesystem-only: its sandbox's processes are gone, a resume
    /// starts them again from `restart`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused_filesystem: bool,
    /// What a resume after a filesystem-only pause starts in the sandbox
    /// again, as a start does: a `pb::ClaimRequest` holding only the
    /// claim's process (argv resolved), resources and mounts, encoded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<u8>,
    /// The sandbox's default env vars (E2B `envVars`): its API sets them in
    /// the runtime again after a filesystem-only resume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sandbox_env: BTreeMap<String, String>,
    /// The TTL the claim was made with (0 = none).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub ttl_seconds: u64,
    /// How many processes of its sandbox the OOM killer has killed (as its
    /// node reported them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub oom_kills: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn template_to_pb(t: &Template) -> pb::SandboxTemplate {
    sandpool_proto::template::to_pb(t)
}

/// A wire template in stored form; a bad value is invalid input.
pub fn template_from_pb(t: &pb::SandboxTemplate) -> Result<Template> {
    sandpool_proto::template::from_pb_template(t).map_err(SchedError::Invalid)
}

/// A wire egress policy of a claim, checked; a bad rule is invalid input.
/// Domain targets pass (the node agent enforces them through its DNS
/// proxy, and refuses them where it cannot: a network-less sandbox).
pub fn egress_from_pb(e: &pb::EgressPolicy) -> Result<EgressPolicy> {
    sandpool_proto::template::egress_from_pb_with_names(e).map_err(SchedError::Invalid)
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
