//! Pruning of unknown fields and defaulting from a CRD's structural schema,
//! as the apiserver applies them to every custom resource it stores. Generic:
//! it reads whatever `openAPIV3Schema` the CRDs given to
//! [`super::FakeApi::enforce_schemas`] carry.

use std::collections::BTreeMap;

use serde_json::Value;

/// (group, version, plural) -> the version's openAPIV3Schema.
pub type Schemas = BTreeMap<(String, String, String), Value>;

pub fn schemas_of(
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
) -> Schemas {
    let mut out = Schemas::new();
    for crd in crds {
        for v in &crd.spec.versions {
            let Some(s) = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
            else {
                continue;
            };
            let key = (
                crd.spec.group.clone(),
                v.name.clone(),
                crd.spec.names.plural.clone(),
            );
            out.insert(key, serde_json::to_value(s).unwrap_or_default());
        }
    }
    out
}

/// The schema for objects of collection path `coll`
/// (`/apis/<group>/<version>/namespaces/<ns>/<plural>`).
pub fn schema_for<'a>(schemas: &'a Schemas, coll: &str) -> Option<&'a Value> {
    let segs: Vec<&str> = coll.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["apis", group, version, "namespaces", _, plural, ..] => {
            schemas.get(&(group.to_string(), version.to_string(), plural.to_string()))
        }
        _ => None,
    }
}

/// Drop the fields `schema` does not declare (unless it preserves unknown
/// fields), then fill absent fields that have a `default`. At the root (and in
/// embedded resources) `apiVersion`, `kind` and `metadata` are kept as they are.
pub fn prune_and_default(schema: &Value, obj: &mut Value, root: bool) {
    match obj {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            let embedded = root || schema["x-kubernetes-embedded-resource"] == true;
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                match (sub, map.get_mut(&k)) {
                    (Some(s), Some(v)) => prune_and_default(s, v, false),
                    (None, _) if preserve => {}
                    (None, _) => {
                        map.remove(&k);
                    }
                    _ => {}
                }
            }
            for (k, s) in props.into_iter().flatten() {
                if let Some(d) = s.get("default")
                    && map.get(k).is_none_or(Value::is_null)
                    && !(map.get(k).is_some_and(Value::is_null) && s["nullable"] == true)
                {
                    let mut d = d.clone();
                    prune_and_default(s, &mut d, false);
                    map.insert(k.clone(), d);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for v in items {
                    prune_and_default(s, v, false);
                }
            }
        }
        _ => {}
    }
}
