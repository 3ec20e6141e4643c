"""E2B ``network.mask_request_host`` and the MCP gateway through E2B's own
SDK (e2b 2.63.0, unchanged), issue 18.

- ``mask_request_host``: a request from outside the sandbox to one of its
  ports (routed by ``{port}-{id}.{domain}``, as ``get_host`` names it)
  arrives with the mask as its ``Host``, ``${PORT}`` replaced by the port,
  and the original host in ``X-Forwarded-Host``, as E2B's proxy sends it.
- ``mcp``: the SDK starts ``mcp-gateway`` in the sandbox itself, as root;
  where the image has none, the create fails with "Failed to start MCP
  gateway" and the sandbox it made is gone, as upstream's
  ``test_mcp_gateway_start_failure_kills_created_sandbox`` expects (a root
  pool). In a pool whose runtime is not root, the SDK's ``user="root"``
  command is refused, and the SDK kills the sandbox just the same.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import SandboxException

from sandpool_platform import POOL_IMAGE, PY_POOL_NAME, Sandpool, cli

# records the headers of the one request it answers, then exits
HEADERS_SERVER = """python3 -c "
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        open('/tmp/headers.txt', 'w').write(''.join(k + ': ' + v + chr(10) for k, v in self.headers.items()))
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('', 8080), H).handle_request()
" """


def _get_until_served(e2b_env: Sandpool, host: str) -> httpx.Response:
    """GET / of the sandbox port ``host`` names, once its server listens."""
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=e2b_env.url, timeout=10) as c:
        while True:
            r = c.get("/", headers={"Host": host})
            if r.status_code == 200 or time.monotonic() > deadline:
                return r
            time.sleep(0.2)


def test_mask_request_host_is_the_host_the_sandbox_sees(e2b_env: Sandpool):
    sbx = Sandbox.create(PY_POOL_NAME, timeout=120,
                         network={"mask_request_host": "custom-host.example.com:${PORT}"})
    try:
        info = Sandbox.get_info(sbx.sandbox_id)
        assert info.network is not None, info
        assert info.network.get("mask_request_host") == "custom-host.example.com:${PORT}", info.network
        sbx.commands.run(HEADERS_SERVER, background=True)
        host = sbx.get_host(8080)
        r = _get_until_served(e2b_env, host)
        assert r.status_code == 200, r.text
        seen = sbx.commands.run("cat /tmp/headers.txt").stdout
        assert "Host: custom-host.example.com:8080\n" in seen, seen
        assert f"X-Forwarded-Host: {host}\n" in seen, seen
        # envd (49983) is never masked: the SDK's own calls above worked
    finally:
        sbx.kill()


def test_mask_request_host_is_checked_as_upstream(e2b_env: Sandpool):
    with pytest.raises(SandboxException, match="mask request host is not valid: a:b:c"):
        Sandbox.create(PY_POOL_NAME, timeout=30, network={"mask_request_host": "a:b:c"})


def _running(metadata: dict[str, str]) -> list:
    query = SandboxQuery(state=[SandboxState.RUNNING], metadata=metadata)
    return Sandbox.list(query=query).next_items()


def test_mcp_gateway_start_failure_kills_the_sandbox(e2b_env: Sandpool):
    cli(e2b_env, "pool", "apply", "mcp-root", "--image", POOL_IMAGE, "--run-as-root",
        "--buffer-min", "0", "--buffer-max", "1")
    metadata = {"mcp_test_id": str(uuid.uuid4())}
    # busybox has no mcp-gateway: the SDK's start command exits 127
    with pytest.raises(SandboxException, match="Failed to start MCP gateway") as failed:
        Sandbox.create("mcp-root", timeout=60, metadata=metadata, mcp={"invalid_server": {}})
    assert "mcp-gateway" in str(failed.value), failed.value
    assert _running(metadata) == []


def test_mcp_in_a_pool_without_root_kills_the_sandbox_too(e2b_env: Sandpool):
    metadata = {"mcp_test_id": str(uuid.uuid4())}
    with pytest.raises(SandboxException, match="--run-as-root"):
        Sandbox.create(PY_POOL_NAME, timeout=60, metadata=metadata, mcp={"github": {}})
    assert _running(metadata) == []
