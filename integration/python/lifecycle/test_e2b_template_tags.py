"""E2B template tags through the real e2b SDK (2.63): ``Template.build`` with
``tags``, then ``Template.get_tags``, ``assign_tags``, ``remove_tags`` and
``exists`` against ``sandpool serve``, the template built by buildah from a
busybox image in a loopback registry (see test_e2b_templates.py).

Without the tools the tests skip, unless CI=true or
SANDPOOL_REQUIRE_CONTAINERD=1, where a missing tool fails them.
"""

from __future__ import annotations


import pytest
from e2b import Sandbox, Template
from e2b.exceptions import TemplateException

from loopback_registry import busybox_base_registry
from sandpool_platform import Sandpool


@pytest.fixture(scope="module")
def registry():
    """``host:port`` of a loopback registry holding ``base:1`` (busybox)."""
    yield from busybox_base_registry("sandpool-tags-")


def _tags(name: str) -> dict[str, str]:
    return {t.tag: t.build_id for t in Template.get_tags(name)}


def test_tags_are_assigned_listed_and_removed(e2b_env: Sandpool, registry: str):
    template = Template().from_image(f"{registry}/base:1").run_cmd("echo tagged > /tagged")
    info = Template.build(template, "tagged-app", tags=["v1"], cpu_count=1, memory_mb=256)
    assert Template.exists("tagged-app")
    assert not Template.exists("no-such-template")
    assert _tags("tagged-app") == {"v1": info.build_id}

    assigned = Template.assign_tags("tagged-app:v1", ["prod", "stable"])
    assert (assigned.build_id, assigned.tags) == (info.build_id, ["prod", "stable"])
    assert _tags("tagged-app") == {t: info.build_id for t in ("v1", "prod", "stable")}

    # a sandbox of name:tag runs the build with that tag; an unknown tag is refused
    sbx = Sandbox.create(template="tagged-app:prod", timeout=120)
    try:
        assert sbx.commands.run("cat /tagged", cwd="/").stdout.strip() == "tagged"
    finally:
        sbx.kill()
    with pytest.raises(Exception) as e:
        Sandbox.create(template="tagged-app:nope", timeout=120)
    assert "tag nope of template tagged-app" in str(e.value), e.value

    Template.remove_tags("tagged-app", "stable")
    assert _tags("tagged-app") == {"v1": info.build_id, "prod": info.build_id}

    # a tag the template does not have, and a template that does not exist
    with pytest.raises(TemplateException):
        Template.assign_tags("tagged-app:nope", "x")
    with pytest.raises(TemplateException):
        Template.get_tags("no-such-template")
