"""envd (49983) and the code interpreter (49999) of a checkpointable sandbox,
through the real e2b SDKs (2.63.0, e2b-code-interpreter 2.11.5), unchanged.

A checkpointable runsc sandbox (``ck-pool``) has no network: the node agent
reaches it through one tunnel to its runtime's port 44772, and the gateway
names envd's or the interpreter's port in a header the runtime dispatches
on. So commands and files work on the sandbox, on its snapshot's sandboxes
and on its forks, whose tunnels come back after the restore.
"""

from __future__ import annotations

import pytest
from e2b import Sandbox
from e2b_code_interpreter import Sandbox as CodeSandbox
from sandpool_platform import CK_POOL_NAME, Sandpool

TIMEOUT_S = 600


@pytest.fixture
def made():
    """E2B sandboxes and snapshot ids a test makes, removed afterwards."""
    things: dict[str, list] = {"sandboxes": [], "snapshots": []}
    yield things
    for s in things["sandboxes"]:
        try:
            s.kill()
        except Exception:  # already gone
            pass
    for sid in things["snapshots"]:
        try:
            Sandbox.delete_snapshot(sid)
        except Exception:
            pass


def assert_envd_works(sb: Sandbox, expected: str) -> None:
    """Commands and files through envd, and the file written before."""
    assert sb.files.read("/tmp/kept.txt") == expected
    r = sb.commands.run("cat /tmp/kept.txt && echo ok")
    assert (r.exit_code, r.stdout) == (0, f"{expected}ok\n"), r
    sb.files.write("/tmp/new.txt", sb.sandbox_id)
    assert sb.files.read("/tmp/new.txt") == sb.sandbox_id


def test_envd_of_a_checkpointable_sandbox_its_snapshot_and_forks(e2b_env: Sandpool, made):
    src = Sandbox.create(template=CK_POOL_NAME, timeout=TIMEOUT_S)
    made["sandboxes"].append(src)
    r = src.commands.run("echo hello")
    assert (r.exit_code, r.stdout) == (0, "hello\n"), r
    src.files.write("/tmp/kept.txt", "kept\n")
    assert_envd_works(src, "kept\n")

    snap = src.create_snapshot()
    made["snapshots"].append(snap.snapshot_id)
    # the source's tunnel came back after its checkpoint
    assert_envd_works(src, "kept\n")

    new = Sandbox.create(template=snap.snapshot_id, timeout=TIMEOUT_S)
    made["sandboxes"].append(new)
    assert new.sandbox_id != src.sandbox_id
    assert_envd_works(new, "kept\n")

    forks = src.fork(timeout=TIMEOUT_S, count=2)
    made["sandboxes"].extend(forks)
    assert len(forks) == 2
    for f in forks:
        assert_envd_works(f, "kept\n")
    assert src.files.read("/tmp/new.txt") == src.sandbox_id, "forks write their own files"


def test_code_interpreter_of_a_checkpointable_sandbox(e2b_env: Sandpool, made):
    sb = CodeSandbox.create(template=CK_POOL_NAME, timeout=TIMEOUT_S)
    made["sandboxes"].append(sb)
    execution = sb.run_code("x = 40\nx + 2")
    assert execution.error is None, execution.error
    assert execution.text == "42"
    sb.files.write("/tmp/kept.txt", "kept\n")
    assert_envd_works(sb, "kept\n")
