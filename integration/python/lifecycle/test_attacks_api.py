"""Attacks on the platform's API edges by an untrusted tenant, through the
gateway of a real ``sandpool serve`` (issue 16): each attack is paired with a
negative control showing the same probe does work where it should, so a
passing attack is containment, not a broken path. Every wait is bounded.

1. platform credentials sent along a proxied request never reach the sandbox;
2. huge create timeouts are refused (400 naming ``timeout``), nothing created;
3. the code interpreter (port 49999) refuses callers without the sandbox's token;
4. a multi-file upload over the file-count limit is 413 and leaves no file;
5. the platform's state at rest is owner-only;
6. an oversized proxied body announced with ``Expect: 100-continue`` is 413
   before a byte of it is sent;
7. the ports of an E2B sandbox with private traffic answer only requests
   carrying its traffic access token;
8. pool names a tenant makes up (a NUL byte, not a DNS label, hundreds of
   unknown ones) never become metric series.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.filesystem import WriteEntry

from sandpool_platform import DEFAULT_BINARY, POOL_IMAGE, POOL_NAME, PY_POOL_NAME, Sandpool

EXECD_PORT = 44772
ECHO_PORT = 8000
MAX_UPLOAD_FILES = 1000  # the runtime's default --max-upload-files
MAX_PROXY_BODY = (1 << 30) + (1 << 20)  # the gateway's default largest proxied body


def _sandbox(sandpool: Sandpool, **config) -> SandboxSync:
    return SandboxSync.create(
        POOL_IMAGE,
        connection_config=sandpool.config(**config),
        extensions={"poolRef": POOL_NAME},
        timeout=timedelta(minutes=5),
        ready_timeout=timedelta(seconds=60),
    )


def _all_ids(sandpool: Sandpool) -> set[str]:
    ids: set[str] = set()
    with sandpool.client() as c:
        for page in range(1, 50):
            r = c.get("/v1/sandboxes", params={"page": page, "pageSize": 100})
            assert r.status_code == 200, r.text
            ids.update(item["id"] for item in r.json()["items"])
            if not r.json()["pagination"]["hasNextPage"]:
                return ids
    pytest.fail("more than 50 pages of sandboxes")


def _parse_time(s: str) -> datetime:
    moment = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- 1


def test_platform_credentials_never_reach_a_sandbox_port(sandpool: Sandpool):
    """A one-shot HTTP server inside the sandbox records what it was sent
    (busybox ``nc``), once through the OpenSandbox proxy route and once
    through E2B's header routing. Attack: the platform key as
    ``OPEN-SANDBOX-API-KEY``, ``X-API-Key`` and ``Authorization: Bearer``.
    Control: ``X-Custom`` and an app's own ``Authorization`` arrive."""
    sandbox = _sandbox(sandpool)
    try:
        reply = "HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
        server = (
            # two requests kept; an nc that ends without one is started again (at most 300 times)
            "i=1; n=0; while [ $i -le 2 ] && [ $n -lt 300 ]; do n=$((n+1)); "
            f"printf '{reply}' | nc -l -p {ECHO_PORT} > /tmp/cur.txt 2>>/tmp/nc.err; "
            "if [ -s /tmp/cur.txt ]; then mv /tmp/cur.txt /tmp/req$i.txt; i=$((i+1)); else sleep 0.1; fi; done"
        )
        sandbox.commands.run(server, opts=RunCommandOpts(background=True))
        key = sandpool.api_key
        marker = "harmless-" + uuid.uuid4().hex[:8]

        def until_served(send) -> httpx.Response:
            deadline = time.monotonic() + 15
            while True:
                r = send()
                if r.status_code == 200 or time.monotonic() > deadline:
                    return r
                time.sleep(0.2)  # 502 until nc listens

        with httpx.Client(base_url=sandpool.url, timeout=10) as c:
            r = until_served(lambda: c.get(
                f"/v1/sandboxes/{sandbox.id}/proxy/{ECHO_PORT}/probe",
                headers={"OPEN-SANDBOX-API-KEY": key, "Authorization": f"Bearer {key}", "X-API-Key": key, "X-Custom": marker},
            ))
            diag = "" if r.status_code == 200 else sandbox.commands.run("ps; ls -l /tmp; cat /tmp/nc.err").text
            assert (r.status_code, r.text) == (200, "ok"), diag
            r = until_served(lambda: c.get(
                "/probe2",
                headers={
                    "E2b-Sandbox-Id": sandbox.id, "E2b-Sandbox-Port": str(ECHO_PORT),
                    "X-API-Key": key, "Authorization": "Bearer app-token", "X-Custom": marker,
                },
            ))
            assert (r.status_code, r.text) == (200, "ok")

        first = sandbox.files.read_file("/tmp/req1.txt")
        second = sandbox.files.read_file("/tmp/req2.txt")
        # controls: the requests arrived, with the harmless header
        assert first.startswith("GET /probe ") and f"x-custom: {marker}" in first.lower(), first
        assert second.startswith("GET /probe2 ") and f"x-custom: {marker}" in second.lower(), second
        assert "authorization: bearer app-token" in second.lower(), "an app's own Authorization passes"
        # attack: no platform credential, under any name
        for seen in (first, second):
            assert key not in seen, seen
            assert "open-sandbox-api-key" not in seen.lower(), seen
            assert "x-api-key" not in seen.lower(), seen
        assert "authorization" not in first.lower(), first
    finally:
        sandbox.kill()


