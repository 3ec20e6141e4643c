"""E2B ``network.rules`` transforms through E2B's own SDK (e2b 2.63.0,
unchanged), issue 18: a sandbox's plain HTTP request to a ruled domain
leaves with the rule's headers (an existing one replaced), set by the node's
credential proxy outside the sandbox, which never sees the value; a request
to another host is left as it was. The listener stands in for upstream's
``httpbin`` template: it lives in a network namespace of this test and
records what it received on the host side only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2b import ALL_TRAFFIC, Sandbox
from e2b.exceptions import SandboxException

from netns_listener import recording_listener
from sandpool_platform import POOL_NAME, Sandpool

HEADER, VALUE = "X-Test-Token", "e2b-transform-value-123"
HOST = "httpbin.rules.test"
OUTSIDE = "spe2brul"  # a network namespace of this test
OUTSIDE_HOST, OUTSIDE_ADDR = "10.250.82.1", "10.250.82.2"


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The recording listener on port 80 of its own network namespace."""
    record = tmp_path_factory.mktemp("e2brules") / "requests.log"
    with recording_listener(record, OUTSIDE, OUTSIDE_HOST, OUTSIDE_ADDR, "{self.headers.get('Host')} {self.headers.get_all('X-Test-Token')}"):
        yield record


def _get(sbx: Sandbox, host: str, path: str) -> str:
    """GET ``path`` of the listener with ``Host: host`` and a header of the
    rule's name already set, then the sandbox's environment."""
    cmd = (f"printf 'GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\n{HEADER}: from-inside\\r\\nConnection: close\\r\\n\\r\\n'"
           f" | nc -w 5 {OUTSIDE_ADDR} 80 2>&1; env; true")
    return sbx.commands.run(cmd, timeout=30).stdout


def test_a_rules_headers_are_set_on_the_way_out(e2b_env: Sandpool, outside: Path):
    network = {"allow_out": [HOST, OUTSIDE_ADDR], "deny_out": [ALL_TRAFFIC],
               "rules": {HOST: [{"transform": {"headers": {HEADER: VALUE}}}]}}
    sbx = Sandbox.create(POOL_NAME, timeout=120, network=network)
    try:
        inside = _get(sbx, HOST, "/headers") + _get(sbx, "other.rules.test", "/other")
    finally:
        sbx.kill()
    assert inside.count("200 OK") >= 2, (inside, outside.read_text())
    assert VALUE not in inside, "the sandbox never sees the value"
    recorded = outside.read_text().splitlines()
    assert f"{HOST} ['{VALUE}']" in recorded, "set, the sandbox's own replaced: %s" % recorded
    assert "other.rules.test ['from-inside']" in recorded, recorded


def test_a_rules_domain_must_be_allowed_by_name(e2b_env: Sandpool):
    with pytest.raises(SandboxException, match="must also be in network.allowOut"):
        Sandbox.create(POOL_NAME, timeout=30,
                       network={"rules": {HOST: [{"transform": {"headers": {HEADER: VALUE}}}]}})
