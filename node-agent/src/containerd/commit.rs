//! Commit a container's root file system into a new image (Kubernetes
//! mode's SandboxSnapshot): containerd's diff service compares a view of the
//! container's parent snapshot (its image) with the container's active
//! snapshot and writes the difference as an uncompressed OCI layer (with
//! overlay whiteouts for deletions); the new image is the container's image
//! plus that layer, unpacked at once so the node can start it without a pull.

use std::collections::HashMap;

use containerd_client::services::v1::{
    self as api, DiffRequest,
    snapshots::{CommitSnapshotRequest, MountsRequest, StatSnapshotRequest, ViewSnapshotRequest},
};
use containerd_client::types::Descriptor;
use serde_json::{Value, json};

use crate::error::{AgentError, Result};
use crate::image::{MEDIA_CONFIG, MEDIA_MANIFEST, sha256_digest};

use super::{Answer, Ctr, SNAPSHOTTER, chain_id, is_exists};

/// The media type of the committed layer: an uncompressed tar, so its
/// digest is its diff ID.
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An image made by [`Ctr::commit_container`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub image: String,
    /// The digest of its manifest.
    pub digest: String,
    /// Its content size: manifest, config and layers ([`content_size`]).
    pub size_bytes: u64,
}

/// The content size of an image: its manifest's own length plus the sizes
/// its manifest gives for the config and each layer.
pub fn content_size(manifest: &Value, manifest_len: usize) -> u64 {
    let size = |d: &Value| d["size"].as_u64().unwrap_or(0);
    let layers: u64 = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(size)
        .sum();
    manifest_len as u64 + size(&manifest["config"]) + layers
}

/// The OCI media type of a base image layer (Docker's types mapped).
fn oci_layer_type(t: &str) -> &str {
    match t {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => MEDIA_LAYER_TAR,
        other => other,
    }
}