# --------------------------------------------------------------------------- 2


def test_huge_timeouts_are_refused_and_create_nothing(sandpool: Sandpool):
    os_body = {
        "image": {"uri": POOL_IMAGE},
        "entrypoint": ["tail", "-f", "/dev/null"],
        "resourceLimits": {"cpu": "1", "memory": "2Gi"},
        "extensions": {"poolRef": POOL_NAME},
    }
    before = _all_ids(sandpool)
    with sandpool.client() as c, httpx.Client(base_url=sandpool.url, headers={"X-API-Key": sandpool.api_key}, timeout=30) as e2b:
        for raw in ("1e18", "1000000000000000000", "99999999999999"):
            body = '{"image":{"uri":"%s"},"entrypoint":["tail","-f","/dev/null"],"extensions":{"poolRef":"%s"},"timeout":%s}' % (
                POOL_IMAGE, POOL_NAME, raw)
            r = c.post("/v1/sandboxes", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (raw, r.status_code, r.text)
            assert "timeout" in r.json()["message"], r.text
            print(f"OpenSandbox timeout {raw}: {r.status_code} {r.json()['message']}")
        r = e2b.post("/sandboxes", json={"templateID": POOL_NAME, "timeout": 99999999999999})
        assert r.status_code == 400, r.text
        assert "timeout" in r.json()["message"], r.text
        print(f"E2B timeout 99999999999999: {r.status_code} {r.json()['message']}")
        assert _all_ids(sandpool) - before == set(), "a refused create left a sandbox"

        # controls: 60 s works in both APIs and expires about a minute out
        _expires_a_minute_out(c, "/v1/sandboxes", {**os_body, "timeout": 60},
                              created=(200, 201, 202), id_key="id", end_key="expiresAt", deleted=(200, 204))
        _expires_a_minute_out(e2b, "/sandboxes", {"templateID": POOL_NAME, "timeout": 60},
                              created=(201,), id_key="sandboxID", end_key="endAt", deleted=(204,))


def _expires_a_minute_out(client: httpx.Client, sandboxes: str, body: dict, *, created: tuple[int, ...],
                          id_key: str, end_key: str, deleted: tuple[int, ...]) -> None:
    """Create a sandbox with ``body`` (a 60 s timeout) at ``sandboxes``: answered
    with one of ``created``, its ``end_key`` about a minute out; then delete it."""
    asked = datetime.now(timezone.utc)
    r = client.post(sandboxes, json=body)
    assert r.status_code in created, r.text
    sandbox = f"{sandboxes}/{r.json()[id_key]}"
    try:
        info = client.get(sandbox)
        assert info.status_code == 200, info.text
        end = _parse_time(info.json()[end_key])
        assert abs(end - (asked + timedelta(seconds=60))) < timedelta(seconds=15), (asked, end)
    finally:
        assert client.delete(sandbox).status_code in deleted


# --------------------------------------------------------------------------- 3


def test_code_interpreter_refuses_callers_without_the_sandbox_token(e2b_env: Sandpool):
    sandpool = e2b_env
    code_interpreter = pytest.importorskip("e2b_code_interpreter")
    sbx = code_interpreter.Sandbox.create(PY_POOL_NAME, timeout=120)
    try:
        route = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49999"}
        with httpx.Client(base_url=sandpool.url, timeout=10, headers=route) as c:
            # attack: no token, and the platform key in every header the gateway knows
            for extra in ({}, {"X-API-Key": sandpool.api_key, "OPEN-SANDBOX-API-KEY": sandpool.api_key,
                               "Authorization": f"Bearer {sandpool.api_key}"}):
                assert c.get("/contexts", headers=extra).status_code == 401
                assert c.post("/contexts", json={"cwd": "/tmp"}, headers=extra).status_code == 401
            # control: the sandbox's own token is answered
            token = {"E2B-Traffic-Access-Token": sbx.traffic_access_token}
            listed = c.get("/contexts", headers=token)
            assert listed.status_code == 200, listed.text
            made = c.post("/contexts", json={"cwd": "/tmp"}, headers=token)
            assert made.status_code == 200, made.text
            ids = [ctx["id"] for ctx in c.get("/contexts", headers=token).json()]
            assert made.json()["id"] in ids
            assert len(ids) == len(listed.json()) + 1, "only the tokened create made a context"
    finally:
        sbx.kill()


# --------------------------------------------------------------------------- 4


def test_upload_over_the_file_count_limit_is_413_and_lands_nothing(sandpool: Sandpool):
    sandbox = _sandbox(sandpool, use_server_proxy=True)
    try:
        too_many = [WriteEntry(path=f"/tmp/flood/f{i}.txt", data=f"{i}\n", mode=644) for i in range(MAX_UPLOAD_FILES + 1)]
        with pytest.raises(SandboxApiException) as refused:
            sandbox.files.write_files(too_many)
        assert refused.value.status_code == 413, refused.value
        print(f"upload of {len(too_many)} files: {refused.value.status_code}")
        left = sandbox.commands.run("ls -A /tmp/flood 2>/dev/null | wc -l")
        assert left.text.strip() == "0", f"files of a refused batch landed: {left.text}"

        # control: a small batch lands whole
        few = [WriteEntry(path=f"/tmp/few/f{i}.txt", data=f"{i}\n", mode=644) for i in range(5)]
        sandbox.files.write_files(few)
        listing = sandbox.commands.run("ls /tmp/few | sort | tr '\\n' ' '")
        assert listing.text.split() == [f"f{i}.txt" for i in range(5)]
        assert sandbox.files.read_file("/tmp/few/f3.txt") == "3\n"
    finally:
        sandbox.kill()


# --------------------------------------------------------------------------- 5


def test_state_at_rest_is_owner_only(sandpool: Sandpool):
    data = sandpool.base_dir / "data"
    binary = os.environ.get("SANDPOOL_BIN", str(DEFAULT_BINARY))
    key = subprocess.run(
        [binary, "key", "create", "--name", "atk-rest", "--data-dir", str(data)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()

    def mode(path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    want = {
        data: 0o700,
        data / "scheduler.redb": 0o600,
        data / "service-token": 0o600,
        data / "keys" / "keys.json": 0o600,
    }
    # control: they all exist (the checks are on real files) ...
    missing = [str(p) for p in want if not p.exists()]
    assert missing == [], missing
    got = {str(p): oct(mode(p)) for p in want}
    assert got == {str(p): oct(m) for p, m in want.items()}, got
    # ... nothing below the data dir is readable by group or others
    loose = []
    for root, dirs, files in os.walk(data):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p) and name in ("scheduler.redb", "service-token", "keys.json") and mode(p) & 0o077:
                loose.append((p, oct(mode(p))))
    assert loose == []
    # control: the platform works on this state, the new key included
    with sandpool.client(api_key=key) as c:
        assert c.get("/v1/sandboxes").status_code == 200
    with sandpool.client(api_key="e2b_" + "0" * 40) as c:
        assert c.get("/v1/sandboxes").status_code == 401


# --------------------------------------------------------------------------- 6


def _read_head(s: socket.socket, stop: bytes = b"\r\n\r\n") -> bytes:
    got = b""
    while stop not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_oversized_proxied_body_with_expect_continue_is_413_before_the_body(sandpool: Sandpool):
    sandbox = _sandbox(sandpool)
    path = f"/v1/sandboxes/{sandbox.id}/proxy/{EXECD_PORT}/files/upload"
    try:
        # attack: announce one byte over the limit, send none of it
        with socket.create_connection((sandpool.host, sandpool.port), timeout=10) as s:
            t0 = time.monotonic()
            s.sendall(
                (f"POST {path} HTTP/1.1\r\nHost: {sandpool.domain}\r\n"
                 f"OPEN-SANDBOX-API-KEY: {sandpool.api_key}\r\n"
                 f"Content-Type: multipart/form-data; boundary=x\r\n"
                 f"Content-Length: {MAX_PROXY_BODY + 1}\r\nExpect: 100-continue\r\n\r\n").encode()
            )
            head = _read_head(s)
            waited = time.monotonic() - t0
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"100 Continue" not in head, head
        assert waited < 5, f"413 took {waited:.2f} s"
        status_line = head.split(b"\r\n")[0]
        print(f"oversized Expect: {status_line!r} after {waited * 1000:.1f} ms")

        # control: a small upload with the same Expect gets its 100, then lands
        req = httpx.Request(
            "POST", f"{sandpool.url}{path}",
            files=[("metadata", ("metadata", '{"path":"/tmp/expect.txt","mode":644}', "application/json")),
                   ("file", ("file", b"small body\n", "application/octet-stream"))],
        )
        body = req.read()
        with socket.create_connection((sandpool.host, sandpool.port), timeout=10) as s:
            s.sendall(
                (f"POST {path} HTTP/1.1\r\nHost: {sandpool.domain}\r\n"
                 f"OPEN-SANDBOX-API-KEY: {sandpool.api_key}\r\n"
                 f"Content-Type: {req.headers['content-type']}\r\n"
                 f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").encode()
            )
            cont = _read_head(s)
            assert cont.startswith(b"HTTP/1.1 100"), cont
            s.sendall(body)
            final = _read_head(s)
        assert final.startswith(b"HTTP/1.1 200"), final
        assert sandbox.files.read_file("/tmp/expect.txt") == "small body\n"
    finally:
        sandbox.kill()


# --------------------------------------------------------------------------- 7


def test_private_e2b_traffic_needs_the_traffic_token(e2b_env: Sandpool):
    """``network={"allow_public_traffic": False}``: the sandbox's port 8000,
    reached through E2B's routing (headers or host), answers 403 without its
    ``trafficAccessToken``, with a wrong one, and with its envd token; it
    answers with the right one. Controls: a public sandbox's port answers
    without a token, and envd (its own token) keeps working on the private one."""
    from e2b import Sandbox as E2bSandbox

    sandpool = e2b_env
    private = E2bSandbox.create(POOL_NAME, timeout=120, network={"allow_public_traffic": False})
    public = E2bSandbox.create(POOL_NAME, timeout=120)
    try:
        reply = "HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
        server = f"n=0; while [ $n -lt 200 ]; do n=$((n+1)); printf '{reply}' | nc -l -p {ECHO_PORT}; done"
        for sbx in (private, public):
            sbx.commands.run(server, background=True)
        token = private.traffic_access_token
        assert token and token != private._envd_access_token, "a traffic token of its own"

        def get(sbx, headers=None, by_host=False) -> httpx.Response:
            route = ({"Host": f"{ECHO_PORT}-{sbx.sandbox_id}.{sandpool.domain}"} if by_host else
                     {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(ECHO_PORT)})
            with httpx.Client(base_url=sandpool.url, timeout=10) as c:
                deadline = time.monotonic() + 15
                while True:
                    r = c.get("/probe", headers={**route, **(headers or {})})
                    if r.status_code != 502 or time.monotonic() > deadline:
                        return r
                    time.sleep(0.2)  # until nc listens

        # control: the public sandbox answers anyone
        assert (get(public).status_code, get(public).text) == (200, "ok")
        # attack: no token, a wrong one, the envd token, the platform key
        for headers in ({}, {"e2b-traffic-access-token": "0" * 64},
                        {"e2b-traffic-access-token": private._envd_access_token},
                        {"X-API-Key": sandpool.api_key}):
            for by_host in (False, True):
                r = get(private, headers, by_host)
                assert r.status_code == 403, (headers, by_host, r.status_code, r.text)
                assert "e2b-traffic-access-token" in r.json()["message"]
        # the right token opens it, by header and by host
        for by_host in (False, True):
            r = get(private, {"e2b-traffic-access-token": token}, by_host)
            assert (r.status_code, r.text) == (200, "ok"), by_host
        # envd keeps its own token only, and GET reads the setting back
        assert private.commands.run("echo envd-ok").stdout.strip() == "envd-ok"
        with httpx.Client(base_url=sandpool.url, timeout=10, headers={"X-API-Key": sandpool.api_key}) as c:
            detail = c.get(f"/sandboxes/{private.sandbox_id}").json()
            assert detail["network"]["allowPublicTraffic"] is False, detail
            assert "allowPublicTraffic" not in c.get(f"/sandboxes/{public.sandbox_id}").json().get("network", {})
            assert "sandpool.io/private-traffic" not in detail["metadata"], "reserved metadata stays hidden"
    finally:
        _swallow_kill(private)
        _swallow_kill(public)


def _swallow_kill(sbx) -> None:
    try:
        sbx.kill()
    except Exception:  # noqa: BLE001 - cleanup of a test that already failed
        pass


# --------------------------------------------------------------------------- 8


def test_made_up_pool_names_never_become_metric_series(sandpool: Sandpool):
    """Creates naming pools that are no DNS label (a NUL byte, capitals, 64
    characters) or that don't exist (200 names, through both APIs) are
    refused with a 4xx and never appear as a pool label in ``/metrics``
    (every label names a pool that exists, or is ``-``). Control: the real
    pool's series are there, and a create from it works."""
    metrics_url = f"http://127.0.0.1:{sandpool.metrics_port}/metrics"
    made_up = ["a\u0000b", "Bad_Name", "x" * 64] + [f"nosuch-{i}" for i in range(200)]
    with sandpool.client() as c, httpx.Client(base_url=sandpool.url, headers={"X-API-Key": sandpool.api_key}, timeout=30) as e2b:
        for i, name in enumerate(made_up):
            body = {"image": {"uri": POOL_IMAGE}, "entrypoint": ["tail", "-f", "/dev/null"],
                    "resourceLimits": {"cpu": "1", "memory": "512Mi"}, "extensions": {"poolRef": name}}
            r = c.post("/v1/sandboxes", json=body) if i % 2 == 0 else e2b.post("/sandboxes", json={"templateID": name})
            assert 400 <= r.status_code < 500, (name[:20], r.status_code, r.text)
        control = _sandbox(sandpool)
        control.kill()
    text = httpx.get(metrics_url, timeout=10).text
    assert "\x00" not in text and "\\u0000" not in text and "\\x00" not in text
    assert "Bad_Name" not in text and "nosuch-" not in text and "x" * 64 not in text
    with sandpool.client() as c:
        pools = {p["name"] for p in c.get("/v1/pools").json()["items"]}
    labelled = set(re.findall(r'pool="([^"]*)"', text))
    # "-": the one label of every claim that named no existing pool
    assert labelled <= pools | {"-"}, sorted(labelled - pools)[:10]
    assert re.search(r'sandpool_claim_duration_seconds_count\{pool="-",outcome="error"\} \d+', text)
    assert POOL_NAME in labelled, "control: the real pool has series"
