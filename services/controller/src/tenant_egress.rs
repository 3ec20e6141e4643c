//! A released claim's egress NetworkPolicy outlives the claim for as long
//! as anything of that tenant can still run in its pod (Kubernetes mode,
//! see `kube_scheduler::egress` and docs/design.md "Egress in Kubernetes
//! mode").
//!
//! The NetworkPolicy selects the pod by [`TENANT_LABEL`] (the claim's
//! BatchSandbox uid), which the batch controller sets together with the
//! allocation label and which a release does not remove. On release the
//! batch controller adds the pod to the owners of the tenant's
//! NetworkPolicies ([`hand_over`]: the garbage collector removes a
//! dependent only once all its owners are gone, so the BatchSandbox's
//! going no longer takes them away): a deleted pod keeps its labels
//! through its termination grace period and the garbage collector removes
//! the policies once the pod object is gone. A recycled pod is reset while
//! still selected; only once the reset is proven (every process of the
//! tenant killed and the containers restarted anew) does the pool
//! controller take the pod out of their owners and delete those no live
//! owner keeps ([`remove`]: a paused and resumed claim keeps its policy on
//! its new pod) and then take the
//! tenant label off together with the allocation label, so a pod back in
//! its pool is selected by no earlier tenant's policy.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::context::{delete_ignoring_missing, merge_patch_ignoring_missing};
use crate::crd::{BatchSandbox, TENANT_LABEL};
use crate::error::Result;
use crate::pods;

/// The tenant (BatchSandbox uid) `pod` last ran for, if any.
pub fn tenant_of(pod: &Pod) -> Option<&str> {
    pods::labels_of(pod)
        .get(TENANT_LABEL)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

/// Give `pod`, allocated to the BatchSandbox with uid `uid`, the tenant
/// label (a pod allocated before the label existed).
pub async fn label(api: &Api<Pod>, pod: &Pod, uid: &str) -> Result<()> {
    let patch = json!({"metadata": {"labels": {TENANT_LABEL: uid}}});
    merge_patch_ignoring_missing(api, &pod.name_any(), patch).await
}

/// The label selector of tenant `uid`'s NetworkPolicies.
fn selector(uid: &str) -> String {
    format!("{TENANT_LABEL}={uid}")
}

/// The pod as the owner of the policies guarding it (not a controller
/// reference: the policy's writer is the scheduler).
fn pod_ref(pod: &Pod) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// Add `pod` to the owners of its tenant's NetworkPolicies, before it is
/// released: they then live until the pod object is gone (or its reset
/// removes them), not only until its BatchSandbox is (the garbage
/// collector removes a dependent once all its owners are gone).
pub async fn hand_over(api: &Api<NetworkPolicy>, pod: &Pod) -> Result<()> {
    let Some(uid) = tenant_of(pod) else {
        return Ok(());
    };
    let owner = pod_ref(pod);
    let listed = api
        .list(&ListParams::default().labels(&selector(uid)))
        .await?;
    for np in listed.items {
        let mut owners = np.metadata.owner_references.clone().unwrap_or_default();
        if owners.iter().any(|o| o.uid == owner.uid) {
            continue;
        }
        owners.push(owner.clone());
        set_owners(api, &np, &owners).await?;
    }
    Ok(())
}

async fn set_owners(
    api: &Api<NetworkPolicy>,
    np: &NetworkPolicy,
    owners: &[OwnerReference],
) -> Result<()> {
    // the resourceVersion: a concurrent change of the owners conflicts
    let patch = json!({"metadata": {"ownerReferences": owners,
        "resourceVersion": np.resource_version()}});
    merge_patch_ignoring_missing(api, &np.name_any(), patch).await
}

/// Whether the owner `o` (a BatchSandbox or a Pod in `ns`) still exists.
async fn exists(client: &kube::Client, ns: &str, o: &OwnerReference) -> Result<bool> {
    let found = match o.kind.as_str() {
        "Pod" => Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt(&o.name)
            .await?
            .and_then(|p| p.uid()),
        "BatchSandbox" => Api::<BatchSandbox>::namespaced(client.clone(), ns)
            .get_opt(&o.name)
            .await?
            .and_then(|b| b.uid()),
        _ => return Ok(true),
    };
    Ok(found.as_deref() == Some(o.uid.as_str()))
}

/// `pod` was reset (nothing of its tenant runs in it any more): it stops
/// owning its tenant's NetworkPolicies, and a policy no live owner keeps
/// (the claim released, no other pod of it left) is deleted.
pub async fn remove(client: &kube::Client, pod: &Pod) -> Result<()> {
    let Some(uid) = tenant_of(pod) else {
        return Ok(());
    };
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let me = pod.uid().unwrap_or_default();
    let listed = api
        .list(&ListParams::default().labels(&selector(uid)))
        .await?;
    for np in listed.items {
        let others: Vec<OwnerReference> = np
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.uid != me)
            .cloned()
            .collect();
        let mut kept = false;
        for o in &others {
            if exists(client, &ns, o).await? {
                kept = true;
                break;
            }
        }
        if kept {
            set_owners(&api, &np, &others).await?;
        } else {
            delete_ignoring_missing(&api, &np.name_any()).await?;
        }
    }
    Ok(())
}
