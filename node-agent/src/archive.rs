//! Image tarballs (`docker save` or an OCI image layout packed as a tar):
//! an index of the tarball's regular files, and the manifest, config and
//! layers found through it. Nothing is unpacked here: blobs are read in place
//! (by offset) and handed to containerd, whose diff service applies the
//! layers with its own path checks.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Component, Path, PathBuf},
};

use crate::{
    error::{AgentError, Result},
    image::sha256_digest,
};

const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest JSON file (manifest, config, index) read into memory.
const MAX_JSON: u64 = 16 << 20;

/// A regular file inside the tarball: where its bytes start and how many.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub offset: u64,
    pub size: u64,
}

/// One layer of an image tarball.
#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub span: Span,
}

/// An image found in a tarball, ready to import.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub path: PathBuf,
    /// Names the tarball gives the image (may be empty).
    pub names: Vec<String>,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Layer>,
    /// Uncompressed layer digests from the config, bottom first.
    pub diff_ids: Vec<String>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> AgentError {
    AgentError::Image(format!("{}: not an image tarball: {why}", path.display()))
}

/// A tar member name made relative and normal (`./a/b` -> `a/b`); `None`
/// for names that leave the archive root (`..`, absolute).
pub fn clean_name(name: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The regular files of the tarball at `path`, by clean name.
fn index(path: &Path) -> Result<HashMap<String, Span>> {
    let f = File::open(path).map_err(|e| AgentError::io(path.display().to_string(), e))?;
    let mut ar = tar::Archive::new(f);
    let mut out = HashMap::new();
    let entries = ar.entries().map_err(|e| bad(path, e))?;
    for e in entries {
        let e = e.map_err(|e| bad(path, e))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path().map_err(|e| bad(path, e))?;
        if let Some(n) = clean_name(&name) {
            let span = Span {
                offset: e.raw_file_position(),
                size: e.size(),
            };
            out.insert(n, span);
        }
    }
    Ok(out)
}

/// Open the tarball at `path` positioned on `span`, limited to its size.
pub fn open_span(path: &Path, span: Span) -> Result<std::io::Take<File>> {
    let mut f = File::open(path).map_err(|e| AgentError::io(path.display().to_string(), e))?;
    f.seek(SeekFrom::Start(span.offset))
        .map_err(|e| AgentError::io(path.display().to_string(), e))?;
    Ok(f.take(span.size))
}

struct Tarball {
    path: PathBuf,
    files: HashMap<String, Span>,
}

impl Tarball {
    fn span(&self, name: &str) -> Result<Span> {
        self.files
            .get(name)
            .copied()
            .ok_or_else(|| bad(&self.path, format!("{name} is missing")))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let span = self.span(name)?;
        if span.size > MAX_JSON {
            return Err(bad(&self.path, format!("{name} is too large")));
        }
        let mut out = Vec::new();
        open_span(&self.path, span)?
            .read_to_end(&mut out)
            .map_err(|e| AgentError::io(self.path.display().to_string(), e))?;
        Ok(out)
    }

    fn json(&self, name: &str) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.read(name)?)
            .map_err(|e| bad(&self.path, format!("{name}: {e}")))
    }

    /// An OCI blob's member name, its digest checked for shape.
    fn blob_name(&self, digest: &str) -> Result<String> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad(&self.path, format!("unsupported digest {digest:?}")))?;
        Ok(format!("blobs/sha256/{hex}"))
    }

    /// Digest of a member, computed (docker save names files by path).
    fn digest_of(&self, name: &str) -> Result<String> {
        let mut r = open_span(&self.path, self.span(name)?)?;
        let mut h = sha2::Sha256::default();
        std::io::copy(&mut r, &mut h)
            .map_err(|e| AgentError::io(self.path.display().to_string(), e))?;
        Ok(format!("sha256:{}", hex::encode(sha2::Digest::finalize(h))))
    }

    fn is_gzip(&self, name: &str) -> Result<bool> {
        let mut magic = [0u8; 2];
        let mut r = open_span(&self.path, self.span(name)?)?;
        let n = r
            .read(&mut magic)
            .map_err(|e| AgentError::io(self.path.display().to_string(), e))?;
        Ok(n == 2 && magic == [0x1f, 0x8b])
    }
}

