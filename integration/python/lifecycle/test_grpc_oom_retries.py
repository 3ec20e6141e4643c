"""The public gRPC API against ``sandpool serve`` on real containerd, through
the Python client (clients/python): Watch reports an OOM kill inside a
sandbox (containerd TaskOOM -> node agent -> scheduler -> gateway) while the
sandbox lives on; the sync and async clients retry UNAVAILABLE after the
server's RetryInfo, and a retried create (its reply lost) makes one sandbox;
creates from a snapshot and snapshots are idempotent per key; the README's
Python example runs; and the client's streaming exec (stdin, a signal, a
large stdout, a caller leaving mid-stream, a deadline), a 200 MB round trip
at flat memory and ownership across two keys."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc

from sandpool_platform import CK_POOL_NAME, POOL_NAME, Sandpool

CLIENT_DIR = Path(__file__).resolve().parents[3] / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

from sandpool_client import Client, Sandbox, pb  # noqa: E402
from sandpool_client.aio import AsyncClient  # noqa: E402

RETRY_DELAY = 0.4


def _target(sandpool: Sandpool) -> str:
    return f"{sandpool.host}:{sandpool.port}"


def _any(url: str, value: bytes) -> bytes:
    u = url.encode()
    return b"\x0a" + bytes([len(u)]) + u + b"\x12" + bytes([len(value)]) + value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _unavailable_status(delay: float) -> bytes:
    """google.rpc.Status{code 14, ErrorInfo{reason}, RetryInfo{retry_delay}}."""
    info = b"\x0a\x0bUNAVAILABLE"
    duration = b"\x10" + _varint(int(delay * 1e9))
    retry = b"\x0a" + bytes([len(duration)]) + duration
    details = [_any("type.googleapis.com/google.rpc.ErrorInfo", info),
               _any("type.googleapis.com/google.rpc.RetryInfo", retry)]
    return b"\x08\x0e" + b"".join(b"\x1a" + bytes([len(d)]) + d for d in details)


class LostReply(grpc.RpcError):
    """What a client sees when the server did the work but the reply was lost
    (a proxy restarting): UNAVAILABLE with a RetryInfo."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection reset (test)"

    def trailing_metadata(self):
        return (("grpc-status-details-bin", _unavailable_status(RETRY_DELAY)),)


def _tagged(client: Client, tag: str) -> list:
    return list(client.call("List", pb.ListSandboxesRequest(metadata={"retry-test": tag})).sandboxes)


def test_grpc_watch_reports_an_oom_kill_and_the_sandbox_lives_on(sandpool: Sandpool):
    with Client(_target(sandpool), api_key=sandpool.api_key) as client:
        sb = client.create(pool=POOL_NAME, timeout=300)
        events: list = []
        stream = client.call("Watch", pb.WatchRequest(id=sb.id), timeout=120)

        def follow():
            try:
                for ev in stream:
                    events.append(ev)
            except grpc.RpcError:
                pass
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while not events and time.monotonic() < deadline:
                time.sleep(0.1)
            assert events and events[0].kind == pb.SandboxEvent.KIND_STATE, events
            assert events[0].sandbox.oom_kills == 0
            # 1 GiB in one buffer against the pool's 512 MiB memory limit
            ran = sb.exec("dd if=/dev/zero of=/dev/null bs=1G count=1 2>/dev/null; echo rc=$?", timeout=60)
            assert ran.stdout.strip() == b"rc=137", ran
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(e.kind == pb.SandboxEvent.KIND_OOM for e in events):
                time.sleep(0.1)
            ooms = [e for e in events if e.kind == pb.SandboxEvent.KIND_OOM]
            assert ooms, f"no OOM event within 20 s: {events}"
            assert ooms[0].sandbox.oom_kills == 1 and ooms[0].sandbox.id == sb.id, ooms
            now = client.get(sb.id).info
            assert now.state == pb.SANDBOX_STATE_RUNNING and now.oom_kills >= 1, now
            assert sb.exec("echo alive").stdout == b"alive\n", "the sandbox lives on"
        finally:
            stream.cancel()
            sb.delete()


