"""Small helpers shared by the conftests of the Python SDK suites.

Plain functions, no fixtures: each conftest wires them into its own fixtures.
Importable from any conftest below ``integration/python`` (they put this
directory on ``sys.path`` before importing it).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

LOG_TAIL_BYTES = 8000


def log_tail(path: Path | None, limit: int = LOG_TAIL_BYTES, what: str = "log") -> str:
    """The last ``limit`` bytes of a process log, for failure reports."""
    if path is None or not path.exists():
        return f"<no {what}>"
    data = path.read_bytes()
    return data[-limit:].decode("utf-8", errors="replace")


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now and stays free until a server binds it.

    Below the kernel's ephemeral range: a port from bind-to-0 can be taken
    again by any outgoing connection (an OTLP export, a gRPC client) before
    the server under test binds it, which then fails with "address in use".
    Ports are never handed out twice in one test session.
    """
    low = min(_ephemeral_low(), 65536)
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(10000, low) if low > 10000 else rng.randrange(1024, 65536)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port below the ephemeral range")


class OnLoopback:
    """Base of the handles of servers a suite started: their ``host`` and
    ``port`` fields (declared by each dataclass) give the ``http://`` URL."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def wait_ready(
    process: subprocess.Popen,
    name: str,
    probe: Callable[[], str | None],
    timeout: float,
    log: Callable[[], str],
    interval: float = 0.1,
) -> None:
    """Poll ``probe`` until it returns None (ready) or ``timeout`` passes; fail
    the test at once if ``process`` exits meanwhile. ``probe`` returns why it
    is not ready yet (reported on timeout); ``log`` gives the process's log tail.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{name} exited with code {process.returncode} during startup.\n"
                f"--- {name} log ---\n{log()}",
                pytrace=False,
            )
        last_error = probe() or ""
        if not last_error:
            return
        time.sleep(interval)
    pytest.fail(
        f"{name} was not ready within {timeout}s (last: {last_error}).\n"
        f"--- {name} log ---\n{log()}",
        pytrace=False,
    )


def start_process(
    argv: list[str], log: IO[bytes], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``argv`` in ``cwd`` with stdout and stderr to ``log`` and no
    stdin, leading a session of its own (see ``stop_process``'s ``kill_group``);
    ``env``: its whole environment (default: this process's)."""
    return subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def stop_process(
    process: subprocess.Popen, grace: float = 10.0, kill_group: bool = False
) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL.

    With ``kill_group`` the SIGKILL goes to the process group the process leads
    (it must have been started with ``start_new_session=True``), so helpers it
    spawned (e.g. its own containerd) do not outlive it.
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    if kill_group:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        process.kill()
    process.wait(timeout=10)


def per_test_watchdog(seconds: float) -> Iterator[None]:
    """Generator body for an autouse fixture: fail (not hang) a test that blocks
    longer than ``seconds``, e.g. on an SSE stream the server never closes.

    SIGALRM interrupts the blocking socket read in the main thread and
    pytest.fail() raises a BaseException the SDK cannot swallow.
    """
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_timeout(signum, frame):
        pytest.fail(f"test did not finish within {seconds}s (stream never ended?)")

    previous = signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
