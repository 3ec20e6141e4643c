"""Attacks a tenant can run from inside a sandbox, against the real platform
(``sandpool serve`` on real containerd: runc sandboxes from ``test-pool``,
runsc ones from ``ck-pool`` (network-less) for the limits and from
``runsc-pool`` (networked) for the network and log attacks, which run on
both runtimes), through the real opensandbox==1.1.1 SDK,
unchanged. Each attack comes with a
negative control showing the probe itself works, and each checks that the
platform and a second sandbox still answer afterwards (nothing lost).

Every attack is bounded: a fixed number of processes, a fixed allocation, a
fixed number of bytes, and every wait has a deadline.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import RunCommandOpts

from e2b import Sandbox as E2bSandbox
from opensandbox.models.sandboxes import NetworkPolicy, NetworkRule

from sandpool_platform import (
    BRIDGE, CK_POOL_NAME, DISK_LIMIT_MIB, POOL_IMAGE, POOL_NAME, RUNSC_POOL_NAME, Sandpool,
)

RUNTIME_PORT = 44772  # the sandbox runtime's API (node-agent spec::RUNTIME_PORT)
PIDS_LIMIT = 512  # the node default (node-agent/src/limits.rs)
LOG_CAP = 1 << 20  # the node default (--sandbox-log-cap-bytes)
LOG_SLACK = 256 << 10  # what the shim may append between two cap checks (200 ms)


# The node's default limits, asked for explicitly: without `resource` the SDK
# asks for {"cpu": "1", "memory": "2Gi"}, which a pool claim now honours.
NODE_DEFAULT = {"cpu": "1", "memory": "512Mi"}


def create(sandpool: Sandpool, pool: str = POOL_NAME, image: str = POOL_IMAGE, **options) -> SandboxSync:
    options.setdefault("resource", NODE_DEFAULT)
    return SandboxSync.create(
        image,
        connection_config=sandpool.config(),
        extensions={"poolRef": pool},
        timeout=timedelta(minutes=5),
        ready_timeout=timedelta(seconds=90),
        **options,
    )


def run(sandbox: SandboxSync, cmd: str, timeout: float = 60.0):
    return sandbox.commands.run(cmd, opts=RunCommandOpts(timeout=timedelta(seconds=timeout)))


def stdout(execution) -> str:
    # execd sends one event per line without its ending; "\n" is a blank line
    return "".join(m.text if m.text == "\n" else m.text + "\n" for m in execution.logs.stdout)


# The pool an attack's sandbox comes from, by runtime: runc from the warm
# `test-pool`, networked runsc (gVisor) from the cold `runsc-pool`, both busybox.
RUNTIMES = {"runc": POOL_NAME, "runsc": RUNSC_POOL_NAME}
on_runc_and_runsc = pytest.mark.parametrize("runtime", list(RUNTIMES))


@pytest.fixture
def runtime() -> str:
    """The attacker's runtime: runc unless a test is parametrized over both."""
    return "runc"


KERNEL = "cat /proc/version"


def assert_runtime(kernel: str, runtime: str) -> None:
    """``kernel``, what KERNEL printed in a sandbox, is the host's on runc
    and gVisor's own on runsc."""
    on_host = kernel.strip() == Path("/proc/version").read_text().strip()
    assert on_host == (runtime == "runc"), f"not a {runtime} sandbox: {kernel!r}"


@pytest.fixture
def pair(sandpool: Sandpool, runtime: str):
    """The attacker (on `runtime`) and a bystander (runc) sandbox, killed afterwards."""
    attacker, bystander = create(sandpool, RUNTIMES[runtime]), create(sandpool)
    try:
        assert_runtime(stdout(run(attacker, KERNEL)), runtime)
        yield attacker, bystander
    finally:
        for sandbox in (attacker, bystander):
            try:
                sandbox.kill()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass


def assert_platform_fine(sandpool: Sandpool, bystander: SandboxSync, what: str) -> None:
    response = httpx.get(f"{sandpool.url}/health", timeout=5.0)
    assert response.status_code == 200 and response.json() == {"status": "healthy"}, f"{what}: {response.text}"
    execution = run(bystander, "echo bystander-ok", timeout=30)
    assert execution.exit_code == 0 and stdout(execution).strip() == "bystander-ok", f"{what}: {execution}"
    assert bystander.get_info().status.state == "Running", what


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(interval)
    pytest.fail(f"{what} not within {timeout}s (last: {last!r})")


# ------------------------------------------------------------------ fork bomb

