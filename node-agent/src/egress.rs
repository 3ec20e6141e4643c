//! Egress policy of a sandbox: an nftables table (`inet`, so IPv4 and IPv6)
//! in the sandbox's own network namespace, hooked on output. Sandbox
//! processes have no `CAP_NET_ADMIN`, so they cannot change it; it goes
//! with the namespace when the sandbox is removed. Replies to connections
//! made to the sandbox (the gateway and agent calling its runtime) pass.
//!
//! [`ruleset`] is pure; [`apply`] loads it with `nsenter --net=… nft -f -`,
//! which replaces the whole table atomically.

use std::{
    io::Write,
    net::{IpAddr, SocketAddrV4},
    path::Path,
    process::{Command, Stdio},
};

use sandpool_core::egress::{EgressAction, EgressPolicy, domain::name_target, parse_cidr};
use sandpool_proto::{
    template::{egress_from_pb, egress_from_pb_with_names},
    v1 as pb,
};

use crate::{
    dnsproxy::{SET_V4, SET_V6},
    error::{AgentError, Result},
};

/// The sandbox netns table sandpool owns.
pub const TABLE: &str = "sandpool_egress";

/// How a denied connection ends.
const REJECT: &str = "reject with icmpx type admin-prohibited";

fn action(a: EgressAction) -> &'static str {
    match a {
        EgressAction::Allow => "accept",
        // refused at once (EHOSTUNREACH-like), not left to time out
        EgressAction::Deny => REJECT,
    }
}

/// A wire policy checked (addresses, ports, actions, size); the error names
/// the rule.
pub fn parse(p: &pb::EgressPolicy) -> Result<EgressPolicy> {
    egress_from_pb(p).map_err(AgentError::InvalidTemplate)
}

/// [`parse`], where rules may also target domain names (for a node whose
/// DNS proxy enforces them).
pub fn parse_with_names(p: &pb::EgressPolicy) -> Result<EgressPolicy> {
    egress_from_pb_with_names(p).map_err(AgentError::InvalidTemplate)
}

/// The nft script that makes the sandbox's table enforce `p` (pure).
/// `platform` are (host address, TCP port) pairs the sandbox's runtime
/// reaches whatever the policy (the node's trace collector). Domain rules
/// are not enforced here (see [`ruleset_with_dns`]).
pub fn ruleset(p: Option<&EgressPolicy>, platform: &[(IpAddr, u16)]) -> String {
    ruleset_with_dns(p, platform, None)
}

/// [`ruleset`], and with `dns` (the node's DNS proxy, [`crate::dnsproxy`])
/// and a policy with domain rules: the sandbox's DNS (UDP port 53) is
/// redirected to the proxy, any other DNS is refused, and addresses the
/// proxy resolved for allowed names (sets `dns_allow4`/`dns_allow6`,
/// entries expire) are accepted where the first allowing domain rule
/// stands in the rule order.
pub fn ruleset_with_dns(
    p: Option<&EgressPolicy>,
    platform: &[(IpAddr, u16)],
    dns: Option<SocketAddrV4>,
) -> String {
    // declaring the table first makes the delete succeed on a fresh netns
    let mut s = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    let Some(p) = p.filter(|p| !p.allows_all()) else {
        return s;
    };
    let dns = dns.filter(|_| has_domain_rules(p));
    s.push_str(&format!("table inet {TABLE} {{\n"));
    if let Some(proxy) = dns {
        s.push_str(&dns_prelude(proxy));
    }
    s.push_str("  chain output {\n    type filter hook output priority filter; policy accept;\n    ct state established,related accept\n    oifname \"lo\" accept\n");
    for (addr, port) in platform {
        s.push_str(&format!(
            "    {} daddr {addr} tcp dport {port} accept\n",
            family(addr)
        ));
    }
    if let Some(proxy) = dns {
        s.push_str(&format!(
            "    ip daddr {} udp dport {} accept\n    meta l4proto {{ tcp, udp }} th dport 53 {REJECT}\n",
            proxy.ip(),
            proxy.port()
        ));
    }
    let mut sets_placed = false;
    for r in &p.rules {
        let Ok(cidr) = parse_cidr(&r.cidr) else {
            if dns.is_some()
                && !sets_placed
                && r.action == EgressAction::Allow
                && name_target(&r.cidr).is_some()
            {
                sets_placed = true;
                s.push_str(&format!(
                    "    ip daddr @{SET_V4} accept\n    ip6 daddr @{SET_V6} accept\n"
                ));
            }
            continue;
        };
        let port = if r.port == 0 {
            String::new()
        } else {
            format!(" meta l4proto {{ tcp, udp }} th dport {}", r.port)
        };
        s.push_str(&format!(
            "    {} daddr {cidr}{port} {}\n",
            family(&cidr.addr),
            action(r.action)
        ));
    }
    if p.default_action == EgressAction::Deny {
        s.push_str(&format!("    {REJECT}\n"));
    }
    s.push_str("  }\n}\n");
    s
}

