"""Observability of one claim, end to end with the real SDK.

An OTLP/gRPC receiver runs in this process; ``sandpool serve`` and the
runtimes inside its sandboxes export to it (``OTEL_EXPORTER_OTLP_ENDPOINT``;
the node agent points sandboxes at the node bridge). One ``SandboxSync.create``
carrying a W3C ``traceparent`` must come back as a single trace with spans of
the gateway, the scheduler, the node agent and the runtime; a pause and a
resume each one trace through the gRPC server spans of every hop; and ``/metrics``
must show the claim in the latency histogram.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from opensandbox import SandboxSync
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import sandpool_platform
from sandpool_platform import POOL_NAME


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every exported span as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        with self.lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        self.spans.append({
                            "service": service,
                            "name": sp.name,
                            "trace_id": sp.trace_id.hex(),
                            "span_id": sp.span_id.hex(),
                            "parent_id": sp.parent_span_id.hex(),
                        })
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(r, server)
    # all interfaces: the runtimes inside sandboxes reach it over the bridge
    port = server.add_insecure_port("0.0.0.0:0")
    server.start()
    r.port = port
    yield r
    server.stop(grace=None)


@pytest.fixture(scope="module")
def traced_platform(receiver, request: pytest.FixtureRequest):
    failed_before = request.session.testsfailed
    binary, runtime_bin = sandpool_platform.check_prerequisites()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    platform = sandpool_platform.start(binary, runtime_bin, extra_env=env)
    yield platform
    sandpool_platform.stop(platform, keep_log=request.session.testsfailed > failed_before)


def _wait_pool_warm(platform, minimum: int = 1, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with platform.client() as c:
        while time.monotonic() < deadline:
            r = c.get(f"/v1/pools/{POOL_NAME}")
            if r.status_code == 200 and r.json().get("status", {}).get("available", 0) >= minimum:
                return
            time.sleep(0.2)
    pytest.fail(f"pool {POOL_NAME} did not warm up")


def _whole_trace(receiver, trace_id: str, parent_id: str, want: set[str], timeout: float = 20.0) -> list[dict]:
    """The spans of `trace_id` once every name in `want` is among them and they
    form one tree: every span's parent is in the trace, or is the caller's
    span `parent_id`. Spans are exported in batches as they end (a parent
    ends after its children), so both are awaited, not checked once."""
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.of_trace(trace_id)
        missing = want - {s["name"] for s in spans}
        ids = {s["span_id"] for s in spans} | {parent_id}
        orphans = [s for s in spans if s["parent_id"] not in ids]
        if not missing and not orphans:
            return spans
        assert time.monotonic() < deadline, (
            f"trace {trace_id} after {timeout}s: missing {sorted(missing)}, spans outside the tree {orphans}; "
            f"got {sorted({s['name'] for s in spans})}"
        )
        time.sleep(0.2)


def test_one_sdk_create_is_one_trace_across_all_services(traced_platform, receiver):
    _wait_pool_warm(traced_platform)
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    cfg = traced_platform.config(headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    sb = SandboxSync.create("busybox", connection_config=cfg, extensions={"poolRef": POOL_NAME}, entrypoint=["sleep", "600"])
    try:
        # gateway, scheduler, node agent and runtime hops, as one tree
        want = {"gateway.request", "claim", "scheduler.assign", "scheduler.inject", "node_agent.rpc", "runtime.request", "runtime.inject"}
        spans = _whole_trace(receiver, trace_id, parent_id, want)
        # the runtime's span came from inside the sandbox, over the bridge
        assert any(s["service"] == "sandpool-runtime" for s in spans), {s["service"] for s in spans}
        # and nothing of this claim went to another trace
        other = [s for s in receiver.spans if s["name"] == "claim" and s["trace_id"] != trace_id and s["parent_id"] == ""]
        assert not other, other
    finally:
        sb.kill()


def test_pause_and_resume_are_traced_through_every_grpc_hop(traced_platform, receiver):
    """Every gRPC call runs in a server span named after its method that
    continues the caller's trace: a pause and a resume through the SDK each
    come back as one tree from the gateway through the scheduler to the node
    agent."""
    _wait_pool_warm(traced_platform)
    sb = SandboxSync.create("busybox", connection_config=traced_platform.config(), extensions={"poolRef": POOL_NAME}, entrypoint=["sleep", "600"])
    try:
        for action, scheduler_rpc, agent_rpc in (("pause", "PauseClaim", "Pause"), ("resume", "ResumeClaim", "Resume")):
            trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
            cfg = traced_platform.config(headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
            if action == "pause":
                SandboxSync.connect(sb.id, connection_config=cfg).pause()
            else:
                SandboxSync.resume(sb.id, connection_config=cfg)
            spans = _whole_trace(receiver, trace_id, parent_id, {
                "gateway.request",
                f"/sandpool.v1.Scheduler/{scheduler_rpc}",
                f"/sandpool.v1.NodeAgent/{agent_rpc}",
                "node_agent.rpc",
            })
            by_id = {s["span_id"]: s for s in spans}
            agent = next(s for s in spans if s["name"] == f"/sandpool.v1.NodeAgent/{agent_rpc}")
            # the node agent's server span hangs under the scheduler's
            chain, cur = [], agent
            while cur["parent_id"] in by_id:
                cur = by_id[cur["parent_id"]]
                chain.append(cur["name"])
            assert f"/sandpool.v1.Scheduler/{scheduler_rpc}" in chain and "gateway.request" in chain, f"{action}: {chain}"
    finally:
        sb.kill()


def test_metrics_expose_the_claim_histogram(traced_platform):
    metrics = httpx.get(f"http://{traced_platform.host}:{traced_platform.metrics_port}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("application/openmetrics-text")
    text = metrics.text
    m = re.search(rf'^sandpool_claim_duration_seconds_count\{{pool="{POOL_NAME}",outcome="warm"\}} (\d+)$', text, re.M)
    assert m and int(m.group(1)) >= 1, text[:2000]
    assert re.search(rf'^sandpool_pool_sandboxes\{{pool="{POOL_NAME}",state="total"\}} \d+$', text, re.M), "pool gauges"
    assert re.search(rf'^sandpool_pool_refills_total\{{pool="{POOL_NAME}"\}} [1-9]\d*$', text, re.M), "refills counted"
    assert re.search(r'^sandpool_http_requests_total\{service="gateway",code="2xx"\} [1-9]\d*$', text, re.M)
    # a bad request is counted as an error by kind
    with traced_platform.client() as c:
        assert c.get("/v1/sandboxes/does-not-exist").status_code == 404
    text = httpx.get(f"http://{traced_platform.host}:{traced_platform.metrics_port}/metrics", timeout=10).text
    assert re.search(r'^sandpool_errors_total\{service="gateway",kind="[a-z_]+"\} [1-9]\d*$', text, re.M), text[-1500:]
