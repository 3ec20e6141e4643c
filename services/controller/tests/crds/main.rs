//! The generated CRDs: committed copies match the code, they pass the
//! structural-schema rules, and the seed examples (deploy/examples) deserialize
//! into our types and validate against the generated schemas the way a
//! strict apiserver would (schema + unknown fields refused).

mod structural;

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
            "READY",
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
        ["TOTAL", "ALLOCATED", "AVAILABLE", "AGE"]
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
    let version = &crd["spec"]["versions"][0];
    if !api_version.ends_with(version["name"].as_str().unwrap_or("?")) {
        return Err(vec![format!("version {api_version} not served")]);
    }
    let schema = &version["schema"]["openAPIV3Schema"];
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
                serde_json::json!({"template": tmpl, "capacitySpec": {"bufferMin": 0, "bufferMax": 1, "poolMin": 0, "poolMax": 0}}),
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
            pool(serde_json::json!({"template": {"spec": {"containers": []}}})),
            "containers",
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