/// Whether any rule targets a domain name.
pub fn has_domain_rules(p: &EgressPolicy) -> bool {
    p.rules.iter().any(|r| name_target(&r.cidr).is_some())
}

/// The allow sets and the redirect of UDP port 53 to `proxy`.
fn dns_prelude(proxy: SocketAddrV4) -> String {
    format!(
        "  set {SET_V4} {{\n    type ipv4_addr\n    flags timeout\n  }}\n  set {SET_V6} {{\n    type ipv6_addr\n    flags timeout\n  }}\n  chain dns {{\n    type nat hook output priority -100; policy accept;\n    oifname \"lo\" accept\n    meta nfproto ipv4 udp dport 53 dnat ip to {proxy}\n  }}\n"
    )
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "ip" } else { "ip6" }
}

/// Load [`ruleset`] into the network namespace at `netns`.
pub fn apply(netns: &Path, p: Option<&EgressPolicy>, platform: &[(IpAddr, u16)]) -> Result<()> {
    apply_with_dns(netns, p, platform, None)
}

/// Load [`ruleset_with_dns`] into the network namespace at `netns`.
pub fn apply_with_dns(
    netns: &Path,
    p: Option<&EgressPolicy>,
    platform: &[(IpAddr, u16)],
    dns: Option<SocketAddrV4>,
) -> Result<()> {
    run_nft(netns, &ruleset_with_dns(p, platform, dns))
}

