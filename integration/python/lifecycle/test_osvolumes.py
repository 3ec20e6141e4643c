"""Issue 17: OpenSandbox create ``volumes`` through the real opensandbox==1.1.1
SDK on real containerd. ``host`` volumes mount what is under the platform's
``--allowed-host-path`` (``<base>/hostvols``, sandpool_platform.start), read-write
or read-only; ``pvc`` volumes are named volumes under ``<data>/agent/volumes``,
made (owned by the sandbox user) when missing; ``subPath`` shows only its
contents. Paths outside the allowed roots, traversal and symlink escapes are
400 naming the volume or path; ``ossfs`` is 501.

Sandboxes run as uid 61000: a host directory mounted read-write must be
writable by it (upstream runs as root; docs/compatibility.md).
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sandpool_platform import POOL_IMAGE, POOL_NAME, RUNSC_POOL_NAME, Sandpool
from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.sandboxes import OSSFS, PVC, Host, Volume

SANDBOX_UID = 61000


def create(sandpool: Sandpool, tracker: list[SandboxSync], volumes: list[Volume], pool: str | None = POOL_NAME) -> SandboxSync:
    """A sandbox with ``volumes``: claimed from ``pool``, or a cold create of the image."""
    sandbox = SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(),
        extensions={"poolRef": pool} if pool else None,
        timeout=timedelta(minutes=10),
        ready_timeout=timedelta(seconds=60),
        volumes=volumes,
    )
    tracker.append(sandbox)
    return sandbox


def run(sandbox: SandboxSync, cmd: str) -> tuple[str, bool]:
    """(stdout, succeeded) of a shell command in the sandbox."""
    r = sandbox.commands.run(cmd)
    return "".join(m.text + "\n" for m in r.logs.stdout), r.error is None


def refused(sandpool: Sandpool, volume: Volume, pool: str | None = POOL_NAME) -> SandboxApiException:
    with pytest.raises(SandboxApiException) as e:
        create(sandpool, [], [volume], pool)
    return e.value


def host_dir(sandpool: Sandpool, writable: bool) -> Path:
    d = sandpool.base_dir / "hostvols" / ("h-" + uuid.uuid4().hex[:8])
    d.mkdir(parents=True)
    (d / "marker.txt").write_text("host-marker")
    if writable:
        os.chown(d, SANDBOX_UID, SANDBOX_UID)
    return d


def named_volume(sandpool: Sandpool, name: str) -> Path:
    return sandpool.base_dir / "data" / "agent" / "volumes" / name


def test_osvolumes_host_volume_read_write_and_read_only(sandpool: Sandpool, sandboxes):
    d = host_dir(sandpool, writable=True)
    sandbox = create(sandpool, sandboxes, [
        Volume(name="rw", host=Host(path=str(d)), mountPath="/mnt/rw", readOnly=False),
        Volume(name="ro", host=Host(path=str(d)), mountPath="/mnt/ro", readOnly=True),
    ])
    assert run(sandbox, "cat /mnt/rw/marker.txt") == ("host-marker\n", True)
    assert run(sandbox, "echo from-sandbox > /mnt/rw/out.txt")[1]
    assert (d / "out.txt").read_text() == "from-sandbox\n", "writes reach the host"
    assert run(sandbox, "cat /mnt/ro/out.txt") == ("from-sandbox\n", True), "the same directory"
    _, ok = run(sandbox, "touch /mnt/ro/should-fail.txt")
    assert not ok, "a read-only mount refuses writes"
    assert not (d / "should-fail.txt").exists()
    assert run(sandbox, "test -d /mnt/rw && echo OK") == ("OK\n", True)


def test_osvolumes_cold_create_takes_a_host_sub_path(sandpool: Sandpool, sandboxes):
    d = host_dir(sandpool, writable=False)
    (d / "inner").mkdir()
    (d / "inner" / "only.txt").write_text("inner")
    sandbox = create(sandpool, sandboxes, [
        Volume(name="sub", host=Host(path=str(d)), mountPath="/data", readOnly=True, subPath="inner"),
    ], pool=None)
    assert run(sandbox, "ls /data") == ("only.txt\n", True)


def test_osvolumes_named_volume_is_made_writable_and_outlives_the_sandbox(sandpool: Sandpool, sandboxes):
    name = "pvc-" + uuid.uuid4().hex[:8]
    sandbox = create(sandpool, sandboxes, [Volume(name="data", pvc=PVC(claimName=name), mountPath="/mnt/pvc")])
    vol = named_volume(sandpool, name)
    assert vol.is_dir() and vol.stat().st_uid == SANDBOX_UID, "made, owned by the sandbox user"
    assert run(sandbox, "echo kept > /mnt/pvc/k.txt")[1]
    sandbox.kill()
    assert (vol / "k.txt").read_text() == "kept\n", "the volume outlives the sandbox"
    again = create(sandpool, sandboxes, [Volume(name="data", pvc=PVC(claimName=name), mountPath="/mnt/pvc", readOnly=True)])
    assert run(again, "cat /mnt/pvc/k.txt") == ("kept\n", True)
    assert not run(again, "touch /mnt/pvc/no.txt")[1], "read-only"
    # createIfNotExists=false: a missing volume is refused, not made
    missing = "pvc-" + uuid.uuid4().hex[:8]
    e = refused(sandpool, Volume(name="m", pvc=PVC(claimName=missing, createIfNotExists=False), mountPath="/m"))
    assert missing in str(e), e
    assert not named_volume(sandpool, missing).exists()


def test_osvolumes_named_volume_sub_path_shows_only_its_contents(sandpool: Sandpool, sandboxes):
    name = "pvc-" + uuid.uuid4().hex[:8]
    vol = named_volume(sandpool, name)
    (vol / "datasets" / "train").mkdir(parents=True)
    (vol / "marker.txt").write_text("top")
    (vol / "datasets" / "train" / "marker.txt").write_text("pvc-subpath-marker")
    sandbox = create(sandpool, sandboxes, [
        Volume(name="train", pvc=PVC(claimName=name), mountPath="/mnt/train", readOnly=True, subPath="datasets/train"),
    ])
    assert run(sandbox, "ls /mnt/train") == ("marker.txt\n", True)
    assert run(sandbox, "cat /mnt/train/marker.txt") == ("pvc-subpath-marker\n", True)


def test_osvolumes_paths_outside_the_allowed_roots_are_refused(sandpool: Sandpool):
    e = refused(sandpool, Volume(name="etc", host=Host(path="/etc"), mountPath="/mnt/etc", readOnly=True))
    assert e.status_code == 400 and "/etc" in str(e), e
    d = host_dir(sandpool, writable=False)
    os.symlink("/etc", d / "escape")
    e = refused(sandpool, Volume(name="link", host=Host(path=str(d / "escape")), mountPath="/m", readOnly=True))
    assert e.status_code == 400 and "escape" in str(e), e
    e = refused(sandpool, Volume(name="gone", host=Host(path=str(d / "missing")), mountPath="/m"))
    assert e.status_code == 400 and "missing" in str(e), "a missing host path is not made"
    assert not (d / "missing").exists()
    e = refused(sandpool, Volume(name="up", host=Host(path=str(d)), mountPath="/m", subPath="../.."))
    assert e.status_code == 400 and "subPath" in str(e), e
    name = "pvc-" + uuid.uuid4().hex[:8]
    named_volume(sandpool, name).mkdir(parents=True)
    os.symlink("..", named_volume(sandpool, name) / "up")
    e = refused(sandpool, Volume(name="pvc-up", pvc=PVC(claimName=name), mountPath="/m", subPath="up"))
    assert e.status_code == 400 and "leaves the volume" in str(e), e


def test_osvolumes_unsupported_backends_and_runtimes_are_501(sandpool: Sandpool):
    e = refused(sandpool, Volume(name="oss", ossfs=OSSFS(bucket="b", endpoint="oss.example.com", accessKeyId="k", accessKeySecret="s"), mountPath="/m"))
    assert e.status_code == 501 and "ossfs" in str(e), e
    d = host_dir(sandpool, writable=False)
    # a warm gVisor sandbox keeps its own file system: it cannot take a mount
    e = refused(sandpool, Volume(name="g", host=Host(path=str(d)), mountPath="/m", readOnly=True), pool=RUNSC_POOL_NAME)
    assert e.status_code == 501 and "runc" in str(e), e
