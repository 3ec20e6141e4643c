"""The real ``k8s-agent-sandbox`` SDK (1.0.8, unchanged, with its ``grpc``
extra) against a real sandpool-runtime serving sandboxd (KEP-539.2:
``--sandboxd-listen`` REST files API, ``--sandboxd-grpc-listen`` gRPC
ProcessService): the SDK's own ``Sandbox``, connector, command executor
(gRPC ``Execute``) and filesystem (``/v1/files/*``) run commands, write,
read, list, check and delete files.

Each test runs under the SDK's three sandboxd connections:

* ``SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip")``: the
  Sandbox's ``status.podIPs`` (127.0.0.1 here);
* ``SandboxdInClusterConnectionConfig(mode="in-cluster-service")``: its
  ``status.serviceFQDN`` (``localhost`` here);
* ``SandboxdPodTunnelConnectionConfig`` (ports 8080 and 9090): the SDK starts
  ``kubectl port-forward pod/NAME L1:8080 L2:9090`` itself; a stand-in
  ``kubectl`` on PATH forwards those local ports to the runtime's.

The Kubernetes lookups the SDK makes are answered by a stand-in holding the
Sandbox object, so no cluster is needed.

Environment: SANDPOOL_RUNTIME_BIN (default <repo>/target/debug/sandpool-runtime).
"""

from __future__ import annotations

import json
import os
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

from k8s_agent_sandbox.exceptions import SandboxRequestError  # noqa: E402
from k8s_agent_sandbox.models import (  # noqa: E402
    SandboxdInClusterConnectionConfig,
    SandboxdPodTunnelConnectionConfig,
)
from k8s_agent_sandbox.sandbox import Sandbox  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]

# `kubectl port-forward pod/NAME L:R ... -n NS`: forward each local port L
# (127.0.0.1) to the runtime's port for R (SBXD_FAKE_FORWARD "R=port,..."),
# noting the call in SBXD_FAKE_CALLS. Ends when the SDK terminates it.
_FAKE_KUBECTL = r'''
import json, os, signal, socket, sys, threading

args = sys.argv[1:]
with open(os.environ["SBXD_FAKE_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\n")
if args[:1] != ["port-forward"] or not args[1].startswith("pod/"):
    sys.exit("fake kubectl: only port-forward pod/NAME")
ports = dict(p.split("=") for p in os.environ["SBXD_FAKE_FORWARD"].split(","))

def pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(listener, target):
    while True:
        conn, _ = listener.accept()
        up = socket.create_connection(("127.0.0.1", int(target)))
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()

for spec in args[2:]:
    if ":" not in spec or spec.startswith("-"):
        continue
    local, remote = spec.split(":")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(local)))
    listener.listen(16)
    threading.Thread(target=serve, args=(listener, ports[remote]), daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    signal.pause()
'''


