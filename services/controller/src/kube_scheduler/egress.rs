//! A claim's egress policy in Kubernetes mode: a `networking.k8s.io/v1`
//! NetworkPolicy `<claim>-egress-<BatchSandbox uid>`, policy type Egress
//! only, selecting the claim's pods by the tenant label the batch
//! controller gives a pod allocated to the claim's BatchSandbox
//! ([`TENANT_LABEL`] = the BatchSandbox's uid, unique to the claim). Its
//! egress peers are the exact translation of the policy
//! ([`sandpool_core::egress::netpol`]); what a NetworkPolicy cannot say
//! exactly is refused (`UNIMPLEMENTED`, naming the rule) before anything is
//! written. The policy as given is kept in the BatchSandbox's
//! [`EGRESS_ANNOTATION`] and read back from there. The NetworkPolicy is
//! owned by the BatchSandbox and, from its release on, by the released
//! pods too ([`crate::tenant_egress`]): it is not deleted on release but
//! keeps guarding a released pod until the pod is reset or gone. A policy
//! that allows everything has none.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sandpool_core::egress::{EgressPolicy, netpol};
use sandpool_proto::v1 as pb;
use serde_json::json;
use tonic::Status;

use super::convert::kube_status;
use crate::crd::{BatchSandbox, TENANT_LABEL};
use crate::error::is_not_found;
use crate::pods::controller_ref;

/// The claim's own egress policy as given (JSON of the core policy).
pub(super) const EGRESS_ANNOTATION: &str = "sandpool.io/egress";

/// A claim's egress policy checked and translated: the annotation that
/// keeps it and the NetworkPolicy's egress peers (`None`: everything
/// allowed, no NetworkPolicy).
pub(super) struct Plan {
    pub annotation: String,
    pub peers: Option<Vec<netpol::Peer>>,
}

/// Check `p` (400 for a malformed rule) and translate it (501 naming the
/// rule a NetworkPolicy cannot enforce exactly).
pub(super) fn plan(p: &pb::EgressPolicy) -> Result<Plan, Status> {
    let core = sandpool_proto::template::egress_from_pb_with_names(p)
        .map_err(|e| Status::invalid_argument(format!("egress policy: {e}")))?;
    let peers = netpol::egress_peers(&core).map_err(|e| {
        Status::unimplemented(format!(
            "{e}; Kubernetes mode enforces egress policies as a NetworkPolicy and refuses what one cannot enforce exactly"
        ))
    })?;
    let annotation = serde_json::to_string(&core).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Plan { annotation, peers })
}

/// The claim's own policy read back from its BatchSandbox (`None`: it set
/// none).
pub(super) fn read_back(b: &BatchSandbox) -> Option<pb::EgressPolicy> {
    let raw = b.annotations().get(EGRESS_ANNOTATION)?;
    let core: EgressPolicy = serde_json::from_str(raw).ok()?;
    Some(sandpool_proto::template::egress_to_pb(&core))
}

/// The name of the NetworkPolicy of claim `claim` whose BatchSandbox has
/// uid `uid` (a later claim of the same id has its own: an earlier one's
/// may still guard that claim's released pod).
pub fn network_policy_name(claim: &str, uid: &str) -> String {
    format!("{claim}-egress-{uid}")
}

/// The NetworkPolicy spec enforcing `peers` on the pod of the BatchSandbox
/// with uid `uid` (pure).
pub fn network_policy_spec(uid: &str, peers: &[netpol::Peer]) -> NetworkPolicySpec {
    let egress = peers
        .iter()
        .map(|p| NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: p.cidr.to_string(),
                    except: (!p.except.is_empty())
                        .then(|| p.except.iter().map(ToString::to_string).collect()),
                }),
                ..Default::default()
            }]),
            ports: (p.port != 0).then(|| {
                ["TCP", "UDP"]
                    .into_iter()
                    .map(|protocol| NetworkPolicyPort {
                        protocol: Some(protocol.to_string()),
                        port: Some(IntOrString::Int(i32::from(p.port))),
                        end_port: None,
                    })
                    .collect()
            }),
        })
        .collect();
    NetworkPolicySpec {
        pod_selector: Some(LabelSelector {
            match_labels: Some([(TENANT_LABEL.to_string(), uid.to_string())].into()),
            ..Default::default()
        }),
        policy_types: Some(vec!["Egress".to_string()]),
        egress: Some(egress),
        ingress: None,
    }
}

