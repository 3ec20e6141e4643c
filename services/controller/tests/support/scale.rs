//! The scale subresource (`.../<name>/scale`) of custom resources whose CRD
//! declares `subresources.scale`, as the apiserver serves it: an
//! `autoscaling/v1` Scale read from the object at the CRD's
//! `specReplicasPath`, `statusReplicasPath` and `labelSelectorPath`; GET,
//! PUT (a Scale, conditional on its resourceVersion when it carries one) and
//! PATCH (merge or JSON patch of the Scale) write `spec.replicas` only.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Store, json_patch, rules, status};

/// The paths of one version's scale subresource.
#[derive(Clone, Debug)]
pub struct ScalePaths {
    spec: String,
    status: String,
    selector: Option<String>,
}

/// (group, version, plural) -> its scale paths.
pub type Scales = BTreeMap<(String, String, String), ScalePaths>;

pub fn scales_of(
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
) -> Scales {
    let mut out = Scales::new();
    for crd in crds {
        for v in &crd.spec.versions {
            let Some(s) = v.subresources.as_ref().and_then(|s| s.scale.as_ref()) else {
                continue;
            };
            let key = (
                crd.spec.group.clone(),
                v.name.clone(),
                crd.spec.names.plural.clone(),
            );
            let paths = ScalePaths {
                spec: s.spec_replicas_path.clone(),
                status: s.status_replicas_path.clone(),
                selector: s.label_selector_path.clone(),
            };
            out.insert(key, paths);
        }
    }
    out
}

/// `.spec.replicas` as a JSON pointer.
fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

fn paths_for<'a>(scales: &'a Scales, coll: &str) -> Option<&'a ScalePaths> {
    let segs: Vec<&str> = coll.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["apis", group, version, "namespaces", _, plural] => {
            scales.get(&(group.to_string(), version.to_string(), plural.to_string()))
        }
        _ => None,
    }
}

/// The Scale of `obj`.
fn scale_of(obj: &Value, paths: &ScalePaths) -> Value {
    let m = &obj["metadata"];
    let mut scale = json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"]},
        "spec": {"replicas": obj.pointer(&pointer(&paths.spec)).cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer(&pointer(&paths.status)).cloned().unwrap_or(json!(0))},
    });
    if let Some(sel) = paths
        .selector
        .as_ref()
        .and_then(|p| obj.pointer(&pointer(p)))
    {
        scale["status"]["selector"] = sel.clone();
    }
    scale
}

/// Serve `method` on the scale subresource of `coll`/`name`.
pub fn serve(
    store: &mut Store,
    method: &http::Method,
    coll: &str,
    name: &str,
    ct: &str,
    body: Value,
) -> (u16, Value) {
    let Some(paths) = paths_for(&store.scales, coll).cloned() else {
        return (
            404,
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let Some(cur) = store.get(coll, name).cloned() else {
        return (
            404,
            status(404, "NotFound", &format!("\"{name}\" not found")),
        );
    };
    let current = scale_of(&cur, &paths);
    let wanted = match *method {
        http::Method::GET => return (200, current),
        http::Method::PUT => body,
        http::Method::PATCH if ct.contains("json-patch") => {
            let mut s = current.clone();
            let ops = body.as_array().cloned().unwrap_or_default();
            if let Err(e) = json_patch(&mut s, &ops) {
                return (422, status(422, "Invalid", &e));
            }
            s
        }
        http::Method::PATCH => {
            let mut s = current.clone();
            sandpool_core::batch::merge_patch(&mut s, &body);
            s
        }
        _ => return (405, status(405, "MethodNotAllowed", "not supported")),
    };
    let rv = &wanted["metadata"]["resourceVersion"];
    if !rv.is_null() && rv != "" && *rv != cur["metadata"]["resourceVersion"] {
        return (409, status(409, "Conflict", "the object has been modified"));
    }
    let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return (
            422,
            status(
                422,
                "Invalid",
                "spec.replicas: a non-negative integer is required",
            ),
        );
    };
    let mut obj = cur.clone();
    let Some(slot) = obj.pointer_mut(&pointer(&paths.spec)) else {
        return (
            422,
            status(422, "Invalid", "no specReplicasPath in the object"),
        );
    };
    *slot = json!(replicas);
    if let Err(e) = rules::apply_write_rules(plural_of(coll), None, &cur, &mut obj) {
        return rules::invalid(&e);
    }
    let out = store.replace(coll, name, obj);
    (200, scale_of(&out, &paths))
}

fn plural_of(coll: &str) -> &str {
    coll.rsplit('/').next().unwrap_or_default()
}
