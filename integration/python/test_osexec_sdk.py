"""Upstream execd fidelity (issue 17) through the real opensandbox==1.1.1 SDK:
output events one per line, exit-error tracebacks, line-window reads, and the
X-Request-ID echo. Runs against the local runtime (conftest.py's fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.sync.adapters.factory import AdapterFactorySync


def test_output_events_are_lines_without_endings(commands):
    execution = commands.run(r"printf 'connect-ok\n'; printf 'a\n\nb\r\nc'; printf 'e1\re2\n' >&2")

    assert execution.exit_code == 0
    assert [m.text for m in execution.logs.stdout] == ["connect-ok", "a", "\n", "b", "c"]
    assert [m.text for m in execution.logs.stderr] == ["e1", "e2"]
    # the SDK renders upstream's events this way (the "\n" event joins a and b)
    assert execution.text == "connect-ok\na\nb\nc"


def test_exit_code_error_has_go_traceback(commands):
    execution = commands.run("exit 4")

    assert execution.exit_code == 4
    assert execution.error is not None
    assert (execution.error.name, execution.error.value) == ("CommandExecError", "4")
    assert execution.error.traceback == ["exit status 4"]


def test_line_window_reads(files, workdir: Path):
    path = str(workdir / "lines.txt")
    files.write_file(path, "one\ntwo\nthree\n")

    assert files.read_file(path, offset=2) == "two\nthree"
    assert files.read_file(path, limit=2) == "one\ntwo"
    assert files.read_file(path, offset=3, limit=5) == "three"
    with pytest.raises(SandboxApiException) as excinfo:
        files.read_file(path, offset=0)
    assert excinfo.value.status_code == 400


def test_request_id_is_echoed_on_errors(runtime, endpoint, workdir: Path):
    config = ConnectionConfigSync(domain=runtime.endpoint, headers={"X-Request-ID": "osexec-req-1"})
    files = AdapterFactorySync(config).create_filesystem_service(endpoint)
    with pytest.raises(SandboxApiException) as excinfo:
        files.read_file(str(workdir / "missing.txt"))

    assert excinfo.value.status_code == 404
    assert excinfo.value.request_id == "osexec-req-1"
