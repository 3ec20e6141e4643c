"""Start and stop ``sandpool serve`` for the lifecycle suite, and the test pool
it serves. Used by conftest.py (fixtures) and imported by the tests for the
constants and the ``Sandpool`` handle.

Environment:
  SANDPOOL_BIN                      platform binary (default <repo>/target/debug/sandpool)
  SANDPOOL_RUNTIME_STATIC_BIN       static sandpool-runtime bind-mounted into sandboxes (required)
  SANDPOOL_REQUIRE_CONTAINERD=1     fail instead of skipping when not root or the runtime is unset
  SANDPOOL_STARTUP_TIMEOUT          seconds to wait for GET /health == 200 (default 180)
  SANDPOOL_PLATFORM_TEST_TIMEOUT    per-test watchdog in seconds (default 300)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from opensandbox.config import ConnectionConfigSync

_PARENT = Path(__file__).resolve().parents[1]
if str(_PARENT) not in sys.path:
    sys.path.insert(0, str(_PARENT))
from sandpool_pytest_helpers import OnLoopback, free_port, log_tail, start_process, stop_process, wait_ready  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BINARY = REPO_ROOT / "target" / "debug" / "sandpool"
STARTUP_TIMEOUT = float(os.environ.get("SANDPOOL_STARTUP_TIMEOUT", "180"))
TEST_TIMEOUT = float(os.environ.get("SANDPOOL_PLATFORM_TEST_TIMEOUT", "300"))
STOP_GRACE = 30.0
API_KEY_HEADER = "OPEN-SANDBOX-API-KEY"

# The pool every test allocates from (--pool NAME:IMAGE:BUFFER_MIN:BUFFER_MAX:POOL_MIN:POOL_MAX).
POOL_NAME = "test-pool"
# A Debian + python3 pool for the code-interpreter tests (image cached across runs).
PY_POOL_NAME = "py-pool"
# Checkpointable runsc sandboxes on the Python image (snapshots); cold-started.
CK_POOL_NAME = "ck-pool"
# Networked runsc sandboxes on busybox (gVisor on the sandbox's own netns, as
# runc): cold-started, so no warm gVisor sandbox costs the other tests.
RUNSC_POOL_NAME = "runsc-pool"
IMAGE_CACHE = REPO_ROOT / "target" / "sandpool-image-cache"
POOL_IMAGE = "busybox"
# What one sandbox may write to its file system here (`--sandbox-disk-limit`;
# the product default is 4 GiB, too much to fill in a bounded test).
DISK_LIMIT_MIB = 1024
POOL_BUFFER_MIN, POOL_BUFFER_MAX, POOL_MIN, POOL_MAX = 10, 10, 0, 60
BRIDGE = "sptestpy"
# the runc root the containerd runc v2 shim uses (per namespace below it)
RUNC_ROOT = "/run/containerd/runc"
SUBNET = "10.213.77.0/24"

_OWN_KEY = object()


@dataclass(frozen=True)
class Sandpool(OnLoopback):
    """A running ``sandpool serve``."""

    host: str
    port: int
    api_key: str
    base_dir: Path  # holds data/ and the log
    log_path: Path
    process: subprocess.Popen
    metrics_port: int = 0

    @property
    def domain(self) -> str:
        """``ConnectionConfig.domain``: host:port, no scheme."""
        return f"{self.host}:{self.port}"

    def config(self, **overrides) -> ConnectionConfigSync:
        """A fresh SDK connection config; each ``SandboxSync.create`` builds and
        owns its transport from it, as in normal SDK use."""
        settings = dict(
            domain=self.domain,
            api_key=self.api_key,
            protocol="http",
            request_timeout=timedelta(seconds=60),
        )
        settings.update(overrides)
        return ConnectionConfigSync(**settings)

    def client(self, api_key=_OWN_KEY, timeout: float = 30.0) -> httpx.Client:
        """A raw HTTP client on the gateway sending ``api_key`` (default: the
        right one; ``None``: no key header at all)."""
        if api_key is _OWN_KEY:
            api_key = self.api_key
        headers = {API_KEY_HEADER: api_key} if api_key is not None else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def log_tail(self) -> str:
        return log_tail(self.log_path, what="sandpool log")


def cli(platform: Sandpool, *args: str, timeout: float = 120) -> str:
    """Run ``sandpool ARGS`` against ``platform`` (its data dir and scheduler
    address); its stdout, or an assertion naming the command and its stderr."""
    argv = list(platform.process.args)
    env = {**os.environ, "SANDPOOL_DATA_DIR": str(platform.base_dir / "data"),
           "SANDPOOL_SCHEDULER": "http://" + argv[argv.index("--scheduler-listen") + 1]}
    binary = os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"sandpool {' '.join(args)}: {done.stderr}"
    return done.stdout


def pools(platform: Sandpool) -> dict[str, dict[str, str]]:
    """`sandpool pool list`: pool name → its `key=value` fields."""
    out = {}
    for line in cli(platform, "pool", "list").splitlines():
        name, *fields = line.split("\t")
        out[name] = dict(f.split("=", 1) for f in fields)
    return out


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("SANDPOOL_REQUIRE_CONTAINERD") == "1":
        pytest.fail(f"{reason} (and SANDPOOL_REQUIRE_CONTAINERD=1)", pytrace=False)
    pytest.skip(f"{reason}; set SANDPOOL_REQUIRE_CONTAINERD=1 to make this an error")


def _executable(path: Path, what: str, hint: str) -> Path:
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{what} not found or not executable: {path}\n{hint}", pytrace=False)
    return path


def check_prerequisites() -> tuple[Path, Path]:
    """Skip (or fail, under SANDPOOL_REQUIRE_CONTAINERD=1) without root or a
    static runtime; fail if a binary is missing. Returns (sandpool, runtime)."""
    if os.geteuid() != 0:
        _skip_or_fail("the sandpool platform needs root (containerd, netns, CNI bridge)")
    if not os.environ.get("SANDPOOL_RUNTIME_STATIC_BIN"):
        _skip_or_fail("SANDPOOL_RUNTIME_STATIC_BIN is not set to a static sandpool-runtime")
    binary = _executable(
        Path(os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))),
        "sandpool binary",
        "Build it (cargo build --bin sandpool) or set SANDPOOL_BIN.",
    )
    runtime_bin = _executable(
        Path(os.environ["SANDPOOL_RUNTIME_STATIC_BIN"]),
        "SANDPOOL_RUNTIME_STATIC_BIN",
        "Point it at a statically linked sandpool-runtime (see scripts/test.sh).",
    )
    return binary, runtime_bin


def start(binary: Path, runtime_bin: Path, restart_of: Sandpool | None = None, extra_env: dict[str, str] | None = None,
          extra_args: list[str] | None = None) -> Sandpool:
    """Launch ``sandpool serve`` in a fresh state dir (or, with ``restart_of``,
    again on that instance's state dir, port and key) and wait until healthy.
    ``extra_env`` is added to its environment (e.g. ``OTEL_*``), ``extra_args``
    to its command line (e.g. ``--dns-upstream``)."""
    if restart_of is None:
        # A short private dir, not pytest's tmp_path: unix socket paths must stay
        # short, and pytest's cleanup of old temp dirs must never meet a leftover mount.
        base_dir = Path(tempfile.mkdtemp(prefix="sandpool-py-")).resolve()
        data_dir = base_dir / "data"
        data_dir.mkdir()
        host, port = "127.0.0.1", free_port()
        # E2B SDKs 2.25-2.45 accept only keys shaped e2b_<hex>
        api_key = "e2b_" + secrets.token_hex(20)
    else:
        base_dir, host, port, api_key = restart_of.base_dir, restart_of.host, restart_of.port, restart_of.api_key
        data_dir = base_dir / "data"
    log_path = base_dir / "sandpool.log"
    pool = f"{POOL_NAME}:{POOL_IMAGE}:{POOL_BUFFER_MIN}:{POOL_BUFFER_MAX}:{POOL_MIN}:{POOL_MAX}"
    argv = [
        str(binary), "serve",
        "--data-dir", str(data_dir),
        "--listen", f"{host}:{port}",
        "--api-key", api_key,
        "--runtime-bin", str(runtime_bin),
        "--bridge", BRIDGE,
        "--subnet", SUBNET,
        "--pool", pool,
        "--pool", f"{PY_POOL_NAME}:python:1:1:0:4",
        "--pool", f"{CK_POOL_NAME}:python:0:0:0:8:runsc:checkpointable",
        "--pool", f"{RUNSC_POOL_NAME}:{POOL_IMAGE}:0:0:0:4:runsc",
        "--image-cache", str(IMAGE_CACHE),
        # OpenSandbox host volumes may mount what is under <base>/hostvols
        "--allowed-host-path", str(base_dir / "hostvols"),
        "--sandbox-disk-limit", f"{DISK_LIMIT_MIB}Mi",
        # internal gRPC listeners: free ports, so a running dev instance does not collide
        "--agent-listen", f"{host}:{free_port()}",
        "--scheduler-listen", f"{host}:{free_port()}",
        "--metrics-listen", f"{host}:{(metrics_port := free_port())}",
        *(extra_args or []),
    ]
    with open(log_path, "ab") as log:
        shown = argv[:7] + ["<api-key>"] + argv[8:]
        log.write(("$ " + " ".join(shown) + "\n").encode())
        log.flush()
        process = start_process(argv, log, base_dir, env={**os.environ, **(extra_env or {})})

    platform = Sandpool(host, port, api_key, base_dir, log_path, process, metrics_port)
    try:
        _wait_until_healthy(platform)
    except BaseException:
        stop(platform)
        raise
    return platform


def _wait_until_healthy(platform: Sandpool) -> None:
    def probe() -> str | None:
        try:
            response = httpx.get(f"{platform.url}/health", timeout=2.0)
            if response.status_code == 200 and response.json() == {"status": "healthy"}:
                return None
            return f"GET /health: HTTP {response.status_code}: {response.text[:200]}"
        except (httpx.HTTPError, ValueError) as exc:
            return f"GET /health: {exc!r}"

    wait_ready(platform.process, "sandpool", probe, STARTUP_TIMEOUT, platform.log_tail, interval=0.25)


def stop(platform: Sandpool, keep_log: bool = True) -> None:
    """SIGTERM, 30 s grace, then SIGKILL to its process group. ``sandpool serve``
    leaves its sandboxes running on purpose (the next start adopts them), but
    nothing restarts on this state dir: kill what it left, unmount, delete it,
    and drop the test bridge and its isolation chain. The log stays (in
    base_dir) if ``keep_log``."""
    stop_process(platform.process, grace=STOP_GRACE, kill_group=True)
    data_dir = platform.base_dir / "data"
    leftovers = cleanup_leftovers(data_dir)
    if leftovers:
        print(f"\nsandpool: keeping {data_dir}, still mounted: {leftovers[:5]}", file=sys.stderr)
    else:
        shutil.rmtree(platform.base_dir if not keep_log else data_dir, ignore_errors=True)
    if keep_log:
        print(f"\nsandpool log kept: {platform.log_path}", file=sys.stderr)
    drop_bridge(BRIDGE)


def drop_bridge(bridge: str) -> None:
    """Delete a test bridge and its isolation chain (sandpool keeps both on
    purpose across restarts)."""
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    chain = f"SANDPOOL-{bridge}"
    while subprocess.run(["iptables", "-w", "-D", "INPUT", "-i", bridge, "-j", chain], capture_output=True).returncode == 0:
        pass
    subprocess.run(["iptables", "-w", "-F", chain], capture_output=True)
    subprocess.run(["iptables", "-w", "-X", chain], capture_output=True)


def cleanup_leftovers(data_dir: Path) -> list[str]:
    """Kill the containerd shims of this state dir (and their containers),
    lazily unmount everything below it; returns mounts that would not go."""
    socket_prefix = str(data_dir) + "/"
    shims = [pid for pid, argv in _processes() if _is_shim_of(argv, socket_prefix)]
    children = [pid for pid, ppid in _parents().items() if ppid in shims]
    for pid in children + shims:  # containers first: their init takes its pid namespace along
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in shims) and time.monotonic() < deadline:
        time.sleep(0.1)
    _drop_runc_state(set(children))
    drop_half_created_runc_state()
    for mount_point in sorted(_mounts_under(data_dir), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], capture_output=True)
    return _mounts_under(data_dir)


def _drop_runc_state(killed: set[int]) -> None:
    """A shim killed with its container cannot ``runc delete`` it: remove the
    runc state directories (under the shim's runc root) whose init process was
    one of the killed containers, and nothing else."""
    for state in Path(RUNC_ROOT).glob("*/*/state.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            pid = json.loads(state.read_text()).get("init_process_pid")
            if pid in killed and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(state.parent, ignore_errors=True)


def drop_half_created_runc_state(settle: float = 2.0) -> list[Path]:
    """Remove the state directories a ``runc create`` left when it was killed
    in the middle (the harness SIGKILLs containerd and its shims, often while
    the pool refills): nothing in them but ``exec.fifo``, so no ``state.json``
    and no pid to match, and nothing runc or containerd will ever clean. One
    is only removed when no process names its container or holds its fifo
    open and it is ``settle`` seconds old, so a create in progress elsewhere is
    left alone. Returns what it removed."""
    candidates = []
    for d in Path(RUNC_ROOT).glob("sandpool*/*"):
        with contextlib.suppress(OSError):
            if d.is_dir() and {p.name for p in d.iterdir()} <= {"exec.fifo"} and time.time() - d.stat().st_mtime > settle:
                candidates.append(d)
    if not candidates:
        return []
    busy = set()
    for pid, argv in _processes():
        busy.update(a for a in argv if a)
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    busy.add(os.readlink(fd))
    removed = []
    for d in candidates:
        if d.name not in busy and str(d / "exec.fifo") not in busy:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                found.append((int(entry.name), [a.decode(errors="replace") for a in argv]))
    return found


def _is_shim_of(argv: list[str], socket_prefix: str) -> bool:
    if not argv or "containerd-shim" not in Path(argv[0]).name:
        return False
    return any(
        flag == "-address" and value.startswith(socket_prefix)
        for flag, value in zip(argv, argv[1:])
    )


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (rmtree must never follow a leftover
    bind mount into the host)."""
    prefix = str(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            mount_point = fields[4].replace("\\040", " ")
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                found.append(mount_point)
    return found
