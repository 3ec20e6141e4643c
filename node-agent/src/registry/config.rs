//! Where and how to pull from: plain-HTTP registries, per-registry mirrors
//! and a docker `config.json` for credentials, from the registries config
//! file (`DATA_DIR/registries.toml` or `--registries-config`):
//!
//! ```toml
//! docker_config = "/root/.docker/config.json"  # credentials (`auths`)
//!
//! [registries."docker.io"]
//! mirrors = ["mirror.lan:5000"]  # tried in order, then docker.io itself
//!
//! [registries."mirror.lan:5000"]
//! insecure = true                # plain HTTP (loopback registries are by default)
//!
//! [registries."reg.corp:5000"]
//! ca_file = "/etc/sandpool/corp-ca.pem"  # trusted besides the host's CA bundle
//!
//! [registries."127.0.0.1:5443"]
//! insecure = false               # HTTPS although loopback
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use oci_client::Reference;
use serde::Deserialize;

use super::{Credentials, docker_config_credentials, is_loopback};
use crate::error::{AgentError, Result};

/// Where and how to pull from.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Mirrors by registry (`docker.io`, `host[:port]`), tried in order
    /// before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// A docker `config.json` whose `auths` give credentials by registry.
    pub docker_config: Option<PathBuf>,
    /// Registries reached over HTTPS even though loopback (`insecure = false`
    /// or a `ca_file`).
    pub https: Vec<String>,
    /// Extra trusted CA certificates (PEM, one per entry) by registry, on
    /// top of the host's CA bundle.
    pub ca_certs: BTreeMap<String, Vec<Vec<u8>>>,
}

/// The file's shape; unknown keys are refused, naming them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    docker_config: Option<PathBuf>,
    #[serde(default)]
    registries: BTreeMap<String, Entry>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    mirrors: Vec<String>,
    #[serde(default)]
    insecure: Option<bool>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    // Client certificates (mutual TLS) are not supported: these keys (ours
    // and containerd's `hosts.toml` spelling) are refused by name.
    #[serde(default)]
    client_cert: Option<toml::Value>,
    #[serde(default)]
    client_key: Option<toml::Value>,
    #[serde(default)]
    client: Option<toml::Value>,
}

impl Entry {
    /// The client-certificate key the entry sets, if any.
    fn client_cert_key(&self) -> Option<&'static str> {
        [
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
            ("client", &self.client),
        ]
        .into_iter()
        .find_map(|(k, v)| v.is_some().then_some(k))
    }
}

