"""OpenSandbox execd fidelity on the real platform (issue 17), through the real
opensandbox==1.1.1 SDK: the create-time ``env`` is the sandbox's environment
(every execd command sees it, not only the entrypoint), output events are one
per line, and the gateway echoes ``X-Request-ID`` on its error responses."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sandpool_platform import POOL_IMAGE, POOL_NAME, Sandpool

from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import RunCommandOpts


@pytest.fixture
def sandbox(sandpool: Sandpool):
    sb = SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(),
        extensions={"poolRef": POOL_NAME},
        env={"OSEXEC_GREETING": "hi there", "OSEXEC_WHO": "sandbox"},
        timeout=timedelta(minutes=5),
        ready_timeout=timedelta(seconds=60),
    )
    try:
        yield sb
    finally:
        try:
            sb.kill()
        finally:
            sb.close()


def test_create_env_reaches_every_command(sandbox: SandboxSync):
    execution = sandbox.commands.run('echo "$OSEXEC_GREETING"; echo "$OSEXEC_WHO"')
    assert execution.exit_code == 0, execution
    assert [m.text for m in execution.logs.stdout] == ["hi there", "sandbox"]

    # a command's own envs win over the sandbox's
    own = sandbox.commands.run('echo "$OSEXEC_GREETING/$OSEXEC_WHO"', opts=RunCommandOpts(envs={"OSEXEC_WHO": "me"}))
    assert [m.text for m in own.logs.stdout] == ["hi there/me"]

    failed = sandbox.commands.run("printf 'a\\n\\nb'; exit 5")
    assert [m.text for m in failed.logs.stdout] == ["a", "\n", "b"]
    assert (failed.exit_code, failed.error.traceback) == (5, ["exit status 5"])


def test_gateway_echoes_request_id(sandpool: Sandpool):
    request_id = f"osexec-{uuid.uuid4().hex[:8]}"
    manager = SandboxManagerSync.create(sandpool.config(headers={"X-Request-ID": request_id}))
    try:
        with pytest.raises(SandboxApiException) as excinfo:
            manager.get_sandbox_info("no-such-sandbox")
    finally:
        manager.close()
    assert excinfo.value.status_code == 404
    assert excinfo.value.request_id == request_id
