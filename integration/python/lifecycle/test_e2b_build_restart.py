"""E2B template build records survive a platform restart.

A template built through the real e2b SDK's ``Template.build`` (busybox from
a loopback ``docker-registry``, one RUN step) keeps, after a SIGTERM and a
new ``sandpool serve`` on the same state directory, its build status
(``ready``, with its logs) at ``GET /templates/{id}/builds/{buildID}/status``
and its build id in ``GET /templates/{id}``; a sandbox of it still starts.
Skipped without the tools, unless CI=true or SANDPOOL_REQUIRE_CONTAINERD=1.
"""

from __future__ import annotations


import pytest
from e2b import ConnectionConfig, Sandbox, Template
from e2b.api.client.api.templates import get_templates_template_id
from e2b.api.client_sync import get_api_client

import sandpool_platform
from loopback_registry import busybox_base_registry
from sandpool_pytest_helpers import stop_process


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a loopback registry holding ``base:1`` (busybox)."""
    yield from busybox_base_registry("sandpool-brst-")


def _use(platform: sandpool_platform.Sandpool, monkeypatch) -> None:
    for name, value in {"E2B_API_URL": platform.url, "E2B_DOMAIN": platform.domain,
                        "E2B_SANDBOX_URL": platform.url, "E2B_API_KEY": platform.api_key}.items():
        monkeypatch.setenv(name, value)


def _status(platform: sandpool_platform.Sandpool, template: str, build: str) -> dict:
    with platform.client() as c:
        r = c.get(f"/templates/{template}/builds/{build}/status",
                  headers={"X-API-Key": platform.api_key})
    assert r.status_code == 200, r.text
    return r.json()


def test_build_status_and_template_ids_survive_a_restart(registry: str, monkeypatch):
    binary, runtime = sandpool_platform.check_prerequisites()
    first = sandpool_platform.start(binary, runtime)
    second = None
    try:
        _use(first, monkeypatch)
        template = Template().from_image(f"{registry}/base:1").run_cmd("echo kept > /kept.txt")
        info = Template.build(template, "kept-app")
        before = _status(first, "kept-app", info.build_id)
        assert before["status"] == "ready", before

        stop_process(first.process, grace=sandpool_platform.STOP_GRACE, kill_group=True)
        second = sandpool_platform.start(binary, runtime, restart_of=first)
        _use(second, monkeypatch)

        after = _status(second, "kept-app", info.build_id)
        assert (after["status"], after["buildID"], after["templateID"]) == ("ready", info.build_id, "kept-app")
        assert after["logs"] == before["logs"], "the logs were kept"
        got = get_templates_template_id.sync_detailed("kept-app", client=get_api_client(ConnectionConfig()))
        assert got.status_code == 200, got.content
        assert got.parsed.build_id == info.build_id
        sbx = Sandbox.create(template="kept-app", timeout=300)
        try:
            assert sbx.commands.run("cat /kept.txt", cwd="/").stdout.strip() == "kept"
        finally:
            sbx.kill()
    finally:
        sandpool_platform.stop(second or first)
