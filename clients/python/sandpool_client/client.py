"""The sync client: :class:`Client` and the :class:`Sandbox` wrapper."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Optional

import grpc

from ._gen import sandboxes_pb2 as pb

SERVICE = "/sandpool.v1.public.Sandboxes/"
CHUNK = 256 * 1024

# method -> (request class, response class, kind)
METHODS = {
    "Create": (pb.CreateSandboxRequest, pb.Sandbox, "unary_unary"),
    "Get": (pb.GetSandboxRequest, pb.Sandbox, "unary_unary"),
    "List": (pb.ListSandboxesRequest, pb.ListSandboxesResponse, "unary_unary"),
    "Renew": (pb.RenewSandboxRequest, pb.Sandbox, "unary_unary"),
    "Pause": (pb.PauseSandboxRequest, pb.Sandbox, "unary_unary"),
    "Resume": (pb.ResumeSandboxRequest, pb.Sandbox, "unary_unary"),
    "Snapshot": (pb.SnapshotSandboxRequest, pb.SandboxSnapshot, "unary_unary"),
    "Delete": (pb.DeleteSandboxRequest, pb.DeleteSandboxResponse, "unary_unary"),
    "Exec": (pb.ExecRequest, pb.ExecResponse, "stream_stream"),
    "Upload": (pb.UploadRequest, pb.UploadResponse, "stream_unary"),
    "Download": (pb.DownloadRequest, pb.DownloadResponse, "unary_stream"),
    "Watch": (pb.WatchRequest, pb.SandboxEvent, "unary_stream"),
}


class SandpoolError(Exception):
    """A failed call: its gRPC code, the server's ``ErrorInfo`` reason and
    ``RetryInfo`` delay (seconds, or None)."""

    def __init__(self, err: grpc.RpcError):
        self.code = err.code()
        self.details = err.details()
        raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
        self.reason, self.retry_after = _details(raw)
        super().__init__(f"{self.code.name}: {self.details} ({self.reason})")


def _fields(buf: bytes) -> Iterator[tuple[int, object]]:
    """The fields of a protobuf message: bytes (length-delimited) or int (varint)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        kind = key & 7
        if kind == 2:
            n, i = _varint(buf, i)
            yield key >> 3, buf[i:i + n]
            i += n
        elif kind == 0:
            v, i = _varint(buf, i)
            yield key >> 3, v
        elif kind == 1:
            i += 8
        elif kind == 5:
            i += 4
        else:
            return


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while i < len(buf):
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return n, i


def _details(status: bytes) -> tuple[str, Optional[float]]:
    """``ErrorInfo.reason`` and ``RetryInfo.retry_delay`` (seconds) out of a
    serialized ``google.rpc.Status``."""
    reason, retry = "", None
    for num, anyv in _fields(status):
        if num != 3 or not isinstance(anyv, bytes):
            continue
        parts = dict(_fields(anyv))
        url, value = parts.get(1, b""), parts.get(2, b"")
        if url.endswith(b"google.rpc.ErrorInfo"):
            reason = dict(_fields(value)).get(1, b"").decode()
        elif url.endswith(b"google.rpc.RetryInfo"):
            d = dict(_fields(dict(_fields(value)).get(1, b"")))
            retry = d.get(1, 0) + d.get(2, 0) / 1e9
    return reason, retry


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# tries of a call that is safe to repeat, and the wait between them when the
# server sends no RetryInfo (doubling), at most MAX_WAIT each
ATTEMPTS = 3
FIRST_WAIT = 0.2
MAX_WAIT = 10.0


def retry_wait(err: "SandpoolError", attempt: int, attempts: int = ATTEMPTS) -> Optional[float]:
    """How long to wait before try ``attempt + 1`` after ``err`` (None: give
    up): UNAVAILABLE and RESOURCE_EXHAUSTED are retried after the server's
    ``RetryInfo`` delay, else after a doubling wait."""
    if attempt >= attempts or err.code not in RETRYABLE:
        return None
    wait = err.retry_after if err.retry_after is not None else FIRST_WAIT * 2 ** (attempt - 1)
    return min(wait, MAX_WAIT)


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    signal: int


