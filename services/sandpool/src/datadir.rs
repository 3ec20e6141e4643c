//! The platform's state directory: readable by its owner only. It holds the
//! service token, the scheduler's store (every sandbox's runtime token),
//! checkpoints and sandbox logs.

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// `--data-dir` of the commands that work on a platform's state directory
/// from outside it (`key`, `image`).
#[derive(clap::Args, Debug, Clone)]
pub struct DataDirArg {
    /// The platform's state directory (`serve --data-dir`).
    #[arg(
        long,
        global = true,
        env = "SANDPOOL_DATA_DIR",
        default_value = "/var/lib/sandpool"
    )]
    pub data_dir: PathBuf,
}

/// Directories under the data dir that hold state (created 0700 here so
/// they never exist with looser modes).
const STATE_DIRS: &[&str] = &["agent", "agent/logs", "agent/checkpoints"];

/// Files under the data dir that hold secrets or state, made 0600 when present.
pub const STATE_FILES: &[&str] = &["service-token", "scheduler.redb"];

/// Create `dir` (and its state dirs) as 0700, or tighten them to it, and
/// make the state files already in it 0600: whatever the umask, and for
/// data dirs an older version left world-readable.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    for d in std::iter::once(dir.to_path_buf()).chain(STATE_DIRS.iter().map(|s| dir.join(s))) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("creating {}", d.display()))?;
        std::fs::set_permissions(&d, Permissions::from_mode(0o700))
            .with_context(|| format!("making {} 0700", d.display()))?;
    }
    for f in STATE_FILES.iter().map(|f| dir.join(f)) {
        match std::fs::set_permissions(&f, Permissions::from_mode(0o600)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r.with_context(|| format!("making {} 0600", f.display()))?,
        }
    }
    for entry in std::fs::read_dir(dir.join("agent/logs"))
        .with_context(|| format!("listing {}/agent/logs", dir.display()))?
    {
        let p = entry?.path();
        if p.is_file() {
            std::fs::set_permissions(&p, Permissions::from_mode(0o600))
                .with_context(|| format!("making {} 0600", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").mode() & 0o7777
    }

    /// A scratch dir of this test only (removed at the end).
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sandpool-datadir-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&d).expect("scratch dir");
        d
    }

    #[test]
    fn a_new_data_dir_is_0700_and_an_old_world_readable_one_is_tightened() {
        let root = scratch("modes");
        // new
        let fresh = root.join("new/data");
        prepare(&fresh).expect("prepared");
        assert_eq!(mode(&fresh), 0o700);
        for d in STATE_DIRS {
            assert_eq!(mode(&fresh.join(d)), 0o700, "{d}");
        }
        // as an older sandpool left it: 0755 dirs, 0644 files
        let old = root.join("old");
        std::fs::create_dir_all(old.join("agent/logs")).expect("mkdir");
        for d in [&old, &old.join("agent"), &old.join("agent/logs")] {
            std::fs::set_permissions(d, Permissions::from_mode(0o755)).expect("chmod");
        }
        let files: Vec<_> = STATE_FILES
            .iter()
            .map(|f| old.join(f))
            .chain([old.join("agent/logs/sb-1.log")])
            .collect();
        for f in &files {
            std::fs::write(f, "secret").expect("write");
            std::fs::set_permissions(f, Permissions::from_mode(0o644)).expect("chmod");
        }
        prepare(&old).expect("prepared");
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("agent/logs")), 0o700);
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
            assert_eq!(std::fs::read_to_string(f).expect("read"), "secret");
        }
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
