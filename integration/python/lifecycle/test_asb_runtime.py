"""The real ``k8s-agent-sandbox`` SDK (1.0.8, unchanged) against a real
sandpool-runtime serving the agent-sandbox runtime API (``--asb-listen``):
the SDK's own ``Sandbox`` object, connector, command executor and filesystem
run execute, upload, download, list and exists over HTTP.

The SDK is pointed at the runtime with its ``SandboxDirectConnectionConfig``
(as if the router forwarded to it: it still sends its ``X-Sandbox-*``
headers); the Kubernetes lookups it makes for the pod IP are answered by a
stand-in holding the Sandbox's status, so no cluster is needed.

Environment: SANDPOOL_RUNTIME_BIN (default <repo>/target/debug/sandpool-runtime).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import httpx
import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))
from sandpool_pytest_helpers import (  # noqa: E402
    free_port,
    log_tail,
    start_process,
    stop_process,
    wait_ready,
)

from k8s_agent_sandbox.sandbox import Sandbox  # noqa: E402
from k8s_agent_sandbox.models import SandboxDirectConnectionConfig  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]


class _SandboxLookup:
    """Stands in for the SDK's K8sHelper: the Sandbox object as the controller
    writes it (``status.podIPs``, ``serviceFQDN``, Ready)."""

    injected_api_client = None

    def __init__(self, name: str, namespace: str) -> None:
        self.calls: list[tuple[str, str]] = []
        self.sandbox = {
            "metadata": {"name": name, "namespace": namespace},
            "status": {
                "podIPs": ["127.0.0.1"],
                "serviceFQDN": f"{name}.{namespace}.svc.cluster.local",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    def get_sandbox(self, name: str, namespace: str):
        self.calls.append((name, namespace))
        return self.sandbox


@pytest.fixture(scope="module")
def asb_runtime(tmp_path_factory: pytest.TempPathFactory):
    """A runtime with its tokened API and, beside it, the untokened
    agent-sandbox API on its own port with its own root directory."""
    binary = Path(
        os.environ.get("SANDPOOL_RUNTIME_BIN", str(REPO_ROOT / "target/debug/sandpool-runtime"))
    )
    if not binary.is_file():
        pytest.fail(f"sandpool-runtime binary not found: {binary}", pytrace=False)
    base = tmp_path_factory.mktemp("asb-runtime").resolve()
    root = base / "app"  # created by the runtime
    log_path = base / "runtime.log"
    port, asb_port = free_port(), free_port()
    token = secrets.token_hex(16)
    argv = [
        str(binary),
        "--listen", f"127.0.0.1:{port}",
        "--access-token", token,
        "--data-dir", str(base / "data"),
        "--asb-listen", f"127.0.0.1:{asb_port}",
        "--asb-root", str(root),
    ]
    with open(log_path, "wb") as log:
        process = start_process(argv, log, base, env={**os.environ, "HOME": str(base)})

    def probe() -> str | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{asb_port}/", timeout=2.0)
        except httpx.HTTPError as exc:
            return repr(exc)
        return None if r.status_code == 200 else f"HTTP {r.status_code}"

    try:
        wait_ready(process, "sandpool-runtime", probe, 30, lambda: log_tail(log_path))
        yield {"url": f"http://127.0.0.1:{asb_port}", "execd": f"http://127.0.0.1:{port}",
               "root": root}
    finally:
        stop_process(process, grace=10)


@pytest.fixture
def sandbox(asb_runtime):
    lookup = _SandboxLookup("sb-asb", "team-a")
    sb = Sandbox(
        claim_name="sb-asb",
        sandbox_id="sb-asb",
        namespace="team-a",
        connection_config=SandboxDirectConnectionConfig(api_url=asb_runtime["url"]),
        k8s_helper=lookup,
    )
    yield sb
    sb.connector.close()


def test_asb_execute_runs_shell_commands_in_the_root(sandbox, asb_runtime):
    res = sandbox.commands.run("echo hello && pwd")
    assert res.exit_code == 0, res
    assert res.stdout == f"hello\n{asb_runtime['root']}\n"
    assert res.timed_out is False

    res = sandbox.commands.run("echo oops >&2; exit 7")
    assert (res.exit_code, res.stderr, res.stdout) == (7, "oops\n", "")


def test_asb_execute_reports_a_command_killed_at_its_timeout(sandbox):
    res = sandbox.commands.run("echo begun; sleep 30", command_timeout=1)
    assert res.timed_out is True, res
    assert res.exit_code == 124
    assert res.stdout == "begun\n"


def test_asb_files_upload_download_list_exists(sandbox, asb_runtime):
    blob = bytes(range(256)) * 64
    sandbox.files.write("data/blob.bin", blob)
    sandbox.files.write("data/note.txt", "héllo")
    assert (asb_runtime["root"] / "data" / "blob.bin").read_bytes() == blob
    assert sandbox.files.read("data/blob.bin") == blob
    assert sandbox.files.read("data/note.txt") == "héllo".encode()

    entries = {e.name: e for e in sandbox.files.list("data")}
    assert set(entries) == {"blob.bin", "note.txt"}
    assert entries["blob.bin"].type == "file"
    assert entries["blob.bin"].size == len(blob)
    assert entries["blob.bin"].modified.year >= 2024
    top = {e.name: e.type for e in sandbox.files.list(".")}
    assert top.get("data") == "directory", top

    assert sandbox.files.exists("data/note.txt") is True
    assert sandbox.files.exists("data") is True
    assert sandbox.files.exists("data/missing.txt") is False

    # what a command writes, the files API reads, and the other way round
    res = sandbox.commands.run("cat data/note.txt && printf made > data/made.txt")
    assert res.stdout == "héllo"
    assert sandbox.files.read("data/made.txt") == b"made"


def test_asb_api_is_untokened_but_the_runtime_api_keeps_its_token(asb_runtime):
    r = httpx.post(f"{asb_runtime['url']}/execute", json={"command": "true"}, timeout=10)
    assert r.status_code == 200 and r.json()["exit_code"] == 0
    # the same runtime's own API still refuses a caller without the token
    r = httpx.post(f"{asb_runtime['execd']}/command", json={"command": "true"}, timeout=10)
    assert r.status_code == 401
