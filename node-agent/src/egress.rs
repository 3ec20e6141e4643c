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
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
};

use sandpool_core::egress::{EgressAction, EgressPolicy, parse_cidr};
use sandpool_proto::{template::egress_from_pb, v1 as pb};

use crate::error::{AgentError, Result};

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

/// The nft script that makes the sandbox's table enforce `p` (pure).
/// `platform` are (host address, TCP port) pairs the sandbox's runtime
/// reaches whatever the policy (the node's trace collector).
pub fn ruleset(p: Option<&EgressPolicy>, platform: &[(IpAddr, u16)]) -> String {
    // declaring the table first makes the delete succeed on a fresh netns
    let mut s = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
    let Some(p) = p.filter(|p| !p.allows_all()) else {
        return s;
    };
    s.push_str(&format!(
        "table inet {TABLE} {{\n  chain output {{\n    type filter hook output priority filter; policy accept;\n    ct state established,related accept\n    oifname \"lo\" accept\n"
    ));
    for (addr, port) in platform {
        s.push_str(&format!(
            "    {} daddr {addr} tcp dport {port} accept\n",
            family(addr)
        ));
    }
    for r in &p.rules {
        let Ok(cidr) = parse_cidr(&r.cidr) else {
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

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "ip" } else { "ip6" }
}

/// Load [`ruleset`] into the network namespace at `netns`.
pub fn apply(netns: &Path, p: Option<&EgressPolicy>, platform: &[(IpAddr, u16)]) -> Result<()> {
    let script = ruleset(p, platform);
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
}
