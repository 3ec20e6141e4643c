//! What upstream's `opensandbox-server` needs to reach a BatchSandbox's execd
//! with sandpool's token in place.
//!
//! The server resolves a sandbox's endpoint from the BatchSandbox: the pod IP
//! from the endpoints annotation, and the headers its clients must send from
//! the annotation `opensandbox.io/secure-access-token` (endpoint header
//! `OpenSandbox-Secure-Access`). sandpool's runtime answers execd's API only
//! with the pod's access token, so the controller writes that token into the
//! annotation: the server's SDK then sends it, and the runtime accepts it in
//! that header. Only for one-replica BatchSandboxes (the server makes no
//! other; one annotation cannot hold several pods' tokens), and not for
//! sandpool's own claims, whose gateway reads the token from the pod.
//!
//! The token is as readable as before: it is in the pod's spec (its
//! environment), which the same namespace readers can get.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::BatchSandbox;
use crate::kube_scheduler::CLAIM_LABEL;
use crate::pods;

/// The upstream server's annotation holding a sandbox's access token.
pub const SECURE_ACCESS_ANNOTATION: &str = "opensandbox.io/secure-access-token";

/// The value [`SECURE_ACCESS_ANNOTATION`] should get, when it differs from
/// the current one: the runtime token of the batch's one ready pod.
pub fn update(batch: &BatchSandbox, mine: &[Pod]) -> Option<String> {
    if batch.labels().contains_key(CLAIM_LABEL) || batch.spec.replicas != 1 {
        return None;
    }
    let mut ready = mine.iter().filter(|p| pods::is_ready(p));
    let (Some(pod), None) = (ready.next(), ready.next()) else {
        return None;
    };
    let token = pods::access_token(pod)?;
    (batch
        .annotations()
        .get(SECURE_ACCESS_ANNOTATION)
        .map(String::as_str)
        != Some(token))
    .then(|| token.to_string())
}
