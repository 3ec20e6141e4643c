//! Where SandboxSnapshot images go. Default (no `--snapshot-registry`): they
//! stay in the committing node's containerd, named under
//! [`SNAPSHOT_REPOSITORY`], and a pod started from one is pinned to that
//! node. With `--snapshot-registry <host[:port]/path>` (upstream's flag) the
//! node agent pushes each committed image there, with the credentials of
//! the `kubernetes.io/dockerconfigjson` Secret `--snapshot-push-secret`
//! (read from the snapshot's namespace for each push, passed to the node
//! agent for that push only), over plain HTTP with
//! `--snapshot-registry-insecure`; such images run on any node.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use sandpool_proto::v1 as pb;

use crate::context::Context;
use crate::error::{Result, is_not_found};

/// The repository of node-local snapshot images (never pushed; the name
/// only has to be a valid reference the kubelet finds locally).
pub const SNAPSHOT_REPOSITORY: &str = "sandpool.local/snapshots";

/// The snapshot registry flags, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotRegistry {
    /// `host[:port]/path` images are pushed under; None: node-local.
    pub registry: Option<String>,
    /// Plain HTTP to the registry (loopback ones are anyway).
    pub insecure: bool,
    /// The `kubernetes.io/dockerconfigjson` Secret with the push credentials.
    pub push_secret: Option<String>,
}

impl SnapshotRegistry {
    /// The flags checked: a registry that is a `host[:port][/path]`
    /// (lowercase path, the host a registry's: with a `.` or `:`, or
    /// `localhost`); the insecure flag and the push secret need a registry.
    pub fn new(
        registry: Option<&str>,
        insecure: bool,
        push_secret: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let push_secret = push_secret.filter(|s| !s.is_empty()).map(str::to_string);
        let Some(reg) = registry.filter(|r| !r.is_empty()) else {
            if insecure || push_secret.is_some() {
                return Err(
                    "--snapshot-registry-insecure and --snapshot-push-secret need --snapshot-registry"
                        .into(),
                );
            }
            return Ok(SnapshotRegistry::default());
        };
        let reg = reg.trim_end_matches('/');
        let bad = |why: &str| format!("--snapshot-registry {reg:?}: {why}");
        if reg.contains("://") {
            return Err(bad("give host[:port]/path, without a scheme"));
        }
        if reg.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(bad("not a host[:port]/path"));
        }
        let (host, path) = reg.split_once('/').unwrap_or((reg, ""));
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad(
                "the first part must be a registry host (with a '.' or a port, or localhost)",
            ));
        }
        let path_ok = path.split('/').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        if !path.is_empty() && !path_ok {
            return Err(bad(
                "its path must be lowercase letters, digits, '.', '_', '-' separated by '/'",
            ));
        }
        Ok(SnapshotRegistry {
            registry: Some(reg.to_string()),
            insecure,
            push_secret,
        })
    }

    /// The repository snapshot images are named under.
    pub fn repository(&self) -> &str {
        self.registry.as_deref().unwrap_or(SNAPSHOT_REPOSITORY)
    }

    /// The registry's `host[:port]` (the push secret's `auths` key).
    pub fn host(&self) -> Option<&str> {
        self.registry
            .as_deref()
            .map(|r| r.split('/').next().unwrap_or(r))
    }
}

