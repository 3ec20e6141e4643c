"""The opensandbox SDK's client-side pool against the real platform (issue 17).

``SandboxPoolSync`` keeps warm sandboxes of its own, made through the ordinary
create API, and coordinates its instances through a state store; the
distributed store is Redis (``RedisPoolStateStore``). Here a private
``redis-server`` from Debian (loopback, no persistence) holds that state, and
two pool instances of one name share it: the primary warms the pool, and either
instance acquires what it warmed, as upstream's pool tests do against their
server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from datetime import timedelta

import pytest
import redis
from sandpool_platform import POOL_IMAGE, POOL_NAME, Sandpool

from opensandbox import SandboxManagerSync
from opensandbox.pool_redis import RedisPoolStateStore
from opensandbox.pool_types import AcquirePolicy, PoolCreationSpec
from opensandbox.sync.pool import SandboxPoolSync


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory):
    exe = shutil.which("redis-server")
    assert exe, "redis-server (Debian package redis-server) is installed by scripts/install-deps.sh"
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _pool(sandpool: Sandpool, client, name: str, max_idle: int) -> SandboxPoolSync:
    return SandboxPoolSync(
        pool_name=name,
        max_idle=max_idle,
        state_store=RedisPoolStateStore(client),
        connection_config=sandpool.config(),
        creation_spec=PoolCreationSpec(image=POOL_IMAGE, extensions={"poolRef": POOL_NAME}),
        warmup_concurrency=2,
        warmup_ready_timeout=timedelta(seconds=60),
        idle_timeout=timedelta(minutes=10),
        drain_timeout=timedelta(seconds=10),
    )


def _wait_idle(pool: SandboxPoolSync, want: int, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while pool.snapshot().idle_count < want:
        snap = pool.snapshot()
        assert time.monotonic() < deadline, f"pool never reached {want} idle sandboxes: {snap}"
        time.sleep(0.25)


def test_two_pool_instances_share_redis_state_and_hand_out_warm_sandboxes(sandpool: Sandpool, redis_client):
    name = f"ospool-{uuid.uuid4().hex[:8]}"
    first = _pool(sandpool, redis_client, name, max_idle=2)
    second = _pool(sandpool, redis_client, name, max_idle=2)
    manager = SandboxManagerSync.create(sandpool.config())
    acquired = []
    try:
        first.start()
        second.start()
        _wait_idle(first, 2)
        # the idle set lives in Redis: the other instance sees the same count
        assert second.snapshot().idle_count == 2
        warm_ids = {e.sandbox_id for e in first.snapshot_idle_entries()}
        assert len(warm_ids) == 2
        assert redis_client.dbsize() > 0, "the pool's state is in Redis"

        # an acquire from the instance that did not warm them takes one of
        # them (FAIL_FAST: no fallback create that would hide a miss)
        sb = second.acquire(sandbox_timeout=timedelta(minutes=5), policy=AcquirePolicy.FAIL_FAST)
        acquired.append(sb)
        assert sb.id in warm_ids
        run = sb.commands.run("echo pooled-$((6*7))")
        assert run.exit_code == 0, run
        assert [m.text for m in run.logs.stdout] == ["pooled-42"]
        # the platform knows the sandbox as a running one of the caller
        assert manager.get_sandbox_info(sb.id).status.state.lower() == "running"

        # the pool refills to max_idle with a new sandbox
        _wait_idle(first, 2)
        refilled = {e.sandbox_id for e in first.snapshot_idle_entries()}
        assert sb.id not in refilled

        # idle sandboxes are killed on the platform when released
        killed = first.release_all_idle()
        assert killed >= 1
        for sid in refilled:
            deadline = time.monotonic() + 30
            while True:
                try:
                    state = manager.get_sandbox_info(sid).status.state.lower()
                except Exception:  # noqa: BLE001 - gone is what we wait for
                    break
                if state in ("terminated", "failed", "stopping"):
                    break
                assert time.monotonic() < deadline, f"idle sandbox {sid} still {state}"
                time.sleep(0.25)
    finally:
        for sb in acquired:
            try:
                sb.kill()
            finally:
                sb.close()
        for pool in (second, first):
            pool.shutdown(graceful=False)
        try:
            first.release_all_idle()
        except Exception:  # noqa: BLE001 - best effort after a failure
            pass
        manager.close()
