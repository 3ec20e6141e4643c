//! Pulling an image from a registry into the content store (manifest,
//! config, layers; layers already present are not fetched again) and
//! unpacking it with the same code as tarball imports.

use std::{collections::HashMap, time::Instant};

use containerd_client::types::Descriptor;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::{
    Client, Reference,
    errors::OciDistributionError,
    manifest::{OciDescriptor, OciImageManifest},
    secrets::RegistryAuth,
};

use crate::{
    error::{AgentError, PullFailure, Result},
    image::sha256_digest,
    registry::{Progress, Pulled, RESOLVE_TIMEOUT, Sink, classify, error_chain},
};

use super::{
    Ctr,
    archive::{ImageParts, PULLED_LABEL},
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPT: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
/// Layer media types containerd's diff service applies.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];
/// Largest manifest or config accepted.
const MAX_JSON: i64 = 16 << 20;
/// Layers fetched at once (containerd's and dockerd's default is 3).
const CONCURRENT_FETCHES: usize = 3;

/// A platform manifest resolved from a reference.
struct Resolved {
    bytes: Vec<u8>,
    digest: String,
    media_type: String,
    manifest: OciImageManifest,
}

fn pull_err(reference: &Reference, failure: PullFailure, detail: impl Into<String>) -> AgentError {
    AgentError::Pull {
        reference: reference.whole(),
        failure,
        detail: detail.into(),
    }
}

fn oci_err(reference: &Reference, e: &OciDistributionError) -> AgentError {
    pull_err(reference, classify(e), error_chain(e))
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// The linux/amd64 entry of an image index.
fn amd64_entry(index: &serde_json::Value) -> std::result::Result<String, String> {
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let found = entries.iter().find(|m| {
        m["platform"]["os"].as_str() == Some("linux")
            && m["platform"]["architecture"].as_str() == Some("amd64")
    });
    match found.and_then(|m| m["digest"].as_str()) {
        Some(d) => Ok(d.to_string()),
        None => {
            let platforms: Vec<String> = entries
                .iter()
                .map(|m| {
                    let p = &m["platform"];
                    format!(
                        "{}/{}",
                        p["os"].as_str().unwrap_or("?"),
                        p["architecture"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            Err(format!(
                "the index has no linux/amd64 image (it has: {})",
                platforms.join(", ")
            ))
        }
    }
}

impl Ctr {
    /// Pull `reference` with `auth` through `client` and store it under
    /// `names`: blobs into the content store, layers unpacked by the diff
    /// service. Progress lines go to `progress`.
    pub async fn pull_image(
        &self,
        client: &Client,
        reference: &Reference,
        auth: &RegistryAuth,
        names: &[String],
        to: &Sink,
    ) -> Result<Pulled> {
        let progress = &to.lines;
        progress(format!("resolving {}", reference.whole()));
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, resolve(client, reference, auth))
            .await
            .map_err(|_| {
                pull_err(
                    reference,
                    PullFailure::Unreachable,
                    format!("no manifest within {RESOLVE_TIMEOUT:?}"),
                )
            })??;
        let layers = resolved.manifest.layers.clone();
        progress(format!(
            "manifest {} ({}, {} layers)",
            short(&resolved.digest),
            resolved.media_type,
            layers.len()
        ));
        let config = fetch_config(client, reference, &resolved.manifest.config).await?;
        let cfg: serde_json::Value = serde_json::from_slice(&config).map_err(|e| {
            pull_err(
                reference,
                PullFailure::Registry,
                format!("image config: {e}"),
            )
        })?;
        let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let lease = self.lease(60).await?;
        let res = async {
            let fetched = self
                .fetch_layers(client, reference, &layers, &lease, to)
                .await?;
            progress(format!("unpacking {} layers", layers.len()));
            let parts = ImageParts {
                manifest: &resolved.bytes,
                manifest_digest: &resolved.digest,
                manifest_media_type: &resolved.media_type,
                config: &config,
                config_digest: &resolved.manifest.config.digest,
                layers: layers.iter().map(descriptor).collect(),
                diff_ids: &diff_ids,
            };
            let labels = HashMap::from([(PULLED_LABEL.to_string(), reference.whole())]);
            self.store_image(&parts, names, &labels, &lease).await?;
            Ok::<_, AgentError>(fetched)
        }
        .await;
        self.drop_lease(lease).await;
        let fetched_layers = res?;
        progress(format!(
            "pulled {} as {}",
            reference.whole(),
            names.join(", ")
        ));
        Ok(Pulled {
            names: names.to_vec(),
            digest: resolved.digest,
            fetched_layers,
            layers: layers.len(),
        })
    }

    /// Fetch the layers not yet in the content store, up to
    /// `CONCURRENT_FETCHES` at once (as `ctr` and dockerd do); how many were fetched.
    async fn fetch_layers(
        &self,
        client: &Client,
        reference: &Reference,
        layers: &[OciDescriptor],
        lease: &str,
        to: &Sink,
    ) -> Result<usize> {
        let what = |i: usize, l: &OciDescriptor| {
            format!("layer {}/{} {}", i + 1, layers.len(), short(&l.digest))
        };
        if let Some((i, l)) = layers
            .iter()
            .enumerate()
            .find(|(_, l)| !LAYER_TYPES.contains(&l.media_type.as_str()))
        {
            let why = format!("{}: unsupported media type {}", what(i, l), l.media_type);
            return Err(pull_err(reference, PullFailure::Registry, why));
        }
        // An image may list one layer twice (Docker's empty layers): fetch it once.
        let mut seen = std::collections::HashSet::new();
        let fetches: Vec<_> = layers
            .iter()
            .enumerate()
            .filter(|(_, l)| seen.insert(l.digest.as_str()))
            .map(|(i, l)| self.fetch_layer(client, reference, l, lease, what(i, l), to))
            .collect();
        let fetched: Vec<bool> = futures_util::stream::iter(fetches)
            .buffer_unordered(CONCURRENT_FETCHES)
            .try_collect()
            .await?;
        Ok(fetched.into_iter().filter(|f| *f).count())
    }

    /// Fetch one layer into the content store unless it is there already;
    /// whether it was fetched.
    async fn fetch_layer(
        &self,
        client: &Client,
        reference: &Reference,
        l: &OciDescriptor,
        lease: &str,
        what: String,
        to: &Sink,
    ) -> Result<bool> {
        let progress: &Progress = &to.lines;
        if self.content_exists(&l.digest).await? {
            progress(format!("{what}: already present"));
            return Ok(false);
        }
        let size = u64::try_from(l.size).map_err(|_| {
            pull_err(
                reference,
                PullFailure::Registry,
                format!("{what}: bad size"),
            )
        })?;
        progress(format!("{what}: fetching {size} bytes"));
        let started = Instant::now();
        let stream = client
            .pull_blob_stream(reference, l)
            .await
            .map_err(|e| oci_err(reference, &e))?;
        let bytes = to.bytes.clone();
        let counted = stream.stream.inspect_ok(move |chunk| {
            if let Some(f) = &bytes {
                f(chunk.len() as u64);
            }
        });
        let reader = tokio_util::io::StreamReader::new(counted);
        self.write_content(lease, &l.digest, size, reader, HashMap::new())
            .await
            .map_err(|e| pull_err(reference, PullFailure::Registry, format!("{what}: {e}")))?;
        progress(format!(
            "{what}: done in {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        Ok(true)
    }
}

fn descriptor(l: &OciDescriptor) -> Descriptor {
    Descriptor {
        media_type: l.media_type.clone(),
        digest: l.digest.clone(),
        size: l.size,
        annotations: HashMap::new(),
    }
}

/// The manifest bytes `reference` names, an index resolved to linux/amd64.
async fn resolve(client: &Client, reference: &Reference, auth: &RegistryAuth) -> Result<Resolved> {
    let (bytes, _) = client
        .pull_manifest_raw(reference, auth, ACCEPT)
        .await
        .map_err(|e| oci_err(reference, &e))?;
    let mut bytes = bytes.to_vec();
    let mut digest = sha256_digest(&bytes);
    if let Some(want) = reference.digest()
        && want != digest
    {
        let why = format!("the registry sent {digest} for {want}");
        return Err(pull_err(reference, PullFailure::Registry, why));
    }
    let bad = |why: String| pull_err(reference, PullFailure::Registry, why);
    let mut json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    if json.get("manifests").is_some() {
        let d =
            amd64_entry(&json).map_err(|why| pull_err(reference, PullFailure::NotFound, why))?;
        let platform = reference.clone_with_digest(d.clone());
        let (b, _) = client
            .pull_manifest_raw(&platform, auth, ACCEPT)
            .await
            .map_err(|e| oci_err(reference, &e))?;
        bytes = b.to_vec();
        digest = sha256_digest(&bytes);
        if digest != d {
            return Err(bad(format!("the registry sent {digest} for {d}")));
        }
        json = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    }
    let media_type = json["mediaType"]
        .as_str()
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(bad(format!("unsupported manifest type {media_type}")));
    }
    let manifest: OciImageManifest =
        serde_json::from_value(json).map_err(|e| bad(format!("manifest: {e}")))?;
    Ok(Resolved {
        bytes,
        digest,
        media_type,
        manifest,
    })
}

/// The image config blob, its digest checked.
async fn fetch_config(
    client: &Client,
    reference: &Reference,
    desc: &OciDescriptor,
) -> Result<Vec<u8>> {
    if desc.size > MAX_JSON {
        let why = format!("image config of {} bytes is too large", desc.size);
        return Err(pull_err(reference, PullFailure::Registry, why));
    }
    let mut out = Vec::new();
    client
        .pull_blob(reference, desc, &mut out)
        .await
        .map_err(|e| oci_err(reference, &e))?;
    if sha256_digest(&out) != desc.digest {
        let why = format!("image config does not match its digest {}", desc.digest);
        return Err(pull_err(reference, PullFailure::Registry, why));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_resolves_to_linux_amd64() {
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(amd64_entry(&index).unwrap(), "sha256:amd");
        let arm_only = serde_json::json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
        ]});
        let e = amd64_entry(&arm_only).unwrap_err();
        assert!(e.contains("linux/arm64"), "{e}");
    }
}