/// Read the image in the tarball at `path` (OCI layout preferred when the
/// tarball has both, as newer `docker save` writes).
pub fn read(path: &Path) -> Result<ArchiveImage> {
    let t = Tarball {
        path: path.to_path_buf(),
        files: index(path)?,
    };
    if t.files.contains_key("index.json") {
        read_oci(&t)
    } else if t.files.contains_key("manifest.json") {
        read_docker(&t)
    } else {
        Err(bad(path, "neither index.json nor manifest.json found"))
    }
}

fn str_field<'a>(t: &Tarball, v: &'a serde_json::Value, k: &str) -> Result<&'a str> {
    v[k].as_str()
        .ok_or_else(|| bad(&t.path, format!("descriptor without {k}")))
}

fn read_oci(t: &Tarball) -> Result<ArchiveImage> {
    let index = t.json("index.json")?;
    let descs = index["manifests"].as_array().cloned().unwrap_or_default();
    let Some(desc) = descs.first() else {
        return Err(bad(&t.path, "index.json lists no manifest"));
    };
    if descs.len() > 1 {
        return Err(bad(&t.path, "index.json lists more than one image"));
    }
    let names = oci_names(&desc["annotations"]);
    let mut digest = str_field(t, desc, "digest")?.to_string();
    let mut media = desc["mediaType"]
        .as_str()
        .unwrap_or(MEDIA_OCI_MANIFEST)
        .to_string();
    if media == MEDIA_OCI_INDEX || media == MEDIA_DOCKER_LIST {
        let nested = t.json(&t.blob_name(&digest)?)?;
        let pick = pick_platform(&nested)
            .ok_or_else(|| bad(&t.path, "no linux/amd64 image in the index"))?;
        digest = str_field(t, pick, "digest")?.to_string();
        media = pick["mediaType"]
            .as_str()
            .unwrap_or(MEDIA_OCI_MANIFEST)
            .to_string();
    }
    let manifest = t.read(&t.blob_name(&digest)?)?;
    if sha256_digest(&manifest) != digest {
        return Err(bad(
            &t.path,
            format!("manifest {digest} does not match its digest"),
        ));
    }
    let m: serde_json::Value = serde_json::from_slice(&manifest).map_err(|e| bad(&t.path, e))?;
    let config_digest = str_field(t, &m["config"], "digest")?.to_string();
    let config = t.read(&t.blob_name(&config_digest)?)?;
    let mut layers = Vec::new();
    for l in m["layers"].as_array().cloned().unwrap_or_default() {
        let d = str_field(t, &l, "digest")?.to_string();
        let span = t.span(&t.blob_name(&d)?)?;
        layers.push(Layer {
            digest: d,
            size: span.size,
            media_type: str_field(t, &l, "mediaType")?.to_string(),
            span,
        });
    }
    finish(
        t,
        names,
        manifest,
        digest,
        media,
        config,
        config_digest,
        layers,
    )
}

/// The image names of an index entry's annotations: containerd's full
/// name when there is one (docker save), else the OCI ref name unless it is
/// a bare tag (`3`, as docker save also writes there).
fn oci_names(annotations: &serde_json::Value) -> Vec<String> {
    let full = annotations["io.containerd.image.name"].as_str();
    let reference = annotations["org.opencontainers.image.ref.name"]
        .as_str()
        .filter(|r| r.contains(':') || r.contains('/'));
    full.or(reference).map(str::to_string).into_iter().collect()
}

/// The linux manifest of an index for this machine's architecture (the first one without a platform
/// when none says so).
fn pick_platform(index: &serde_json::Value) -> Option<&serde_json::Value> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let ms = index["manifests"].as_array()?;
    ms.iter()
        .find(|m| {
            m["platform"]["os"].as_str() == Some("linux")
                && m["platform"]["architecture"].as_str() == Some(arch)
        })
        .or_else(|| ms.iter().find(|m| m["platform"].is_null()))
}

