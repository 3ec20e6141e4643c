"""The public gRPC API (sandpool.v1.public.Sandboxes) of ``sandpool serve``
on real containerd, on the gateway's own port, through grpcio with messages
built from the committed proto (compiled with protoc here): streaming exec
(stdin echo, a signal, a large stdout, a caller that leaves mid-stream and
a deadline that passes: nothing left running), a 200 MB file round trip in
chunks at flat gateway memory, ownership across two keys, reflection, and
the ``sandpool sandbox`` CLI (the Rust client) end to end."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sandpool_platform import DEFAULT_BINARY, POOL_NAME, Sandpool

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "proto" / "proto"
PUBLIC_PROTO = "sandpool/v1/public/sandboxes.proto"
SERVICE = "/sandpool.v1.public.Sandboxes/"
MIB = 1 << 20


def _protoc() -> str:
    found = os.environ.get("PROTOC") or shutil.which("protoc")
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("protoc is required (scripts/install-deps.sh installs it)")
        pytest.skip("protoc not installed")
    return found


def _messages() -> dict[str, type]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "public.pb"
        subprocess.run([_protoc(), f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}", PUBLIC_PROTO],
                       check=True, timeout=60)
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    names = [m.name for f in fds.file for m in f.message_type]
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"sandpool.v1.public.{n}"))
            for n in names}


class Api:
    """Generic grpcio calls of the public service with one API key."""

    def __init__(self, sandpool: Sandpool, key: str, m: dict[str, type]):
        self.m = m
        self.channel = grpc.insecure_channel(f"{sandpool.host}:{sandpool.port}")
        self.md = (("authorization", f"Bearer {key}"),)

    def unary(self, method: str, req, resp: str, timeout: float = 60):
        call = self.channel.unary_unary(SERVICE + method, request_serializer=lambda x: x.SerializeToString(),
                                        response_deserializer=self.m[resp].FromString)
        return call(req, metadata=self.md, timeout=timeout)

    def stream(self, kind: str, method: str, reqs, resp: str, timeout: float | None = 120):
        make = getattr(self.channel, kind)
        call = make(SERVICE + method, request_serializer=lambda x: x.SerializeToString(),
                    response_deserializer=self.m[resp].FromString)
        return call(reqs, metadata=self.md, timeout=timeout)

    def create(self):
        req = self.m["CreateSandboxRequest"](pool=POOL_NAME, timeout_seconds=300,
                                             idempotency_key=uuid.uuid4().hex)
        return self.unary("Create", req, "Sandbox")

    def delete(self, sid: str):
        self.unary("Delete", self.m["DeleteSandboxRequest"](id=sid), "DeleteSandboxResponse")

    def start(self, sid: str, command: str, stdin: bool = False):
        return self.m["ExecRequest"](start=self.m["ExecStart"](sandbox_id=sid, command=command, stdin=stdin))

    def run(self, sid: str, command: str) -> tuple[bytes, int]:
        out, code = b"", None
        for r in self.stream("stream_stream", "Exec", iter([self.start(sid, command)]), "ExecResponse"):
            if r.WhichOneof("response") == "stdout":
                out += r.stdout
            elif r.WhichOneof("response") == "exited":
                code = r.exited.exit_code
        return out, code


def create_key(sandpool: Sandpool, name: str) -> str:
    binary = os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))
    out = subprocess.run([binary, "key", "create", "--name", name, "--data-dir", str(sandpool.base_dir / "data")],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def messages() -> dict[str, type]:
    return _messages()


@pytest.fixture
def api(sandpool: Sandpool, messages) -> Api:
    return Api(sandpool, sandpool.api_key, messages)


def _reason(err: grpc.RpcError) -> bytes:
    """The google.rpc.Status details the server sent (raw)."""
    for k, v in err.trailing_metadata() or ():
        if k == "grpc-status-details-bin":
            return v
    return b""


def test_grpc_exec_echoes_stdin_takes_a_signal_and_streams_a_large_stdout(api: Api):
    sb = api.create()
    try:
        m = api.m
        reqs = [api.start(sb.id, "cat", stdin=True), m["ExecRequest"](stdin=b"hello grpc\n"),
                m["ExecRequest"](close_stdin=True)]
        out = list(api.stream("stream_stream", "Exec", iter(reqs), "ExecResponse"))
        assert b"".join(r.stdout for r in out) == b"hello grpc\n"
        assert out[-1].exited.exit_code == 0

        def signalled():
            yield api.start(sb.id, "sleep 30")
            time.sleep(1.0)
            yield m["ExecRequest"](signal=15)
            time.sleep(30)  # keep the request stream open until the answer ends
        started = time.monotonic()
        call = api.stream("stream_stream", "Exec", signalled(), "ExecResponse")
        last = None
        for r in call:
            last = r
            if r.WhichOneof("response") == "exited":
                break
        call.cancel()
        assert last.exited.signal == 15, last
        assert time.monotonic() - started < 20

        n, chunks = 0, 0
        for r in api.stream("stream_stream", "Exec", iter([api.start(sb.id, "head -c 52428800 /dev/zero")]),
                            "ExecResponse"):
            if r.WhichOneof("response") == "stdout":
                n += len(r.stdout)
                chunks += 1
        assert n == 50 * MIB
        assert chunks > 50, chunks
    finally:
        api.delete(sb.id)


def _running(api: Api, sid: str, pid: str) -> bool:
    out, _ = api.run(sid, f"kill -0 {pid} 2>/dev/null && echo alive || echo gone")
    return out.strip() == b"alive"


def _wait_gone(api: Api, sid: str, pid: str) -> bool:
    for _ in range(50):
        if not _running(api, sid, pid):
            return True
        time.sleep(0.2)
    return False


def _pid_then_hold(api: Api, sid: str, timeout: float | None):
    """An Exec printing its shell's pid, then sleeping; the call and the pid."""
    def reqs():
        yield api.start(sid, "echo $$; exec sleep 300")
        time.sleep(600)
    call = api.stream("stream_stream", "Exec", reqs(), "ExecResponse", timeout=timeout)
    for r in call:
        if r.WhichOneof("response") == "stdout":
            return call, r.stdout.decode().strip()
    raise AssertionError("no pid")


