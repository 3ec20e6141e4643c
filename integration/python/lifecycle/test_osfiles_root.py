"""OpenSandbox execd's file API acts as upstream's root execd does (issue 17),
through the real opensandbox==1.1.1 SDK on real containerd: an upload's
``owner``/``group``/``mode`` are applied (names looked up in the sandbox's own
/etc/passwd and /etc/group), and files and directories are read, written and
moved where only root could (a directory without the search bit, /root).

The runtime keeps only CAP_CHOWN, CAP_DAC_OVERRIDE and CAP_FOWNER for this;
the commands it runs have no capability at all, so user code stays the
unprivileged ``user`` (uid 61000)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sandpool_platform import PY_POOL_NAME, Sandpool

from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.filesystem import MoveEntry, SetPermissionEntry, WriteEntry

# CAP_CHOWN (0) | CAP_DAC_OVERRIDE (1) | CAP_FOWNER (3)
RUNTIME_CAPS = "000000000000000b"
NO_CAPS = "0000000000000000"


@pytest.fixture
def sandbox(sandpool: Sandpool):
    sb = SandboxSync.create(
        "python",
        connection_config=sandpool.config(),
        extensions={"poolRef": PY_POOL_NAME},
        timeout=timedelta(minutes=5),
        ready_timeout=timedelta(seconds=60),
    )
    try:
        yield sb
    finally:
        try:
            sb.kill()
        finally:
            sb.close()


def shell(sb: SandboxSync, cmd: str) -> tuple[int, str]:
    execution = sb.commands.run(cmd)
    out = "\n".join(m.text for m in execution.logs.stdout)
    err = "\n".join(m.text for m in execution.logs.stderr)
    return execution.exit_code, (out + err).strip()


def test_upload_applies_owner_group_and_mode(sandbox: SandboxSync):
    base = f"/tmp/osfiles-{uuid.uuid4().hex[:8]}"
    sandbox.files.write_files(
        [
            WriteEntry(path=f"{base}/nobody.txt", data="owned", mode=640, owner="nobody", group="nogroup"),
            WriteEntry(path=f"{base}/root.txt", data="root's", mode=600, owner="root", group="root"),
        ]
    )
    assert shell(sandbox, f"stat -c '%U:%G %a' {base}/nobody.txt {base}/root.txt") == (
        0,
        "nobody:nogroup 640\nroot:root 600",
    )
    info = sandbox.files.get_file_info([f"{base}/nobody.txt"])[f"{base}/nobody.txt"]
    assert (info.owner, info.group, info.mode) == ("nobody", "nogroup", 640)
    # the runtime reads a file only root may read
    assert sandbox.files.read_file(f"{base}/root.txt") == "root's"

    # chmod/chown of an existing file, back to the sandbox user
    sandbox.files.set_permissions([SetPermissionEntry(path=f"{base}/root.txt", owner="user", group="user", mode=644)])
    assert shell(sandbox, f"stat -c '%U:%G %a' {base}/root.txt") == (0, "user:user 644")

    # an owner the sandbox does not know is refused, and nothing is left behind
    with pytest.raises(SandboxApiException) as excinfo:
        sandbox.files.write_files([WriteEntry(path=f"{base}/ghost.txt", data="x", owner="no-such-user-osf")])
    # 400 naming the user (upstream: 500 "failed to lookup user")
    assert excinfo.value.status_code == 400, excinfo.value
    assert "unknown user no-such-user-osf" in str(excinfo.value), excinfo.value
    assert shell(sandbox, f"ls -A {base}") == (0, "nobody.txt\nroot.txt")


def test_file_api_acts_as_root(sandbox: SandboxSync):
    base = f"/tmp/osfiles-{uuid.uuid4().hex[:8]}"
    # a directory without the x bit: only DAC override can create entries in it
    sandbox.files.create_directories([WriteEntry(path=f"{base}/closed", mode=644)])
    sandbox.files.write_file(f"{base}/moved.txt", "moving")
    sandbox.files.move_files([MoveEntry(src=f"{base}/moved.txt", dest=f"{base}/closed/moved.txt")])
    assert sandbox.files.read_file(f"{base}/closed/moved.txt") == "moving"

    # /root is root's (0700): the API writes there, the sandbox's user cannot read it
    sandbox.files.write_file("/root/osfiles.txt", "secret")
    assert sandbox.files.read_file("/root/osfiles.txt") == "secret"
    code, out = shell(sandbox, "cat /root/osfiles.txt")
    assert code != 0 and "Permission denied" in out, (code, out)
    sandbox.files.delete_files(["/root/osfiles.txt"])
    code, _ = shell(sandbox, "test -e /root/osfiles.txt")
    assert code != 0


def test_commands_run_without_capabilities(sandbox: SandboxSync):
    code, out = shell(sandbox, "id -u; grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status")
    assert code == 0, out
    lines = out.split("\n")
    assert lines[0] == "61000"
    assert [line.split()[1] for line in lines[1:]] == [NO_CAPS] * 4, out
    # ...so a command cannot give a file away
    code, out = shell(sandbox, "touch /tmp/mine && chown nobody /tmp/mine")
    assert code != 0 and "Operation not permitted" in out, (code, out)
    # while the runtime (PID 1 and the server it forked) holds only the file capabilities
    code, out = shell(sandbox, "grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/1/status")
    assert [line.split()[1] for line in out.split("\n")] == [NO_CAPS, RUNTIME_CAPS, RUNTIME_CAPS, NO_CAPS], out
