"""A platform restart loses no claim: sandboxes claimed through the real
OpenSandbox SDK keep their identity, state and files across a SIGTERM and a new
``sandpool serve`` on the same state directory (embedded store + containerd
labels), and the pool still accounts for them."""

from __future__ import annotations

import uuid
from datetime import timedelta

from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.models.sandboxes import SandboxFilter

import sandpool_platform
from sandpool_pytest_helpers import stop_process


def test_restart_loses_no_claim():
    binary, runtime = sandpool_platform.check_prerequisites()
    first = sandpool_platform.start(binary, runtime)
    second = None
    passed = False
    suite = uuid.uuid4().hex
    try:
        ids = []
        for i in range(2):
            sb = SandboxSync.create(
                "busybox",
                connection_config=first.config(),
                extensions={"poolRef": sandpool_platform.POOL_NAME},
                metadata={"suite": suite, "n": str(i)},
                timeout=timedelta(minutes=10),
            )
            sb.files.write_file("/tmp/marker", f"claim-{i}")
            ids.append(sb.id)

        stop_process(first.process, grace=sandpool_platform.STOP_GRACE, kill_group=True)
        second = sandpool_platform.start(binary, runtime, restart_of=first)

        for i, sid in enumerate(ids):
            sb = SandboxSync.connect(sid, connection_config=second.config())
            assert sb.get_info().status.state == "Running"
            assert sb.files.read_file("/tmp/marker") == f"claim-{i}"
            assert sb.commands.run("echo alive").logs.stdout[0].text.strip() == "alive"

        manager = SandboxManagerSync.create(second.config())
        listed = manager.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}))
        manager.close()
        assert sorted(s.id for s in listed.sandbox_infos) == sorted(ids)
        with second.client() as c:
            status = c.get(f"/v1/pools/{sandpool_platform.POOL_NAME}").json()["status"]
        assert status["allocated"] == 2

        for sid in ids:
            SandboxSync.connect(sid, connection_config=second.config()).kill()
        with second.client() as c:
            assert c.get(f"/v1/sandboxes/{ids[0]}").status_code == 404
            status = c.get(f"/v1/pools/{sandpool_platform.POOL_NAME}").json()["status"]
        assert status["allocated"] == 0
        passed = True
    finally:
        sandpool_platform.stop(second or first, keep_log=not passed)