def exec_requests(sandbox_id: str, command: str, stdin: Optional[Iterable[bytes]],
                  env: Optional[dict] = None, cwd: str = "") -> Iterator[pb.ExecRequest]:
    start = pb.ExecStart(sandbox_id=sandbox_id, command=command, stdin=stdin is not None,
                         env=env or {}, cwd=cwd)
    yield pb.ExecRequest(start=start)
    if stdin is not None:
        for chunk in stdin:
            yield pb.ExecRequest(stdin=chunk)
        yield pb.ExecRequest(close_stdin=True)


def collect(responses: Iterable[pb.ExecResponse]) -> ExecResult:
    out, err, code, sig = [], [], -1, 0
    for r in responses:
        kind = r.WhichOneof("response")
        if kind == "stdout":
            out.append(r.stdout)
        elif kind == "stderr":
            err.append(r.stderr)
        elif kind == "exited":
            code, sig = r.exited.exit_code, r.exited.signal
    return ExecResult(b"".join(out), b"".join(err), code, sig)


def create_request(pool: str = "", image: str = "", template: str = "", snapshot: str = "",
                   timeout: int = 0, env: Optional[dict] = None, metadata: Optional[dict] = None,
                   idempotency_key: Optional[str] = None) -> pb.CreateSandboxRequest:
    """A create from one source; it carries an idempotency key (a fresh one
    unless given) so that a retry never makes a second sandbox."""
    req = pb.CreateSandboxRequest(timeout_seconds=timeout, env=env or {}, metadata=metadata or {},
                                  idempotency_key=idempotency_key or uuid.uuid4().hex)
    if image:
        req.image = image
    elif template:
        req.template = template
    elif snapshot:
        req.snapshot = snapshot
    else:
        req.pool = pool or "default"
    return req


def snapshot_request(sandbox_id: str, name: str = "", leave_running: bool = False,
                     idempotency_key: Optional[str] = None) -> pb.SnapshotSandboxRequest:
    """A snapshot with an idempotency key: a retry returns the first snapshot."""
    return pb.SnapshotSandboxRequest(id=sandbox_id, name=name, leave_running=leave_running,
                                     idempotency_key=idempotency_key or uuid.uuid4().hex)


def upload_requests(sandbox_id: str, path: str, src: BinaryIO | bytes) -> Iterator[pb.UploadRequest]:
    yield pb.UploadRequest(open=pb.UploadOpen(sandbox_id=sandbox_id, path=path, create_parents=True))
    if isinstance(src, (bytes, bytearray)):
        for i in range(0, len(src), CHUNK):
            yield pb.UploadRequest(data=bytes(src[i:i + CHUNK]))
        return
    while chunk := src.read(CHUNK):
        yield pb.UploadRequest(data=chunk)


