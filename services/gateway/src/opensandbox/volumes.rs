//! A create's `volumes` as node mounts. A `host` volume is the host path
//! (plus `subPath`), which the node agent resolves and accepts only under an
//! operator-allowed root (`sandpool serve --allowed-host-path`); a `pvc`
//! volume is a named volume of the node (`<agent data>/volumes/<claimName>`),
//! made owned by the sandbox user when missing (unless `createIfNotExists`
//! is false). `ossfs` and `deleteOnSandboxTermination` are not supported;
//! `storageClass`, `storage` and `accessModes` are ignored, as upstream's
//! Docker runtime does.
//! Checks here are the lexical ones; symlinks are resolved on the node.

use std::collections::HashSet;
use std::path::{Component, Path};

use sandpool_proto::v1 as pb;
use serde::Deserialize;
use serde_json::Value;

use super::Result;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    #[serde(default)]
    name: String,
    #[serde(default)]
    mount_path: String,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    sub_path: Option<String>,
    #[serde(default)]
    host: Option<Host>,
    #[serde(default)]
    pvc: Option<Pvc>,
    #[serde(default)]
    ossfs: Option<Value>,
}

#[derive(Deserialize)]
struct Host {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pvc {
    #[serde(default)]
    claim_name: String,
    /// absent: true, as upstream
    #[serde(default)]
    create_if_not_exists: Option<bool>,
    #[serde(default)]
    delete_on_sandbox_termination: Option<bool>,
}

fn invalid(name: &str, what: String) -> ApiError {
    ApiError::Invalid(format!("volume {name:?}: {what}"))
}

/// Only plain components: no `.`, `..`, root or prefix.
fn plain(p: &str) -> bool {
    !p.contains('\0')
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The node-side volume spec of one volume: an absolute host path, or a
/// volume name (with a leading `+` when the node is to make it if missing),
/// either followed by the sub path.
fn source_of(v: &Volume) -> Result<String> {
    let n = v.name.as_str();
    let sub = v.sub_path.as_deref().unwrap_or("").trim_end_matches('/');
    if !sub.is_empty() && !plain(sub) {
        return Err(invalid(
            n,
            format!("subPath {sub:?} must be relative, without . or .."),
        ));
    }
    let joined = |base: &str| {
        if sub.is_empty() {
            base.to_string()
        } else {
            format!("{}/{sub}", base.trim_end_matches('/'))
        }
    };
    match (&v.host, &v.pvc, &v.ossfs) {
        (Some(h), None, None) => {
            let rel = h.path.strip_prefix('/').unwrap_or_default();
            if rel.is_empty() || !plain(rel) {
                return Err(invalid(
                    n,
                    format!(
                        "host.path {:?} must be an absolute path without . or ..",
                        h.path
                    ),
                ));
            }
            Ok(joined(&h.path))
        }
        (None, Some(p), None) => {
            let c = p.claim_name.as_str();
            let ok = c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(invalid(
                    n,
                    format!("pvc.claimName {c:?} must be [a-zA-Z0-9][a-zA-Z0-9_.-]*"),
                ));
            }
            if p.delete_on_sandbox_termination == Some(true) {
                return Err(ApiError::Unsupported(format!(
                    "volume {n:?}: pvc.deleteOnSandboxTermination (named volumes outlive their sandboxes)"
                )));
            }
            // `+name`: the node makes the volume when missing
            let create = if p.create_if_not_exists.unwrap_or(true) {
                "+"
            } else {
                ""
            };
            Ok(format!("{create}{}", joined(c)))
        }
        (None, None, Some(_)) => Err(ApiError::Unsupported(format!(
            "volume {n:?}: the ossfs backend (only host and pvc volumes are)"
        ))),
        (None, None, None) => Err(invalid(
            n,
            "give exactly one backend (host, pvc, ossfs); none was given".into(),
        )),
        _ => Err(invalid(
            n,
            "give exactly one backend (host, pvc, ossfs); several were given".into(),
        )),
    }
}

/// The mounts a create's `volumes` asks for, in order; 400 naming the
/// volume for a malformed one, 501 for an `ossfs` one.
pub(super) fn mounts_of(volumes: &[Value]) -> Result<Vec<pb::VolumeMount>> {
    let mut names = HashSet::new();
    let mut targets = HashSet::new();
    let mut out = Vec::with_capacity(volumes.len());
    for raw in volumes {
        let v: Volume = serde_json::from_value(raw.clone())
            .map_err(|e| ApiError::Invalid(format!("bad volume {raw}: {e}")))?;
        let n = v.name.as_str();
        if !crate::is_dns_label(n) {
            return Err(invalid(
                n,
                "the name must be a DNS label (lowercase letters, digits, -; at most 63)".into(),
            ));
        }
        if !names.insert(n.to_string()) {
            return Err(invalid(n, "the name is given twice".into()));
        }
        let rel = v.mount_path.strip_prefix('/').unwrap_or_default();
        if rel.is_empty() || !plain(rel) {
            return Err(invalid(
                n,
                format!(
                    "mountPath {:?} must be an absolute path without . or .. (not /)",
                    v.mount_path
                ),
            ));
        }
        if !targets.insert(v.mount_path.trim_end_matches('/').to_string()) {
            return Err(invalid(
                n,
                format!("mountPath {} is used twice", v.mount_path),
            ));
        }
        out.push(pb::VolumeMount {
            volume: source_of(&v)?,
            mount_path: v.mount_path.clone(),
            read_only: v.read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(v: Value) -> Result<pb::VolumeMount> {
        mounts_of(&[v]).map(|mut m| m.remove(0))
    }

    #[test]
    fn host_and_pvc_volumes_become_node_mounts() {
        let m = one(
            json!({"name": "logs", "host": {"path": "/srv/e2e/"}, "mountPath": "/mnt/h",
            "readOnly": true, "subPath": "a/b"}),
        )
        .expect("host");
        assert_eq!(
            (m.volume.as_str(), m.mount_path.as_str(), m.read_only),
            ("/srv/e2e/a/b", "/mnt/h", true)
        );
        let m =
            one(json!({"name": "p", "pvc": {"claimName": "e2e-pvc_1.x"}, "mountPath": "/mnt/p"}))
                .expect("pvc");
        assert_eq!((m.volume.as_str(), m.read_only), ("+e2e-pvc_1.x", false));
        let m = one(
            json!({"name": "p", "pvc": {"claimName": "v"}, "mountPath": "/mnt/p",
            "subPath": "datasets/train"}),
        )
        .expect("pvc sub");
        assert_eq!(m.volume, "+v/datasets/train");
        let m = one(
            json!({"name": "p", "pvc": {"claimName": "v", "createIfNotExists": false,
            "deleteOnSandboxTermination": false, "storageClass": null}, "mountPath": "/mnt/p"}),
        )
        .expect("pvc, no create");
        assert_eq!(m.volume, "v", "must exist");
    }

    #[test]
    fn traversal_and_malformed_volumes_are_400_naming_the_volume() {
        for (bad, what) in [
            (
                json!({"name": "v", "pvc": {"claimName": "c"}, "mountPath": "/m", "subPath": "../x"}),
                "subPath",
            ),
            (
                json!({"name": "v", "pvc": {"claimName": "c"}, "mountPath": "/m", "subPath": "/abs"}),
                "subPath",
            ),
            (
                json!({"name": "v", "host": {"path": "/a/../etc"}, "mountPath": "/m"}),
                "host.path",
            ),
            (
                json!({"name": "v", "host": {"path": "rel"}, "mountPath": "/m"}),
                "host.path",
            ),
            (
                json!({"name": "v", "host": {"path": "/"}, "mountPath": "/m"}),
                "host.path",
            ),
            (
                json!({"name": "v", "pvc": {"claimName": "../c"}, "mountPath": "/m"}),
                "claimName",
            ),
            (
                json!({"name": "v", "pvc": {"claimName": "a/b"}, "mountPath": "/m"}),
                "claimName",
            ),
            (
                json!({"name": "v", "pvc": {"claimName": "c"}, "mountPath": "m"}),
                "mountPath",
            ),
            (
                json!({"name": "v", "pvc": {"claimName": "c"}, "mountPath": "/m/../etc"}),
                "mountPath",
            ),
            (
                json!({"name": "Bad_Name", "pvc": {"claimName": "c"}, "mountPath": "/m"}),
                "DNS label",
            ),
            (json!({"name": "v", "mountPath": "/m"}), "none was given"),
            (
                json!({"name": "v", "pvc": {"claimName": "c"}, "host": {"path": "/x"}, "mountPath": "/m"}),
                "several",
            ),
        ] {
            let e = one(bad.clone()).expect_err(&bad.to_string());
            let msg = e.to_string();
            assert!(matches!(e, ApiError::Invalid(_)), "{bad}: {msg}");
            assert!(msg.contains(what), "{bad}: {msg}");
        }
        let twice = json!({"name": "v", "pvc": {"claimName": "c"}, "mountPath": "/m"});
        let e = mounts_of(&[twice.clone(), twice]).expect_err("twice");
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn ossfs_and_deleting_a_named_volume_are_501_naming_them() {
        let e = one(
            json!({"name": "p", "pvc": {"claimName": "v", "deleteOnSandboxTermination": true},
            "mountPath": "/m"}),
        )
        .expect_err("delete");
        assert!(matches!(e, ApiError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("deleteOnSandboxTermination"), "{e}");
        let e = one(json!({"name": "o", "ossfs": {"bucket": "b"}, "mountPath": "/m"}))
            .expect_err("ossfs");
        assert!(matches!(e, ApiError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("ossfs"), "{e}");
    }
}
