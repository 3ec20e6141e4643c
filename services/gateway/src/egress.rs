//! Egress policies from the SDKs' create bodies (pure): OpenSandbox
//! `networkPolicy` and E2B `allow_internet_access` / `network`, as the
//! policy the node agent enforces. Destinations are IP addresses and CIDRs,
//! and also domain names and `*.domain` wildcards (OpenSandbox targets and
//! E2B `allowOut` hostnames, which the node agent's DNS proxy enforces; an
//! E2B hostname only on TCP ports 80 and 443); any network option sandpool
//! does not enforce is refused naming it.

use sandpool_core::egress::domain::NamePattern;
use sandpool_core::egress::parse_cidr;
use sandpool_proto::v1 as pb;
use serde_json::{Value, json};

use crate::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

/// The reserved claim metadata key holding the sandbox's egress policy
/// token: what `OPENSANDBOX-EGRESS-AUTH` must carry on the `/policy` API of
/// port 18080 when no API key is sent (the gateway sets it on every new
/// claim and never shows it; nothing of it reaches the sandbox).
pub const TOKEN_KEY: &str = "sandpool.io/egress-token";

/// A fresh egress policy token: 64 random hex digits.
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// An OpenSandbox rule: its target an IP address, CIDR, domain name or
/// `*.domain` wildcard (not E2B's lone `*`).
fn rule(field: &str, action: pb::EgressAction, target: &Value) -> Result<pb::EgressRule> {
    let t = target
        .as_str()
        .ok_or_else(|| ApiError::Invalid(format!("{field} must be a string, got {target}")))?;
    let named = || !t.contains('/') && t.trim() != "*" && NamePattern::parse(t).is_ok();
    if parse_cidr(t).is_err() && !named() {
        return Err(ApiError::Invalid(format!(
            "{field}: {t:?} is not an IP address, CIDR, domain name or `*.domain` wildcard"
        )));
    }
    Ok(pb::EgressRule {
        action: action as i32,
        cidr: t.trim().to_string(),
        port: 0,
    })
}

/// Whether a policy has a domain-name rule (enforced through the node's
/// DNS proxy).
pub fn has_domain_rules(p: &pb::EgressPolicy) -> bool {
    p.rules.iter().any(|r| parse_cidr(&r.cidr).is_err())
}

fn action(field: &str, v: Option<&Value>, absent: pb::EgressAction) -> Result<pb::EgressAction> {
    match v {
        None | Some(Value::Null) => Ok(absent),
        Some(Value::String(s)) if s == "allow" => Ok(pb::EgressAction::Allow),
        Some(Value::String(s)) if s == "deny" => Ok(pb::EgressAction::Deny),
        Some(other) => Err(ApiError::Invalid(format!(
            "{field} must be \"allow\" or \"deny\", got {other}"
        ))),
    }
}

/// OpenSandbox `networkPolicy`: absent or `null` → the pool's policy
/// (`None`); `{}` → everything allowed; otherwise `egress` rules in order
/// and `defaultAction` (upstream's default when omitted: deny).
pub fn from_opensandbox(v: Option<&Value>) -> Result<Option<pb::EgressPolicy>> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "networkPolicy must be an object, got {other}"
            )));
        }
    };
    if let Some(k) = obj.keys().find(|k| *k != "defaultAction" && *k != "egress") {
        return Err(ApiError::Invalid(format!(
            "networkPolicy.{k} is not supported (defaultAction and egress are)"
        )));
    }
    if obj.is_empty() {
        return Ok(Some(pb::EgressPolicy::default()));
    }
    let default = action(
        "networkPolicy.defaultAction",
        obj.get("defaultAction"),
        pb::EgressAction::Deny,
    )?;
    let rules = os_rules(
        "networkPolicy.egress",
        obj.get("egress").unwrap_or(&Value::Null),
    )?;
    Ok(Some(pb::EgressPolicy {
        default_action: default as i32,
        rules,
    }))
}