def _host_pids_cgroups(argv: list[bytes]) -> dict[str, int]:
    """Host-side pids cgroups (v1 or v2) of the processes running exactly
    ``argv``, with how many such processes each holds."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().split(b"\0")[:-1] != argv:
                continue
            lines = (entry / "cgroup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if controllers == "" or "pids" in controllers.split(","):
                root = Path("/sys/fs/cgroup/pids") if controllers else Path("/sys/fs/cgroup")
                key = str(root / path.lstrip("/"))
                found[key] = found.get(key, 0) + 1
                break
    return found


def test_fork_bomb_stops_at_the_pids_limit(sandpool: Sandpool, pair):
    attacker, bystander = pair
    # control: the same sandbox starts a few processes normally
    control = run(attacker, "for i in 1 2 3 4 5; do sleep 1 </dev/null >/dev/null 2>&1 & done; wait; echo done")
    assert control.exit_code == 0 and stdout(control).strip() == "done", control

    # bounded: at most 2000 sleepers, each gone after 20 s; a unique duration
    # finds them (and so the sandbox's cgroup) from the host
    duration = f"20.{time.time_ns() % 1000000:06d}"
    bomb = f"i=0; while [ $i -lt 2000 ]; do sleep {duration} </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo spawned=$i"
    started = time.monotonic()
    execution = run(attacker, bomb, timeout=60)
    took = time.monotonic() - started
    errors = "".join(m.text for m in execution.logs.stderr)
    groups = _host_pids_cgroups([b"sleep", duration.encode()])
    assert len(groups) == 1, f"the sleepers are not in one cgroup: {groups}"
    (cgroup, sleepers), = groups.items()
    current = int(Path(cgroup, "pids.current").read_text())
    limit = Path(cgroup, "pids.max").read_text().strip()
    tasks = len(Path(cgroup, "tasks").read_text().split()) if Path(cgroup, "tasks").exists() else None
    print(
        f"\nfork bomb (runc): {stdout(execution).strip() or '-'} {errors.strip()[-80:]!r} in {took:.1f}s; "
        f"{sleepers} sleepers on the host, pids.current={current} pids.max={limit} tasks={tasks}"
    )
    assert limit == str(PIDS_LIMIT), f"pids.max {limit}"
    assert current <= PIDS_LIMIT, f"pids.current {current}: the pids limit did not hold"
    assert sleepers >= PIDS_LIMIT // 2, f"{sleepers} sleepers: the bomb did not run"
    assert "spawned=2000" not in stdout(execution), "all 2000 forks succeeded"
    # meanwhile (the sleepers still hold the limit) the platform and a neighbour answer
    assert_platform_fine(sandpool, bystander, "during the fork bomb")
    still = int(Path(cgroup, "pids.current").read_text())
    assert still >= PIDS_LIMIT // 2, f"pids.current {still}: the bomb was over before the checks"
    # once the sleepers are gone, the attacker starts processes normally again
    wait_until(lambda: int(Path(cgroup, "pids.current").read_text()) < 64, 45, "the sleepers gone")
    again = run(attacker, "for i in 1 2 3 4 5; do sleep 1 </dev/null >/dev/null 2>&1 & done; wait; echo done")
    assert again.exit_code == 0 and stdout(again).strip() == "done", again


# ------------------------------------------------------------------ memory


def test_big_allocation_is_oom_killed_inside_the_sandbox(sandpool: Sandpool, pair):
    attacker, bystander = pair
    # control: 64 MiB in one buffer fits
    control = run(attacker, "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo rc=$?")
    assert stdout(control).strip() == "rc=0", control
    # 1 GiB in one buffer against the 512 MiB default
    started = time.monotonic()
    execution = run(attacker, "dd if=/dev/zero of=/dev/null bs=1G count=1 2>/dev/null; echo rc=$?", timeout=60)
    took = time.monotonic() - started
    print(f"\n1 GiB allocation (runc): {stdout(execution).strip()} after {took:.1f}s")
    assert stdout(execution).strip() == "rc=137", f"not OOM-killed: {execution}"
    assert took < 30, f"OOM kill took {took:.1f}s"
    after = run(attacker, "echo alive")
    assert stdout(after).strip() == "alive", "the attacker's runtime survives the OOM kill"
    assert_platform_fine(sandpool, bystander, "after the OOM kill")


# ------------------------------------------------------------------ IPv6


def _bridge_link_local() -> str:
    out = subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", BRIDGE, "scope", "link"],
        capture_output=True, text=True, timeout=10,
    ).stdout
    match = re.search(r"inet6 (fe80:[0-9a-f:]+)/", out)
    if not match:
        pytest.fail(f"bridge {BRIDGE} has no IPv6 link-local address: {out!r}")
    return match.group(1)


@on_runc_and_runsc
def test_sandbox_cannot_reach_a_host_listener_over_ipv6(sandpool: Sandpool, pair, runtime: str):
    attacker, bystander = pair
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[str] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            accepted.append(peer[0])
            conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        # control: the host itself reaches it over IPv6
        with socket.create_connection(("::1", port), timeout=5):
            pass
        wait_until(lambda: len(accepted) == 1, 5, "the host's own IPv6 connection accepted", interval=0.05)
        link_local = _bridge_link_local()
        # control: the same probe reports a port that answers (the runtime's own) as open
        probe = "if nc -w 2 {} </dev/null >/dev/null 2>&1; then echo open; else echo closed; fi; "
        probe = (
            probe.format(f"127.0.0.1 {RUNTIME_PORT}") + probe.format(f"{link_local}%eth0 {port}")
            + "cat /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null || echo no-such-file"
        )
        execution = run(attacker, probe, timeout=30)
        lines = stdout(execution).split()
        netns = _netns_sysctl(sandpool, attacker, "net/ipv6/conf/all/disable_ipv6")
        print(f"\nIPv6 to [{link_local}]:{port} from the sandbox ({runtime}): {lines}; "
              f"host accepted {accepted}; disable_ipv6 in its netns (read on the host): {netns}")
        assert lines[:1] == ["open"], f"control: the probe does not see its own runtime: {lines}"
        assert lines[1:2] == ["closed"], f"reached [{link_local}]:{port}: {lines}"
        assert accepted == ["::1"], f"the host accepted an IPv6 connection from a sandbox: {accepted}"
        assert netns == "1", f"IPv6 is not off in the sandbox's netns: {netns}"
        # gVisor's /proc has no net/ipv6: only a runc sandbox reads the sysctl itself
        assert lines[2:] == ["1"] or (runtime, lines[2:]) == ("runsc", ["no-such-file"]), lines
    finally:
        stop.set()
        server.join(timeout=5)
        listener.close()
    assert_platform_fine(sandpool, bystander, "after the IPv6 probe")


# ------------------------------------------------------------------ host log flood


def _agent_id(sandbox: SandboxSync) -> str:
    """The node agent's id of ``sandbox`` (not the claim id), from the
    environment the runtime hands its commands."""
    out = stdout(run(sandbox, 'echo "$SANDPOOL_SANDBOX_ID"')).strip()
    assert re.fullmatch(r"[A-Za-z0-9._-]+", out), out
    return out


def _host_log(sandpool: Sandpool, sandbox: SandboxSync) -> Path:
    """The host log ``sandbox``'s runtime stdout goes to (named by the node
    agent's id of the sandbox)."""
    log = sandpool.base_dir / "data" / "agent" / "logs" / f"{_agent_id(sandbox)}.log"
    assert log.is_file(), log
    return log


