"""Python client of sandpool's public gRPC API (``sandpool.v1.public``).

Sync::

    from sandpool_client import Client
    with Client("127.0.0.1:8080", api_key="...") as client:
        sb = client.create(pool="default", timeout=300)
        print(sb.exec("echo hi").stdout)
        sb.write_file("/tmp/a.txt", b"data")
        sb.delete()

Async: ``sandpool_client.aio.AsyncClient`` with the same methods, awaited.
The generated messages are ``sandpool_client.pb``.
"""

from ._gen import sandboxes_pb2 as pb
from .client import Client, ExecResult, Sandbox, SandpoolError

__all__ = ["Client", "ExecResult", "Sandbox", "SandpoolError", "pb"]
