"""The Python client package (clients/python, sandpool_client) against
``sandpool serve`` on real containerd: sync and async create, exec (stdin,
exit codes), file streams, errors with their reason across two keys, the
agent loop example; and its committed generated module matches the proto."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandpool_platform import POOL_NAME, Sandpool

CLIENT_DIR = Path(__file__).resolve().parents[3] / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

from sandpool_client import Client, SandpoolError  # noqa: E402
from sandpool_client.aio import AsyncClient  # noqa: E402


def _target(sandpool: Sandpool) -> str:
    return f"{sandpool.host}:{sandpool.port}"


def test_generated_module_matches_the_proto():
    protoc = os.environ.get("PROTOC") or shutil.which("protoc")
    if not protoc:
        if os.environ.get("CI") == "true":
            pytest.fail("protoc is required")
        pytest.skip("protoc not installed")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([protoc, f"-I{CLIENT_DIR.parents[1] / 'proto' / 'proto'}", f"--python_out={d}",
                        "sandpool/v1/public/sandboxes.proto"], check=True, timeout=60)
        fresh = (Path(d) / "sandpool/v1/public/sandboxes_pb2.py").read_text()
    committed = (CLIENT_DIR / "sandpool_client/_gen/sandboxes_pb2.py").read_text()
    def descriptor(text: str) -> str:
        return next(line for line in text.splitlines() if "AddSerializedFile" in line)
    assert descriptor(committed) == descriptor(fresh), "regenerate clients/python/sandpool_client/_gen"


def test_sync_client_runs_files_and_errors(sandpool: Sandpool):
    with Client(_target(sandpool), api_key=sandpool.api_key) as client:
        sb = client.create(pool=POOL_NAME, timeout=300, metadata={"via": "python"})
        try:
            r = sb.exec("echo out; echo err >&2; exit 4")
            assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 4)
            assert sb.exec("cat", stdin=[b"a", b"b\n"]).stdout == b"ab\n"
            data = bytes(range(256)) * 40000  # ~10 MB
            assert sb.write_file("/tmp/py/data.bin", data) == len(data)
            assert sb.read_file("/tmp/py/data.bin") == data
            assert sb.id in [s.id for s in client.list()]
            with pytest.raises(SandpoolError) as err:
                sb.read_file("/tmp/py/absent")
            assert err.value.code.name == "NOT_FOUND"
        finally:
            sb.delete()
        with pytest.raises(SandpoolError) as err:
            client.get(sb.id)
        assert (err.value.code.name, err.value.reason) == ("NOT_FOUND", "SANDBOX_NOT_FOUND")
    with Client(_target(sandpool), api_key="wrong") as bad:
        with pytest.raises(SandpoolError) as err:
            bad.list()
        assert (err.value.code.name, err.value.reason) == ("UNAUTHENTICATED", "INVALID_API_KEY")


def test_async_client_runs_and_moves_files(sandpool: Sandpool):
    async def run() -> None:
        async with AsyncClient(_target(sandpool), api_key=sandpool.api_key) as client:
            sb = await client.create(pool=POOL_NAME, timeout=300)
            try:
                results = await asyncio.gather(*(sb.exec(f"echo {i}") for i in range(5)))
                assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(5)]
                await sb.write_file("/tmp/aio/x.txt", b"async body")
                assert await sb.read_file("/tmp/aio/x.txt") == b"async body"
            finally:
                await sb.delete()
    asyncio.run(run())


def test_the_agent_loop_example_runs(sandpool: Sandpool):
    env = {**os.environ, "SANDPOOL_TARGET": _target(sandpool), "SANDPOOL_API_KEY": sandpool.api_key,
           "SANDPOOL_POOL": POOL_NAME, "PYTHONPATH": str(CLIENT_DIR)}
    out = subprocess.run([sys.executable, str(CLIENT_DIR / "examples" / "agent_loop.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "step 3: 9" in out.stdout and out.stdout.strip().endswith("deleted"), out.stdout


def test_sync_client_retries_unavailable_after_the_servers_retry_info():
    from concurrent import futures

    import grpc

    from sandpool_client import pb

    def any_(url: str, value: bytes) -> bytes:
        u = url.encode()
        return b"\x0a" + bytes([len(u)]) + u + b"\x12" + bytes([len(value)]) + value

    # google.rpc.Status{code 14, details: [ErrorInfo{reason}, RetryInfo{retry_delay 0.3 s}]}
    info = b"\x0a\x0bUNAVAILABLE"
    nanos = 300_000_000
    varint = bytearray()
    while True:
        b, nanos = nanos & 0x7F, nanos >> 7
        varint.append(b | (0x80 if nanos else 0))
        if not nanos:
            break
    duration = b"\x10" + bytes(varint)
    retry = b"\x0a" + bytes([len(duration)]) + duration
    details = [any_("type.googleapis.com/google.rpc.ErrorInfo", info),
               any_("type.googleapis.com/google.rpc.RetryInfo", retry)]
    status = b"\x08\x0e" + b"".join(b"\x1a" + bytes([len(d)]) + d for d in details)
    calls: list[float] = []

    def get(request, context):
        calls.append(time.monotonic())
        if len(calls) == 1:
            context.set_trailing_metadata((("grpc-status-details-bin", status),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return pb.Sandbox(id=pb.GetSandboxRequest.FromString(request).id)

    def bad_list(request, context):
        calls.append(time.monotonic())
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no")

    handler = grpc.method_handlers_generic_handler("sandpool.v1.public.Sandboxes", {
        "Get": grpc.unary_unary_rpc_method_handler(get, response_serializer=pb.Sandbox.SerializeToString),
        "List": grpc.unary_unary_rpc_method_handler(bad_list),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert client.get("sb-9").id == "sb-9"
            assert len(calls) == 2 and calls[1] - calls[0] >= 0.3, calls
            calls.clear()
            with pytest.raises(SandpoolError) as err:
                client.list()
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and len(calls) == 1
    finally:
        server.stop(None)
