"""OpenSandbox's Credential Vault on the real platform: a sandbox created with
``credentialProxy`` gets a vault through the port-18080 route, and its plain
HTTP request to a listener in another network namespace arrives there with
the binding's header, which the node's credential proxy set. The secret is
never inside the sandbox: not in its environment, not in what it received,
not in the vault as read back. (Raw HTTP for the vault API: the 1.1 SDK
refuses its Credential Vault for sandboxes whose origin is ``template``.)
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.models.execd import RunCommandOpts

from netns_listener import recording_listener
from sandpool_platform import POOL_IMAGE, Sandpool

SECRET = "vault-secret-7c1f"
HOST = "target.vault.test"
OUTSIDE = "spcredv"  # a network namespace of this test
OUTSIDE_HOST, OUTSIDE_ADDR = "10.250.81.1", "10.250.81.2"


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The recording listener on port 80 of its own network namespace."""
    record = tmp_path_factory.mktemp("credvault") / "requests.log"
    with recording_listener(record, OUTSIDE, OUTSIDE_HOST, OUTSIDE_ADDR, "{self.path} {self.headers.get('Authorization')}"):
        yield record


def _get(sandbox: SandboxSync, path: str) -> str:
    cmd = (f"printf 'GET {path} HTTP/1.1\\r\\nHost: {HOST}\\r\\nAuthorization: Bearer fake\\r\\nConnection: close\\r\\n\\r\\n'"
           f" | nc -w 5 {OUTSIDE_ADDR} 80 2>&1; env; true")
    execution = sandbox.commands.run(cmd, opts=RunCommandOpts(timeout=timedelta(seconds=30)))
    return "".join(m.text for m in execution.logs.stdout)


def test_the_proxy_injects_the_binding_and_the_secret_stays_outside(sandpool: Sandpool, sandboxes, outside: Path):
    headers = {"OPEN-SANDBOX-API-KEY": sandpool.api_key}
    base = f"http://{sandpool.domain}/v1/sandboxes"
    with httpx.Client(timeout=60, headers=headers) as http:
        created = http.post(base, json={
            "image": {"uri": POOL_IMAGE}, "entrypoint": ["tail", "-f", "/dev/null"], "timeout": 300,
            "networkPolicy": {"defaultAction": "allow", "egress": [{"action": "allow", "target": HOST}]},
            "credentialProxy": {"enabled": True}})
        assert created.status_code == 202, created.text
        sandbox = SandboxSync.connect(created.json()["id"], connection_config=sandpool.config())
        sandboxes.append(sandbox)
        vault_url = f"{base}/{sandbox.id}/proxy/18080/credential-vault"
        vault = http.post(vault_url, json={
            "credentials": [{"name": "tok", "source": {"value": SECRET}}],
            "bindings": [{"name": "api", "auth": {"type": "bearer", "credential": "tok"},
                          "match": {"schemes": ["http"], "ports": [80], "hosts": [HOST],
                                    "methods": ["GET"], "paths": ["/v1/*"]}}]})
        assert vault.status_code == 201, vault.text
        assert SECRET not in vault.text and SECRET not in http.get(vault_url).text
        tls = http.patch(vault_url, json={"bindings": {"add": [
            {"name": "tls", "auth": {"type": "bearer", "credential": "tok"}, "match": {"hosts": [HOST]}}]}})
        assert tls.status_code == 501 and "scheme https" in tls.text, tls.text

    inside = _get(sandbox, "/v1/models") + _get(sandbox, "/other")
    assert inside.count("200 OK") >= 2, (inside, outside.read_text())
    assert SECRET not in inside, "the sandbox never sees the injected value"
    recorded = outside.read_text().splitlines()
    assert f"/v1/models Bearer {SECRET}" in recorded, recorded
    assert "/other Bearer fake" in recorded, "no binding: the request is left as it was"
