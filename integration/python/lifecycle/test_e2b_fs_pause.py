"""E2B's filesystem-only pause through the real e2b SDK (2.63.0), unchanged,
on runc (runsc is refused, 501): ``sandbox.pause(mode="filesystem")`` (sent as
``{"memory": false}``) stops the sandbox's processes and keeps its files;
``Sandbox.connect`` boots it again from those files (its processes are not
restored), with the same id and credentials, and its envd gets the create's
``envs`` again (as E2B's orchestrator hands them to envd on every boot). The timeout's auto-pause does
the same with ``lifecycle={"on_timeout": {"action": "pause", "mode":
"filesystem"}}`` (``autoPauseMemory: false``).
"""

from __future__ import annotations

import time

import pytest
from e2b import Sandbox, SandboxState
from sandpool_platform import POOL_NAME, RUNSC_POOL_NAME, Sandpool

def _wait_state(sandbox_id: str, state: SandboxState, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while Sandbox.get_info(sandbox_id).state != state:
        assert time.monotonic() < deadline, f"{sandbox_id} never {state}"
        time.sleep(0.25)


def _sleeper_running(sbx: Sandbox) -> bool:
    out = sbx.commands.run("ps -eo args", timeout=30).stdout
    return any(line.strip() == "sleep 1234" for line in out.splitlines())


ENVS = {"FS_PAUSE_ENV": "kept across a reboot", "FS_PAUSE_OTHER": "2"}


def _envs_seen(sbx: Sandbox) -> str:
    return sbx.commands.run('echo "$FS_PAUSE_ENV|$FS_PAUSE_OTHER"').stdout.strip()


def test_a_filesystem_pause_keeps_the_files_and_reboots_on_connect(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120, envs=ENVS)
    try:
        sbx.files.write("/tmp/fs-only-marker.txt", "persisted")
        sbx.commands.run("sleep 1234", background=True)
        assert _sleeper_running(sbx)
        assert sbx.pause(mode="filesystem")
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        assert not sbx.is_running()
        resumed = sbx.connect()
        assert resumed.sandbox_id == sbx.sandbox_id
        assert resumed.is_running()
        # the files survive, the processes do not
        assert resumed.files.read("/tmp/fs-only-marker.txt") == "persisted"
        assert not _sleeper_running(resumed)
        assert resumed.commands.run("echo again").stdout.strip() == "again"
        # the create's envs are envd's defaults again after the reboot
        assert _envs_seen(resumed) == "kept across a reboot|2"
    finally:
        sbx.kill()


def test_a_runsc_sandbox_is_refused_naming_gvisor(e2b_env: Sandpool):
    sbx = Sandbox.create(RUNSC_POOL_NAME, timeout=120)
    try:
        with pytest.raises(Exception, match="runc sandbox"):
            sbx.pause(mode="filesystem")
        assert sbx.is_running()
    finally:
        sbx.kill()


def test_a_frozen_sandbox_connected_with_reboot_loses_its_processes(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120, envs=ENVS)
    try:
        sbx.files.write("/tmp/kept.txt", "kept")
        sbx.commands.run("sleep 1234", background=True)
        assert sbx.pause()  # frozen with its memory
        resumed = Sandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert resumed.files.read("/tmp/kept.txt") == "kept"
        assert not _sleeper_running(resumed)
        assert _envs_seen(resumed) == "kept across a reboot|2"
    finally:
        sbx.kill()


def test_the_timeouts_filesystem_auto_pause_reboots_on_connect(e2b_env: Sandpool):
    sbx = Sandbox.create(
        POOL_NAME,
        timeout=3,
        lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}},
    )
    try:
        sbx.files.write("/tmp/auto-marker.txt", "auto")
        sbx.commands.run("sleep 1234", background=True)
        _wait_state(sbx.sandbox_id, SandboxState.PAUSED)
        resumed = sbx.connect()
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
        assert resumed.files.read("/tmp/auto-marker.txt") == "auto"
        assert not _sleeper_running(resumed)
    finally:
        sbx.kill()
