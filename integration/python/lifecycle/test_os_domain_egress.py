"""OpenSandbox ``networkPolicy`` with domain targets, on the real platform:
the node's DNS proxy answers an allowed name (asking the resolver
``sandpool serve --dns-upstream`` names, here a fake one of this test) and
lets the sandbox reach the address it resolved to, and nothing else; a
denied name gets NXDOMAIN without the resolver being asked. The ``/policy``
API on port 18080 then allows a second name live and reports ``dns+nft``.
Two HTTP listeners stand in a network namespace of this test, outside the
sandbox network.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import timedelta

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.sandboxes import NetworkPolicy, NetworkRule

import sandpool_platform
from opensandbox.exceptions import SandboxApiException

from sandpool_platform import CK_POOL_NAME, POOL_IMAGE, POOL_NAME, Sandpool

OUTSIDE = "spdnsgw"  # a network namespace of this test
OUTSIDE_HOST, ALLOWED_ADDR, OTHER_ADDR, PORT = "10.250.80.1", "10.250.80.2", "10.250.80.3", 18082
ZONE = {"example.test": ALLOWED_ADDR, "other.test": OTHER_ADDR}
AUTH = "OPENSANDBOX-EGRESS-AUTH"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class FakeResolver:
    """A UDP DNS server on loopback answering A queries for ``zone``
    (default ``ZONE``; TTL 60), NXDOMAIN otherwise; it records the names it
    was asked."""

    def __init__(self, zone: dict[str, str] | None = None) -> None:
        self.zone = ZONE if zone is None else zone
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.asked: list[str] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _question(msg: bytes) -> tuple[str, int, int]:
        labels, i = [], 12
        while msg[i]:
            labels.append(msg[i + 1:i + 1 + msg[i]].decode("ascii").lower())
            i += 1 + msg[i]
        qtype = struct.unpack("!H", msg[i + 1:i + 3])[0]
        return ".".join(labels), qtype, i + 5

    def _answer(self, msg: bytes) -> bytes:
        name, qtype, end = self._question(msg)
        self.asked.append(name)
        addr = self.zone.get(name)
        rcode = 0 if addr else 3
        answers = b""
        if addr and qtype == 1:
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr)
        flags = 0x8180 | rcode  # response, recursion desired and available
        header = msg[:2] + struct.pack("!HHHHH", flags, 1, 1 if answers else 0, 0, 0)
        return header + msg[12:end] + answers

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                msg, peer = self.sock.recvfrom(1500)
            except OSError:
                continue
            try:
                self.sock.sendto(self._answer(msg), peer)
            except (IndexError, UnicodeDecodeError, struct.error):
                continue

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def resolver():
    r = FakeResolver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def sandpool(request: pytest.FixtureRequest, resolver: FakeResolver) -> Sandpool:
    """This module's platform, its DNS proxy asking the fake resolver."""
    binary, runtime_bin = sandpool_platform.check_prerequisites()
    platform = sandpool_platform.start(binary, runtime_bin, extra_args=["--dns-upstream", resolver.addr])
    failures_before = request.session.testsfailed
    try:
        yield platform
    finally:
        sandpool_platform.stop(platform, keep_log=request.session.testsfailed > failures_before)


def _host_reaches(addr: str) -> bool:
    try:
        return httpx.get(f"http://{addr}:{PORT}/", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """HTTP on both zone addresses, in a network namespace linked to the
    host by a veth pair."""
    subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)
    _ip("netns", "add", OUTSIDE)
    _ip("link", "add", f"{OUTSIDE}h", "type", "veth", "peer", "name", f"{OUTSIDE}n")
    _ip("link", "set", f"{OUTSIDE}n", "netns", OUTSIDE)
    _ip("addr", "add", f"{OUTSIDE_HOST}/29", "dev", f"{OUTSIDE}h")
    _ip("link", "set", f"{OUTSIDE}h", "up")
    for addr in (ALLOWED_ADDR, OTHER_ADDR):
        _ip("-n", OUTSIDE, "addr", "add", f"{addr}/29", "dev", f"{OUTSIDE}n")
    _ip("-n", OUTSIDE, "link", "set", f"{OUTSIDE}n", "up")
    _ip("-n", OUTSIDE, "route", "add", "default", "via", OUTSIDE_HOST)
    server = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE, sys.executable, "-m", "http.server", str(PORT), "--bind", "0.0.0.0",
         "--directory", str(tmp_path_factory.mktemp("dns-www"))],  # serves an empty dir
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not (_host_reaches(ALLOWED_ADDR) and _host_reaches(OTHER_ADDR)):
            assert time.monotonic() < deadline, "the outside listeners did not come up"
            time.sleep(0.2)
        yield
    finally:
        server.kill()
        server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", f"{OUTSIDE}h"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)


