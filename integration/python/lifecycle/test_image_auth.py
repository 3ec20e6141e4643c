"""OpenSandbox ``image.auth`` on create, through the real SDK and the wire.

A registry (Debian's ``docker-registry``) with htpasswd basic auth runs on a
loopback port; an image built with ``umoci`` is pushed to it with ``skopeo``
under the registry's credentials. A create of that (absent) image with
``image.auth`` pulls it with those credentials and runs a command in it;
the credentials are never returned by GET, written to the platform's log,
nor stored in its data directory. Wrong credentials fail quickly with an
error naming ``unauthorized``. Skipped without the tools unless
SANDPOOL_REQUIRE_CONTAINERD=1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from opensandbox import SandboxSync
from opensandbox.models.sandboxes import SandboxImageAuth, SandboxImageSpec

from sandpool_platform import Sandpool
from loopback_registry import REGISTRY_TOOLS, push, require_tools, run, serve
from test_image_pull import _build_image

USER, PASSWORD = "ann", "s3cret-img-auth-0815"
WRONG = "wr0ng-img-auth-4711"


@pytest.fixture(scope="module")
def private_registry():
    """``host:port`` of a loopback registry behind basic auth holding
    ``private:1`` and ``private:2``."""
    require_tools(*REGISTRY_TOOLS, "htpasswd")
    work = Path(tempfile.mkdtemp(prefix="sandpool-regauth-"))
    htpasswd = work / "htpasswd"
    htpasswd.write_text(run("htpasswd", "-Bbn", USER, PASSWORD))
    try:
        with serve(work, htpasswd) as addr:
            layout = _build_image(work)
            for tag in ("private:1", "private:2"):
                push(layout, "app", f"{addr}/{tag}", creds=f"{USER}:{PASSWORD}")
            yield addr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _create(sandpool: Sandpool, uri: str, password: str) -> SandboxSync:
    image = SandboxImageSpec(uri, auth=SandboxImageAuth(username=USER, password=password))
    return SandboxSync.create(image, connection_config=sandpool.config(),
                              timeout=timedelta(minutes=5), ready_timeout=timedelta(seconds=90))


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    """Regular files under ``root`` (up to 64 MiB each; sandbox root
    filesystems left out) that contain ``needle``."""
    found = []
    for top, dirs, files in os.walk(root):  # errors (files going away) are skipped
        dirs[:] = [d for d in dirs if "snapshotter" not in d]
        for name in files:
            p = Path(top) / name
            try:
                if p.is_symlink() or not p.is_file() or p.stat().st_size > 64 << 20:
                    continue
                if needle in p.read_bytes():
                    found.append(p)
            except OSError:
                continue
    return found


def test_a_cold_create_pulls_a_private_image_with_image_auth(sandpool: Sandpool, private_registry: str):
    uri = f"{private_registry}/private:1"
    sandbox = _create(sandpool, uri, PASSWORD)
    try:
        assert sandbox.commands.run("cat /marker").text == "from the registry"
        with sandpool.client() as c:
            got = c.get(f"/v1/sandboxes/{sandbox.id}")
            assert got.status_code == 200, got.text
            assert got.json()["image"] == {"uri": uri}, "GET returns no credentials"
            listed = c.get("/v1/sandboxes")
            assert PASSWORD not in listed.text
    finally:
        sandbox.kill()
    assert PASSWORD not in sandpool.log_path.read_text(errors="replace"), "never logged"
    assert _files_holding(sandpool.base_dir / "data", PASSWORD.encode()) == [], "never stored"


def test_wrong_image_auth_fails_quickly_naming_unauthorized(sandpool: Sandpool, private_registry: str):
    uri = f"{private_registry}/private:2"
    t0 = time.monotonic()
    with sandpool.client() as c:
        r = c.post("/v1/sandboxes", json={
            "image": {"uri": uri, "auth": {"username": USER, "password": WRONG}},
            "timeout": 600, "resourceLimits": {}, "entrypoint": ["tail", "-f", "/dev/null"],
        })
    assert time.monotonic() - t0 < 30, "a clear error within bounded time"
    assert r.status_code >= 400, r.text
    body = r.json()
    assert "unauthorized" in body["message"], body
    assert uri in body["message"], body
    assert WRONG not in r.text
    # the same through the SDK: its exception carries the message
    with pytest.raises(Exception) as err:
        _create(sandpool, uri, WRONG)
    assert "unauthorized" in str(err.value), err.value
    assert WRONG not in sandpool.log_path.read_text(errors="replace"), "never logged"


def test_image_auth_without_a_password_is_refused(sandpool: Sandpool, private_registry: str):
    with sandpool.client() as c:
        r = c.post("/v1/sandboxes", json={
            "image": {"uri": f"{private_registry}/private:2", "auth": {"username": USER}},
            "entrypoint": ["tail", "-f", "/dev/null"],
        })
    assert r.status_code == 400, r.text
    assert "image.auth.password" in r.json()["message"]
