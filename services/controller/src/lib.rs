//! sandpool's Kubernetes mode.
//!
//! * [`crd`]: the custom resources (OpenSandbox `Pool`/`BatchSandbox`,
//!   `SandboxSnapshot`; agent-sandbox `Sandbox`/`SandboxTemplate`/`SandboxClaim`/`SandboxWarmPool`).

pub mod agent_sandbox;
pub mod batch;
pub mod conditions;
pub mod context;
pub mod conversion;
pub mod crd;
pub mod error;
pub mod idle;
pub mod kube_scheduler;
pub mod leader;
pub mod node_agents;
pub mod pods;
pub mod pool;
pub mod run;
pub mod snapshot;
pub mod snapshot_registry;
pub mod tasks;
pub mod tenant_egress;

pub use error::{Error, Result};

/// CRDs as a multi-document YAML per CRD: `(file name, yaml)`.
pub fn crd_files() -> Vec<(String, String)> {
    crd::all_crds()
        .into_iter()
        .map(|c| {
            let name = c.metadata.name.clone().unwrap_or_default();
            let yaml = serde_saphyr::to_string(&c).unwrap_or_default();
            (format!("{name}.yaml"), yaml)
        })
        .collect()
}
