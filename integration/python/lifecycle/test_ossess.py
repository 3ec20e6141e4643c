"""Issue 17 items through the real opensandbox==1.1.1 SDK, unchanged:
``Sandbox.patch_metadata`` (PATCH /v1/sandboxes/{id}/metadata) and execd bash
sessions (``commands.create_session`` / ``run_in_session`` /
``delete_session``).

Sandboxes come from the module platform's ``test-pool`` (conftest.py).
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta

import pytest
from sandpool_platform import POOL_IMAGE, POOL_NAME, Sandpool
from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.sandboxes import SandboxFilter


@pytest.fixture
def sandboxes():
    """Every sandbox a test creates, killed afterwards."""
    created: list[SandboxSync] = []
    yield created
    for sandbox in created:
        with contextlib.suppress(Exception):
            sandbox.kill()
        sandbox.close()


@pytest.fixture
def manager(sandpool: Sandpool):
    mgr = SandboxManagerSync.create(sandpool.config())
    yield mgr
    mgr.close()


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