class Client:
    """A connection to a sandpool gateway (``host:port``) with an API key."""

    def __init__(self, target: str, api_key: Optional[str] = None, timeout: Optional[float] = 60.0):
        self.channel = grpc.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def attempt(self, method: str, request, timeout: Optional[float]):
        """One try of ``method`` (streams: the call object)."""
        req_cls, resp_cls, kind = METHODS[method]
        rpc = getattr(self.channel, kind)(SERVICE + method, request_serializer=req_cls.SerializeToString,
                                          response_deserializer=resp_cls.FromString)
        return rpc(request, metadata=self.metadata, timeout=timeout)

    def call(self, method: str, request, timeout: Optional[float] = -1.0):
        timeout = self.timeout if timeout == -1.0 else timeout
        # unary calls are safe to repeat (creates and snapshots carry an
        # idempotency key): retried after the server's RetryInfo
        attempts = ATTEMPTS if METHODS[method][2] == "unary_unary" else 1
        attempt = 1
        while True:
            try:
                return self.attempt(method, request, timeout)
            except grpc.RpcError as e:
                err = SandpoolError(e)
                wait = retry_wait(err, attempt, attempts)
                if wait is None:
                    raise err from e
                time.sleep(wait)
                attempt += 1

    def create(self, **kw) -> "Sandbox":
        """A new sandbox (``pool``, ``image``, ``template`` or ``snapshot``;
        ``timeout``, ``env``, ``metadata``, ``idempotency_key``); retried
        safely (the retries carry the same idempotency key)."""
        return Sandbox(self, self.call("Create", create_request(**kw)))

    def get(self, sandbox_id: str) -> "Sandbox":
        return Sandbox(self, self.call("Get", pb.GetSandboxRequest(id=sandbox_id)))

    def list(self) -> list[pb.Sandbox]:
        return list(self.call("List", pb.ListSandboxesRequest()).sandboxes)

    def delete(self, sandbox_id: str) -> None:
        self.call("Delete", pb.DeleteSandboxRequest(id=sandbox_id))


class Sandbox:
    """One sandbox: exec, files, lifecycle."""

    def __init__(self, client: Client, info: pb.Sandbox):
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    def exec(self, command: str, stdin: Optional[Iterable[bytes]] = None, env: Optional[dict] = None,
             cwd: str = "", timeout: Optional[float] = None) -> ExecResult:
        """Run ``command`` (``bash -c``); its output and exit."""
        try:
            return collect(self.exec_stream(command, stdin, env, cwd, timeout))
        except grpc.RpcError as e:
            raise SandpoolError(e) from e

    def exec_stream(self, command: str, stdin: Optional[Iterable[bytes]] = None, env: Optional[dict] = None,
                    cwd: str = "", timeout: Optional[float] = None):
        """The raw ``ExecResponse`` stream (``cancel()`` it to kill the command)."""
        return self.client.call("Exec", exec_requests(self.id, command, stdin, env, cwd), timeout=timeout)

    def write_file(self, path: str, data: BinaryIO | bytes) -> int:
        """Upload ``data`` (bytes or a binary file object, read in chunks)."""
        return self.client.call("Upload", upload_requests(self.id, path, data), timeout=None).size

    def download(self, path: str, dst: BinaryIO) -> int:
        n = 0
        try:
            for c in self.client.call("Download", pb.DownloadRequest(sandbox_id=self.id, path=path), timeout=None):
                dst.write(c.data)
                n += len(c.data)
        except grpc.RpcError as e:
            raise SandpoolError(e) from e
        return n

    def read_file(self, path: str) -> bytes:
        import io
        buf = io.BytesIO()
        self.download(path, buf)
        return buf.getvalue()

    def renew(self, timeout: int) -> None:
        self.info = self.client.call("Renew", pb.RenewSandboxRequest(id=self.id, timeout_seconds=timeout))

    def pause(self) -> None:
        self.info = self.client.call("Pause", pb.PauseSandboxRequest(id=self.id))

    def resume(self) -> None:
        self.info = self.client.call("Resume", pb.ResumeSandboxRequest(id=self.id))

    def snapshot(self, name: str = "", leave_running: bool = False,
                 idempotency_key: Optional[str] = None) -> pb.SandboxSnapshot:
        """Checkpoint it (a checkpointable sandbox); retried safely."""
        return self.client.call("Snapshot", snapshot_request(self.id, name, leave_running, idempotency_key))

    def watch(self, timeout: Optional[float] = None) -> Iterator[pb.SandboxEvent]:
        """Its events (``kind`` STATE or OOM) until it ends."""
        try:
            yield from self.client.call("Watch", pb.WatchRequest(id=self.id), timeout=timeout)
        except grpc.RpcError as e:
            raise SandpoolError(e) from e

    def delete(self) -> None:
        self.client.delete(self.id)
