"""The builtin python image holds what E2B's SDK tests assume of a sandbox:
curl, git, ``python`` (python3) and sudo. sudo is installed without any
grant for the sandbox user, and sandboxes run with no_new_privs, so in a pool
that does not run as root ``sudo`` exists but refuses (unlike E2B, where the
user has passwordless sudo; see docs/compatibility.md)."""

from __future__ import annotations

from e2b import Sandbox

from sandpool_platform import PY_POOL_NAME, Sandpool


def run(sbx: Sandbox, line: str) -> tuple[int, str]:
    """Exit code and output (stdout + stderr) of a shell line that may fail."""
    r = sbx.commands.run(f"{{ {line} ; }} 2>&1; echo \"rc=$?\"", timeout=60)
    out, _, rc = r.stdout.rstrip("\n").rpartition("rc=")
    return int(rc), out


def test_the_python_image_has_curl_git_python_and_a_refusing_sudo(e2b_env: Sandpool):
    sbx = Sandbox.create(PY_POOL_NAME, timeout=120)
    try:
        rc, out = run(sbx, "curl --version")
        assert rc == 0 and out.startswith("curl "), out
        rc, out = run(sbx, "git --version")
        assert rc == 0 and out.startswith("git version"), out
        rc, out = run(sbx, "python --version")
        assert rc == 0 and out.startswith("Python 3."), out
        rc, out = run(sbx, "test -s /etc/ssl/certs/ca-certificates.crt")
        assert rc == 0, "CA bundle present"
        rc, out = run(sbx, "command -v sudo")
        assert rc == 0 and out.strip() == "/usr/bin/sudo", out
        # the sandbox user gains nothing through sudo
        rc, out = run(sbx, "sudo -n true")
        assert rc != 0, out
        rc, out = run(sbx, "sudo -n id -u")
        assert rc != 0 and "0" not in out.split(), out
        rc, out = run(sbx, "id -u")
        assert (rc, out.strip()) == (0, "61000"), out
    finally:
        sbx.kill()
