"""An image's WORKDIR and USER, through the real OpenSandbox SDK.

Images built here with ``umoci`` (busybox, an /etc/passwd and /etc/group of
their own, /app owned by the image's user) carry ``WorkingDir`` and ``User``
in their config; they are pushed to a loopback ``docker-registry`` and
created cold by ``image.uri``. A command's default working directory is the
image's WORKDIR (as OpenSandbox's execd runs commands in the container's
working directory), and it runs as the image's user: ``app:grp`` by name,
``1234:1234`` by number. A user the image does not have fails the create
with an error naming it. An image's ``Entrypoint ++ Cmd`` is the process
a create starts when it names none (an OpenSandbox create without
``entrypoint``, a pool applied without ``--start-cmd``); a create's own
``entrypoint`` replaces both. Skipped without the tools, unless CI=true or
SANDPOOL_REQUIRE_CONTAINERD=1 (then they fail).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from opensandbox import SandboxSync

from loopback_registry import REGISTRY_TOOLS, push, require_tools, run, serve
from sandpool_platform import Sandpool, cli

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1001:\ngrp:x:2000:app\n"


def _build(work: Path) -> Path:
    """An OCI layout: tag ``named`` (USER app:grp, WORKDIR /app), tag
    ``numeric`` (USER 1234:1234, WORKDIR /srv), tag ``unknown`` (USER nobody),
    tag ``cmd`` (ENTRYPOINT ["/bin/entry.sh", "ep"], CMD ["cmd-arg"])."""
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
    # writes the argv it got, then stays up as a start process does
    entry = root / "bin" / "entry.sh"
    entry.write_text('#!/bin/sh\necho "$@" > /tmp/argv\nexec tail -f /dev/null\n')
    entry.chmod(0o755)
    run("umoci", "repack", "--refresh-bundle", "--image", base, str(bundle))
    for tag, user, workdir in (("numeric", "1234:1234", "/srv"), ("unknown", "nobody", "/")):
        run("umoci", "config", "--image", base, "--tag", tag)
        run("umoci", "config", "--image", f"{layout}:{tag}",
            f"--config.user={user}", f"--config.workingdir={workdir}")
    run("umoci", "config", "--image", base, "--tag", "cmd")
    run("umoci", "config", "--image", f"{layout}:cmd", "--config.entrypoint=/bin/entry.sh",
        "--config.entrypoint=ep", "--config.cmd=cmd-arg")
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
            for tag in ("named", "numeric", "unknown", "cmd"):
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


def _argv_of(sandpool: Sandpool, sandbox_id: str) -> str:
    """What the sandbox's start process wrote (it runs beside the runtime:
    wait for it)."""
    sandbox = SandboxSync.connect(sandbox_id, connection_config=sandpool.config())
    for _ in range(100):
        said = sandbox.commands.run("cat /tmp/argv 2>/dev/null").text or ""
        if said.strip():
            return said.strip()
        time.sleep(0.1)
    return ""


def _raw_create(sandpool: Sandpool, body: dict) -> str:
    with sandpool.client(timeout=120) as c:
        r = c.post("/v1/sandboxes", json={"timeout": 300, **body})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _kill(sandpool: Sandpool, sandbox_id: str) -> None:
    with sandpool.client() as c:
        c.delete(f"/v1/sandboxes/{sandbox_id}")


def test_without_an_entrypoint_the_images_entrypoint_and_cmd_run(sandpool: Sandpool, registry: str):
    uri = f"{registry}/cfg:cmd"
    sid = _raw_create(sandpool, {"image": {"uri": uri}})
    try:
        assert _argv_of(sandpool, sid) == "ep cmd-arg"
    finally:
        _kill(sandpool, sid)
    # a create's own entrypoint replaces Entrypoint and Cmd whole
    sid = _raw_create(sandpool, {"image": {"uri": uri}, "entrypoint": ["/bin/entry.sh", "own"]})
    try:
        assert _argv_of(sandpool, sid) == "own"
    finally:
        _kill(sandpool, sid)


def test_a_pool_without_a_start_cmd_runs_the_images_entrypoint_and_cmd(sandpool: Sandpool, registry: str):
    uri = f"{registry}/cfg:cmd"
    cli(sandpool, "pool", "apply", "imgcmd", "--image", uri, "--buffer-min", "1", "--buffer-max", "1")
    cli(sandpool, "pool", "apply", "imgstart", "--image", uri, "--buffer-min", "0", "--buffer-max", "0",
        "--start-cmd", "/bin/entry.sh from-pool")
    try:
        sid = _raw_create(sandpool, {"image": {"uri": uri}, "extensions": {"poolRef": "imgcmd"}})
        try:
            assert _argv_of(sandpool, sid) == "ep cmd-arg"
        finally:
            _kill(sandpool, sid)
        sid = _raw_create(sandpool, {"image": {"uri": uri}, "extensions": {"poolRef": "imgstart"}})
        try:
            assert _argv_of(sandpool, sid) == "from-pool"
        finally:
            _kill(sandpool, sid)
    finally:
        cli(sandpool, "pool", "delete", "imgcmd", "--force")
        cli(sandpool, "pool", "delete", "imgstart", "--force")
