//! Kubernetes strategic merge patch over a pod (a `Pod` or a
//! `PodTemplateSpec` as JSON): what upstream OpenSandbox applies for a
//! BatchSandbox's `shardPatches`.
//!
//! Maps merge key by key and `null` deletes a key, as in a JSON merge patch
//! (RFC 7386); lists differ: the pod's keyed lists (containers by `name`,
//! their `env` by `name`, `ports` by `containerPort`, `volumeMounts` by
//! `mountPath`, volumes by `name`, …, the `patchMergeKey`s of core/v1) merge
//! item by item, `metadata.finalizers` is a set, and every other list is
//! replaced. The directives `$patch` (`merge`, `replace`, `delete`),
//! `$retainKeys` and `$deleteFromPrimitiveList/<field>` are honoured; any
//! other `$` key (e.g. `$setElementOrder`) is refused rather than ignored.
//!
//! No crate in the lock file does this: `k8s-openapi`'s `DeepMerge` merges
//! typed values by server-side-apply list keys, cannot delete, and knows no
//! directives; `json-patch`'s merge replaces every list.

use serde_json::{Map, Value};

use crate::CoreError;

/// How a list field of a pod merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    /// Items are objects merged by this key (`patchStrategy: merge`).
    Keyed(&'static str),
    /// A set of scalars (`patchStrategy: merge` without a key).
    Set,
    /// Replaced as a whole (no patch strategy).
    Atomic,
}

/// core/v1's `patchMergeKey`s of a pod, by path (the fields of a container
/// under `containers`, whatever list the container is in).
fn list_kind(path: &str) -> ListKind {
    match path {
        "metadata.finalizers" => ListKind::Set,
        "metadata.ownerReferences" => ListKind::Keyed("uid"),
        "spec.containers"
        | "spec.volumes"
        | "spec.imagePullSecrets"
        | "spec.resourceClaims"
        | "spec.schedulingGates" => ListKind::Keyed("name"),
        "spec.hostAliases" => ListKind::Keyed("ip"),
        "spec.topologySpreadConstraints" => ListKind::Keyed("topologyKey"),
        "containers.env" => ListKind::Keyed("name"),
        "containers.ports" => ListKind::Keyed("containerPort"),
        "containers.volumeMounts" => ListKind::Keyed("mountPath"),
        "containers.volumeDevices" => ListKind::Keyed("devicePath"),
        _ => ListKind::Atomic,
    }
}

/// The path of `key` under `parent` ("" at the top); the three container
/// lists share one path so their fields resolve alike.
fn child_path(parent: &str, key: &str) -> String {
    match (parent, key) {
        ("spec", "initContainers" | "ephemeralContainers") => "spec.containers".into(),
        ("spec.containers", k) => format!("containers.{k}"),
        ("", k) => k.to_string(),
        (p, k) => format!("{p}.{k}"),
    }
}

fn bad(path: &str, why: impl std::fmt::Display) -> CoreError {
    let at = if path.is_empty() { "the patch" } else { path };
    CoreError::InvalidPatch(format!("{at}: {why}"))
}

/// Apply the strategic merge patch `patch` to the pod `target`.
pub fn merge_pod(target: &mut Value, patch: &Value) -> Result<(), CoreError> {
    let Value::Object(p) = patch else {
        return Err(bad("", "a patch must be a JSON object"));
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target
        && !merge_map(t, p, "")?
    {
        return Err(bad("", "$patch: delete would delete the whole pod"));
    }
    Ok(())
}

/// Merge `patch` into `target` at `path`. Returns false when the patch
/// says to delete the map (`$patch: delete`).
fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &str,
) -> Result<bool, CoreError> {
    match patch.get("$patch") {
        None => {}
        Some(Value::String(s)) if s == "merge" => {}
        Some(Value::String(s)) if s == "replace" => {
            target.clear();
            return merge_fields(target, patch, path).map(|()| true);
        }
        Some(Value::String(s)) if s == "delete" => return Ok(false),
        Some(other) => return Err(bad(path, format!("unknown $patch {other}"))),
    }
    if let Some(keep) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect())
            .ok_or_else(|| bad(path, "$retainKeys must be a list of field names"))?;
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    merge_fields(target, patch, path)?;
    Ok(true)
}

