"""E2B auto-pause through the real e2b SDK (2.63.0), unchanged:
``Sandbox.create(..., lifecycle={"on_timeout": "pause"})`` (sent as
``autoPause: true``) is paused, not killed, when its timeout ends, keeps its
state while paused, and ``Sandbox.connect`` resumes it.
"""

from __future__ import annotations

import time

from e2b import Sandbox, SandboxQuery, SandboxState
from sandpool_platform import POOL_NAME, Sandpool


def _wait_state(sandbox_id: str, state: SandboxState, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while True:
        info = Sandbox.get_info(sandbox_id)
        if info.state == state:
            return
        assert time.monotonic() < deadline, f"{sandbox_id} still {info.state}"
        time.sleep(0.25)


def test_auto_pause_pauses_at_the_timeout_and_connect_resumes(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=3, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("/tmp/kept.txt", "before the pause")
        info = sbx.get_info()
        assert info.lifecycle is not None
        assert info.lifecycle["on_timeout"] == "pause"
        _wait_state(sbx.sandbox_id, SandboxState.PAUSED)
        # it stays paused past further reaper passes (no TTL while paused)
        time.sleep(2)
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        assert sbx.sandbox_id in [s.sandbox_id for s in paused]
        again = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
        assert again.files.read("/tmp/kept.txt") == "before the pause"
    finally:
        sbx.kill()


def test_without_auto_pause_the_timeout_kills(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=3)
    deadline = time.monotonic() + 30
    while sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]:
        assert time.monotonic() < deadline, "not killed at its timeout"
        time.sleep(0.25)
