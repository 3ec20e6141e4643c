"""Fault injection: the platform split into its parts (``sandpool serve --role``:
node agent with its private containerd, scheduler, gateway), each part killed
with SIGKILL in turn during a burst of claims, then started again.

After every fault the test asserts:
  * no lost claim: every create that answered 202 is listed, Running, and its
    sandbox answers an exec;
  * no double assignment: every listed claim runs in its own sandbox (the id the
    sandbox itself reports, ``SANDPOOL_SANDBOX_ID`` of its init, distinct and equal to the
    scheduler's record);
  * clear retryable errors for the callers in flight: 502/503/504 with a JSON
    ``{code, message}`` (a broken connection only when the gateway itself died),
    and the same request succeeds once the part is back;
  * no leak once every claim is deleted: containerd containers, active
    snapshots, netns files and bridge ports all equal the pool's warm sandboxes.
Plus: a claim's TTL still expires when the scheduler was down at the time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import sandpool_platform
from sandpool_pytest_helpers import free_port, log_tail, per_test_watchdog, start_process, stop_process

POOL = "fault-pool"
BUFFER = 4
BURST = 12
BRIDGE = "sptestflt"
SUBNET = "10.213.78.0/24"
ROLES = ("node-agent", "scheduler", "gateway")
RETRYABLE = {502, 503, 504}
CREATED = {200, 202}
READY_TIMEOUT = 120.0
# the sandbox's own id, from the environment the runtime hands its commands
# (the node agent sets it on the runtime)
IDENTITY = 'echo "$SANDPOOL_SANDBOX_ID"'


@dataclass
class Split:
    """``sandpool serve`` as three processes sharing one state dir."""

    binary: Path
    runtime: Path
    base: Path
    api_key: str
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def log(self, role: str) -> Path:
        return self.base / f"{role}.log"

    def argv(self, role: str) -> list[str]:
        return [
            str(self.binary), "serve", "--role", role,
            "--data-dir", str(self.data),
            "--listen", f"127.0.0.1:{self.ports['gateway']}",
            "--api-key", self.api_key,
            "--runtime-bin", str(self.runtime),
            "--bridge", BRIDGE, "--subnet", SUBNET,
            "--pool", f"{POOL}:busybox:{BUFFER}:{BUFFER}:0:40",
            "--image-cache", str(sandpool_platform.IMAGE_CACHE),
            "--agent-listen", f"127.0.0.1:{self.ports['node-agent']}",
            "--scheduler-listen", f"127.0.0.1:{self.ports['scheduler']}",
            "--metrics-listen", f"127.0.0.1:{self.ports['metrics-' + role]}",
        ]

    def start(self, role: str) -> None:
        log = self.log(role)
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as f:
            self.procs[role] = start_process(self.argv(role), f, self.base)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.procs[role].poll() is not None:
                pytest.fail(f"{role} exited with {self.procs[role].returncode}:\n{log_tail(log)}", pytrace=False)
            if b"sandpool: ready:" in log.read_bytes()[offset:]:
                return
            time.sleep(0.1)
        pytest.fail(f"{role} not ready within {READY_TIMEOUT}s:\n{log_tail(log)}", pytrace=False)

    def kill(self, role: str) -> None:
        if role == "containerd":
            pid = self.containerd_pid()
            assert pid, "the node agent's containerd is not running"
            os.kill(pid, signal.SIGKILL)
            return
        p = self.procs[role]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def wait_containerd_back(self, timeout: float = 60.0) -> None:
        """Until the node agent has started a new containerd that answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(subprocess.SubprocessError):
                if self.containerd_pid():
                    self.ctr("version")
                    return
            time.sleep(0.2)
        pytest.fail(f"containerd not restarted within {timeout}s:\n{log_tail(self.log('node-agent'))}", pytrace=False)

    def containerd_pid(self) -> int | None:
        config = str(self.data / "containerd" / "config.toml")
        for pid, argv in sandpool_platform._processes():
            if argv and Path(argv[0]).name == "containerd" and config in argv:
                return pid
        return None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"OPEN-SANDBOX-API-KEY": self.api_key}, timeout=60)

    def cli_run(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
        """The sandpool CLI against this scheduler; it finds the service token
        in the platform's data dir, unless ``token`` says otherwise."""
        env = {k: v for k, v in os.environ.items() if k != "SANDPOOL_SERVICE_TOKEN"}
        env["SANDPOOL_DATA_DIR"] = str(self.data)
        if token is not None:
            env["SANDPOOL_SERVICE_TOKEN"] = token
        return subprocess.run(
            [str(self.binary), args[0], "--scheduler", f"http://127.0.0.1:{self.ports['scheduler']}", *args[1:]],
            capture_output=True, text=True, timeout=60, env=env,
        )

    def cli(self, *args: str) -> str:
        out = self.cli_run(*args)
        assert out.returncode == 0, f"sandpool {' '.join(args)}: {out.stderr}"
        return out.stdout

    def ctr(self, *args: str) -> str:
        sock = str(self.data / "containerd" / "containerd.sock")
        return subprocess.run(["ctr", "--address", sock, "-n", "sandpool", *args], capture_output=True, text=True, check=True, timeout=30).stdout

    def node_resources(self) -> dict[str, int]:
        """What the node holds: containers, active snapshots, netns, bridge ports."""
        containers = self.ctr("containers", "ls", "-q").split()
        active = [line for line in self.ctr("snapshots", "ls").splitlines()[1:] if line.split()[-1:] == ["Active"]]
        netns_dir = self.data / "agent" / "netns"
        netns = [p for p in netns_dir.iterdir()] if netns_dir.exists() else []
        ports = subprocess.run(["ip", "-o", "link", "show", "master", BRIDGE], capture_output=True, text=True).stdout.splitlines()
        return {"containers": len(containers), "snapshots": len(active), "netns": len(netns), "bridge_ports": len(ports)}


@pytest.fixture(scope="module")
def split(request: pytest.FixtureRequest):
    binary, runtime = sandpool_platform.check_prerequisites()
    base = Path(tempfile.mkdtemp(prefix="sandpool-flt-")).resolve()
    (base / "data").mkdir()
    ports = {r: free_port() for r in ("gateway", "node-agent", "scheduler")}
    ports.update({f"metrics-{r}": free_port() for r in ROLES})
    s = Split(binary, runtime, base, "e2b_" + secrets.token_hex(20), ports)
    failed_before = request.session.testsfailed
    started = False
    try:
        for role in ROLES:
            s.start(role)
        started = True
        yield s
    finally:
        for role in reversed(ROLES):
            if role in s.procs:
                stop_process(s.procs[role], grace=15, kill_group=True)
        leftovers = sandpool_platform.cleanup_leftovers(s.data)
        sandpool_platform.drop_bridge(BRIDGE)
        if started and request.session.testsfailed == failed_before and not leftovers:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"\nfault suite logs kept in {base}")


