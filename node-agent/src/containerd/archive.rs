//! Importing an image tarball (`archive::ArchiveImage`) through containerd's
//! content, diff and snapshots services; listing and removing images.

use std::collections::HashMap;

use containerd_client::{
    services::v1::{self as api, snapshots::CommitSnapshotRequest},
    types::Descriptor,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{
    archive::ArchiveImage,
    error::{AgentError, Result},
    image::RECIPE_LABEL,
};

use super::{Answer, Ctr, SNAPSHOTTER, chain_id, is_exists};

/// containerd image label marking an image imported with `sandpool image import`.
pub const IMPORTED_LABEL: &str = "org.sandpool.imported";

/// containerd image label marking an image pulled with `sandpool image
/// pull` (or a cold create); its value is the reference it was pulled from.
pub const PULLED_LABEL: &str = "org.sandpool.pulled";

/// An image whose blobs are being stored: manifest and config bytes, the
/// layer descriptors (bottom first) and their uncompressed digests.
pub(super) struct ImageParts<'a> {
    pub manifest: &'a [u8],
    pub manifest_digest: &'a str,
    pub manifest_media_type: &'a str,
    pub config: &'a [u8],
    pub config_digest: &'a str,
    pub layers: Vec<Descriptor>,
    pub diff_ids: &'a [String],
}

/// One image as `sandpool image list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub name: String,
    pub digest: String,
    /// Config and layer bytes (compressed, as stored).
    pub size: u64,
    pub builtin: bool,
    /// Pulled from a registry (`PULLED_LABEL`), not imported from a tarball.
    pub pulled: bool,
    /// When the image record was last written (pulled, imported), unix ms.
    pub updated_unix_ms: i64,
}

impl Ctr {
    /// Import the tarball image `img` under `names`: blobs, unpacked
    /// layers (chainIDs, bottom first), one image record per name.
    pub async fn import_archive(&self, img: &ArchiveImage, names: &[String]) -> Result<()> {
        let lease = self.lease(60).await?;
        let res = self.import_archive_leased(img, names, &lease).await;
        self.drop_lease(lease).await;
        res
    }

