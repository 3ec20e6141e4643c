//! The conversion webhook over HTTPS, called by the fake apiserver the way a
//! real one calls it when a CRD's conversion strategy is Webhook: a v1alpha1
//! write is stored as v1beta1 and read back in either version.

mod support;

use k8s_openapi::ByteString;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::WebhookClientConfig;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use sandpool_controller::conversion::{self, WebhookConfig};
use sandpool_controller::crd::{Sandbox, SandboxClaim, all_crds};
use serde_json::json;
use support::FakeApi;
use support::webhook::{self, Webhook};

/// A running webhook (its CA PEM and URL); the tempdir holds its certificate.
async fn start_webhook() -> (Vec<u8>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = webhook::make_certs(dir.path());
    let cfg = WebhookConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        cert,
        key,
    };
    let (addr, serve) = conversion::bind(&cfg).await.expect("webhook binds");
    tokio::spawn(serve);
    let url = format!("https://localhost:{}/convert", addr.port());
    (std::fs::read(ca).expect("CA"), url, dir)
}

/// The fake apiserver with the agent-sandbox CRDs converting through `url`.
fn fake_with_webhook(ca: &[u8], url: &str) -> FakeApi {
    let crds: Vec<_> = all_crds()
        .into_iter()
        .map(|c| {
            if !c.spec.group.ends_with("agents.x-k8s.io") {
                return c;
            }
            let cc = WebhookClientConfig {
                url: Some(url.to_string()),
                ca_bundle: Some(ByteString(ca.to_vec())),
                service: None,
            };
            conversion::with_webhook(c, cc)
        })
        .collect();
    let api = FakeApi::new();
    api.install_crds(&crds);
    api
}

fn alpha(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1alpha1", kind), plural)
}

#[tokio::test]
async fn a_v1alpha1_claim_is_stored_as_v1beta1_and_reads_back_in_both() {
    let (ca, url, _dir) = start_webhook().await;
    let api = fake_with_webhook(&ca, &url);
    let client = api.client();
    let ar = alpha(
        "extensions.agents.x-k8s.io",
        "SandboxClaim",
        "sandboxclaims",
    );
    let old: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let mut claim = DynamicObject::new("c1", &ar);
    claim.data = json!({"spec": {"sandboxTemplateRef": {"name": "t"}, "warmpool": "p"}});
    let created = old.create(&PostParams::default(), &claim).await.unwrap();
    // the answer is in the version asked for
    assert_eq!(created.data["spec"]["warmpool"], "p");
    assert!(created.data["spec"].get("warmPoolRef").is_none());

    let stored = api.with_store(|s| {
        s.get(
            "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/default/sandboxclaims",
            "c1",
        )
        .cloned()
    });
    let stored = stored.expect("stored in v1beta1");
    assert_eq!(stored["spec"]["warmPoolRef"], json!({"name": "p"}));
    assert!(stored["spec"].get("warmpool").is_none(), "{stored}");

    let new: Api<SandboxClaim> = Api::namespaced(client.clone(), "default");
    let beta = new.get("c1").await.unwrap();
    assert_eq!(
        beta.spec.warm_pool_ref.as_ref().map(|r| r.name.as_str()),
        Some("p")
    );
    let back = old.get("c1").await.unwrap();
    assert_eq!(
        back.types.as_ref().unwrap().api_version,
        "extensions.agents.x-k8s.io/v1alpha1"
    );
    assert_eq!(
        back.data["spec"],
        json!({"sandboxTemplateRef": {"name": "t"}, "warmpool": "p"})
    );
    let listed = old.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items[0].data["spec"]["warmpool"], "p");
}