def test_sync_client_retries_a_lost_create_reply_and_makes_one_sandbox(sandpool: Sandpool):
    tag = uuid.uuid4().hex
    with Client(_target(sandpool), api_key=sandpool.api_key) as client:
        real = client.attempt
        tries: list = []

        def lossy(method, request, timeout):
            reply = real(method, request, timeout)
            if method == "Create":
                tries.append((time.monotonic(), request.idempotency_key, reply.id))
                if len(tries) == 1:
                    raise LostReply()
            return reply
        client.attempt = lossy
        sb = client.create(pool=POOL_NAME, timeout=300, metadata={"retry-test": tag})
        try:
            assert len(tries) == 2, tries
            assert tries[0][1] == tries[1][1] != "", "the retry carries the same idempotency key"
            assert tries[1][0] - tries[0][0] >= RETRY_DELAY, "waited the server's RetryInfo"
            assert sb.id == tries[0][2], "the retry returns the sandbox the lost reply named"
            assert [s.id for s in _tagged(client, tag)] == [sb.id], "one sandbox, not two"
        finally:
            sb.delete()


def test_async_client_retries_a_lost_create_reply_and_makes_one_sandbox(sandpool: Sandpool):
    tag = uuid.uuid4().hex

    async def run() -> tuple[list, str]:
        async with AsyncClient(_target(sandpool), api_key=sandpool.api_key) as client:
            real = client.attempt
            tries: list = []

            async def lossy(method, request, timeout=-1.0):
                reply = await real(method, request, timeout)
                if method == "Create":
                    tries.append((time.monotonic(), request.idempotency_key, reply.id))
                    if len(tries) == 1:
                        raise LostReply()
                return reply
            client.attempt = lossy
            sb = await client.create(pool=POOL_NAME, timeout=300, metadata={"retry-test": tag})
            return tries, sb.id
    tries, sid = asyncio.run(run())
    with Client(_target(sandpool), api_key=sandpool.api_key) as client:
        try:
            assert len(tries) == 2, tries
            assert tries[0][1] == tries[1][1] != "", "the retry carries the same idempotency key"
            assert tries[1][0] - tries[0][0] >= RETRY_DELAY, "waited the server's RetryInfo"
            assert sid == tries[0][2]
            assert [s.id for s in _tagged(client, tag)] == [sid], "one sandbox, not two"
        finally:
            client.delete(sid)


def test_snapshots_and_creates_from_them_are_idempotent_per_key(sandpool: Sandpool):
    with Client(_target(sandpool), api_key=sandpool.api_key, timeout=300) as client:
        src = client.create(pool=CK_POOL_NAME, timeout=600)
        made = [src.id]
        try:
            src.exec("echo kept > /tmp/mark")
            key = "snap-" + uuid.uuid4().hex
            ck = src.snapshot(name="idem-" + key[-8:], leave_running=True, idempotency_key=key)
            again = src.snapshot(name="idem-" + key[-8:], leave_running=True, idempotency_key=key)
            assert again.id == ck.id, "a retried snapshot returns the first"
            tag = uuid.uuid4().hex
            create_key = "from-" + uuid.uuid4().hex
            first = client.create(snapshot=ck.id, timeout=300, metadata={"retry-test": tag},
                                  idempotency_key=create_key)
            made.append(first.id)
            retried = client.create(snapshot=ck.id, timeout=300, metadata={"retry-test": tag},
                                    idempotency_key=create_key)
            assert retried.id == first.id, "a retried create from a snapshot returns the first"
            assert [s.id for s in _tagged(client, tag)] == [first.id], "one restore, not two"
            assert first.exec("cat /tmp/mark").stdout == b"kept\n", "restored from the snapshot"
        finally:
            for sid in made:
                try:
                    client.delete(sid)
                except Exception:
                    pass


