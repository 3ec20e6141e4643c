//! The fake apiserver's side of CRD conversion webhooks: which CRDs convert
//! through a webhook (their `spec.conversion`), and the HTTPS call to it
//! (trusting the CRD's `caBundle`), as a real apiserver makes it. Plus a
//! throwaway CA and serving certificate (openssl) for tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// How one CRD's objects are converted: through `url`, trusting `ca_pem`.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub storage_version: String,
}

/// `(group, plural)` → its webhook, for the CRDs whose strategy is Webhook.
pub type Webhooks = BTreeMap<(String, String), Webhook>;

/// The webhooks the given CRDs name (CRDs with strategy None are skipped).
pub fn webhooks_of(crds: &[CustomResourceDefinition]) -> Webhooks {
    let mut out = Webhooks::new();
    for crd in crds {
        let Some(conv) = &crd.spec.conversion else {
            continue;
        };
        if conv.strategy != "Webhook" {
            continue;
        }
        let Some(cc) = conv.webhook.as_ref().and_then(|w| w.client_config.as_ref()) else {
            continue;
        };
        let storage = crd.spec.versions.iter().find(|v| v.storage);
        out.insert(
            (crd.spec.group.clone(), crd.spec.names.plural.clone()),
            Webhook {
                url: cc.url.clone().unwrap_or_default(),
                ca_pem: cc
                    .ca_bundle
                    .as_ref()
                    .map(|b| b.0.clone())
                    .unwrap_or_default(),
                storage_version: storage.map(|v| v.name.clone()).unwrap_or_default(),
            },
        );
    }
    out
}

/// `(group, version, plural)` of a custom resource request path.
pub fn resource_of(path: &str) -> Option<(String, String, String)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["apis", g, v, "namespaces", _, plural, ..] | ["apis", g, v, plural, ..] => {
            Some((g.to_string(), v.to_string(), plural.to_string()))
        }
        _ => None,
    }
}

/// Sends `objects` to the webhook for conversion to `desired`; the converted
/// objects, or the webhook's failure message.
pub async fn convert(
    hook: &Webhook,
    desired: &str,
    objects: Vec<Value>,
) -> Result<Vec<Value>, String> {
    let review = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
        "request": {"uid": uuid::Uuid::new_v4().to_string(), "desiredAPIVersion": desired,
                    "objects": objects}
    });
    let answer = post(
        hook,
        &serde_json::to_vec(&review).map_err(|e| e.to_string())?,
    )
    .await?;
    let resp = &answer["response"];
    if resp["result"]["status"] != "Success" {
        return Err(format!(
            "conversion webhook failed: {}",
            resp["result"]["message"].as_str().unwrap_or_default()
        ));
    }
    Ok(resp["convertedObjects"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// One HTTPS POST (HTTP/1.1, `Connection: close`) of `body` to the webhook.
async fn post(hook: &Webhook, body: &[u8]) -> Result<Value, String> {
    let rest = hook
        .url
        .strip_prefix("https://")
        .ok_or("webhook URL is not https")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or("webhook URL has no port")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&hook.ca_pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to the webhook: {e}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(body).await.map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // a close_notify-less close is fine here: the body is read as far as it came
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let (status, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("webhook answered {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("webhook body: {e}"))
}

/// A throwaway CA and a serving certificate for `localhost`/127.0.0.1 signed
/// by it, in `dir`: `(ca.pem, tls.crt, tls.key)` paths.
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f);
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (scripts/install-deps.sh installs it)");
        assert!(st.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    std::fs::write(p("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ]);
    (p("ca.pem"), p("tls.crt"), p("tls.key"))
}

/// The webhook converting a request on `path` and the version it asks for,
/// when that is not the storage version (scale requests carry no object).
pub fn hook_for(hooks: &Webhooks, path: &str) -> Option<(Webhook, String)> {
    let (group, version, plural) = resource_of(path)?;
    let hook = hooks.get(&(group.clone(), plural))?;
    (version != hook.storage_version && !path.ends_with("/scale"))
        .then(|| (hook.clone(), format!("{group}/{version}")))
}

/// A write's body, converted to the storage version.
pub async fn body_to_storage(hook: &Webhook, asked: &str, body: Value) -> Result<Value, String> {
    let group = asked.split_once('/').map_or("", |(g, _)| g);
    let mut out = convert(
        hook,
        &format!("{group}/{}", hook.storage_version),
        vec![body],
    )
    .await?;
    out.pop()
        .ok_or_else(|| "conversion webhook returned no object".to_string())
}

/// A response (an object or a list's items), converted to the asked version.
pub async fn response_to(hook: &Webhook, asked: &str, out: &mut Value) -> Result<(), String> {
    if let Some(items) = out.get_mut("items").and_then(Value::as_array_mut) {
        if !items.is_empty() {
            *items = convert(hook, asked, std::mem::take(items)).await?;
        }
        out["apiVersion"] = json!(asked);
    } else if out.get("kind").is_some_and(|k| k != "Status") {
        let obj = std::mem::take(out);
        let mut conv = convert(hook, asked, vec![obj]).await?;
        *out = conv.pop().ok_or("conversion webhook returned no object")?;
    }
    Ok(())
}

/// `(collection, name)` of an object path (`…/<plural>/<name>[/<sub>]`).
pub fn object_of(path: &str) -> Option<(String, String)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segs.iter().position(|s| *s == "namespaces")? + 2;
    let name = segs.get(at + 1)?;
    Some((format!("/{}", segs[..=at].join("/")), name.to_string()))
}

/// A patch in a non-storage version, applied as the apiserver applies it:
/// the stored object converted to the asked version, patched there, and
/// converted back — the new stored object (to replace the old one with).
pub async fn patched(
    hook: &Webhook,
    asked: &str,
    stored: Value,
    content_type: &str,
    patch: &Value,
) -> Result<Value, String> {
    let mut obj = convert(hook, asked, vec![stored])
        .await?
        .pop()
        .ok_or("conversion webhook returned no object")?;
    if content_type.contains("json-patch") {
        super::json_patch(&mut obj, patch.as_array().map_or(&[][..], Vec::as_slice))?;
    } else {
        sandpool_core::batch::merge_patch(&mut obj, patch);
    }
    body_to_storage(hook, asked, obj).await
}
