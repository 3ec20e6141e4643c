//! The egress sidecar's `/policy` API on port 18080, as the OpenSandbox SDK
//! reaches it (`get_endpoint(18080)` and then `GET`/`POST`/`PUT`/`PATCH`/
//! `DELETE {endpoint}/policy` with the endpoint's headers). sandpool runs no
//! sidecar in the sandbox: the endpoint of port 18080 is this gateway route,
//! and a change lands on the claim's egress policy, which the node enforces
//! live. The request and response shapes are upstream's sidecar's
//! (`components/egress`): a replace with an empty body resets to deny-all,
//! a patch puts its rules first and drops the older rules of the same
//! targets, a delete removes rules by target (case-insensitively).
//!
//! Who may call it: a holder of an API key (as every other route), or a
//! request carrying the sandbox's own egress token in
//! `OPENSANDBOX-EGRESS-AUTH`, which only the endpoint answer reveals (to a
//! caller with a key). Nothing inside the sandbox knows the token, and the
//! route is the gateway's, not the sandbox's, so a process in the sandbox
//! cannot widen its own policy.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, Method},
};
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::{Result, network};
use crate::{Gateway, egress, error::ApiError, extract, tenancy};

/// The sandbox port upstream's egress sidecar serves `/policy` on.
pub const PORT: u32 = 18080;
/// The header carrying the sandbox's egress token.
pub const AUTH_HEADER: &str = "OPENSANDBOX-EGRESS-AUTH";
/// How the policy is enforced (upstream: `dns` or `dns+nft`): nftables in
/// the sandbox's network namespace, by address; with domain rules also the
/// node's DNS proxy, whose allowed answers join nftables sets, as upstream's
/// `dns+nft`.
fn enforcement(p: &pb::EgressPolicy) -> &'static str {
    if egress::has_domain_rules(p) {
        "dns+nft"
    } else {
        "nft"
    }
}

fn is_deny(a: i32) -> bool {
    a == pb::EgressAction::Deny as i32
}

fn deny_all() -> pb::EgressPolicy {
    pb::EgressPolicy {
        default_action: pb::EgressAction::Deny as i32,
        rules: Vec::new(),
    }
}

/// Upstream's sidecar mode of a policy.
fn mode(p: &pb::EgressPolicy) -> &'static str {
    match (p.rules.is_empty(), is_deny(p.default_action)) {
        (true, false) => "allow_all",
        (true, true) => "deny_all",
        _ => "enforcing",
    }
}

fn status(p: &pb::EgressPolicy) -> Value {
    json!({"status": "ok", "mode": mode(p), "enforcementMode": enforcement(p)})
}

/// A `POST`/`PUT` body as the policy it sets: empty, `null` or `{}` is
/// deny-all (the sidecar's default), an omitted `defaultAction` is deny.
fn replacement(body: &str) -> Result<pb::EgressPolicy> {
    let t = body.trim();
    if t.is_empty() || t == "null" || t == "{}" {
        return Ok(deny_all());
    }
    let v: Value = extract::parse_json(t.as_bytes())?;
    Ok(egress::from_opensandbox(Some(&v))?.unwrap_or_else(deny_all))
}

