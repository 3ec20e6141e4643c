//! All-or-nothing uploads: every file of a request is written to a temp file
//! next to its target and renamed into place only once the whole request was
//! received. A request refused part-way (too many files, a file too large, a
//! malformed part) leaves neither files nor the directories it created.

use std::path::{Path, PathBuf};

use super::{UploadLimits, UploadedFile};
use crate::error::{Result, RuntimeError};

/// One received file waiting for the commit.
pub(super) struct Staged {
    pub tmp: PathBuf,
    pub target: PathBuf,
    pub path: String,
    pub size: u64,
}

/// The files and directories of one upload; dropping it before [`commit`]
/// removes them.
///
/// [`commit`]: Staging::commit
#[derive(Default)]
pub(super) struct Staging {
    files: Vec<Staged>,
    /// Directories this upload created, ancestors first.
    dirs: Vec<PathBuf>,
    /// Who owns what the upload creates (uid, gid); `None`: the runtime.
    owner: Option<(u32, u32)>,
}

impl Staging {
    /// An upload whose files and new directories `owner` owns.
    pub fn owned_by(owner: Option<(u32, u32)>) -> Self {
        Staging {
            files: Vec::new(),
            dirs: Vec::new(),
            owner,
        }
    }

    /// Give `path` (created by this upload) to its owner, if it has one.
    pub fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| RuntimeError::io(&path.to_string_lossy(), e))?;
        }
        Ok(())
    }

    /// Create `dir` and its missing ancestors, remembering the ones created.
    pub async fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.as_os_str().is_empty() || tokio::fs::symlink_metadata(d).await.is_ok() {
                break;
            }
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| RuntimeError::io(&dir.to_string_lossy(), e))?;
        for d in missing.iter().rev() {
            self.chown(d)?;
        }
        self.dirs.extend(missing.into_iter().rev());
        Ok(())
    }

    pub fn push(&mut self, f: Staged) {
        self.files.push(f);
    }

    /// Refuse another file once `limits.max_files` are staged.
    pub fn check_room(&self, limits: &UploadLimits) -> Result<()> {
        if self.files.len() >= limits.max_files {
            return Err(RuntimeError::PayloadTooLarge(format!(
                "more than {} files",
                limits.max_files
            )));
        }
        Ok(())
    }

    /// [`commit`](Staging::commit) a request that staged at least one file.
    pub async fn commit_some(self) -> Result<Vec<UploadedFile>> {
        if self.files.is_empty() {
            return Err(RuntimeError::InvalidRequest("no files in upload".into()));
        }
        self.commit().await
    }

    /// Rename every staged file into place, in the order received. Should a
    /// rename fail, the files not yet renamed are removed.
    pub async fn commit(mut self) -> Result<Vec<UploadedFile>> {
        let mut rest = std::mem::take(&mut self.files).into_iter();
        let mut done = Vec::new();
        while let Some(f) = rest.next() {
            if let Err(e) = tokio::fs::rename(&f.tmp, &f.target).await {
                let path = f.path.clone();
                self.files = std::iter::once(f).chain(rest).collect();
                return Err(RuntimeError::io(&path, e));
            }
            done.push(UploadedFile {
                path: f.path,
                size: f.size,
            });
        }
        self.dirs.clear();
        Ok(done)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for f in self.files.drain(..) {
            let _ = std::fs::remove_file(&f.tmp);
        }
        // only empty directories go: whatever else lives there stays
        for d in self.dirs.drain(..).rev() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}
