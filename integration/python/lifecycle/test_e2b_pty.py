"""The real ``e2b`` (2.63.0) SDK's ``sandbox.pty`` against sandpool's envd: an
interactive login bash on a pseudo-terminal of the requested size (``stty
size`` sees it, and a resize), input typed with ``send_stdin`` and
``stream_input``, a second client attached with ``connect``, the exit code at
the end, and ``kill``."""

from __future__ import annotations

import time

import pytest
from e2b import CommandExitException, PtySize, Sandbox

from sandpool_platform import PY_POOL_NAME, Sandpool

# bash (which the SDK's pty.create runs) is in the Debian image, not busybox.
POOL = PY_POOL_NAME


class Screen:
    """The pty output of one handle, read on demand."""

    def __init__(self, handle):
        self.events = iter(handle)
        self.data = bytearray()

    def text(self) -> str:
        return self.data.decode(errors="replace")

    def until(self, want: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while want not in self.text():
            assert time.monotonic() < deadline, f"no {want!r} in {self.text()!r}"
            stdout, stderr, pty = next(self.events)
            assert stdout is None and stderr is None, "a terminal's output is pty data only"
            self.data.extend(pty)


def test_pty_size_resize_input_and_exit(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL, timeout=180)
    try:
        handle = sbx.pty.create(PtySize(rows=24, cols=80), envs={"PTY_TEST": "marker"}, timeout=120)
        screen = Screen(handle)
        sbx.pty.send_stdin(handle.pid, b"stty size; echo \"term=$TERM $PTY_TEST\"; tty\n")
        screen.until("24 80")
        screen.until("term=xterm-256color marker")
        screen.until("/dev/pts/")

        sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
        sbx.pty.send_stdin(handle.pid, b"stty size\n")
        screen.until("30 100")

        # a second client sees the same terminal
        attached = sbx.pty.connect(handle.pid, timeout=60)
        assert attached.pid == handle.pid
        other = Screen(attached)
        sbx.pty.stream_input(handle.pid, [b"echo str", b"eamed-$((6*7))\n"])
        screen.until("streamed-42")
        other.until("streamed-42")

        sbx.pty.send_stdin(handle.pid, b"exit 7\n")
        with pytest.raises(CommandExitException) as exc:
            handle.wait()
        assert exc.value.exit_code == 7
        with pytest.raises(CommandExitException) as exc:
            attached.wait()
        assert exc.value.exit_code == 7
    finally:
        sbx.kill()


def test_pty_kill(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL, timeout=180)
    try:
        handle = sbx.pty.create(PtySize(rows=10, cols=40), timeout=120)
        screen = Screen(handle)
        sbx.pty.send_stdin(handle.pid, b"echo ready-$((1+1))\n")
        screen.until("ready-2")
        assert sbx.pty.kill(handle.pid) is True
        with pytest.raises(CommandExitException) as exc:
            handle.wait()
        assert exc.value.exit_code != 0
        assert sbx.pty.kill(handle.pid) is False, "a finished terminal is not found"
        # stdin input is refused for a terminal (while it runs)
        shell = sbx.pty.create(PtySize(rows=10, cols=40), timeout=120)
        with pytest.raises(Exception) as err:
            sbx.commands.send_stdin(shell.pid, "x")
        assert "terminal" in str(err.value), err.value
        sbx.pty.kill(shell.pid)
    finally:
        sbx.kill()