def create(s: Split, tag: str, n: int, timeout: int = 600) -> tuple[object, object]:
    """One OpenSandbox create; (status, body) or ("transport", error)."""
    body = {
        "image": {"uri": "busybox"},
        "timeout": timeout,
        "entrypoint": ["tail", "-f", "/dev/null"],
        "metadata": {"fault": tag, "n": str(n)},
        "extensions": {"poolRef": POOL},
    }
    try:
        with s.client() as c:
            r = c.post("/v1/sandboxes", json=body)
    except httpx.TransportError as e:
        return "transport", repr(e)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def create_retrying(s: Split, tag: str, n: int, within: float = 60.0) -> tuple[object, object]:
    """A caller's retry: create again while the answer is retryable (the part
    is back, but its peers may still be reconnecting with backoff)."""
    deadline = time.monotonic() + within
    while True:
        status, body = create(s, tag, n)
        if status in CREATED or (status != "transport" and status not in RETRYABLE) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.5)


def listed(s: Split, tag: str) -> dict[str, dict]:
    with s.client() as c:
        r = c.get("/v1/sandboxes", params={"metadata": f"fault={tag}", "pageSize": 200})
    assert r.status_code == 200, r.text
    return {item["id"]: item for item in r.json()["items"]}


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """The soak's own bounds (settle 90 s + 240 s + settle 90 s) exceed the
    platform suite's 300 s watchdog; this module gets 600 s."""
    yield from per_test_watchdog(600)


@pytest.fixture(autouse=True)
def parts_alive(split: Split):
    """Every part runs at the start of a test, even if an earlier test failed
    before it restarted the part it killed."""
    for role in ROLES:
        if split.procs[role].poll() is not None:
            split.start(role)
    yield


