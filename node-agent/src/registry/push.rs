//! Pushing a committed image (Kubernetes mode's SandboxSnapshot with the
//! controller's `--snapshot-registry`) from containerd's content store to
//! the registry its name gives: each blob the registry lacks (the image's
//! layers, then its config) streamed from the store, then the manifest.
//! The client is the pulls' ([`client_for`]: plain HTTP only for loopback
//! or the push's insecure registry, bounded connects and reads); the
//! credentials are the request's, used for this push only.

use futures_util::StreamExt;
use oci_client::{
    Reference, RegistryOperation, errors::OciDistributionError, secrets::RegistryAuth,
};
use reqwest::header::HeaderValue;
use serde_json::Value;

use crate::{
    containerd::Ctr,
    error::{AgentError, PullFailure, Result},
    image::MEDIA_MANIFEST,
};

use super::{Credentials, RegistryConfig, classify, client_for, error_chain, registry_auth};

/// Where and how to push: the request's credentials and insecure flag.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PushTarget {
    pub creds: Option<Credentials>,
    /// Plain HTTP to the image's registry (loopback ones are anyway).
    pub insecure: bool,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("creds", &self.creds)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// The blobs of a manifest to push: (digest, size), layers then config.
pub fn manifest_blobs(manifest: &Value) -> Result<Vec<(String, u64)>> {
    let bad = |what: &str| AgentError::Image(format!("the committed manifest has no {what}"));
    let desc = |d: &Value| -> Result<(String, u64)> {
        let digest = d["digest"].as_str().ok_or_else(|| bad("digest"))?;
        let size = d["size"].as_u64().ok_or_else(|| bad("size"))?;
        Ok((digest.to_string(), size))
    };
    let layers = manifest["layers"].as_array().ok_or_else(|| bad("layers"))?;
    let mut out = layers.iter().map(desc).collect::<Result<Vec<_>>>()?;
    out.push(desc(&manifest["config"])?);
    Ok(out)
}

/// Push image `name` (its manifest `digest` in `ctr`'s content store) to
/// its registry; returns the pushed manifest's digest.
pub async fn push_image(ctr: &Ctr, name: &str, digest: &str, to: &PushTarget) -> Result<String> {
    let reference = super::parse_reference(name)?;
    let failed = |failure: PullFailure, detail: String| AgentError::Push {
        reference: reference.whole(),
        failure,
        detail,
    };
    let oci = |e: OciDistributionError| failed(classify(&e), error_chain(&e));
    let registry = reference.resolve_registry().to_string();
    let cfg = RegistryConfig {
        insecure: if to.insecure { vec![registry] } else { vec![] },
        ..Default::default()
    };
    let client =
        client_for(&cfg, &reference).map_err(|e| failed(PullFailure::Registry, e.to_string()))?;
    let auth: RegistryAuth = registry_auth(to.creds.as_ref());
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(oci)?;
    let manifest = ctr.read_content(digest).await?;
    let parsed: Value =
        serde_json::from_slice(&manifest).map_err(|e| AgentError::image("manifest", e))?;
    for (blob, size) in manifest_blobs(&parsed)? {
        if client.blob_exists(&reference, &blob).await.map_err(oci)? {
            continue;
        }
        push_blob(ctr, &client, &reference, &blob, size)
            .await
            .map_err(|e| match e {
                AgentError::Push { .. } => e,
                other => failed(
                    PullFailure::Store,
                    format!(
                        "blob {blob} from containerd's content store (a base image layer the node discarded after unpacking cannot be pushed): {other}"
                    ),
                ),
            })?;
    }
    client
        .push_manifest_raw(
            &reference,
            manifest,
            HeaderValue::from_static(MEDIA_MANIFEST),
        )
        .await
        .map_err(oci)?;
    Ok(digest.to_string())
}

/// Stream blob `digest` (`size` bytes) from the content store to the registry.
async fn push_blob(
    ctr: &Ctr,
    client: &oci_client::Client,
    reference: &Reference,
    digest: &str,
    size: u64,
) -> Result<()> {
    let chunks = ctr.content_chunks(digest).await?.map(|c| {
        c.map(bytes::Bytes::from)
            .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))
    });
    client
        .push_blob_stream(reference, chunks, digest, Some(size))
        .await
        .map_err(|e| AgentError::Push {
            reference: reference.whole(),
            failure: classify(&e),
            detail: error_chain(&e),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_manifests_layers_then_config_are_pushed_and_bad_ones_named() {
        let m = json!({
            "config": {"digest": "sha256:c", "size": 3},
            "layers": [{"digest": "sha256:a", "size": 1}, {"digest": "sha256:b", "size": 2}],
        });
        let got = manifest_blobs(&m).expect("blobs");
        let want: Vec<(String, u64)> = vec![
            ("sha256:a".into(), 1),
            ("sha256:b".into(), 2),
            ("sha256:c".into(), 3),
        ];
        assert_eq!(got, want);
        let e = manifest_blobs(&json!({"layers": [{"digest": "sha256:a"}]})).expect_err("bad");
        assert!(e.to_string().contains("size"), "{e}");
    }

    #[test]
    fn push_credentials_never_show_in_debug_output() {
        let t = PushTarget {
            creds: Some(Credentials {
                username: "u".into(),
                password: "s3cret".into(),
            }),
            insecure: false,
        };
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