fn same_target(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// `PATCH`: the new rules first (the first rule of a target wins), then
/// the rules of `base` whose targets the patch does not name.
fn merged(base: &pb::EgressPolicy, add: Vec<pb::EgressRule>) -> pb::EgressPolicy {
    let mut rules: Vec<pb::EgressRule> = Vec::with_capacity(add.len() + base.rules.len());
    for r in add.into_iter().chain(base.rules.iter().cloned()) {
        if !rules.iter().any(|old| same_target(&old.cidr, &r.cidr)) {
            rules.push(r);
        }
    }
    pb::EgressPolicy {
        default_action: base.default_action,
        rules,
    }
}

/// `DELETE`: the rules of `targets` go; how many went.
fn removed(p: &mut pb::EgressPolicy, targets: &[String]) -> usize {
    let before = p.rules.len();
    p.rules
        .retain(|r| !targets.iter().any(|t| same_target(t, &r.cidr)));
    before - p.rules.len()
}

/// A JSON list from a `PATCH` or `DELETE` body: empty bodies and empty
/// lists are refused, as upstream's sidecar refuses them.
fn non_empty_list(body: &str, what: &str) -> Result<Value> {
    if body.trim().is_empty() {
        return Err(ApiError::Invalid("empty body".into()));
    }
    let v: Value = extract::parse_json(body.trim().as_bytes())?;
    match v.as_array() {
        Some(a) if a.is_empty() => Err(ApiError::Invalid(format!("invalid {what}: empty array"))),
        Some(_) => Ok(v),
        None => Err(ApiError::Invalid(format!("invalid {what}: not a list"))),
    }
}

/// Whether the request may change sandbox `id`'s policy: with an API key
/// (its principal, whose view applies), or with the sandbox's egress token
/// (then just this sandbox). Anything else: 401, also for a sandbox that
/// does not exist (an unauthenticated caller learns nothing).
pub(super) async fn authorize(
    gw: &Gateway,
    id: &str,
    headers: &HeaderMap,
) -> Result<Option<tenancy::Principal>> {
    if !gw.auth_enabled() {
        return Ok(None);
    }
    if let Some(key) = headers.get("open-sandbox-api-key") {
        let key = key.to_str().map_err(|_| ApiError::InvalidKey)?;
        return gw.principal(key).map(Some).ok_or(ApiError::InvalidKey);
    }
    let Some(got) = headers.get(AUTH_HEADER) else {
        return Err(ApiError::MissingKey);
    };
    let token = match gw.get_claim_egress_token(id).await {
        Ok((_, token)) => token,
        Err(ApiError::SandboxNotFound(_)) => None,
        Err(e) => return Err(e),
    };
    match token {
        Some(t) if bool::from(got.as_bytes().ct_eq(t.as_bytes())) => Ok(None),
        _ => Err(ApiError::InvalidKey),
    }
}

/// `/v1/sandboxes/{id}/proxy/18080/policy`.
pub async fn policy(
    method: Method,
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    headers: HeaderMap,
    extract::RawBody(body, _): extract::RawBody,
) -> Result<Json<Value>> {
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::Invalid("the body is not UTF-8".into()))?;
    match authorize(&gw, &id, &headers).await? {
        Some(p) => tenancy::scoped(p, serve(method, &gw, &id, &body)).await,
        None => serve(method, &gw, &id, &body).await,
    }
}

