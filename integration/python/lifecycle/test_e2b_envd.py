"""sandpool's envd as E2B's own SDK (e2b 2.63.0, unchanged) sees it, on
the points where it answered otherwise than E2B's envd (issue 18): the
working directory of commands, Remove of a missing path, the WatchDir stream
and polled watcher events, a command's deadline, signed file URLs."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from e2b import AsyncSandbox, Sandbox
from e2b.exceptions import TimeoutException
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from sandpool_platform import POOL_NAME, Sandpool


def test_commands_start_in_the_home_directory(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        home = sbx.commands.run("echo $HOME").stdout.strip()
        assert home and home != "/"
        assert sbx.commands.run("pwd").stdout.strip() == home
        # relative file paths and a relative cwd resolve against the same home
        sbx.files.write("sub/rel.txt", "here")
        assert sbx.commands.run("cat sub/rel.txt").stdout == "here"
        assert sbx.commands.run("pwd", cwd="sub").stdout.strip() == f"{home}/sub"
        assert sbx.commands.run("pwd", cwd="/tmp").stdout.strip() == "/tmp"
    finally:
        sbx.kill()


def test_remove_of_a_missing_path_succeeds(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        sbx.files.remove("/tmp/no-such-" + uuid.uuid4().hex)
        sbx.files.write("/tmp/gone.txt", "x")
        sbx.files.remove("/tmp/gone.txt")
        assert not sbx.files.exists("/tmp/gone.txt")
    finally:
        sbx.kill()


def test_watchers_see_a_write_at_once(e2b_env: Sandpool):
    """The polled watcher (sync SDK) has the write of ``a.txt`` as soon as
    the write returns, named ``a.txt``, never an upload staging file."""
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        sbx.files.make_dir("/tmp/w")
        handle = sbx.files.watch_dir("/tmp/w")
        sbx.files.write("/tmp/w/a.txt", "hello")
        events = handle.get_new_events()
        handle.stop()
        assert {e.name for e in events} == {"a.txt"}, events
        assert FilesystemEventType.WRITE in {e.type for e in events}, events
    finally:
        sbx.kill()


def test_watch_dir_stream_delivers_events(e2b_env: Sandpool):
    """The async SDK's ``watch_dir`` is the WatchDir stream: it starts (the
    SDK reads the start event's oneof) and delivers the write's events."""

    async def run() -> list:
        sbx = await AsyncSandbox.create(POOL_NAME, timeout=120)
        try:
            await sbx.files.make_dir("/tmp/s")
            seen: list = []
            got = asyncio.Event()

            def on_event(e):
                seen.append(e)
                if e.type == FilesystemEventType.WRITE:
                    got.set()

            handle = await sbx.files.watch_dir("/tmp/s", on_event=on_event)
            await sbx.files.write("/tmp/s/b.txt", "x")
            await asyncio.wait_for(got.wait(), 10)
            await handle.stop()
            return seen
        finally:
            await sbx.kill()

    seen = asyncio.run(run())
    assert {e.name for e in seen} == {"b.txt"}, seen


def test_a_command_past_its_timeout_raises_timeout(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        with pytest.raises(TimeoutException):
            sbx.commands.run("sleep 30", timeout=2)
        # in the background, the end of the stream itself says so (envd's
        # deadline_exceeded), not a normal exit of the killed process
        handle = sbx.commands.run("sleep 30", timeout=2, background=True)
        with pytest.raises(TimeoutException):
            for _ in handle:
                pass
        assert sbx.commands.run("echo ok", timeout=10).stdout == "ok\n"
    finally:
        sbx.kill()


def test_an_async_command_past_its_timeout_raises_timeout(e2b_env: Sandpool):
    async def run() -> None:
        sbx = await AsyncSandbox.create(POOL_NAME, timeout=120)
        try:
            with pytest.raises(TimeoutException):
                await sbx.commands.run("sleep 30", timeout=2)
            handle = await sbx.commands.run("sleep 30", timeout=2, background=True)
            with pytest.raises(TimeoutException):
                await handle.wait()
        finally:
            await sbx.kill()

    asyncio.run(run())


def test_signed_file_urls(e2b_env: Sandpool):
    """``download_url``/``upload_url`` are signed with the sandbox's token:
    they work without ``X-Access-Token``; an expired one is 401."""
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    route = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    try:
        with httpx.Client(timeout=10) as c:
            up = c.post(sbx.upload_url("/tmp/signed.txt"), headers=route, files={"file": ("signed.txt", b"signed")})
            assert up.status_code == 200, up.text
            down = c.get(sbx.download_url("/tmp/signed.txt", use_signature_expiration=60), headers=route)
            assert down.status_code == 200 and down.content == b"signed"
            expired = c.get(sbx.download_url("/tmp/signed.txt", use_signature_expiration=-10), headers=route)
            assert expired.status_code == 401
            assert expired.json() == {"code": 401, "message": "signature is already expired"}
            forged = c.get(sbx.download_url("/tmp/other.txt").replace("other", "signed"), headers=route)
            assert forged.status_code == 401 and forged.json()["message"] == "invalid signature"
    finally:
        sbx.kill()