fn read_docker(t: &Tarball) -> Result<ArchiveImage> {
    let list = t.json("manifest.json")?;
    let entries = list.as_array().cloned().unwrap_or_default();
    let Some(entry) = entries.first() else {
        return Err(bad(&t.path, "manifest.json lists no image"));
    };
    if entries.len() > 1 {
        return Err(bad(&t.path, "manifest.json lists more than one image"));
    }
    let names = entry["RepoTags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let cfg_name = clean_name(Path::new(str_field(t, entry, "Config")?))
        .ok_or_else(|| bad(&t.path, "bad Config path"))?;
    let config = t.read(&cfg_name)?;
    let config_digest = sha256_digest(&config);
    let mut layers = Vec::new();
    for l in entry["Layers"].as_array().cloned().unwrap_or_default() {
        let name = l
            .as_str()
            .and_then(|s| clean_name(Path::new(s)))
            .ok_or_else(|| bad(&t.path, "bad layer path"))?;
        let span = t.span(&name)?;
        let media = if t.is_gzip(&name)? {
            MEDIA_OCI_LAYER_GZ
        } else {
            MEDIA_OCI_LAYER
        };
        layers.push(Layer {
            digest: t.digest_of(&name)?,
            size: span.size,
            media_type: media.to_string(),
            span,
        });
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
    }))
    .map_err(|e| bad(&t.path, e))?;
    let digest = sha256_digest(&manifest);
    let media = MEDIA_OCI_MANIFEST.to_string();
    finish(
        t,
        names,
        manifest,
        digest,
        media,
        config,
        config_digest,
        layers,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    t: &Tarball,
    names: Vec<String>,
    manifest: Vec<u8>,
    manifest_digest: String,
    manifest_media_type: String,
    config: Vec<u8>,
    config_digest: String,
    layers: Vec<Layer>,
) -> Result<ArchiveImage> {
    if sha256_digest(&config) != config_digest {
        return Err(bad(&t.path, "config does not match its digest"));
    }
    let c: serde_json::Value = serde_json::from_slice(&config).map_err(|e| bad(&t.path, e))?;
    let diff_ids: Vec<String> = c["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if layers.is_empty() || diff_ids.len() != layers.len() {
        return Err(bad(
            &t.path,
            format!(
                "{} layers but {} diff_ids in the config",
                layers.len(),
                diff_ids.len()
            ),
        ));
    }
    Ok(ArchiveImage {
        path: t.path.clone(),
        names,
        manifest,
        manifest_digest,
        manifest_media_type,
        config,
        config_digest,
        layers,
        diff_ids,
    })
}

