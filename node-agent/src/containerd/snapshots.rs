//! Snapshots and containers: a sandbox rootfs prepared on the image's
//! snapshot (with the stale-directory retry), container records, labels.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use containerd_client::{
    services::v1::{
        self as api, Container,
        container::Runtime,
        snapshots::{
            ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
            StatSnapshotRequest, ViewSnapshotRequest,
        },
    },
    types::Mount,
};
use futures_util::StreamExt;
use prost_types::Any;

use crate::error::{AgentError, Result};

use super::{
    Answer, Ctr, NewContainer, RUNC_OPTIONS_TYPE_URL, RUNC_SHIM, RuncOptions, SNAPSHOTTER,
    SPEC_TYPE_URL, upperdir,
};

impl Ctr {
    pub(super) async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let r = self.req(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        });
        let stat = self.client.snapshots().stat(r).await;
        Ok(stat.found("stat snapshot")?.is_some())
    }

    /// Prepare the rootfs snapshot and create the container record, under a
    /// lease: an active snapshot is not a GC root until a container refers to
    /// it, so without the lease a concurrent GC may delete it in between.
    pub async fn create_container(&self, c: NewContainer<'_>) -> Result<Vec<Mount>> {
        let lease = self.lease(10).await?;
        let res = self.create_container_leased(c, &lease).await;
        self.drop_lease(lease).await;
        res
    }

    pub(super) async fn create_container_leased(
        &self,
        c: NewContainer<'_>,
        lease: &str,
    ) -> Result<Vec<Mount>> {
        let NewContainer {
            id,
            snapshot_key,
            image,
            parent_snapshot,
            labels,
            spec,
            runtime_binary,
        } = c;
        let mounts = self
            .prepare_snapshot(snapshot_key, parent_snapshot, lease)
            .await?;
        let opts = RuncOptions {
            binary_name: runtime_binary.to_string(),
            ..Default::default()
        };
        let container = Container {
            id: id.to_string(),
            labels,
            image: image.to_string(),
            runtime: Some(Runtime {
                name: RUNC_SHIM.into(),
                options: Some(Any {
                    type_url: RUNC_OPTIONS_TYPE_URL.into(),
                    value: prost::Message::encode_to_vec(&opts),
                }),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(spec)
                    .map_err(|e| AgentError::image("encoding the runtime spec", e))?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: snapshot_key.to_string(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        if let Err(s) = self
            .client
            .containers()
            .create(self.req_lease(
                api::CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            ))
            .await
        {
            let _ = self.remove_snapshot(snapshot_key).await;
            return Err(AgentError::containerd("create container", s));
        }
        Ok(mounts)
    }

    /// The overlay upper directory of container `id`'s rootfs snapshot: what
    /// the sandbox wrote to its root file system.
    pub async fn rootfs_upperdir(&self, id: &str) -> Result<PathBuf> {
        let mounts = self.rootfs_mounts(id).await?;
        upperdir(&mounts).ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "sandbox {id}'s rootfs has no overlay upper directory"
            ))
        })
    }

    /// The mounts of container `id`'s rootfs snapshot (to start a task on).
    pub async fn rootfs_mounts(&self, id: &str) -> Result<Vec<Mount>> {
        let req = self.req(api::GetContainerRequest { id: id.to_string() });
        let got = self.client.containers().get(req).await;
        let key = got
            .or_fail("get container")?
            .into_inner()
            .container
            .map(|c| c.snapshot_key)
            .unwrap_or_default();
        let mounts = self
            .client
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
            }))
            .await
            .or_fail("snapshot mounts")?
            .into_inner()
            .mounts;
        if key.is_empty() || mounts.is_empty() {
            return Err(AgentError::FailedPrecondition(format!(
                "sandbox {id} has no rootfs snapshot"
            )));
        }
        Ok(mounts)
    }

    /// Prepare an active snapshot. A containerd killed between renaming a
    /// new snapshot's directory into place and committing its metadata
    /// leaves that directory behind under an id its database hands out
    /// again: the prepare fails with "rename <new> <dir>: file exists", and
    /// so would every later one (containerd 1.6's metadata snapshotter does
    /// not implement the Cleanup RPC). The directory holds no committed
    /// snapshot, so it is removed and the prepare tried again.
    pub(super) async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        lease: &str,
    ) -> Result<Vec<Mount>> {
        // one stale directory per prepare that was in flight when it died
        const MAX_STALE: usize = 64;
        let mut removed = 0;
        loop {
            let request = self.req_lease(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            );
            let status = match self.client.snapshots().prepare(request).await {
                Ok(r) => return Ok(r.into_inner().mounts),
                Err(s) => s,
            };
            let stale = match stale_snapshot_dir(status.message()) {
                Some(dir) if removed < MAX_STALE => dir,
                _ => return Err(AgentError::containerd("prepare snapshot", status)),
            };
            tracing::warn!(dir = %stale.display(), "removing a snapshot directory containerd's metadata does not know");
            match tokio::fs::remove_dir_all(&stale).await {
                // a concurrent prepare may have removed it first
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let what = format!("remove stale snapshot directory {}", stale.display());
                    return Err(AgentError::io(what, e));
                }
            }
            removed += 1;
        }
    }

    /// Small text files of the committed snapshot `chain` (an image's
    /// rootfs), read through a temporary view's layer directories without
    /// mounting anything: `paths` relative to the root, each `None` when
    /// the image has no such regular file.
    pub async fn read_image_files(
        &self,
        chain: &str,
        paths: &[&str],
    ) -> Result<Vec<Option<String>>> {
        let lease = self.lease(5).await?;
        let key = format!("view-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let request = self.req_lease(
            ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: chain.to_string(),
                labels: HashMap::new(),
            },
            &lease,
        );
        let viewed = self.client.snapshots().view(request).await;
        let res = match viewed.or_fail("view snapshot") {
            Ok(r) => {
                let dirs = super::layer_dirs(&r.into_inner().mounts);
                let _ = self.remove_snapshot(&key).await;
                Ok(paths
                    .iter()
                    .map(|p| super::read_layered(&dirs, p))
                    .collect())
            }
            Err(e) => Err(e),
        };
        self.drop_lease(lease).await;
        res
    }

    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let req = self.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.to_string(),
        });
        self.client
            .snapshots()
            .remove(req)
            .await
            .found("remove snapshot")?;
        Ok(())
    }

    pub async fn list_containers(&self) -> Result<Vec<Container>> {
        let req = self.req(api::ListContainersRequest { filters: vec![] });
        let listed = self.client.containers().list(req).await;
        Ok(listed.or_fail("list containers")?.into_inner().containers)
    }

    /// Active (non-committed) snapshot keys: one per sandbox, plus any residue.
    /// An image unpack's snapshot (`extract-…`) is listed only once it is
    /// older than [`UNPACK_GRACE`]: unpacks (registry pulls for a create, a
    /// pool or the CLI) run outside the agent's locks, and the sweep must not
    /// take the snapshot a running unpack is writing.
    pub async fn list_active_snapshots(&self) -> Result<Vec<String>> {
        let mut s = self
            .client
            .snapshots()
            .list(self.req(ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.into(),
                filters: vec![],
            }))
            .await
            .or_fail("list snapshots")?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            for info in r.or_fail("list snapshots")?.info {
                // kind 2 = active (prepared), 3 = committed
                if info.kind == 2 && !unpack_in_grace(&info.name, info.created_at.as_ref()) {
                    out.push(info.name);
                }
            }
        }
        Ok(out)
    }

    /// Set (merge) container labels.
    pub async fn set_labels(&self, id: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let c = Container {
            id: id.to_string(),
            labels,
            ..Default::default()
        };
        self.update_container(c, paths, "update container labels")
            .await
    }

    /// Update the fields `paths` (containerd field-mask paths) of container
    /// `c.id` to `c`'s; `what` names the call in an error.
    pub(super) async fn update_container(
        &self,
        c: Container,
        paths: Vec<String>,
        what: &'static str,
    ) -> Result<()> {
        self.client
            .containers()
            .update(self.req(api::UpdateContainerRequest {
                container: Some(c),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .or_fail(what)?;
        Ok(())
    }
}

/// The directory a prepare could not rename its new snapshot onto because
/// it already exists: only an overlayfs snapshot directory named by a
/// number (containerd's "rename <new> <dir>: file exists").
fn stale_snapshot_dir(message: &str) -> Option<PathBuf> {
    let rest = message.split("rename ").nth(1)?;
    let (paths, _) = rest.split_once(": file exists")?;
    let (new, dir) = paths.split_once(' ')?;
    let dir = Path::new(dir);
    let id = dir.file_name()?.to_str()?;
    let parent = dir.parent()?;
    let ok = id.bytes().all(|b| b.is_ascii_digit())
        && !id.is_empty()
        && parent.ends_with("io.containerd.snapshotter.v1.overlayfs/snapshots")
        && Path::new(new).parent() == Some(parent)
        && dir.is_absolute();
    ok.then(|| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_numbered_overlayfs_snapshot_directory_is_stale() {
        let root = "/d/root/io.containerd.snapshotter.v1.overlayfs/snapshots";
        let msg = format!("failed to rename: rename {root}/new-123 {root}/7: file exists");
        assert_eq!(
            stale_snapshot_dir(&msg),
            Some(PathBuf::from(format!("{root}/7")))
        );
        for bad in [
            format!("rename {root}/new-1 {root}/metadata.db: file exists"),
            format!("rename {root}/new-1 /etc/7: file exists"),
            format!("rename /tmp/new-1 {root}/7: file exists"),
            format!("rename {root}/new-1 {root}/7: permission denied"),
            "rename a b: file exists".to_string(),
            "snapshot k already exists".to_string(),
        ] {
            assert_eq!(stale_snapshot_dir(&bad), None, "{bad}");
        }
    }
}

/// How long an image unpack's active snapshot is taken to belong to a running
/// unpack (the sweep leaves it alone).
pub const UNPACK_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `key` is an image unpack's snapshot made less than
/// [`UNPACK_GRACE`] ago (or at an unknown time).
fn unpack_in_grace(key: &str, created: Option<&prost_types::Timestamp>) -> bool {
    if !key.starts_with("extract-") {
        return false;
    }
    let Some(t) = created else { return true };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(i64::MAX);
    now.saturating_sub(t.seconds) < UNPACK_GRACE.as_secs() as i64
}

#[cfg(test)]
mod unpack_grace_tests {
    use super::*;

    fn ago(secs: i64) -> prost_types::Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        prost_types::Timestamp {
            seconds: now - secs,
            nanos: 0,
        }
    }

    #[test]
    fn a_running_unpacks_snapshot_is_not_residue_but_an_old_one_is() {
        let key = "extract-0123 sha256:abc";
        assert!(unpack_in_grace(key, Some(&ago(5))));
        assert!(unpack_in_grace(key, None));
        assert!(!unpack_in_grace(key, Some(&ago(2 * 3600))));
        // a sandbox's snapshot is never in grace: the sweep decides by owner
        assert!(!unpack_in_grace("sb-1", Some(&ago(5))));
    }
}
