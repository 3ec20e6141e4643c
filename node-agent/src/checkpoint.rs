//! Checkpoints on the node's disk: `DATA_DIR/checkpoints/<id>/` holds
//! `image/` (what `runsc checkpoint` wrote: the sandbox's memory and kernel
//! state), `fs/` (the overlay upper directory of its root file system at the
//! checkpoint: what it had written to disk) and `meta.json` (what a restore
//! needs to rebuild the container around them).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

pub const META: &str = "meta.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub checkpoint_id: String,
    pub sandbox_id: String,
    pub pool: String,
    /// The sandbox's template as stored in its labels (JSON).
    pub template: String,
    /// The runtime inside keeps its access token in memory: restored
    /// sandboxes answer to the same one.
    pub token: String,
    pub image: String,
    pub created_unix_ms: i64,
    pub size_bytes: u64,
    /// the caller's (the scheduler's claim id)
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: PathBuf) -> Store {
        Store { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of checkpoint `id`; the id must be one we could have made.
    pub fn dir(&self, id: &str) -> Result<PathBuf> {
        if !crate::agent::valid_id(id) {
            return Err(AgentError::InvalidTemplate(format!(
                "bad checkpoint id {id:?}: use [A-Za-z0-9_-], at most 64"
            )));
        }
        Ok(self.root.join(id))
    }

    pub fn read(&self, id: &str) -> Result<Meta> {
        let path = self.dir(id)?.join(META);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AgentError::CheckpointNotFound(id.to_string()));
            }
            Err(e) => return Err(AgentError::io(path.display().to_string(), e)),
        };
        serde_json::from_str(&text)
            .map_err(|e| AgentError::checkpoint(format!("{id}: unreadable {META}"), e))
    }

    /// Write `meta.json` last and atomically: a checkpoint without it is
    /// incomplete and never listed.
    pub fn write(&self, meta: &Meta) -> Result<()> {
        let dir = self.dir(&meta.checkpoint_id)?;
        let tmp = dir.join(format!("{META}.tmp"));
        let body = serde_json::to_vec_pretty(meta)
            .map_err(|e| AgentError::checkpoint(format!("encoding {META}"), e))?;
        std::fs::write(&tmp, body).map_err(|e| AgentError::io(tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, dir.join(META))
            .map_err(|e| AgentError::io(dir.display().to_string(), e))
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Vec<Meta> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        let mut v: Vec<Meta> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter_map(|id| self.read(&id).ok())
            .collect();
        v.sort_by(|a, b| {
            (a.created_unix_ms, &a.checkpoint_id).cmp(&(b.created_unix_ms, &b.checkpoint_id))
        });
        v
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.dir(id)?;
        if !dir.join(META).exists() {
            return Err(AgentError::CheckpointNotFound(id.to_string()));
        }
        std::fs::remove_dir_all(&dir).map_err(|e| AgentError::io(dir.display().to_string(), e))
    }

    /// Directories without `meta.json` (a checkpoint that failed half-way).
    pub fn incomplete(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !p.join(META).exists())
            .collect()
    }
}

/// Bytes in regular files under `path` (symlinks not followed).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if md.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    } else if md.is_file() {
        md.len()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, at: i64) -> Meta {
        Meta {
            checkpoint_id: id.into(),
            sandbox_id: "sb-1".into(),
            pool: "p".into(),
            template: "{}".into(),
            token: "t".into(),
            image: "sandpool/python:3".into(),
            created_unix_ms: at,
            size_bytes: 12,
            owner: "claim-1".into(),
            name: String::new(),
        }
    }

    #[test]
    fn write_read_list_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::new(tmp.path().to_path_buf());
        for (id, at) in [("ck-b", 2), ("ck-a", 1)] {
            std::fs::create_dir_all(s.dir(id).unwrap()).unwrap();
            s.write(&meta(id, at)).unwrap();
        }
        std::fs::create_dir_all(s.dir("ck-half").unwrap()).unwrap();
        assert_eq!(s.read("ck-a").unwrap(), meta("ck-a", 1));
        let ids: Vec<_> = s.list().into_iter().map(|m| m.checkpoint_id).collect();
        assert_eq!(ids, ["ck-a", "ck-b"], "complete ones, oldest first");
        assert_eq!(s.incomplete(), vec![s.dir("ck-half").unwrap()]);
        s.delete("ck-a").unwrap();
        assert!(matches!(
            s.read("ck-a"),
            Err(AgentError::CheckpointNotFound(_))
        ));
        assert!(matches!(
            s.delete("ck-a"),
            Err(AgentError::CheckpointNotFound(_))
        ));
        assert!(
            matches!(s.delete("ck-half"), Err(AgentError::CheckpointNotFound(_))),
            "incomplete ones are not checkpoints"
        );
    }

    #[test]
    fn ids_cannot_leave_the_store() {
        let s = Store::new("/var/lib/sandpool/checkpoints".into());
        for bad in ["", "..", "../etc", "a/b", "x y", &"a".repeat(65)] {
            assert!(
                matches!(s.dir(bad), Err(AgentError::InvalidTemplate(_))),
                "{bad:?}"
            );
            assert!(
                matches!(s.read(bad), Err(AgentError::InvalidTemplate(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn disk_usage_counts_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/x"), [0u8; 100]).unwrap();
        std::fs::write(tmp.path().join("a/b/y"), [0u8; 23]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("a/link")).unwrap();
        assert_eq!(disk_usage(tmp.path()), 123);
    }
}
