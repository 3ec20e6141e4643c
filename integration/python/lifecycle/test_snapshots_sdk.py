"""Snapshots (checkpoint/restore/fork of memory and files) through the real
OpenSandbox SDK (opensandbox==1.1.1), unchanged: ``Sandbox.create_snapshot``,
``Sandbox.create(snapshot_id=...)``, ``SandboxManager`` get/list/delete.

Sandboxes come from ``ck-pool``: runsc without a network (checkpointable), on
the Debian + python3 image. A Python process keeps ``a`` in memory only; a
snapshot taken while ``a = 1`` brings back ``a = 1`` in every sandbox restored
from it, each going on on its own.
"""

from __future__ import annotations

import os
from datetime import timedelta

import httpx
import pytest
from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.sandboxes import SnapshotFilter
from sandpool_platform import CK_POOL_NAME, POOL_IMAGE, POOL_NAME, Sandpool

TIMEOUT = timedelta(minutes=10)

# A Python REPL whose only state is its memory: it runs what /tmp/in.py holds
# in one namespace and leaves what it printed in /tmp/out.
REPL = """\
import contextlib, io, os, time
g = {}
while True:
    try:
        src = open('/tmp/in.py').read()
        os.remove('/tmp/in.py')
    except FileNotFoundError:
        time.sleep(0.01)
        continue
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(src, g)
    open('/tmp/out.tmp', 'w').write(buf.getvalue())
    os.rename('/tmp/out.tmp', '/tmp/out')
"""


def py(sandbox: SandboxSync, src: str) -> str:
    cmd = (
        f"printf '%s' '{src}' > /tmp/in.tmp && mv /tmp/in.tmp /tmp/in.py && "
        "for i in $(seq 1000); do [ -f /tmp/out ] && break; sleep 0.01; done; cat /tmp/out && rm -f /tmp/out"
    )
    execution = sandbox.commands.run(cmd)
    assert execution.exit_code == 0, execution
    return execution.text


def start_repl(sandbox: SandboxSync) -> None:
    code = REPL.encode().hex()
    sandbox.commands.run(f"exec python3 -u -c \"exec(bytes.fromhex('{code}'))\"", opts=RunCommandOpts(background=True))
    assert py(sandbox, "print(40 + 2)") == "42"


@pytest.fixture
def made(sandpool: Sandpool):
    """Sandboxes and snapshots a test makes, removed afterwards."""
    things: dict[str, list] = {"sandboxes": [], "snapshots": []}
    yield things
    manager = SandboxManagerSync.create(sandpool.config())
    for s in things["sandboxes"]:
        try:
            s.kill()
        except Exception:  # already gone
            pass
    for sid in things["snapshots"]:
        try:
            manager.delete_snapshot(sid)
        except Exception:
            pass


def test_snapshot_restores_memory_state_into_independent_sandboxes(sandpool: Sandpool, made):
    config = sandpool.config()
    sb = SandboxSync.create(POOL_IMAGE, connection_config=config, extensions={"poolRef": CK_POOL_NAME}, timeout=TIMEOUT,
                            ready_timeout=timedelta(seconds=90))
    made["sandboxes"].append(sb)
    start_repl(sb)
    assert py(sb, "a = 1") == ""

    snap = sb.create_snapshot(name="a-is-1")
    made["snapshots"].append(snap.id)
    assert (snap.sandbox_id, snap.name, snap.status.state) == (sb.id, "a-is-1", "Ready")
    # the snapshotted sandbox goes on running from where it was
    assert py(sb, "a += 1; print(a)") == "2"

    forks = []
    for _ in range(3):
        f = SandboxSync.create(snapshot_id=snap.id, connection_config=config, timeout=TIMEOUT, ready_timeout=timedelta(seconds=90))
        made["sandboxes"].append(f)
        forks.append(f)
    assert len({f.id for f in forks} | {sb.id}) == 4
    for i, f in enumerate(forks):
        assert py(f, "print(a)") == "1", "restored with the snapshot's memory"
        assert py(f, f"a += {10 * (i + 1)}; print(a)") == str(1 + 10 * (i + 1))
    for i, f in enumerate(forks):
        assert py(f, "print(a)") == str(1 + 10 * (i + 1)), f"fork {i} kept its own state"
    assert py(sb, "print(a)") == "2", "the original is untouched by its forks"

    manager = SandboxManagerSync.create(config)
    assert manager.get_snapshot(snap.id).sandbox_id == sb.id
    listed = manager.list_snapshots(SnapshotFilter(sandbox_id=sb.id))
    assert [s.id for s in listed.snapshot_infos] == [snap.id]
    manager.delete_snapshot(snap.id)
    made["snapshots"].remove(snap.id)
    with pytest.raises(SandboxApiException):
        manager.get_snapshot(snap.id)


