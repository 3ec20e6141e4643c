//! Upstream OpenSandbox's `/opt/opensandbox/bootstrap.sh`, for the pods
//! sandpool's Kubernetes controller makes.
//!
//! Upstream's `opensandbox-server` runs every sandbox's command through that
//! script: as the container command in template mode, and in pool mode as the
//! BatchSandbox task `/bin/sh -c "exec /opt/opensandbox/bootstrap.sh <entrypoint>"`.
//! Upstream's script starts execd and then the command. In sandpool's pods
//! sandpool's runtime already serves execd's API on port 44772, so this
//! script starts nothing else: it runs the command the way upstream's does
//! (`EXECD_BOOTSTRAP_PRE_SCRIPT` sourced first, `BOOTSTRAP_CMD`, `-c "..."`,
//! no arguments = a shell, `BOOTSTRAP_SHELL`), replacing itself with it.
//! The pod's install init container writes it (`--install-bootstrap-to`).

use std::path::Path;

/// The script (POSIX sh; the upstream server's task already needs `/bin/sh`).
pub const SCRIPT: &str = r#"#!/bin/sh
# Written by sandpool-runtime. Stands in for upstream OpenSandbox's
# bootstrap.sh: sandpool's runtime serves the execd API (port 44772) in this
# pod, so no execd is started here; the command runs as upstream runs it.
set -e
if [ -n "${EXECD_BOOTSTRAP_PRE_SCRIPT:-}" ]; then
	if [ -f "$EXECD_BOOTSTRAP_PRE_SCRIPT" ] && [ -r "$EXECD_BOOTSTRAP_PRE_SCRIPT" ]; then
		case "$EXECD_BOOTSTRAP_PRE_SCRIPT" in
		*/*) . "$EXECD_BOOTSTRAP_PRE_SCRIPT" ;;
		*) . "./$EXECD_BOOTSTRAP_PRE_SCRIPT" ;;
		esac
	else
		echo "warning: EXECD_BOOTSTRAP_PRE_SCRIPT=$EXECD_BOOTSTRAP_PRE_SCRIPT not found or not readable" >&2
	fi
fi
_sandpool_shell="${BOOTSTRAP_SHELL:-}"
if [ -z "$_sandpool_shell" ]; then
	_sandpool_shell="$(command -v bash || command -v sh || true)"
fi
if [ -n "${BOOTSTRAP_CMD:-}" ]; then
	set -- -c "$BOOTSTRAP_CMD"
fi
if [ "$#" -ge 1 ] && [ "$1" = "-c" ]; then
	shift
	exec "$_sandpool_shell" -c "$*"
fi
if [ "$#" -eq 0 ]; then
	exec "$_sandpool_shell"
fi
exec "$@"
"#;

/// Write [`SCRIPT`] to `dest` (mode 0755, its directory made when missing),
/// through a temporary name so a reader never sees half a file.
pub fn install(dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, SCRIPT)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, dest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Run the installed script with `args` and `env`; its stdout.
    fn run(args: &[&str], env: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opensandbox/bootstrap.sh");
        install(&path).unwrap();
        let out = std::process::Command::new(&path)
            .args(args)
            .env_remove("BOOTSTRAP_CMD")
            .env_remove("EXECD_BOOTSTRAP_PRE_SCRIPT")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn runs_the_command_as_upstreams_bootstrap_does() {
        // what the upstream server's pool task runs: the entrypoint's words
        assert_eq!(run(&["echo", "a b", "c"], &[]), "a b c\n");
        // `-c` joins the rest into one shell command line
        assert_eq!(run(&["-c", "echo one &&", "echo two"], &[]), "one\ntwo\n");
        // BOOTSTRAP_CMD wins over the arguments
        assert_eq!(
            run(&["echo", "ignored"], &[("BOOTSTRAP_CMD", "echo from-env")]),
            "from-env\n"
        );
        // no command: a shell (reading nothing, it exits)
        assert_eq!(run(&[], &[("BOOTSTRAP_SHELL", "/bin/sh")]), "");
    }

    #[test]
    fn the_pre_script_is_sourced_so_its_exports_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let pre = dir.path().join("pre.sh");
        std::fs::write(&pre, "export GREETING=hello\n").unwrap();
        let out = run(
            &["sh", "-c", "echo $GREETING"],
            &[("EXECD_BOOTSTRAP_PRE_SCRIPT", pre.to_str().unwrap())],
        );
        assert_eq!(out, "hello\n");
    }
}