/// Whether snapshot image `image_uri` exists only on the node that
/// committed it (not pushed): a pod started from it must run there, with
/// `imagePullPolicy: IfNotPresent`.
pub fn is_node_local(image_uri: &str) -> bool {
    image_uri
        .strip_prefix(SNAPSHOT_REPOSITORY)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Why a push cannot be asked for: (reason, message).
pub type Refusal = (&'static str, String);

/// The push fields of a CommitImages request for a snapshot in `ns`: none
/// without a registry; else `push` with the push secret's credentials for
/// the registry's host (the Secret read now, so a rotated one is used).
pub async fn push_fields(
    cfg: &SnapshotRegistry,
    ctx: &Context,
    ns: &str,
) -> Result<std::result::Result<Option<(Option<pb::ImageAuth>, bool)>, Refusal>> {
    let Some(host) = cfg.host() else {
        return Ok(Ok(None));
    };
    let Some(secret) = &cfg.push_secret else {
        return Ok(Ok(Some((None, cfg.insecure))));
    };
    let bad = |why: String| {
        Ok(Err((
            "PushSecretInvalid",
            format!("snapshot push secret {ns}/{secret}: {why}"),
        )))
    };
    let api: Api<Secret> = ctx.api(ns);
    let s = match api.get(secret).await {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return bad("not found".into()),
        Err(e) => return Err(e.into()),
    };
    match push_auth(&s, host) {
        Ok(auth) => Ok(Ok(Some((Some(auth), cfg.insecure)))),
        Err(why) => bad(why),
    }
}

/// The credentials `secret` (a `kubernetes.io/dockerconfigjson` Secret)
/// holds for registry `host`, or why there are none.
pub fn push_auth(secret: &Secret, host: &str) -> std::result::Result<pb::ImageAuth, String> {
    const TYPE: &str = "kubernetes.io/dockerconfigjson";
    if secret.type_.as_deref() != Some(TYPE) {
        return Err(format!(
            "type {:?}, want {TYPE}",
            secret.type_.as_deref().unwrap_or("")
        ));
    }
    let raw = secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .ok_or("no .dockerconfigjson key")?;
    let json: serde_json::Value = serde_json::from_slice(&raw.0)
        .map_err(|e| format!(".dockerconfigjson is not JSON: {e}"))?;
    match sandpool_core::docker_config::credentials(&json, host) {
        Ok(Some((username, password))) => Ok(pb::ImageAuth { username, password }),
        Ok(None) => Err(format!("its auths have no entry for {host}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    #[test]
    fn registry_flags_are_checked_and_name_the_repository() {
        let r =
            SnapshotRegistry::new(Some("127.0.0.1:5000/snaps/"), true, Some("push")).expect("ok");
        assert_eq!(r.repository(), "127.0.0.1:5000/snaps");
        assert_eq!(r.host(), Some("127.0.0.1:5000"));
        let none = SnapshotRegistry::new(None, false, Some("")).expect("ok");
        assert_eq!(none.repository(), SNAPSHOT_REPOSITORY);
        assert_eq!(none.host(), None);
        for (reg, insecure, secret) in [
            (None, true, None),
            (None, false, Some("s")),
            (Some("https://reg.io/x"), false, None),
            (Some("snapshots/x"), false, None),
            (Some("reg.io/Upper"), false, None),
            (Some("reg.io//x"), false, None),
        ] {
            let e = SnapshotRegistry::new(reg, insecure, secret).expect_err("refused");
            assert!(e.contains("--snapshot-registry"), "{e}");
        }
    }

    #[test]
    fn only_unpushed_images_are_node_local() {
        assert!(is_node_local("sandpool.local/snapshots/b-main:snap-gen1"));
        assert!(!is_node_local("reg.io/snaps/b-main:snap-gen1"));
        assert!(!is_node_local("sandpool.local/snapshotsx/b:t"));
    }

    #[test]
    fn the_push_secret_gives_the_registrys_credentials() {
        let secret = |type_: &str, json: &str| Secret {
            type_: Some(type_.into()),
            data: Some(BTreeMap::from([(
                ".dockerconfigjson".to_string(),
                ByteString(json.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        let ok = secret(
            "kubernetes.io/dockerconfigjson",
            r#"{"auths":{"reg.io:5000":{"username":"u","password":"p"}}}"#,
        );
        let a = push_auth(&ok, "reg.io:5000").expect("creds");
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p"));
        let e = push_auth(&ok, "other.io").expect_err("no entry");
        assert!(e.contains("other.io"), "{e}");
        let e = push_auth(&secret("Opaque", "{}"), "reg.io:5000").expect_err("type");
        assert!(e.contains("dockerconfigjson"), "{e}");
        let e = push_auth(&secret("kubernetes.io/dockerconfigjson", "x"), "r").expect_err("json");
        assert!(e.contains("not JSON"), "{e}");
    }
}
