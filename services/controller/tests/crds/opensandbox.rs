//! OpenSandbox `Pool` and `BatchSandbox`: our own fixtures (every upstream
//! field, `fixtures/`) and, where the reference copy exists on this machine,
//! every upstream sample and e2e testdata file, validate unchanged against
//! the generated CRDs; the field sets and printer columns match upstream's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::gotmpl::{Vars, render};
use super::{crds, deserialize, integral_numbers, repo, validate};

/// Upstream's OpenSandbox CRDs, samples and e2e testdata (reference data
/// kept outside the repository; absent in a clean clone).
pub(super) fn upstream_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SANDPOOL_OPENSANDBOX_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/reference/upstream/opensandbox"));
    dir.join("crds").is_dir().then_some(dir)
}

pub(super) fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    files
}

pub(super) fn docs(text: &str, what: &str) -> Vec<Value> {
    text.split("\n---")
        .filter(|d| {
            !d.trim().is_empty()
                && d.lines()
                    .any(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        })
        .map(|d| {
            let mut v: Value =
                serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("{what}: not YAML: {e}"));
            integral_numbers(&mut v);
            v
        })
        .collect()
}

/// Deserializes into our types and passes the CRD schema (strict fields).
fn check(v: &Value, what: &str) {
    deserialize(v).unwrap_or_else(|e| panic!("{what}: does not deserialize: {e}"));
    validate(v).unwrap_or_else(|e| panic!("{what}: refused by the CRD schema: {e:#?}"));
}

pub(super) fn is_ours(v: &Value) -> bool {
    v["apiVersion"] == "sandbox.opensandbox.io/v1alpha1"
        && matches!(
            v["kind"].as_str(),
            Some("Pool" | "BatchSandbox" | "SandboxSnapshot")
        )
}

