//! Host-side sandbox logs (the runtime's stdout and stderr, written by the
//! containerd shim): capped in size, removed with their sandbox.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use super::Agent;

/// How often logs are checked against their cap.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The marker a truncated log holds: at its start, unless the shim, which
/// keeps appending, wrote between the truncation and the marker.
pub const TRUNCATED: &str = "[sandpool: log truncated at its size cap]\n";

impl Agent {
    pub(super) fn logs_dir(&self) -> PathBuf {
        self.cfg.data_dir.join("logs")
    }

    /// The host-side log of sandbox `id`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir().join(format!("{id}.log"))
    }

    /// Truncate every log over the cap (the shim appends, so it goes on
    /// writing at the new end). Returns how many were truncated.
    pub(super) fn cap_logs(&self) -> usize {
        let mut n = 0;
        for (_, path) in log_files(&self.logs_dir()) {
            if cap_log(&path, self.cfg.log_cap_bytes) {
                n += 1;
            }
        }
        n
    }

    /// Remove the logs of sandboxes that no longer exist. Returns how many.
    pub(super) fn sweep_logs(&self) -> usize {
        let mut n = 0;
        for (id, path) in log_files(&self.logs_dir()) {
            if !self.owned(&id) && std::fs::remove_file(&path).is_ok() {
                n += 1;
            }
        }
        n
    }

    pub(super) fn remove_log(&self, id: &str) {
        let path = self.log_path(id);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(sandbox = id, error = %e, "removing the sandbox log failed");
        }
    }
}

/// `(sandbox id, path)` of every `*.log` in `dir`.
fn log_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".log")?.to_string();
            Some((id, e.path()))
        })
        .collect()
}

/// Truncate `path` to a marker line when it is over `cap` bytes.
fn cap_log(path: &Path, cap: u64) -> bool {
    let over = std::fs::metadata(path).is_ok_and(|m| m.len() > cap);
    if !over {
        return false;
    }
    let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) else {
        return false;
    };
    if f.set_len(0).is_err() {
        return false;
    }
    let _ = f.write_all(TRUNCATED.as_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_its_cap_starts_over_and_appends_continue_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sb-1.log");
        // the shim's view: a file opened for appending
        let mut shim = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        shim.write_all(&[b'x'; 4096]).unwrap();
        assert!(!cap_log(&path, 8192), "under the cap: untouched");
        shim.write_all(&[b'x'; 8192]).unwrap();
        assert!(cap_log(&path, 8192));
        shim.write_all(b"after\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{TRUNCATED}after\n"));
        assert_eq!(
            log_files(dir.path()),
            vec![("sb-1".to_string(), path.clone())]
        );
    }
}