/// Run the nft script `script` in the network namespace at `netns`.
pub fn run_nft(netns: &Path, script: &str) -> Result<()> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::network("running nsenter nft", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| AgentError::network("writing the egress ruleset to nft", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| AgentError::network("waiting for nft", e))?;
    if !out.status.success() {
        return Err(AgentError::Network(format!(
            "nft refused the egress ruleset of {}: {}",
            netns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn rule(action: pb::EgressAction, cidr: &str, port: u32) -> pb::EgressRule {
        pb::EgressRule {
            action: action as i32,
            cidr: cidr.into(),
            port,
        }
    }

    fn parsed(p: &pb::EgressPolicy) -> EgressPolicy {
        parse(p).expect("valid policy")
    }

    #[test]
    fn allow_all_removes_the_table_and_deny_ends_in_reject() {
        let script = ruleset(None, &[]);
        assert_eq!(
            script,
            "table inet sandpool_egress {}\ndelete table inet sandpool_egress\n"
        );
        let p = pb::EgressPolicy {
            default_action: pb::EgressAction::Deny as i32,
            rules: vec![
                rule(pb::EgressAction::Deny, "10.9.0.7", 0),
                rule(pb::EgressAction::Allow, "10.9.0.0/16", 443),
                rule(pb::EgressAction::Allow, "fd00::/8", 0),
            ],
        };
        let platform = [(IpAddr::V4(Ipv4Addr::new(10, 213, 0, 1)), 4317)];
        let script = ruleset(Some(&parsed(&p)), &platform);
        let body: Vec<&str> = script.lines().skip(5).map(str::trim).collect();
        assert_eq!(
            body,
            [
                "ct state established,related accept",
                "oifname \"lo\" accept",
                "ip daddr 10.213.0.1 tcp dport 4317 accept",
                "ip daddr 10.9.0.7/32 reject with icmpx type admin-prohibited",
                "ip daddr 10.9.0.0/16 meta l4proto { tcp, udp } th dport 443 accept",
                "ip6 daddr fd00::/8 accept",
                "reject with icmpx type admin-prohibited",
                "}",
                "}",
            ]
        );
        // default allow with a deny rule: no final reject
        let p = pb::EgressPolicy {
            default_action: pb::EgressAction::Allow as i32,
            rules: vec![rule(pb::EgressAction::Deny, "10.9.0.0/16", 0)],
        };
        assert!(!ruleset(Some(&parsed(&p)), &[]).contains("    reject"));
    }

    #[test]
    fn bad_policies_are_refused_naming_the_rule() {
        let p = |r| pb::EgressPolicy {
            default_action: 0,
            rules: vec![rule(pb::EgressAction::Allow, "10.0.0.0/8", 0), r],
        };
        let e = parse(&p(rule(pb::EgressAction::Allow, "pypi.org", 0))).expect_err("domain");
        assert!(e.to_string().contains("egress rule 1"), "{e}");
        let e = parse(&p(rule(pb::EgressAction::Allow, "10.0.0.1", 70000))).expect_err("port");
        assert!(e.to_string().contains("65535"), "{e}");
        let mut bad_action = rule(pb::EgressAction::Allow, "10.0.0.1", 0);
        bad_action.action = 9;
        assert!(parse(&p(bad_action)).is_err());
        let many = pb::EgressPolicy {
            default_action: 0,
            rules: vec![
                rule(pb::EgressAction::Allow, "10.0.0.1", 0);
                sandpool_core::egress::MAX_RULES + 1
            ],
        };
        assert!(parse(&many).is_err());
    }

    #[test]
    fn domain_rules_with_a_proxy_redirect_dns_and_accept_resolved_addresses_in_rule_order() {
        use EgressAction::{Allow, Deny};
        let r = |action, cidr: &str| sandpool_core::egress::EgressRule {
            action,
            cidr: cidr.into(),
            port: 0,
        };
        let p = EgressPolicy {
            default_action: Deny,
            rules: vec![
                r(Deny, "10.9.0.7"),
                r(Deny, "bad.example.test"),
                r(Allow, "example.test"),
                r(Allow, "*.example.test"),
                r(Allow, "10.9.0.0/16"),
            ],
        };
        let proxy: SocketAddrV4 = "10.213.0.1:15353".parse().expect("addr");
        let script = ruleset_with_dns(Some(&p), &[], Some(proxy));
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l:?} missing in\n{script}"))
        };
        at("set dns_allow4 {");
        at("type ipv4_addr");
        at("type ipv6_addr");
        assert_eq!(lines.iter().filter(|l| **l == "flags timeout").count(), 2);
        at("type nat hook output priority -100; policy accept;");
        let dnat = at("meta nfproto ipv4 udp dport 53 dnat ip to 10.213.0.1:15353");
        let proxy_ok = at("ip daddr 10.213.0.1 udp dport 15353 accept");
        let other_dns =
            at("meta l4proto { tcp, udp } th dport 53 reject with icmpx type admin-prohibited");
        let deny_ip = at("ip daddr 10.9.0.7/32 reject with icmpx type admin-prohibited");
        let set4 = at("ip daddr @dns_allow4 accept");
        let set6 = at("ip6 daddr @dns_allow6 accept");
        let cidr = at("ip daddr 10.9.0.0/16 accept");
        assert!(dnat < proxy_ok && proxy_ok < other_dns && other_dns < deny_ip);
        assert!(deny_ip < set4 && set4 + 1 == set6 && set6 < cidr);
        // the sets are accepted once, at the first allowing domain rule
        assert_eq!(
            lines.iter().filter(|l| l.contains("@dns_allow4")).count(),
            1
        );
        assert_eq!(lines.last(), Some(&"}"));
        // without a proxy, or without domain rules, nothing of it
        for s in [
            ruleset_with_dns(Some(&p), &[], None),
            ruleset_with_dns(
                Some(&EgressPolicy {
                    default_action: Deny,
                    rules: vec![r(Allow, "10.9.0.0/16")],
                }),
                &[],
                Some(proxy),
            ),
        ] {
            assert!(!s.contains("dns_allow") && !s.contains("dport 53"), "{s}");
        }
        assert!(has_domain_rules(&p));
    }
}
