"""The OpenSandbox egress sidecar's ``/policy`` API on port 18080, as the
SDK reaches it: ``get_endpoint(18080)`` answers with a gateway route and the
``OPENSANDBOX-EGRESS-AUTH`` header, and the SDK's egress adapter (the one it
uses for sandboxes whose origin is not ``template``) reads and changes the
live policy through it. A policy change is enforced at once: a listener in
another network namespace on this machine becomes reachable and unreachable
again. Without an API key or the sandbox's token nothing changes, and the
token is nowhere inside the sandbox.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.sandboxes import NetworkPolicy, NetworkRule
from opensandbox.sync.adapters.egress_adapter import EgressAdapterSync

from sandpool_platform import POOL_IMAGE, POOL_NAME, Sandpool

EGRESS_PORT = 18080
AUTH = "OPENSANDBOX-EGRESS-AUTH"
OUTSIDE = "spegrapi"  # a network namespace of this test, outside the sandbox network
OUTSIDE_HOST, OUTSIDE_ADDR, OUTSIDE_PORT = "10.250.78.1", "10.250.78.2", 18081
PROBE = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {OUTSIDE_ADDR} {OUTSIDE_PORT} 2>&1; true"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _host_reaches_outside() -> bool:
    try:
        return httpx.get(f"http://{OUTSIDE_ADDR}:{OUTSIDE_PORT}/", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


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
         "--directory", str(tmp_path_factory.mktemp("outside-www"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _host_reaches_outside():
            assert time.monotonic() < deadline, "the outside listener did not come up"
            time.sleep(0.2)
        yield OUTSIDE_ADDR
    finally:
        server.kill()
        server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", f"{OUTSIDE}h"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)


def _create(sandpool: Sandpool, tracker: list, **options) -> SandboxSync:
    sandbox = SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(),
        extensions={"poolRef": POOL_NAME},
        timeout=timedelta(minutes=5),
        ready_timeout=timedelta(seconds=90),
        resource={"cpu": "1", "memory": "512Mi"},
        **options,
    )
    tracker.append(sandbox)
    return sandbox


def _run(sandbox: SandboxSync, cmd: str) -> str:
    execution = sandbox.commands.run(cmd, opts=RunCommandOpts(timeout=timedelta(seconds=30)))
    return "".join(m.text if m.text == "\n" else m.text + "\n" for m in execution.logs.stdout)


def _reaches(sandbox: SandboxSync) -> bool:
    return "HTTP/1.0 200" in _run(sandbox, PROBE)


def _rules(policy) -> list[tuple[str, str]]:
    return [(r.action, r.target) for r in policy.egress or []]


def test_policy_api_on_port_18080_changes_the_live_policy(sandpool: Sandpool, sandboxes, outside: str):
    sandbox = _create(sandpool, sandboxes, network_policy=NetworkPolicy(
        default_action="deny", egress=[NetworkRule(action="deny", target="10.250.79.0/24")]))
    assert _host_reaches_outside(), "control: the host reaches the listener"
    assert not _reaches(sandbox), "denied by default"

    endpoint = sandbox.get_endpoint(EGRESS_PORT)
    assert endpoint.endpoint == f"{sandpool.domain}/v1/sandboxes/{sandbox.id}/proxy/{EGRESS_PORT}", endpoint
    token = endpoint.headers.get(AUTH)
    assert token and len(token) == 64, endpoint.headers
    # the SDK's own egress adapter, as it is used for sidecar sandboxes
    egress = EgressAdapterSync(sandpool.config(), endpoint)
    got = egress.get_policy()
    assert (got.default_action, _rules(got)) == ("deny", [("deny", "10.250.79.0/24")])

    egress.patch_rules([NetworkRule(action="allow", target=f"{outside}/32")])
    got = egress.get_policy()
    # upstream's merge: the patch's rules first, then the older rules
    assert _rules(got) == [("allow", f"{outside}/32"), ("deny", "10.250.79.0/24")]
    assert _reaches(sandbox), "allowed live through /policy"

    egress.delete_rules([f"{outside}/32"])
    assert _rules(egress.get_policy()) == [("deny", "10.250.79.0/24")]
    assert not _reaches(sandbox), "denied again"

    base = f"http://{endpoint.endpoint}/policy"
    with httpx.Client(timeout=30) as http:
        # no key, a wrong token, another sandbox's route: refused, nothing changes
        assert http.post(base, json={"defaultAction": "allow"}).status_code == 401
        assert http.post(base, json={"defaultAction": "allow"}, headers={AUTH: "0" * 64}).status_code == 401
        other = _create(sandpool, sandboxes)
        other_url = f"http://{sandpool.domain}/v1/sandboxes/{other.id}/proxy/{EGRESS_PORT}/policy"
        assert http.patch(other_url, json=[{"action": "allow", "target": "10.0.0.1"}],
                          headers={AUTH: token}).status_code == 401
        assert not _reaches(sandbox)
        # the sidecar's shapes: replace, an empty patch refused, a reset to deny-all
        replaced = http.post(base, json={"defaultAction": "allow"}, headers={AUTH: token})
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["mode"] == "allow_all"
        assert _reaches(sandbox), "allow-all replaced live"
        assert http.patch(base, content=b"[]", headers={AUTH: token}).status_code == 400
        reset = http.post(base, content=b"", headers={AUTH: token}).json()
        assert (reset["mode"], reset["reason"]) == ("deny_all", "policy reset to default deny-all")
        assert not _reaches(sandbox), "reset to deny-all live"
        nothing = http.request("DELETE", base, json=["10.9.9.9"], headers={AUTH: token}).json()
        assert nothing["reason"] == "no matching targets found"
    # the lifecycle API reads back what /policy set
    with sandpool.client() as api:
        assert api.get(f"/v1/sandboxes/{sandbox.id}/networkpolicy").json()["mode"] == "deny_all"
    # the token is not the sandbox's: no process in it can read it
    # (the pattern is written in two halves, so no command line holds it whole)
    half = len(token) // 2
    found = _run(sandbox, f"printf '%s%s\\n' {token[:half]} {token[half:]} > /tmp/.pat; "
                          "grep -rlF -f /tmp/.pat /proc/[0-9]*/environ /proc/[0-9]*/cmdline /etc 2>/dev/null; true")
    assert found.strip() == "", found


def test_policy_api_through_the_server_proxy_takes_the_api_key(sandpool: Sandpool, sandboxes):
    sandbox = _create(sandpool, sandboxes)
    config = sandpool.config(use_server_proxy=True)
    endpoint = SandboxSync.connect(sandbox.id, connection_config=config).get_endpoint(EGRESS_PORT)
    # the SDK sends the API key in proxy mode; the endpoint's token rides along
    egress = EgressAdapterSync(config, endpoint.model_copy(update={"headers": {}}))
    egress.patch_rules([NetworkRule(action="deny", target="10.250.80.0/24")])
    got = egress.get_policy()
    assert (got.default_action, _rules(got)) == ("allow", [("deny", "10.250.80.0/24")])
