//! OpenSandbox `shardPatches`: shard `i` of a BatchSandbox made from its
//! `template` gets `shardPatches[i]` applied to its pod as a strategic merge
//! patch (upstream's semantics; shards past the list get the plain
//! template, patches past `replicas` are unused). The patch goes onto the
//! template before sandpool wraps the pod around its runtime, so it cannot
//! undo the runtime's command, token or mount.
//!
//! A pooled batch (`poolRef`) takes pods its Pool already made; upstream
//! ignores `shardPatches` there, sandpool reports it (`UnsupportedField`).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

use crate::crd::BatchSandboxSpec;
use crate::error::{Error, Result};

/// The patches of `spec.shardPatches` (absent or `null`: none); anything but
/// a list is invalid.
fn patches<'a>(spec: &'a BatchSandboxSpec, name: &str) -> Result<&'a [Value]> {
    match &spec.shard_patches {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(Error::invalid(
            "BatchSandbox",
            name,
            "spec.shardPatches must be a list of patches (one per shard)",
        )),
    }
}

/// The pod template of shard `index`: `template` with `shardPatches[index]`
/// applied. A patch that is not an object, that the strategic merge refuses,
/// or that leaves no valid pod template is an `InvalidSpec` error naming it.
pub fn template(
    spec: &BatchSandboxSpec,
    name: &str,
    template: &PodTemplateSpec,
    index: usize,
) -> Result<PodTemplateSpec> {
    let Some(patch) = patches(spec, name)?.get(index) else {
        return Ok(template.clone());
    };
    let invalid = |why: String| {
        Error::invalid(
            "BatchSandbox",
            name,
            format!("spec.shardPatches[{index}]: {why}"),
        )
    };
    let mut pod = serde_json::to_value(template)?;
    sandpool_core::strategic::merge_pod(&mut pod, patch).map_err(|e| invalid(e.to_string()))?;
    serde_json::from_value(pod).map_err(|e| invalid(format!("the patched pod is invalid: {e}")))
}

/// Check every patch before any pod is made, so a bad one creates nothing.
pub fn validate(spec: &BatchSandboxSpec, name: &str, t: &PodTemplateSpec) -> Result<()> {
    for i in 0..patches(spec, name)?.len() {
        template(spec, name, t, i)?;
    }
    Ok(())
}

/// Why `shardPatches` is not honoured for this batch (a pooled one).
pub fn unsupported(spec: &BatchSandboxSpec) -> Option<&'static str> {
    let set = spec
        .shard_patches
        .as_ref()
        .is_some_and(|p| !p.is_null() && p.as_array().is_none_or(|a| !a.is_empty()));
    (set && spec.pool_ref.is_some()).then_some(
        "spec.shardPatches with spec.poolRef (the pool's pods are already made; \
         shardPatches applies to pods made from spec.template)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> BatchSandboxSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn tpl() -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                "env": [{"name": "SHARD", "value": "none"}]}]}}))
        .expect("template")
    }

    #[test]
    fn each_shard_gets_its_patch_and_later_shards_the_template() {
        let s = spec(json!({"replicas": 3, "shardPatches": [
            {"metadata": {"labels": {"shard": "0"}}},
            {"spec": {"containers": [{"name": "c", "env": [{"name": "SHARD", "value": "1"}]}]}}
        ]}));
        let t0 = template(&s, "b", &tpl(), 0).expect("0");
        let labels = t0.metadata.and_then(|m| m.labels).unwrap_or_default();
        assert_eq!(labels.get("shard").map(String::as_str), Some("0"));
        assert_eq!(labels.get("app").map(String::as_str), Some("x"));
        let t1 = template(&s, "b", &tpl(), 1).expect("1");
        let c = &t1.spec.expect("spec").containers[0];
        assert_eq!(c.image.as_deref(), Some("busybox"));
        let env = c.env.clone().unwrap_or_default();
        assert_eq!((env.len(), env[0].value.as_deref()), (1, Some("1")));
        assert_eq!(template(&s, "b", &tpl(), 2).expect("2"), tpl());
    }

    #[test]
    fn invalid_patches_name_the_shard() {
        let msg = |v: Value| {
            let s = spec(v);
            validate(&s, "b", &tpl()).expect_err("invalid").to_string()
        };
        let m = msg(json!({"shardPatches": [{}, "not-an-object"]}));
        assert!(m.contains("spec.shardPatches[1]"), "{m}");
        let m = msg(json!({"shardPatches": [{"spec": {"containers": "c"}}]}));
        assert!(
            m.contains("spec.shardPatches[0]") && m.contains("invalid"),
            "{m}"
        );
        let m = msg(json!({"shardPatches": {"0": {}}}));
        assert!(m.contains("must be a list"), "{m}");
        assert!(validate(&spec(json!({"shardPatches": null})), "b", &tpl()).is_ok());
    }

    #[test]
    fn pooled_batches_report_shard_patches() {
        let pooled = spec(json!({"poolRef": "p", "shardPatches": [{}]}));
        assert!(unsupported(&pooled).is_some());
        assert!(unsupported(&spec(json!({"poolRef": "p", "shardPatches": []}))).is_none());
        assert!(unsupported(&spec(json!({"shardPatches": [{}]}))).is_none());
    }
}