/// Merge the fields of `patch` (directives acted on, not copied).
fn merge_fields(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &str,
) -> Result<(), CoreError> {
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v
                .as_array()
                .ok_or_else(|| bad(path, format!("{k} must be a list")))?;
            if let Some(Value::Array(items)) = target.get_mut(field) {
                items.retain(|i| !gone.contains(i));
            }
            continue;
        }
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if k.starts_with('$') {
            return Err(bad(
                path,
                format!("the directive {k} is not supported by sandpool"),
            ));
        }
        let sub = child_path(path, k);
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let slot = target.entry(k.clone()).or_insert(Value::Null);
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot
                    && !merge_map(t, p, &sub)?
                {
                    target.remove(k);
                }
            }
            Value::Array(items) => {
                let slot = target.entry(k.clone()).or_insert(Value::Null);
                merge_list(slot, items, &sub)?;
            }
            scalar => {
                target.insert(k.clone(), scalar.clone());
            }
        }
    }
    Ok(())
}

/// Merge the list `patch` into `slot` at `path` by the field's [`ListKind`].
fn merge_list(slot: &mut Value, patch: &[Value], path: &str) -> Result<(), CoreError> {
    let kind = list_kind(path);
    // `[{"$patch": "replace"}, items…]`: the items replace the list
    let replace = patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if kind == ListKind::Atomic || replace || !slot.is_array() {
        let mut out = Vec::new();
        for item in patch
            .iter()
            .filter(|i| i.get("$patch").is_none() || !replace)
        {
            out.push(fresh(item, path)?);
        }
        *slot = Value::Array(out);
        return Ok(());
    }
    let Value::Array(current) = slot else {
        return Ok(());
    };
    match kind {
        ListKind::Set => {
            for item in patch {
                if !current.contains(item) {
                    current.push(item.clone());
                }
            }
        }
        ListKind::Keyed(key) => {
            for (i, item) in patch.iter().enumerate() {
                merge_keyed(current, item, key, &format!("{path}[{i}]"), path)?;
            }
        }
        ListKind::Atomic => {}
    }
    Ok(())
}

/// Merge one item of a keyed list into `current`.
fn merge_keyed(
    current: &mut Vec<Value>,
    item: &Value,
    key: &str,
    at: &str,
    path: &str,
) -> Result<(), CoreError> {
    let Value::Object(p) = item else {
        return Err(bad(at, "an item of this list must be an object"));
    };
    let id = p.get(key).filter(|v| !v.is_null()).ok_or_else(|| {
        bad(
            at,
            format!("an item of this list needs its merge key {key:?}"),
        )
    })?;
    let pos = current.iter().position(|c| c.get(key) == Some(id));
    match pos {
        Some(n) => {
            let keep = match &mut current[n] {
                Value::Object(t) => merge_map(t, p, path)?,
                other => {
                    *other = fresh(item, path)?;
                    true
                }
            };
            if !keep {
                current.remove(n);
            }
        }
        None => {
            if p.get("$patch").and_then(Value::as_str) != Some("delete") {
                current.push(fresh(item, path)?);
            }
        }
    }
    Ok(())
}

