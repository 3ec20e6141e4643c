"""An image's WORKDIR and USER, through the real OpenSandbox SDK.

Images built here with ``umoci`` (busybox, an /etc/passwd and /etc/group of
their own, /app owned by the image's user) carry ``WorkingDir`` and ``User``
in their config; they are pushed to a loopback ``docker-registry`` and
created cold by ``image.uri``. A command's default working directory is the
image's WORKDIR (as OpenSandbox's execd runs commands in the container's
working directory), and it runs as the image's user: ``app:grp`` by name,
``1234:1234`` by number. A user the image does not have fails the create
with an error naming it. Skipped without the tools, unless CI=true or
SANDPOOL_REQUIRE_CONTAINERD=1 (then they fail).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from opensandbox import SandboxSync

from loopback_registry import REGISTRY_TOOLS, push, require_tools, run, serve
from sandpool_platform import Sandpool

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1001:\ngrp:x:2000:app\n"


def _build(work: Path) -> Path:
    """An OCI layout: tag ``named`` (USER app:grp, WORKDIR /app), tag
    ``numeric`` (USER 1234:1234, WORKDIR /srv), tag ``unknown`` (USER nobody)."""
    layout, bundle = work / "oci", work / "bundle"
    base = f"{layout}:named"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", base)
    run("umoci", "unpack", "--image", base, str(bundle))
    root = bundle / "rootfs"
    for d in ("bin", "tmp", "etc", "app", "srv", "home/app"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "tail", "cat", "id", "pwd", "touch", "ls"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    os.chown(root / "app", 1000, 2000)
    os.chown(root / "home" / "app", 1000, 1001)
    run("umoci", "repack", "--refresh-bundle", "--image", base, str(bundle))
    for tag, user, workdir in (("numeric", "1234:1234", "/srv"), ("unknown", "nobody", "/")):
        run("umoci", "config", "--image", base, "--tag", tag)
        run("umoci", "config", "--image", f"{layout}:{tag}",
            f"--config.user={user}", f"--config.workingdir={workdir}")
    run("umoci", "config", "--image", base, "--config.user=app:grp", "--config.workingdir=/app")
    return layout


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a loopback registry holding ``cfg:named``,
    ``cfg:numeric`` and ``cfg:unknown``."""
    require_tools(*REGISTRY_TOOLS)
    work = Path(tempfile.mkdtemp(prefix="sandpool-cfg-"))
    try:
        with serve(work) as addr:
            layout = _build(work)
            for tag in ("named", "numeric", "unknown"):
                push(layout, tag, f"{addr}/cfg:{tag}")
            yield addr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _create(sandpool: Sandpool, uri: str) -> SandboxSync:
    return SandboxSync.create(uri, connection_config=sandpool.config(),
                              timeout=timedelta(minutes=5), ready_timeout=timedelta(seconds=90))


def _says(sandbox: SandboxSync, line: str) -> list[str]:
    """The words a shell line printed (stderr too, to show a failure)."""
    run_ = sandbox.commands.run(line)
    return (run_.text or "".join(m.text for m in run_.logs.stderr)).split()


def test_commands_run_in_the_image_workdir_as_its_named_user(sandpool: Sandpool, registry: str):
    sandbox = _create(sandpool, f"{registry}/cfg:named")
    try:
        assert _says(sandbox, "pwd") == ["/app"]
        assert _says(sandbox, "id -u; id -g") == ["1000", "2000"]
        assert _says(sandbox, 'echo "$HOME $USER"') == ["/home/app", "app"]
        # the image's user owns its WORKDIR: it can write there
        assert _says(sandbox, "touch /app/made && ls /app") == ["made"]
    finally:
        sandbox.kill()


def test_a_numeric_user_needs_no_passwd_entry(sandpool: Sandpool, registry: str):
    sandbox = _create(sandpool, f"{registry}/cfg:numeric")
    try:
        assert _says(sandbox, "pwd; id -u; id -g") == ["/srv", "1234", "1234"]
    finally:
        sandbox.kill()


def test_a_user_the_image_lacks_fails_the_create_clearly(sandpool: Sandpool, registry: str):
    with pytest.raises(Exception) as err:
        _create(sandpool, f"{registry}/cfg:unknown")
    message = str(err.value).replace('\\"', '"')
    assert 'USER "nobody": no user "nobody" in the image\'s /etc/passwd' in message, message