def _netns_sysctl(sandpool: Sandpool, sandbox: SandboxSync, name: str) -> str:
    """``/proc/sys/<name>`` read on the host in ``sandbox``'s network namespace."""
    netns = sandpool.base_dir / "data" / "agent" / "netns" / _agent_id(sandbox)
    return subprocess.run(
        ["nsenter", f"--net={netns}", "cat", f"/proc/sys/{name}"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.strip()


# The tenant's way into the host log: its entrypoint's stdout is the
# runtime's. (Its commands cannot open the runtime's stdout through
# /proc/1/fd/1: the runtime of an unprivileged sandbox holds capabilities they
# lack, so the kernel refuses them ptrace access to it.)
FLOODER = (
    "echo {marker}; while [ ! -e /tmp/go ]; do sleep 0.1; done; "
    "head -c 10485760 /dev/zero | tr '\\0' x; echo; echo flooded > /tmp/done; sleep 3600"
)


@on_runc_and_runsc
def test_log_flood_is_capped_on_the_host(sandpool: Sandpool, runtime: str):
    marker = f"attack-marker-{time.time_ns()}"
    attacker = create(sandpool, RUNTIMES[runtime], entrypoint=["sh", "-c", FLOODER.format(marker=marker)])
    bystander = create(sandpool)
    try:
        _flood_and_check(sandpool, attacker, bystander, marker, runtime)
    finally:
        for sandbox in (attacker, bystander):
            try:
                sandbox.kill()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass


def _flood_and_check(sandpool: Sandpool, attacker: SandboxSync, bystander: SandboxSync, marker: str,
                     runtime: str) -> None:
    # control: the entrypoint's first line lands in the host log
    log = _host_log(sandpool, attacker)
    wait_until(lambda: marker in log.read_text(errors="replace"), 10, "the marker in the host log", interval=0.1)
    started = time.monotonic()
    run(attacker, "touch /tmp/go")
    wait_until(lambda: "flooded" in stdout(run(attacker, "cat /tmp/done 2>/dev/null || true")), 60,
               "the 10 MiB flood written", interval=0.5)
    # the cap is checked every 200 ms: the log gets back under it promptly
    size = wait_until(
        lambda: (s := log.stat().st_size) <= LOG_CAP + LOG_SLACK and s + 1,
        5, f"{log} back under {LOG_CAP + LOG_SLACK} bytes", interval=0.1,
    ) - 1
    took = time.monotonic() - started
    disk = log.stat().st_blocks * 512
    # the flood reached the log and was cut. The marker is not always first:
    # an append landing between the agent's truncate and its marker write
    # goes before it (seen on runsc, whose writes go on across cap checks).
    at = (text := log.read_bytes()).find(b"[sandpool: log truncated")
    print(f"\nlog flood ({runtime}): 10 MiB to stdout -> host log {size} bytes ({disk} on disk) after {took:.1f}s, "
          f"truncation marker at byte {at}")
    assert disk <= LOG_CAP + LOG_SLACK + (64 << 10), f"{disk} bytes on disk"
    assert at >= 0, f"no truncation marker in the log: {text[:64]!r}"
    after = run(attacker, "echo alive")
    assert stdout(after).strip() == "alive", "the attacker keeps working"
    assert_platform_fine(sandpool, bystander, "after the log flood")
    # released, the sandbox's log goes with it (within 1 s: well before the
    # node's 10 s sweep would remove it as a log of no sandbox)
    attacker.kill()
    wait_until(lambda: not log.exists(), 1, f"{log} removed on release", interval=0.05)


# ------------------------------------------------------------------ runsc
# runsc enforces the limits on the whole gVisor sandbox (its kernel is the
# host process in the cgroup): going over them stops that sandbox, which the
# platform must report, while the platform and other sandboxes carry on.


def _wait_not_running(sandbox: SandboxSync, timeout: float) -> str:
    def state():
        try:
            s = sandbox.get_info().status.state
        except SandboxApiException as exc:
            return f"HTTP {exc.status_code}" if exc.status_code == 404 else None
        return s if s in ("Failed", "Terminated") else None

    return wait_until(state, timeout, f"runsc sandbox {sandbox.id} reported stopped", interval=0.25)


def _attack_until_stopped(victim: SandboxSync, control: str, expect: str, attack: str, what: str, within: float):
    """`control` prints `expect` and `victim` keeps running; then `attack`
    runs until the sandbox is reported stopped (within `within` s). Returns
    the state and the sandbox's status."""
    done = run(victim, control)
    assert stdout(done).strip() == expect, done
    assert victim.get_info().status.state == "Running"
    started = time.monotonic()
    thread = threading.Thread(target=lambda: _swallow(lambda: run(victim, attack, timeout=within)), daemon=True)
    thread.start()
    state = _wait_not_running(victim, within)
    took = time.monotonic() - started
    status = victim.get_info().status
    print(f"\n{what}: sandbox {state} after {took:.1f}s: {status.reason}: {status.message}")
    thread.join(timeout=within)
    return state, status


def _runsc_attack(sandpool: Sandpool, bystander, control: str, expect: str, attack: str, what: str,
                  reason: str | None = None) -> None:
    """On a fresh runsc sandbox: `control` prints `expect` and the sandbox keeps
    running; then `attack` runs until the sandbox is reported stopped (within
    40 s), and the platform and a neighbour still answer."""
    victim = create(sandpool, CK_POOL_NAME, "python")
    try:
        _, status = _attack_until_stopped(victim, control, expect, attack, f"{what} (runsc)", 40)
        if reason is not None:
            assert status.reason == reason, status
        assert_platform_fine(sandpool, bystander, f"after the runsc {what}")
    finally:
        _swallow(victim.kill)


def test_runsc_sandbox_over_its_memory_limit_is_stopped_and_reported(sandpool: Sandpool, pair):
    _, bystander = pair
    # control: 64 MiB in one buffer fits
    _runsc_attack(
        sandpool,
        bystander,
        "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo rc=$?",
        "rc=0",
        "dd if=/dev/zero of=/dev/null bs=1G count=1",
        "1 GiB allocation",
        reason="OOMKilled",
    )


def test_runsc_sandbox_running_a_fork_bomb_is_stopped_and_reported(sandpool: Sandpool, pair):
    _, bystander = pair
    # control: a few processes start normally
    _runsc_attack(
        sandpool,
        bystander,
        "for i in 1 2 3 4 5; do sleep 1 </dev/null >/dev/null 2>&1 & done; wait; echo done",
        "done",
        "i=0; while [ $i -lt 2000 ]; do sleep 20 </dev/null >/dev/null 2>&1 & i=$((i+1)); done",
        "fork bomb",
    )


def _swallow(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the sandbox may die under us
        return exc


# ------------------------------------------------------------------ disk


@on_runc_and_runsc
def test_disk_fill_stops_the_sandbox_with_a_reason(sandpool: Sandpool, pair, runtime: str):
    """Writing past the disk limit (1 GiB here) stops the sandbox within a
    check period; GET says why, the metric counts it; a neighbour is fine."""
    attacker, bystander = pair
    # control: 64 MiB fits and the sandbox keeps running
    fill = f"dd if=/dev/zero of=$HOME/fill bs=1M count={DISK_LIMIT_MIB * 3 // 2}; sync"
    state, status = _attack_until_stopped(
        attacker, "dd if=/dev/zero of=$HOME/small bs=1M count=64 2>/dev/null; sync; echo rc=$?", "rc=0",
        fill, "disk fill", 60)
    assert (state, status.reason) == ("Failed", "DiskLimitExceeded"), status
    assert f"{DISK_LIMIT_MIB} MiB" in (status.message or ""), status
    metrics = httpx.get(f"http://127.0.0.1:{sandpool.metrics_port}/metrics", timeout=5.0).text
    assert 'sandpool_sandbox_limit_kills_total{reason="DiskLimitExceeded"}' in metrics
    assert_platform_fine(sandpool, bystander, "after the disk fill")


# ------------------------------------------------------------------ egress

OUTSIDE = "spegrpy"  # a network namespace the test makes, outside the sandbox network
OUTSIDE_HOST, OUTSIDE_ADDR, OUTSIDE_PORT = "10.250.77.1", "10.250.77.2", 18080


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """An HTTP listener in its own network namespace, linked to the host by a
    veth pair: a destination sandboxes reach through the host's routing."""
    subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)
    _ip("netns", "add", OUTSIDE)
    _ip("link", "add", f"{OUTSIDE}h", "type", "veth", "peer", "name", f"{OUTSIDE}n")
    _ip("link", "set", f"{OUTSIDE}n", "netns", OUTSIDE)
    _ip("addr", "add", f"{OUTSIDE_HOST}/30", "dev", f"{OUTSIDE}h")
    _ip("link", "set", f"{OUTSIDE}h", "up")
    _ip("-n", OUTSIDE, "addr", "add", f"{OUTSIDE_ADDR}/30", "dev", f"{OUTSIDE}n")
    _ip("-n", OUTSIDE, "link", "set", f"{OUTSIDE}n", "up")
    _ip("-n", OUTSIDE, "route", "add", "default", "via", OUTSIDE_HOST)
    server = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE, sys.executable, "-m", "http.server", str(OUTSIDE_PORT), "--bind", OUTSIDE_ADDR,
         "--directory", str(tmp_path_factory.mktemp("outside-www"))],  # serves an empty dir, not the repo
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _host_reaches_outside() or None, 20, "the outside listener")
        yield OUTSIDE_ADDR
    finally:
        server.kill()
        server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", f"{OUTSIDE}h"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)


