//! Image import through the content, diff, snapshots and images services,
//! and reading an image's rootfs chainID and config back.

use std::collections::HashMap;

use containerd_client::{
    services::v1::{self as api, snapshots::CommitSnapshotRequest},
    types::Descriptor,
};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::{
    error::{AgentError, Result},
    image::{ImageBlobs, MEDIA_LAYER, MEDIA_MANIFEST},
};

use super::{Answer, Ctr, SNAPSHOTTER, chain_id, is_exists};

impl Ctr {
    pub async fn image(&self, name: &str) -> Result<Option<api::Image>> {
        let req = self.req(api::GetImageRequest {
            name: name.to_string(),
        });
        let r = self.client.images().get(req).await.found("get image")?;
        Ok(r.and_then(|r| r.into_inner().image))
    }

    pub async fn list_images(&self) -> Result<Vec<String>> {
        let req = self.req(api::ListImagesRequest { filters: vec![] });
        let listed = self.client.images().list(req).await;
        let images = listed.or_fail("list images")?.into_inner().images;
        Ok(images.into_iter().map(|i| i.name).collect())
    }

    pub(super) async fn content_exists(&self, digest: &str) -> Result<bool> {
        let req = self.req(api::InfoRequest {
            digest: digest.to_string(),
        });
        let info = self.client.content().info(req).await;
        Ok(info.found("content info")?.is_some())
    }