/// OpenSandbox `NetworkRule`s (`[{action, target}]`) at `field`.
pub fn os_rules(field: &str, v: &Value) -> Result<Vec<pb::EgressRule>> {
    let a = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => {
            return Err(ApiError::Invalid(format!(
                "{field} must be a list, got {other}"
            )));
        }
    };
    a.iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("{field}[{i}]");
            let act = action(
                &format!("{field}.action"),
                r.get("action"),
                pb::EgressAction::Unspecified,
            )?;
            if act == pb::EgressAction::Unspecified {
                return Err(ApiError::Invalid(format!("{field}.action is required")));
            }
            rule(
                &format!("{field}.target"),
                act,
                r.get("target").unwrap_or(&Value::Null),
            )
        })
        .collect()
}

fn is_deny(a: i32) -> bool {
    a == pb::EgressAction::Deny as i32
}

/// OpenSandbox's `PolicyStatusResponse` for a claim's own policy (`None`:
/// the claim set none, its pool's applies).
pub fn opensandbox_status(p: &pb::EgressPolicy) -> Value {
    let mode = if p.rules.is_empty() && !is_deny(p.default_action) {
        "allow_all"
    } else if is_deny(p.default_action) && p.rules.iter().all(|r| is_deny(r.action)) {
        "deny_all"
    } else {
        "rules"
    };
    let egress: Vec<Value> = p
        .rules
        .iter()
        .map(|r| json!({"action": if is_deny(r.action) { "deny" } else { "allow" }, "target": r.cidr}))
        .collect();
    json!({
        "status": "ok",
        "mode": mode,
        "policy": {"defaultAction": if is_deny(p.default_action) { "deny" } else { "allow" }, "egress": egress},
    })
}

/// OpenSandbox `PATCH .../networkpolicy`: each rule replaces the rule of
/// the same target, or is appended.
pub fn patch_rules(p: &mut pb::EgressPolicy, rules: Vec<pb::EgressRule>) {
    for r in rules {
        match p.rules.iter_mut().find(|old| old.cidr == r.cidr) {
            Some(old) => *old = r,
            None => p.rules.push(r),
        }
    }
}

/// OpenSandbox `DELETE .../networkpolicy`: the rules of these targets go.
pub fn delete_targets(p: &mut pb::EgressPolicy, targets: &[String]) {
    p.rules.retain(|r| !targets.contains(&r.cidr));
}

/// E2B's `network` view of a claim's own policy (sandbox detail).
/// An E2B hostname is two rules (its ports 80 and 443), shown once.
pub fn e2b_network(p: &pb::EgressPolicy) -> Value {
    let pick = |deny: bool| -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in p.rules.iter().filter(|r| is_deny(r.action) == deny) {
            let named = parse_cidr(&r.cidr).is_err();
            if !(named && out.contains(&r.cidr.as_str())) {
                out.push(r.cidr.as_str());
            }
        }
        out
    };
    let mut deny_out = pick(true);
    if is_deny(p.default_action) {
        deny_out.push("0.0.0.0/0");
    }
    json!({"allowOut": pick(false), "denyOut": deny_out})
}

fn list<'a>(field: &str, v: Option<&'a Value>) -> Result<&'a [Value]> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(ApiError::Invalid(format!(
            "{field} must be a list, got {other}"
        ))),
    }
}

/// E2B's `ALL_TRAFFIC`.
const ALL_TRAFFIC: &str = "0.0.0.0/0";

/// E2B's answer to a hostname in `allowOut` without `ALL_TRAFFIC` in
/// `denyOut` (upstream's wording, to the byte).
pub const DOMAINS_REQUIRE_BLOCK_ALL: &str = "When specifying allowed domains in allow out, you must include 'ALL_TRAFFIC' in deny out to block all other traffic.";

/// The TCP ports an E2B hostname is allowed on: where E2B's egress proxy
/// matches hostnames (HTTP `Host` on 80, TLS SNI on 443).
pub const E2B_HOSTNAME_PORTS: [u32; 2] = [80, 443];

/// Upstream's `IsIPOrCIDR`: an address, or an address and a prefix length.
fn is_ip_or_cidr(s: &str) -> Option<std::net::IpAddr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => Some(ip),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u8>().ok().filter(|p| *p <= max).map(|_| ip)
        }
        Some(_) => None,
    }
}

