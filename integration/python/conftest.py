"""Fixtures that run sandpool-runtime as a host process and talk to it with the
real OpenSandbox Python SDK (opensandbox==1.1.1), unchanged.

The SDK's ``Sandbox`` object needs a lifecycle server; instead we build the same
execd services ``SandboxSync`` builds internally (``AdapterFactorySync`` +
``ConnectionConfigSync`` + ``SandboxEndpoint``), pointing the endpoint at the
runtime and passing the access token as an endpoint header, exactly as a
lifecycle server would hand it out in ``Endpoint.headers``.

Environment:
  SANDPOOL_RUNTIME_BIN              runtime binary (default <repo>/target/debug/sandpool-runtime)
  SANDPOOL_RUNTIME_STARTUP_TIMEOUT  seconds to wait for GET /ping == 200 (default 30)
  SANDPOOL_TEST_TIMEOUT             per-test watchdog in seconds (default 120); the SDK's
                                    streaming reads have no read timeout, so a runtime that
                                    never ends a stream would otherwise hang the suite
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from opensandbox.config import ConnectionConfigSync
from opensandbox.models.sandboxes import SandboxEndpoint
from opensandbox.sync.adapters.factory import AdapterFactorySync

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from sandpool_pytest_helpers import (  # noqa: E402
    OnLoopback,
    free_port,
    log_tail,
    per_test_watchdog,
    start_process,
    stop_process,
    wait_ready,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = REPO_ROOT / "target" / "debug" / "sandpool-runtime"
TOKEN_HEADER = "X-EXECD-ACCESS-TOKEN"
STARTUP_TIMEOUT = float(os.environ.get("SANDPOOL_RUNTIME_STARTUP_TIMEOUT", "30"))
TEST_TIMEOUT = float(os.environ.get("SANDPOOL_TEST_TIMEOUT", "120"))

# Set by the ``runtime`` fixture so failing tests can show the runtime's log.
_runtime_log_path: Path | None = None


@dataclass(frozen=True)
class Runtime(OnLoopback):
    """A running sandpool-runtime process."""

    host: str
    port: int
    token: str
    base_dir: Path  # the runtime's temp dir: holds data/, work/ and the log
    data_dir: Path
    work_dir: Path  # parent of per-test working directories
    log_path: Path
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        """Endpoint string as the lifecycle API returns it (no scheme)."""
        return f"{self.host}:{self.port}"


def _log_tail(path: Path | None) -> str:
    return log_tail(path, what="runtime log")


def _resolve_binary() -> Path:
    binary = Path(os.environ.get("SANDPOOL_RUNTIME_BIN", str(DEFAULT_BINARY)))
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"sandpool-runtime binary not found or not executable: {binary}\n"
            "Build it (cargo build -p sandpool-runtime) or set SANDPOOL_RUNTIME_BIN.",
            pytrace=False,
        )
    return binary


def _stop(process: subprocess.Popen) -> None:
    stop_process(process, grace=10)


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    global _runtime_log_path

    binary = _resolve_binary()
    base_dir = tmp_path_factory.mktemp("sandpool-runtime").resolve()
    data_dir = base_dir / "data"
    work_dir = base_dir / "work"
    data_dir.mkdir()
    work_dir.mkdir()
    log_path = base_dir / "runtime.log"
    _runtime_log_path = log_path

    host, port = "127.0.0.1", free_port()
    token = secrets.token_hex(16)
    argv = [
        str(binary),
        "--listen", f"{host}:{port}",
        "--access-token", token,
        "--data-dir", str(data_dir),
    ]
    with open(log_path, "wb") as log:
        # the runtime on the host resolves "~" and relative paths against
        # HOME: a temp dir, never the host user's home
        process = start_process(argv, log, base_dir, env={**os.environ, "HOME": str(work_dir)})

    rt = Runtime(host, port, token, base_dir, data_dir, work_dir, log_path, process)
    try:
        _wait_until_ready(rt)
        yield rt
    finally:
        _stop(process)


def _wait_until_ready(rt: Runtime) -> None:
    def probe() -> str | None:
        try:
            response = httpx.get(f"{rt.url}/ping", headers={TOKEN_HEADER: rt.token}, timeout=2.0)
        except httpx.HTTPError as exc:
            return f"GET /ping: {exc!r}"
        if response.status_code == 200:
            return None
        return f"GET /ping: HTTP {response.status_code}: {response.text[:200]}"

    try:
        wait_ready(rt.process, "sandpool-runtime", probe, STARTUP_TIMEOUT, lambda: _log_tail(rt.log_path))
    except BaseException:
        _stop(rt.process)
        raise


# --------------------------------------------------------------------------- SDK wiring


@pytest.fixture(scope="session")
def sdk_config(runtime: Runtime) -> ConnectionConfigSync:
    """Connection config shaped like the one ``SandboxSync.create`` uses
    (SDK-owned deadline/retry transport, default retry policy)."""
    config = ConnectionConfigSync(
        domain=runtime.endpoint,
        protocol="http",
        request_timeout=timedelta(seconds=60),
    ).with_transport_if_missing()
    yield config
    config.close_transport_if_owned()


@pytest.fixture(scope="session")
def sdk_factory(sdk_config: ConnectionConfigSync) -> AdapterFactorySync:
    return AdapterFactorySync(sdk_config)


def _execd_endpoint(runtime: Runtime, token: str | None) -> SandboxEndpoint:
    """The endpoint object a lifecycle server would return for port 44772."""
    headers = {TOKEN_HEADER: token} if token is not None else {}
    return SandboxEndpoint(endpoint=runtime.endpoint, headers=headers)


@pytest.fixture(scope="session")
def endpoint(runtime: Runtime) -> SandboxEndpoint:
    return _execd_endpoint(runtime, runtime.token)


@pytest.fixture(scope="session")
def endpoint_with_token(runtime: Runtime):
    """Build an endpoint carrying an arbitrary token (``None`` = no header)."""
    return lambda token: _execd_endpoint(runtime, token)


def _sdk_service(name: str, create: str):
    """A session fixture ``name``: the SDK's execd service that
    ``AdapterFactorySync.<create>`` builds for the runtime's endpoint."""

    @pytest.fixture(scope="session", name=name)
    def service(sdk_factory: AdapterFactorySync, endpoint: SandboxEndpoint):
        return getattr(sdk_factory, create)(endpoint)

    return service


commands = _sdk_service("commands", "create_command_service")
files = _sdk_service("files", "create_filesystem_service")
health = _sdk_service("health", "create_health_service")
metrics = _sdk_service("metrics", "create_metrics_service")


@pytest.fixture
def workdir(runtime: Runtime, request: pytest.FixtureRequest) -> Path:
    """A fresh, empty directory for one test, under the runtime's temp dir.

    The runtime is a host process, so host paths are sandbox paths.
    """
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name)
    path = runtime.work_dir / f"{safe_name[:60]}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """Fail (not hang) a test whose SDK call blocks forever, e.g. on an SSE stream
    the runtime never closes. SIGALRM interrupts the blocking socket read in the
    main thread and pytest.fail() raises a BaseException the SDK cannot swallow."""
    yield from per_test_watchdog(TEST_TIMEOUT)


# --------------------------------------------------------------------------- reporting


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _runtime_log_path is not None and "runtime" in item.fixturenames:
        report.sections.append(("sandpool-runtime log (tail)", _log_tail(_runtime_log_path)))

