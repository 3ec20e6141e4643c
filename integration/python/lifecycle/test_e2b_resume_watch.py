"""E2B features the 2.63 SDK reaches only on a platform that has them, checked
with the real SDK (e2b 2.63.0, unchanged), issue 18:

- ``lifecycle={"on_timeout": "pause", "auto_resume": True}``: a sandbox paused
  at its timeout resumes on the next request to it (a command here), for a
  fresh run of the timeout it was created with;
- envd 0.6.4: ``watch_dir(..., allow_network_mounts=True)`` (the SDK refuses
  it below 0.6.4) watches a local directory as any watch does;
- on a root runtime (``--run-as-root``), what ``files.write``/``make_dir``
  create for ``user="user"`` is that user's, the directories made on the way
  included, and a relative path is under that user's home;
- a signed ``download_url`` under a single-host ``E2B_SANDBOX_URL`` (no
  sandbox host, no routing headers: opened as a browser would) reaches its
  sandbox, and an expired one gets envd's 401."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

from e2b import FilesystemEventType, Sandbox, SandboxState
from packaging.version import Version

from sandpool_platform import POOL_IMAGE, POOL_NAME, Sandpool, cli


def _wait_for_state(sbx: Sandbox, state: SandboxState, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while sbx.get_info().state != state:
        assert time.monotonic() < deadline, f"still {sbx.get_info().state}, not {state}"
        time.sleep(0.5)


def test_auto_resume_wakes_a_paused_sandbox_on_its_next_request(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
        sbx.files.write("/tmp/kept.txt", "before the pause")
        _wait_for_state(sbx, SandboxState.PAUSED, 30)
        # no connect, no resume call: the command itself wakes it
        ran = sbx.commands.run("cat /tmp/kept.txt")
        assert ran.stdout == "before the pause"
        info = sbx.get_info()
        assert info.state == SandboxState.RUNNING
        assert info.end_at > datetime.now(timezone.utc), info
        # the timeout it was made with runs again: it pauses again
        _wait_for_state(sbx, SandboxState.PAUSED, 30)
        assert sbx.files.read("/tmp/kept.txt") == "before the pause"
        assert sbx.get_info().state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_a_paused_sandbox_without_auto_resume_stays_paused(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": False})
    try:
        _wait_for_state(sbx, SandboxState.PAUSED, 30)
        assert not sbx.is_running()
        assert sbx.get_info().state == SandboxState.PAUSED
    finally:
        sbx.kill()


def test_watch_with_network_mounts_allowed(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        assert sbx._envd_version >= Version("0.6.4")
        sbx.files.make_dir("/tmp/nm")
        sbx.files.write("/tmp/nm/a.txt", "one")
        handle = sbx.files.watch_dir("/tmp/nm", allow_network_mounts=True)
        sbx.files.write("/tmp/nm/a.txt", "two")
        events = handle.get_new_events()
        handle.stop()
        assert any(e.type == FilesystemEventType.WRITE and e.name == "a.txt" for e in events), events
    finally:
        sbx.kill()


def test_files_made_for_a_named_user_are_that_users(e2b_env: Sandpool):
    cli(e2b_env, "pool", "apply", "e2b-root", "--image", POOL_IMAGE, "--run-as-root",
        "--buffer-min", "0", "--buffer-max", "1")
    sbx = Sandbox.create("e2b-root", timeout=120)
    try:
        assert sbx.commands.run("id -u").stdout.strip() == "0"
        uid = sbx.commands.run("id -u", user="user").stdout.strip()
        assert uid != "0"
        sbx.files.write("/tmp/own/deep/a.txt", "x", user="user")
        sbx.files.write_files([{"path": "/tmp/own2/b.txt", "data": "y"}], user="user")
        sbx.files.make_dir("/tmp/md/inner", user="user")
        sbx.files.write("rel.txt", "z", user="user")
        sbx.files.write("/tmp/roots.txt", "r", user="root")
        made = ["/tmp/own", "/tmp/own/deep", "/tmp/own/deep/a.txt", "/tmp/own2", "/tmp/own2/b.txt",
                "/tmp/md", "/tmp/md/inner"]
        owners = sbx.commands.run("stat -c %u " + " ".join(made)).stdout.split()
        assert owners == [uid] * len(made), dict(zip(made, owners))
        entry = sbx.commands.run("awk -F: '$1 == \"user\" {print $6}' /etc/passwd").stdout.strip()
        home = entry or "/home/user"
        assert sbx.commands.run(f"stat -c %u {home}/rel.txt").stdout.strip() == uid
        # what existed keeps its owner; root's files stay root's
        assert sbx.commands.run("stat -c %u /tmp /tmp/roots.txt").stdout.split() == ["0", "0"]
    finally:
        sbx.kill()


def test_signed_download_urls_without_routing(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120, secure=True)
    other = Sandbox.create(POOL_NAME, timeout=120, secure=True)
    try:
        sbx.files.write("signed.txt", "signed content")
        url = sbx.download_url("signed.txt", "user")
        assert url.startswith(e2b_env.url), url
        with urllib.request.urlopen(url) as resp:
            assert resp.status == 200
            assert resp.read().decode() == "signed content"
        with urllib.request.urlopen(sbx.download_url("signed.txt", "user", 120)) as resp:
            assert resp.read().decode() == "signed content"
        expired = sbx.download_url("signed.txt", "user", use_signature_expiration=-120)
        try:
            urllib.request.urlopen(expired)
            raise AssertionError("an expired signature was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 401
            assert json.loads(e.read().decode()) == {"code": 401, "message": "signature is already expired"}
        # the other sandbox's URL reaches the other sandbox
        other.files.write("signed.txt", "other content")
        with urllib.request.urlopen(other.download_url("signed.txt", "user")) as resp:
            assert resp.read().decode() == "other content"
    finally:
        sbx.kill()
        other.kill()
