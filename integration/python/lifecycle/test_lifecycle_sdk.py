"""The sandpool platform's OpenSandbox lifecycle API, driven through the real
opensandbox==1.1.1 SDK (sync API: ``SandboxSync`` / ``SandboxManagerSync``),
unchanged, plus raw HTTP for the error contract and the sandpool-only pool API.

One ``sandpool serve`` (conftest.py) backs the whole module; every sandbox is
taken from the pool ``test-pool`` (busybox, buffer 10..10, at most 60) via
``extensions.poolRef``. Tests kill what they create and wait for the pool to be
idle again (0 allocated, 10 warm) before they measure it, so they also run
one by one (``-k``).
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from sandpool_platform import (
    POOL_BUFFER_MAX,
    POOL_BUFFER_MIN,
    POOL_IMAGE,
    POOL_MAX,
    POOL_MIN,
    POOL_NAME,
    SUBNET,
    Sandpool,
)
from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd_sync import ExecutionHandlersSync
from opensandbox.models.sandboxes import NetworkPolicy, NetworkRule, SandboxFilter

EXECD_PORT = 44772
EGRESS_PORT = 18080
SANDBOX_TIMEOUT = timedelta(minutes=10)
ONE_MIB = 1024 * 1024


# --------------------------------------------------------------------------- helpers


def utc(moment: datetime) -> datetime:
    """Timestamps without an offset are tolerated by the SDK; read them as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def assert_about(actual: datetime, expected: datetime, slack: timedelta, what: str) -> None:
    delta = abs(utc(actual) - utc(expected))
    assert delta <= slack, f"{what}: {actual.isoformat()} is {delta} away from {expected.isoformat()}"


def create_sandbox(
    sandpool: Sandpool,
    tracker: list[SandboxSync],
    *,
    pool: str = POOL_NAME,
    config_overrides: dict | None = None,
    **kwargs,
) -> SandboxSync:
    """``SandboxSync.create`` as an SDK user writes it, from the test pool."""
    kwargs.setdefault("timeout", SANDBOX_TIMEOUT)
    kwargs.setdefault("ready_timeout", timedelta(seconds=60))
    sandbox = SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(**(config_overrides or {})),
        extensions={"poolRef": pool},
        **kwargs,
    )
    tracker.append(sandbox)
    return sandbox


def pool_status(sandpool: Sandpool) -> dict:
    """``GET /v1/pools/test-pool`` (sandpool-specific)."""
    with sandpool.client() as client:
        response = client.get(f"/v1/pools/{POOL_NAME}")
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    return response.json()


def wait_pool_idle(sandpool: Sandpool, timeout: float = 60.0) -> dict:
    """Poll the pool until nothing is allocated and exactly the buffer is warm."""
    deadline = time.monotonic() + timeout
    while True:
        body = pool_status(sandpool)
        status = body["status"]
        if status["allocated"] == 0 and status["available"] == POOL_BUFFER_MIN:
            return body
        if time.monotonic() > deadline:
            pytest.fail(
                f"pool not idle within {timeout}s (want allocated=0, "
                f"available={POOL_BUFFER_MIN}); last status: {status}"
            )
        time.sleep(0.5)


def all_sandbox_ids(sandpool: Sandpool) -> set[str]:
    """Every sandbox the gateway lists, over all pages (raw HTTP)."""
    ids: set[str] = set()
    page = 1
    with sandpool.client() as client:
        while True:
            response = client.get("/v1/sandboxes", params={"page": page, "pageSize": 100})
            assert response.status_code == 200, f"{response.status_code}: {response.text}"
            body = response.json()
            ids.update(item["id"] for item in body["items"])
            if not body["pagination"]["hasNextPage"]:
                return ids
            page += 1


