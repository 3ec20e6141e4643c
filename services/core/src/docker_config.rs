//! Registry credentials from a docker `config.json` (also a Kubernetes
//! `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson`): the
//! `auths` entry of a registry host, `username`/`password` or a base64
//! `auth` of `user:password`.

use base64::Engine;

use crate::CoreError;

/// The (username, password) `config` holds for `registry` (its `auths`
/// entry by host, with or without a scheme; for Docker Hub also by its v1
/// URL); `None` when it has none.
pub fn credentials(
    config: &serde_json::Value,
    registry: &str,
) -> Result<Option<(String, String)>, CoreError> {
    let auths = &config["auths"];
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" || registry == "index.docker.io" {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
        keys.push("docker.io".into());
    }
    let Some(entry) = keys.iter().find_map(|k| auths.get(k)) else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(Some((u.into(), p.into())));
    }
    let Some(auth) = entry["auth"].as_str() else {
        return Ok(None);
    };
    let bad = |why: String| CoreError::DockerConfig {
        registry: registry.to_string(),
        why,
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(raw).map_err(|e| bad(e.to_string()))?;
    let (u, p) = text
        .split_once(':')
        .ok_or_else(|| bad("not user:password".into()))?;
    Ok(Some((u.into(), p.into())))
}