/// The names an image is stored under for reference `r`: as given, and its
/// full docker form (`alpine:3` -> `docker.io/library/alpine:3`, a missing
/// tag is `latest`). Refused: empty names, whitespace, digests-only refs.
pub fn image_names(r: &str) -> Result<Vec<String>> {
    let r = r.trim();
    if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) || r.contains("://") {
        return Err(AgentError::Image(format!("bad image name {r:?}")));
    }
    let (repo, tag) = match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (r, "latest"),
    };
    if repo.is_empty() || tag.is_empty() || repo.contains('@') {
        return Err(AgentError::Image(format!("bad image name {r:?}")));
    }
    let first = repo.split('/').next().unwrap_or_default();
    let has_host =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_host {
        format!("{repo}:{tag}")
    } else if repo.contains('/') {
        format!("docker.io/{repo}:{tag}")
    } else {
        format!("docker.io/library/{repo}:{tag}")
    };
    let mut out = vec![r.to_string()];
    if full != r {
        out.push(full);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_their_docker_form() {
        let cases: [(&str, &[&str]); 5] = [
            ("alpine:3", &["alpine:3", "docker.io/library/alpine:3"]),
            ("alpine", &["alpine", "docker.io/library/alpine:latest"]),
            ("me/app:1", &["me/app:1", "docker.io/me/app:1"]),
            (
                "reg.io:5000/a/b",
                &["reg.io:5000/a/b", "reg.io:5000/a/b:latest"],
            ),
            (
                "docker.io/library/alpine:3",
                &["docker.io/library/alpine:3"],
            ),
        ];
        for (name, want) in cases {
            assert_eq!(image_names(name).unwrap(), want, "{name:?}");
        }
        for bad in ["", " ", "a b", "http://x/y", "x@sha256:00", ":3"] {
            assert!(image_names(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oci_names_skip_bare_tags() {
        let a = |v: serde_json::Value| oci_names(&v);
        let both = serde_json::json!({
            "io.containerd.image.name": "docker.io/library/alpine:3",
            "org.opencontainers.image.ref.name": "3"});
        assert_eq!(a(both), ["docker.io/library/alpine:3"]);
        let tag = serde_json::json!({"org.opencontainers.image.ref.name": "3"});
        assert!(a(tag).is_empty());
        let full = serde_json::json!({"org.opencontainers.image.ref.name": "alpine:3"});
        assert_eq!(a(full), ["alpine:3"]);
    }

    #[test]
    fn member_names_stay_inside_the_archive() {
        assert_eq!(
            clean_name(Path::new("./blobs/sha256/ab")).as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(clean_name(Path::new("../etc/passwd")), None);
        assert_eq!(clean_name(Path::new("/etc/passwd")), None);
        assert_eq!(clean_name(Path::new(".")), None);
    }

    fn tarball(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let p = dir.join("img.tar");
        let mut b = tar::Builder::new(File::create(&p).unwrap());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
        p
    }

    fn layer_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hi", &b"hi"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn reads_a_docker_save_tarball() {
        let d = tempfile::tempdir().unwrap();
        let layer = layer_tar();
        let diff = sha256_digest(&layer);
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#);
        let manifest =
            br#"[{"Config":"c.json","RepoTags":["alpine:3"],"Layers":["l1/layer.tar"]}]"#;
        let p = tarball(
            d.path(),
            &[
                ("manifest.json", manifest),
                ("c.json", config.as_bytes()),
                ("l1/layer.tar", &layer),
            ],
        );
        let img = read(&p).unwrap();
        assert_eq!(img.names, ["alpine:3"]);
        assert_eq!(img.diff_ids, std::slice::from_ref(&diff));
        assert_eq!(img.layers[0].digest, diff);
        assert_eq!(img.layers[0].media_type, MEDIA_OCI_LAYER);
        assert_eq!(img.manifest_digest, sha256_digest(&img.manifest));
        let mut got = Vec::new();
        open_span(&p, img.layers[0].span)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, layer);
    }

    #[test]
    fn reads_an_oci_layout_tarball() {
        let d = tempfile::tempdir().unwrap();
        let layer = layer_tar();
        let ld = sha256_digest(&layer);
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#);
        let cd = sha256_digest(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{MEDIA_OCI_CONFIG}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"{MEDIA_OCI_LAYER}","digest":"{ld}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let md = sha256_digest(manifest.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MEDIA_OCI_MANIFEST}","digest":"{md}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"x:1"}}}}]}}"#,
            manifest.len()
        );
        let blob = |d: &str| format!("blobs/sha256/{}", &d[7..]);
        let (bl, bc, bm) = (blob(&ld), blob(&cd), blob(&md));
        let p = tarball(
            d.path(),
            &[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                ("index.json", index.as_bytes()),
                (&bm, manifest.as_bytes()),
                (&bc, config.as_bytes()),
                (&bl, &layer),
            ],
        );
        let img = read(&p).unwrap();
        assert_eq!(img.names, ["x:1"]);
        assert_eq!(img.manifest_digest, md);
        assert_eq!(img.config_digest, cd);
        assert_eq!(img.layers.len(), 1);
    }

    #[test]
    fn bad_tarballs_are_refused_clearly() {
        let d = tempfile::tempdir().unwrap();
        let p = tarball(d.path(), &[("hello", b"x")]);
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("not an image tarball"), "{e}");
        let p = tarball(
            d.path(),
            &[("manifest.json", br#"[{"Config":"c.json","Layers":[]}]"#)],
        );
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("c.json is missing"), "{e}");
        std::fs::write(d.path().join("junk"), b"not a tar at all").unwrap();
        assert!(read(&d.path().join("junk")).is_err());
    }
}
