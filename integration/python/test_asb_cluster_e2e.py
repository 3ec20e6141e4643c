"""Opt-in end to end on a real cluster, the one test that needs one.

With ``KUBECONFIG`` set it installs the chart with helm into a fresh namespace
(the agent-sandbox sandbox router on), applies a SandboxTemplate and a
SandboxWarmPool there, and runs the real ``k8s-agent-sandbox`` SDK's quick
start through its default route (``kubectl port-forward`` to
``sandbox-router-svc``): create a claim, run a command, write and read a file,
delete the sandbox. The release and namespace are removed at the end.
Without ``KUBECONFIG`` it is skipped (CI has no cluster; the controllers are
tested against the fake apiserver in ``services/controller/tests``).

Environment:
  KUBECONFIG                  the cluster (its current context); required
  SANDPOOL_E2E_IMAGE          sandpool image ``repository:tag`` for the
                              controller, router and runtime (default: the
                              chart's own, ghcr.io/sandpool/sandpool:<appVersion>)
  SANDPOOL_E2E_SANDBOX_IMAGE  image of the sandboxes (default python:3.12-slim;
                              it needs /bin/sh)
  SANDPOOL_E2E_RUNTIME_CLASS  runtimeClassName of the sandboxes (default none)
  SANDPOOL_HELM               helm binary (default .tools/bin/helm, installed by
                              scripts/k8s-check.sh, else helm on PATH)
  SANDPOOL_E2E_HELM_ARGS      extra helm install arguments, e.g.
                              ``--set crds.install=false`` when the cluster has
                              the CRDs already (helm will not adopt CRDs another
                              install made)
  kubectl on PATH             the SDK's tunnel runs it
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

if not os.environ.get("KUBECONFIG"):
    pytest.skip(
        "opt-in: set KUBECONFIG to run the chart + SDK quick start on a real cluster",
        allow_module_level=True,
    )

from kubernetes import client as k8s, config as k8s_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "sandpool"
ROUTER_NS = "agent-sandbox-system"
EXT = ("extensions.agents.x-k8s.io", "v1beta1")


def helm_bin() -> str:
    for cand in (os.environ.get("SANDPOOL_HELM"), str(REPO / ".tools" / "bin" / "helm")):
        if cand and Path(cand).is_file():
            return cand
    found = shutil.which("helm")
    if not found:
        pytest.fail("helm not found: set SANDPOOL_HELM or run scripts/k8s-check.sh once")
    return found


def run(*argv: str, timeout: float = 600) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def image_values() -> list[str]:
    image = os.environ.get("SANDPOOL_E2E_IMAGE")
    if not image:
        return []
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = image, "latest"
    out = []
    for key in ("controllerManager", "server", "runtime"):
        out += ["--set", f"{key}.image.repository={repo}", "--set", f"{key}.image.tag={tag}"]
    return out


def namespace_exists(core: k8s.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
        return True
    except k8s.ApiException as e:
        if e.status == 404:
            return False
        raise


def template(name: str) -> dict:
    spec: dict = {
        "containers": [{
            "name": "sandbox",
            "image": os.environ.get("SANDPOOL_E2E_SANDBOX_IMAGE", "python:3.12-slim"),
            "ports": [{"containerPort": 8888}],
        }],
    }
    if rc := os.environ.get("SANDPOOL_E2E_RUNTIME_CLASS"):
        spec["runtimeClassName"] = rc
    return {
        "apiVersion": "/".join(EXT), "kind": "SandboxTemplate",
        "metadata": {"name": name},
        "spec": {
            "service": True,
            # sandpool's runtime serves the SDK's API on 8888 (the image has none)
            "podTemplate": {"metadata": {"labels": {"sandpool.io/agent-sandbox-api": "true"}},
                            "spec": spec},
        },
    }


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """Replaces the suite's 120 s watchdog (conftest.py): a helm install with
    --wait takes longer; every step here has a timeout of its own."""
    yield


@pytest.fixture
def release():
    """The chart installed into a fresh namespace; removed afterwards."""
    k8s_config.load_kube_config()
    core = k8s.CoreV1Api()
    ns = f"sandpool-e2e-{uuid.uuid4().hex[:6]}"
    helm = helm_bin()
    args = [
        helm, "install", ns, str(CHART), "--namespace", ns, "--create-namespace",
        "--set", "agentSandbox.router.enabled=true",
        "--set", f"agentSandbox.router.createNamespace={str(not namespace_exists(core, ROUTER_NS)).lower()}",
        # the quick start needs the controllers and the router only
        "--set", "nodeAgent.enabled=false",
        "--set", "server.enabled=false",
        "--wait", "--timeout", "10m",
        *image_values(),
        *shlex.split(os.environ.get("SANDPOOL_E2E_HELM_ARGS", "")),
    ]
    try:
        run(*args, timeout=660)
        yield ns
    finally:
        subprocess.run([helm, "uninstall", ns, "--namespace", ns, "--wait"],
                       capture_output=True, timeout=300)
        subprocess.run(["kubectl", "delete", "namespace", ns, "--wait=false"],
                       capture_output=True, timeout=120)


def test_sdk_quick_start_on_a_real_cluster(release):
    from k8s_agent_sandbox import SandboxClient

    ns = release
    crs = k8s.CustomObjectsApi()
    crs.create_namespaced_custom_object(*EXT, ns, "sandboxtemplates", template("python-template"))
    crs.create_namespaced_custom_object(*EXT, ns, "sandboxwarmpools", {
        "apiVersion": "/".join(EXT), "kind": "SandboxWarmPool",
        "metadata": {"name": "python-pool"},
        "spec": {"replicas": 1, "sandboxTemplateRef": {"name": "python-template"}},
    })

    sdk = SandboxClient()  # the default route: port-forward to sandbox-router-svc
    sb = sdk.create_sandbox(warmpool="python-pool", namespace=ns, sandbox_ready_timeout=300)
    claim = sb.claim_name
    try:
        ran = sb.commands.run("echo hello from the cluster")
        assert ran.exit_code == 0, ran
        assert ran.stdout == "hello from the cluster\n"
        sb.files.write("notes.txt", "written by the SDK")
        assert sb.files.read("notes.txt").decode() == "written by the SDK"
        assert sb.files.exists("notes.txt")
    finally:
        sdk.delete_sandbox(claim, namespace=ns)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        left = crs.list_namespaced_custom_object(*EXT, ns, "sandboxclaims")["items"]
        if not any(c["metadata"]["name"] == claim for c in left):
            break
        time.sleep(1)
    else:
        pytest.fail(f"claim {claim} still there 120 s after the delete")
