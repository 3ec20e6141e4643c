"""A registry on a loopback port for the bring-your-own-image tests and
benchmarks: Debian's ``docker-registry`` (the CNCF distribution registry)
with its own config, optionally behind htpasswd basic auth, and the tools
(``umoci``, ``skopeo``) that build and push images to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

REGISTRY_TOOLS = ("docker-registry", "skopeo", "umoci")


def require_tools(*tools: str) -> None:
    """Skip without ``tools``; fail instead under CI or
    SANDPOOL_REQUIRE_CONTAINERD=1 (the test command installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI") == "true" or os.environ.get("SANDPOOL_REQUIRE_CONTAINERD") == "1":
            pytest.fail(f"not installed: {missing} (scripts/install-deps.sh installs them)")
        pytest.skip(f"not installed: {missing}")


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run ``argv``; its stdout, or an assertion naming it and its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(work: Path, htpasswd: Path | None = None) -> Iterator[str]:
    """A registry storing under ``work``, behind basic auth when
    ``htpasswd`` is given: its ``host:port`` while the block runs."""
    addr = f"127.0.0.1:{free_port()}"
    auth = f"auth:\n  htpasswd:\n    realm: sandpool-test\n    path: {htpasswd}\n" if htpasswd else ""
    config = work / "registry.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: {addr}\n{auth}"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(addr.rsplit(":", 1)[1])), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"docker-registry exited with {proc.returncode}"
                assert time.monotonic() < deadline, "registry did not listen within 20 s"
                time.sleep(0.05)
        yield addr
    finally:
        proc.kill()
        proc.wait()


def push(layout: Path, tag: str, dest: str, creds: str | None = None) -> None:
    """Push ``tag`` of the OCI layout to ``docker://dest`` (plain HTTP)."""
    argv = ["skopeo", "copy", "-q", "--dest-tls-verify=false"]
    if creds:
        argv += ["--dest-creds", creds]
    run(*argv, f"oci:{layout}:{tag}", f"docker://{dest}")


def busybox_layout(work: Path) -> Path:
    """An OCI layout with tag ``base``: busybox with all its applets in /bin,
    and a /bin/bash that is busybox's sh."""
    layout, bundle = work / "oci", work / "bundle"
    image = f"{layout}:base"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", image)
    run("umoci", "unpack", "--image", image, str(bundle))
    root = bundle / "rootfs"
    for d in ("bin", "tmp", "etc"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in run("/usr/bin/busybox", "--list").split():
        if applet != "busybox" and not (root / "bin" / applet).exists():
            (root / "bin" / applet).symlink_to("busybox")
    # envd runs commands with `/bin/bash -l -c`; busybox's sh stands in
    bash = root / "bin" / "bash"
    bash.write_text('#!/bin/sh\nexec /bin/sh "$@"\n')
    bash.chmod(0o755)
    run("umoci", "repack", "--refresh-bundle", "--image", image, str(bundle))
    return layout


def busybox_base_registry(prefix: str) -> Iterator[str]:
    """For a module fixture: ``host:port`` of a loopback registry holding
    ``base:1`` (busybox), for E2B template builds (needs buildah)."""
    require_tools(*REGISTRY_TOOLS, "buildah")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with serve(work) as addr:
            push(busybox_layout(work), "base", f"{addr}/base:1")
            yield addr
    finally:
        shutil.rmtree(work, ignore_errors=True)
