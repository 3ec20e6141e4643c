"""gRPC against REST on one ``sandpool serve`` (real containerd; root; not a
test): create → first exec (`true`) and the exec round trip, through the
public gRPC API (clients/python) and through the OpenSandbox REST API (exec
via the gateway's proxy to execd), interleaved in the same run.

    sudo SANDPOOL_BIN=... SANDPOOL_RUNTIME_BIN=... python bench_grpc_vs_rest.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "clients" / "python"))

import sandpool_platform  # noqa: E402
from sandpool_client import Client  # noqa: E402
from sandpool_platform import POOL_NAME  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def row(name: str, xs: list[float]) -> str:
    return f"| {name} | {len(xs)} | {pct(xs, 50):.2f} | {pct(xs, 95):.2f} | {statistics.mean(xs):.2f} |"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    binary, runtime_bin = sandpool_platform.check_prerequisites()
    platform = sandpool_platform.start(binary, runtime_bin)
    times: dict[str, list[float]] = {k: [] for k in ("grpc_create", "rest_create", "grpc_exec", "rest_exec")}
    try:
        grpc_client = Client(f"{platform.host}:{platform.port}", api_key=platform.api_key)
        rest = platform.client()

        def rest_exec(sid: str) -> None:
            r = rest.post(f"/v1/sandboxes/{sid}/proxy/44772/command", json={"command": "true"})
            assert r.status_code == 200, r.text

        for _ in range(n):
            t = time.perf_counter()
            sb = grpc_client.create(pool=POOL_NAME, timeout=120)
            assert sb.exec("true").exit_code == 0
            times["grpc_create"].append((time.perf_counter() - t) * 1000)
            for _ in range(10):
                t = time.perf_counter()
                sb.exec("true")
                times["grpc_exec"].append((time.perf_counter() - t) * 1000)
            sb.delete()

            t = time.perf_counter()
            r = rest.post("/v1/sandboxes", json={"extensions": {"poolRef": POOL_NAME}, "timeout": 120,
                                                  "image": {"uri": "busybox"}, "entrypoint": []})
            assert r.status_code == 202, r.text
            sid = r.json()["id"]
            rest_exec(sid)
            times["rest_create"].append((time.perf_counter() - t) * 1000)
            for _ in range(10):
                t = time.perf_counter()
                rest_exec(sid)
                times["rest_exec"].append((time.perf_counter() - t) * 1000)
            assert rest.delete(f"/v1/sandboxes/{sid}").status_code == 204
            time.sleep(0.3)  # let the pool refill between rounds
        print("| scenario | n | p50 ms | p95 ms | mean ms |")
        print("|---|---:|---:|---:|---:|")
        print(row("gRPC: Create (pool) → first Exec `true`", times["grpc_create"]))
        print(row("REST: POST /v1/sandboxes (poolRef) → first execd `POST /command` `true` via the proxy",
                  times["rest_create"]))
        print(row("gRPC: Exec `true` round trip (through the gateway)", times["grpc_exec"]))
        print(row("REST: execd `POST /command` `true` via the gateway proxy", times["rest_exec"]))
        grpc_client.close()
        rest.close()
    finally:
        sandpool_platform.stop(platform, keep_log=False)


if __name__ == "__main__":
    main()
