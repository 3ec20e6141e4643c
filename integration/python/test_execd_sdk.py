"""sandpool-runtime execd API, driven through the real opensandbox==1.1.1 SDK.

Every test uses the SDK's public sync services (the same objects ``SandboxSync``
exposes as ``sandbox.commands`` / ``sandbox.files`` / health / metrics) and
asserts on what the SDK returns, so wire incompatibilities show up exactly as
an SDK user would see them. The runtime is started once per session by the
``runtime`` fixture (conftest.py); each test works in its own fresh directory.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import CommandStatus, OutputMessage, RunCommandOpts
from opensandbox.models.execd_sync import ExecutionHandlersSync
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    DirectoryListEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)

SANDBOX_ID = "sandpool-local"  # services only use it in log messages


# --------------------------------------------------------------------------- helpers


def joined(messages: list[OutputMessage]) -> str:
    """Render output events the way ``Execution.text`` does in the SDK: works for
    both one-event-per-line (upstream execd) and raw chunks with newlines."""
    parts: list[str] = []
    last = ""
    for message in messages:
        text = message.text
        if text and last and last not in "\r\n" and text[0] not in "\r\n":
            parts.append("\n")
        parts.append(text)
        if text:
            last = text[-1]
    return "".join(parts).replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_for_finish(commands, execution_id: str, timeout: float = 15.0) -> CommandStatus:
    deadline = time.monotonic() + timeout
    status = commands.get_command_status(execution_id)
    while status.running:
        if time.monotonic() > deadline:
            pytest.fail(f"command {execution_id} still running after {timeout}s: {status!r}")
        time.sleep(0.1)
        status = commands.get_command_status(execution_id)
    return status


def assert_recent(moment: datetime, slack: timedelta = timedelta(days=1)) -> None:
    if moment.tzinfo is None:  # tolerated by the SDK; interpret as UTC
        moment = moment.replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - moment) < slack, moment


def assert_not_found(call) -> SandboxApiException:
    with pytest.raises(SandboxApiException) as excinfo:
        call()
    assert excinfo.value.status_code == 404, excinfo.value
    assert excinfo.value.error.code == "FILE_NOT_FOUND", excinfo.value
    return excinfo.value


# --------------------------------------------------------------------------- health


def test_ping_reports_healthy(health):
    assert health.ping(SANDBOX_ID) is True


# --------------------------------------------------------------------------- commands


def test_run_echo_hello(commands):
    before = now_ms()
    execution = commands.run("echo hello")

    assert execution.exit_code == 0
    assert execution.error is None
    assert execution.complete is not None
    assert execution.id, "init event must carry the command id"
    assert joined(execution.logs.stdout) == "hello"
    assert execution.text == "hello"
    assert joined(execution.logs.stderr) == ""
    for message in execution.logs.stdout:
        assert message.is_error is False
        assert before - 5_000 <= message.timestamp <= now_ms() + 5_000, "timestamp is epoch ms"


def test_failing_command_reports_exit_code(commands):
    execution = commands.run("echo before-failure; exit 3")

    assert execution.exit_code == 3
    assert execution.error is not None
    assert execution.error.name == "CommandExecError"
    assert execution.error.value == "3"
    assert joined(execution.logs.stdout) == "before-failure"


def test_stderr_is_captured_separately(commands):
    execution = commands.run("echo to-stdout; echo err-1 >&2; echo err-2 1>&2")

    assert execution.exit_code == 0
    assert joined(execution.logs.stdout) == "to-stdout"
    assert joined(execution.logs.stderr) == "err-1\nerr-2"
    assert all(message.is_error for message in execution.logs.stderr)


def test_env_vars_and_working_directory(commands, workdir: Path):
    opts = RunCommandOpts(
        working_directory=str(workdir),
        envs={"SANDPOOL_GREETING": "hello world", "SANDPOOL_EMPTY": ""},
    )
    execution = commands.run(
        'printf "%s|%s|%s\\n" "$SANDPOOL_GREETING" "${SANDPOOL_EMPTY-unset}" "${SANDPOOL_NEVER_SET-unset}"; pwd',
        opts=opts,
    )

    assert execution.exit_code == 0, execution.logs.stderr
    assert joined(execution.logs.stdout).split("\n") == ["hello world||unset", str(workdir)]


def test_stdout_is_streamed_while_command_runs(commands):
    arrivals: list[tuple[float, str]] = []

    def on_stdout(message: OutputMessage) -> None:
        arrivals.append((time.monotonic(), message.text))

    execution = commands.run(
        "for i in 1 2 3 4 5; do echo $i; sleep 0.4; done",
        handlers=ExecutionHandlersSync(on_stdout=on_stdout),
    )

    assert execution.exit_code == 0
    streamed = [OutputMessage(text=text, timestamp=0) for _, text in arrivals]
    assert joined(streamed) == "1\n2\n3\n4\n5"
    assert joined(execution.logs.stdout) == "1\n2\n3\n4\n5"
    first, last = arrivals[0][0], arrivals[-1][0]
    # 1.6 s of sleeps lie between the first and the last line
    assert last - first >= 1.0, f"output was not streamed incrementally: {arrivals!r}"


def test_command_timeout_terminates_command(commands):
    started = time.monotonic()
    execution = commands.run("sleep 20", opts=RunCommandOpts(timeout=timedelta(seconds=1)))
    elapsed = time.monotonic() - started

    assert elapsed < 10, f"timeout not enforced, took {elapsed:.1f}s"
    assert execution.exit_code not in (None, 0)
    assert execution.error is not None


def test_background_command_status_and_logs(commands):
    script = "echo out-1; echo err-1 >&2; sleep 0.3; echo out-2; exit 4"
    execution = commands.run(script, opts=RunCommandOpts(background=True))

    assert execution.id
    assert execution.exit_code is None  # the SDK never infers it for background runs

    status = wait_for_finish(commands, execution.id)
    assert status.id == execution.id
    assert status.content == script
    assert status.running is False
    assert status.exit_code == 4
    assert status.started_at is not None and status.finished_at is not None
    assert status.finished_at >= status.started_at
    assert_recent(status.started_at)

    logs = commands.get_background_command_logs(execution.id)
    for piece in ("out-1", "err-1", "out-2"):
        assert piece in logs.content, logs.content
    assert logs.content.index("out-1") < logs.content.index("out-2")
    assert logs.cursor == len(logs.content.encode())

    tail = commands.get_background_command_logs(execution.id, cursor=logs.cursor)
    assert tail.content == ""
    assert tail.cursor == logs.cursor


def test_background_logs_cursor_is_incremental(commands):
    execution = commands.run(
        "echo first; sleep 10; echo second", opts=RunCommandOpts(background=True)
    )

    deadline = time.monotonic() + 10
    logs = commands.get_background_command_logs(execution.id)
    while "first" not in logs.content:
        assert time.monotonic() < deadline, f"no output yet: {logs!r}"
        time.sleep(0.05)
        logs = commands.get_background_command_logs(execution.id)
    assert "second" not in logs.content
    assert logs.cursor is not None and logs.cursor > 0

    wait_for_finish(commands, execution.id, timeout=60)
    rest = commands.get_background_command_logs(execution.id, cursor=logs.cursor)
    assert rest.content.strip() == "second"
    assert rest.cursor == logs.cursor + len(rest.content.encode())


def test_background_command_returns_immediately_and_can_be_interrupted(commands):
    started = time.monotonic()
    execution = commands.run("sleep 30", opts=RunCommandOpts(background=True))
    assert time.monotonic() - started < 5, "background run must not wait for the command"

    status = commands.get_command_status(execution.id)
    assert status.running is True
    assert status.exit_code is None
    assert status.finished_at is None

    commands.interrupt(execution.id)

    status = wait_for_finish(commands, execution.id, timeout=10)
    assert status.exit_code not in (None, 0)
    assert status.finished_at is not None


def test_foreground_command_can_be_interrupted(commands):
    init_seen = threading.Event()
    ids: list[str] = []
    outcome: dict = {}

    def on_init(init) -> None:
        ids.append(init.id)
        init_seen.set()

    def run() -> None:
        try:
            outcome["execution"] = commands.run(
                "sleep 30", handlers=ExecutionHandlersSync(on_init=on_init)
            )
        except Exception as exc:  # surfaced by the asserts below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert init_seen.wait(10), "no init event received"
    assert commands.get_command_status(ids[0]).running is True

    commands.interrupt(ids[0])
    worker.join(timeout=15)

    assert not worker.is_alive(), "stream did not end after the command was interrupted"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["execution"].exit_code not in (None, 0)
    assert commands.get_command_status(ids[0]).running is False


# --------------------------------------------------------------------------- files


def test_write_and_read_text_round_trip(files, workdir: Path):
    path = str(workdir / "nested" / "dir" / "hello.txt")  # parents created by upload
    text = "héllo wörld ✓\nsecond line\r\nno trailing newline"

    files.write_file(path, text, mode=644)

    assert files.read_file(path) == text
    info = files.get_file_info([path])[path]
    assert info.path == path
    assert info.entry_type == "file"
    assert info.size == len(text.encode("utf-8"))
    assert info.mode == 644
    assert info.owner and info.group
    assert_recent(info.modified_at)
    assert_recent(info.created_at)


def test_write_and_read_binary_round_trip(files, workdir: Path):
    payload = os.urandom(1024 * 1024) + b"\r\n--opensandbox_fake_boundary--\r\n\x00"
    small = bytes(range(256))
    big_path, small_path = str(workdir / "big.bin"), str(workdir / "small.bin")

    files.write_files([
        WriteEntry(path=big_path, data=payload),
        WriteEntry(path=small_path, data=small, mode=600),
    ])

    assert files.read_bytes(big_path) == payload
    assert files.read_bytes(small_path) == small
    infos = files.get_file_info([big_path, small_path])
    assert infos[big_path].size == len(payload)
    assert infos[big_path].mode == 755  # WriteEntry default
    assert infos[small_path].mode == 600


def test_read_byte_range_and_line_window(files, workdir: Path):
    path = str(workdir / "lines.txt")
    files.write_file(path, "line1\nline2\nline3\nline4\n")

    assert files.read_bytes(path, range_header="bytes=0-4") == b"line1"
    assert files.read_bytes(path, range_header="bytes=6-") == b"line2\nline3\nline4\n"
    assert files.read_file(path, offset=2, limit=2) == "line2\nline3"


def test_read_missing_file_raises(files, workdir: Path):
    missing = str(workdir / "does-not-exist.txt")

    assert_not_found(lambda: files.read_file(missing))
    assert_not_found(lambda: files.get_file_info([missing]))


def test_get_file_info_for_file_and_directory(files, workdir: Path):
    file_path = str(workdir / "a.txt")
    files.write_file(file_path, "12345")

    infos = files.get_file_info([file_path, str(workdir)])

    assert set(infos) == {file_path, str(workdir)}
    assert infos[file_path].entry_type == "file"
    assert infos[file_path].size == 5
    assert infos[str(workdir)].entry_type == "directory"
    assert infos[str(workdir)].path == str(workdir)


def test_search_with_glob(files, workdir: Path):
    files.write_files([
        WriteEntry(path=str(workdir / "a.txt"), data="a"),
        WriteEntry(path=str(workdir / "b.txt"), data="b"),
        WriteEntry(path=str(workdir / "c.log"), data="c"),
        WriteEntry(path=str(workdir / "sub" / "d.txt"), data="d"),
    ])

    found = files.search(SearchEntry(path=str(workdir), pattern="*.txt"))

    assert {entry.path for entry in found} == {
        str(workdir / "a.txt"),
        str(workdir / "b.txt"),
        str(workdir / "sub" / "d.txt"),
    }
    assert all(entry.entry_type == "file" for entry in found)
    logs = files.search(SearchEntry(path=str(workdir), pattern="*.log"))
    assert [entry.path for entry in logs] == [str(workdir / "c.log")]
    assert files.search(SearchEntry(path=str(workdir), pattern="*.nothing")) == []


def test_replace_contents(files, workdir: Path):
    path = str(workdir / "greeting.txt")
    files.write_file(path, "hello world, hello sandbox")

    files.replace_contents([ContentReplaceEntry(path=path, old_content="hello", new_content="bye")])
    assert files.read_file(path) == "bye world, bye sandbox"

    results = files.replace_contents_detailed(
        [ContentReplaceEntry(path=path, old_content="bye", new_content="ciao")]
    )
    assert [(r.path, r.replaced_count) for r in results] == [(path, 2)]
    assert files.read_file(path) == "ciao world, ciao sandbox"


def test_set_permissions(files, workdir: Path):
    path = str(workdir / "script.sh")
    files.write_file(path, "#!/bin/sh\necho hi\n", mode=644)
    assert files.get_file_info([path])[path].mode == 644

    files.set_permissions([SetPermissionEntry(path=path, mode=600)])
    assert files.get_file_info([path])[path].mode == 600

    files.set_permissions([SetPermissionEntry(path=path, mode=750)])
    assert files.get_file_info([path])[path].mode == 750


def test_move_files(files, workdir: Path):
    source = str(workdir / "source.txt")
    destination = str(workdir / "moved" / "target.txt")  # parent does not exist yet
    files.write_file(source, "payload")

    files.move_files([MoveEntry(source=source, destination=destination)])

    assert files.read_file(destination) == "payload"
    assert_not_found(lambda: files.read_file(source))


def test_delete_files(files, workdir: Path):
    first, second = str(workdir / "one.txt"), str(workdir / "two.txt")
    keep = str(workdir / "keep.txt")
    files.write_files([
        WriteEntry(path=first, data="1"),
        WriteEntry(path=second, data="2"),
        WriteEntry(path=keep, data="k"),
    ])

    files.delete_files([first, second, str(workdir / "never-existed.txt")])

    assert_not_found(lambda: files.read_file(first))
    assert_not_found(lambda: files.read_file(second))
    assert files.read_file(keep) == "k"


def test_create_list_and_delete_directories(files, workdir: Path):
    root = workdir / "tree"
    files.create_directories([
        WriteEntry(path=str(root / "x"), mode=755),
        WriteEntry(path=str(root / "y" / "z"), mode=700),
    ])
    files.write_file(str(root / "f.txt"), "file")

    top = files.list_directory(DirectoryListEntry(path=str(root)))
    assert {(e.path, e.entry_type) for e in top} == {
        (str(root / "x"), "directory"),
        (str(root / "y"), "directory"),
        (str(root / "f.txt"), "file"),
    }

    deep = files.list_directory(DirectoryListEntry(path=str(root), depth=2))
    assert {e.path for e in deep} == {
        str(root / "x"), str(root / "y"), str(root / "y" / "z"), str(root / "f.txt"),
    }
    assert files.get_file_info([str(root / "y" / "z")])[str(root / "y" / "z")].mode == 700

    files.delete_directories([str(root / "y")])
    remaining = files.list_directory(DirectoryListEntry(path=str(root)))
    assert {e.path for e in remaining} == {str(root / "x"), str(root / "f.txt")}

    files.delete_directories([str(root)])
    assert_not_found(lambda: files.get_file_info([str(root)]))


# --------------------------------------------------------------------------- metrics


def test_metrics_are_sane(metrics):
    sample = metrics.get_metrics(SANDBOX_ID)

    assert sample.cpu_count >= 1
    assert 0 <= sample.cpu_used_percentage <= 100
    assert sample.memory_total_in_mib > 0
    assert 0 < sample.memory_used_in_mib <= sample.memory_total_in_mib
    assert abs(sample.timestamp - now_ms()) < 60_000, "timestamp is epoch ms"


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong-token", "no-token"])
def test_bad_access_token_is_rejected(endpoint_with_token, sdk_factory, files, workdir: Path, token):
    bad = endpoint_with_token(token)
    bad_commands = sdk_factory.create_command_service(bad)
    bad_files = sdk_factory.create_filesystem_service(bad)
    bad_metrics = sdk_factory.create_metrics_service(bad)
    target = str(workdir / "must-not-exist.txt")

    calls = {
        "commands.run": lambda: bad_commands.run("echo should-not-run"),
        "commands.get_command_status": lambda: bad_commands.get_command_status("any"),
        "files.write_file": lambda: bad_files.write_file(target, "x"),
        "files.read_file": lambda: bad_files.read_file(target),
        "files.get_file_info": lambda: bad_files.get_file_info([str(workdir)]),
        "files.list_directory": lambda: bad_files.list_directory(DirectoryListEntry(path=str(workdir))),
        "metrics.get_metrics": lambda: bad_metrics.get_metrics(SANDBOX_ID),
    }
    for name, call in calls.items():
        with pytest.raises(SandboxApiException) as excinfo:
            call()
        assert excinfo.value.status_code == 401, f"{name}: {excinfo.value!r}"

    assert_not_found(lambda: files.get_file_info([target]))  # the rejected upload wrote nothing
