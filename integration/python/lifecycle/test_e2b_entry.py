"""Entry metadata through E2B's own SDK (e2b 2.63.0, unchanged), issue 18:
sandpool's envd reports 0.6.4, so the SDK lets through file metadata
(``user.e2b.*`` xattrs, 0.6.2) and watch events with their entry
(``include_entry``, 0.6.3). The user the SDK names (``user=``) is honoured:
``user`` is the sandbox's default user, ``root`` needs a root runtime."""

from __future__ import annotations

import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException
from e2b.sandbox.filesystem.filesystem import FileType
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from sandpool_platform import POOL_NAME, Sandpool


def test_watch_events_carry_their_entry(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        sbx.files.make_dir("/tmp/we")
        handle = sbx.files.watch_dir("/tmp/we", include_entry=True)
        sbx.files.write("/tmp/we/a.txt", "hello")
        events = handle.get_new_events()
        handle.stop()
        writes = [e for e in events if e.type == FilesystemEventType.WRITE]
        assert writes, events
        entry = writes[-1].entry
        assert entry is not None, events
        assert entry.name == "a.txt"
        assert entry.path == "/tmp/we/a.txt"
        assert entry.type == FileType.FILE
        assert entry.size == 5
    finally:
        sbx.kill()


def test_file_metadata_and_entry_fields(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        info = sbx.files.write("/tmp/m.txt", "data", metadata={"Owner": "alice"})
        assert info.metadata == {"owner": "alice"}
        got = sbx.files.get_info("/tmp/m.txt")
        assert got.metadata == {"owner": "alice"}
        assert got.size == 4 and got.permissions.startswith("-rw")
        assert got.owner and got.group and got.modified_time is not None
        sbx.commands.run("ln -s /tmp/m.txt /tmp/m.link")
        link = sbx.files.get_info("/tmp/m.link")
        assert link.type == FileType.SYMLINK
        assert link.symlink_target == "/tmp/m.txt"
        listed = {e.name: e for e in sbx.files.list("/tmp")}
        assert listed["m.txt"].metadata == {"owner": "alice"}
        # an overwrite replaces the whole set
        sbx.files.write("/tmp/m.txt", "again")
        assert sbx.files.get_info("/tmp/m.txt").metadata is None
    finally:
        sbx.kill()


def test_users_the_sdk_names(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        uid = sbx.commands.run("id -u").stdout.strip()
        assert sbx.commands.run("id -u", user="user").stdout.strip() == uid
        if uid == "0":
            assert sbx.commands.run("id -u", user="root").stdout.strip() == "0"
            return
        with pytest.raises(SandboxException) as ran:
            sbx.commands.run("id -u", user="root")
        assert "--run-as-root" in str(ran.value)
        with pytest.raises(SandboxException) as listed:
            sbx.files.list("/tmp", user="root")
        assert "cannot run as user 'root'" in str(listed.value)
    finally:
        sbx.kill()