    pub async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
        let mut s = self.content_chunks(digest).await?;
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend(chunk?);
        }
        Ok(out)
    }

    /// Blob `digest` of the content store, chunk by chunk (a push streams
    /// it to a registry); a blob the store lacks is `NotFound`.
    pub async fn content_chunks(
        &self,
        digest: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Vec<u8>>>> {
        let s = self
            .client
            .content()
            .read(self.req(api::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .or_fail("read content")?
            .into_inner();
        Ok(s.map(|c| c.map(|c| c.data).or_fail("read content")).boxed())
    }

    /// Write a blob from `reader` into the content store (skipped when present).
    pub(super) async fn write_content<R: tokio::io::AsyncRead + Unpin>(
        &self,
        lease: &str,
        digest: &str,
        size: u64,
        mut reader: R,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if self.content_exists(digest).await? {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(4);
        let reference = format!("sandpool-{}", &digest[7..]);
        let total = i64::try_from(size).map_err(|_| AgentError::Image("blob too large".into()))?;
        let mut call = self.client.content();
        let req = self.req_lease(tokio_stream::wrappers::ReceiverStream::new(rx), lease);
        let responses = tokio::spawn(async move { call.write(req).await });
        let mut offset: i64 = 0;
        let mut buf = vec![0u8; 1 << 20];
        let send_err = || AgentError::Image("containerd closed the content write stream".into());
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| AgentError::io("reading blob", e))?;
            if n == 0 {
                break;
            }
            tx.send(api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: String::new(),
                offset,
                data: buf[..n].to_vec(),
                labels: HashMap::new(),
            })
            .await
            .map_err(|_| send_err())?;
            offset += n as i64;
        }
        tx.send(api::WriteContentRequest {
            action: api::WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: digest.to_string(),
            offset,
            data: vec![],
            labels,
        })
        .await
        .map_err(|_| send_err())?;
        drop(tx);
        let mut stream = match responses.await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) if is_exists(&s) => return Ok(()),
            Ok(Err(s)) => return Err(AgentError::containerd("content write", s)),
            Err(e) => return Err(AgentError::image("content writer task", e)),
        };
        while let Some(r) = stream.next().await {
            match r {
                Ok(resp) if resp.action == api::WriteAction::Commit as i32 => return Ok(()),
                Ok(_) => {}
                Err(s) if is_exists(&s) => return Ok(()),
                Err(s) => return Err(AgentError::containerd("content write", s)),
            }
        }
        Err(AgentError::Image(format!(
            "content write of {digest} ended without commit"
        )))
    }

    /// Import a single-layer image: blobs, unpacked snapshot, image record.
    pub async fn import(&self, img: &ImageBlobs) -> Result<()> {
        let lease = self.lease(60).await?;
        let res = self.import_leased(img, &lease).await;
        self.drop_lease(lease).await;
        res
    }

    pub(super) async fn import_leased(&self, img: &ImageBlobs, lease: &str) -> Result<()> {
        self.write_image_blobs(img, lease).await?;
        if !self.snapshot_exists(&img.diff_id).await? {
            self.unpack_layer(img, lease).await?;
        }
        self.put_image_record(img).await
    }

    /// The layer, config and manifest blobs into the content store (the
    /// config keeps the unpacked snapshot, the manifest both blobs).
    pub(super) async fn write_image_blobs(&self, img: &ImageBlobs, lease: &str) -> Result<()> {
        let chain = img.diff_id.clone();
        let layer = tokio::fs::File::open(&img.layer_path)
            .await
            .map_err(|e| AgentError::io(img.layer_path.display().to_string(), e))?;
        self.write_content(
            lease,
            &img.layer_digest,
            img.layer_size,
            layer,
            HashMap::new(),
        )
        .await?;
        let cfg_labels: HashMap<String, String> = [(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            chain.clone(),
        )]
        .into();
        let man_labels: HashMap<String, String> = [
            (
                "containerd.io/gc.ref.content.config".to_string(),
                img.config_digest.clone(),
            ),
            (
                "containerd.io/gc.ref.content.l.0".to_string(),
                img.layer_digest.clone(),
            ),
        ]
        .into();
        for (digest, blob, labels) in [
            (&img.config_digest, &img.config, cfg_labels),
            (&img.manifest_digest, &img.manifest, man_labels),
        ] {
            let size = blob.len() as u64;
            self.write_content(lease, digest, size, blob.as_slice(), labels)
                .await?;
        }
        Ok(())
    }

    /// Apply the layer onto a fresh snapshot and commit it as the chainID.
    pub(super) async fn unpack_layer(&self, img: &ImageBlobs, lease: &str) -> Result<()> {
        let chain = img.diff_id.clone();
        let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
        let mounts = self.prepare_snapshot(&key, "", lease).await?;
        let applied = self
            .client
            .diff()
            .apply(self.req_lease(
                api::ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: MEDIA_LAYER.into(),
                        digest: img.layer_digest.clone(),
                        size: img.layer_size as i64,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await;
        if let Err(s) = applied {
            let _ = self.remove_snapshot(&key).await;
            return Err(AgentError::containerd("apply layer", s));
        }
        let committed = self
            .client
            .snapshots()
            .commit(self.req_lease(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.clone(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await;
        match committed {
            Ok(_) => {}
            Err(s) if is_exists(&s) => {
                let _ = self.remove_snapshot(&key).await;
            }
            Err(s) => {
                let _ = self.remove_snapshot(&key).await;
                return Err(AgentError::containerd("commit snapshot", s));
            }
        }
        Ok(())
    }

    /// Create (or update) the image record pointing at the manifest.
    pub(super) async fn put_image_record(&self, img: &ImageBlobs) -> Result<()> {
        let image = api::Image {
            name: img.name.clone(),
            labels: if img.recipe.is_empty() {
                HashMap::new()
            } else {
                HashMap::from([(crate::image::RECIPE_LABEL.to_string(), img.recipe.clone())])
            },
            target: Some(Descriptor {
                media_type: MEDIA_MANIFEST.into(),
                digest: img.manifest_digest.clone(),
                size: img.manifest.len() as i64,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        self.upsert_image(image).await
    }

    /// Create the image record, or replace the one of the same name.
    pub(super) async fn upsert_image(&self, image: api::Image) -> Result<()> {
        let create = api::CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match self.client.images().create(self.req(create)).await {
            Ok(_) => Ok(()),
            Err(s) if is_exists(&s) => {
                let update = api::UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                };
                self.client
                    .images()
                    .update(self.req(update))
                    .await
                    .or_fail("update image")?;
                Ok(())
            }
            Err(s) => Err(AgentError::containerd("create image", s)),
        }
    }

    /// chainID of the image's rootfs and the config it applies (Env,
    /// WorkingDir, User).
    pub async fn image_rootfs(
        &self,
        name: &str,
    ) -> Result<Option<(String, crate::imageconfig::ImageConfig)>> {
        let Some(img) = self.image(name).await? else {
            return Ok(None);
        };
        let target = img
            .target
            .ok_or_else(|| AgentError::Image(format!("image {name} has no target")))?;
        let manifest = self
            .read_json(&target.digest, || format!("manifest of {name}"))
            .await?;
        let cfg_digest = manifest["config"]["digest"].as_str().ok_or_else(|| {
            AgentError::Image(format!(
                "image {name}: manifest without config (index images are not supported)"
            ))
        })?;
        let config = self
            .read_json(cfg_digest, || format!("config of {name}"))
            .await?;
        let diff_ids = strings(&config["rootfs"]["diff_ids"]);
        let chain = chain_id(&diff_ids)
            .ok_or_else(|| AgentError::Image(format!("image {name} has no layers")))?;
        if !self.snapshot_exists(&chain).await? {
            return Err(AgentError::Image(format!(
                "image {name} is not unpacked for {SNAPSHOTTER}"
            )));
        }
        Ok(Some((
            chain,
            crate::imageconfig::ImageConfig::from_config(&config),
        )))
    }

    /// Blob `digest` read as JSON; `what` names it in the error.
    async fn read_json(
        &self,
        digest: &str,
        what: impl FnOnce() -> String,
    ) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.read_content(digest).await?)
            .map_err(|e| AgentError::image(what(), e))
    }
}

/// The strings of a JSON array (none when it is not one).
fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