#[tokio::test]
async fn a_suspended_v1alpha1_sandbox_is_stored_with_operating_mode() {
    let (ca, url, _dir) = start_webhook().await;
    let api = fake_with_webhook(&ca, &url);
    let client = api.client();
    let ar = alpha("agents.x-k8s.io", "Sandbox", "sandboxes");
    let old: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let mut sb = DynamicObject::new("s1", &ar);
    sb.data = json!({"spec": {"replicas": 0,
        "podTemplate": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    old.create(&PostParams::default(), &sb).await.unwrap();
    let beta = Api::<Sandbox>::namespaced(client.clone(), "default")
        .get("s1")
        .await
        .unwrap();
    assert!(beta.spec.replicas.is_none());
    assert_eq!(
        serde_json::to_value(beta.spec.operating_mode).unwrap(),
        json!("Suspended")
    );
    let back = old.get("s1").await.unwrap();
    assert_eq!(back.data["spec"]["replicas"], 0);
    assert!(back.data["spec"].get("operatingMode").is_none());

    // a v1alpha1 merge patch resumes it: applied in v1alpha1, stored converted
    let patch = json!({"spec": {"replicas": 1}});
    let resumed = old
        .patch("s1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(resumed.data["spec"]["replicas"], 1);
    let beta = Api::<Sandbox>::namespaced(client.clone(), "default")
        .get("s1")
        .await
        .unwrap();
    assert!(beta.spec.replicas.is_none());
    assert_eq!(
        serde_json::to_value(beta.spec.operating_mode).unwrap(),
        json!("Running")
    );
}

#[tokio::test]
async fn a_v1alpha1_patch_of_a_claim_is_applied_in_v1alpha1() {
    let (ca, url, _dir) = start_webhook().await;
    let api = fake_with_webhook(&ca, &url);
    let client = api.client();
    let ar = alpha(
        "extensions.agents.x-k8s.io",
        "SandboxClaim",
        "sandboxclaims",
    );
    let old: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let mut claim = DynamicObject::new("c1", &ar);
    claim.data = json!({"spec": {"sandboxTemplateRef": {"name": "t"}, "warmpool": "none"}});
    old.create(&PostParams::default(), &claim).await.unwrap();
    // the patch is applied to the v1alpha1 view, then stored converted
    let patch = json!({"spec": {"warmpool": "p2"}});
    old.patch("c1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let beta = Api::<SandboxClaim>::namespaced(client, "default")
        .get("c1")
        .await
        .unwrap();
    assert_eq!(
        beta.spec.warm_pool_ref.as_ref().map(|r| r.name.as_str()),
        Some("p2")
    );
    assert!(beta.spec.warmpool.is_none());
}

#[tokio::test]
async fn an_untrusted_or_failing_webhook_fails_the_request() {
    let (_ca, url, _dir) = start_webhook().await;
    // a CA that did not sign the webhook's certificate: TLS fails
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = webhook::make_certs(other.path());
    let api = fake_with_webhook(&std::fs::read(wrong_ca).unwrap(), &url);
    let ar = alpha(
        "extensions.agents.x-k8s.io",
        "SandboxClaim",
        "sandboxclaims",
    );
    let old: Api<DynamicObject> = Api::namespaced_with(api.client(), "default", &ar);
    let mut claim = DynamicObject::new("c1", &ar);
    claim.data = json!({"spec": {"sandboxTemplateRef": {"name": "t"}}});
    let err = old
        .create(&PostParams::default(), &claim)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(api.with_store(|s| {
        s.list("/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/default/sandboxclaims")
            .is_empty()
    }));

    // the webhook itself refusing an object answers Failed with its reason
    let (ca, url, _dir2) = start_webhook().await;
    let hook = Webhook {
        url,
        ca_pem: ca,
        storage_version: "v1beta1".into(),
    };
    let err = webhook::convert(
        &hook,
        "agents.x-k8s.io/v1beta1",
        vec![json!({"apiVersion": "agents.x-k8s.io/v1alpha1", "kind": "Pod"})],
    )
    .await
    .unwrap_err();
    assert!(err.contains("unknown kind \"Pod\""), "{err}");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, cert, key) = webhook::make_certs(dir.path());
    let cfg = WebhookConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let (addr, serve) = conversion::bind(&cfg).await.unwrap();
    tokio::spawn(serve);
    let url = format!("https://localhost:{}/convert", addr.port());
    let hook = |ca: &std::path::Path| Webhook {
        url: url.clone(),
        ca_pem: std::fs::read(ca).unwrap(),
        storage_version: "v1beta1".into(),
    };
    let obj = || {
        vec![
            json!({"apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
        "metadata": {"name": "s"}, "spec": {}}),
        ]
    };
    let desired = "agents.x-k8s.io/v1alpha1";
    webhook::convert(&hook(&ca_a), desired, obj())
        .await
        .unwrap();

    // renewed (as a Secret's mount is): new files under the same names
    let other = tempfile::tempdir().unwrap();
    let (ca_b, cert_b, key_b) = webhook::make_certs(other.path());
    for (from, to) in [(&cert_b, &cert), (&key_b, &key)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    let converted = webhook::convert(&hook(&ca_b), desired, obj())
        .await
        .unwrap();
    assert_eq!(converted[0]["spec"]["replicas"], 1);
    let err = webhook::convert(&hook(&ca_a), desired, obj())
        .await
        .unwrap_err();
    assert!(err.contains("TLS"), "{err}");
}
