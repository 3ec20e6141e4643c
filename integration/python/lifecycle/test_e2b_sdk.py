"""The real ``e2b`` (2.63.0) and ``e2b-code-interpreter`` (2.11.5) Python SDKs,
unchanged, against sandpool: the control plane (create from a template = a
sandpool pool, info, list with a metadata filter, set_timeout, pause/connect,
kill, errors), the data plane through sandpool's envd (commands with streamed
output, exit codes, background processes, files) and the code interpreter
(state persists between ``run_code`` calls), all routed by the gateway from
``E2b-Sandbox-Id``/``E2b-Sandbox-Port`` headers or ``{port}-{id}.{domain}``."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException

try:  # e2b >= 2.4x; the 2.37 SDK this file also runs under has no such class
    from e2b.exceptions import ServiceBusyException
except ImportError:  # pragma: no cover - older SDK
    ServiceBusyException = SandboxException

from e2b.sandbox.commands.command_handle import CommandExitException

from sandpool_platform import POOL_NAME, PY_POOL_NAME, Sandpool


def test_create_info_list_timeout_kill(e2b_env: Sandpool):
    suite = uuid.uuid4().hex
    sbx = Sandbox.create(POOL_NAME, metadata={"suite": suite}, envs={"A": "1"}, timeout=120)
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == POOL_NAME
        assert info.metadata == {"suite": suite}
        assert info.state.value == "running"
        first_end = info.end_at

        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": suite})).next_items()
        assert [s.sandbox_id for s in listed] == [sbx.sandbox_id]
        assert Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items() == []

        sbx.set_timeout(600)
        assert sbx.get_info().end_at > first_end
    finally:
        assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False, "a second kill finds nothing"
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def test_pause_and_connect_resumes(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        assert sbx.pause() is True
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "paused"
        assert Sandbox.pause(sbx.sandbox_id) is False, "already paused"
        again = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert again.sandbox_id == sbx.sandbox_id
        assert Sandbox.get_info(sbx.sandbox_id).state.value == "running"
    finally:
        sbx.kill()


def test_kruise_csi_volume_metadata_mounts_a_node_volume(e2b_env: Sandpool):
    """OpenKruise Agents' metadata keys: the named volume (a directory under
    the node agent's mount root) appears at the mount point; writes reach it."""
    volume = "vol-" + uuid.uuid4().hex[:8]
    host_dir = e2b_env.base_dir / "data" / "agent" / "volumes" / volume
    host_dir.mkdir(parents=True)
    (host_dir / "hello.txt").write_text("from the node\n")
    os.chown(host_dir, 61000, 61000)  # sandboxes run as `user` (uid 61000): its volume is its own
    meta = {"e2b.agents.kruise.io/csi-volume-name": volume, "e2b.agents.kruise.io/csi-mount-point": "/mnt/shared"}
    sbx = Sandbox.create(POOL_NAME, metadata=meta, timeout=120)
    try:
        assert sbx.commands.run("cat /mnt/shared/hello.txt").stdout == "from the node\n"
        sbx.commands.run("echo from-the-sandbox > /mnt/shared/out.txt")
        assert (host_dir / "out.txt").read_text() == "from-the-sandbox\n"
    finally:
        sbx.kill()
    assert (host_dir / "hello.txt").exists(), "the volume outlives the sandbox"
    # a volume the node does not have, and half of the pair, are refused
    with pytest.raises(SandboxException):
        Sandbox.create(POOL_NAME, metadata={**meta, "e2b.agents.kruise.io/csi-volume-name": "no-such-volume"}, timeout=60)
    with pytest.raises(SandboxException):
        Sandbox.create(POOL_NAME, metadata={"e2b.agents.kruise.io/csi-volume-name": volume}, timeout=60)


def test_kruise_image_metadata_upgrades_the_claimed_sandbox_in_place(e2b_env: Sandpool):
    """OpenKruise Agents' ``e2b.agents.kruise.io/image``: the warm busybox
    sandbox claimed from the pool restarts on the Python image before it is
    handed out; an unknown image is refused."""
    key = "e2b.agents.kruise.io/image"
    sbx = Sandbox.create(POOL_NAME, metadata={key: "python"}, timeout=120)
    try:
        assert sbx.commands.run("python3 -c 'print(6 * 7)'").stdout == "42\n"
        assert sbx.commands.run("cat /etc/debian_version").exit_code == 0, "the Debian-based image"
        assert Sandbox.get_info(sbx.sandbox_id).metadata[key] == "python"
    finally:
        sbx.kill()
    # an image that is not present is pulled first; with no registry reachable
    # (no internet here) that is "unavailable" (503), else "not found"
    with pytest.raises((SandboxException, ServiceBusyException)):
        Sandbox.create(POOL_NAME, metadata={key: "no-such-image:1"}, timeout=60)


