"""Benchmark (not a test): bring-your-own-image costs, measured in one run.

1. Pull time of a multi-layer image from a loopback registry (Debian's
   ``docker-registry``): ``sandpool image pull`` against ``ctr images pull
   --plain-http`` into the same private containerd. Every round pulls a
   distinct image (its layers hold fresh random bytes), so no pull finds
   its layers already present; both tools fetch and unpack.
2. A cold start (OpenSandbox ``SandboxSync.create`` → first
   ``commands.run("true")``, no pool) of the pulled image against the builtin
   ``busybox``.

Run as root, with the same environment as the lifecycle suite::

    SANDPOOL_BIN=target/debug/sandpool SANDPOOL_RUNTIME_STATIC_BIN=... \\
      .venv/bin/python integration/python/bench_images.py -n 5 --layer-mib 16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lifecycle"))
import sandpool_platform  # noqa: E402
from loopback_registry import push, run, serve  # noqa: E402
from opensandbox import SandboxSync  # noqa: E402

LAYERS = 3


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


def build(work: Path, tag: str, layer_mib: int) -> None:
    """An OCI layout image ``tag``: busybox, then LAYERS layers of random bytes."""
    layout, bundle = work / "oci", work / f"bundle-{tag}"
    image = f"{layout}:{tag}"
    if not layout.exists():
        run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", image)
    run("umoci", "unpack", "--image", image, str(bundle))
    root = bundle / "rootfs"
    for d in ("bin", "tmp"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "true", "cat", "sleep", "tail"):
        (root / "bin" / applet).symlink_to("busybox")
    run("umoci", "repack", "--refresh-bundle", "--image", image, str(bundle))
    for i in range(LAYERS):
        (root / f"blob{i}").write_bytes(os.urandom(layer_mib << 20))
        run("umoci", "repack", "--refresh-bundle", "--image", image, str(bundle))
    shutil.rmtree(bundle)


def timed(f) -> float:
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1000


def cold_start(platform, uri: str) -> float:
    def once():
        sbx = SandboxSync.create(uri, connection_config=platform.config(),
                                 timeout=timedelta(minutes=5), ready_timeout=timedelta(seconds=90))
        try:
            sbx.commands.run("true")
        finally:
            sbx.kill()
    return timed(once)


def row(name: str, xs: list[float], base: list[float] | None) -> str:
    p50 = pct(xs, 50)
    ratio = f"{p50 / pct(base, 50):.2f}×" if base else "1.00× (baseline)"
    return f"| {name} | {len(xs)} | {p50:.0f} | {pct(xs, 95):.0f} | {ratio} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5, help="rounds (each pulls two fresh images)")
    ap.add_argument("--layer-mib", type=int, default=16)
    ap.add_argument("--cold", type=int, default=10, help="cold starts of each image")
    a = ap.parse_args()
    n, cold = max(1, min(a.n, 20)), max(1, min(a.cold, 50))
    binary = Path(os.environ.get("SANDPOOL_BIN", sandpool_platform.DEFAULT_BINARY))
    runtime = Path(os.environ["SANDPOOL_RUNTIME_STATIC_BIN"])
    work = Path(tempfile.mkdtemp(prefix="sandpool-bench-img-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        addr = stack.enter_context(serve(work))
        print(f"building {2 * n} images of {LAYERS}×{a.layer_mib} MiB random layers…", file=sys.stderr)
        for i in range(n):
            for who in ("sp", "ctr"):
                build(work, f"{who}{i}", a.layer_mib)
                push(work / "oci", f"{who}{i}", f"{addr}/{who}{i}:1")
        platform = sandpool_platform.start(binary, runtime)
        stack.callback(sandpool_platform.stop, platform, keep_log=False)
        data = platform.base_dir / "data"
        sock = data / "containerd" / "containerd.sock"
        ours, theirs = [], []
        for i in range(n):
            ours.append(timed(lambda: run(str(binary), "image", "pull", f"{addr}/sp{i}:1", "--data-dir", str(data))))
            theirs.append(timed(lambda: run("ctr", "--address", str(sock), "-n", "sandpool", "images", "pull",
                                            "--plain-http", f"{addr}/ctr{i}:1")))
        cold_start(platform, "busybox")  # warm-up (image and page cache)
        builtin = [cold_start(platform, "busybox") for _ in range(cold)]
        pulled = [cold_start(platform, f"{addr}/sp0:1") for _ in range(cold)]
        mib = LAYERS * a.layer_mib
        print("| measure | n | p50 ms | p95 ms | p50 ratio |")
        print("|---|---|---|---|---|")
        print(row(f"`ctr images pull --plain-http`, {LAYERS + 1} layers, {mib} MiB random + busybox", theirs, None))
        print(row("`sandpool image pull`, the same shape (a distinct image)", ours, theirs))
        print(row("cold start (create → first command), builtin `busybox`", builtin, None))
        print(row(f"cold start, the pulled {LAYERS + 1}-layer image", pulled, builtin))


if __name__ == "__main__":
    main()
