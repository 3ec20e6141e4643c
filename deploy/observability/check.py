#!/usr/bin/env python3
"""Offline checks of deploy/observability (no Grafana, Prometheus or collector needed).

grafana-dashboard.json:
  - uid, title, schemaVersion; the DS_PROMETHEUS / tempo datasource variables
    and the multi/includeAll `pool` variable;
  - every panel (rows included) has a unique id and a sane gridPos (no
    overlaps); every non-row panel and every query has a datasource that is
    one of the datasource variables;
  - every `sandpool_*` metric in a query exists in sandpool (telemetry/src/
    metrics.rs), with its labels and label values; metrics with a `pool`
    label are filtered by `pool=~"$pool"`; every `$variable` is defined.
otel-collector.yaml (needs PyYAML; skipped with a notice without it):
  - every pipeline's receivers, processors and exporters (and the service's
    extensions) are defined; traces and metrics pipelines exist, each with
    memory_limiter first and batch.

Run: .venv-k8s/bin/python deploy/observability/check.py   (scripts/k8s-check.sh does)
Exits 1 with one line per problem.
"""

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana-dashboard.json"
COLLECTOR = HERE / "otel-collector.yaml"

# Exposed names (prometheus-client, prefix sandpool_, OpenMetrics counters get
# _total) -> labels, with the allowed values where the set is closed.
# Source of truth: telemetry/src/metrics.rs.
METRICS = {
    "sandpool_claim_duration_seconds": {"pool": None, "outcome": {"warm", "cold", "error", "exhausted"}},
    "sandpool_pool_sandboxes": {"pool": None, "state": {"total", "allocated", "available"}},
    "sandpool_pool_refills_total": {"pool": None},
    "sandpool_exec_duration_seconds": {"api": {"execd", "grpc", "envd"}},
    "sandpool_errors_total": {"service": None, "kind": None},
    "sandpool_reconciles_total": {"controller": None, "result": None},
    "sandpool_http_requests_total": {"service": None, "code": {"1xx", "2xx", "3xx", "4xx", "5xx"}},
}
HISTOGRAMS = {"sandpool_claim_duration_seconds", "sandpool_exec_duration_seconds"}
DATASOURCE_VARS = {"DS_PROMETHEUS": "prometheus", "tempo": "tempo"}

errors = []


def fail(msg):
    errors.append(msg)


# --------------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------------

METRIC_RE = re.compile(r"\bsandpool_[a-z_]+")
MATCHER_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


def base_name(name):
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)], suffix
    return name, ""


def selector_after(expr, end):
    """The `{...}` label selector right after a metric name ending at `end`, or None."""
    i = end
    while i < len(expr) and expr[i].isspace():
        i += 1
    if i >= len(expr) or expr[i] != "{":
        return None
    depth, j = 0, i
    while j < len(expr):
        if expr[j] == '"':  # skip string
            j += 1
            while j < len(expr) and expr[j] != '"':
                j += 2 if expr[j] == "\\" else 1
        elif expr[j] == "{":
            depth += 1
        elif expr[j] == "}":
            depth -= 1
            if depth == 0:
                return expr[i + 1 : j]
        j += 1
    return None


