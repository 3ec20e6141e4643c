"""Fixtures that run the whole sandpool platform (``sandpool serve``: gateway,
scheduler, node agent with its own containerd) on this machine, for tests that
drive it with the real OpenSandbox Python SDK (opensandbox==1.1.1), unchanged.

One platform per test module: startup builds the busybox image and warms the
pool (up to about a minute). Settings and environment: sandpool_platform.py.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
import sandpool_platform  # noqa: E402
from sandpool_pytest_helpers import per_test_watchdog  # noqa: E402
from opensandbox import SandboxManagerSync, SandboxSync  # noqa: E402

# Set by the ``sandpool`` fixture so failing tests can show the platform's log.
_running: sandpool_platform.Sandpool | None = None


@pytest.fixture(scope="module")
def sandpool(request: pytest.FixtureRequest) -> sandpool_platform.Sandpool:
    """The running platform; its log is kept on disk if any test failed."""
    global _running
    binary, runtime_bin = sandpool_platform.check_prerequisites()
    platform = sandpool_platform.start(binary, runtime_bin)
    _running = platform
    failures_before = request.session.testsfailed
    try:
        yield platform
    finally:
        _running = None
        sandpool_platform.stop(platform, keep_log=request.session.testsfailed > failures_before)


@pytest.fixture
def sandboxes():
    """Every sandbox a test creates; whatever the test did not kill is killed here."""
    created: list[SandboxSync] = []
    yield created
    for sandbox in created:
        with contextlib.suppress(Exception):
            sandbox.kill()
        sandbox.close()


@pytest.fixture
def manager(sandpool: sandpool_platform.Sandpool):
    """The OpenSandbox SDK's sandbox manager on the platform."""
    mgr = SandboxManagerSync.create(sandpool.config())
    yield mgr
    mgr.close()


@pytest.fixture
def e2b_env(sandpool: sandpool_platform.Sandpool, monkeypatch) -> sandpool_platform.Sandpool:
    """The platform, with the environment the e2b SDKs read it from."""
    for name, value in {"E2B_API_URL": sandpool.url, "E2B_DOMAIN": sandpool.domain,
                        "E2B_SANDBOX_URL": sandpool.url, "E2B_API_KEY": sandpool.api_key}.items():
        monkeypatch.setenv(name, value)
    return sandpool


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """Overrides the runtime suite's 120 s watchdog (same name): creating 50
    sandboxes and waiting for the pool to refill legitimately takes longer."""
    yield from per_test_watchdog(sandpool_platform.TEST_TIMEOUT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _running is not None and "sandpool" in item.fixturenames:
        report.sections.append(("sandpool log (tail)", _running.log_tail()))