class _SandboxLookup:
    """Stands in for the SDK's K8sHelper: the Sandbox object as the controller
    writes it (``status.podIPs``, ``serviceFQDN``, Ready)."""

    injected_api_client = None

    def __init__(self, name: str, namespace: str) -> None:
        self.sandbox = {
            "metadata": {"name": name, "namespace": namespace},
            "status": {
                "podIPs": ["127.0.0.1"],
                "serviceFQDN": "localhost",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    def get_sandbox(self, name: str, namespace: str):
        return self.sandbox


@pytest.fixture(scope="module")
def sandboxd_runtime(tmp_path_factory: pytest.TempPathFactory):
    """A runtime serving sandboxd's two ports (and its own tokened API)."""
    binary = Path(
        os.environ.get("SANDPOOL_RUNTIME_BIN", str(REPO_ROOT / "target/debug/sandpool-runtime"))
    )
    if not binary.is_file():
        pytest.fail(f"sandpool-runtime binary not found: {binary}", pytrace=False)
    base = tmp_path_factory.mktemp("sandboxd-runtime").resolve()
    root = base / "workspace"  # created by the runtime
    log_path = base / "runtime.log"
    port, rest_port, grpc_port = free_port(), free_port(), free_port()
    argv = [
        str(binary),
        "--listen", f"127.0.0.1:{port}",
        "--access-token", "not-sent-by-the-sdk",
        "--data-dir", str(base / "data"),
        "--sandboxd-listen", f"127.0.0.1:{rest_port}",
        "--sandboxd-grpc-listen", f"127.0.0.1:{grpc_port}",
        "--sandboxd-root", str(root),
    ]
    with open(log_path, "wb") as log:
        process = start_process(argv, log, base, env={**os.environ, "HOME": str(base)})

    def probe() -> str | None:
        try:
            r = httpx.get(f"http://127.0.0.1:{rest_port}/v1/health", timeout=2.0)
        except httpx.HTTPError as exc:
            return repr(exc)
        return None if r.status_code == 200 else f"HTTP {r.status_code}"

    try:
        wait_ready(process, "sandpool-runtime", probe, 30, lambda: log_tail(log_path))
        yield {"rest": rest_port, "grpc": grpc_port, "root": root, "base": base}
    finally:
        stop_process(process, grace=10)


@pytest.fixture(scope="module")
def fake_kubectl(sandboxd_runtime):
    """A ``kubectl`` first on PATH whose port-forward reaches the runtime."""
    bindir = sandboxd_runtime["base"] / "bin"
    bindir.mkdir()
    exe = bindir / "kubectl"
    exe.write_text(f"#!{sys.executable}\n{_FAKE_KUBECTL}")
    exe.chmod(0o755)
    calls = sandboxd_runtime["base"] / "kubectl-calls.jsonl"
    saved = {k: os.environ.get(k) for k in ("PATH", "SBXD_FAKE_FORWARD", "SBXD_FAKE_CALLS")}
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["SBXD_FAKE_FORWARD"] = (
        f"8080={sandboxd_runtime['rest']},9090={sandboxd_runtime['grpc']}"
    )
    os.environ["SBXD_FAKE_CALLS"] = str(calls)
    try:
        yield calls
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["in-cluster-pod-ip", "in-cluster-service", "pod-tunnel"])
def sandbox(request, sandboxd_runtime):
    rt = sandboxd_runtime
    if request.param == "pod-tunnel":
        request.getfixturevalue("fake_kubectl")
        config = SandboxdPodTunnelConnectionConfig()
    else:
        config = SandboxdInClusterConnectionConfig(
            mode=request.param, rest_port=rt["rest"], grpc_port=rt["grpc"]
        )
    sb = Sandbox(
        claim_name="sb-sbxd",
        sandbox_id="sb-sbxd",
        namespace="team-a",
        connection_config=config,
        k8s_helper=_SandboxLookup("sb-sbxd", "team-a"),
    )
    assert sb.connector.is_sandboxd()
    yield sb
    sb.connector.close()


def test_sandboxd_run_executes_through_grpc(sandbox, sandboxd_runtime):
    res = sandbox.commands.run("echo hello && pwd")
    assert (res.exit_code, res.stdout, res.stderr) == (
        0, f"hello\n{sandboxd_runtime['root']}\n", ""
    ), res

    res = sandbox.commands.run("echo oops >&2; exit 7")
    assert (res.exit_code, res.stderr, res.stdout) == (7, "oops\n", "")

    (sandboxd_runtime["root"] / "sub").mkdir(exist_ok=True)
    res = sandbox.commands.run('echo "$GREETING"; pwd', env={"GREETING": "hi"}, cwd="sub")
    assert res.stdout == f"hi\n{sandboxd_runtime['root']}/sub\n", res

    with pytest.raises(RuntimeError, match="PERMISSION_DENIED"):
        sandbox.commands.run("true", cwd="../..")


def test_sandboxd_run_reports_a_command_past_its_timeout(sandbox):
    res = sandbox.commands.run("sleep 30", command_timeout=1)
    assert (res.timed_out, res.exit_code) == (True, 124), res


def test_sandboxd_files_write_read_list_exists_delete(sandbox, sandboxd_runtime):
    root = sandboxd_runtime["root"]
    blob = bytes(range(256)) * 64
    sandbox.files.write("data/blob.bin", blob)
    sandbox.files.write("data/note.txt", "héllo")
    assert (root / "data" / "blob.bin").read_bytes() == blob
    assert sandbox.files.read("data/blob.bin") == blob
    assert sandbox.files.read("data/note.txt") == "héllo".encode()

    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, b: bytes) -> int:
            self.data += b
            return len(b)

    sink = Sink()
    assert sandbox.files.read_to("data/blob.bin", sink) == len(blob)
    assert sink.data == blob

    entries = {e.name: e for e in sandbox.files.list("data")}
    assert set(entries) == {"blob.bin", "note.txt"}
    assert (entries["blob.bin"].type, entries["blob.bin"].size) == ("file", len(blob))
    assert entries["note.txt"].mode == "0644"
    assert entries["blob.bin"].modified.year >= 2024
    top = {e.name: e.type for e in sandbox.files.list("")}
    assert top.get("data") == "directory", top

    assert sandbox.files.exists("data/note.txt") is True
    assert sandbox.files.exists("data") is True
    assert sandbox.files.exists("data/missing.txt") is False

    # what a command writes, the files API reads, and the other way round
    res = sandbox.commands.run("cat data/note.txt && printf made > data/made.txt")
    assert res.stdout == "héllo"
    assert sandbox.files.read("data/made.txt") == b"made"

    with pytest.raises(SandboxRequestError) as err:
        sandbox.files.delete("data")
    assert err.value.status_code == 409
    sandbox.files.delete("data/made.txt")
    assert not (root / "data" / "made.txt").exists()
    sandbox.files.delete("data", recursive=True)
    assert not (root / "data").exists()
    with pytest.raises(SandboxRequestError) as err:
        sandbox.files.read("data/note.txt")
    assert err.value.status_code == 404


def test_sandboxd_paths_stay_in_the_root(sandbox, sandboxd_runtime):
    (sandboxd_runtime["base"] / "outside.txt").write_text("secret")
    with pytest.raises(SandboxRequestError) as err:
        sandbox.files.read("../outside.txt", allow_unsafe_paths=True)
    assert err.value.status_code == 403
    assert err.value.response.json()["code"] == "PERMISSION_DENIED"


def test_pod_tunnel_forwards_the_configured_pod_ports(sandboxd_runtime, fake_kubectl):
    sb = Sandbox(
        claim_name="sb-tun",
        sandbox_id="sb-tun",
        namespace="team-b",
        connection_config=SandboxdPodTunnelConnectionConfig(),
        k8s_helper=_SandboxLookup("sb-tun", "team-b"),
    )
    try:
        assert sb.commands.run("echo via-tunnel").stdout == "via-tunnel\n"
    finally:
        sb.connector.close()
    calls = [json.loads(line) for line in fake_kubectl.read_text().splitlines()]
    args = next(c for c in calls if "pod/sb-tun" in c)
    assert args[0] == "port-forward"
    assert [a.split(":")[1] for a in args[2:4]] == ["8080", "9090"], args
    assert args[4:6] == ["-n", "team-b"], args