/// Upstream's `IsSpecifiedIPOrCIDR`: [`is_ip_or_cidr`] and not the
/// unspecified address (`0.0.0.0`, `::`, `::ffff:0.0.0.0`), but
/// `0.0.0.0/0` is.
fn is_specified(s: &str) -> bool {
    let Some(ip) = is_ip_or_cidr(s) else {
        return false;
    };
    let unspecified = match ip {
        std::net::IpAddr::V4(a) => a.is_unspecified(),
        std::net::IpAddr::V6(a) => {
            a.is_unspecified() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_unspecified())
        }
    };
    s == ALL_TRAFFIC || !unspecified
}

fn strings<'a>(field: &str, v: &'a [Value]) -> Result<Vec<&'a str>> {
    v.iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_str()
                .ok_or_else(|| ApiError::Invalid(format!("{field}[{i}] must be a string, got {t}")))
        })
        .collect()
}

/// E2B's checks of `allowOut`/`denyOut`, its messages to the byte: a
/// `denyOut` entry must be an IP address or CIDR (`invalid denied CIDR
/// X`), an `allowOut` address a specified one (`invalid allowed address
/// X`); anything else in `allowOut` is a hostname, which needs
/// `ALL_TRAFFIC` in `denyOut`. sandpool also refuses a "hostname" that is
/// no domain name, `*.domain` or `*` (upstream accepts it; it matches
/// nothing but the same string).
fn check_e2b(allow: &[&str], deny: &[&str]) -> Result<bool> {
    if let Some(d) = deny.iter().find(|d| !is_specified(d)) {
        return Err(ApiError::Invalid(format!("invalid denied CIDR {d}")));
    }
    let mut names = false;
    for (i, a) in allow.iter().enumerate() {
        if is_ip_or_cidr(a).is_some() {
            if !is_specified(a) {
                return Err(ApiError::Invalid(format!("invalid allowed address {a}")));
            }
            continue;
        }
        names = true;
        if let Err(e) = NamePattern::parse(a) {
            return Err(ApiError::Invalid(format!(
                "network.allowOut[{i}]: {e} (a hostname, `*.domain` or `*`)"
            )));
        }
    }
    if names && !deny.contains(&ALL_TRAFFIC) {
        return Err(ApiError::Invalid(DOMAINS_REQUIRE_BLOCK_ALL.to_string()));
    }
    Ok(names)
}

/// E2B `allow_internet_access` and `network` (`allowOut` before `denyOut`,
/// as upstream: an allowed address wins over a denied range;
/// `allow_internet_access: false` denies everything else). A hostname
/// (with `ALL_TRAFFIC` denied, as upstream requires) becomes two domain
/// rules, ports 80 and 443 ([`E2B_HOSTNAME_PORTS`]), and the policy denies
/// by default instead of by a `0.0.0.0/0` rule, so other names get
/// NXDOMAIN from the node's DNS proxy. Nothing set → the pool's policy
/// (`None`).
pub fn from_e2b(
    allow_internet: Option<bool>,
    network: Option<&Value>,
) -> Result<Option<pb::EgressPolicy>> {
    let net = match network {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "network must be an object, got {other}"
            )));
        }
    };
    if let Some(o) = net {
        for (k, v) in o {
            let unset = v.is_null()
                || v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(serde_json::Map::is_empty);
            // allowPublicTraffic, maskRequestHost and rules are the
            // gateway's: `private_traffic`, `crate::traffic::mask_request_host`
            // and `crate::e2b` (its transforms)
            let known = [
                "allowOut",
                "denyOut",
                "allowPublicTraffic",
                "maskRequestHost",
                "rules",
            ];
            if !known.contains(&k.as_str()) && !unset {
                return Err(ApiError::Unsupported(format!(
                    "network.{k} (allowOut, denyOut, allowPublicTraffic, maskRequestHost and rules are supported)"
                )));
            }
        }
    }
    let allow = list("network.allowOut", net.and_then(|o| o.get("allowOut")))?;
    let deny = list("network.denyOut", net.and_then(|o| o.get("denyOut")))?;
    let (allow, deny) = (
        strings("network.allowOut", allow)?,
        strings("network.denyOut", deny)?,
    );
    let names = check_e2b(&allow, &deny)?;
    if allow_internet != Some(false) && allow.is_empty() && deny.is_empty() {
        return Ok(None);
    }
    let mut rules = Vec::with_capacity(2 * allow.len() + deny.len());
    let mut push = |action: pb::EgressAction, t: &str, port: u32| {
        rules.push(pb::EgressRule {
            action: action as i32,
            cidr: t.trim().to_string(),
            port,
        });
    };
    for t in &allow {
        if is_ip_or_cidr(t).is_some() {
            push(pb::EgressAction::Allow, t, 0);
        } else {
            for port in E2B_HOSTNAME_PORTS {
                push(pb::EgressAction::Allow, t, port);
            }
        }
    }
    for t in deny.iter().filter(|t| !(names && **t == ALL_TRAFFIC)) {
        push(pb::EgressAction::Deny, t, 0);
    }
    let default = if allow_internet == Some(false) || names {
        pb::EgressAction::Deny
    } else {
        pb::EgressAction::Allow
    };
    Ok(Some(pb::EgressPolicy {
        default_action: default as i32,
        rules,
    }))
}

