"""E2B templates through the real e2b SDK (2.63): pools are templates, and
``Template.build`` builds one with buildah.

A loopback registry (Debian's ``docker-registry``) holds ``base:1``, busybox
with every applet, built here with ``umoci`` and pushed with ``skopeo`` (no
internet needed). A pool applied with ``sandpool pool apply --image
<registry>/base:1 --start-cmd …`` shows in ``GET /templates`` and
``GET /templates/{id}`` in E2B's exact models, and ``Sandbox.create`` of it
runs its start command. ``Template().from_image(<registry>/base:1)`` with a
``COPY``, ``RUN``, ``ENV`` and ``WORKDIR`` is built by ``Template.build``;
``Sandbox.create`` of its name then finds the RUN's file and the copied one.

Without the tools the tests skip, unless CI=true or
SANDPOOL_REQUIRE_CONTAINERD=1, where a missing tool fails them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from e2b import ConnectionConfig, Sandbox, Template
from e2b.api.client.api.templates import (
    get_templates,
    get_templates_aliases_alias,
    get_templates_template_id,
)
from e2b.api.client.models import Template as TemplateModel
from e2b.api.client.models import TemplateWithBuilds
from e2b.api.client_sync import get_api_client

from loopback_registry import REGISTRY_TOOLS, busybox_layout, push, require_tools, run, serve
from sandpool_platform import Sandpool, cli, pools

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a loopback registry holding ``base:1`` and ``gc:1``."""
    require_tools(*REGISTRY_TOOLS, "buildah")
    work = Path(tempfile.mkdtemp(prefix="sandpool-tmpl-"))
    try:
        with serve(work) as addr:
            layout = busybox_layout(work)
            # another image (its own digest) for `image gc` to remove
            run("umoci", "config", "--image", f"{layout}:base", "--tag", "gc", "--config.env", "GC=1")
            for tag in ("base", "gc"):
                push(layout, tag, f"{addr}/{tag}:1")
            yield addr
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_pool_of_any_image_is_an_e2b_template(e2b_env: Sandpool, registry: str):
    cli(e2b_env, "pool", "apply", "byo", "--image", f"{registry}/base:1",
                  "--start-cmd", "echo started > /tmp/started; exec sleep 100000",
                  "--env", "FROM_POOL=yes", "--cpu", "1", "--memory", "256Mi",
                  "--buffer-min", "0", "--buffer-max", "1")
    api = get_api_client(ConnectionConfig())
    listed = get_templates.sync_detailed(client=api)
    assert listed.status_code == 200, listed.content
    templates = {t.template_id: t for t in listed.parsed}
    assert all(isinstance(t, TemplateModel) for t in templates.values())
    byo = templates["byo"]
    assert (byo.cpu_count, byo.memory_mb, byo.aliases, byo.names) == (1, 256, ["byo"], ["byo"])
    assert byo.build_status.value == "ready"

    got = get_templates_template_id.sync_detailed("byo", client=api)
    assert got.status_code == 200, got.content
    assert isinstance(got.parsed, TemplateWithBuilds)
    assert [b.status.value for b in got.parsed.builds] == ["ready"]
    assert str(got.parsed.builds[0].build_id) == got.parsed.build_id
    alias = get_templates_aliases_alias.sync_detailed("byo", client=api)
    assert (alias.status_code, alias.parsed.template_id) == (200, "byo")
    assert get_templates_template_id.sync_detailed("no-such", client=api).status_code == 404

    sbx = Sandbox.create(template="byo", timeout=TIMEOUT_S)
    try:
        deadline = time.monotonic() + 30
        while True:
            r = sbx.commands.run("cat /tmp/started 2>/dev/null; echo $FROM_POOL", cwd="/")
            if r.stdout.split() == ["started", "yes"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.stdout.split() == ["started", "yes"], r
        # spawnCount and lastSpawnedAt count the template's live sandboxes
        during = get_templates_template_id.sync_detailed("byo", client=api).parsed
        assert during.spawn_count == 1 and during.last_spawned_at is not None
    finally:
        sbx.kill()


def test_template_build_from_a_registry_image(e2b_env: Sandpool, registry: str, tmp_path: Path):
    (tmp_path / "hello.txt").write_text("copied in\n")
    template = (
        Template(file_context_path=str(tmp_path))
        .from_image(f"{registry}/base:1")
        .copy("hello.txt", "/app/")
        .run_cmd("echo built by buildah > /built.txt")
        .set_envs({"GREETING": "hi there"})
        .set_workdir("/app")
    )
    logs: list[str] = []
    info = Template.build(template, "built-app", cpu_count=1, memory_mb=256,
                          on_build_logs=lambda e: logs.append(e.message))
    assert info.template_id == "built-app"
    assert any("step" in m for m in logs), logs

    api = get_api_client(ConnectionConfig())
    got = get_templates_template_id.sync_detailed("built-app", client=api)
    assert got.status_code == 200, got.content
    assert got.parsed.build_id == info.build_id
    assert (got.parsed.cpu_count, got.parsed.memory_mb) == (1, 256)

    sbx = Sandbox.create(template="built-app", timeout=TIMEOUT_S)
    try:
        r = sbx.commands.run("cat /built.txt /app/hello.txt; echo $GREETING", cwd="/")
        assert r.stdout.splitlines() == ["built by buildah", "copied in", "hi there"], r
    finally:
        sbx.kill()


def test_a_failing_run_step_fails_the_build_naming_it(e2b_env: Sandpool, registry: str):
    from e2b.exceptions import BuildException

    template = Template().from_image(f"{registry}/base:1").run_cmd("exit 7")
    with pytest.raises(BuildException) as e:
        Template.build(template, "broken-app")
    assert "RUN exit 7" in str(e.value), e.value
    api = get_api_client(ConnectionConfig())
    assert get_templates_template_id.sync_detailed("broken-app", client=api).status_code == 404


def _image_cli(sandpool: Sandpool, *args: str) -> str:
    return cli(sandpool, "image", *args, "--data-dir", str(sandpool.base_dir / "data"))


def test_image_gc_removes_only_old_unused_images(sandpool: Sandpool, registry: str):
    kept_ref, gone_ref = f"{registry}/base:1", f"{registry}/gc:1"
    cli(sandpool, "pool", "apply", "gc-keep", "--image", kept_ref,
                  "--buffer-min", "0", "--buffer-max", "0")
    _image_cli(sandpool, "pull", kept_ref)
    _image_cli(sandpool, "pull", gone_ref)

    def lines(out: str) -> dict[str, str]:
        return {cols[1]: cols[0] + (" " + cols[2] if cols[0] == "keep" else "")
                for cols in (line.split("\t") for line in out.splitlines())}

    # just pulled: kept under the default 24h
    plan = lines(_image_cli(sandpool, "gc", "--dry-run"))
    assert plan[gone_ref] == "keep recent", plan
    plan = lines(_image_cli(sandpool, "gc", "--dry-run", "--keep-unused-for", "0"))
    assert plan[gone_ref] == "would remove", plan
    assert plan[kept_ref] == "keep in use", plan
    assert plan["sandpool/busybox:latest"] == "keep builtin", plan
    assert gone_ref in _image_cli(sandpool, "list"), "a dry run removes nothing"

    done = lines(_image_cli(sandpool, "gc", "--keep-unused-for", "0"))
    assert done[gone_ref] == "removed", done
    listed = _image_cli(sandpool, "list")
    assert gone_ref not in listed and kept_ref in listed, listed


def test_pool_apply_pulls_an_absent_image_and_a_missing_one_says_why(e2b_env: Sandpool, registry: str):
    # a name the node has never stored (the same content as base:1)
    run("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{registry}/base:1", f"docker://{registry}/pooled:1")
    cli(e2b_env, "pool", "apply", "pulled", "--image", f"{registry}/pooled:1",
                  "--start-cmd", "exec sleep 100000", "--buffer-min", "1", "--buffer-max", "1")
    cli(e2b_env, "pool", "apply", "missing", "--image", f"{registry}/absent:1",
                  "--buffer-min", "1", "--buffer-max", "1")
    try:
        deadline = time.monotonic() + 60
        while True:
            listed = pools(e2b_env)
            pulled, missing = listed.get("pulled", {}), listed.get("missing", {})
            if pulled.get("available") == "1" and missing.get("image") == "failed":
                break
            assert time.monotonic() < deadline, f"pools after 60 s: {listed}"
            time.sleep(0.2)
        assert pulled["image"] == "ready", pulled
        assert "image not found in the registry" in missing["message"], missing
        assert f"{registry}/absent:1" in missing["message"], missing
        assert missing["total"] == "0", "nothing was created for the missing image"
    finally:
        for name in ("pulled", "missing"):
            cli(e2b_env, "pool", "delete", name)
