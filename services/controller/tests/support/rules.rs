//! The apiserver's rules for writes that the fake applies after a PUT or
//! PATCH is computed:
//! - the status subresource: for a kind that has one, a write to the main
//!   resource keeps the stored `.status` (changes to it are dropped), and a
//!   write to `/status` keeps everything but `.status` (the stored object
//!   with the new status, as the CRD status strategy does);
//! - finalizers: once `deletionTimestamp` is set no new finalizer can be
//!   added (422), and `deletionTimestamp` itself cannot be changed by a
//!   write;
//! - owner references: garbage collection deletes a dependent once none of
//!   its owners exists (background propagation: the owner goes first);
//! - `metadata.generation` of a custom resource: 1 on create, one more on
//!   every write that changes anything outside `metadata` (and outside
//!   `status` for a kind with the status subresource); a client's own value
//!   is never kept ([`next_generation`]).

use serde_json::{Value, json};

/// The kinds the fake serves that have a status subresource (the CRDs with
/// `subresources.status`, and the built-in pods, services and PVCs).
pub fn has_status_subresource(plural: &str) -> bool {
    matches!(
        plural,
        "pods"
            | "services"
            | "persistentvolumeclaims"
            | "pools"
            | "batchsandboxes"
            | "sandboxes"
            | "sandboxclaims"
            | "sandboxwarmpools"
    )
}

/// Whether the apiserver keeps `metadata.generation` for objects of the
/// collection `coll`: every custom resource (`/apis/<group>/...` of the
/// groups the fake serves as CRDs). Built-in kinds the fake serves (pods,
/// services, PVCs, leases, events) are left as written.
pub fn tracks_generation(coll: &str) -> bool {
    [
        "/apis/sandbox.opensandbox.io/",
        "/apis/agents.x-k8s.io/",
        "/apis/extensions.agents.x-k8s.io/",
    ]
    .iter()
    .any(|g| coll.starts_with(g))
}

/// The generation the apiserver stores for `new` replacing `old` (None: a
/// create) in the collection `coll` of `plural`: 1 on create; else the
/// stored one, plus one when anything but `metadata` (and `status`, for a
/// kind with the status subresource) changed. What the client sent in
/// `metadata.generation` is ignored.
pub fn next_generation(plural: &str, old: Option<&Value>, new: &Value) -> i64 {
    let Some(old) = old else { return 1 };
    let stored = old["metadata"]["generation"].as_i64().unwrap_or(1);
    let outside = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            if has_status_subresource(plural) {
                m.remove("status");
            }
        }
        v
    };
    if outside(old) == outside(new) {
        stored
    } else {
        stored + 1
    }
}

/// `new` as the apiserver stores it when it replaces `current` through the
/// main resource (`sub` None) or the status subresource; Err is the 422
/// message of a refused write.
pub fn apply_write_rules(
    plural: &str,
    sub: Option<&str>,
    current: &Value,
    new: &mut Value,
) -> Result<(), String> {
    if sub == Some("status") {
        let mut out = current.clone();
        match new.get("status") {
            Some(s) => out["status"] = s.clone(),
            None => {
                if let Some(m) = out.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        *new = out;
    } else if has_status_subresource(plural) {
        match current.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    finalizer_rules(current, new)
}

fn finalizer_rules(current: &Value, new: &mut Value) -> Result<(), String> {
    let Some(ts) = current["metadata"].get("deletionTimestamp").cloned() else {
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("deletionTimestamp");
        }
        return Ok(());
    };
    let had: Vec<&Value> = current["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let added: Vec<&Value> = new["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter(|f| !had.contains(f)).collect())
        .unwrap_or_default();
    if !added.is_empty() {
        return Err(format!(
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
        ));
    }
    new["metadata"]["deletionTimestamp"] = ts;
    Ok(())
}

/// The 422 answer of a refused write.
pub fn invalid(message: &str) -> (u16, Value) {
    (
        422,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": "Invalid", "code": 422}),
    )
}

/// Whether garbage collection deletes `obj` once the objects with uids
/// `gone` are deleted: it has owner references, one of them is among `gone`,
/// and none of them names an object that still exists.
pub fn orphaned(obj: &Value, gone: &str, exists: impl Fn(&str) -> bool) -> bool {
    let Some(refs) = obj["metadata"]["ownerReferences"].as_array() else {
        return false;
    };
    let uids: Vec<&str> = refs.iter().filter_map(|r| r["uid"].as_str()).collect();
    uids.contains(&gone) && !uids.iter().any(|u| exists(u))
}
