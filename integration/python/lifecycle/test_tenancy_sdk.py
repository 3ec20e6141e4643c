"""Ownership between API keys on the real platform, through the real
opensandbox==1.1.1 and e2b SDKs, unchanged: keys made with ``sandpool key
create`` on the running platform's data dir work at once; a sandbox created
with key A is invisible to key B (get, list, kill: not found) and stays alive;
the platform key sees it; a revoked key is refused."""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import timedelta

import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import NotFoundException
from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.sandboxes import SandboxFilter

from sandpool_platform import DEFAULT_BINARY, POOL_IMAGE, POOL_NAME, Sandpool


def create_key(sandpool: Sandpool, name: str) -> str:
    """``sandpool key create`` on the platform's data dir; the printed key."""
    binary = os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))
    out = subprocess.run(
        [binary, "key", "create", "--name", name, "--data-dir", str(sandpool.base_dir / "data")],
        check=True, capture_output=True, text=True, timeout=30,
    )
    return out.stdout.strip()


def revoke_key(sandpool: Sandpool, name: str) -> None:
    binary = os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))
    subprocess.run(
        [binary, "key", "revoke", name, "--data-dir", str(sandpool.base_dir / "data")],
        check=True, capture_output=True, text=True, timeout=30,
    )


def test_opensandbox_key_b_cannot_get_list_or_kill_a_sandbox_of_key_a(sandpool: Sandpool):
    key_a, key_b = create_key(sandpool, "os-a"), create_key(sandpool, "os-b")
    suite = uuid.uuid4().hex
    sandbox = SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(api_key=key_a),
        extensions={"poolRef": POOL_NAME},
        metadata={"suite": suite},
        timeout=timedelta(minutes=5),
        ready_timeout=timedelta(seconds=60),
    )
    as_b = SandboxManagerSync.create(sandpool.config(api_key=key_b))
    as_admin = SandboxManagerSync.create(sandpool.config())
    try:
        with pytest.raises(SandboxApiException) as got:
            as_b.get_sandbox_info(sandbox.id)
        assert got.value.status_code == 404
        with pytest.raises(SandboxApiException) as killed:
            as_b.kill_sandbox(sandbox.id)
        assert killed.value.status_code == 404
        assert as_b.list_sandbox_infos(SandboxFilter(metadata={"suite": suite})).sandbox_infos == []
        # untouched, and visible to its owner and to the platform key
        assert sandbox.get_info().status.state == "Running"
        assert sandbox.commands.run("echo mine").text == "mine"
        listed = as_admin.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}))
        assert [s.id for s in listed.sandbox_infos] == [sandbox.id]
        assert as_admin.get_sandbox_info(sandbox.id).metadata == {"suite": suite}, "the owner record is hidden"

        revoke_key(sandpool, "os-b")
        with sandpool.client(api_key=key_b) as raw:
            assert raw.get("/v1/sandboxes").status_code == 401
    finally:
        as_b.close()
        as_admin.close()
        sandbox.kill()


def test_e2b_key_b_cannot_get_list_or_kill_a_sandbox_of_key_a(sandpool: Sandpool, monkeypatch):
    key_a, key_b = create_key(sandpool, "e2b-a"), create_key(sandpool, "e2b-b")
    for name, value in {"E2B_API_URL": sandpool.url, "E2B_DOMAIN": sandpool.domain, "E2B_SANDBOX_URL": sandpool.url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    suite = uuid.uuid4().hex
    sbx = Sandbox.create(POOL_NAME, metadata={"suite": suite}, timeout=120, api_key=key_a)
    try:
        with pytest.raises(NotFoundException):
            Sandbox.get_info(sbx.sandbox_id, api_key=key_b)
        assert Sandbox.kill(sbx.sandbox_id, api_key=key_b) is False, "B finds nothing to kill"
        assert Sandbox.list(query=SandboxQuery(metadata={"suite": suite}), api_key=key_b).next_items() == []
        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": suite}), api_key=key_a).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert sbx.commands.run("echo alive").stdout.strip() == "alive"
        assert Sandbox.get_info(sbx.sandbox_id, api_key=sandpool.api_key).metadata == {"suite": suite}
    finally:
        assert Sandbox.kill(sbx.sandbox_id, api_key=key_a) is True
    with httpx.Client(base_url=sandpool.url, headers={"X-API-Key": key_a}, timeout=30) as raw:
        assert raw.get(f"/sandboxes/{sbx.sandbox_id}").status_code == 404
