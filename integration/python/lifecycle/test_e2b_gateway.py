"""The real ``e2b`` SDK against the gateway's E2B control plane and traffic
routing (issue 18): what a paused or killed sandbox's traffic answers, that
``connect`` only ever extends the timeout, and the v2 list's filters and
order."""

from __future__ import annotations

import datetime
import time
import uuid

import httpx
import pytest
from e2b import Sandbox, SandboxQuery
from e2b.exceptions import SandboxNotFoundException, SandboxNotRunningException

from sandpool_platform import POOL_NAME, Sandpool


def test_paused_and_killed_sandboxes_are_not_running(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        assert sbx.is_running() is True
        assert sbx.pause() is True
        assert sbx.is_running() is False, "a paused sandbox's envd is not reachable"
        with pytest.raises(SandboxNotRunningException):
            sbx.commands.run("true")
        again = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert again.is_running() is True
        assert again.commands.run("echo back").stdout == "back\n"
    finally:
        assert sbx.kill() is True
    assert sbx.is_running() is False, "a killed sandbox is not running"
    with pytest.raises(SandboxNotRunningException):
        sbx.files.read("/etc/hostname")


def test_connect_never_shortens_the_timeout(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=300)
    try:
        end = sbx.get_info().end_at
        Sandbox.connect(sbx.sandbox_id, timeout=10)
        assert sbx.get_info().end_at == end, "connect with a shorter timeout keeps the end"
        time.sleep(1)
        Sandbox.connect(sbx.sandbox_id, timeout=600)
        assert sbx.get_info().end_at > end, "a longer one extends it"
    finally:
        sbx.kill()


def _ids(paginator) -> list[str]:
    items = []
    while paginator.has_next:
        items.extend(s.sandbox_id for s in paginator.next_items())
    return items


def test_list_is_newest_first_and_filters_by_start_and_template(e2b_env: Sandpool):
    suite = uuid.uuid4().hex
    made = []
    try:
        for _ in range(3):
            made.append(Sandbox.create(POOL_NAME, metadata={"suite": suite}, timeout=120))
            time.sleep(0.05)
        ids = [s.sandbox_id for s in made]
        meta = {"suite": suite}
        assert _ids(Sandbox.list(query=SandboxQuery(metadata=meta))) == ids[::-1], "newest first"
        assert _ids(Sandbox.list(query=SandboxQuery(metadata=meta), order="asc")) == ids
        assert _ids(Sandbox.list(query=SandboxQuery(metadata=meta), limit=1)) == ids[::-1], "pages in order"
        second = made[1].get_info().started_at
        after = Sandbox.list(query=SandboxQuery(metadata=meta, started_after=second), order="asc")
        assert _ids(after) == ids[1:]
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        assert _ids(Sandbox.list(query=SandboxQuery(metadata=meta, started_after=future))) == []
        assert _ids(Sandbox.list(query=SandboxQuery(metadata=meta, template=POOL_NAME))) == ids[::-1]
        assert _ids(Sandbox.list(query=SandboxQuery(metadata=meta, template="other-template"))) == []
    finally:
        for s in made:
            s.kill()


def test_set_timeout_zero_ends_the_sandbox(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        sbx.set_timeout(0)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sbx.sandbox_id)
        assert sbx.is_running() is False
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_e2b_errors_are_json_and_the_sdk_reads_them(e2b_env: Sandpool):
    with pytest.raises(SandboxNotFoundException):
        Sandbox.update_network("nope", {"deny_out": ["10.0.0.0/8"]})
    with httpx.Client(base_url=e2b_env.url, headers={"X-API-Key": e2b_env.api_key}, timeout=10) as c:
        for method, path, status in [("PUT", "/sandboxes/nope/network", 404),
                                     ("GET", "/sandboxes/nope/logs", 404),
                                     ("PATCH", "/sandboxes/nope", 405)]:
            r = c.request(method, path, json={})
            assert r.status_code == status, (method, path, r.text)
            assert r.json()["code"] == status and r.json()["message"], (method, path, r.text)


def test_metrics_honour_the_range(e2b_env: Sandpool):
    sbx = Sandbox.create(POOL_NAME, timeout=120)
    try:
        now = datetime.datetime.now(datetime.timezone.utc)
        hour = datetime.timedelta(hours=1)
        assert len(sbx.get_metrics()) == 1
        assert len(sbx.get_metrics(start=now - hour, end=now + hour)) == 1
        assert sbx.get_metrics(start=now - 2 * hour, end=now - hour) == []
    finally:
        sbx.kill()
