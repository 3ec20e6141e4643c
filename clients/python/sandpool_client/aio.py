"""The async client (grpc.aio): :class:`AsyncClient` and :class:`AsyncSandbox`."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterable, Optional

import grpc
from grpc import aio

from ._gen import sandboxes_pb2 as pb
from .client import (ATTEMPTS, METHODS, SERVICE, ExecResult, SandpoolError, create_request,
                     exec_requests, retry_wait, snapshot_request, upload_requests)


class AsyncClient:
    def __init__(self, target: str, api_key: Optional[str] = None, timeout: Optional[float] = 60.0):
        self.channel = aio.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def rpc(self, method: str, request, timeout: Optional[float] = -1.0):
        req_cls, resp_cls, kind = METHODS[method]
        call = getattr(self.channel, kind)(SERVICE + method, request_serializer=req_cls.SerializeToString,
                                           response_deserializer=resp_cls.FromString)
        return call(request, metadata=self.metadata, timeout=self.timeout if timeout == -1.0 else timeout)

    async def attempt(self, method: str, request, timeout: Optional[float] = -1.0):
        """One try of a unary or client-streaming call."""
        return await self.rpc(method, request, timeout)

    async def call(self, method: str, request, timeout: Optional[float] = -1.0):
        # as the sync client: unary calls are retried after the server's
        # RetryInfo (creates and snapshots carry an idempotency key)
        attempts = ATTEMPTS if METHODS[method][2] == "unary_unary" else 1
        attempt = 1
        while True:
            try:
                return await self.attempt(method, request, timeout)
            except grpc.RpcError as e:
                err = SandpoolError(e)
                wait = retry_wait(err, attempt, attempts)
                if wait is None:
                    raise err from e
                await asyncio.sleep(wait)
                attempt += 1

    async def create(self, **kw) -> "AsyncSandbox":
        """As :meth:`sandpool_client.Client.create`, retried safely."""
        return AsyncSandbox(self, await self.call("Create", create_request(**kw)))

    async def get(self, sandbox_id: str) -> "AsyncSandbox":
        return AsyncSandbox(self, await self.call("Get", pb.GetSandboxRequest(id=sandbox_id)))

    async def list(self) -> list[pb.Sandbox]:
        return list((await self.call("List", pb.ListSandboxesRequest())).sandboxes)

    async def delete(self, sandbox_id: str) -> None:
        await self.call("Delete", pb.DeleteSandboxRequest(id=sandbox_id))


class AsyncSandbox:
    def __init__(self, client: AsyncClient, info: pb.Sandbox):
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    async def exec(self, command: str, stdin: Optional[Iterable[bytes]] = None, env: Optional[dict] = None,
                   cwd: str = "", timeout: Optional[float] = None) -> ExecResult:
        out, err, code, sig = [], [], -1, 0
        try:
            async for r in self.client.rpc("Exec", exec_requests(self.id, command, stdin, env, cwd), timeout):
                kind = r.WhichOneof("response")
                if kind == "stdout":
                    out.append(r.stdout)
                elif kind == "stderr":
                    err.append(r.stderr)
                elif kind == "exited":
                    code, sig = r.exited.exit_code, r.exited.signal
        except grpc.RpcError as e:
            raise SandpoolError(e) from e
        return ExecResult(b"".join(out), b"".join(err), code, sig)

    async def write_file(self, path: str, data: bytes) -> int:
        return (await self.client.call("Upload", upload_requests(self.id, path, data), timeout=None)).size

    async def read_file(self, path: str) -> bytes:
        parts = []
        try:
            async for c in self.client.rpc("Download", pb.DownloadRequest(sandbox_id=self.id, path=path), None):
                parts.append(c.data)
        except grpc.RpcError as e:
            raise SandpoolError(e) from e
        return b"".join(parts)

    async def snapshot(self, name: str = "", leave_running: bool = False,
                       idempotency_key: Optional[str] = None) -> pb.SandboxSnapshot:
        """Checkpoint it (a checkpointable sandbox); retried safely."""
        return await self.client.call("Snapshot",
                                      snapshot_request(self.id, name, leave_running, idempotency_key))

    async def watch(self, timeout: Optional[float] = None) -> AsyncIterator[pb.SandboxEvent]:
        """Its events (``kind`` STATE or OOM) until it ends."""
        try:
            async for ev in self.client.rpc("Watch", pb.WatchRequest(id=self.id), timeout):
                yield ev
        except grpc.RpcError as e:
            raise SandpoolError(e) from e

    async def delete(self) -> None:
        await self.client.delete(self.id)
