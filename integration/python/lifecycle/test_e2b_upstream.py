"""Fixes found by running E2B's own SDK tests (e2b 2.63.0, e2b-code-interpreter
2.11.5) against sandpool, checked here with the real SDKs: a bash cell and an
IPython ``!cmd`` line in the code interpreter, the watch events of a write
(CREATE, CHMOD, WRITE) and of files in a directory made just now below a
recursive watch, and ``set_timeout(0)`` of an ``on_timeout: pause`` sandbox
pausing it (``connect`` resumes it)."""

from __future__ import annotations

import time

import pytest
from e2b import FilesystemEventType, Sandbox

from sandpool_platform import POOL_NAME, PY_POOL_NAME, Sandpool

code_interpreter = pytest.importorskip("e2b_code_interpreter")


def test_interp_bash_cells_and_shell_escape(e2b_env: Sandpool):
    sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, envs={"TEST_ENV_VAR": "supertest"}, timeout=180)
    try:
        assert sbx.run_code("echo $TEST_ENV_VAR", language="bash").logs.stdout == ["supertest\n"]
        got = sbx.run_code("echo $FOO", envs={"FOO": "bar"}, language="bash")
        assert got.logs.stdout == ["bar\n"]
        after = sbx.run_code("echo ${FOO:-default}", language="bash")
        assert after.logs.stdout == ["default\n"], "an execution's envs hold for it only"
        assert sbx.run_code("pwd", language="bash").logs.stdout == ["/home/user\n"]
        bang = sbx.run_code("!pwd")
        assert "".join(bang.logs.stdout).strip() == "/home/user", bang
    finally:
        sbx.kill()


def test_watch_events_of_a_write_and_of_a_new_directory(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        sbx.files.make_dir("w")
        handle = sbx.files.watch_dir("w", recursive=True)
        sbx.files.write("w/a.txt", "content")
        kinds = [(e.name, e.type) for e in handle.get_new_events()]
        assert kinds == [("a.txt", FilesystemEventType.CREATE), ("a.txt", FilesystemEventType.CHMOD),
                         ("a.txt", FilesystemEventType.WRITE)], kinds
        sbx.files.make_dir("w/n")
        sbx.files.write("w/n/f.txt", "content")
        seen = {(e.name, e.type) for e in handle.get_new_events()}
        assert ("n", FilesystemEventType.CREATE) in seen, seen
        assert ("n/f.txt", FilesystemEventType.WRITE) in seen, seen
        handle.stop()
    finally:
        sbx.kill()


def test_set_timeout_zero_pauses_an_auto_pause_sandbox(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=60, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("/tmp/kept", "yes")
        sbx.set_timeout(0)
        deadline = time.monotonic() + 30
        while sbx.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sbx.is_running()
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
        resumed = sbx.connect()
        assert resumed.sandbox_id == sbx.sandbox_id
        assert resumed.files.read("/tmp/kept") == "yes"
    finally:
        Sandbox.kill(sbx.sandbox_id)