/// The renderings of an e2e testdata template: every optional part off,
/// then on, and each value the e2e suite passes for enums.
pub(super) fn renderings() -> Vec<Vars> {
    let mut base = Vars::default();
    for (k, v) in [
        ("Namespace", "e2e"),
        ("PoolName", "pool-a"),
        ("BatchSandboxName", "batch-a"),
        ("SandboxName", "sbx-a"),
        ("SnapshotName", "snap-a"),
        ("SandboxImage", "busybox:1.36"),
        ("TaskExecutorImage", "task-executor:dev"),
        ("BufferMax", "3"),
        ("BufferMin", "1"),
        ("PoolMax", "5"),
        ("PoolMin", "0"),
        ("Replicas", "2"),
        ("MaxUnavailable", "1"),
        ("RecycleType", "Delete"),
        ("ExpireTime", "2030-01-02T03:04:05Z"),
    ] {
        base.scalars.insert(k.into(), v.into());
    }
    let mut full = base.clone();
    full.scalars
        .insert("Command".into(), r#"["sleep", "3600"]"#.into());
    full.scalars.insert("EnvValue".into(), "v2".into());
    full.scalars.insert("MaxUnavailable".into(), "25%".into());
    full.scalars.insert(
        "AffinityYAML".into(),
        r#" {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}"#.into(),
    );
    for (m, k, v) in [
        ("Labels", "team", "a"),
        ("NodeSelector", "kubernetes.io/os", "linux"),
        ("Resources", "cpu", "250m"),
    ] {
        full.maps
            .insert(m.into(), [(k.to_string(), v.to_string())].into());
    }
    let mut out = vec![base, full.clone()];
    for t in ["Restart", "Noop"] {
        let mut r = full.clone();
        r.scalars.insert("RecycleType".into(), t.into());
        out.push(r);
    }
    out
}

#[test]
fn upstream_opensandbox_samples_and_testdata_validate_unchanged() {
    let Some(dir) = upstream_dir() else {
        eprintln!(
            "SKIP: no upstream OpenSandbox reference copy (../shared/reference/upstream/opensandbox; \
             set SANDPOOL_OPENSANDBOX_REFERENCE); the fixtures test covers every upstream field"
        );
        return;
    };
    let (mut checked, mut files, mut other_kinds) = (0, 0, BTreeSet::new());
    for sub in ["samples", "examples"] {
        for f in yaml_files(&dir.join(sub)) {
            let text = std::fs::read_to_string(&f).expect("read");
            let what = f.display().to_string();
            let texts: Vec<String> = if text.contains("{{") {
                renderings()
                    .iter()
                    .map(|vars| render(&text, vars).unwrap_or_else(|e| panic!("{what}: {e}")))
                    .collect()
            } else {
                vec![text]
            };
            files += 1;
            for t in texts {
                for v in docs(&t, &what) {
                    if !is_ours(&v) {
                        other_kinds.insert(format!("{} {}", v["apiVersion"], v["kind"]));
                        continue;
                    }
                    check(&v, &format!("{what}\n{t}"));
                    checked += 1;
                }
            }
        }
    }
    eprintln!(
        "{checked} upstream Pool/BatchSandbox/SandboxSnapshot renderings validated from {files} files; other kinds left out: {other_kinds:?}"
    );
    assert!(files >= 20, "{files} files");
    assert!(checked >= 60, "{checked} resources");
}

/// Every property path (`spec.x.y`, `status.z`) a CRD schema declares, and
/// the paths it requires.
fn paths(schema: &Value, prefix: &str, out: &mut BTreeSet<String>, req: &mut BTreeSet<String>) {
    for r in schema["required"].as_array().into_iter().flatten() {
        req.insert(format!("{prefix}{}", r.as_str().unwrap_or_default()));
    }
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (k, s) in props {
        let p = format!("{prefix}{k}");
        out.insert(p.clone());
        let inner = if s["type"] == "array" { &s["items"] } else { s };
        paths(inner, &format!("{p}."), out, req);
    }
}

fn schema_of(crd: &Value) -> Value {
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn ours(kind: &str) -> Value {
    crds()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .expect("crd")
}

fn columns(crd: &Value) -> Vec<(String, String, i64)> {
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["jsonPath"].as_str().unwrap_or_default().to_string(),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn field_sets_and_columns_match_the_upstream_crds() {
    let Some(dir) = upstream_dir() else {
        eprintln!("SKIP: no upstream OpenSandbox reference copy (see above)");
        return;
    };
    for (kind, file) in [
        ("Pool", "sandbox.opensandbox.io_pools.yaml"),
        ("BatchSandbox", "sandbox.opensandbox.io_batchsandboxes.yaml"),
        (
            "SandboxSnapshot",
            "sandbox.opensandbox.io_sandboxsnapshots.yaml",
        ),
    ] {
        let text = std::fs::read_to_string(dir.join("crds").join(file)).expect("upstream crd");
        let up = docs(&text, file).remove(0);
        let ours = ours(kind);
        let (mut want, mut want_req, mut have, mut have_req) = Default::default();
        paths(&schema_of(&up), "", &mut want, &mut want_req);
        paths(&schema_of(&ours), "", &mut have, &mut have_req);
        // apiVersion, kind and metadata are the apiserver's own
        let missing: Vec<_> = want.difference(&have).filter(|p| p.contains('.')).collect();
        assert!(
            missing.is_empty(),
            "{kind}: fields upstream has and we lack: {missing:#?}"
        );
        // a status field upstream requires is one we always write; spec
        // requirements on upstream's fields must not be stricter than its own
        // (our deprecated fields are not upstream's)
        let stricter: Vec<_> = have_req
            .iter()
            .filter(|r| r.starts_with("spec.") && want.contains(*r) && !want_req.contains(*r))
            .collect();
        assert!(
            stricter.is_empty(),
            "{kind}: required here only: {stricter:#?}"
        );
        assert_eq!(columns(&ours), columns(&up), "{kind}: printer columns");
    }
}

/// Our own fixtures (written for sandpool, not copied): every upstream
/// Pool and BatchSandbox field, spec and status.
#[test]
fn fixtures_with_every_upstream_field_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crds/fixtures");
    let mut seen = BTreeSet::new();
    let mut n = 0;
    for f in yaml_files(&dir) {
        let text = std::fs::read_to_string(&f).expect("read");
        for v in docs(&text, &f.display().to_string()) {
            check(&v, &f.display().to_string());
            let mut p = BTreeSet::new();
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            // the object's own paths, as `paths` lists a schema's
            fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
                if let Value::Object(m) = v {
                    for (k, x) in m {
                        let p = format!("{prefix}{k}");
                        out.insert(p.clone());
                        match x {
                            Value::Array(a) => {
                                a.iter().for_each(|i| walk(i, &format!("{p}."), out))
                            }
                            x => walk(x, &format!("{p}."), out),
                        }
                    }
                }
            }
            walk(&v, "", &mut p);
            seen.extend(p.into_iter().map(|p| format!("{kind} {p}")));
            n += 1;
        }
    }
    assert!(n >= 4, "{n} fixtures");
    // upstream's field set (from its CRDs), each set by some fixture
    let upstream = [
        "Pool spec.template",
        "Pool spec.capacitySpec.bufferMax",
        "Pool spec.capacitySpec.bufferMin",
        "Pool spec.capacitySpec.poolMax",
        "Pool spec.capacitySpec.poolMin",
        "Pool spec.recycleStrategy.type",
        "Pool spec.scaleStrategy.maxUnavailable",
        "Pool spec.updateStrategy.maxUnavailable",
        "Pool status.allocated",
        "Pool status.available",
        "Pool status.observedGeneration",
        "Pool status.revision",
        "Pool status.total",
        "Pool status.updated",
        "BatchSandbox spec.expireTime",
        "BatchSandbox spec.pause",
        "BatchSandbox spec.poolRef",
        "BatchSandbox spec.replicas",
        "BatchSandbox spec.shardPatches",
        "BatchSandbox spec.shardTaskPatches",
        "BatchSandbox spec.taskResourcePolicyWhenCompleted",
        "BatchSandbox spec.taskTemplate",
        "BatchSandbox spec.template",
        "BatchSandbox status.allocated",
        "BatchSandbox status.conditions",
        "BatchSandbox status.observedGeneration",
        "BatchSandbox status.pauseObservedGeneration",
        "BatchSandbox status.phase",
        "BatchSandbox status.ready",
        "BatchSandbox status.replicas",
        "BatchSandbox status.taskFailed",
        "BatchSandbox status.taskPending",
        "BatchSandbox status.taskRunning",
        "BatchSandbox status.taskSucceed",
        "BatchSandbox status.taskUnknown",
        "SandboxSnapshot spec.sandboxName",
        "SandboxSnapshot status.conditions",
        "SandboxSnapshot status.containers",
        "SandboxSnapshot status.observedGeneration",
        "SandboxSnapshot status.phase",
        "SandboxSnapshot status.sourceNodeName",
        "SandboxSnapshot status.sourcePodName",
    ];
    let missing: Vec<_> = upstream.iter().filter(|f| !seen.contains(**f)).collect();
    assert!(missing.is_empty(), "fixtures lack {missing:#?}");
}

#[test]
fn upstream_shapes_refused_before_are_accepted() {
    let pool = |spec: Value| {
        serde_json::json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "Pool",
            "metadata": {"name": "p"}, "spec": spec})
    };
    let cap = serde_json::json!({"bufferMin": 0, "bufferMax": 0, "poolMin": 0, "poolMax": 0});
    // poolMax 0, and a template the CRD does not look into
    assert_eq!(
        validate(&pool(
            serde_json::json!({"capacitySpec": cap, "template": {"spec": {}}})
        )),
        Ok(())
    );
    // capacitySpec is required (or the deprecated capacity)
    let errs = validate(&pool(serde_json::json!({"template": {}}))).expect_err("no capacity");
    assert!(errs.iter().any(|e| e.starts_with("/spec:")), "{errs:#?}");
    assert_eq!(
        validate(&pool(
            serde_json::json!({"capacity": 3, "minBufferSize": 1, "template": {}})
        )),
        Ok(())
    );
    // enums
    for (bad, field) in [
        (
            pool(serde_json::json!({"capacitySpec": cap, "recycleStrategy": {"type": "Reuse"}})),
            "type",
        ),
        (
            serde_json::json!({"apiVersion": "sandbox.opensandbox.io/v1alpha1", "kind": "BatchSandbox",
                "metadata": {"name": "b"}, "spec": {"replicas": 1, "taskResourcePolicyWhenCompleted": "Keep"}}),
            "taskResourcePolicyWhenCompleted",
        ),
    ] {
        let errs = validate(&bad).expect_err(field);
        assert!(
            errs.iter()
                .any(|e| e.contains(field) || e.contains("Reuse")),
            "{field}: {errs:#?}"
        );
    }
}
