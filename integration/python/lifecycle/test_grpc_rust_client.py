"""The Rust client (clients/rust, sandpool-client) against ``sandpool serve``
on real containerd, through the CLI built on it (``sandpool sandbox``):
streaming exec (stdin echo, a signal, a large stdout, a client killed
mid-stream leaving nothing running, a deadline), a 200 MB file round trip at
flat memory, ownership across two keys, and a retried create (its reply
lost, UNAVAILABLE with RetryInfo) that makes one sandbox."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc

from sandpool_platform import DEFAULT_BINARY, POOL_NAME, Sandpool

CLIENT_DIR = Path(__file__).resolve().parents[3] / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

from sandpool_client import Client, pb  # noqa: E402

MIB = 1 << 20


def _binary() -> str:
    return os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))


def _env(gateway: str, key: str) -> dict:
    return {**os.environ, "SANDPOOL_GATEWAY": gateway, "SANDPOOL_API_KEY": key}


def _cli(sandpool: Sandpool, *args: str, key: str | None = None, gateway: str | None = None,
         timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = _env(gateway or sandpool.url, key or sandpool.api_key)
    return subprocess.run([_binary(), "sandbox", *args], env=env, capture_output=True, timeout=timeout, **kw)


def _create(sandpool: Sandpool, key: str | None = None, *extra: str) -> str:
    made = _cli(sandpool, "create", "--pool", POOL_NAME, "--timeout", "300", *extra, key=key)
    assert made.returncode == 0, made.stderr
    return made.stdout.decode().strip()


def _key(sandpool: Sandpool, name: str) -> str:
    out = subprocess.run([_binary(), "key", "create", "--name", name, "--data-dir", str(sandpool.base_dir / "data")],
                         check=True, capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _alive(sandpool: Sandpool, sid: str, pid: str) -> bool:
    out = _cli(sandpool, "exec", sid, "--", "sh", "-c", f"kill -0 {pid} 2>/dev/null && echo alive || echo gone")
    return out.stdout.strip() == b"alive"


def _gone(sandpool: Sandpool, sid: str, pid: str) -> bool:
    for _ in range(50):
        if not _alive(sandpool, sid, pid):
            return True
        time.sleep(0.2)
    return False


def _held(sandpool: Sandpool, sid: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """`sandbox exec` of a shell printing its pid, then sleeping: the CLI and the pid."""
    proc = subprocess.Popen([_binary(), "sandbox", "exec", *extra, sid, "--", "sh", "-c", "echo $$; exec sleep 300"],
                            env=_env(sandpool.url, sandpool.api_key), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    pid = proc.stdout.readline().decode().strip()
    assert pid.isdigit(), (pid, proc.stderr.read() if proc.poll() is not None else b"")
    return proc, pid


def test_rust_client_exec_echoes_stdin_takes_a_signal_and_streams_a_large_stdout(sandpool: Sandpool):
    sid = _create(sandpool)
    try:
        echoed = _cli(sandpool, "exec", "-i", sid, "--", "cat", input=b"ping\n" * 1000)
        assert (echoed.returncode, echoed.stdout) == (0, b"ping\n" * 1000), echoed.stderr
        # Ctrl-C on the CLI reaches the command as SIGINT: killed, 128+2
        proc, pid = _held(sandpool, sid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, proc.stderr.read()
        assert _gone(sandpool, sid, pid)
        big = _cli(sandpool, "exec", sid, "--", "sh", "-c", "head -c 33554432 /dev/zero | tr '\\0' x")
        assert big.returncode == 0, big.stderr
        assert len(big.stdout) == 32 * MIB and big.stdout.count(b"x") == 32 * MIB
    finally:
        _cli(sandpool, "rm", sid)


def test_rust_client_killed_mid_stream_or_past_its_deadline_leaves_nothing_running(sandpool: Sandpool):
    sid = _create(sandpool)
    try:
        proc, pid = _held(sandpool, sid)
        assert _alive(sandpool, sid, pid)
        proc.kill()  # no goodbye: the connection just drops
        proc.wait(timeout=10)
        assert _gone(sandpool, sid, pid), f"{pid} still runs after its client died"
        started = time.monotonic()
        proc, pid = _held(sandpool, sid, "--deadline", "3")
        code = proc.wait(timeout=30)
        err = proc.stderr.read().decode()
        assert code != 0 and "deadline" in err.lower(), (code, err)
        assert time.monotonic() - started < 20
        assert _gone(sandpool, sid, pid), f"{pid} still runs after the deadline"
    finally:
        _cli(sandpool, "rm", sid)


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_rust_client_200_mb_round_trip_at_flat_memory(sandpool: Sandpool, tmp_path: Path):
    sid = _create(sandpool)
    src, back = tmp_path / "big.bin", tmp_path / "back.bin"
    sent = hashlib.sha256()
    with src.open("wb") as f:
        for i in range(200):
            chunk = i.to_bytes(4, "big") * (MIB // 4)
            sent.update(chunk)
            f.write(chunk)
    try:
        before = _hwm_kib(sandpool.process.pid)
        up = subprocess.Popen([_binary(), "sandbox", "cp", str(src), f"{sid}:/tmp/rust/big.bin"],
                              env=_env(sandpool.url, sandpool.api_key), stderr=subprocess.PIPE)
        cli_peak = _peak_while(up)
        assert up.returncode == 0, up.stderr.read()
        down = _cli(sandpool, "cp", f"{sid}:/tmp/rust/big.bin", str(back), timeout=300)
        assert down.returncode == 0, down.stderr
        got = hashlib.sha256(back.read_bytes()).hexdigest()
        assert back.stat().st_size == 200 * MIB and got == sent.hexdigest()
        grew = (_hwm_kib(sandpool.process.pid) - before) // 1024
        assert grew < 100, f"the platform's peak memory grew {grew} MiB over a 200 MiB round trip"
        assert cli_peak < 100 * 1024, f"the uploading client peaked at {cli_peak} KiB"
    finally:
        _cli(sandpool, "rm", sid)


def _peak_while(proc: subprocess.Popen) -> int:
    """The peak resident memory (KiB) of ``proc`` until it exits."""
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, _hwm_kib(proc.pid))
        except (OSError, AssertionError):
            pass
        time.sleep(0.05)
    return peak


def test_rust_client_another_keys_sandbox_is_not_found(sandpool: Sandpool, tmp_path: Path):
    a, b = _key(sandpool, "rust-a"), _key(sandpool, "rust-b")
    sid = _create(sandpool, a)
    try:
        local = tmp_path / "f"
        local.write_bytes(b"x")
        for args in (("exec", sid, "--", "echo", "no"), ("cp", str(local), f"{sid}:/tmp/f"),
                     ("cp", f"{sid}:/etc/hostname", "-"), ("rm", sid)):
            out = _cli(sandpool, *args, key=b)
            assert out.returncode != 0 and b"not found" in out.stderr.lower(), (args, out.stderr)
        assert sid not in _cli(sandpool, "ls", key=b).stdout.decode()
        mine = _cli(sandpool, "exec", sid, "--", "echo", "mine", key=a)
        assert mine.stdout == b"mine\n", mine.stderr
        wrong = _cli(sandpool, "ls", key="wrong-key")
        assert wrong.returncode != 0 and b"invalid api key" in wrong.stderr.lower(), wrong.stderr
    finally:
        _cli(sandpool, "rm", sid, key=a)


class _LossyProxy:
    """A gRPC proxy to the gateway whose first Create is made but its reply
    lost: the caller gets UNAVAILABLE with a RetryInfo of ``delay``."""

    def __init__(self, upstream: str, delay: float):
        self.channel = grpc.insecure_channel(upstream)
        self.creates: list[tuple[float, bytes]] = []
        self.lock = threading.Lock()
        self.delay = delay
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def service(self, details):
        method = details.method

        def forward(request: bytes, context):
            md = tuple((k, v) for k, v in context.invocation_metadata() if k in ("authorization", "x-api-key"))
            call = self.channel.unary_unary(method)
            try:
                reply = call(request, metadata=md, timeout=60)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())
            if method.endswith("/Create"):
                with self.lock:
                    self.creates.append((time.monotonic(), request))
                    first = len(self.creates) == 1
                if first:
                    context.set_trailing_metadata((("grpc-status-details-bin", _unavailable(self.delay)),))
                    context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (test)")
            return reply
        return grpc.unary_unary_rpc_method_handler(forward)

    def stop(self):
        self.server.stop(None)
        self.channel.close()


def _unavailable(delay: float) -> bytes:
    """google.rpc.Status{code 14, details: [RetryInfo{retry_delay}]}."""
    nanos, varint = int(delay * 1e9), bytearray()
    while True:
        b, nanos = nanos & 0x7F, nanos >> 7
        varint.append(b | (0x80 if nanos else 0))
        if not nanos:
            break
    duration = b"\x10" + bytes(varint)
    retry = b"\x0a" + bytes([len(duration)]) + duration
    url = b"type.googleapis.com/google.rpc.RetryInfo"
    anyv = b"\x0a" + bytes([len(url)]) + url + b"\x12" + bytes([len(retry)]) + retry
    return b"\x08\x0e\x1a" + bytes([len(anyv)]) + anyv


def test_rust_client_retries_a_lost_create_reply_and_makes_one_sandbox(sandpool: Sandpool):
    proxy = _LossyProxy(f"{sandpool.host}:{sandpool.port}", delay=0.5)
    tag = uuid.uuid4().hex
    try:
        made = _cli(sandpool, "create", "--pool", POOL_NAME, "--timeout", "300", "-m", f"retry-test={tag}",
                    gateway=f"http://127.0.0.1:{proxy.port}")
        assert made.returncode == 0, made.stderr
        sid = made.stdout.decode().strip()
        try:
            assert len(proxy.creates) == 2, "one retry"
            (t0, first), (t1, again) = proxy.creates
            assert first == again, "the retry is the same request (same idempotency key)"
            assert t1 - t0 >= 0.5, "it waited the RetryInfo"
            with Client(f"{sandpool.host}:{sandpool.port}", api_key=sandpool.api_key) as client:
                tagged = client.call("List", pb.ListSandboxesRequest(metadata={"retry-test": tag})).sandboxes
                assert [s.id for s in tagged] == [sid], "one sandbox, not two"
        finally:
            _cli(sandpool, "rm", sid)
    finally:
        proxy.stop()


def test_sandpool_exec_and_release_with_a_key_go_through_the_public_api(sandpool: Sandpool):
    a, b = _key(sandpool, "cli-a"), _key(sandpool, "cli-b")
    sid = _create(sandpool, a)

    def run(*args: str, key: str) -> subprocess.CompletedProcess:
        # no scheduler to reach and no service token: only the public API can answer
        env = {**_env(sandpool.url, key), "SANDPOOL_SCHEDULER": "http://127.0.0.1:9",
               "SANDPOOL_DATA_DIR": "/nonexistent"}
        env.pop("SANDPOOL_SERVICE_TOKEN", None)
        return subprocess.run([_binary(), *args], env=env, capture_output=True, timeout=60)
    try:
        ran = run("exec", sid, "--", "sh", "-c", "echo hi; echo err >&2; exit 4", key=a)
        assert (ran.stdout, ran.stderr, ran.returncode) == (b"hi\n", b"err\n", 4), ran.stderr
        for args in (("exec", sid, "--", "true"), ("release", sid)):
            other = run(*args, key=b)
            assert other.returncode != 0 and b"not found" in other.stderr.lower(), (args, other.stderr)
        released = run("release", sid, key=a)
        assert released.returncode == 0 and released.stdout.decode().strip() == f"released {sid}", released.stderr
        assert sid not in _cli(sandpool, "ls", key=a).stdout.decode()
    finally:
        _cli(sandpool, "rm", sid, key=a)
