"""E2B snapshots and fork through the real e2b SDK (2.63.0), unchanged:
``Sandbox.create_snapshot``, ``Sandbox.create(<snapshot id>)``,
``list_snapshots``, ``Sandbox.delete_snapshot`` and ``Sandbox.fork``.

Sandboxes come from ``ck-pool`` (runsc without a network: checkpointable).
The state is made and read through the OpenSandbox SDK on the same sandbox
id: a Python process holding ``a`` in memory only, and a file (envd in such
sandboxes: ``test_e2b_ck_envd.py``).
"""

from __future__ import annotations

import pytest
from e2b import Sandbox
from opensandbox import SandboxSync
from sandpool_platform import CK_POOL_NAME, POOL_NAME, Sandpool
from test_snapshots_sdk import py, start_repl

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


def runtime_of(sandpool: Sandpool, sandbox: Sandbox) -> SandboxSync:
    """The OpenSandbox view of an E2B sandbox (its commands)."""
    return SandboxSync.connect(sandbox.sandbox_id, connection_config=sandpool.config())


def cat(sb: SandboxSync, path: str) -> str:
    execution = sb.commands.run(f"cat {path}")
    assert execution.exit_code == 0, execution
    return execution.text


def test_snapshot_carries_memory_and_files_into_a_new_sandbox(e2b_env: Sandpool, made):
    src = Sandbox.create(template=CK_POOL_NAME, timeout=TIMEOUT_S)
    made["sandboxes"].append(src)
    rt = runtime_of(e2b_env, src)
    start_repl(rt)
    assert py(rt, "a = 1") == ""
    rt.commands.run("echo kept > /tmp/state.txt")

    snap = src.create_snapshot(name="e2b-a-is-1")
    made["snapshots"].append(snap.snapshot_id)
    assert snap.names == ["e2b-a-is-1"]
    # the source goes on running from where it was
    assert py(rt, "a += 1; print(a)") == "2"

    # the snapshot's id is a template; so is its name
    for template in (snap.snapshot_id, "e2b-a-is-1"):
        new = Sandbox.create(template=template, timeout=TIMEOUT_S)
        made["sandboxes"].append(new)
        assert new.sandbox_id != src.sandbox_id
        nrt = runtime_of(e2b_env, new)
        assert py(nrt, "print(a)") == "1", "restored with the snapshot's memory"
        assert cat(nrt, "/tmp/state.txt") == "kept"
        assert py(nrt, "a += 10; print(a)") == "11"
    assert py(rt, "print(a)") == "2", "the source is untouched"

    listed = src.list_snapshots().next_items()
    assert [(s.snapshot_id, s.names) for s in listed] == [(snap.snapshot_id, ["e2b-a-is-1"])]
    by_name = Sandbox.list_snapshots(name="e2b-a-is-1").next_items()
    assert [s.snapshot_id for s in by_name] == [snap.snapshot_id]

    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    made["snapshots"].remove(snap.snapshot_id)
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    assert src.list_snapshots().next_items() == []


def test_fork_boots_sandboxes_from_the_running_one(e2b_env: Sandpool, made):
    src = Sandbox.create(template=CK_POOL_NAME, timeout=TIMEOUT_S)
    made["sandboxes"].append(src)
    rt = runtime_of(e2b_env, src)
    start_repl(rt)
    assert py(rt, "a = 7") == ""

    forks = src.fork(timeout=TIMEOUT_S, count=2)
    for f in forks:
        assert isinstance(f, Sandbox), f
        made["sandboxes"].append(f)
    for i, f in enumerate(forks):
        frt = runtime_of(e2b_env, f)
        assert py(frt, f"a += {i + 1}; print(a)") == str(8 + i)
    assert py(rt, "print(a)") == "7"
    # the fork's one checkpoint is the source's, listed and deletable
    listed = src.list_snapshots().next_items()
    assert [s.names for s in listed] == [[f"fork-of-{src.sandbox_id}"]]
    made["snapshots"].append(listed[0].snapshot_id)


def test_a_sandbox_that_cannot_be_checkpointed_says_why(e2b_env: Sandpool, made):
    sb = Sandbox.create(template=POOL_NAME, timeout=TIMEOUT_S)
    made["sandboxes"].append(sb)
    for attempt in (sb.create_snapshot, lambda: sb.fork(count=1)):
        with pytest.raises(Exception) as e:
            attempt()
        assert "checkpointable runsc template" in str(e.value), e.value
    with pytest.raises(Exception) as e:
        sb.create_snapshot(mode="filesystem")
    assert "memory" in str(e.value), e.value
