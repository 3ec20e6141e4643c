//! Renewing a container in place: its task (with the shim, the runtime and
//! every process the tenant started) and its writable layer are replaced,
//! the container record (and the sandbox's network namespace, which the
//! agent owns) are kept. Cheaper than delete + create, and checked clean
//! before the new task starts.

use std::collections::HashMap;

use containerd_client::{
    services::v1::{self as api, Container},
    types::Mount,
};
use prost_types::Any;

use crate::error::{AgentError, Result};

use super::{Answer, Ctr, SPEC_TYPE_URL, upperdir};

impl Ctr {
    /// Replace container `id`'s task and rootfs: the task is killed and
    /// deleted, the rootfs snapshot removed and prepared again (same key, on
    /// `parent_snapshot`), and the record gets `spec` and `labels`. The
    /// mounts of the fresh rootfs are returned for [`Ctr::start_task`].
    ///
    /// Fails, leaving the caller to fall back to delete + create, unless it
    /// is proven clean: the task is gone (the shim reaped it and every
    /// process of its cgroup), and the new upper directory is empty.
    pub async fn renew(
        &self,
        id: &str,
        parent_snapshot: &str,
        spec: &serde_json::Value,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let req = self.req(api::GetContainerRequest { id: id.to_string() });
        let key = self
            .client
            .containers()
            .get(req)
            .await
            .or_fail("get container")?
            .into_inner()
            .container
            .map(|c| c.snapshot_key)
            .unwrap_or_default();
        if key.is_empty() {
            return Err(unclean(id, "it has no rootfs snapshot"));
        }
        self.stop_and_delete_task(id).await?;
        if self.task_state(id).await?.is_some() {
            return Err(unclean(id, "its task is still there"));
        }
        self.remove_snapshot(&key).await?;
        let lease = self.lease(10).await?;
        let mounts = self.prepare_snapshot(&key, parent_snapshot, &lease).await;
        self.drop_lease(lease).await;
        let mounts = mounts?;
        if let Some(upper) = upperdir(&mounts) {
            let empty = std::fs::read_dir(&upper)
                .map_err(|e| AgentError::io(format!("read {}", upper.display()), e))?
                .next()
                .is_none();
            if !empty {
                return Err(unclean(id, "its new upper directory is not empty"));
            }
        }
        self.update_spec(id, spec, labels).await?;
        Ok(mounts)
    }

    /// Set container `id`'s runtime spec and `labels`.
    async fn update_spec(
        &self,
        id: &str,
        spec: &serde_json::Value,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let mut paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        paths.push("spec".into());
        let c = Container {
            id: id.to_string(),
            labels,
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(spec)
                    .map_err(|e| AgentError::image("encoding the runtime spec", e))?,
            }),
            ..Default::default()
        };
        self.update_container(c, paths, "update container spec")
            .await
    }
}

fn unclean(id: &str, why: &str) -> AgentError {
    AgentError::FailedPrecondition(format!("sandbox {id} cannot be renewed in place: {why}"))
}