def _host_reaches_outside() -> bool:
    try:
        return httpx.get(f"http://{OUTSIDE_ADDR}:{OUTSIDE_PORT}/", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


PROBE = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {OUTSIDE_ADDR} {OUTSIDE_PORT} 2>&1; true"


def _reaches(output: str) -> bool:
    return "HTTP/1.0 200" in output


@on_runc_and_runsc
def test_egress_policies_hold_for_opensandbox_and_e2b(sandpool: Sandpool, e2b_env: Sandpool, outside: str, runtime: str):
    """A deny policy (OpenSandbox ``networkPolicy``, E2B
    ``allow_internet_access=False``) stops connections to a listener in
    another network namespace; the host and a sandbox without a policy reach
    it (negative controls), and an allow rule for its address opens it."""
    assert _host_reaches_outside(), "control: the host reaches the listener"
    started = time.monotonic()
    deny = NetworkPolicy(default_action="deny", egress=[NetworkRule(action="deny", target="10.250.77.0/24")])
    allow_one = NetworkPolicy(default_action="deny", egress=[NetworkRule(action="allow", target=f"{outside}/32")])
    made = []
    try:
        for policy, expected in ((None, True), (deny, False), (allow_one, True)):
            options = {"network_policy": policy} if policy else {}
            sandbox = create(sandpool, RUNTIMES[runtime], **options)
            made.append(sandbox)
            assert_runtime(stdout(run(sandbox, KERNEL)), runtime)
            out = stdout(run(sandbox, PROBE, timeout=30))
            assert _reaches(out) == expected, f"networkPolicy {policy}: {out!r}"
        # the policy changes live: OpenSandbox PUT .../networkpolicy, read back by GET
        open_one = made[0]
        with sandpool.client() as api:
            url = f"/v1/sandboxes/{open_one.id}/networkpolicy"
            assert api.put(url, json={"defaultAction": "deny"}).status_code == 200
            assert api.get(url).json()["mode"] == "deny_all"
            assert not _reaches(stdout(run(open_one, PROBE, timeout=30))), "denied live"
            assert api.put(url, json={}).json()["mode"] == "allow_all"
            assert _reaches(stdout(run(open_one, PROBE, timeout=30))), "allowed again"
        e2b_closed = E2bSandbox.create(RUNTIMES[runtime], timeout=120, allow_internet_access=False)
        e2b_open = E2bSandbox.create(RUNTIMES[runtime], timeout=120, allow_internet_access=False,
                                     network={"allow_out": [outside]})
        try:
            for sbx, expected in ((e2b_closed, False), (e2b_open, True)):
                assert_runtime(sbx.commands.run(KERNEL, timeout=30).stdout, runtime)
                out = sbx.commands.run(PROBE, timeout=30).stdout
                assert _reaches(out) == expected, f"e2b {sbx.sandbox_id}: {out!r}"
            # E2B update_network replaces the rules live (what it leaves out is cleared)
            e2b_open.update_network({"deny_out": [f"{outside}/32"]})
            assert not _reaches(e2b_open.commands.run(PROBE, timeout=30).stdout), "e2b: denied live"
            e2b_closed.update_network({})
            assert _reaches(e2b_closed.commands.run(PROBE, timeout=30).stdout), "e2b: cleared, open"
        finally:
            _swallow(e2b_closed.kill)
            _swallow(e2b_open.kill)
        print(f"\negress policies ({runtime}): 5 sandboxes, 10 probes held in {time.monotonic() - started:.1f}s")
    finally:
        for sandbox in made:
            _swallow(sandbox.kill)


def test_unparseable_egress_targets_are_refused_naming_the_rule(sandpool: Sandpool):
    # domain targets are enforced (test_os_domain_egress.py); what is no
    # address, CIDR or domain name is refused
    policy = NetworkPolicy(default_action="deny", egress=[NetworkRule(action="allow", target="pypi..org")])
    with pytest.raises(SandboxApiException) as refused:
        create(sandpool, network_policy=policy)
    assert refused.value.status_code == 400, refused.value
    assert "networkPolicy.egress[0].target" in str(refused.value), refused.value


# ------------------------------------------------------------------ a pool claim's limits


def test_a_pool_claims_memory_limit_holds_on_the_warm_sandbox(sandpool: Sandpool):
    """``resourceLimits`` of a pool claim are set on the warm sandbox it
    takes: under 256Mi a 384 MiB allocation is killed, under the SDK's
    default 2Gi the same allocation runs (control)."""
    small, big = create(sandpool, resource={"cpu": "1", "memory": "256Mi"}), create(sandpool, resource={"cpu": "1", "memory": "2Gi"})
    try:
        alloc = "dd if=/dev/zero of=/dev/null bs=384M count=1 2>/dev/null; echo rc=$?"
        assert stdout(run(big, alloc)).strip() == "rc=0", "control: 2Gi holds 384 MiB"
        assert stdout(run(small, alloc)).strip() == "rc=137", "256Mi: the allocation is OOM-killed"
        assert stdout(run(small, "echo alive")).strip() == "alive", "the sandbox itself lives on"
    finally:
        _swallow(small.kill)
        _swallow(big.kill)