def test_grpc_a_caller_that_leaves_or_runs_out_of_time_leaves_nothing_running(api: Api):
    sb = api.create()
    try:
        call, pid = _pid_then_hold(api, sb.id, timeout=None)
        assert _running(api, sb.id, pid)
        call.cancel()
        assert _wait_gone(api, sb.id, pid), f"{pid} still runs after its caller left"

        call, pid = _pid_then_hold(api, sb.id, timeout=3.0)
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _wait_gone(api, sb.id, pid), f"{pid} still runs after the deadline"
    finally:
        api.delete(sb.id)


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_grpc_200_mb_round_trip_streams_in_chunks_at_flat_memory(api: Api, sandpool: Sandpool):
    sb = api.create()
    m = api.m
    size, sent = 200 * MIB, hashlib.sha256()
    try:
        before = _hwm_kib(sandpool.process.pid)

        def upload():
            yield m["UploadRequest"](open=m["UploadOpen"](sandbox_id=sb.id, path="/tmp/grpc/big.bin",
                                                          create_parents=True))
            for i in range(size // MIB):
                chunk = (i.to_bytes(4, "big") * (MIB // 4))
                sent.update(chunk)
                yield m["UploadRequest"](data=chunk)
        up = api.stream("stream_unary", "Upload", upload(), "UploadResponse", timeout=300)
        assert up.size == size
        got, chunks, largest = hashlib.sha256(), 0, 0
        req = m["DownloadRequest"](sandbox_id=sb.id, path="/tmp/grpc/big.bin")
        n = 0
        for c in api.stream("unary_stream", "Download", req, "DownloadResponse", timeout=300):
            got.update(c.data)
            n += len(c.data)
            chunks += 1
            largest = max(largest, len(c.data))
        assert n == size and got.hexdigest() == sent.hexdigest()
        assert chunks >= 50 and largest <= 4 * MIB, (chunks, largest)
        grew = (_hwm_kib(sandpool.process.pid) - before) // 1024
        assert grew < 100, f"the platform's peak memory grew {grew} MiB over a 200 MiB round trip"
    finally:
        api.delete(sb.id)


def test_grpc_another_keys_sandbox_is_not_found(sandpool: Sandpool, messages):
    a = Api(sandpool, create_key(sandpool, "grpc-a"), messages)
    b = Api(sandpool, create_key(sandpool, "grpc-b"), messages)
    sb = a.create()
    try:
        for call in (lambda: b.unary("Get", messages["GetSandboxRequest"](id=sb.id), "Sandbox"),
                     lambda: b.delete(sb.id),
                     lambda: b.run(sb.id, "echo no")):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            details = _reason(err.value)
            assert b"google.rpc.ErrorInfo" in details and b"SANDBOX_NOT_FOUND" in details, details
        listed = b.unary("List", messages["ListSandboxesRequest"](), "ListSandboxesResponse")
        assert [s.id for s in listed.sandboxes] == []
        assert a.run(sb.id, "echo mine") == (b"mine\n", 0)
        with pytest.raises(grpc.RpcError) as err:
            Api(sandpool, "wrong-key", messages).unary("List", messages["ListSandboxesRequest"](),
                                                       "ListSandboxesResponse")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        a.delete(sb.id)


def test_grpc_reflection_lists_the_public_services(sandpool: Sandpool):
    channel = grpc.insecure_channel(f"{sandpool.host}:{sandpool.port}")
    call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                 request_serializer=lambda b: b, response_deserializer=lambda b: b)
    # ServerReflectionRequest{list_services: ""} (field 7, length-delimited)
    answers = list(call(iter([b"\x3a\x00"]), timeout=30))
    assert answers and b"sandpool.v1.public.Sandboxes" in answers[0], answers
    assert b"grpc.health.v1.Health" in answers[0]
    assert b"sandpool.v1.Scheduler" not in answers[0], "internal services stay unlisted"


def test_cli_sandbox_commands_go_through_the_public_api(sandpool: Sandpool, tmp_path: Path):
    binary = os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))
    env = {**os.environ, "SANDPOOL_GATEWAY": sandpool.url, "SANDPOOL_API_KEY": sandpool.api_key}

    def cli(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "sandbox", *args], env=env, capture_output=True, timeout=120, **kw)
    created = cli("create", "--pool", POOL_NAME, "--timeout", "300")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.decode().strip()
    try:
        ran = cli("exec", sid, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
        assert (ran.stdout, ran.stderr, ran.returncode) == (b"out\n", b"err\n", 7)
        piped = cli("exec", "-i", sid, "--", "tr", "a-z", "A-Z", input=b"shout\n")
        assert piped.stdout == b"SHOUT\n", piped.stderr
        local = tmp_path / "in.txt"
        local.write_bytes(b"file body\n")
        assert cli("cp", str(local), f"{sid}:/tmp/cli/in.txt").returncode == 0
        back = cli("cp", f"{sid}:/tmp/cli/in.txt", "-")
        assert back.stdout == b"file body\n", back.stderr
        assert sid in cli("ls").stdout.decode()
    finally:
        removed = cli("rm", sid)
    assert removed.returncode == 0, removed.stderr
    assert sid not in cli("ls").stdout.decode()


def test_grpc_create_retries_are_idempotent_per_key_and_watch_sees_the_end(sandpool: Sandpool, messages):
    m = messages
    a = Api(sandpool, create_key(sandpool, "grpc-idem-a"), messages)
    b = Api(sandpool, create_key(sandpool, "grpc-idem-b"), messages)
    req = m["CreateSandboxRequest"](pool=POOL_NAME, timeout_seconds=300, idempotency_key="retry-" + uuid.uuid4().hex)
    first = a.unary("Create", req, "Sandbox")
    again = a.unary("Create", req, "Sandbox")
    other = b.unary("Create", req, "Sandbox")
    try:
        assert again.id == first.id, "a retry with the same key returns the first sandbox"
        assert other.id != first.id, "another API key's idempotency keys are its own"
        events = a.stream("unary_stream", "Watch", m["WatchRequest"](id=first.id), "SandboxEvent", timeout=60)
        states = [next(events).sandbox.state]
        a.delete(first.id)
        states += [e.sandbox.state for e in events]
        running, deleted = (m["Sandbox"].DESCRIPTOR.fields_by_name["state"].enum_type.values_by_name[n].number
                            for n in ("SANDBOX_STATE_RUNNING", "SANDBOX_STATE_DELETED"))
        assert states[0] == running and states[-1] == deleted, states
    finally:
        for api, sid in ((a, first.id), (b, other.id)):
            try:
                api.delete(sid)
            except grpc.RpcError:
                pass