def test_the_readme_python_example_runs(sandpool: Sandpool):
    import os
    import re
    import subprocess
    readme = (CLIENT_DIR.parents[1] / "README.md").read_text()
    section = readme[readme.index("## gRPC API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "SANDPOOL_TARGET": _target(sandpool), "SANDPOOL_API_KEY": sandpool.api_key,
           "SANDPOOL_POOL": POOL_NAME, "PYTHONPATH": str(CLIENT_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "b'hi\\n'", out.stdout


MIB = 1 << 20


def _alive(sb, pid: str) -> bool:
    return sb.exec(f"kill -0 {pid} 2>/dev/null && echo alive || echo gone").stdout.strip() == b"alive"


def _gone(sb, pid: str) -> bool:
    for _ in range(50):
        if not _alive(sb, pid):
            return True
        time.sleep(0.2)
    return False


def _first_stdout(stream) -> str:
    for r in stream:
        if r.WhichOneof("response") == "stdout":
            return r.stdout.decode().strip()
    raise AssertionError("no output")


def test_python_client_signal_large_stdout_disconnect_and_deadline(sandpool: Sandpool):
    with Client(_target(sandpool), api_key=sandpool.api_key) as client:
        sb = client.create(pool=POOL_NAME, timeout=300)
        try:
            big = sb.exec("head -c 33554432 /dev/zero | tr '\\0' x")
            assert big.exit_code == 0 and len(big.stdout) == 32 * MIB and big.stdout.count(b"x") == 32 * MIB
            assert sb.exec("cat", stdin=[b"echo ", b"me\n"]).stdout == b"echo me\n"
            # a signal, sent on the request stream once the command runs
            started, done = threading.Event(), threading.Event()

            def reqs():
                yield pb.ExecRequest(start=pb.ExecStart(sandbox_id=sb.id, command="echo $$; exec sleep 300"))
                started.wait(30)
                yield pb.ExecRequest(signal=15)
                done.wait(60)
            stream = client.call("Exec", reqs(), timeout=60)
            _first_stdout(stream)
            started.set()
            exited = next(r.exited for r in stream if r.WhichOneof("response") == "exited")
            done.set()
            stream.cancel()
            assert (exited.signal, exited.exit_code) == (15, 143), exited
            # a caller that leaves mid-stream leaves nothing running
            stream = sb.exec_stream("echo $$; exec sleep 300")
            pid = _first_stdout(stream)
            assert _alive(sb, pid)
            stream.cancel()
            assert _gone(sb, pid), f"{pid} still runs after its caller left"
            # a deadline ends the call and the command
            stream = sb.exec_stream("echo $$; exec sleep 300", timeout=3)
            pid = _first_stdout(stream)
            try:
                for _ in stream:
                    pass
                raise AssertionError("no deadline")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
            assert _gone(sb, pid), f"{pid} still runs after the deadline"
        finally:
            sb.delete()


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_python_client_200_mb_round_trip_at_flat_memory(sandpool: Sandpool, tmp_path: Path):
    import hashlib
    src, back = tmp_path / "big.bin", tmp_path / "back.bin"
    sent = hashlib.sha256()
    with src.open("wb") as f:
        for i in range(200):
            chunk = i.to_bytes(4, "big") * (MIB // 4)
            sent.update(chunk)
            f.write(chunk)
    with Client(_target(sandpool), api_key=sandpool.api_key) as client:
        sb = client.create(pool=POOL_NAME, timeout=300)
        try:
            before = _hwm_kib(sandpool.process.pid)
            with src.open("rb") as f:
                assert sb.write_file("/tmp/py/big.bin", f) == 200 * MIB
            with back.open("wb") as f:
                assert sb.download("/tmp/py/big.bin", f) == 200 * MIB
            assert hashlib.sha256(back.read_bytes()).hexdigest() == sent.hexdigest()
            grew = (_hwm_kib(sandpool.process.pid) - before) // 1024
            assert grew < 100, f"the platform's peak memory grew {grew} MiB over a 200 MiB round trip"
        finally:
            sb.delete()


def test_python_client_another_keys_sandbox_is_not_found(sandpool: Sandpool):
    import os
    import subprocess

    from sandpool_client import SandpoolError
    from sandpool_platform import DEFAULT_BINARY

    def key(name: str) -> str:
        out = subprocess.run([os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY)), "key", "create", "--name", name,
                              "--data-dir", str(sandpool.base_dir / "data")],
                             check=True, capture_output=True, text=True, timeout=30)
        return out.stdout.strip()
    with Client(_target(sandpool), api_key=key("py-a")) as a, Client(_target(sandpool), api_key=key("py-b")) as b:
        sb = a.create(pool=POOL_NAME, timeout=300)
        try:
            for call in (lambda: b.get(sb.id), lambda: b.delete(sb.id),
                         lambda: Sandbox(b, sb.info).exec("echo no"),
                         lambda: Sandbox(b, sb.info).read_file("/etc/hostname")):
                try:
                    call()
                    raise AssertionError("another key reached the sandbox")
                except SandpoolError as e:
                    assert (e.code, e.reason) == (grpc.StatusCode.NOT_FOUND, "SANDBOX_NOT_FOUND"), e
            assert sb.id not in [s.id for s in b.list()]
            assert sb.exec("echo mine").stdout == b"mine\n"
        finally:
            sb.delete()