impl super::KubeScheduler {
    fn network_policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Make claim `b`'s NetworkPolicy enforce `peers` (`None`: remove it).
    pub(super) async fn apply_egress(
        &self,
        b: &BatchSandbox,
        peers: Option<&[netpol::Peer]>,
    ) -> Result<(), Status> {
        let claim = b.name_any();
        let uid = b.uid().unwrap_or_default();
        let Some(peers) = peers else {
            return self.delete_egress(&claim, &uid).await;
        };
        let name = network_policy_name(&claim, &uid);
        let spec = network_policy_spec(&uid, peers);
        let api = self.network_policies();
        if let Some(mut old) = api.get_opt(&name).await.map_err(kube_status)? {
            // this claim's own (its owners kept: a released pod may own it)
            old.spec = Some(spec);
            api.replace(&name, &PostParams::default(), &old)
                .await
                .map_err(kube_status)?;
            return Ok(());
        }
        let owner = controller_ref(
            "sandbox.opensandbox.io/v1alpha1",
            "BatchSandbox",
            &claim,
            &uid,
        );
        let np = NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.ns.clone()),
                labels: Some([(TENANT_LABEL.to_string(), uid.clone())].into()),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            spec: Some(spec),
        };
        // a parallel change that made it first answers a conflict, as a
        // replace that lost the race would
        api.create(&PostParams::default(), &np)
            .await
            .map(|_| ())
            .map_err(kube_status)
    }

    /// Remove claim `claim`'s NetworkPolicy, if any (its tenant asked for
    /// everything allowed).
    async fn delete_egress(&self, claim: &str, uid: &str) -> Result<(), Status> {
        match self
            .network_policies()
            .delete(&network_policy_name(claim, uid), &Default::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_status(e)),
        }
    }

    /// Give up a claim being made: its BatchSandbox goes (best effort: the
    /// caller reports what failed first). Its NetworkPolicy is released
    /// with its pod, as on any release.
    pub(super) async fn discard(&self, claim: &str) {
        let _ = self.batches().delete(claim, &Default::default()).await;
    }

    /// `SetClaimEgress`: the NetworkPolicy replaced (or removed), then the
    /// policy as given kept on the claim.
    pub(super) async fn set_egress(
        &self,
        r: pb::SetClaimEgressRequest,
    ) -> Result<pb::Claim, Status> {
        let b = self.get_claim_batch(&r.claim_id).await?;
        let plan = plan(&r.egress.unwrap_or_default())?;
        self.apply_egress(&b, plan.peers.as_deref()).await?;
        let patch = json!({"metadata": {"annotations": {EGRESS_ANNOTATION: plan.annotation}}});
        let b = self
            .batches()
            .patch(&r.claim_id, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_status)?;
        self.claim_of(&b).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_become_ip_blocks_with_tcp_and_udp_ports_on_the_claims_pod() {
        let deny_but_one = pb::EgressPolicy {
            default_action: pb::EgressAction::Deny as i32,
            rules: vec![
                pb::EgressRule {
                    action: pb::EgressAction::Deny as i32,
                    cidr: "10.1.0.0/16".into(),
                    port: 0,
                },
                pb::EgressRule {
                    action: pb::EgressAction::Allow as i32,
                    cidr: "10.0.0.0/8".into(),
                    port: 443,
                },
            ],
        };
        let peers = plan(&deny_but_one).expect("plan").peers.expect("peers");
        let spec = serde_json::to_value(network_policy_spec("u-1", &peers)).expect("json");
        assert_eq!(
            spec,
            json!({
                "podSelector": {"matchLabels": {TENANT_LABEL: "u-1"}},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "UDP", "port": 443}],
                }],
            })
        );
        let closed = serde_json::to_value(network_policy_spec("u-1", &[])).expect("json");
        assert_eq!(closed["egress"], json!([]), "nothing allowed: {closed}");
    }

    #[test]
    fn a_policy_is_refused_501_naming_the_rule_or_400_when_malformed() {
        let with = |cidr: &str| pb::EgressPolicy {
            default_action: pb::EgressAction::Deny as i32,
            rules: vec![pb::EgressRule {
                action: pb::EgressAction::Allow as i32,
                cidr: cidr.into(),
                port: 0,
            }],
        };
        let e = plan(&with("pypi.org")).err().expect("a domain");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert!(
            e.message().starts_with("egress[0] (allow pypi.org)"),
            "{e:?}"
        );
        let e = plan(&with("10.0.0.0/33")).err().expect("malformed");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let all = plan(&pb::EgressPolicy::default()).expect("allow all");
        assert!(all.peers.is_none());
    }
}