@pytest.fixture
def tag(split: Split, request: pytest.FixtureRequest):
    """A fresh metadata tag for the test's claims. Whatever the test leaves
    claimed under it (it failed half-way) is released afterwards, so that one
    failure does not fail the next test's settle check as well."""
    name = getattr(request.node, "callspec", None)
    value = f"{name.id if name else 'claim'}-{uuid.uuid4().hex[:8]}"
    yield value
    with contextlib.suppress(Exception), split.client() as c:
        for cid in listed(split, value):
            c.delete(f"/v1/sandboxes/{cid}")


def wait_settled(s: Split, timeout: float = 90.0) -> dict[str, int]:
    """Until the pool holds exactly its warm buffer and the node exactly that."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        with s.client() as c:
            st = c.get(f"/v1/pools/{POOL}").json()["status"]
        res = s.node_resources()
        last = {"pool": st, **res}
        if st["allocated"] == 0 and st["total"] == BUFFER and set(res.values()) == {BUFFER}:
            return last
        time.sleep(0.5)
    pytest.fail(f"node did not settle to {BUFFER} warm sandboxes with nothing else: {last}", pytrace=False)


@pytest.mark.parametrize("victim", ["gateway", "scheduler", "node-agent", "containerd"])
def test_kill_during_claim_burst(split: Split, victim: str, tag: str):
    wait_settled(split)
    with concurrent.futures.ThreadPoolExecutor(max_workers=BURST) as pool:
        futures = [pool.submit(create, split, tag, i) for i in range(BURST)]
        deadline = time.monotonic() + 30
        while sum(f.done() for f in futures) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        # counted before the signal: the dead part's peers answer the callers
        # within milliseconds, often before kill() has returned
        in_flight = sum(not f.done() for f in futures)
        split.kill(victim)
        if victim == "containerd":
            split.wait_containerd_back()  # the node agent restarts it itself
        else:
            time.sleep(0.5)
            split.start(victim)
        results = [f.result(timeout=120) for f in futures]
    assert in_flight > 0, "the kill hit no claim in flight: the burst finished too early"

    ok = {body["id"]: n for n, (status, body) in enumerate(results) if status in CREATED}
    failed = [(n, status, body) for n, (status, body) in enumerate(results) if status not in CREATED]
    for n, status, body in failed:
        if status == "transport":
            assert victim == "gateway", f"create {n}: connection failed though the gateway lived: {body}"
        else:
            assert status in RETRYABLE, f"create {n}: {status} {body} is not a retryable error"
            assert isinstance(body, dict) and body.get("code") and body.get("message"), f"create {n}: no {{code,message}}: {body}"
    print(f"\n{victim}: {in_flight} of {BURST} in flight at the kill; {len(ok)} ok, {len(failed)} failed")

    # callers retry; the part is back
    for n, _, _ in failed:
        status, body = create_retrying(split, tag, n)
        assert status in CREATED, f"retry of create {n} after the {victim} restart: {status} {body}"
        ok[body["id"]] = n

    claims = listed(split, tag)
    missing = set(ok) - set(claims)
    assert not missing, f"claims answered 202 but lost: {missing}"
    # claims the scheduler made for callers that never heard back (gateway
    # died mid-answer) are listed too; they are ordinary claims with a TTL
    sandbox_of = {}
    for line in split.cli("list", "--pool", POOL).splitlines():
        cid, _, sb = line.split("\t")[:3]
        sandbox_of[cid] = sb.removeprefix("sandbox=")
    seen = {}
    for cid, item in claims.items():
        assert item["status"]["state"] == "Running", item
        reported = split.cli("exec", cid, "--", "sh", "-c", IDENTITY).strip()
        assert reported == sandbox_of[cid], f"claim {cid}: scheduler says {sandbox_of[cid]}, the sandbox says {reported}"
        assert reported not in seen, f"sandbox {reported} assigned to claims {seen.get(reported)} and {cid}"
        seen[reported] = cid

    with split.client() as c:
        for cid in claims:
            r = c.delete(f"/v1/sandboxes/{cid}")
            assert r.status_code in (200, 204), r.text
    settled = wait_settled(split)
    print(f"{victim}: settled {settled}")


def test_ttl_expires_across_a_scheduler_outage(split: Split, tag: str):
    wait_settled(split)
    status, body = create(split, tag, 0, timeout=3)
    assert status in CREATED, body
    split.kill("scheduler")
    time.sleep(4)  # the claim expires while nobody is watching
    split.start("scheduler")
    deadline = time.monotonic() + 20
    with split.client() as c:
        while c.get(f"/v1/sandboxes/{body['id']}").status_code != 404:
            assert time.monotonic() < deadline, "expired claim still there 20 s after the scheduler came back"
            time.sleep(0.25)
    wait_settled(split)


def test_internal_grpc_requires_the_service_token(split: Split):
    """The scheduler and node agent gRPC APIs refuse callers without the
    platform's service token (the gateway and CLI present it)."""
    token_file = split.data / "service-token"
    assert token_file.stat().st_mode & 0o077 == 0, "the token file is private to root"
    assert split.cli_run("list").returncode == 0
    wrong = split.cli_run("list", token="not-the-platform-token-0000")
    assert wrong.returncode != 0 and "wrong service token" in wrong.stderr, wrong.stderr
    # a bare client: the CLI with the token file out of reach and none given
    env = {k: v for k, v in os.environ.items() if k != "SANDPOOL_SERVICE_TOKEN"}
    env["SANDPOOL_DATA_DIR"] = str(split.base / "nowhere")
    for port in (split.ports["scheduler"], split.ports["node-agent"]):
        bare = subprocess.run(
            [str(split.binary), "list", "--scheduler", f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert bare.returncode != 0 and "missing service token" in bare.stderr, bare.stderr


SOAK_WORKERS = 4
# create + exec + delete cycles, spread over the workers (longer runs for
# docs/reliability.md: SANDPOOL_SOAK_CYCLES=600 SANDPOOL_SOAK_DEADLINE=900)
SOAK_CYCLES = int(os.environ.get("SANDPOOL_SOAK_CYCLES", "48"))
SOAK_DEADLINE = float(os.environ.get("SANDPOOL_SOAK_DEADLINE", "240"))


def test_bounded_soak_of_mixed_create_exec_kill(split: Split, tag: str):
    """Bounded soak (loopback only): workers create, exec in and delete
    sandboxes, some killed mid-command; reports error counts and latency, and
    asserts no errors and no leaks."""
    wait_settled(split)
    errors: list[str] = []
    timings: list[float] = []
    start = time.monotonic()

    def cycle(n: int) -> None:
        if time.monotonic() - start > SOAK_DEADLINE:
            return
        t0 = time.monotonic()
        status, body = create(split, tag, n)
        if status not in CREATED:
            errors.append(f"create {n}: {status} {body}")
            return
        cid = body["id"]
        try:
            with split.client() as c:
                ep = c.get(f"/v1/sandboxes/{cid}/endpoints/44772").json()
                # every third cycle deletes while a command still runs
                cmd = "sleep 30" if n % 3 == 0 else f"echo cycle-{n}"
                with httpx.Client(timeout=30) as rt:
                    if n % 3 == 0:
                        with contextlib.suppress(httpx.TimeoutException):
                            rt.post(f"http://{ep['endpoint']}/command", headers=ep["headers"], json={"command": cmd}, timeout=0.3)
                    else:
                        r = rt.post(f"http://{ep['endpoint']}/command", headers=ep["headers"], json={"command": cmd})
                        if r.status_code != 200 or f"cycle-{n}" not in r.text:
                            errors.append(f"exec {n}: {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as e:
            errors.append(f"exec {n}: {e!r}")
        finally:
            with split.client() as c:
                r = c.delete(f"/v1/sandboxes/{cid}")
                if r.status_code not in (200, 204):
                    errors.append(f"delete {n}: {r.status_code} {r.text[:200]}")
        timings.append(time.monotonic() - t0)

    with concurrent.futures.ThreadPoolExecutor(max_workers=SOAK_WORKERS) as pool:
        list(pool.map(cycle, range(SOAK_CYCLES)))
    elapsed = time.monotonic() - start
    settled = wait_settled(split)
    timings.sort()
    p50 = timings[len(timings) // 2] if timings else 0
    p95 = timings[int(len(timings) * 0.95)] if timings else 0
    print(f"\nsoak: {len(timings)} cycles by {SOAK_WORKERS} workers in {elapsed:.1f}s, "
          f"cycle p50 {p50 * 1000:.0f} ms p95 {p95 * 1000:.0f} ms, {len(errors)} errors; after: {settled}")
    assert not errors, errors[:5]
    assert len(timings) == SOAK_CYCLES, f"only {len(timings)} of {SOAK_CYCLES} cycles within {SOAK_DEADLINE}s"
    assert listed(split, tag) == {}, "claims left after the soak"
