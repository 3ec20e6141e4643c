//! Upstream OpenSandbox's `/opt/opensandbox/bootstrap.sh` in the pods sandpool
//! runs its runtime in: what upstream's `opensandbox-server` runs every
//! sandbox's command through (in pool mode its BatchSandbox task is
//! `/bin/sh -c "exec /opt/opensandbox/bootstrap.sh <entrypoint>"`).
//!
//! The install init container writes sandpool-runtime's stand-in for it
//! (it starts only the command: the runtime already serves execd's API)
//! into the runtime's volume, and the main container sees that directory at
//! `/opt/opensandbox`, read-only. A template that mounts its own volume there
//! (upstream-shaped pools install upstream's execd and bootstrap.sh into it)
//! keeps it: its bootstrap.sh then runs as written, and the execd it starts
//! finds port 44772 taken by the runtime (bound before any command starts).

use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::{RUNTIME_DIR, RUNTIME_VOLUME};

/// Where upstream's server expects its bootstrap script's directory.
pub const BOOTSTRAP_DIR: &str = "/opt/opensandbox";
/// The directory of the runtime's volume holding the stand-in.
const SUBDIR: &str = "opensandbox";

/// The install init container's argument writing the script.
pub(super) fn install_arg() -> String {
    format!("--install-bootstrap-to={RUNTIME_DIR}/{SUBDIR}/bootstrap.sh")
}

/// Show the script's directory at [`BOOTSTRAP_DIR`] in `main`, unless the
/// container mounts something there itself.
pub(super) fn mount(main: &mut Container) {
    let mounts = main.volume_mounts.get_or_insert_with(Vec::new);
    if mounts
        .iter()
        .any(|m| m.mount_path.trim_end_matches('/') == BOOTSTRAP_DIR)
    {
        return;
    }
    mounts.push(VolumeMount {
        name: RUNTIME_VOLUME.into(),
        mount_path: BOOTSTRAP_DIR.into(),
        sub_path: Some(SUBDIR.into()),
        read_only: Some(true),
        ..Default::default()
    });
}