def test_snapshot_errors_are_clear(sandpool: Sandpool, made):
    config = sandpool.config()
    with sandpool.client() as client:
        r = client.post("/v1/sandboxes", json={"snapshotId": "ck-doesnotexist", "timeout": 600})
        assert (r.status_code, r.json()["code"]) == (404, "SNAPSHOT_NOT_FOUND"), r.text
        r = client.post("/v1/sandboxes", json={"snapshotId": "ck-x", "image": {"uri": "python"}})
        assert (r.status_code, r.json()["code"]) == (400, "INVALID_REQUEST"), r.text
        r = client.delete("/v1/snapshots/ck-doesnotexist")
        assert r.status_code == 404, r.text
        r = client.post("/v1/sandboxes/no-such-sandbox/snapshots", json={})
        assert (r.status_code, r.json()["code"]) == (404, "SANDBOX_NOT_FOUND"), r.text

    # a runc (networked) sandbox cannot be snapshotted on this node, and says why
    sb = SandboxSync.create(POOL_IMAGE, connection_config=config, extensions={"poolRef": POOL_NAME}, timeout=TIMEOUT)
    made["sandboxes"].append(sb)
    with sandpool.client() as client:
        r = client.post(f"/v1/sandboxes/{sb.id}/snapshots", json={})
        assert (r.status_code, r.json()["code"]) == (501, "NOT_IMPLEMENTED"), r.text
        assert "CRIU" in r.json()["message"], r.text
    # the E2B API's fork answers 501 with the reason, not a bare 404
    with httpx.Client(base_url=sandpool.url, headers={"X-API-Key": sandpool.api_key}, timeout=30) as e2b:
        r = e2b.post(f"/sandboxes/{sb.id}/fork", json={"count": 2})
        assert r.status_code == 501 and "fork" in r.text, r.text
    with sandpool.client() as client:
        # a paused sandbox is resumed first
        ck = SandboxSync.create(POOL_IMAGE, connection_config=config, extensions={"poolRef": CK_POOL_NAME}, timeout=TIMEOUT,
                                ready_timeout=timedelta(seconds=90))
        made["sandboxes"].append(ck)
        # it has no network: only its runtime's ports are reachable (through
        # the node agent's tunnel), never a host port
        r = client.get(f"/v1/sandboxes/{ck.id}/proxy/8080/health")
        assert (r.status_code, r.json()["code"]) == (501, "NOT_IMPLEMENTED"), r.text
        assert client.get(f"/v1/sandboxes/{ck.id}/proxy/49983/health").status_code == 204
        ck.pause()
        r = client.post(f"/v1/sandboxes/{ck.id}/snapshots", json={})
        assert (r.status_code, r.json()["code"]) == (409, "CONFLICT"), r.text
        assert "resume" in r.json()["message"], r.text


def _cgroups_with_memory_limit(limit: int) -> list[str]:
    """The host's cgroups whose memory limit is ``limit`` bytes (v2
    ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    found = []
    v1 = "/sys/fs/cgroup/memory"
    for root, _, files in os.walk(v1 if os.path.isdir(v1) else "/sys/fs/cgroup"):
        for name in {"memory.max", "memory.limit_in_bytes"} & set(files):
            try:
                if open(os.path.join(root, name)).read().strip() == str(limit):
                    found.append(root)
            except OSError:
                pass
    return found


def test_a_restore_takes_its_limits_and_no_other_entrypoint(sandpool: Sandpool, made):
    """A memory restore sets the create's ``resourceLimits`` on the restored
    sandbox's cgroup; the SDK's default entrypoint, the checkpointed claim's
    own, is taken, and another (a second process) is 400 naming it."""
    config = sandpool.config()
    sb = SandboxSync.create(POOL_IMAGE, connection_config=config, extensions={"poolRef": CK_POOL_NAME}, timeout=TIMEOUT,
                            ready_timeout=timedelta(seconds=90))
    made["sandboxes"].append(sb)
    snap = sb.create_snapshot(name="limits")
    made["snapshots"].append(snap.id)
    limit = 777 * 2**20  # a value no other sandbox has
    assert _cgroups_with_memory_limit(limit) == []
    f = SandboxSync.create(snapshot_id=snap.id, connection_config=config, timeout=TIMEOUT,
                           resource={"cpu": "1", "memory": "777Mi"}, ready_timeout=timedelta(seconds=90))
    made["sandboxes"].append(f)
    assert len(_cgroups_with_memory_limit(limit)) == 1, "the restored sandbox's cgroup has the create's limit"
    assert f.commands.run("echo alive").text.strip() == "alive"
    with sandpool.client() as client:
        r = client.post("/v1/sandboxes", json={"snapshotId": snap.id, "timeout": 600, "entrypoint": ["sleep", "99"],
                                               "resourceLimits": {"cpu": "1", "memory": "2Gi"}})
        assert (r.status_code, r.json()["code"]) == (400, "INVALID_REQUEST"), r.text
        assert "entrypoint" in r.json()["message"] and "run two" in r.json()["message"], r.text
