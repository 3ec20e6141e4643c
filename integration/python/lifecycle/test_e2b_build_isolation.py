"""E2B template builds' ``RUN`` steps run isolated like a sandbox, through
the real e2b SDK (2.63) and buildah.

- **Network:** a step gets its own network namespace on the sandbox
  network. It reaches a listener outside the node (a network namespace of
  this test, linked to the host by a veth pair, as the sandbox egress tests
  do), and it does not reach a link-local address (the cloud metadata
  service's range; here a second address of that listener) nor a port of
  the host itself; its namespace is gone after the build.
- **Pids:** a step spawning 2000 processes stops at the build's pids limit
  and the build fails, leaving nothing behind on the host.
- **User namespace:** a step's uid 0 is host uid 100000 (its
  ``/proc/self/uid_map``), host root's files are nobody's there and it
  cannot change the host's ``/dev/null``; the image keeps the ownership the
  steps gave inside (a ``COPY`` with a user, files a ``RUN`` made or
  chowned), seen from a sandbox of the built template; a base whose layer
  has no ``./`` entry still gives the namespace's root a writable ``/``.

Without the tools the tests skip, unless CI=true or
SANDPOOL_REQUIRE_CONTAINERD=1, where a missing tool fails them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, Template

from loopback_registry import busybox_base_registry, push
from sandpool_platform import SUBNET, Sandpool

OUTSIDE = "spbldout"  # the test's network namespace, outside the sandbox network
OUTSIDE_HOST, OUTSIDE_ADDR, LINK_LOCAL, PORT = "10.250.78.1", "10.250.78.2", "169.254.78.2", 18081
BRIDGE_IP = SUBNET.rsplit(".", 1)[0] + ".1"  # the host's address on the sandbox bridge
SLEEP_MARK = "3217"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a loopback registry holding ``base:1`` (busybox)."""
    yield from busybox_base_registry("sandpool-bldiso-")


