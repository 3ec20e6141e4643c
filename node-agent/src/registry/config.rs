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
//! insecure = true                # plain HTTP (loopback registries always are)
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
    insecure: bool,
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
            for m in &entry.mirrors {
                check_host(&format!("{key}.mirrors"), m).map_err(bad)?;
            }
            if entry.insecure {
                cfg.insecure.push(host.clone());
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

    /// Whether `registry` is reached over plain HTTP: loopback hosts and
    /// the configured insecure registries only.
    pub fn plain_http(&self, registry: &str) -> bool {
        self.insecure.iter().any(|r| r == registry) || is_loopback(registry)
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
