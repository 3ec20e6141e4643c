"""A recording HTTP listener on port 80 of a network namespace the test
makes: what sandboxes' outbound requests look like once they left (headers a
node proxy set, ...), recorded on the host side only."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

# answers "ok" to every GET and appends one line per request to argv[1];
# LINE is the caller's f-string body over the handler (`self`)
_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
log = open(sys.argv[1], "a", buffering=1)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        log.write(f"LINE\\n")
        self.send_response(200); self.send_header("content-length", "3"); self.end_headers()
        self.wfile.write(b"ok\\n")
    def log_message(self, *a): pass
HTTPServer((sys.argv[2], 80), H).serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def recording_listener(record: Path, netns: str, host_addr: str, addr: str, line: str) -> Iterator[Path]:
    """Serve on ``addr``:80 in network namespace ``netns`` (a /30 veth pair,
    ``host_addr`` the host's end, the namespace's default route through it),
    appending ``line`` (an f-string body over the request handler ``self``)
    to ``record`` for each request; everything is removed on exit."""
    record.touch()
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
    _ip("netns", "add", netns)
    _ip("link", "add", f"{netns}h", "type", "veth", "peer", "name", f"{netns}n")
    _ip("link", "set", f"{netns}n", "netns", netns)
    _ip("addr", "add", f"{host_addr}/30", "dev", f"{netns}h")
    _ip("link", "set", f"{netns}h", "up")
    _ip("-n", netns, "addr", "add", f"{addr}/30", "dev", f"{netns}n")
    _ip("-n", netns, "link", "set", f"{netns}n", "up")
    _ip("-n", netns, "route", "add", "default", "via", host_addr)
    code = _SERVER.replace("LINE", line)
    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code, str(record), addr],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://{addr}/ready", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the outside listener did not come up"
            time.sleep(0.2)
        yield record
    finally:
        server.kill()
        server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", f"{netns}h"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10)