/// E2B `network.allowPublicTraffic`: `false` makes the sandbox's traffic
/// private (see [`crate::traffic`]); `true` or unset leaves it public.
pub fn private_traffic(network: Option<&Value>) -> Result<bool> {
    match network.and_then(|n| n.get("allowPublicTraffic")) {
        None | Some(Value::Null) | Some(Value::Bool(true)) => Ok(false),
        Some(Value::Bool(false)) => Ok(true),
        Some(other) => Err(ApiError::Invalid(format!(
            "network.allowPublicTraffic must be a boolean, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules(p: &pb::EgressPolicy) -> Vec<(i32, &str)> {
        p.rules
            .iter()
            .map(|r| (r.action, r.cidr.as_str()))
            .collect()
    }

    #[test]
    fn opensandbox_network_policies() {
        const ALLOW: i32 = pb::EgressAction::Allow as i32;
        const DENY: i32 = pb::EgressAction::Deny as i32;
        assert_eq!(from_opensandbox(None).expect("absent"), None);
        assert_eq!(from_opensandbox(Some(&Value::Null)).expect("null"), None);
        let all = from_opensandbox(Some(&json!({})))
            .expect("{}")
            .expect("some");
        assert_eq!(
            (all.default_action, all.rules.len()),
            (0, 0),
            "{{}}: allow all"
        );
        let p = from_opensandbox(Some(&json!({"egress": [
            {"action": "allow", "target": "10.1.0.0/16"},
            {"action": "deny", "target": "10.1.2.3"},
        ]})))
        .expect("ok")
        .expect("some");
        assert_eq!(p.default_action, DENY, "upstream's default when omitted");
        assert_eq!(rules(&p), [(ALLOW, "10.1.0.0/16"), (DENY, "10.1.2.3")]);
        assert!(!has_domain_rules(&p));
        let p = from_opensandbox(Some(&json!({"egress": [
            {"action": "allow", "target": "pypi.org"},
            {"action": "deny", "target": "*.Example.COM"},
        ]})))
        .expect("domain targets are enforced by the node's DNS proxy")
        .expect("some");
        assert_eq!(rules(&p), [(ALLOW, "pypi.org"), (DENY, "*.Example.COM")]);
        assert!(has_domain_rules(&p));
        for (bad, names) in [
            (
                json!({"egress": [{"action": "allow", "target": "pypi..org"}]}),
                "networkPolicy.egress[0].target",
            ),
            (
                json!({"egress": [{"action": "allow", "target": "pypi.org/16"}]}),
                "networkPolicy.egress[0].target",
            ),
            (
                json!({"egress": [{"target": "10.0.0.1"}]}),
                "networkPolicy.egress[0].action",
            ),
            (
                json!({"defaultAction": "block"}),
                "networkPolicy.defaultAction",
            ),
            (json!({"ingress": []}), "networkPolicy.ingress"),
            (json!([]), "networkPolicy"),
        ] {
            let e = from_opensandbox(Some(&bad)).expect_err("bad");
            assert!(e.to_string().contains(names), "{bad}: {e}");
        }
    }

    #[test]
    fn e2b_public_traffic_is_a_boolean_and_public_unless_false() {
        for (net, private) in [
            (None, false),
            (Some(json!({})), false),
            (Some(json!({"allowPublicTraffic": null})), false),
            (Some(json!({"allowPublicTraffic": true})), false),
            (Some(json!({"allowPublicTraffic": false})), true),
        ] {
            assert_eq!(
                private_traffic(net.as_ref()).expect("ok"),
                private,
                "{net:?}"
            );
        }
        let e = private_traffic(Some(&json!({"allowPublicTraffic": "no"}))).expect_err("bad");
        assert!(e.to_string().contains("network.allowPublicTraffic"), "{e}");
        // honoured, so not refused with the options sandpool lacks
        let net = json!({"allowPublicTraffic": false});
        assert_eq!(from_e2b(None, Some(&net)).expect("ok"), None);
    }

    #[test]
    fn e2b_network_options() {
        assert_eq!(from_e2b(None, None).expect("none"), None);
        assert_eq!(
            from_e2b(Some(true), Some(&json!({"allowPublicTraffic": true}))).expect("ok"),
            None
        );
        let off = from_e2b(Some(false), None).expect("ok").expect("some");
        assert_eq!(
            (off.default_action, off.rules.len()),
            (pb::EgressAction::Deny as i32, 0)
        );
        let p = from_e2b(
            None,
            Some(&json!({"allowOut": ["10.1.2.3"], "denyOut": ["0.0.0.0/0"]})),
        )
        .expect("ok")
        .expect("some");
        assert_eq!(
            rules(&p),
            [
                (pb::EgressAction::Allow as i32, "10.1.2.3"),
                (pb::EgressAction::Deny as i32, "0.0.0.0/0")
            ]
        );
        for (bad, names) in [
            (json!({"dnsServers": ["1.1.1.1"]}), "network.dnsServers"),
            (json!({"httpsPorts": [8443]}), "network.httpsPorts"),
            (json!({"denyOut": "0.0.0.0/0"}), "network.denyOut"),
        ] {
            let e = from_e2b(None, Some(&bad)).expect_err("bad");
            assert!(e.to_string().contains(names), "{bad}: {e}");
        }
    }

    fn e2b_refusal(net: Value) -> String {
        match from_e2b(None, Some(&net)) {
            Err(ApiError::Invalid(m)) => m,
            other => panic!("{net}: {other:?}"),
        }
    }

    #[test]
    fn e2b_allow_and_deny_entries_are_checked_with_upstreams_messages() {
        for (net, want) in [
            (
                json!({"denyOut": ["example.com"]}),
                "invalid denied CIDR example.com",
            ),
            (
                json!({"denyOut": ["not-a-cidr"]}),
                "invalid denied CIDR not-a-cidr",
            ),
            (json!({"denyOut": ["::/0"]}), "invalid denied CIDR ::/0"),
            (
                json!({"denyOut": ["::ffff:0:0/96"]}),
                "invalid denied CIDR ::ffff:0:0/96",
            ),
            (
                json!({"denyOut": ["0.0.0.0"]}),
                "invalid denied CIDR 0.0.0.0",
            ),
            (
                json!({"denyOut": ["10.0.0.0/33"]}),
                "invalid denied CIDR 10.0.0.0/33",
            ),
            (
                json!({"allowOut": ["0.0.0.0/8"]}),
                "invalid allowed address 0.0.0.0/8",
            ),
            (json!({"allowOut": ["::"]}), "invalid allowed address ::"),
            (
                json!({"allowOut": ["example.com"]}),
                DOMAINS_REQUIRE_BLOCK_ALL,
            ),
            (
                json!({"allowOut": ["*.example.com"]}),
                DOMAINS_REQUIRE_BLOCK_ALL,
            ),
            (
                json!({"allowOut": ["example.com", "8.8.8.8"], "denyOut": ["10.0.0.0/8"]}),
                DOMAINS_REQUIRE_BLOCK_ALL,
            ),
            // the deny list is checked first, as upstream
            (
                json!({"allowOut": ["example.com"], "denyOut": ["x.com"]}),
                "invalid denied CIDR x.com",
            ),
        ] {
            assert_eq!(e2b_refusal(net.clone()), want, "{net}");
        }
        let e = e2b_refusal(json!({"allowOut": ["a..b"], "denyOut": ["0.0.0.0/0"]}));
        assert!(e.starts_with("network.allowOut[0]: "), "{e}");
        for ok in [
            json!({"denyOut": ["10.0.0.0/8"]}),
            json!({"allowOut": ["10.0.0.0/8"], "denyOut": ["192.168.0.0/16"]}),
            json!({"allowOut": ["8.8.8.8", "0.0.0.0/0"]}),
            json!({"allowOut": ["*"], "denyOut": ["0.0.0.0/0"]}),
        ] {
            assert!(from_e2b(None, Some(&ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn e2b_hostnames_are_ported_domain_rules_under_a_default_deny() {
        const ALLOW: i32 = pb::EgressAction::Allow as i32;
        const DENY: i32 = pb::EgressAction::Deny as i32;
        let net = json!({
            "allowOut": ["Example.test", "198.18.0.9", "*.sub.test"],
            "denyOut": ["10.0.0.0/8", "0.0.0.0/0"],
        });
        let p = from_e2b(None, Some(&net)).expect("ok").expect("some");
        assert_eq!(p.default_action, DENY, "other names: NXDOMAIN");
        let got: Vec<(i32, &str, u32)> = p
            .rules
            .iter()
            .map(|r| (r.action, r.cidr.as_str(), r.port))
            .collect();
        assert_eq!(
            got,
            [
                (ALLOW, "Example.test", 80),
                (ALLOW, "Example.test", 443),
                (ALLOW, "198.18.0.9", 0),
                (ALLOW, "*.sub.test", 80),
                (ALLOW, "*.sub.test", 443),
                (DENY, "10.0.0.0/8", 0),
            ]
        );
        assert!(has_domain_rules(&p));
        assert_eq!(
            e2b_network(&p),
            json!({
                "allowOut": ["Example.test", "198.18.0.9", "*.sub.test"],
                "denyOut": ["10.0.0.0/8", "0.0.0.0/0"],
            })
        );
        // without a hostname ALL_TRAFFIC stays a rule under a default allow
        let p = from_e2b(
            None,
            Some(&json!({"allowOut": ["1.2.3.4"], "denyOut": ["0.0.0.0/0"]})),
        )
        .expect("ok")
        .expect("some");
        assert_eq!((p.default_action, p.rules.len()), (ALLOW, 2));
        // OpenSandbox targets stay without E2B's lone `*`
        let e = from_opensandbox(Some(
            &json!({"egress": [{"action": "allow", "target": "*"}]}),
        ))
        .expect_err("*");
        assert!(
            e.to_string().contains("networkPolicy.egress[0].target"),
            "{e}"
        );
    }

    #[test]
    fn policies_read_back_and_patch_by_target() {
        let mut p = from_opensandbox(Some(&json!({"egress": [
            {"action": "allow", "target": "10.1.0.0/16"},
        ]})))
        .expect("ok")
        .expect("some");
        assert_eq!(opensandbox_status(&p)["mode"], "rules");
        let open = opensandbox_status(&pb::EgressPolicy::default());
        assert_eq!(open["mode"], "allow_all");
        assert_eq!(
            open["policy"],
            json!({"defaultAction": "allow", "egress": []})
        );
        patch_rules(
            &mut p,
            os_rules("body", &json!([{"action": "deny", "target": "10.1.0.0/16"}, {"action": "deny", "target": "10.2.0.1"}]))
                .expect("rules"),
        );
        let v = opensandbox_status(&p);
        assert_eq!(v["mode"], "deny_all");
        assert_eq!(
            v["policy"]["egress"],
            json!([
                {"action": "deny", "target": "10.1.0.0/16"},
                {"action": "deny", "target": "10.2.0.1"},
            ])
        );
        delete_targets(&mut p, &["10.2.0.1".to_string()]);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(
            e2b_network(&p),
            json!({"allowOut": [], "denyOut": ["10.1.0.0/16", "0.0.0.0/0"]})
        );
    }
}
