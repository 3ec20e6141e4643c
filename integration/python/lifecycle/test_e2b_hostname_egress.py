"""E2B ``network.allowOut`` hostnames on the real platform, with the real
e2b SDK: a hostname (with ``ALL_TRAFFIC`` denied, as E2B requires) is
resolved by the node's DNS proxy (asking this test's fake resolver, as in
``test_os_domain_egress.py``) and the addresses it resolved to are reachable
on TCP 80 only of the listeners here (E2B's proxy matches hostnames on 80
and 443 only), never when they are private; other names get NXDOMAIN.
E2B's validation answers 400 with its own messages, at create and on
``update_network``, which also changes the hostnames live.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from e2b import ALL_TRAFFIC, Sandbox, SandboxException

import sandpool_platform
from sandpool_platform import POOL_NAME, Sandpool
from test_os_domain_egress import FakeResolver

OUTSIDE = "spe2bnet"  # a network namespace of this test
HOST_SIDE, ALLOWED, OTHER, PRIVATE = "198.18.80.1", "198.18.80.2", "198.18.80.3", "10.250.81.2"
OTHER_PORT = 18083
ZONE = {"example.test": ALLOWED, "other.test": OTHER, "inside.test": PRIVATE}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def resolver():
    r = FakeResolver(ZONE)
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


def _host_reaches(addr: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{addr}:{port}/", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """HTTP on port 80 and on OTHER_PORT at every zone address, in a network
    namespace linked to the host by a veth pair."""
    subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)
    _ip("netns", "add", OUTSIDE)
    _ip("link", "add", f"{OUTSIDE}h", "type", "veth", "peer", "name", f"{OUTSIDE}n")
    _ip("link", "set", f"{OUTSIDE}n", "netns", OUTSIDE)
    _ip("addr", "add", f"{HOST_SIDE}/29", "dev", f"{OUTSIDE}h")
    _ip("link", "set", f"{OUTSIDE}h", "up")
    _ip("route", "add", f"{PRIVATE}/32", "dev", f"{OUTSIDE}h")
    for addr in (ALLOWED, OTHER):
        _ip("-n", OUTSIDE, "addr", "add", f"{addr}/29", "dev", f"{OUTSIDE}n")
    _ip("-n", OUTSIDE, "addr", "add", f"{PRIVATE}/32", "dev", f"{OUTSIDE}n")
    _ip("-n", OUTSIDE, "link", "set", f"{OUTSIDE}n", "up")
    _ip("-n", OUTSIDE, "route", "add", "default", "via", HOST_SIDE)
    www = str(tmp_path_factory.mktemp("e2b-www"))  # serves an empty dir
    servers = [
        subprocess.Popen(
            ["ip", "netns", "exec", OUTSIDE, sys.executable, "-m", "http.server", str(port), "--bind", "0.0.0.0",
             "--directory", www],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for port in (80, OTHER_PORT)
    ]
    try:
        deadline = time.monotonic() + 20
        while not all(_host_reaches(a, p) for a in (ALLOWED, OTHER, PRIVATE) for p in (80, OTHER_PORT)):
            assert time.monotonic() < deadline, "the outside listeners did not come up"
            time.sleep(0.2)
        yield
    finally:
        for s in servers:
            s.kill()
            s.wait(timeout=10)
        subprocess.run(["ip", "link", "del", f"{OUTSIDE}h"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)


def _run(sbx: Sandbox, cmd: str) -> str:
    r = sbx.commands.run(f"{cmd} 2>&1; true", timeout=30)
    return r.stdout + r.stderr


def _reaches(sbx: Sandbox, addr: str, port: int) -> bool:
    return "HTTP/1.0 200" in _run(sbx, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} {port}")


def _lookup(sbx: Sandbox, name: str) -> str:
    # any server: the sandbox's port 53 goes to the node's DNS proxy
    return _run(sbx, f"nslookup {name} 192.0.2.53")


def _refused(message: str, **create) -> None:
    with pytest.raises(SandboxException) as e:
        Sandbox.create(POOL_NAME, timeout=120, **create).kill()
    assert str(e.value) == message, e.value


def test_allowed_hostnames_reach_their_public_addresses_on_port_80_only(e2b_env: Sandpool, resolver, outside):
    sbx = Sandbox.create(POOL_NAME, timeout=120,
                         network={"allow_out": ["example.test", "inside.test"], "deny_out": [ALL_TRAFFIC]})
    try:
        assert not _reaches(sbx, ALLOWED, 80), "not resolved yet: denied"
        out = _lookup(sbx, "example.test")
        assert ALLOWED in out, out
        assert _reaches(sbx, ALLOWED, 80), "resolved through the proxy: port 80 allowed"
        assert not _reaches(sbx, ALLOWED, OTHER_PORT), "another port: by IP only, denied"
        out = _lookup(sbx, "other.test")
        assert "NXDOMAIN" in out.upper() and OTHER not in out, out
        assert "other.test" not in resolver.asked, "a name not allowed never reaches the resolver"
        assert not _reaches(sbx, OTHER, 80)
        out = _lookup(sbx, "inside.test")
        assert PRIVATE in out, out
        assert not _reaches(sbx, PRIVATE, 80), "a private address of an allowed name: refused, as E2B"
        with e2b_env.client(api_key=None) as api:
            got = api.get(f"/sandboxes/{sbx.sandbox_id}", headers={"X-API-Key": e2b_env.api_key}).json()["network"]
        assert got["allowOut"] == ["example.test", "inside.test"], got
        assert got["denyOut"] == [ALL_TRAFFIC], got

        # update_network: E2B's checks, then the hostnames change live
        with pytest.raises(SandboxException) as e:
            sbx.update_network({"deny_out": ["example.test"]})
        assert str(e.value) == "400: invalid denied CIDR example.test", e.value
        sbx.update_network({"allow_out": ["other.test"], "deny_out": [ALL_TRAFFIC]})
        assert not _reaches(sbx, ALLOWED, 80), "the old name's address is denied at once"
        assert "NXDOMAIN" in _lookup(sbx, "example.test").upper()
        assert OTHER in _lookup(sbx, "other.test")
        assert _reaches(sbx, OTHER, 80), "the new name, live"
        assert not _reaches(sbx, OTHER, OTHER_PORT)
        sbx.update_network({})
        assert _reaches(sbx, OTHER, OTHER_PORT), "control: cleared, the other port is reachable"
    finally:
        sbx.kill()


def test_hostnames_are_refused_as_e2b_refuses_them(e2b_env: Sandpool):
    _refused("400: invalid denied CIDR example.test", network={"deny_out": ["example.test"]})
    _refused(
        "400: When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny out to "
        "block all other traffic.",
        network={"allow_out": ["example.test"], "deny_out": ["10.0.0.0/8"]},
    )
    _refused("400: invalid allowed address 0.0.0.0", network={"allow_out": ["0.0.0.0"]})
