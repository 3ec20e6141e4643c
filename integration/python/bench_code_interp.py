"""Benchmark (not a test): the code interpreter through the real SDKs against a
running ``sandpool serve``, every row with its baseline from the same run.

OpenSandbox (issue 17), in one sandbox of the builtin code-interpreter image
(upstream's ``opensandbox/code-interpreter``): ``codes.run("1+1")`` in the
default Python context and ``codes.create_context("python")`` (deleted after each sample), alone and with
a first ``run("1+1")`` in it (each context has its own Jupyter kernel), against
the baseline
``commands.run("python3 -c 'print(1+1)'")``.

E2B (issue 18), with e2b-code-interpreter: ``Sandbox.create(T)`` → first
``run_code("1+1")`` from a warm pool ``T`` (``--warm``), against the same from a
pool of the same image that keeps nothing warm (``--cold``: every create is a
cold start), plus ``Sandbox.create`` → first ``commands.run("true")`` from the
warm pool. ``--warm-baseline P``: also a warm pool ``P`` of the same image
whose runtime does not pre-start the default kernel (template env
``SANDPOOL_INTERP_PRESTART=off``), interleaved with the others.
``--e2b-only`` skips the OpenSandbox rows.

    .venv/bin/python integration/python/bench_code_interp.py --url http://127.0.0.1:8080 \\
        --key KEY --warm ci-warm --cold ci-cold -n 20
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


def timed(n, f):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append((time.perf_counter() - t) * 1000)
    return out


def row(name, xs, base):
    p50 = statistics.median(xs)
    print(f"| {name} | {len(xs)} | {p50:.1f} | {pct(xs, 90):.1f} | {pct(xs, 99):.1f} | {p50 / base:.2f}x |")


def opensandbox_rows(a, n):
    from code_interpreter import CodeInterpreterSync
    from code_interpreter.models.code import SupportedLanguage
    from opensandbox import SandboxSync
    from opensandbox.config import ConnectionConfigSync

    cfg = ConnectionConfigSync(domain=a.url.split("://")[-1], protocol=a.url.split("://")[0], api_key=a.key,
                               request_timeout=timedelta(seconds=120))
    sb = SandboxSync.create("opensandbox/code-interpreter:latest", entrypoint=["/opt/code-interpreter/code-interpreter.sh"],
                            connection_config=cfg, timeout=timedelta(minutes=20), ready_timeout=timedelta(seconds=900))
    try:
        ci = CodeInterpreterSync.create(sb, ready_timeout=timedelta(seconds=120))
        # warm-up: the default context's kernel starts on its first run
        ci.codes.run("1+1", language=SupportedLanguage.PYTHON)
        sb.commands.run("python3 -c 'print(1+1)'")

        def one_run():
            r = ci.codes.run("1+1", language=SupportedLanguage.PYTHON)
            assert r.error is None and r.result[0].text == "2", r

        def one_context():
            ctx = ci.codes.create_context(SupportedLanguage.PYTHON)
            ci.codes.delete_context(ctx.id)

        def one_context_run():
            ctx = ci.codes.create_context(SupportedLanguage.PYTHON)
            try:
                r = ci.codes.run("1+1", context=ctx)
                assert r.error is None and r.result[0].text == "2", r
            finally:
                ci.codes.delete_context(ctx.id)

        def one_exec():
            r = sb.commands.run("python3 -c 'print(1+1)'")
            assert r.exit_code == 0, r

        base = timed(n, one_exec)
        runs = timed(n, one_run)
        ctxs = timed(max(3, n // 2), one_context)
        ctx_runs = timed(max(3, n // 2), one_context_run)
        b50 = statistics.median(base)
        print("\n| OpenSandbox (one sandbox) | n | p50 ms | p90 ms | p99 ms | vs baseline |")
        print("|---|---|---|---|---|---|")
        row("baseline: `commands.run(\"python3 -c 'print(1+1)'\")`", base, b50)
        row('`codes.run("1+1")` (default Python context)', runs, b50)
        row('`codes.create_context("python")` + delete', ctxs, b50)
        row('`codes.create_context("python")` + first `run("1+1")` in it + delete', ctx_runs, b50)
    finally:
        sb.kill()
        sb.close()


def e2b_rows(a, n):
    os.environ.update(E2B_API_URL=a.url, E2B_SANDBOX_URL=a.url, E2B_DOMAIN=a.url.split("://")[-1], E2B_API_KEY=a.key)
    from e2b_code_interpreter import Sandbox

    def create_then(template, first):
        def once():
            sbx = Sandbox.create(template, timeout=300)
            try:
                first(sbx)
            finally:
                sbx.kill()
        return once

    def code(sbx):
        r = sbx.run_code("1+1")
        assert r.error is None and r.text == "2", r

    def cmd(sbx):
        sbx.commands.run("true")

    create_then(a.warm, code)()  # warm-up (image present, pool filled)
    warm_code, warm_cmd, cold_code, lazy_code = [], [], [], []
    for _ in range(n):
        warm_code += timed(1, create_then(a.warm, code))
        time.sleep(a.gap)
        if a.warm_baseline:
            lazy_code += timed(1, create_then(a.warm_baseline, code))
            time.sleep(a.gap)
        warm_cmd += timed(1, create_then(a.warm, cmd))
        time.sleep(a.gap)
        cold_code += timed(1, create_then(a.cold, code))
    c50 = statistics.median(cold_code)
    print("\n| E2B (e2b-code-interpreter) | n | p50 ms | p90 ms | p99 ms | vs cold |")
    print("|---|---|---|---|---|---|")
    row("cold start: `Sandbox.create` → first `run_code(\"1+1\")`", cold_code, c50)
    if lazy_code:
        row("warm, kernel not pre-started: `Sandbox.create` → first `run_code(\"1+1\")`", lazy_code, c50)
    row("warm: `Sandbox.create` → first `run_code(\"1+1\")`", warm_code, c50)
    row("warm: `Sandbox.create` → first `commands.run(\"true\")`", warm_cmd, c50)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--warm", required=True, help="a pool of the code-interpreter image that keeps sandboxes warm")
    ap.add_argument("--cold", required=True, help="a pool of the same image that keeps none warm")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between warm creates (the pool refills)")
    ap.add_argument("--warm-baseline", help="a warm pool of the same image that does not pre-start the kernel")
    ap.add_argument("--e2b-only", action="store_true", help="skip the OpenSandbox rows")
    ap.add_argument("-n", type=int, default=20)
    a = ap.parse_args()
    n = max(3, min(a.n, 100))
    os.environ.setdefault("OPENSANDBOX_DISABLE_METRICS", "1")
    if not a.e2b_only:
        opensandbox_rows(a, n)
    e2b_rows(a, n)


if __name__ == "__main__":
    main()
