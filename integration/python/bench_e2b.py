"""Benchmark (not a test): time from the real e2b SDK's ``Sandbox.create`` to
the end of its first ``commands.run("true")``, against a running
``sandpool serve`` (warm pool), with the opensandbox SDK's create → first
``commands.run`` measured in the same run as a reference.

    .venv/bin/python integration/python/bench_e2b.py --url http://127.0.0.1:8080 --key e2b_... --pool default -n 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import timedelta


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--pool", default="default")
    ap.add_argument("-n", type=int, default=30)
    a = ap.parse_args()
    n = max(1, min(a.n, 200))
    os.environ.update(E2B_API_URL=a.url, E2B_SANDBOX_URL=a.url, E2B_DOMAIN=a.url.split("://")[-1], E2B_API_KEY=a.key)
    os.environ.setdefault("OPENSANDBOX_DISABLE_METRICS", "1")
    from e2b import Sandbox
    from opensandbox import SandboxSync
    from opensandbox.config import ConnectionConfigSync

    def e2b_once():
        t = time.perf_counter()
        sbx = Sandbox.create(a.pool, timeout=120)
        sbx.commands.run("true")
        d = time.perf_counter() - t
        sbx.kill()
        return d

    cfg = ConnectionConfigSync(domain=a.url.split("://")[-1], api_key=a.key, protocol="http")

    def os_once():
        t = time.perf_counter()
        sbx = SandboxSync.create("busybox", connection_config=cfg, extensions={"poolRef": a.pool}, timeout=timedelta(minutes=2))
        sbx.commands.run("true")
        d = time.perf_counter() - t
        sbx.kill()
        return d

    rows = []
    for name, f in [("e2b 2.x: Sandbox.create → first commands.run", e2b_once), ("opensandbox 1.1.1: Sandbox.create → first commands.run", os_once)]:
        f()  # warm-up
        xs = []
        for _ in range(n):
            xs.append(f() * 1000)
            time.sleep(0.3)  # let the pool refill: measure the claim, not the refill
        rows.append((name, len(xs), statistics.median(xs), pct(xs, 90), pct(xs, 99)))
    print("| scenario | n | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} |")


if __name__ == "__main__":
    main()