def _run(sandbox: SandboxSync, cmd: str) -> str:
    execution = sandbox.commands.run(cmd, opts=RunCommandOpts(timeout=timedelta(seconds=30)))
    logs = [*execution.logs.stdout, *execution.logs.stderr]
    return "".join(m.text if m.text.endswith("\n") else m.text + "\n" for m in logs)


def _reaches(sandbox: SandboxSync, addr: str) -> bool:
    out = _run(sandbox, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} {PORT} 2>&1; true")
    return "HTTP/1.0 200" in out


def _lookup(sandbox: SandboxSync, name: str) -> str:
    # any server: the sandbox's port 53 goes to the node's DNS proxy
    return _run(sandbox, f"nslookup {name} 192.0.2.53 2>&1; true")


def test_domain_rules_allow_what_the_allowed_name_resolves_to(sandpool: Sandpool, resolver: FakeResolver, outside,
                                                               sandboxes):
    sandbox = SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(),
        extensions={"poolRef": POOL_NAME},
        timeout=timedelta(minutes=5),
        ready_timeout=timedelta(seconds=90),
        resource={"cpu": "1", "memory": "512Mi"},
        network_policy=NetworkPolicy(default_action="deny",
                                     egress=[NetworkRule(action="allow", target="example.test")]),
    )
    sandboxes.append(sandbox)
    assert not _reaches(sandbox, ALLOWED_ADDR), "not resolved yet: denied"
    out = _lookup(sandbox, "example.test")
    assert ALLOWED_ADDR in out, out
    assert _reaches(sandbox, ALLOWED_ADDR), "resolved through the proxy: allowed"
    assert not _reaches(sandbox, OTHER_ADDR), "another address stays denied"
    out = _lookup(sandbox, "other.test")
    assert "NXDOMAIN" in out.upper() and OTHER_ADDR not in out, out
    assert "other.test" not in resolver.asked, "a denied name never reaches the resolver"
    assert "example.test" in resolver.asked

    # the /policy API on port 18080 allows a second name live
    endpoint = sandbox.get_endpoint(18080)
    token = endpoint.headers.get(AUTH)
    base = f"http://{endpoint.endpoint}/policy"
    with httpx.Client(timeout=30) as http:
        got = http.get(base, headers={AUTH: token}).json()
        assert (got["mode"], got["enforcementMode"]) == ("enforcing", "dns+nft"), got
        bad = http.patch(base, json=[{"action": "allow", "target": "other..test"}], headers={AUTH: token})
        assert bad.status_code == 400 and "target" in bad.text, bad.text
        patched = http.patch(base, json=[{"action": "allow", "target": "*.test"}], headers={AUTH: token})
        assert patched.status_code == 200, patched.text
        assert patched.json()["enforcementMode"] == "dns+nft", patched.text
    out = _lookup(sandbox, "other.test")
    assert OTHER_ADDR in out, out
    assert _reaches(sandbox, OTHER_ADDR), "allowed live by the wildcard"


def _listed(sandpool: Sandpool) -> set[str]:
    with sandpool.client() as api:
        return {item["id"] for item in api.get("/v1/sandboxes").json().get("items") or []}


def test_a_domain_rule_on_a_network_less_sandbox_is_refused_naming_why(sandpool: Sandpool, sandboxes):
    before = _listed(sandpool)
    policy = NetworkPolicy(default_action="deny", egress=[NetworkRule(action="allow", target="example.test")])
    with pytest.raises(SandboxApiException) as refused:
        sandboxes.append(SandboxSync.create(
            "python", connection_config=sandpool.config(), extensions={"poolRef": CK_POOL_NAME},
            timeout=timedelta(minutes=5), ready_timeout=timedelta(seconds=90),
            resource={"cpu": "1", "memory": "512Mi"}, network_policy=policy,
        ))
    assert refused.value.status_code == 400, refused.value
    assert "no network" in str(refused.value), refused.value
    assert _listed(sandpool) == before, "nothing is left of the refused create"
