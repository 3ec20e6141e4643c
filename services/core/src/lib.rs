//! sandpool's domain model and pure decision logic (no I/O).
//!
//! * [`pool`]: OpenSandbox pool sizing (`bufferMin/bufferMax/poolMin/poolMax`)
//!   and O(1) warm-sandbox choice spread across nodes.
//! * [`claim`]: the claim state machine and TTL.
//! * [`batch`]: BatchSandbox shard task patches (JSON merge patch) and task counts.
//! * [`node_sync`]: what to do when a node's sandbox list and the books disagree.
//! * [`page`]: paging of ordered lists (ListClaims).

pub mod batch;
pub mod claim;
pub mod node_sync;
pub mod page;
pub mod pool;

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
    #[error("bad page token {0:?}: not an offset from an earlier page")]
    InvalidPageToken(String),
}

/// A sandbox template in serde form (the proto `SandboxTemplate` lives in
/// `sandpool-proto`; services convert at their edges).
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
    /// "runc" | "runsc"
    #[serde(default)]
    pub runtime_class: String,
    /// "delete" | "recycle"
    #[serde(default)]
    pub release_policy: String,
    /// Run as root instead of the default unprivileged sandbox user (uid/gid
    /// 61000, the node agent's `SANDBOX_USER`).
    #[serde(default)]
    pub run_as_root: bool,
    /// runsc without a network, so it can be checkpointed, restored, forked.
    #[serde(default)]
    pub checkpointable: bool,
}
