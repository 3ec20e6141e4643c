//! Disk limits: what a sandbox writes to its root file system (the overlay
//! upper directory of its snapshot) is measured every few seconds, and a
//! sandbox over its limit is stopped and reported FAILED, the way the
//! kubelet evicts a pod over its `ephemeral-storage` limit.
//!
//! containerd 1.6's overlayfs snapshotter has no quota, and the node's file
//! system need not support project quotas, so the limit is enforced after
//! the fact: a sandbox writing at full disk speed gets past it by at most
//! what it writes in one [`CHECK_EVERY`] period.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use sandpool_proto::v1 as pb;

use super::{Agent, Kill};

/// How often running sandboxes' disk use is measured.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Default disk limit of one sandbox: what it may write to its root file
/// system (`sandpool serve --sandbox-disk-limit`).
pub const DEFAULT_DISK_LIMIT_BYTES: u64 = 4 << 30;

/// Bytes on disk (allocated blocks) under `dir`, hard links counted once;
/// the walk stops as soon as the sum is over `stop_above`. Entries that
/// vanish while it walks are skipped.
pub fn disk_usage(dir: &Path, stop_above: u64) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut linked = HashSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !meta.is_dir() && !linked.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                todo.push(entry.path());
            }
            if total > stop_above {
                return Ok(total);
            }
        }
    }
    Ok(total)
}

impl Agent {
    /// Measure every running sandbox's writes and stop those over the
    /// limit. Returns the ids stopped.
    pub(super) async fn check_disks(&self) -> Vec<String> {
        let limit = self.cfg.disk_limit_bytes;
        let running: Vec<String> = self
            .lock()
            .values()
            .filter(|s| matches!(s.state, pb::SandboxState::Warm | pb::SandboxState::Claimed))
            .map(|s| s.id.clone())
            .collect();
        let mut stopped = Vec::new();
        for id in running {
            // the upper dir is fixed for a container's life: asked once
            let cached = self.upperdirs.lock().get(&id).cloned();
            let upper = match cached {
                Some(u) => u,
                None => {
                    let Ok(u) = self.ctr.rootfs_upperdir(&id).await else {
                        continue;
                    };
                    self.upperdirs.lock().insert(id.clone(), u.clone());
                    u
                }
            };
            let Some(used) = measure(upper, limit).await else {
                // gone (e.g. restarted meanwhile): asked again next time
                self.upperdirs.lock().remove(&id);
                continue;
            };
            if used > limit {
                tracing::warn!(sandbox = %id, used, limit, "sandbox over its disk limit; stopping it");
                self.record_kill(&id, Kill::Disk { limit });
                if let Err(e) = self.ctr.kill_all(&id).await {
                    tracing::warn!(sandbox = %id, error = %e, "stopping a sandbox over its disk limit failed");
                    continue;
                }
                stopped.push(id);
            }
        }
        stopped
    }
}

/// [`disk_usage`] off the async threads; `None` when `upper` is unreadable.
async fn measure(upper: PathBuf, limit: u64) -> Option<u64> {
    tokio::task::spawn_blocking(move || disk_usage(&upper, limit).ok())
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_blocks_once_per_inode_and_stops_early() {
        let d = tempfile::tempdir().expect("tempdir");
        let sub = d.path().join("a/b");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let big = sub.join("big");
        std::fs::write(&big, vec![1u8; 3 << 20]).expect("write");
        std::fs::hard_link(&big, d.path().join("again")).expect("link");
        // a sparse file takes no blocks for its hole
        let sparse = std::fs::File::create(d.path().join("sparse")).expect("create");
        sparse.set_len(1 << 30).expect("set_len");

        let used = disk_usage(d.path(), u64::MAX).expect("usage");
        assert!(
            (3 << 20..4 << 20).contains(&used),
            "3 MiB once, not twice, and no hole: {used}"
        );
        let early = disk_usage(d.path(), 1 << 20).expect("usage");
        assert!(early > 1 << 20, "over the stop value: {early}");
        assert!(disk_usage(&d.path().join("missing"), u64::MAX).is_err());
    }
}
