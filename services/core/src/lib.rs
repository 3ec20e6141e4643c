//! sandpool's domain model and pure decision logic (no I/O).
//!
//! * [`pool`]: OpenSandbox pool sizing (`bufferMin/bufferMax/poolMin/poolMax`)
//!   and O(1) warm-sandbox choice spread across nodes.
//! * [`claim`]: the claim state machine and TTL.
//! * [`egress`]: egress policies (what a sandbox may connect to).
//! * [`credential_vault`]: OpenSandbox's Credential Vault: secrets and the
//!   bindings that inject them into outbound requests.
//! * [`docker_config`]: registry credentials from a docker `config.json`.
//! * [`busy`]: the guard that marks an id busy while work on it is under way.
//! * [`batch`]: BatchSandbox shard task patches (JSON merge patch) and task counts.
//! * [`strategic`]: strategic merge patch over a pod (BatchSandbox `shardPatches`).
//! * [`node_sync`]: what to do when a node's sandbox list and the books disagree.
//! * [`page`]: paging of ordered lists (ListClaims).
//! * [`start`]: the process a claim starts (claim, template, image default).
//! * [`refill`]: refill pacing: a buffer that follows the claim rate, and
//!   refill concurrency that follows free CPU and yields to claims.

pub mod batch;
pub mod busy;
pub mod claim;
pub mod credential_vault;
pub mod docker_config;
pub mod egress;
pub mod node_sync;
pub mod page;
pub mod pool;
pub mod refill;
pub mod start;
pub mod strategic;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CoreError {
    #[error("invalid capacity: {0}")]
    InvalidCapacity(String),
    #[error("illegal claim transition: {from:?} on {event:?}")]
    IllegalTransition {
        from: claim::ClaimState,
        event: claim::ClaimEvent,
    },
    #[error("invalid patch: {0}")]
    InvalidPatch(String),
    #[error("invalid report: {0}")]
    InvalidReport(String),
    #[error("bad page token {0:?}: not an offset from an earlier page")]
    InvalidPageToken(String),
    #[error("unknown {what} {value:?}: one of {expected}")]
    UnknownValue {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// An egress rule a Kubernetes NetworkPolicy cannot enforce exactly
    /// ([`egress::netpol`]): `rule` is its index in the policy's rules.
    #[error("egress[{rule}] ({target}): {why}")]
    NotANetworkPolicy {
        rule: usize,
        target: String,
        why: String,
    },
    /// A docker config's `auths` entry of `registry` is unreadable.
    #[error("docker config auth of {registry}: {why}")]
    DockerConfig { registry: String, why: String },
    /// `field` is not an RFC 1123 DNS label.
    #[error("{field} {value:?} must be a DNS label (RFC 1123): {why}")]
    InvalidName {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

/// The OCI runtime a sandbox runs under (stored as `"runc"` / `"runsc"`; an
/// empty string in older records is runc, and node-agent labels written
/// before the enums hold the proto number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "Stored")]
pub enum RuntimeClass {
    #[default]
    Runc,
    /// gVisor.
    Runsc,
}

/// What releasing a claimed sandbox does (stored as `"delete"` / `"recycle"`;
/// an empty string in older records is delete, a proto number in older
/// node-agent labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "Stored")]
pub enum ReleasePolicy {
    #[default]
    Delete,
    /// Reset the sandbox and return it to its pool.
    Recycle,
}

/// An enum as any sandpool version stored it: by name, or by proto number.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Stored {
    Name(String),
    Number(i64),
}

impl Stored {
    /// The value stored: a name (empty: `first`), or a proto number (0, the
    /// unspecified one, and 1 are `first`; 2 is `second`).
    fn decode<T: std::str::FromStr<Err = CoreError>>(
        self,
        first: T,
        second: T,
    ) -> Result<T, CoreError> {
        match self {
            Stored::Name(n) if n.is_empty() => Ok(first),
            Stored::Name(n) => n.parse(),
            Stored::Number(0 | 1) => Ok(first),
            Stored::Number(2) => Ok(second),
            Stored::Number(n) => n.to_string().parse(),
        }
    }
}

impl TryFrom<Stored> for RuntimeClass {
    type Error = CoreError;
    fn try_from(s: Stored) -> Result<Self, CoreError> {
        s.decode(Self::Runc, Self::Runsc)
    }
}

impl TryFrom<Stored> for ReleasePolicy {
    type Error = CoreError;
    fn try_from(s: Stored) -> Result<Self, CoreError> {
        s.decode(Self::Delete, Self::Recycle)
    }
}

/// `FromStr` for an enum by its stored names; anything else is
/// [`CoreError::UnknownValue`] naming `what` and the `expected` names.
macro_rules! from_names {
    ($t:ty, $what:literal, $expected:literal, $($name:literal => $v:ident),+) => {
        impl std::str::FromStr for $t {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                match s {
                    $($name => Ok(Self::$v),)+
                    other => Err(CoreError::UnknownValue {
                        what: $what,
                        value: other.to_string(),
                        expected: $expected,
                    }),
                }
            }
        }
    };
}

from_names!(RuntimeClass, "runtime class", "runc, runsc", "runc" => Runc, "runsc" => Runsc);
from_names!(
    ReleasePolicy, "release policy", "delete, recycle",
    "delete" => Delete, "recycle" => Recycle
);

impl ReleasePolicy {
    /// The policy of an OpenSandbox Pool `recycleStrategy.type`, any case:
    /// `Delete`, or `Restart` (recycle: reset and back to the pool). `Noop`
    /// (hand the used sandbox on untouched) is refused: nothing would prove
    /// the next tenant sees none of the last one.
    pub fn from_recycle_strategy(s: &str) -> Result<Self, CoreError> {
        match s.to_ascii_lowercase().as_str() {
            "delete" => Ok(Self::Delete),
            "restart" | "recycle" => Ok(Self::Recycle),
            _ => Err(CoreError::UnknownValue {
                what: "recycle strategy",
                value: s.to_string(),
                expected: "Delete, Restart (Noop is not supported: a sandbox is reset before its next tenant)",
            }),
        }
    }

