"""E2B ``readyCmd`` through the real e2b SDK's ``Template`` builder (2.63).

A template built with ``set_start_cmd(start, wait_for_file(...))`` hands a
sandbox out only once its readyCmd exits 0 in it: the start command creates
the file after two seconds, and the file is there as soon as
``Sandbox.create`` returns. A readyCmd that never succeeds fails the build
(with a reason naming the command) within the bound, and leaves no template;
one that never succeeds on a create fails it, and the pool's status
(``sandpool pool list``) says so.
The base image is busybox from a loopback ``docker-registry``, as in
test_e2b_templates.py. Skipped without the tools, unless CI=true or
SANDPOOL_REQUIRE_CONTAINERD=1 (then they fail).
"""

from __future__ import annotations

import time

import pytest
from e2b import ConnectionConfig, Sandbox, Template, wait_for_file
from e2b.api.client.api.templates import get_templates_template_id
from e2b.api.client_sync import get_api_client

from loopback_registry import busybox_base_registry
from sandpool_platform import Sandpool, cli, pools


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a loopback registry holding ``base:1`` (busybox)."""
    yield from busybox_base_registry("sandpool-ready-")


def test_a_sandbox_is_handed_out_once_its_ready_cmd_succeeds(e2b_env: Sandpool, registry: str):
    template = (
        Template()
        .from_image(f"{registry}/base:1")
        .set_start_cmd("sleep 2; touch /tmp/ready; exec sleep 100000", wait_for_file("/tmp/ready"))
    )
    logs: list[str] = []
    Template.build(template, "ready-app", on_build_logs=lambda e: logs.append(e.message))
    assert any("readyCmd" in m for m in logs), logs
    started = time.monotonic()
    sbx = Sandbox.create(template="ready-app", timeout=300)
    try:
        assert time.monotonic() - started >= 1.5, "the create waited for the start command"
        r = sbx.commands.run("test -f /tmp/ready && echo ready", cwd="/")
        assert r.stdout.split() == ["ready"], r
    finally:
        sbx.kill()


def test_a_ready_cmd_that_never_succeeds_fails_the_build(e2b_env: Sandpool, registry: str):
    from e2b.exceptions import BuildException

    template = Template().from_image(f"{registry}/base:1").set_start_cmd("exec sleep 100000", "false")
    started = time.monotonic()
    with pytest.raises(BuildException) as e:
        Template.build(template, "never-ready")
    assert 'readyCmd "false" did not exit 0 within 60s' in str(e.value), e.value
    assert time.monotonic() - started < 180, "bounded"
    api = get_api_client(ConnectionConfig())
    assert get_templates_template_id.sync_detailed("never-ready", client=api).status_code == 404


def test_a_create_fails_clearly_when_the_ready_cmd_never_succeeds(e2b_env: Sandpool, registry: str):
    cli(e2b_env, "pool", "apply", "stuck", "--image", f"{registry}/base:1",
        "--start-cmd", "exec sleep 100000", "--ready-cmd", "test -f /never",
        "--buffer-min", "0", "--buffer-max", "1")
    started = time.monotonic()
    with pytest.raises(Exception) as e:
        Sandbox.create(template="stuck", timeout=300)
    assert 'template stuck: readyCmd "test -f /never" did not exit 0 within 30s' in str(e.value), e.value
    # each attempt answers 502 after 30 s (within the SDK's 60 s request
    # timeout); the SDK tries a 502 twice
    assert 25 < time.monotonic() - started < 100, "bounded"
    alive = [s.sandbox_id for s in Sandbox.list().next_items() if s.template_id == "stuck"]
    assert alive == [], "the sandbox was released"
    # the pool's status says its sandboxes do not become ready, and since when
    shown = pools(e2b_env)["stuck"].get("not-ready", "")
    assert 'readyCmd "test -f /never" did not exit 0 within 30s' in shown, shown
    assert "(at 20" in shown, shown
