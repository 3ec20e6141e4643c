//! Pulling images from OCI registries: references and their Docker Hub
//! normalisation, credentials (flags or a docker `config.json`), plain
//! HTTP for loopback and configured insecure registries, clear errors
//! within bounded time, and one fetch for concurrent pulls of one image.
//! The registry protocol (token and basic auth, manifests, blob streams)
//! is the `oci-client` crate's; the blobs go into containerd's content
//! store and are unpacked by its diff service ([`crate::containerd`]).

use std::{sync::Arc, time::Duration};

use oci_client::{
    Client, Reference,
    client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};

use crate::{
    containerd::Ctr,
    error::{AgentError, PullFailure, Result},
};

mod coalesce;
mod config;
mod push;

pub use coalesce::Coalescer;
pub use config::RegistryConfig;
pub use push::{PushTarget, push_image};

/// Bound on connecting to a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a registry going silent in the middle of an answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on resolving a reference to its manifest (auth included).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// `host[:port]` names this machine (`localhost`, 127.0.0.0/8, `[::1]`).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => registry.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Credentials for one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl From<sandpool_proto::v1::ImageAuth> for Credentials {
    fn from(a: sandpool_proto::v1::ImageAuth) -> Self {
        Credentials {
            username: a.username,
            password: a.password,
        }
    }
}

/// `r` parsed, Docker Hub short names made full (`python:3.12` ->
/// `docker.io/library/python:3.12`, a missing tag is `latest`).
pub fn parse_reference(r: &str) -> Result<Reference> {
    let t = r.trim();
    if t.is_empty() || t.contains("://") || t.chars().any(char::is_whitespace) {
        return Err(AgentError::InvalidTemplate(format!(
            "bad image reference {r:?}"
        )));
    }
    let parsed = t
        .parse::<Reference>()
        .map_err(|e| AgentError::InvalidTemplate(format!("bad image reference {r:?}: {e}")))?;
    if parsed.repository().chars().any(|c| c.is_ascii_uppercase()) {
        return Err(AgentError::InvalidTemplate(format!(
            "bad image reference {r:?}: repository names are lowercase"
        )));
    }
    Ok(parsed)
}

/// The names a pull of `given` is stored under: as given and in full form.
pub fn stored_names(given: &str, reference: &Reference) -> Vec<String> {
    let full = reference.whole();
    let given = given.trim().to_string();
    if given == full {
        vec![full]
    } else {
        vec![given, full]
    }
}

/// The credentials a docker `config.json` holds for `registry`
/// ([`sandpool_core::docker_config::credentials`]).
pub fn docker_config_credentials(
    config: &serde_json::Value,
    registry: &str,
) -> Result<Option<Credentials>> {
    let found = sandpool_core::docker_config::credentials(config, registry)
        .map_err(|e| AgentError::InvalidTemplate(e.to_string()))?;
    Ok(found.map(|(username, password)| Credentials { username, password }))
}

/// A registry client for `reference`: plain HTTP only where allowed,
/// HTTPS trusting the host's CA bundle plus the registry's `ca_file`,
/// bounded connects and reads, linux/amd64 out of multi-platform indexes.
pub fn client_for(cfg: &RegistryConfig, reference: &Reference) -> Result<Client> {
    let registry = reference.resolve_registry();
    let protocol = if cfg.plain_http(registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let extra_root_certificates = cfg
        .ca_certs
        .get(registry)
        .or_else(|| cfg.ca_certs.get(reference.registry()))
        .into_iter()
        .flatten()
        .map(|pem| Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.clone(),
        })
        .collect();
    Client::try_from(ClientConfig {
        protocol,
        extra_root_certificates,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..Default::default()
    })
    .map_err(|e| AgentError::Pull {
        reference: reference.whole(),
        failure: PullFailure::Registry,
        detail: format!("registry client for {registry}: {}", error_chain(&e)),
    })
}

