"""The E2B control plane with the real ``e2b`` Python SDK (2.63.0), unchanged:
create from a template (= a sandpool pool), info, list with a metadata filter,
set_timeout, pause/connect, kill, errors; and E2B-style sandbox traffic
routing by ``E2b-Sandbox-Id``/``E2b-Sandbox-Port`` headers and by
``{port}-{id}.{domain}`` host.

envd (the E2B in-sandbox protocol on 49983) is not implemented yet, so data
plane calls (commands, files) are out of scope here; traffic routing is shown
against the sandbox runtime's own port 44772."""

from __future__ import annotations

import uuid

import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException

from sandpool_platform import POOL_NAME, Sandpool


@pytest.fixture
def e2b_env(sandpool: Sandpool, monkeypatch):
    monkeypatch.setenv("E2B_API_URL", sandpool.url)
    monkeypatch.setenv("E2B_DOMAIN", sandpool.domain)
    monkeypatch.setenv("E2B_SANDBOX_URL", sandpool.url)
    monkeypatch.setenv("E2B_API_KEY", sandpool.api_key)
    return sandpool


def test_create_info_list_timeout_kill(e2b_env: Sandpool):
    suite = uuid.uuid4().hex
    sbx = Sandbox.create(POOL_NAME, metadata={"suite": suite}, envs={"A": "1"}, timeout=120)
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == POOL_NAME
        assert info.metadata == {"suite": suite}
        assert info.state.value == "running"
        first_end = info.end_at

        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": suite})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items() == []

        sbx.set_timeout(600)
        assert sbx.get_info().end_at > first_end
    finally:
        assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False, "a second kill finds nothing"
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def test_pause_and_connect_resumes(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        assert sbx.pause() is True
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
        assert Sandbox.pause(sbx.sandbox_id) is False, "already paused"
        again = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert again.sandbox_id == sbx.sandbox_id
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
    finally:
        sbx.kill()


def test_unknown_template_and_bad_key(e2b_env: Sandpool, monkeypatch):
    with pytest.raises(SandboxException):
        Sandbox.create("no-such-template", timeout=60)
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.create(POOL_NAME, timeout=60)
    with httpx.Client(base_url=e2b_env.url) as c:
        r = c.get("/v2/sandboxes")
        assert r.status_code == 401
        assert r.json()["code"] == 401


def test_traffic_routing_by_header_and_host(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        with httpx.Client(base_url=e2b_env.url, timeout=10) as c:
            # by headers, to the sandbox runtime's port
            r = c.get("/ping", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "44772"})
            assert r.status_code == 200
            # by host {port}-{id}.{domain}
            r = c.get("/ping", headers={"Host": f"44772-{sbx.sandbox_id}.sandpool.test"})
            assert r.status_code == 200
            # a token-protected runtime route is refused without the token: the
            # E2B route passes the caller's credentials through, adds none
            r = c.get("/files/info?path=/", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "44772"})
            assert r.status_code == 401
            # unknown sandbox: clear 404
            r = c.get("/health", headers={"E2b-Sandbox-Id": "nope", "E2b-Sandbox-Port": "49983"})
            assert r.status_code == 404
            assert r.json()["code"] == 404
            # a port nothing listens on (envd is not implemented yet): clear 502
            r = c.get("/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"})
            assert r.status_code == 502
            assert "unreachable" in r.json()["message"]
    finally:
        sbx.kill()
