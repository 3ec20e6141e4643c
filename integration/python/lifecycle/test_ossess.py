"""Issue 17 items through the real opensandbox==1.1.1 SDK, unchanged:
``Sandbox.patch_metadata`` (PATCH /v1/sandboxes/{id}/metadata) and execd bash
sessions (``commands.create_session`` / ``run_in_session`` /
``delete_session``).

Sandboxes come from the module platform's ``test-pool`` (conftest.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sandpool_platform import POOL_IMAGE, POOL_NAME, Sandpool
from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.sandboxes import SandboxFilter


def create_sandbox(sandpool: Sandpool, tracker: list[SandboxSync], **kwargs) -> SandboxSync:
    sandbox = SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(),
        extensions={"poolRef": POOL_NAME},
        timeout=timedelta(minutes=10),
        ready_timeout=timedelta(seconds=60),
        **kwargs,
    )
    tracker.append(sandbox)
    return sandbox


def listed(manager: SandboxManagerSync, **metadata: str) -> list[str]:
    return [s.id for s in manager.list_sandbox_infos(SandboxFilter(metadata=metadata)).sandbox_infos]


def test_ossess_patch_metadata_is_seen_by_get_and_list(sandpool: Sandpool, sandboxes, manager):
    suite = str(uuid.uuid4())
    sandbox = create_sandbox(sandpool, sandboxes, metadata={"suite": suite, "team": "a"})

    info = sandbox.patch_metadata({"team": None, "stage": "prod", "absent": None})
    assert info.metadata == {"suite": suite, "stage": "prod"}
    assert sandbox.get_info().metadata == {"suite": suite, "stage": "prod"}
    assert listed(manager, suite=suite, stage="prod") == [sandbox.id]
    assert listed(manager, suite=suite, team="a") == [], "a deleted key no longer matches"

    assert sandbox.patch_metadata({}).metadata == {"suite": suite, "stage": "prod"}, "a no-op"

    for reserved in ({"sandpool.io/owner": "someone"}, {"sandpool.io/owner": None}):
        with pytest.raises(SandboxApiException) as err:
            sandbox.patch_metadata(reserved)
        assert err.value.status_code == 400, reserved
    assert sandbox.get_info().metadata == {"suite": suite, "stage": "prod"}


def test_ossess_patch_metadata_of_an_unknown_sandbox_is_404(sandpool: Sandpool, manager):
    with pytest.raises(SandboxApiException) as err:
        manager.patch_sandbox_metadata(f"sbx-{uuid.uuid4().hex[:12]}", {"a": "b"})
    assert err.value.status_code == 404


def test_ossess_bash_session_keeps_cwd_and_env_between_runs(sandpool: Sandpool, sandboxes):
    sandbox = create_sandbox(sandpool, sandboxes)
    commands = sandbox.commands

    session = commands.create_session(working_directory="/tmp")
    first = commands.run_in_session(session, "mkdir -p work && cd work && export GREETING=hello")
    assert first.exit_code == 0, first
    second = commands.run_in_session(session, 'pwd; echo "$GREETING"')
    assert second.exit_code == 0, second
    assert second.text == "/tmp/work\nhello"

    other = commands.create_session()
    fresh = commands.run_in_session(other, 'echo "[$GREETING]"')
    assert fresh.text == "[]", "sessions do not share state"

    failed = commands.run_in_session(session, "echo oops >&2; exit 3", working_directory="/")
    assert failed.exit_code == 3
    assert [m.text for m in failed.logs.stderr] == ["oops"]
    assert commands.run_in_session(session, "pwd").text == "/", "a run's cwd carries over"

    timed_out = commands.run_in_session(session, "sleep 30", timeout=timedelta(milliseconds=300))
    # killed at its timeout: Go's "signal: killed", exit code -1, as upstream execd
    assert timed_out.exit_code == -1
    assert timed_out.error.traceback == ["signal: killed"]

    commands.delete_session(session)
    commands.delete_session(other)
    with pytest.raises(SandboxApiException) as err:
        commands.run_in_session(session, "true")
    assert err.value.status_code == 404


def test_ossess_bash_sessions_are_bounded(sandpool: Sandpool, sandboxes):
    sandbox = create_sandbox(sandpool, sandboxes)
    commands = sandbox.commands
    sessions = [commands.create_session() for _ in range(16)]
    with pytest.raises(SandboxApiException) as err:
        commands.create_session()
    assert err.value.status_code == 429
    commands.delete_session(sessions.pop())
    sessions.append(commands.create_session())
    for session in sessions:
        commands.delete_session(session)
