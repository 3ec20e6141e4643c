"""The builtin code-interpreter image under upstream OpenSandbox's name.

``opensandbox/code-interpreter:<tag>`` (the image upstream's tests and SDK
examples create) is sandpool's builtin code-interpreter image: Debian +
python3 with ipykernel, numpy, pandas and matplotlib from PyPI, and
upstream's entrypoint path ``/opt/code-interpreter/code-interpreter.sh``.
The image is built on first use (debootstrap, then pip: minutes), so the
test first has a pool ask the node for it and waits for ``image=ready``.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from opensandbox import SandboxSync

from sandpool_platform import Sandpool, cli, pools
from sandpool_pytest_helpers import per_test_watchdog

UPSTREAM_IMAGE = "opensandbox/code-interpreter:latest"
ENTRYPOINT = "/opt/code-interpreter/code-interpreter.sh"
BUILD_WITHIN_S = 900


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """The conftest's watchdog, with time for the image's first build."""
    yield from per_test_watchdog(BUILD_WITHIN_S + 300)


def _wait_image_ready(sandpool: Sandpool, pool: str) -> dict[str, str]:
    deadline = time.monotonic() + BUILD_WITHIN_S
    while True:
        p = pools(sandpool).get(pool, {})
        if p.get("image") in ("ready", "failed"):
            return p
        assert time.monotonic() < deadline, f"image not ready after {BUILD_WITHIN_S} s: {p}"
        time.sleep(1)


def test_upstreams_code_interpreter_image_runs_with_its_entrypoint_and_packages(sandpool: Sandpool):
    cli(sandpool, "pool", "apply", "ci-image", "--image", UPSTREAM_IMAGE,
        "--buffer-min", "1", "--buffer-max", "1")
    try:
        p = _wait_image_ready(sandpool, "ci-image")
        assert p["image"] == "ready", p
    finally:
        cli(sandpool, "pool", "delete", "ci-image", "--force")

    sandbox = SandboxSync.create(UPSTREAM_IMAGE, entrypoint=[ENTRYPOINT],
                                 connection_config=sandpool.config(),
                                 timeout=timedelta(minutes=5), ready_timeout=timedelta(seconds=120))
    try:
        probe = ("import ipykernel, numpy, pandas, matplotlib; "
                 "print(pandas.DataFrame({'a': numpy.arange(3)}).a.sum())")
        run = sandbox.commands.run(f'python -c "{probe}"')
        assert run.error is None, run.error
        assert run.text == "3", run.logs
        # the create ran it (a missing entrypoint is refused); it keeps running
        assert sandbox.commands.run(f"test -x {ENTRYPOINT} && echo ok").text == "ok"
        assert sandbox.is_healthy()
    finally:
        sandbox.kill()