/// A new value from a patch value: an object is merged into nothing (so
/// its directives are acted on and its nulls dropped).
fn fresh(v: &Value, path: &str) -> Result<Value, CoreError> {
    match v {
        Value::Object(p) => {
            let mut t = Map::new();
            merge_map(&mut t, p, path)?;
            Ok(Value::Object(t))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "metadata": {"labels": {"app": "a", "tier": "x"}, "finalizers": ["f1"]},
            "spec": {
                "containers": [
                    {"name": "main", "image": "busybox:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                     "ports": [{"containerPort": 80}], "args": ["x", "y"]},
                    {"name": "side", "image": "sidecar:1"}
                ],
                "volumes": [{"name": "v1", "emptyDir": {}}],
                "tolerations": [{"key": "k1"}],
                "nodeSelector": {"zone": "a"}
            }
        })
    }

    fn patched(patch: Value) -> Value {
        let mut t = pod();
        merge_pod(&mut t, &patch).expect("patch");
        t
    }

    #[test]
    fn keyed_lists_merge_by_their_key_and_others_are_replaced() {
        let t = patched(json!({
            "metadata": {"labels": {"shard": "1", "tier": null}, "finalizers": ["f2", "f1"]},
            "spec": {
                "containers": [{"name": "main", "image": "busybox:2",
                    "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
                    "args": ["z"]},
                    {"name": "extra", "image": "e"}],
                "initContainers": [{"name": "init", "image": "i"}],
                "tolerations": [{"key": "k2"}],
                "nodeSelector": {"disk": "ssd"}
            }
        }));
        assert_eq!(t["metadata"]["labels"], json!({"app": "a", "shard": "1"}));
        assert_eq!(t["metadata"]["finalizers"], json!(["f1", "f2"]));
        let c = &t["spec"]["containers"];
        assert_eq!(c.as_array().map(Vec::len), Some(3));
        assert_eq!(c[0]["image"], "busybox:2");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(c[0]["args"], json!(["z"]), "args is not keyed: replaced");
        assert_eq!(c[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(c[1]["image"], "sidecar:1");
        assert_eq!(c[2]["name"], "extra");
        assert_eq!(t["spec"]["initContainers"][0]["name"], "init");
        assert_eq!(t["spec"]["tolerations"], json!([{"key": "k2"}]));
        assert_eq!(
            t["spec"]["nodeSelector"],
            json!({"zone": "a", "disk": "ssd"})
        );
    }

    #[test]
    fn directives_delete_replace_and_retain() {
        let t = patched(json!({"spec": {
            "containers": [{"name": "side", "$patch": "delete"},
                           {"name": "main", "env": [{"name": "A", "$patch": "delete"}],
                            "$deleteFromPrimitiveList/args": ["x"]}],
            "volumes": [{"$patch": "replace"}, {"name": "v2", "emptyDir": {}}],
            "nodeSelector": {"$patch": "replace", "only": "this"}
        }}));
        let c = &t["spec"]["containers"];
        assert_eq!(c.as_array().map(Vec::len), Some(1));
        assert_eq!(c[0]["env"], json!([{"name": "B", "value": "2"}]));
        assert_eq!(c[0]["args"], json!(["y"]));
        assert_eq!(
            t["spec"]["volumes"],
            json!([{"name": "v2", "emptyDir": {}}])
        );
        assert_eq!(t["spec"]["nodeSelector"], json!({"only": "this"}));
        let t = patched(json!({"metadata": {"labels": {"$retainKeys": ["app"], "new": "n"}}}));
        assert_eq!(t["metadata"]["labels"], json!({"app": "a", "new": "n"}));
    }

    #[test]
    fn bad_patches_are_refused_with_where_and_why() {
        let err = |patch: Value| {
            let mut t = pod();
            merge_pod(&mut t, &patch).expect_err("refused").to_string()
        };
        assert!(err(json!([1])).contains("must be a JSON object"));
        let e = err(json!({"spec": {"containers": [{"image": "x"}]}}));
        assert!(
            e.contains("spec.containers[0]") && e.contains("\"name\""),
            "{e}"
        );
        let e = err(json!({"spec": {"$setElementOrder/containers": [{"name": "main"}]}}));
        assert!(e.contains("$setElementOrder/containers"), "{e}");
        let e = err(json!({"spec": {"$patch": "explode"}}));
        assert!(e.contains("unknown $patch"), "{e}");
        assert!(err(json!({"$patch": "delete"})).contains("whole pod"));
    }
}