    /// The OpenSandbox `recycleStrategy.type` of this policy.
    pub fn recycle_strategy(self) -> &'static str {
        match self {
            Self::Delete => "Delete",
            Self::Recycle => "Restart",
        }
    }
}

/// Longest DNS label (RFC 1123).
pub const MAX_NAME_LEN: usize = 63;

/// Check that `value` of `field` is an RFC 1123 DNS label: 1 to 63 lowercase
/// letters, digits and `-`, starting and ending with a letter or digit (so
/// it is also a Kubernetes object name and a safe metric label).
pub fn validate_dns_label(field: &'static str, value: &str) -> Result<(), CoreError> {
    let bad = |why| {
        Err(CoreError::InvalidName {
            field,
            value: value.chars().take(80).collect(),
            why,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if value.len() > MAX_NAME_LEN {
        return bad("longer than 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters, digits and '-' are allowed");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// The template label holding an E2B readyCmd: a sandbox of the template
/// is handed out once this shell command exits 0 in it (the E2B API polls it).
pub const READY_CMD_LABEL: &str = "sandpool.dev/ready-cmd";

/// A sandbox template in its stored form: scheduler records, node-agent
/// container labels and checkpoint metadata (the proto `SandboxTemplate`
/// converts to and from it in `sandpool_proto::template`).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Template {
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub cpu: String,
    #[serde(default)]
    pub memory: String,
    #[serde(default)]
    pub pids: u32,
    #[serde(default)]
    pub runtime_class: RuntimeClass,
    #[serde(default)]
    pub release_policy: ReleasePolicy,
    /// Run as root instead of the default unprivileged sandbox user (uid/gid
    /// 61000, the node agent's `SANDBOX_USER`).
    #[serde(default)]
    pub run_as_root: bool,
    /// runsc without a network, so it can be checkpointed, restored, forked.
    #[serde(default)]
    pub checkpointable: bool,
    /// Labels of the sandbox (Kubernetes mode: the pod's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The pool's egress policy; `None`: everything allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<egress::EgressPolicy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_class_and_release_policy_keep_their_stored_names() {
        let t = Template {
            runtime_class: RuntimeClass::Runsc,
            release_policy: ReleasePolicy::Recycle,
            ..Default::default()
        };
        let v = serde_json::to_value(&t).expect("json");
        assert_eq!(
            (v["runtime_class"].as_str(), v["release_policy"].as_str()),
            (Some("runsc"), Some("recycle"))
        );
        // records written before the enums held "" for the defaults
        let old: Template =
            serde_json::from_str(r#"{"image":"x","runtime_class":"","release_policy":""}"#)
                .expect("old");
        assert_eq!(
            (old.runtime_class, old.release_policy),
            (RuntimeClass::Runc, ReleasePolicy::Delete)
        );
        assert!(
            serde_json::from_str::<Template>(r#"{"image":"x","runtime_class":"kata"}"#).is_err()
        );
        // node-agent labels written before the enums: proto numbers
        let label: Template =
            serde_json::from_str(r#"{"image":"x","runtime_class":2,"release_policy":2}"#)
                .expect("label");
        assert_eq!(
            (label.runtime_class, label.release_policy),
            (RuntimeClass::Runsc, ReleasePolicy::Recycle)
        );
        assert!(serde_json::from_str::<Template>(r#"{"image":"x","runtime_class":7}"#).is_err());
        assert_eq!("runsc".parse::<RuntimeClass>(), Ok(RuntimeClass::Runsc));
        let e = "kata".parse::<RuntimeClass>().expect_err("unknown");
        assert_eq!(
            e.to_string(),
            r#"unknown runtime class "kata": one of runc, runsc"#
        );
        assert_eq!(
            "recycle".parse::<ReleasePolicy>(),
            Ok(ReleasePolicy::Recycle)
        );
        assert!("keep".parse::<ReleasePolicy>().is_err());
    }

    #[test]
    fn pool_names_are_dns_labels() {
        for ok in ["a", "default", "py-pool", "0abc", &"a".repeat(63)] {
            assert_eq!(validate_dns_label("name", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            &"a".repeat(64),
            "Upper",
            "under_score",
            "dot.ted",
            "-lead",
            "trail-",
            "sp ace",
            "quo\"te",
            "new\nline",
            "ünï",
        ] {
            let e = validate_dns_label("name", bad).expect_err(bad);
            assert!(e.to_string().starts_with("name "), "{e}");
        }
    }

    #[test]
    fn recycle_strategies_map_to_release_policies_and_noop_is_refused() {
        for (name, policy) in [
            ("Delete", ReleasePolicy::Delete),
            ("delete", ReleasePolicy::Delete),
            ("Restart", ReleasePolicy::Recycle),
            ("restart", ReleasePolicy::Recycle),
        ] {
            assert_eq!(ReleasePolicy::from_recycle_strategy(name).unwrap(), policy);
        }
        assert_eq!(ReleasePolicy::Recycle.recycle_strategy(), "Restart");
        assert_eq!(ReleasePolicy::Delete.recycle_strategy(), "Delete");
        let e = ReleasePolicy::from_recycle_strategy("Noop").unwrap_err();
        assert!(e.to_string().contains("Noop is not supported"), "{e}");
    }
}