pub fn registry_auth(creds: Option<&Credentials>) -> RegistryAuth {
    match creds {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// A failed registry call sorted into what a user can act on.
pub fn classify(e: &OciDistributionError) -> PullFailure {
    let code = |codes: &[OciErrorCode], env: &oci_client::errors::OciEnvelope| {
        env.errors.iter().any(|x| codes.contains(&x.code))
    };
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => PullFailure::NotFound,
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => PullFailure::Unauthorized,
        OciDistributionError::RegistryError { envelope, .. } => {
            use OciErrorCode::*;
            if code(&[Unauthorized, Denied], envelope) {
                PullFailure::Unauthorized
            } else if code(
                &[ManifestUnknown, NameUnknown, NotFound, BlobUnknown],
                envelope,
            ) {
                PullFailure::NotFound
            } else {
                PullFailure::Registry
            }
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => PullFailure::Unauthorized,
        OciDistributionError::ServerError { code: 404, .. } => PullFailure::NotFound,
        OciDistributionError::RequestError(r)
            if r.status().is_none() && is_certificate_problem(r) =>
        {
            PullFailure::Certificate
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            PullFailure::Unreachable
        }
        OciDistributionError::RequestError(r) if r.status().is_none() => PullFailure::Unreachable,
        _ => PullFailure::Registry,
    }
}

/// Whether `e` failed on the registry's TLS certificate (untrusted issuer,
/// expired, wrong name): the TLS library's text in the error's causes.
fn is_certificate_problem(e: &reqwest::Error) -> bool {
    let text = error_chain(e).to_ascii_lowercase();
    text.contains("certificate") || text.contains("self-signed") || text.contains("self signed")
}

/// The text of `e` with its causes (reqwest hides "connection refused" in them).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// What a finished pull stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The names it is stored under.
    pub names: Vec<String>,
    /// Digest of the (platform) manifest.
    pub digest: String,
    /// Layers fetched by this pull (the others were in the content store).
    pub fetched_layers: usize,
    pub layers: usize,
}

/// A line of pull progress.
pub type Progress = Arc<dyn Fn(String) + Send + Sync>;
/// Bytes of a layer just received (for a progress bar).
pub type ByteProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// Pulls into one containerd, concurrent pulls of a reference coalesced.
pub struct Puller {
    pub cfg: RegistryConfig,
    inflight: Coalescer<std::result::Result<Pulled, (PullFailure, String)>>,
    bytes: Option<ByteProgress>,
}

impl Puller {
    pub fn new(cfg: RegistryConfig) -> Self {
        Puller {
            cfg,
            inflight: Coalescer::default(),
            bytes: None,
        }
    }

    /// Report every chunk of layer bytes fetched to `f`.
    pub fn on_bytes(mut self, f: ByteProgress) -> Self {
        self.bytes = Some(f);
        self
    }

    /// Pull `given` into `ctr` (one fetch however many ask at once; a
    /// joiner's `progress` only hears that it waits).
    pub async fn pull(
        &self,
        ctr: &Ctr,
        given: &str,
        creds: Option<Credentials>,
        progress: Progress,
    ) -> Result<Pulled> {
        let reference = parse_reference(given)?;
        let full = reference.whole();
        let names = stored_names(given, &reference);
        let cfg = self.cfg.clone();
        let ctr = ctr.clone();
        let p = progress.clone();
        let bytes = self.bytes.clone();
        let (res, joined) = self
            .inflight
            .run(&full, move || async move {
                let to = Sink { lines: p, bytes };
                fetch(&cfg, &ctr, &reference, creds, &names, &to)
                    .await
                    .map_err(|e| match e {
                        AgentError::Pull {
                            failure, detail, ..
                        } => (failure, detail),
                        other => (PullFailure::Store, other.to_string()),
                    })
            })
            .await;
        if joined {
            progress(format!("joined a pull of {full} already under way"));
        }
        res.map_err(|(failure, detail)| AgentError::Pull {
            reference: full,
            failure,
            detail,
        })
    }
}

/// Where a pull reports to: lines, and layer bytes when someone counts them.
pub struct Sink {
    pub lines: Progress,
    pub bytes: Option<ByteProgress>,
}

/// Fetch `reference` from its mirrors in order, then from itself: the
/// first that has it wins; the registry's own error when none has it.
/// `creds` go to the registry itself only (else the docker config's for
/// it); a mirror gets the docker config's credentials for the mirror.
async fn fetch(
    cfg: &RegistryConfig,
    ctr: &Ctr,
    reference: &Reference,
    creds: Option<Credentials>,
    names: &[String],
    to: &Sink,
) -> Result<Pulled> {
    let progress = &to.lines;
    let sources = cfg.sources(reference);
    let mirrors = &sources[..sources.len().saturating_sub(1)];
    for from in mirrors {
        let host = from.resolve_registry();
        progress(format!("trying mirror {host}"));
        let auth = registry_auth(cfg.config_credentials(host)?.as_ref());
        // built by the one fetcher only: it takes a while (TLS roots)
        let client = client_for(cfg, from)?;
        match ctr.pull_image(&client, from, &auth, names, to).await {
            Ok(pulled) => return Ok(pulled),
            Err(e) => progress(format!("mirror {host}: {e}")),
        }
    }
    let creds = match creds {
        Some(c) => Some(c),
        None => cfg.config_credentials(reference.registry())?,
    };
    let client = client_for(cfg, reference)?;
    let auth = registry_auth(creds.as_ref());
    ctr.pull_image(&client, reference, &auth, names, to).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_become_docker_hub_references() {
        let full = |r: &str| parse_reference(r).unwrap().whole();
        assert_eq!(full("python:3.12"), "docker.io/library/python:3.12");
        assert_eq!(full("python"), "docker.io/library/python:latest");
        assert_eq!(full("me/app:1"), "docker.io/me/app:1");
        assert_eq!(full("127.0.0.1:5000/app:1"), "127.0.0.1:5000/app:1");
        assert_eq!(full("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = parse_reference(&format!("reg.io:5000/app@{d}")).unwrap();
        assert_eq!((r.registry(), r.repository()), ("reg.io:5000", "app"));
        assert_eq!((r.tag(), r.digest()), (None, Some(d.as_str())));
        let r = parse_reference("python:3.12").unwrap();
        assert_eq!(r.resolve_registry(), "index.docker.io");
        for bad in ["", "a b", "http://x/y", "UPPER/x", "x@sha256:00"] {
            assert!(parse_reference(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            stored_names("python:3.12", &parse_reference("python:3.12").unwrap()),
            ["python:3.12", "docker.io/library/python:3.12"]
        );
        let r = parse_reference("127.0.0.1:5000/app:1").unwrap();
        assert_eq!(
            stored_names("127.0.0.1:5000/app:1", &r),
            ["127.0.0.1:5000/app:1"]
        );
    }

    #[test]
    fn plain_http_only_for_loopback_and_configured_registries() {
        let cfg = RegistryConfig {
            insecure: vec!["reg.lan:5000".into()],
            ..Default::default()
        };
        for yes in [
            "127.0.0.1:5000",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
            "reg.lan:5000",
        ] {
            assert!(cfg.plain_http(yes), "{yes}");
        }
        for no in [
            "index.docker.io",
            "reg.lan",
            "10.0.0.1:5000",
            "localhost.evil.io:5000",
        ] {
            assert!(!cfg.plain_http(no), "{no}");
        }
    }

    #[test]
    fn docker_config_gives_credentials_by_registry() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode("ann:s3:cret");
        let cfg = serde_json::json!({"auths": {
            "127.0.0.1:5000": {"auth": b64},
            "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
            "bad.io": {"auth": "%%%"},
        }});
        let c = docker_config_credentials(&cfg, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ann", "s3:cret")
        );
        let c = docker_config_credentials(&cfg, "docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "hub");
        assert_eq!(docker_config_credentials(&cfg, "other.io").unwrap(), None);
        assert!(docker_config_credentials(&cfg, "bad.io").is_err());
        assert!(!format!("{c:?}").contains("pw"), "debug hides the password");
    }
}