def check_promql(where, expr):
    if not expr.strip():
        fail(f"{where}: empty expression")
        return
    found = False
    for m in METRIC_RE.finditer(expr):
        found = True
        name = m.group(0)
        base, suffix = base_name(name)
        if base not in METRICS:
            fail(f"{where}: unknown metric {name!r} (base {base!r}); known: {', '.join(sorted(METRICS))}")
            continue
        if base in HISTOGRAMS and not suffix:
            fail(f"{where}: histogram {base} used without _bucket/_count/_sum")
        labels = METRICS[base]
        sel = selector_after(expr, m.end())
        matchers = []
        if sel is not None:
            pos, text = 0, sel.strip()
            while pos < len(text):
                mm = MATCHER_RE.match(text, pos)
                if not mm:
                    fail(f"{where}: cannot parse label selector {{{sel}}} of {name}")
                    break
                matchers.append(mm.groups())
                pos = mm.end()
        allowed = set(labels) | ({"le"} if suffix == "_bucket" else set()) | {"job", "instance", "namespace", "pod", "component"}
        for label, op, value in matchers:
            if label not in allowed:
                fail(f"{where}: {name} has no label {label!r} (labels: {', '.join(sorted(labels))})")
                continue
            closed = labels.get(label)
            if closed and "$" not in value:
                values = value.split("|") if op in ("=~", "!~") and re.fullmatch(r"[a-z0-9_|]+", value) else [value]
                if op in ("=~", "!~") and not re.fullmatch(r"[a-z0-9_|]+", value):
                    continue  # a real regex: not checked
                for v in values:
                    if v not in closed:
                        fail(f"{where}: {name}{{{label}{op}{value!r}}}: {v!r} is not one of {sorted(closed)}")
        if "pool" in labels and ("pool", "=~", "$pool") not in matchers:
            fail(f'{where}: {name} has a pool label but is not filtered by pool=~"$pool"')
    if not found:
        fail(f"{where}: no sandpool_ metric in {expr!r}")


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def check_dashboard():
    try:
        d = json.loads(DASHBOARD.read_text())
    except (OSError, ValueError) as e:
        fail(f"{DASHBOARD.name}: cannot load: {e}")
        return 0
    if d.get("uid") != "sandpool-claims":
        fail(f"dashboard uid is {d.get('uid')!r}, want 'sandpool-claims'")
    if d.get("title") != "sandpool: claims and pools":
        fail(f"dashboard title is {d.get('title')!r}, want 'sandpool: claims and pools'")
    if d.get("schemaVersion") != 39:
        fail(f"dashboard schemaVersion is {d.get('schemaVersion')!r}, want 39")

    # variables
    variables = {v.get("name"): v for v in (d.get("templating") or {}).get("list") or []}
    for name, plugin in DATASOURCE_VARS.items():
        v = variables.get(name)
        if not v or v.get("type") != "datasource" or v.get("query") != plugin:
            fail(f"templating: need a datasource variable {name!r} with query {plugin!r}, got {v!r}")
    pool = variables.get("pool")
    if not pool:
        fail("templating: no `pool` variable")
    else:
        q = pool.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q != "label_values(sandpool_pool_sandboxes, pool)":
            fail(f"templating: pool query is {q!r}")
        if not (pool.get("multi") and pool.get("includeAll")):
            fail("templating: pool must be multi-value with includeAll")
        if (pool.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
            fail("templating: pool must query ${DS_PROMETHEUS}")
        check_template_query("templating pool", q)
    builtin_ok = lambda n: n.startswith("__")  # $__range, $__rate_interval, ${__data...}, ...

    # panels
    panels = list(all_panels(d.get("panels") or []))
    if not panels:
        fail("dashboard has no panels")
    ids, boxes, n_queries = {}, [], 0
    ds_uids = {f"${{{n}}}": t for n, t in DATASOURCE_VARS.items()}
    for p in panels:
        pid = p.get("id")
        title = p.get("title") or "<untitled>"
        where = f"panel {pid} {title!r}"
        if not isinstance(pid, int):
            fail(f"{where}: id must be an integer")
        elif pid in ids:
            fail(f"{where}: duplicate id (also {ids[pid]!r})")
        else:
            ids[pid] = title
        gp = p.get("gridPos")
        if not isinstance(gp, dict) or not all(isinstance(gp.get(k), int) for k in "xywh"):
            fail(f"{where}: gridPos needs integer x, y, w, h (got {gp!r})")
        elif gp["x"] < 0 or gp["y"] < 0 or gp["w"] < 1 or gp["h"] < 1 or gp["x"] + gp["w"] > 24:
            fail(f"{where}: gridPos {gp} outside the 24-column grid")
        else:
            for other, og in boxes:
                if (gp["x"] < og["x"] + og["w"] and og["x"] < gp["x"] + gp["w"]
                        and gp["y"] < og["y"] + og["h"] and og["y"] < gp["y"] + gp["h"]):
                    fail(f"{where}: gridPos {gp} overlaps {other} {og}")
            boxes.append((where, gp))
        if p.get("type") == "row":
            continue
        ds = p.get("datasource")
        if not isinstance(ds, dict) or ds.get("uid") not in ds_uids:
            fail(f"{where}: datasource must be one of {sorted(ds_uids)}, got {ds!r}")
            continue
        if ds.get("type") != ds_uids[ds["uid"]]:
            fail(f"{where}: datasource {ds['uid']} has type {ds.get('type')!r}, want {ds_uids[ds['uid']]!r}")
        targets = p.get("targets") or []
        if not targets:
            fail(f"{where}: no queries")
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids) or None in refids:
            fail(f"{where}: refIds must be present and unique: {refids}")
        for t in targets:
            n_queries += 1
            tw = f"{where} query {t.get('refId')}"
            tds = t.get("datasource", ds)
            if tds != ds:
                fail(f"{tw}: datasource {tds!r} differs from the panel's {ds!r}")
            if ds["uid"] == "${DS_PROMETHEUS}":
                check_promql(tw, t.get("expr") or "")
            else:
                if t.get("queryType") != "traceql" or not (t.get("query") or "").strip():
                    fail(f"{tw}: need a non-empty TraceQL query (queryType traceql)")
        if p.get("type") == "traces" and ds["uid"] != "${tempo}":
            fail(f"{where}: a traces panel must use ${{tempo}}")
        # every $variable referenced by the panel is defined
        for s in strings(p):
            for m in VAR_RE.finditer(s):
                name = m.group(1) or m.group(2)
                if not builtin_ok(name) and name not in variables:
                    fail(f"{where}: references undefined variable ${name} in {s!r}")
        rep = p.get("repeat")
        if rep and rep not in variables:
            fail(f"{where}: repeats over undefined variable {rep!r}")
    types = {p.get("type") for p in panels}
    for want in ("timeseries", "stat", "table", "traces"):
        if want not in types:
            fail(f"dashboard has no {want} panel")
    return len(panels), n_queries