/// The committed image's config and manifest: `config` with `layer` added
/// to its rootfs and history, and `manifest`'s layers plus `layer`.
pub fn committed_blobs(
    config: &Value,
    manifest: &Value,
    layer: &Descriptor,
    created: &str,
    created_by: &str,
) -> Result<(Vec<u8>, Vec<u8>, Vec<String>)> {
    let mut config = config.clone();
    let bad = |what: &str| AgentError::Image(format!("the container's image has no {what}"));
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| bad("rootfs.diff_ids"))?;
    diff_ids.push(json!(layer.digest));
    let ids: Vec<String> = diff_ids
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    config["created"] = json!(created);
    let entry =
        json!({"created": created, "created_by": created_by, "comment": "sandpool snapshot"});
    match config["history"].as_array_mut() {
        Some(h) => h.push(entry),
        None => config["history"] = json!([entry]),
    }
    let config = serde_json::to_vec(&config).map_err(|e| AgentError::image("config", e))?;
    let mut layers: Vec<Value> = manifest["layers"]
        .as_array()
        .ok_or_else(|| bad("manifest layers"))?
        .iter()
        .map(|l| {
            let mut l = l.clone();
            let t = oci_layer_type(l["mediaType"].as_str().unwrap_or_default()).to_string();
            l["mediaType"] = json!(t);
            l
        })
        .collect();
    layers.push(json!({"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
        "layers": layers,
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| AgentError::image("manifest", e))?;
    Ok((config, manifest, ids))
}

impl Ctr {
    /// Commit container `id`'s root file system into image `name` (see the
    /// module doc). The caller pauses the container's task around it.
    pub async fn commit_container(&self, id: &str, name: &str) -> Result<Committed> {
        let lease = self.lease(30).await?;
        let res = self.commit_leased(id, name, &lease).await;
        self.drop_lease(lease).await;
        res
    }

    async fn commit_leased(&self, id: &str, name: &str, lease: &str) -> Result<Committed> {
        let got = self
            .client
            .containers()
            .get(self.req(api::GetContainerRequest { id: id.to_string() }))
            .await;
        let c = got.or_fail("get container")?.into_inner().container;
        let c = c.ok_or_else(|| AgentError::NotFound(format!("container {id}")))?;
        if !c.snapshotter.is_empty() && c.snapshotter != SNAPSHOTTER {
            return Err(AgentError::Unsupported(format!(
                "container {id} uses the {} snapshotter; snapshots need {SNAPSHOTTER}",
                c.snapshotter
            )));
        }
        let layer = self.diff_rootfs(&c.snapshot_key, lease).await?;
        let (config, manifest) = self.image_blobs(&c.image).await?;
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let by = format!("sandpool commit of container {id}");
        let (config, manifest, diff_ids) =
            committed_blobs(&config, &manifest, &layer, &created, &by)?;
        let chain = chain_id(&diff_ids).unwrap_or_default();
        let parent = chain_id(&diff_ids[..diff_ids.len() - 1]).unwrap_or_default();
        self.unpack_onto(&parent, &chain, &layer, lease).await?;
        let (cfg_digest, man_digest) = (sha256_digest(&config), sha256_digest(&manifest));
        let cfg_labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            chain,
        )]);
        let mut man_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".into(),
            cfg_digest.clone(),
        )]);
        let parsed: Value =
            serde_json::from_slice(&manifest).map_err(|e| AgentError::image("manifest", e))?;
        for (i, l) in parsed["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let d = l["digest"].as_str().unwrap_or_default().to_string();
            man_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), d);
        }
        let (cl, ml) = (config.len() as u64, manifest.len() as u64);
        self.write_content(lease, &cfg_digest, cl, config.as_slice(), cfg_labels)
            .await?;
        self.write_content(lease, &man_digest, ml, manifest.as_slice(), man_labels)
            .await?;
        self.put_image(name, &man_digest, manifest.len()).await?;
        Ok(Committed {
            image: name.to_string(),
            digest: man_digest,
            size_bytes: content_size(&parsed, manifest.len()),
        })
    }

    /// The difference between the active snapshot `key` and its parent, as
    /// a layer in the content store.
    async fn diff_rootfs(&self, key: &str, lease: &str) -> Result<Descriptor> {
        let stat = self
            .client
            .snapshots()
            .stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
            .or_fail("stat snapshot")?;
        let parent = stat.into_inner().info.map(|i| i.parent).unwrap_or_default();
        if parent.is_empty() {
            return Err(AgentError::FailedPrecondition(format!(
                "snapshot {key} has no parent image snapshot"
            )));
        }
        let upper = self
            .client
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
            .or_fail("snapshot mounts")?
            .into_inner()
            .mounts;
        let view = format!("commit-view-{}", uuid::Uuid::new_v4().simple());
        let lower = self
            .client
            .snapshots()
            .view(self.req_lease(
                ViewSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: view.clone(),
                    parent,
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .or_fail("view snapshot")?
            .into_inner()
            .mounts;
        let diffed = self
            .client
            .diff()
            .diff(self.req_lease(
                DiffRequest {
                    left: lower,
                    right: upper,
                    media_type: MEDIA_LAYER_TAR.into(),
                    r#ref: format!("commit-{}", uuid::Uuid::new_v4().simple()),
                    labels: HashMap::new(),
                    source_date_epoch: None,
                },
                lease,
            ))
            .await;
        let _ = self.remove_snapshot(&view).await;
        diffed
            .or_fail("diff rootfs")?
            .into_inner()
            .diff
            .ok_or_else(|| AgentError::Image("containerd's diff returned no layer".into()))
    }

    /// The manifest and config of image `name` (for this platform when it
    /// is an index).
    async fn image_blobs(&self, name: &str) -> Result<(Value, Value)> {
        let img = self.image(name).await?.ok_or_else(|| {
            AgentError::FailedPrecondition(format!("the container's image {name} is gone"))
        })?;
        let target = img
            .target
            .ok_or_else(|| AgentError::Image(format!("image {name} has no target")))?;
        let json = |b: Vec<u8>| -> Result<Value> {
            serde_json::from_slice(&b).map_err(|e| AgentError::image(format!("image {name}"), e))
        };
        let mut manifest = json(self.read_content(&target.digest).await?)?;
        let is_index = [MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST].contains(&target.media_type.as_str())
            || manifest["manifests"].is_array();
        if is_index {
            let digest = platform_manifest(&manifest).ok_or_else(|| {
                AgentError::Image(format!("image {name} has no manifest for this platform"))
            })?;
            manifest = json(self.read_content(&digest).await?)?;
        }
        let cfg = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| AgentError::Image(format!("image {name}: manifest without config")))?;
        let config = json(self.read_content(cfg).await?)?;
        Ok((config, manifest))
    }

    /// Apply `layer` onto the committed snapshot `parent`, committed as `chain`.
    async fn unpack_onto(
        &self,
        parent: &str,
        chain: &str,
        layer: &Descriptor,
        lease: &str,
    ) -> Result<()> {
        if self.snapshot_exists(chain).await? {
            return Ok(());
        }
        let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
        let mounts = self.prepare_snapshot(&key, parent, lease).await?;
        let applied = self
            .client
            .diff()
            .apply(self.req_lease(
                api::ApplyRequest {
                    diff: Some(layer.clone()),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await;
        let done = match applied {
            Ok(_) => {
                let req = CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.to_string(),
                    key: key.clone(),
                    labels: HashMap::new(),
                };
                match self
                    .client
                    .snapshots()
                    .commit(self.req_lease(req, lease))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(s) if is_exists(&s) => Ok(()),
                    Err(s) => Err(AgentError::containerd("commit snapshot", s)),
                }
            }
            Err(s) => Err(AgentError::containerd("apply layer", s)),
        };
        let _ = self.remove_snapshot(&key).await;
        done
    }

    /// Create (or replace) image record `name` pointing at the manifest.
    async fn put_image(&self, name: &str, digest: &str, size: usize) -> Result<()> {
        let image = api::Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: MEDIA_MANIFEST.into(),
                digest: digest.to_string(),
                size: size as i64,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        self.upsert_image(image).await
    }
}

/// The digest of an index's manifest for this machine (linux and its
/// architecture in OCI's names).
fn platform_manifest(index: &Value) -> Option<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    index["manifests"].as_array()?.iter().find_map(|m| {
        let p = &m["platform"];
        (p["os"] == "linux" && p["architecture"] == arch)
            .then(|| m["digest"].as_str().map(str::to_string))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_image_is_the_base_plus_one_layer() {
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
        });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": "sha256:cc", "size": 1},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:ll", "size": 5}],
        });
        let layer = Descriptor {
            media_type: MEDIA_LAYER_TAR.into(),
            digest: "sha256:bb".into(),
            size: 7,
            annotations: HashMap::new(),
        };
        let (cfg, man, ids) =
            committed_blobs(&config, &manifest, &layer, "2026-12-07T08:00:00Z", "x").expect("ok");
        assert_eq!(ids, ["sha256:aa", "sha256:bb"]);
        let cfg: Value = serde_json::from_slice(&cfg).expect("json");
        assert_eq!(
            cfg["config"]["Cmd"],
            json!(["sh"]),
            "the image config is kept"
        );
        assert_eq!(cfg["history"][0]["created_by"], "x");
        let man: Value = serde_json::from_slice(&man).expect("json");
        assert_eq!(man["mediaType"], MEDIA_MANIFEST);
        assert_eq!(man["config"]["mediaType"], MEDIA_CONFIG);
        assert_eq!(man["layers"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            man["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(man["layers"][1]["digest"], "sha256:bb");
        // its content size: the manifest, config (its length) and the layers 5 + 7
        let config_size = man["config"]["size"].as_u64().unwrap_or(0);
        assert!(config_size > 0, "{man}");
        assert_eq!(content_size(&man, 100), 100 + config_size + 12);
        assert!(committed_blobs(&json!({}), &manifest, &layer, "t", "x").is_err());
    }

    #[test]
    fn an_index_resolves_to_this_platforms_manifest() {
        let arch = if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        };
        let index = json!({"manifests": [
            {"digest": "sha256:other", "platform": {"os": "linux", "architecture": "s390x"}},
            {"digest": "sha256:mine", "platform": {"os": "linux", "architecture": arch}},
        ]});
        assert_eq!(platform_manifest(&index).as_deref(), Some("sha256:mine"));
        assert_eq!(platform_manifest(&json!({"manifests": []})), None);
    }
}
