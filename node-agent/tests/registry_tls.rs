//! Pulls from a real registry over HTTPS (Debian's docker-registry with a
//! certificate signed by a private CA this test makes with openssl) into a
//! real containerd (root; skipped without containerd unless
//! SANDPOOL_REQUIRE_CONTAINERD=1). With the CA as the registry's `ca_file`
//! the pull succeeds; without it the pull fails naming the certificate
//! problem; a loopback registry stays plain HTTP unless configured.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use sandpool_node_agent::{
    containerd::Ctr,
    daemon::ContainerdDaemon,
    error::{AgentError, PullFailure},
    registry::{Progress, Puller, RegistryConfig},
    testkit::{
        gate,
        registry::{Registry, TestCerts, build_images, gate_tools, push},
    },
};

fn quiet() -> Progress {
    Arc::new(|line: String| eprintln!("pull: {line}"))
}

fn config(dir: &std::path::Path, text: &str) -> RegistryConfig {
    let path = dir.join("registries.toml");
    std::fs::write(&path, text).unwrap();
    RegistryConfig::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_over_https_with_a_private_ca_pulls_only_with_its_ca_configured() {
    let Some(_) = gate().filter(|_| gate_tools()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let daemon = ContainerdDaemon::start(&dir.path().join("containerd")).unwrap();
    let ctr = Ctr::connect(&daemon.socket, "sandpool-test", Duration::from_secs(30))
        .await
        .unwrap();
    build_images(dir.path());
    let certs = TestCerts::make(&dir.path().join("certs"));
    let reg = Registry::start_tls(&dir.path().join("tls"), &certs);
    let a = &reg.addr;
    push(&dir.path().join("oci"), "app", &format!("{a}/app:1"), &[]);
    let r = format!("{a}/app:1");

    // HTTPS (insecure = false) with only the host's CA bundle: the private
    // CA is unknown, and the error says it is the certificate
    let host_only = config(
        dir.path(),
        &format!("[registries.\"{a}\"]\ninsecure = false\n"),
    );
    let e = Puller::new(host_only)
        .pull(&ctr, &r, None, quiet())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(
            e,
            AgentError::Pull {
                failure: PullFailure::Certificate,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("certificate verify failed"), "{text}");
    assert!(text.contains("ca_file"), "says what to do: {text}");
    assert_eq!(e.kind(), "registry_certificate");

    // a loopback registry is plain HTTP unless configured otherwise: the
    // HTTPS registry refuses that, and nothing is pulled
    let e = Puller::new(RegistryConfig::default())
        .pull(&ctr, &r, None, quiet())
        .await
        .unwrap_err();
    assert!(
        !matches!(
            e,
            AgentError::Pull {
                failure: PullFailure::Certificate,
                ..
            }
        ),
        "plain HTTP, no TLS: {e}"
    );

    // the CA as the registry's ca_file: the pull succeeds over HTTPS
    let with_ca = config(
        dir.path(),
        &format!(
            "[registries.\"{a}\"]\nca_file = \"{}\"\n",
            certs.ca_cert.display()
        ),
    );
    let p = Puller::new(with_ca)
        .pull(&ctr, &r, None, quiet())
        .await
        .unwrap();
    assert_eq!((p.layers, p.fetched_layers), (2, 2));
    assert_eq!(p.names, std::slice::from_ref(&r));
    let stored = ctr.read_content(&p.digest).await.unwrap();
    assert!(!stored.is_empty(), "the manifest is in the content store");
}