    async fn import_archive_leased(
        &self,
        img: &ArchiveImage,
        names: &[String],
        lease: &str,
    ) -> Result<()> {
        for l in &img.layers {
            let mut f = tokio::fs::File::open(&img.path)
                .await
                .map_err(|e| AgentError::io(img.path.display().to_string(), e))?;
            f.seek(std::io::SeekFrom::Start(l.span.offset))
                .await
                .map_err(|e| AgentError::io(img.path.display().to_string(), e))?;
            self.write_content(
                lease,
                &l.digest,
                l.size,
                f.take(l.span.size),
                HashMap::new(),
            )
            .await?;
        }
        let layers = img
            .layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size as i64,
                annotations: HashMap::new(),
            })
            .collect();
        let parts = ImageParts {
            manifest: &img.manifest,
            manifest_digest: &img.manifest_digest,
            manifest_media_type: &img.manifest_media_type,
            config: &img.config,
            config_digest: &img.config_digest,
            layers,
            diff_ids: &img.diff_ids,
        };
        let labels = HashMap::from([(IMPORTED_LABEL.to_string(), "true".to_string())]);
        self.store_image(&parts, names, &labels, lease).await
    }

    /// With the layer blobs of `img` already in the content store: write
    /// its config and manifest (with the GC references that keep the blobs
    /// and the unpacked rootfs), unpack the layers that are not unpacked yet
    /// (bottom first, through the diff service) and record the image under
    /// each of `names` with `labels`.
    pub(super) async fn store_image(
        &self,
        img: &ImageParts<'_>,
        names: &[String],
        labels: &HashMap<String, String>,
        lease: &str,
    ) -> Result<()> {
        if img.layers.len() != img.diff_ids.len() {
            return Err(AgentError::Image(format!(
                "manifest lists {} layers, the config {} diff_ids",
                img.layers.len(),
                img.diff_ids.len()
            )));
        }
        let top = chain_id(img.diff_ids)
            .ok_or_else(|| AgentError::Image("image without layers".into()))?;
        let cfg_labels: HashMap<String, String> =
            [(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top)].into();
        let mut man_labels: HashMap<String, String> = [(
            "containerd.io/gc.ref.content.config".to_string(),
            img.config_digest.to_string(),
        )]
        .into();
        for (i, l) in img.layers.iter().enumerate() {
            man_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        let size = img.config.len() as u64;
        self.write_content(lease, img.config_digest, size, img.config, cfg_labels)
            .await?;
        let size = img.manifest.len() as u64;
        self.write_content(lease, img.manifest_digest, size, img.manifest, man_labels)
            .await?;
        for i in 0..img.layers.len() {
            let chain = chain_id(&img.diff_ids[..=i]).unwrap_or_default();
            if self.snapshot_exists(&chain).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chain_id(&img.diff_ids[..i]).unwrap_or_default()
            };
            let layer = &img.layers[i];
            self.apply_layer(layer, &img.diff_ids[i], &parent, &chain, lease)
                .await?;
        }
        for name in names {
            self.put_named_image(img, name, labels).await?;
        }
        Ok(())
    }

    /// Apply `layer` onto `parent` and commit it as `chain`; the applied
    /// (uncompressed) digest must be the config's `diff_id`.
    async fn apply_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        parent: &str,
        chain: &str,
        lease: &str,
    ) -> Result<()> {
        let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
        let mounts = self.prepare_snapshot(&key, parent, lease).await?;
        let req = api::ApplyRequest {
            diff: Some(layer.clone()),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let applied = match self.client.diff().apply(self.req_lease(req, lease)).await {
            Ok(r) => r.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
            Err(s) => {
                let _ = self.remove_snapshot(&key).await;
                return Err(AgentError::containerd("apply layer", s));
            }
        };
        if applied != diff_id {
            let _ = self.remove_snapshot(&key).await;
            return Err(AgentError::Image(format!(
                "layer {} unpacks to {applied}, the config says {diff_id}",
                layer.digest
            )));
        }
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
            Ok(_) => Ok(()),
            Err(s) => {
                let _ = self.remove_snapshot(&key).await;
                if is_exists(&s) {
                    Ok(())
                } else {
                    Err(AgentError::containerd("commit snapshot", s))
                }
            }
        }
    }

    async fn put_named_image(
        &self,
        img: &ImageParts<'_>,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        let image = api::Image {
            name: name.to_string(),
            labels: labels.clone(),
            target: Some(Descriptor {
                media_type: img.manifest_media_type.to_string(),
                digest: img.manifest_digest.to_string(),
                size: img.manifest.len() as i64,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        self.upsert_image(image).await
    }

    /// Every image in the namespace, by name.
    pub async fn image_summaries(&self) -> Result<Vec<ImageSummary>> {
        let req = self.req(api::ListImagesRequest { filters: vec![] });
        let listed = self.client.images().list(req).await;
        let mut images = listed.or_fail("list images")?.into_inner().images;
        images.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::new();
        for i in images {
            let digest = i
                .target
                .as_ref()
                .map(|t| t.digest.clone())
                .unwrap_or_default();
            let size = self.manifest_size(&digest).await.unwrap_or(0);
            out.push(ImageSummary {
                builtin: i.labels.contains_key(RECIPE_LABEL)
                    && !i.labels.contains_key(IMPORTED_LABEL),
                pulled: i.labels.contains_key(PULLED_LABEL),
                updated_unix_ms: i
                    .updated_at
                    .or(i.created_at)
                    .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                    .unwrap_or(0),
                name: i.name,
                digest,
                size,
            });
        }
        Ok(out)
    }

    /// Config plus layer sizes of the manifest `digest`.
    async fn manifest_size(&self, digest: &str) -> Result<u64> {
        let m: serde_json::Value = serde_json::from_slice(&self.read_content(digest).await?)
            .map_err(|e| AgentError::image("manifest", e))?;
        let size = |v: &serde_json::Value| v["size"].as_u64().unwrap_or(0);
        let layers = m["layers"]
            .as_array()
            .map(|a| a.iter().map(size).sum())
            .unwrap_or(0);
        Ok(size(&m["config"]) + layers)
    }

    /// Delete the image record `name` (its blobs and snapshots go with
    /// containerd's garbage collection once nothing else uses them).
    /// `false` when there is no such image.
    pub async fn remove_image(&self, name: &str) -> Result<bool> {
        let req = self.req(api::DeleteImageRequest {
            name: name.to_string(),
            sync: false,
            target: None,
        });
        Ok(self
            .client
            .images()
            .delete(req)
            .await
            .found("delete image")?
            .is_some())
    }
}