def test_unknown_template_and_bad_key(e2b_env: Sandpool, monkeypatch):
    with pytest.raises(SandboxException):
        Sandbox.create("no-such-template", timeout=60)
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.create(POOL_NAME, timeout=60)
    with httpx.Client(base_url=e2b_env.url) as c:
        r = c.get("/v2/sandboxes")
        assert r.status_code == 401
        assert r.json()["code"] == 401


def test_traffic_routing_by_header_and_host(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        with httpx.Client(base_url=e2b_env.url, timeout=10) as c:
            # by headers, to the sandbox runtime's port
            r = c.get("/ping", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "44772"})
            assert r.status_code == 200
            # by host {port}-{id}.{domain}
            r = c.get("/ping", headers={"Host": f"44772-{sbx.sandbox_id}.sandpool.test"})
            assert r.status_code == 200
            # a token-protected runtime route is refused without the token: the
            # E2B route passes the caller's credentials through, adds none
            r = c.get("/files/info?path=/", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "44772"})
            assert r.status_code == 401
            # unknown sandbox: E2B's proxy answer, 502 "was not found" (issue 18)
            r = c.get("/health", headers={"E2b-Sandbox-Id": "nope", "E2b-Sandbox-Port": "49983"})
            assert r.status_code == 502
            assert r.json() == {"sandboxId": "nope", "message": "The sandbox was not found", "code": 502}
            # envd answers its own health check through the same routing
            r = c.get("/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"})
            assert r.status_code == 204
            # a port nothing listens on: clear 502
            r = c.get("/", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8123"})
            assert r.status_code == 502
            assert "unreachable" in r.json()["message"]
    finally:
        sbx.kill()


def test_commands_stream_fail_and_run_in_background(e2b_env: Sandpool):
    import time

    sbx = Sandbox.create(POOL_NAME, envs={"GREETING": "hi"}, timeout=120)
    try:
        seen = []
        r = sbx.commands.run(
            "for i in 1 2 3 4; do echo line$i; sleep 0.4; done; echo $GREETING",
            on_stdout=lambda s: seen.append((time.monotonic(), s)),
        )
        assert r.exit_code == 0
        assert r.stdout == "line1\nline2\nline3\nline4\nhi\n"
        # 1.6 s of sleeps lie between line1 and the greeting
        assert seen[-1][0] - seen[0][0] >= 1.0, "output streamed while the command ran"

        with pytest.raises(CommandExitException) as exc:
            sbx.commands.run("echo oops >&2; exit 3")
        assert exc.value.exit_code == 3
        assert exc.value.stderr == "oops\n"

        handle = sbx.commands.run("sleep 300", background=True)
        assert handle.pid in [p.pid for p in sbx.commands.list()]
        assert sbx.commands.kill(handle.pid) is True
        for _ in range(50):
            if handle.pid not in [p.pid for p in sbx.commands.list()]:
                break
            time.sleep(0.1)
        assert handle.pid not in [p.pid for p in sbx.commands.list()]
    finally:
        sbx.kill()


def test_files_write_read_list_remove(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        info = sbx.files.write("/tmp/e2b/a.txt", "hello e2b")
        assert info.path == "/tmp/e2b/a.txt"
        assert sbx.files.read("/tmp/e2b/a.txt") == "hello e2b"
        blob = bytes(range(256)) * 4096
        sbx.files.write("/tmp/e2b/b.bin", blob)
        assert sbx.files.read("/tmp/e2b/b.bin", format="bytes") == blob
        assert sorted(e.name for e in sbx.files.list("/tmp/e2b")) == ["a.txt", "b.bin"]
        assert sbx.files.exists("/tmp/e2b/a.txt")
        assert sbx.files.make_dir("/tmp/e2b/sub") is True
        assert sbx.files.make_dir("/tmp/e2b/sub") is False, "already exists"
        sbx.files.rename("/tmp/e2b/a.txt", "/tmp/e2b/sub/c.txt")
        assert sbx.files.read("/tmp/e2b/sub/c.txt") == "hello e2b"
        sbx.files.remove("/tmp/e2b/sub/c.txt")
        assert not sbx.files.exists("/tmp/e2b/sub/c.txt")
    finally:
        sbx.kill()


def test_code_interpreter_keeps_state_between_calls(e2b_env: Sandpool):
    # e2b-code-interpreter pins a recent e2b; the run with the older e2b SDK
    # (scripts/test.sh runs this module with e2b 2.37.1 too) has no such package.
    code_interpreter = pytest.importorskip("e2b_code_interpreter")
    CodeSandbox = code_interpreter.Sandbox

    sbx = CodeSandbox.create(PY_POOL_NAME, timeout=180)
    try:
        first = sbx.run_code("a = 1")
        assert first.error is None
        second = sbx.run_code("print(a)")
        assert second.logs.stdout == ["1\n"]
        third = sbx.run_code("a + 41")
        assert third.text == "42"
        err = sbx.run_code("1 / 0")
        assert err.error is not None and err.error.name == "ZeroDivisionError"
        ctx = sbx.create_code_context()
        isolated = sbx.run_code("print('a' in globals())", context=ctx)
        assert isolated.logs.stdout == ["False\n"], "a new context has its own state"
        # context management carries the token the SDK got at create
        assert ctx.id in [c.id for c in sbx.list_code_contexts()]
        sbx.restart_code_context(ctx)
        sbx.remove_code_context(ctx)
        assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    finally:
        sbx.kill()


def test_code_interpreter_needs_the_token(e2b_env: Sandpool):
    # Without a token, no call on port 49999 but /health is served: not the
    # context list, create, restart or delete (they used to be open to anyone).
    code_interpreter = pytest.importorskip("e2b_code_interpreter")
    sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, timeout=120)
    try:
        ctx = sbx.create_code_context()
        route = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49999"}
        with httpx.Client(base_url=e2b_env.url, timeout=10, headers=route) as c:
            calls = [
                c.get("/contexts"),
                c.post("/contexts", json={"cwd": "/tmp"}),
                c.post(f"/contexts/{ctx.id}/restart"),
                c.delete(f"/contexts/{ctx.id}"),
                c.post("/execute", json={"code": "1"}),
            ]
            assert [r.status_code for r in calls] == [401] * 5
            bad = c.get("/contexts", headers={"E2B-Traffic-Access-Token": "wrong"})
            assert bad.status_code == 401
            assert c.get("/health").status_code == 200
        assert ctx.id in [c.id for c in sbx.list_code_contexts()], "nothing was deleted"
        # 32 contexts per sandbox: one exists, 31 more fit, the next is refused
        for _ in range(31):
            sbx.create_code_context()
        with pytest.raises(SandboxException, match="too many contexts"):
            sbx.create_code_context()
    finally:
        sbx.kill()


def _envd(c: httpx.Client, sbx_id: str, path: str, **kw):
    headers = {"E2b-Sandbox-Id": sbx_id, "E2b-Sandbox-Port": "49983", **kw.pop("headers", {})}
    return c.post(path, headers=headers, **kw)


def test_envd_refuses_bad_input_clearly(e2b_env: Sandpool):
    import struct

    sbx = Sandbox.create(POOL_NAME, timeout=120)
    token = sbx._envd_access_token
    try:
        with httpx.Client(base_url=e2b_env.url, timeout=10) as c:
            stream = {"Content-Type": "application/connect+json", "X-Access-Token": token}
            # wrong token: Connect's unauthenticated
            r = _envd(c, sbx.sandbox_id, "/filesystem.Filesystem/Stat", json={"path": "/"}, headers={"X-Access-Token": "wrong"})
            assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
            # malformed envelope (length says 100, 2 bytes follow): end-of-stream error, not a crash
            r = _envd(c, sbx.sandbox_id, "/process.Process/Start", content=b"\x00\x00\x00\x00\x64{}", headers=stream)
            assert r.status_code == 200
            flags, n = struct.unpack(">BI", r.content[:5])
            assert flags == 2
            assert httpx.Response(200, content=r.content[5 : 5 + n]).json()["error"]["code"] == "invalid_argument"
            # an oversize frame (claims 64 MiB) is refused before it is read
            r = _envd(c, sbx.sandbox_id, "/process.Process/Start", content=b"\x00\x04\x00\x00\x00{}", headers=stream)
            body = httpx.Response(200, content=r.content[5:]).json()
            assert body["error"]["code"] == "resource_exhausted"
            # bad JSON on a unary call
            r = _envd(c, sbx.sandbox_id, "/filesystem.Filesystem/Stat", content=b"{nope", headers={"X-Access-Token": token, "Content-Type": "application/json"})
            assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
            # unknown process
            r = _envd(c, sbx.sandbox_id, "/process.Process/SendSignal", json={"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}, headers={"X-Access-Token": token})
            assert r.status_code == 404 and r.json()["code"] == "not_found"
        # the sandbox is still fine after all that
        assert sbx.commands.run("echo ok").stdout == "ok\n"
    finally:
        sbx.kill()


def test_watch_dir_reports_changes(e2b_env: Sandpool):
    import time

    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        sbx.files.make_dir("/tmp/watched")
        handle = sbx.files.watch_dir("/tmp/watched")
        sbx.files.write("/tmp/watched/new.txt", "x")
        sbx.files.remove("/tmp/watched/new.txt")
        seen = []
        for _ in range(50):
            seen += [(e.name, e.type.name) for e in handle.get_new_events()]
            if ("new.txt", "REMOVE") in seen:
                break
            time.sleep(0.1)
        assert ("new.txt", "CREATE") in seen
        assert ("new.txt", "REMOVE") in seen
        handle.stop()
    finally:
        sbx.kill()