async fn serve(method: Method, gw: &Gateway, id: &str, body: &str) -> Result<Json<Value>> {
    let _serial = if method == Method::GET {
        None
    } else {
        Some(network::CHANGES.lock().await)
    };
    let c = gw.get_claim(id).await?;
    if method == Method::GET {
        let p = network::effective(gw, &c).await?;
        let mut v = status(&p);
        v["policy"] = egress::opensandbox_status(&p)["policy"].clone();
        return Ok(Json(v));
    }
    let (p, reason) = if method == Method::PATCH {
        let rules = egress::os_rules("body", &non_empty_list(body, "patch rules")?)?;
        (merged(&network::effective(gw, &c).await?, rules), None)
    } else if method == Method::DELETE {
        let targets: Vec<String> = serde_json::from_value(non_empty_list(body, "delete targets")?)
            .map_err(|_| ApiError::Invalid("invalid delete targets: not strings".into()))?;
        let mut p = network::effective(gw, &c).await?;
        if removed(&mut p, &targets) == 0 {
            let mut v = status(&p);
            v["reason"] = json!("no matching targets found");
            return Ok(Json(v));
        }
        (p, None)
    } else if body.trim().is_empty() {
        (deny_all(), Some("policy reset to default deny-all"))
    } else {
        (replacement(body)?, None)
    };
    let c = gw.set_claim_egress(id, p).await?;
    let mut v = status(&c.egress.unwrap_or_default());
    if let Some(r) = reason {
        v["reason"] = json!(r);
        v.as_object_mut().map(|o| o.remove("enforcementMode"));
    }
    Ok(Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: pb::EgressAction, t: &str) -> pb::EgressRule {
        pb::EgressRule {
            action: action as i32,
            cidr: t.into(),
            port: 0,
        }
    }

    fn targets(p: &pb::EgressPolicy) -> Vec<(bool, &str)> {
        p.rules
            .iter()
            .map(|r| (is_deny(r.action), r.cidr.as_str()))
            .collect()
    }

    #[test]
    fn replace_defaults_to_deny_all_and_modes_are_the_sidecars() {
        for body in ["", "  ", "null", "{}"] {
            assert_eq!(replacement(body).expect("ok"), deny_all(), "{body:?}");
        }
        let p = replacement(r#"{"egress": [{"action": "allow", "target": "10.1.0.0/16"}]}"#)
            .expect("ok");
        assert!(is_deny(p.default_action), "omitted defaultAction: deny");
        assert_eq!(mode(&p), "enforcing");
        assert_eq!(mode(&deny_all()), "deny_all");
        assert_eq!(mode(&pb::EgressPolicy::default()), "allow_all");
        let open = replacement(r#"{"defaultAction": "allow"}"#).expect("ok");
        assert_eq!(mode(&open), "allow_all");
        assert!(replacement("{").is_err());
        assert_eq!(status(&p)["enforcementMode"], "nft");
        let named = replacement(r#"{"egress": [{"action": "allow", "target": "pypi.org"}]}"#)
            .expect("a domain rule");
        assert_eq!(mode(&named), "enforcing");
        assert_eq!(status(&named)["enforcementMode"], "dns+nft");
        let e = replacement(r#"{"egress": [{"action": "allow", "target": "pypi..org"}]}"#)
            .expect_err("not a name");
        assert!(e.to_string().contains("egress[0].target"), "{e}");
    }

    #[test]
    fn patch_puts_new_rules_first_and_drops_older_rules_of_their_targets() {
        use pb::EgressAction::{Allow, Deny};
        let base = pb::EgressPolicy {
            default_action: Deny as i32,
            rules: vec![rule(Allow, "10.1.0.0/16"), rule(Allow, "10.2.0.1")],
        };
        let p = merged(
            &base,
            vec![
                rule(Deny, "10.2.0.1"),
                rule(Allow, "10.3.0.1"),
                rule(Allow, "10.3.0.1"),
            ],
        );
        assert_eq!(
            targets(&p),
            [
                (true, "10.2.0.1"),
                (false, "10.3.0.1"),
                (false, "10.1.0.0/16")
            ]
        );
        assert!(is_deny(p.default_action), "the default is kept");
        let v6 = merged(
            &pb::EgressPolicy {
                default_action: 0,
                rules: vec![rule(Allow, "FD00::1")],
            },
            vec![rule(Deny, "fd00::1")],
        );
        assert_eq!(
            targets(&v6),
            [(true, "fd00::1")],
            "targets compare case-insensitively"
        );
    }

    #[test]
    fn delete_removes_by_target_and_counts() {
        use pb::EgressAction::Allow;
        let mut p = pb::EgressPolicy {
            default_action: 0,
            rules: vec![rule(Allow, "10.1.0.0/16"), rule(Allow, "FD00::1")],
        };
        assert_eq!(removed(&mut p, &["10.9.9.9".into()]), 0);
        assert_eq!(removed(&mut p, &[" fd00::1 ".into()]), 1);
        assert_eq!(targets(&p), [(false, "10.1.0.0/16")]);
    }

    #[test]
    fn patch_and_delete_bodies_must_be_non_empty_lists() {
        for (body, says) in [
            ("", "empty body"),
            ("[]", "empty array"),
            ("{}", "not a list"),
            ("[", "EOF"),
        ] {
            let e = non_empty_list(body, "patch rules").expect_err(body);
            assert!(e.to_string().contains(says), "{body:?}: {e}");
        }
        assert_eq!(
            non_empty_list(r#"["10.0.0.1"]"#, "delete targets").expect("ok"),
            json!(["10.0.0.1"])
        );
    }
}
