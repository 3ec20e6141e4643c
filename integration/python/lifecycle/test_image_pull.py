"""Bring your own image: the README's flow through the real OpenSandbox SDK.

A registry (Debian's ``docker-registry``) runs on a loopback port; an image
built here with ``umoci`` (busybox plus a marker layer) is pushed to it with
``skopeo``. Then ``sandpool image pull 127.0.0.1:PORT/app:1`` stores it in the
platform's containerd, an OpenSandbox create with that ``image.uri`` runs a
command in it, and a create of an image that was never pulled pulls it first
(a cold create). Skipped without the tools, unless CI=true or
SANDPOOL_REQUIRE_CONTAINERD=1 (then they fail).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from opensandbox import SandboxSync

from loopback_registry import REGISTRY_TOOLS, push, require_tools, run, serve
from sandpool_platform import Sandpool

def _build_image(work: Path) -> Path:
    """An OCI layout with tag ``app``: busybox in one layer, /marker in another."""
    layout, bundle = work / "oci", work / "bundle"
    image = f"{layout}:app"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", image)
    run("umoci", "unpack", "--image", image, str(bundle))
    root = bundle / "rootfs"
    for d in ("bin", "tmp"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "tail", "cat", "sleep", "env", "ls"):
        (root / "bin" / applet).symlink_to("busybox")
    run("umoci", "repack", "--refresh-bundle", "--image", image, str(bundle))
    (root / "marker").write_text("from the registry\n")
    run("umoci", "repack", "--refresh-bundle", "--image", image, str(bundle))
    return layout


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a loopback registry holding ``app:1`` and ``cold:1``."""
    require_tools(*REGISTRY_TOOLS)
    work = Path(tempfile.mkdtemp(prefix="sandpool-reg-"))
    try:
        with serve(work) as addr:
            layout = _build_image(work)
            for tag in ("app:1", "cold:1"):
                push(layout, "app", f"{addr}/{tag}")
            yield addr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _create(sandpool: Sandpool, uri: str) -> SandboxSync:
    return SandboxSync.create(uri, connection_config=sandpool.config(),
                              timeout=timedelta(minutes=5), ready_timeout=timedelta(seconds=90))


def test_pull_then_create_then_command(sandpool: Sandpool, registry: str):
    ref = f"{registry}/app:1"
    done = subprocess.run(
        [os.environ.get("SANDPOOL_BIN", "sandpool"), "image", "pull", ref,
         "--data-dir", str(sandpool.base_dir / "data")],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{ref}\tsha256:"), done.stdout
    assert "layer 2/2" in done.stderr, done.stderr
    sandbox = _create(sandpool, ref)
    try:
        assert sandbox.commands.run("cat /marker").text == "from the registry"
    finally:
        sandbox.kill()


def test_a_cold_create_pulls_the_image_first(sandpool: Sandpool, registry: str):
    sandbox = _create(sandpool, f"{registry}/cold:1")
    try:
        assert sandbox.commands.run("cat /marker").text == "from the registry"
    finally:
        sandbox.kill()