def wait_sandbox_gone(sandbox: SandboxSync, timeout: float = 15.0) -> None:
    """After kill, GET /v1/sandboxes/{id} must turn into 404 SANDBOX_NOT_FOUND
    (a short Stopping/Terminated phase is tolerated)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            info = sandbox.get_info()
            last = f"still listed, state {info.status.state}"
        except SandboxApiException as exc:
            assert exc.status_code == 404, f"get_info after kill: {exc!r}"
            assert exc.error.code == "SANDBOX_NOT_FOUND", exc.error
            return
        time.sleep(0.2)
    pytest.fail(f"sandbox {sandbox.id} not gone {timeout}s after kill ({last})")


def extend_watchdog(seconds: float) -> None:
    """Re-arm the per-test watchdog (conftest.py) so it fires no sooner than
    ``seconds`` from now (its message still names the configured limit). A
    disarmed watchdog stays disarmed; a longer one is left alone."""
    if not hasattr(signal, "SIGALRM"):
        return
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    if 0 < remaining < seconds:
        signal.setitimer(signal.ITIMER_REAL, seconds)


# --------------------------------------------------------------------------- pool API


def test_pool_reports_capacity_and_warm_buffer(sandpool: Sandpool):
    body = wait_pool_idle(sandpool)

    assert body["name"] == POOL_NAME
    assert body["capacitySpec"] == {
        "bufferMin": POOL_BUFFER_MIN,
        "bufferMax": POOL_BUFFER_MAX,
        "poolMin": POOL_MIN,
        "poolMax": POOL_MAX,
    }
    status = body["status"]
    assert status["allocated"] == 0
    assert status["available"] == POOL_BUFFER_MIN
    assert POOL_BUFFER_MIN <= status["total"] <= POOL_MAX


def test_health_needs_no_key(sandpool: Sandpool):
    response = httpx.get(f"{sandpool.url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}


# --------------------------------------------------------------------------- SDK lifecycle


def test_sdk_lifecycle_direct(sandpool: Sandpool, sandboxes, manager):
    wait_pool_idle(sandpool)
    suite = str(uuid.uuid4())
    requested_at = datetime.now(timezone.utc)

    sandbox = create_sandbox(sandpool, sandboxes, metadata={"suite": suite})

    # Direct mode: execd is on the sandbox's bridge IP, reachable from the host.
    endpoint = sandbox.get_endpoint(EXECD_PORT).endpoint
    host, _, port = endpoint.rpartition(":")
    assert ipaddress.ip_address(host) in ipaddress.ip_network(SUBNET), endpoint
    assert port == str(EXECD_PORT), endpoint
    assert sandbox.get_endpoint(EGRESS_PORT).endpoint  # the SDK resolves it on create too

    execution = sandbox.commands.run("echo hello")
    assert execution.exit_code == 0, execution
    assert execution.text == "hello"

    path = f"/tmp/lifecycle-{suite}.txt"
    content = f"written through the SDK\nsuite {suite}\n"
    sandbox.files.write_file(path, content)
    assert sandbox.files.read_file(path) == content
    assert sandbox.commands.run(f"cat {path}").text == content.rstrip("\n")

    info = sandbox.get_info()
    assert info.id == sandbox.id
    assert info.status.state == "Running"
    assert info.metadata.get("suite") == suite
    assert_about(info.created_at, requested_at, timedelta(minutes=1), "createdAt")
    assert info.expires_at is not None, "created with a timeout, so expiresAt must be set"
    assert_about(info.expires_at, info.created_at + SANDBOX_TIMEOUT, timedelta(minutes=1), "expiresAt")
    assert pool_status(sandpool)["status"]["allocated"] == 1

    assert manager.get_sandbox_info(sandbox.id).id == sandbox.id
    listed = manager.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}))
    assert [item.id for item in listed.sandbox_infos] == [sandbox.id]
    assert listed.sandbox_infos[0].status.state == "Running"
    assert listed.pagination.total_items == 1
    running = manager.list_sandbox_infos(SandboxFilter(states=["Running"], metadata={"suite": suite}))
    assert [item.id for item in running.sandbox_infos] == [sandbox.id]
    other_suite = manager.list_sandbox_infos(SandboxFilter(metadata={"suite": str(uuid.uuid4())}))
    assert other_suite.sandbox_infos == []

    sandbox.kill()

    wait_sandbox_gone(sandbox)
    after = manager.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}))
    assert after.sandbox_infos == []
    assert after.pagination.total_items == 0


def test_sdk_egress_policy_calls_read_patch_and_delete(sandpool: Sandpool, sandboxes):
    """The SDK's own egress calls (``get_egress_policy``, ``patch_egress_rules``,
    ``delete_egress_rules``) reach the lifecycle API the node enforces (the
    endpoints say ``OPEN-SANDBOX-ORIGIN: template``): what they change reads
    back. A pool sandbox without a policy of its own reads back its pool's
    (allow all). Enforcement itself: ``test_attacks_sandbox.py``."""
    rules = lambda p: [(r.action, r.target) for r in p.egress]  # noqa: E731
    plain = create_sandbox(sandpool, sandboxes)
    pool_policy = plain.get_egress_policy()
    assert (pool_policy.default_action, rules(pool_policy)) == ("allow", [])

    policy = NetworkPolicy(default_action="deny", egress=[NetworkRule(action="allow", target="10.250.0.0/16")])
    sandbox = create_sandbox(sandpool, sandboxes, network_policy=policy)
    got = sandbox.get_egress_policy()
    assert (got.default_action, rules(got)) == ("deny", [("allow", "10.250.0.0/16")])
    sandbox.patch_egress_rules([NetworkRule(action="deny", target="10.250.0.0/16"),
                                NetworkRule(action="allow", target="10.251.0.1")])
    got = sandbox.get_egress_policy()
    assert (got.default_action, rules(got)) == ("deny", [("deny", "10.250.0.0/16"), ("allow", "10.251.0.1")])
    sandbox.delete_egress_rules(["10.250.0.0/16"])
    got = sandbox.get_egress_policy()
    assert (got.default_action, rules(got)) == ("deny", [("allow", "10.251.0.1")])
    # patching the pool sandbox starts from the pool's policy, not from nothing
    plain.patch_egress_rules([NetworkRule(action="deny", target="10.252.0.0/16")])
    got = plain.get_egress_policy()
    assert (got.default_action, rules(got)) == ("allow", [("deny", "10.252.0.0/16")])
    # a target that is no address, CIDR or domain name is refused naming it, and changes nothing
    with pytest.raises(Exception, match=r"pypi\.\.org"):
        sandbox.patch_egress_rules([NetworkRule(action="allow", target="pypi..org")])
    assert rules(sandbox.get_egress_policy()) == [("allow", "10.251.0.1")]


def test_sdk_commands_via_server_proxy(sandpool: Sandpool, sandboxes):
    sandbox = create_sandbox(sandpool, sandboxes, config_overrides={"use_server_proxy": True})

    endpoint = sandbox.get_endpoint(EXECD_PORT).endpoint
    assert "://" not in endpoint, f"endpoints carry no scheme: {endpoint}"
    assert endpoint.endswith(f"/v1/sandboxes/{sandbox.id}/proxy/{EXECD_PORT}"), endpoint

    execution = sandbox.commands.run("echo hello")
    assert execution.exit_code == 0, execution
    assert execution.text == "hello"

    # The proxy must stream, not buffer the whole response.
    arrivals: list[tuple[float, str]] = []
    streamed = sandbox.commands.run(
        "for i in 1 2 3 4; do echo $i; sleep 0.5; done",
        handlers=ExecutionHandlersSync(
            on_stdout=lambda message: arrivals.append((time.monotonic(), message.text))
        ),
    )
    assert streamed.exit_code == 0, streamed
    assert streamed.text == "1\n2\n3\n4"
    # 1.5 s of sleeps lie between the first and the last line
    assert arrivals[-1][0] - arrivals[0][0] >= 1.0, f"output not streamed through the proxy: {arrivals!r}"

    # Files go through the proxy too (multipart upload, download).
    sandbox.files.write_file("/tmp/proxied.txt", "via the gateway\n")
    assert sandbox.files.read_file("/tmp/proxied.txt") == "via the gateway\n"

    with sandpool.client() as client:
        ping = client.get(f"/v1/sandboxes/{sandbox.id}/proxy/{EXECD_PORT}/ping")
    assert ping.status_code == 200, f"{ping.status_code}: {ping.text}"

    sandbox.kill()
    wait_sandbox_gone(sandbox)


def test_renew_changes_expiration(sandpool: Sandpool, sandboxes):
    sandbox = create_sandbox(sandpool, sandboxes, timeout=timedelta(minutes=10))
    before = sandbox.get_info().expires_at
    assert before is not None

    requested_at = datetime.now(timezone.utc)
    renewed = sandbox.renew(timedelta(minutes=5))

    assert_about(renewed.expires_at, requested_at + timedelta(minutes=5), timedelta(minutes=1), "renew expiresAt")
    after = sandbox.get_info().expires_at
    assert after is not None
    assert_about(after, renewed.expires_at, timedelta(seconds=1), "expiresAt after renew")
    assert abs(utc(before) - utc(after)) >= timedelta(minutes=3), (before, after)

    assert sandbox.get_info().status.state == "Running"
    assert sandbox.commands.run("echo still-here").text == "still-here"


def test_pause_resume_keeps_state(sandpool: Sandpool, sandboxes):
    sandbox = create_sandbox(sandpool, sandboxes)
    sandbox.files.write_file("/tmp/before-pause.txt", "kept\n")

    try:
        sandbox.pause()
    except SandboxApiException as exc:
        if exc.status_code == 501:
            pytest.skip(f"pause not implemented by the platform (501): {exc}")
        raise

    deadline = time.monotonic() + 30
    while (state := sandbox.get_info().status.state) != "Paused":
        assert state in ("Running", "Pausing"), f"unexpected state while pausing: {state}"
        assert time.monotonic() < deadline, f"not Paused within 30s (state {state})"
        time.sleep(0.2)

    resumed = SandboxSync.resume(
        sandbox.id, connection_config=sandpool.config(), resume_timeout=timedelta(seconds=60)
    )
    sandboxes.append(resumed)

    deadline = time.monotonic() + 30
    while (state := resumed.get_info().status.state) != "Running":
        assert time.monotonic() < deadline, f"not Running within 30s of resume (state {state})"
        time.sleep(0.2)
    assert resumed.files.read_file("/tmp/before-pause.txt") == "kept\n"
    assert resumed.commands.run("echo back").text == "back"


# --------------------------------------------------------------------------- errors


def _create_body(**overrides) -> dict:
    """A create request exactly as SDK 1.1.1 sends it."""
    body = {
        "image": {"uri": POOL_IMAGE},
        "timeout": 600,
        "resourceLimits": {"cpu": "1", "memory": "2Gi"},
        "entrypoint": ["tail", "-f", "/dev/null"],
        "secureAccess": False,
        "extensions": {"poolRef": POOL_NAME},
    }
    body.update(overrides)
    return body


RIGHT_KEY = "<the platform's key>"


@dataclass(frozen=True)
class ErrorCase:
    method: str
    path: str
    status: int
    code: str
    key: str | None = RIGHT_KEY  # None: no key header
    body: dict | None = None  # sent as JSON
    raw: bytes | None = None  # sent verbatim as application/json

    def send(self, sandpool: Sandpool) -> httpx.Response:
        content = self.raw if self.raw is not None else (
            json.dumps(self.body).encode() if self.body is not None else None
        )
        headers = {"Content-Type": "application/json"} if content is not None else {}
        last_error: Exception | None = None
        # A 413 may be answered before the body is read; if the server then
        # resets the connection the client can lose the response. Retry a
        # little so a real missing 413 fails, not a racy socket.
        for _ in range(3):
            try:
                key = sandpool.api_key if self.key == RIGHT_KEY else self.key
                with sandpool.client(api_key=key) as client:
                    return client.request(self.method, self.path, content=content, headers=headers)
            except httpx.TransportError as exc:
                last_error = exc
                time.sleep(0.2)
        pytest.fail(
            f"{self.method} {self.path}: no HTTP response after 3 tries ({last_error!r}); "
            "the server must answer (e.g. read/drain the body before closing)"
        )


_UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
_OVERSIZED = json.dumps(_create_body(metadata={"pad": "x" * (ONE_MIB + 1024)})).encode()

ERROR_CASES = {
    "missing-key-list": ErrorCase("GET", "/v1/sandboxes", 401, "MISSING_API_KEY", key=None),
    "missing-key-create": ErrorCase("POST", "/v1/sandboxes", 401, "MISSING_API_KEY", key=None, body=_create_body()),
    "missing-key-pool": ErrorCase("GET", f"/v1/pools/{POOL_NAME}", 401, "MISSING_API_KEY", key=None),
    "wrong-key-create": ErrorCase("POST", "/v1/sandboxes", 401, "INVALID_API_KEY", key="not-the-key", body=_create_body()),
    "wrong-key-get": ErrorCase("GET", f"/v1/sandboxes/{_UNKNOWN_ID}", 401, "INVALID_API_KEY", key="not-the-key"),
    "unknown-pool-create": ErrorCase(
        "POST", "/v1/sandboxes", 404, "POOL_NOT_FOUND", body=_create_body(extensions={"poolRef": "no-such-pool"})
    ),
    "unknown-pool-status": ErrorCase("GET", "/v1/pools/no-such-pool", 404, "POOL_NOT_FOUND"),
    "negative-timeout": ErrorCase("POST", "/v1/sandboxes", 400, "INVALID_REQUEST", body=_create_body(timeout=-1)),
    "fractional-timeout": ErrorCase("POST", "/v1/sandboxes", 400, "INVALID_REQUEST", body=_create_body(timeout=60.5)),
    "string-timeout": ErrorCase("POST", "/v1/sandboxes", 400, "INVALID_REQUEST", body=_create_body(timeout="600")),
    "malformed-json": ErrorCase("POST", "/v1/sandboxes", 400, "INVALID_REQUEST", raw=b'{"image": {"uri": "busybox"'),
    "oversized-body": ErrorCase("POST", "/v1/sandboxes", 413, "PAYLOAD_TOO_LARGE", raw=_OVERSIZED),
    "unknown-sandbox-get": ErrorCase("GET", f"/v1/sandboxes/{_UNKNOWN_ID}", 404, "SANDBOX_NOT_FOUND"),
    "unknown-sandbox-delete": ErrorCase("DELETE", f"/v1/sandboxes/{_UNKNOWN_ID}", 404, "SANDBOX_NOT_FOUND"),
    "unknown-sandbox-endpoint": ErrorCase(
        "GET", f"/v1/sandboxes/{_UNKNOWN_ID}/endpoints/{EXECD_PORT}", 404, "SANDBOX_NOT_FOUND"
    ),
    "unknown-sandbox-renew": ErrorCase(
        "POST", f"/v1/sandboxes/{_UNKNOWN_ID}/renew-expiration", 404, "SANDBOX_NOT_FOUND",
        body={"expiresAt": "2099-01-01T00:00:00Z"},
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_error_response(sandpool: Sandpool, case: ErrorCase):
    response = case.send(sandpool)

    assert response.status_code == case.status, f"{response.status_code}: {response.text[:300]}"
    body = response.json()
    # The SDK's ErrorResponse.from_dict needs both keys.
    assert body.get("code") == case.code, body
    assert isinstance(body.get("message"), str), body


def test_sdk_create_from_unknown_pool_fails_fast(sandpool: Sandpool, sandboxes):
    started = time.monotonic()
    with pytest.raises(SandboxApiException) as excinfo:
        create_sandbox(sandpool, sandboxes, pool="no-such-pool")

    assert excinfo.value.status_code == 404, excinfo.value
    # 404 is not in the SDK's parsed statuses for create: the code is only in the raw body.
    assert b"POOL_NOT_FOUND" in (excinfo.value.response_body or b""), excinfo.value
    assert time.monotonic() - started < 10, "unknown poolRef must fail fast, not wait for capacity"
    assert sandboxes == []


def test_rejected_requests_leak_nothing(sandpool: Sandpool):
    wait_pool_idle(sandpool)
    baseline_ids = all_sandbox_ids(sandpool)

    for _ in range(2):
        for name, case in ERROR_CASES.items():
            response = case.send(sandpool)
            assert response.status_code == case.status, f"{name}: {response.status_code} {response.text[:200]}"

    assert pool_status(sandpool)["status"]["allocated"] == 0
    assert all_sandbox_ids(sandpool) == baseline_ids
    wait_pool_idle(sandpool, timeout=30)


# --------------------------------------------------------------------------- concurrency


CONCURRENT = 50
CREATE_BUDGET = 300.0  # seconds for all 50 creates + one command each


def test_fifty_concurrent_creates_from_pool_of_ten(sandpool: Sandpool, sandboxes, manager):
    # the create budget alone is as long as the default 300 s watchdog: add
    # room for the two pool-idle waits (60 s each), the listing and the kills
    extend_watchdog(CREATE_BUDGET + 240)
    wait_pool_idle(sandpool)
    suite = str(uuid.uuid4())

    def launch(index: int) -> tuple[str, str]:
        sandbox = create_sandbox(
            sandpool,
            sandboxes,  # list.append is atomic: the fixture kills leftovers
            metadata={"suite": suite, "index": str(index)},
            ready_timeout=timedelta(seconds=CREATE_BUDGET),
            config_overrides={"request_timeout": timedelta(seconds=CREATE_BUDGET)},
        )
        execution = sandbox.commands.run("cat /proc/sys/kernel/hostname")
        assert execution.exit_code == 0, execution
        return sandbox.id, execution.text.strip()

    executor = ThreadPoolExecutor(max_workers=CONCURRENT, thread_name_prefix="create")
    try:
        started = time.monotonic()
        futures = [executor.submit(launch, index) for index in range(CONCURRENT)]
        results: list[tuple[str, str]] = []
        errors: list[str] = []
        try:
            for future in as_completed(futures, timeout=CREATE_BUDGET):
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(repr(exc))
        except FuturesTimeout:
            pytest.fail(
                f"only {len(results) + len(errors)} of {CONCURRENT} creates finished within "
                f"{CREATE_BUDGET}s ({len(errors)} failed: {errors[:3]})"
            )
        elapsed = time.monotonic() - started

        assert not errors, f"{len(errors)} of {CONCURRENT} creates failed, e.g. {errors[:3]}"
        ids = [sandbox_id for sandbox_id, _ in results]
        hostnames = [hostname for _, hostname in results]
        assert len(set(ids)) == CONCURRENT, "sandbox ids must be distinct"
        assert all(hostnames), hostnames
        assert len(set(hostnames)) == CONCURRENT, f"hostnames must be distinct: {sorted(hostnames)}"
        print(f"\n{CONCURRENT} concurrent creates + command: {elapsed:.1f}s")

        status = pool_status(sandpool)["status"]
        assert status["allocated"] == CONCURRENT, status
        assert status["total"] <= POOL_MAX, status

        # The gateway lists them all, 20 per page.
        first = manager.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}, page=1, page_size=20))
        assert first.pagination.total_items == CONCURRENT
        assert first.pagination.total_pages == 3
        assert first.pagination.has_next_page is True
        listed = {item.id for item in first.sandbox_infos}
        for page in (2, 3):
            more = manager.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}, page=page, page_size=20))
            listed |= {item.id for item in more.sandbox_infos}
        assert more.pagination.has_next_page is False
        assert listed == set(ids)

        # Kill them all at once.
        kill_errors = [
            repr(exc)
            for exc in executor.map(_kill_collecting_error, list(sandboxes))
            if exc is not None
        ]
        assert not kill_errors, f"{len(kill_errors)} kills failed, e.g. {kill_errors[:3]}"
    finally:
        # Wait for the workers: none may go on creating sandboxes after the
        # fixture's cleanup. Each create is bounded by its request/ready
        # timeouts; the per-test watchdog interrupts this wait otherwise.
        executor.shutdown(wait=True, cancel_futures=True)

    gone = manager.list_sandbox_infos(SandboxFilter(metadata={"suite": suite}))
    assert gone.sandbox_infos == [], [item.id for item in gone.sandbox_infos]
    idle = wait_pool_idle(sandpool, timeout=60)
    assert idle["status"]["allocated"] == 0


def _kill_collecting_error(sandbox: SandboxSync) -> Exception | None:
    try:
        sandbox.kill()
        return None
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        return exc
    finally:
        sandbox.close()
