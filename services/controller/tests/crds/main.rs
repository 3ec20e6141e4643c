//! The generated CRDs: committed copies match the code, they pass the
//! structural-schema rules, and the seed examples (deploy/examples) deserialize
//! into our types and validate against the generated schemas the way a
//! strict apiserver would (schema + unknown fields refused).

mod gotmpl;
mod opensandbox;
mod run_upstream;
mod structural;
#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crds() -> Vec<Value> {
    sandpool_controller::crd::all_crds()
        .into_iter()
        .map(|c| serde_json::to_value(c).expect("crd json"))
        .collect()
}

#[test]
fn committed_crds_equal_the_generated_ones() {
    let dir = repo().join("deploy/helm/sandpool/files/crds");
    let mut want: Vec<String> = Vec::new();
    for (name, yaml) in sandpool_controller::crd_files() {
        let path = dir.join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p sandpool-controller --bin crdgen`",
                path.display()
            )
        });
        assert!(
            committed.ends_with(&yaml),
            "{} is stale; run `cargo run -p sandpool-controller --bin crdgen`",
            path.display()
        );
        want.push(name);
    }
    let mut have: Vec<String> = std::fs::read_dir(&dir)
        .expect("crd dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    have.sort();
    want.sort();
    assert_eq!(have, want, "no stray CRD files in the chart");
}

#[test]
fn crds_are_structural() {
    for crd in crds() {
        let problems = structural::check_crd(&crd);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd["metadata"]["name"]
        );
    }
}

#[test]
fn crds_have_status_columns_and_keep_policy() {
    let by_kind = |k: &str| {
        crds()
            .into_iter()
            .find(|c| c["spec"]["names"]["kind"] == k)
            .expect("crd")
    };
    let cols = |c: &Value| -> Vec<String> {
        c["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let b = by_kind("BatchSandbox");
    assert_eq!(
        cols(&b),
        [
            "DESIRED",
            "TOTAL",
            "ALLOCATED",
            "Ready",
            "TASK_RUNNING",
            "TASK_SUCCEED",
            "TASK_FAILED",
            "TASK_UNKNOWN",
            "EXPIRE",
            "AGE"
        ]
    );
    assert_eq!(
        cols(&by_kind("Pool")),
        ["TOTAL", "ALLOCATED", "AVAILABLE", "UPDATED", "AGE"]
    );
    for c in crds() {
        let kind = c["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if kind != "SandboxTemplate" {
            assert!(
                c["spec"]["versions"][0]["subresources"]["status"].is_object(),
                "{kind} has a status subresource"
            );
        }
        assert_eq!(
            c["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{kind}: helm uninstall keeps user data"
        );
    }
    assert!(by_kind("SandboxWarmPool")["spec"]["versions"][0]["subresources"]["scale"].is_object());
}

/// OpenAPI v3 (Kubernetes flavour) -> JSON Schema: `nullable` becomes a null type.
fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                out.insert(k.clone(), to_json_schema(x));
            }
            if m.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = m.get("type")
            {
                out.insert("type".into(), serde_json::json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// Fields the schema does not declare (where it does not preserve unknown
/// fields): a strict apiserver refuses them (`kubectl apply` default).
fn unknown_fields(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
                && schema.get("properties").is_none()
            {
                return;
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let preserve =
                schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (k, x) in m {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => unknown_fields(s, x, &format!("{path}.{k}"), out),
                    None => match schema.get("additionalProperties") {
                        Some(s @ Value::Object(_)) => {
                            unknown_fields(s, x, &format!("{path}.{k}"), out)
                        }
                        _ if preserve => {}
                        _ if path.is_empty()
                            && ["apiVersion", "kind", "metadata"].contains(&k.as_str()) => {}
                        _ => out.push(format!("{path}.{k}: unknown field")),
                    },
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter().enumerate() {
                    unknown_fields(items, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The apiserver drops `null` values of fields whose schema is not
/// `nullable` before validating.
fn drop_non_nullable_nulls(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            m.retain(|k, x| {
                let s = props.and_then(|p| p.get(k));
                !(x.is_null() && s.is_some_and(|s| s.get("nullable") != Some(&Value::Bool(true))))
            });
            for (k, x) in m.iter_mut() {
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    drop_non_nullable_nulls(s, x);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                a.iter_mut().for_each(|x| drop_non_nullable_nulls(items, x));
            }
        }
        _ => {}
    }
}

/// Validate a custom resource like the apiserver: its CRD's schema, plus no unknown fields.
fn validate(obj: &Value) -> Result<(), Vec<String>> {
    let (api_version, kind) = (
        obj["apiVersion"].as_str().unwrap_or_default(),
        obj["kind"].as_str().unwrap_or_default(),
    );
    let crd = crds()
        .into_iter()
        .find(|c| {
            c["spec"]["names"]["kind"] == kind
                && api_version.starts_with(c["spec"]["group"].as_str().unwrap_or("?"))
        })
        .ok_or_else(|| vec![format!("no CRD for {api_version} {kind}")])?;
    let version = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| {
            v["served"] == true
                && api_version.strip_prefix(crd["spec"]["group"].as_str().unwrap_or("?"))
                    == Some(&format!("/{}", v["name"].as_str().unwrap_or("?")))
        })
        .ok_or_else(|| vec![format!("version {api_version} not served")])?;
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut obj = obj.clone();
    drop_non_nullable_nulls(schema, &mut obj);
    let obj = &obj;
    let validator = jsonschema::validator_for(&to_json_schema(schema))
        .map_err(|e| vec![format!("schema: {e}")])?;
    let mut errs: Vec<String> = validator
        .iter_errors(obj)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect();
    unknown_fields(schema, obj, "", &mut errs);
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn examples(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read example");
        let v: Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        out.push((f, v));
    }
    out
}

fn deserialize(v: &Value) -> Result<(), String> {
    use sandpool_controller::crd::*;
    let r = match v["kind"].as_str() {
        Some("Pool") => serde_json::from_value::<Pool>(v.clone()).map(|_| ()),
        Some("BatchSandbox") => serde_json::from_value::<BatchSandbox>(v.clone()).map(|_| ()),
        Some("SandboxSnapshot") => serde_json::from_value::<SandboxSnapshot>(v.clone()).map(|_| ()),
        Some("Sandbox") => serde_json::from_value::<Sandbox>(v.clone()).map(|_| ()),
        Some("SandboxTemplate") => serde_json::from_value::<SandboxTemplate>(v.clone()).map(|_| ()),
        Some("SandboxClaim") => serde_json::from_value::<SandboxClaim>(v.clone()).map(|_| ()),
        Some("SandboxWarmPool") => serde_json::from_value::<SandboxWarmPool>(v.clone()).map(|_| ()),
        other => return Err(format!("unexpected kind {other:?}")),
    };
    r.map_err(|e| e.to_string())
}

#[test]
fn seed_examples_deserialize_and_validate() {
    let dir = repo().join("deploy/examples");
    let all = [examples(&dir), examples(&dir.join("legacy"))].concat();
    let kinds: std::collections::BTreeSet<String> = all
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "BatchSandbox",
            "Pool",
            "SandboxClaim",
            "SandboxTemplate",
            "SandboxWarmPool"
        ],
        "every seed kind is covered"
    );
    assert!(all.len() >= 10, "{} examples", all.len());
    for (path, v) in &all {
        deserialize(v).unwrap_or_else(|e| panic!("{}: does not deserialize: {e}", path.display()));
        validate(v)
            .unwrap_or_else(|e| panic!("{}: refused by the CRD schema: {e:#?}", path.display()));
    }
    // the tasks example carries its shard patches through
    let (_, tasks) = all
        .iter()
        .find(|(p, _)| p.ends_with("batchsandbox-task-batch-sandbox.yaml"))
        .expect("task example");
    let b: sandpool_controller::crd::BatchSandbox =
        serde_json::from_value(tasks.clone()).expect("batch");
    assert_eq!(b.spec.shard_task_patches.len(), 2);
    assert_eq!(b.spec.pool_ref.as_deref(), Some("task-example-pool"));
    // the legacy pool maps onto a capacity spec and a template
    let (_, legacy) = all
        .iter()
        .find(|(p, _)| p.ends_with("legacy/pool-example-pool.yaml"))
        .expect("legacy pool");
    let p: sandpool_controller::crd::Pool = serde_json::from_value(legacy.clone()).expect("pool");
    let cap = p.spec.capacity().expect("capacity");
    assert_eq!((cap.buffer_min, cap.buffer_max, cap.pool_max), (2, 5, 10));
    assert_eq!(
        p.spec
            .pod_template()
            .and_then(|t| t.spec)
            .map(|s| s.containers[0].image.clone()),
        Some(Some("ubuntu:latest".into()))
    );
}

#[test]
fn bad_resources_are_refused_with_the_field_named() {
    let pool = |spec: Value| serde_json::json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool", "metadata": {"name": "x"}, "spec": spec});
    let tmpl = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let cases = [
        (
            pool(
                serde_json::json!({"template": tmpl, "capacitySpec": {"bufferMin": "two", "bufferMax": 1, "poolMin": 0, "poolMax": 1}}),
            ),
            "bufferMin",
        ),
        (
            pool(
                serde_json::json!({"template": tmpl, "capacitySpec": {"bufferMin": 0, "bufferMax": 1, "poolMin": 0, "poolMax": -1}}),
            ),
            "poolMax",
        ),
        (
            pool(
                serde_json::json!({"template": tmpl, "capacitySpec": {"bufferMin": 0, "bufferMax": 1, "poolMin": 0, "poolMax": 1}, "bogus": 1}),
            ),
            "bogus",
        ),
        (
            pool(
                serde_json::json!({"template": tmpl, "capacitySpec": {"bufferMin": 0, "bufferMax": 1, "poolMin": 0, "poolMax": 1}, "recycleStrategy": {"type": "Reuse"}}),
            ),
            "recycleStrategy",
        ),
        (
            serde_json::json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox", "metadata": {"name": "b"}, "spec": {"replicas": -1}}),
            "replicas",
        ),
        (
            serde_json::json!({"apiVersion": "extensions.agents.x-k8s.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": "c"}, "spec": {}}),
            "sandboxTemplateRef",
        ),
    ];
    for (obj, field) in cases {
        let errs = validate(&obj).expect_err(field);
        assert!(errs.iter().any(|e| e.contains(field)), "{field}: {errs:#?}");
    }
}

#[test]
fn agent_sandbox_kinds_store_v1beta1_and_serve_v1alpha1_deprecated() {
    for kind in [
        "Sandbox",
        "SandboxTemplate",
        "SandboxClaim",
        "SandboxWarmPool",
    ] {
        let crd = crds()
            .into_iter()
            .find(|c| c["spec"]["names"]["kind"] == kind)
            .expect("crd");
        let versions = crd["spec"]["versions"].as_array().expect("versions");
        let names: Vec<&str> = versions.iter().filter_map(|v| v["name"].as_str()).collect();
        assert_eq!(names, ["v1beta1", "v1alpha1"], "{kind}");
        let (beta, alpha) = (&versions[0], &versions[1]);
        assert_eq!(
            (beta["served"].clone(), beta["storage"].clone()),
            (true.into(), true.into()),
            "{kind}"
        );
        assert_eq!(
            (alpha["served"].clone(), alpha["storage"].clone()),
            (true.into(), false.into()),
            "{kind}"
        );
        assert_eq!(alpha["deprecated"], true, "{kind}");
        assert!(
            alpha["deprecationWarning"]
                .as_str()
                .is_some_and(|w| w.contains("v1beta1") && w.contains(kind)),
            "{kind}: {}",
            alpha["deprecationWarning"]
        );
        // no conversion webhook: strategy None only works if no field is
        // pruned going between versions, so both declare the same fields
        let props = |v: &Value| v["schema"]["openAPIV3Schema"]["properties"].clone();
        let (mut a, mut b) = (props(alpha), props(beta));
        for s in [&mut a, &mut b] {
            if let Some(spec) = s["spec"].as_object_mut() {
                spec.remove("required");
                spec.remove("anyOf");
            }
        }
        assert_eq!(a, b, "{kind}: v1alpha1 and v1beta1 schemas differ");
        assert_eq!(
            crd["spec"]["conversion"]["strategy"]
                .as_str()
                .unwrap_or("None"),
            "None"
        );
        if kind == "Sandbox" {
            assert_eq!(
                alpha["subresources"]["scale"],
                serde_json::json!({"specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}),
                "v1alpha1 Sandbox scales by replicas, as upstream"
            );
        }
    }
}

#[test]
fn claims_need_a_warm_pool_or_a_template_per_version() {
    let claim = |version: &str, spec: Value| {
        serde_json::json!({"apiVersion": format!("extensions.agents.x-k8s.io/{version}"),
            "kind": "SandboxClaim", "metadata": {"name": "c"}, "spec": spec})
    };
    let pool = serde_json::json!({"warmPoolRef": {"name": "p"}});
    let tmpl = serde_json::json!({"sandboxTemplateRef": {"name": "t"}});
    assert_eq!(validate(&claim("v1beta1", pool.clone())), Ok(()));
    assert_eq!(validate(&claim("v1beta1", tmpl.clone())), Ok(()));
    assert!(validate(&claim("v1beta1", serde_json::json!({}))).is_err());
    // upstream's v1alpha1 required sandboxTemplateRef
    assert_eq!(validate(&claim("v1alpha1", tmpl)), Ok(()));
    let errs = validate(&claim("v1alpha1", pool)).expect_err("v1alpha1 without template");
    assert!(
        errs.iter().any(|e| e.contains("sandboxTemplateRef")),
        "{errs:#?}"
    );
    // enums are upstream's
    let sb = |spec: Value| {
        serde_json::json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
            "metadata": {"name": "s"}, "spec": spec})
    };
    let pt = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(
        validate(&sb(
            serde_json::json!({"podTemplate": pt, "operatingMode": "Suspended", "service": true, "shutdownPolicy": "Retain"})
        )),
        Ok(())
    );
    for (bad, field) in [
        (
            serde_json::json!({"podTemplate": pt, "operatingMode": "Paused"}),
            "operatingMode",
        ),
        (
            serde_json::json!({"podTemplate": pt, "replicas": 2}),
            "replicas",
        ),
        (
            serde_json::json!({"podTemplate": pt, "shutdownPolicy": "Keep"}),
            "shutdownPolicy",
        ),
    ] {
        let errs = validate(&sb(bad)).expect_err(field);
        assert!(errs.iter().any(|e| e.contains(field)), "{field}: {errs:#?}");
    }
}

/// Upstream agent-sandbox's example manifests (v0.5.x, one file per example,
/// stored outside the repo as reference data). Files that are templates
/// for clusterloader2 (`{{ ... }}`) are not YAML until rendered.
fn upstream_examples_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SANDPOOL_AGENT_SANDBOX_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/reference/upstream/agent-sandbox/examples"));
    dir.is_dir().then_some(dir)
}

/// The YAML parser reads `0400` (YAML 1.1 octal, as kubectl reads it) as a
/// float; make integral floats integers (`256`) as kubectl would send them.
fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            if f.fract() == 0.0 {
                // digits that were octal in YAML 1.1
                let digits = format!("{f:.0}");
                let i = i64::from_str_radix(&digits, 8).unwrap_or(f as i64);
                *v = Value::from(i);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_numbers),
        Value::Object(m) => m.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

#[test]
fn upstream_agent_sandbox_examples_validate_unchanged() {
    let Some(dir) = upstream_examples_dir() else {
        eprintln!("SKIP: no upstream agent-sandbox examples (set SANDPOOL_AGENT_SANDBOX_EXAMPLES)");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let (mut checked, mut templated) = (0, 0);
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        // clusterloader2 and Python str.format templates; kustomize patches (partial objects)
        if text.contains("{{") || text.contains("{image_") || name.contains("__patch-") {
            templated += 1;
            continue;
        }
        for doc in text.split("\n---").filter(|d| !d.trim().is_empty()) {
            let Ok(mut v) = serde_saphyr::from_str::<Value>(doc) else {
                panic!("{}: not YAML", f.display());
            };
            integral_numbers(&mut v);
            let api_version = v["apiVersion"].as_str().unwrap_or_default();
            if !api_version.contains("agents.x-k8s.io/") {
                continue;
            }
            deserialize(&v)
                .unwrap_or_else(|e| panic!("{}: does not deserialize: {e}", f.display()));
            validate(&v)
                .unwrap_or_else(|e| panic!("{}: refused by the CRD schema: {e:#?}", f.display()));
            checked += 1;
        }
    }
    eprintln!("{checked} upstream resources validated, {templated} template/patch files skipped");
    assert!(checked >= 80, "{checked} resources");
}