def check_template_query(where, q):
    for m in METRIC_RE.finditer(q or ""):
        base, _ = base_name(m.group(0))
        if base not in METRICS:
            fail(f"{where}: unknown metric {m.group(0)!r}")


# --------------------------------------------------------------------------------
# collector
# --------------------------------------------------------------------------------

def check_collector():
    try:
        import yaml
    except ImportError:
        print(f"check.py: SKIPPED {COLLECTOR.name} (PyYAML not installed; use .venv-k8s/bin/python)", file=sys.stderr)
        return None
    try:
        c = yaml.safe_load(COLLECTOR.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"{COLLECTOR.name}: cannot load: {e}")
        return None
    if not isinstance(c, dict):
        fail(f"{COLLECTOR.name}: not a mapping")
        return None
    service = c.get("service") or {}
    pipelines = service.get("pipelines") or {}
    for want in ("traces", "metrics"):
        if not any(p == want or p.startswith(want + "/") for p in pipelines):
            fail(f"collector: no {want} pipeline")
    for ext in service.get("extensions") or []:
        if ext not in (c.get("extensions") or {}):
            fail(f"collector: service.extensions uses {ext!r}, not defined under extensions:")
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for pname, p in pipelines.items():
        p = p or {}
        for kind in ("receivers", "processors", "exporters"):
            defined = c.get(kind) or {}
            for comp in p.get(kind) or []:
                used[kind].add(comp)
                if comp not in defined:
                    fail(f"collector: pipeline {pname} uses {kind[:-1]} {comp!r}, not defined under {kind}: "
                         f"(defined: {', '.join(defined) or 'none'})")
        if not p.get("receivers") or not p.get("exporters"):
            fail(f"collector: pipeline {pname} needs at least one receiver and one exporter")
        procs = p.get("processors") or []
        if procs and procs[0].split("/")[0] != "memory_limiter":
            fail(f"collector: pipeline {pname}: memory_limiter must be the first processor (got {procs})")
        if not any(x.split("/")[0] == "batch" for x in procs):
            fail(f"collector: pipeline {pname} has no batch processor")
    for kind, names in used.items():
        for comp in (c.get(kind) or {}):
            if comp not in names:
                fail(f"collector: {kind[:-1]} {comp!r} is defined but used by no pipeline")
    # the prometheus receiver's scrape jobs must be named uniquely
    prom = (c.get("receivers") or {}).get("prometheus") or {}
    jobs = [j.get("job_name") for j in ((prom.get("config") or {}).get("scrape_configs") or [])]
    if "prometheus" in used["receivers"]:
        if not jobs or None in jobs or len(set(jobs)) != len(jobs):
            fail(f"collector: prometheus receiver needs uniquely named scrape jobs (got {jobs})")
    return pipelines


def main():
    n_panels, n_queries = check_dashboard() or (0, 0)
    pipelines = check_collector()
    if errors:
        for e in errors:
            print(f"check.py: FAIL {e}", file=sys.stderr)
        print(f"check.py: {len(errors)} problem(s) in deploy/observability", file=sys.stderr)
        return 1
    print(f"{DASHBOARD.name}: ok ({n_panels} panels, {n_queries} queries, metrics known: {len(METRICS)})")
    if pipelines is not None:
        desc = "; ".join(
            f"{n}: {'+'.join(p['receivers'])} -> {'+'.join(p.get('processors') or [])} -> {'+'.join(p['exporters'])}"
            for n, p in pipelines.items())
        print(f"{COLLECTOR.name}: ok ({desc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