def _get(url: str) -> str | None:
    try:
        r = httpx.get(url, timeout=2.0)
        return r.text if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """An HTTP listener in its own network namespace serving ``hello.txt`` on
    ``OUTSIDE_ADDR`` and on the link-local ``LINK_LOCAL`` (the host routes
    both to it)."""
    www = tmp_path_factory.mktemp("outside-www")
    (www / "hello.txt").write_text("hello from outside\n")
    subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)
    _ip("netns", "add", OUTSIDE)
    _ip("link", "add", f"{OUTSIDE}h", "type", "veth", "peer", "name", f"{OUTSIDE}n")
    _ip("link", "set", f"{OUTSIDE}n", "netns", OUTSIDE)
    _ip("addr", "add", f"{OUTSIDE_HOST}/30", "dev", f"{OUTSIDE}h")
    _ip("link", "set", f"{OUTSIDE}h", "up")
    _ip("route", "add", f"{LINK_LOCAL}/32", "dev", f"{OUTSIDE}h")
    _ip("-n", OUTSIDE, "addr", "add", f"{OUTSIDE_ADDR}/30", "dev", f"{OUTSIDE}n")
    _ip("-n", OUTSIDE, "addr", "add", f"{LINK_LOCAL}/32", "dev", f"{OUTSIDE}n")
    _ip("-n", OUTSIDE, "link", "set", f"{OUTSIDE}n", "up")
    _ip("-n", OUTSIDE, "route", "add", "default", "via", OUTSIDE_HOST)
    server = subprocess.Popen(
        ["ip", "netns", "exec", OUTSIDE, sys.executable, "-m", "http.server", str(PORT), "--bind", "0.0.0.0",
         "--directory", str(www)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if _get(f"http://{OUTSIDE_ADDR}:{PORT}/hello.txt"):
                break
            threading.Event().wait(0.1)
        yield
    finally:
        server.kill()
        server.wait(timeout=10)
        subprocess.run(["ip", "link", "del", f"{OUTSIDE}h"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", OUTSIDE], capture_output=True, timeout=10)


@pytest.fixture
def host_listener():
    """An HTTP listener of the host on all its addresses: its port."""
    www = Path(tempfile.mkdtemp(prefix="sandpool-bldhost-"))
    (www / "hello.txt").write_text("hello from the host\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(www, ignore_errors=True)


def _fetch(addr: str, port: int) -> str:
    """A shell line GETting /hello.txt from ``addr:port`` with busybox's nc
    (its exit status: whether it connected)."""
    return f"printf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {addr} {port}"


def _build(registry: str, name: str, cmd: str) -> tuple[list[str], Exception | None]:
    """Build template ``name`` from base:1 with one RUN ``cmd``: its log
    lines, and the error if it failed."""
    logs: list[str] = []
    template = Template().from_image(f"{registry}/base:1").run_cmd(cmd)
    try:
        Template.build(template, name, cpu_count=1, memory_mb=256,
                       on_build_logs=lambda e: logs.append(e.message))
    except Exception as e:  # the SDK's build error
        return logs, e
    return logs, None


def _leftovers(sandpool: Sandpool) -> list[str]:
    """Build network namespaces and addresses still held after builds."""
    data = sandpool.base_dir / "data"
    netns = data / "builds" / "netns"
    left = [str(p) for p in netns.iterdir()] if netns.is_dir() else []
    ipam = data / "agent" / "cni-ipam" / "sandpool"
    if ipam.is_dir():
        left += [f"IP {p.name}" for p in ipam.iterdir() if p.is_file() and "build-" in p.read_text(errors="replace")]
    return left


def test_build_run_steps_reach_the_network_a_sandbox_reaches(e2b_env: Sandpool, registry: str, outside):
    assert _get(f"http://{OUTSIDE_ADDR}:{PORT}/hello.txt") == "hello from outside\n", "control: the host reaches it"
    ipv6 = Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").exists()
    logs, err = _build(registry, "net-ok", f"{_fetch(OUTSIDE_ADDR, PORT)} 2>&1; "
                                            "echo ipv6off=$(cat /proc/sys/net/ipv6/conf/all/disable_ipv6)")
    assert err is None, f"{err}\n" + "\n".join(logs[-20:])
    assert any("hello from outside" in line for line in logs), "\n".join(logs)
    if ipv6:
        assert any("ipv6off=1" in line for line in logs), "\n".join(logs)
    assert _leftovers(e2b_env) == []


@pytest.mark.parametrize("target", ["link-local", "host-port"])
def test_build_run_steps_do_not_reach_what_a_sandbox_may_not(e2b_env: Sandpool, registry: str, outside,
                                                             host_listener: int, target: str):
    addr, port = {"link-local": (LINK_LOCAL, PORT), "host-port": (BRIDGE_IP, host_listener)}[target]
    url = f"http://{addr}:{port}/hello.txt"
    assert _get(url), f"control: the host reaches {url}"
    logs, err = _build(registry, f"net-{target}", _fetch(addr, port))
    assert err is not None, f"a build step reached {url}: " + "\n".join(logs[-20:])
    assert "step" in str(err), err
    assert not any("hello from" in line for line in logs), logs
    assert _leftovers(e2b_env) == []


def _marked_sleepers() -> list[int]:
    """Host processes running ``sleep SLEEP_MARK``."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", SLEEP_MARK.encode()]:
                found.append(int(p.name))
    return found


def test_a_fork_bomb_in_a_build_step_stops_at_the_pids_limit(e2b_env: Sandpool, registry: str):
    logs, err = _build(registry, "forky",
                       f"i=0; while [ $i -lt 2000 ]; do sleep {SLEEP_MARK} & i=$((i+1)); done; echo spawned $i")
    assert err is not None, "2000 processes in one build step: " + "\n".join(logs[-20:])
    assert not any("spawned 2000" in line for line in logs), logs
    assert any("fork" in line for line in logs), logs[-20:]
    assert _marked_sleepers() == []
    # the host and the builder are fine: a plain build afterwards succeeds
    logs, err = _build(registry, "after-forky", "echo still building")
    assert err is None, f"{err}\n" + "\n".join(logs[-20:])


USERNS_PROBE = (
    'echo "uid_map: $(cat /proc/self/uid_map)"; '
    'echo "host root file owner: $(stat -c %u /proc/sys/kernel/ostype)"; '
    # runc binds the host's /dev/null into a user namespace (without one it
    # makes the container its own node): host root's, so this is refused
    "if touch -c -d '2001-01-01 00:00' /dev/null 2>/dev/null; then echo dev-null: changed; "
    "else echo dev-null: refused; fi"
)


def test_build_steps_run_in_a_user_namespace_and_the_image_keeps_their_ownership(
        e2b_env: Sandpool, registry: str, tmp_path: Path):
    (tmp_path / "owned.txt").write_text("owned\n")
    (tmp_path / "plain.txt").write_text("plain\n")
    template = (
        Template(file_context_path=str(tmp_path))
        .from_image(f"{registry}/base:1")
        .copy("plain.txt", "/app/")
        .copy("owned.txt", "/app/", user="1000:1000")
        .run_cmd(USERNS_PROBE)
        .run_cmd("echo made > /made.txt && mkdir /data && chown 1234:1234 /data && chmod 0777 /data")
        .run_cmd("echo by-user > /data/by-user.txt", user="1000")
    )
    logs: list[str] = []
    try:
        Template.build(template, "userns", cpu_count=1, memory_mb=256,
                       on_build_logs=lambda e: logs.append(e.message))
    except Exception as e:  # the SDK's build error
        pytest.fail(f"{e}\n" + "\n".join(logs[-20:]))
    text = "\n".join(logs)
    m = re.search(r"uid_map:\s*(\d+)\s+(\d+)\s+(\d+)", text)
    assert m, text
    assert m.groups() == ("0", "100000", "65536"), f"uid 0 in a build step is host uid 0: {m.group(0)}"
    assert "host root file owner: 65534" in text, text
    assert "dev-null: refused" in text, text
    assert _leftovers(e2b_env) == []

    sbx = Sandbox.create(template="userns", timeout=120)
    try:
        r = sbx.commands.run("stat -c '%u:%g %n' /app /app/owned.txt /app/plain.txt /made.txt /data "
                             "/data/by-user.txt; cat /data/by-user.txt", cwd="/")
        assert r.stdout.splitlines() == [
            "0:0 /app",
            "1000:1000 /app/owned.txt",
            "0:0 /app/plain.txt",
            "0:0 /made.txt",
            "1234:1234 /data",
            "1000:0 /data/by-user.txt",
            "by-user",
        ], r
    finally:
        sbx.kill()


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _layout_without_a_root_entry(work: Path) -> Path:
    """An OCI layout (tag ``base``) of one layer holding ``bin/busybox`` and
    ``bin/sh`` but no ``./`` entry, as some images' first layers are."""
    layout = work / "noroot"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        d = tarfile.TarInfo("bin")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        tar.add("/usr/bin/busybox", "bin/busybox")
        sh = tarfile.TarInfo("bin/sh")
        sh.type, sh.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(sh)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    layer, layer_size = _blob(layout, gzip.compress(raw.getvalue()))
    config, config_size = _blob(layout, json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode())
    manifest, manifest_size = _blob(layout, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer,
                    "size": layer_size}]}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "base"}}]}))
    return layout


def test_a_base_without_a_root_entry_still_lets_run_steps_write_to_the_root(
        e2b_env: Sandpool, registry: str, tmp_path: Path):
    # its root directory would stay host root's, which the user namespace's
    # root cannot write to; the builder gives it to the namespace's root
    push(_layout_without_a_root_entry(tmp_path), "base", f"{registry}/noroot:1")
    logs: list[str] = []
    template = Template().from_image(f"{registry}/noroot:1").run_cmd("echo at-root > /at-root.txt")
    try:
        Template.build(template, "noroot", cpu_count=1, memory_mb=256,
                       on_build_logs=lambda e: logs.append(e.message))
    except Exception as e:  # the SDK's build error
        pytest.fail(f"{e}\n" + "\n".join(logs[-20:]))