/// The PEM certificates in the CA file at `path` (a bundle may hold several).
fn read_ca_file(key: &str, path: &Path) -> std::result::Result<Vec<Vec<u8>>, String> {
    let bad = |why: String| format!("{key}.ca_file {}: {why}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let pem = &rest[start..start + end + END.len()];
        reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        certs.push(format!("{pem}\n").into_bytes());
        rest = &rest[start + end + END.len()..];
    }
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// `host[:port]` as a registry name: no scheme, no path, no spaces.
fn check_host(key: &str, host: &str) -> std::result::Result<(), String> {
    let bad = host.is_empty()
        || host.contains("://")
        || host.contains('/')
        || host.chars().any(char::is_whitespace);
    if bad {
        return Err(format!("{key}: {host:?} is not a registry host[:port]"));
    }
    Ok(())
}

impl RegistryConfig {
    /// The config in `path`'s TOML text; errors name the key at fault.
    pub fn parse(path: &Path, text: &str) -> Result<RegistryConfig> {
        let bad = |detail: String| AgentError::RegistryConfig {
            path: path.display().to_string(),
            detail,
        };
        let file: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut cfg = RegistryConfig {
            docker_config: file.docker_config,
            ..Default::default()
        };
        for (host, entry) in file.registries {
            let key = format!("registries.{host:?}");
            check_host(&key, &host).map_err(bad)?;
            if let Some(k) = entry.client_cert_key() {
                return Err(bad(format!(
                    "{key}.{k}: client certificates (mutual TLS) for registries are not supported; \
                     use credentials (docker_config or OpenSandbox image.auth) instead"
                )));
            }
            for m in &entry.mirrors {
                check_host(&format!("{key}.mirrors"), m).map_err(bad)?;
            }
            if let Some(ca) = &entry.ca_file {
                if entry.insecure == Some(true) {
                    return Err(bad(format!(
                        "{key}: insecure (plain HTTP) and ca_file (HTTPS) contradict"
                    )));
                }
                let certs = read_ca_file(&key, ca).map_err(bad)?;
                cfg.ca_certs.insert(host.clone(), certs);
            }
            match entry.insecure {
                Some(true) => cfg.insecure.push(host.clone()),
                Some(false) => cfg.https.push(host.clone()),
                None if entry.ca_file.is_some() => cfg.https.push(host.clone()),
                None => {}
            }
            if !entry.mirrors.is_empty() {
                cfg.mirrors.insert(host, entry.mirrors);
            }
        }
        Ok(cfg)
    }

    /// The config in `path`.
    pub fn load(path: &Path) -> Result<RegistryConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::RegistryConfig {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// Whether `registry` is reached over plain HTTP: the configured
    /// insecure registries, and loopback hosts unless configured for HTTPS.
    pub fn plain_http(&self, registry: &str) -> bool {
        let listed = |l: &[String]| l.iter().any(|r| r == registry);
        listed(&self.insecure) || (is_loopback(registry) && !listed(&self.https))
    }

    /// Where to fetch `reference` from, in order: its registry's mirrors
    /// (the same repository and tag or digest there), then itself.
    pub fn sources(&self, reference: &Reference) -> Vec<Reference> {
        let registry = reference.registry();
        let mirrors = self.mirrors.get(registry).or_else(|| {
            (registry == "docker.io")
                .then(|| self.mirrors.get("index.docker.io"))
                .flatten()
        });
        let mut out: Vec<Reference> = mirrors
            .into_iter()
            .flatten()
            .map(|m| match reference.digest() {
                Some(d) => Reference::with_digest(
                    m.clone(),
                    reference.repository().to_string(),
                    d.to_string(),
                ),
                None => Reference::with_tag(
                    m.clone(),
                    reference.repository().to_string(),
                    reference.tag().unwrap_or("latest").to_string(),
                ),
            })
            .collect();
        out.push(reference.clone());
        out
    }

    /// The credentials the docker config gives `registry`, if one is set.
    pub fn config_credentials(&self, registry: &str) -> Result<Option<Credentials>> {
        let Some(path) = &self.docker_config else {
            return Ok(None);
        };
        let bad = |detail: String| AgentError::RegistryConfig {
            path: path.display().to_string(),
            detail: format!("docker_config: {detail}"),
        };
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a config.json: {e}")))?;
        docker_config_credentials(&json, registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegistryConfig> {
        RegistryConfig::parse(Path::new("/etc/registries.toml"), text)
    }

    #[test]
    fn a_config_file_gives_mirrors_insecure_registries_and_a_docker_config() {
        let cfg = parse(
            r#"
docker_config = "/x/config.json"
[registries."docker.io"]
mirrors = ["mirror.lan:5000", "127.0.0.1:5001"]
[registries."mirror.lan:5000"]
insecure = true
"#,
        )
        .unwrap();
        assert_eq!(
            cfg.docker_config.as_deref(),
            Some(Path::new("/x/config.json"))
        );
        assert!(cfg.plain_http("mirror.lan:5000"));
        assert!(!cfg.plain_http("docker.io"));
        let r = super::super::parse_reference("python:3.12").unwrap();
        let sources: Vec<String> = cfg.sources(&r).iter().map(Reference::whole).collect();
        assert_eq!(
            sources,
            [
                "mirror.lan:5000/library/python:3.12",
                "127.0.0.1:5001/library/python:3.12",
                "docker.io/library/python:3.12"
            ]
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = super::super::parse_reference(&format!("python@{d}")).unwrap();
        assert_eq!(
            cfg.sources(&r)[0].whole(),
            format!("mirror.lan:5000/library/python@{d}")
        );
        let other = super::super::parse_reference("reg.io/app:1").unwrap();
        assert_eq!(
            cfg.sources(&other),
            std::slice::from_ref(&other),
            "no mirrors: the origin"
        );
        assert!(parse("").unwrap().mirrors.is_empty());
    }

    #[test]
    fn a_bad_config_is_an_error_naming_the_key() {
        for (text, names) in [
            (
                "[registries.\"docker.io\"]\nmirror = [\"m:5000\"]\n",
                "mirror",
            ),
            ("docker_confg = \"/x\"\n", "docker_confg"),
            (
                "[registries.\"docker.io\"]\nmirrors = \"m:5000\"\n",
                "mirrors",
            ),
            (
                "[registries.\"docker.io\"]\ninsecure = \"yes\"\n",
                "insecure",
            ),
            (
                "[registries.\"docker.io\"]\nmirrors = [\"https://m:5000\"]\n",
                "registries.\"docker.io\".mirrors",
            ),
            (
                "[registries.\"a b\"]\ninsecure = true\n",
                "registries.\"a b\"",
            ),
            ("not toml at all", "registries.toml"),
            (
                "[registries.\"r:1\"]\nclient_cert = \"/c.pem\"\n",
                "registries.\"r:1\".client_cert: client certificates (mutual TLS) for registries are not supported",
            ),
            (
                "[registries.\"r:1\"]\nclient_key = \"/k.pem\"\n",
                "registries.\"r:1\".client_key: client certificates",
            ),
            (
                "[registries.\"r:1\"]\nclient = [[\"/c.pem\", \"/k.pem\"]]\n",
                "registries.\"r:1\".client: client certificates",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(names), "{text:?}: {e}");
            assert!(e.contains("/etc/registries.toml"), "{e}");
        }
        let e = RegistryConfig::load(Path::new("/nonexistent/registries.toml")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/registries.toml"),
            "{e}"
        );
    }

    /// A self-signed CA certificate made with the openssl CLI, in `dir`.
    fn ca_pem(dir: &Path) -> PathBuf {
        let (key, crt) = (dir.join("ca.key"), dir.join("ca.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=test-ca", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        crt
    }

    #[test]
    fn a_ca_file_means_https_with_its_certificates_also_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_pem(dir.path());
        let two = dir.path().join("two.pem");
        let pem = std::fs::read_to_string(&ca).unwrap();
        std::fs::write(&two, format!("{pem}{pem}")).unwrap();
        let cfg = parse(&format!(
            "[registries.\"127.0.0.1:5443\"]\nca_file = {ca:?}\n\
             [registries.\"reg.corp\"]\nca_file = {two:?}\n\
             [registries.\"localhost:5000\"]\ninsecure = false\n"
        ))
        .unwrap();
        assert!(!cfg.plain_http("127.0.0.1:5443"), "a CA file: HTTPS");
        assert!(!cfg.plain_http("localhost:5000"), "insecure = false: HTTPS");
        assert!(cfg.plain_http("127.0.0.1:5000"), "other loopback: HTTP");
        assert_eq!(cfg.ca_certs["127.0.0.1:5443"].len(), 1);
        assert_eq!(cfg.ca_certs["reg.corp"].len(), 2, "a bundle");
        let r = super::super::parse_reference("127.0.0.1:5443/app:1").unwrap();
        super::super::client_for(&cfg, &r).unwrap();

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        for (text, names) in [
            (
                format!("[registries.\"r:1\"]\nca_file = {garbage:?}\n"),
                "holds no PEM certificate",
            ),
            (
                "[registries.\"r:1\"]\nca_file = \"/nonexistent/ca.pem\"\n".to_string(),
                "/nonexistent/ca.pem",
            ),
            (
                format!("[registries.\"r:1\"]\nca_file = {ca:?}\ninsecure = true\n"),
                "contradict",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(names), "{text:?}: {e}");
            assert!(e.contains("registries.\"r:1\""), "{e}");
        }
    }

    #[test]
    fn credentials_come_from_the_configured_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"127.0.0.1:5000":{"username":"ann","password":"pw"}}}"#,
        )
        .unwrap();
        let cfg = RegistryConfig {
            docker_config: Some(path.clone()),
            ..Default::default()
        };
        let c = cfg.config_credentials("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(c.username, "ann");
        assert_eq!(cfg.config_credentials("other:1").unwrap(), None);
        std::fs::write(&path, "{").unwrap();
        let e = cfg.config_credentials("127.0.0.1:5000").unwrap_err();
        assert!(e.to_string().contains("docker_config"), "{e}");
        assert_eq!(
            RegistryConfig::default().config_credentials("x").unwrap(),
            None
        );
    }
}
