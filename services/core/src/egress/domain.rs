//! Domain-name egress targets (pure), with upstream OpenSandbox's matching
//! rules: a target is an exact name (`api.example.com`) or a wildcard
//! `*.example.com`, which matches subdomains at any depth but not
//! `example.com` itself (and, as in E2B, `*` matches every name). Names and
//! targets compare case-insensitively and without a trailing dot. A domain
//! rule with a port (E2B's hostnames, whose upstream enforcer is an HTTP
//! and TLS proxy on ports 80 and 443) admits the addresses resolved for it
//! on that TCP port only, and never a private address. Only the decision lives here: the node agent's
//! DNS proxy enforces it ([`super::EgressPolicy::validate_with_names`],
//! also what the scheduler checks a claim's policy with), while
//! [`super::EgressPolicy::validate`] (pool templates) refuses a domain rule.

use std::net::IpAddr;

use super::{EgressAction, EgressPolicy, EgressRule, parse_cidr};

/// The longest domain name (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;
/// The longest label.
const MAX_LABEL: usize = 63;

/// A parsed domain target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// The name, or for a wildcard the suffix after `*.` (empty for `*`);
    /// lower case, no trailing dot.
    name: String,
    /// `*.name`: any proper subdomain of `name`.
    wildcard: bool,
}

/// A name as it is compared: trimmed, lower case, no trailing dot.
pub fn normalize_name(name: &str) -> String {
    let t = name.trim();
    t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase()
}

fn check_labels(s: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!(
            "{s:?}: a domain name is 1 to {MAX_NAME} characters"
        ));
    }
    for label in name.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > MAX_LABEL || !ok_chars {
            return Err(format!(
                "{s:?} is not a domain name or a `*.domain` wildcard"
            ));
        }
    }
    Ok(())
}

impl NamePattern {
    /// Parse `example.com` or `*.example.com` (any case, trailing dot
    /// allowed). The error says what is wrong with `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let n = normalize_name(s);
        if s.trim() == "*" {
            return Ok(Self {
                name: String::new(),
                wildcard: true,
            });
        }
        let (name, wildcard) = match n.strip_prefix("*.") {
            Some(rest) => (rest.to_owned(), true),
            None => (n, false),
        };
        check_labels(s, &name)?;
        Ok(Self { name, wildcard })
    }

    /// Whether `name` (any case, trailing dot allowed) matches.
    pub fn matches(&self, name: &str) -> bool {
        let n = normalize_name(name);
        if !self.wildcard {
            return n == self.name;
        }
        if self.name.is_empty() {
            return !n.is_empty();
        }
        n.strip_suffix(self.name.as_str())
            .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard && self.name.is_empty() {
            return f.write_str("*");
        }
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// A rule's target as a domain pattern: `None` for an IP address or CIDR
/// or a target that is neither.
pub fn name_target(target: &str) -> Option<NamePattern> {
    if parse_cidr(target).is_ok() {
        return None;
    }
    NamePattern::parse(target).ok()
}

/// The ranges E2B's egress proxy never connects a hostname to (its
/// always-denied private ranges): `10.0.0.0/8`, `127.0.0.0/8`,
/// `169.254.0.0/16`, `172.16.0.0/12`, `192.168.0.0/16`, `::1`, `fc00::/7`,
/// `fe80::/10` (an IPv4-mapped IPv6 address as its IPv4 address).
pub fn is_private_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 10
                || o[0] == 127
                || (o[0] == 169 && o[1] == 254)
                || (o[0] == 172 && (16..32).contains(&o[1]))
                || (o[0] == 192 && o[1] == 168)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_private_address(IpAddr::V4(v4)),
            None => {
                let first = a.segments()[0];
                a.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

impl EgressPolicy {
    /// The first rule whose domain target matches `name` (address rules
    /// are skipped).
    pub fn name_rule(&self, name: &str) -> Option<&EgressRule> {
        self.rules
            .iter()
            .find(|r| name_target(&r.cidr).is_some_and(|p| p.matches(name)))
    }

    /// What the policy says about resolving `name`: the action of the first
    /// rule whose domain target matches it, else the default action.
    pub fn decide_name(&self, name: &str) -> EgressAction {
        self.name_rule(name)
            .map_or(self.default_action, |r| r.action)
    }

    /// Whether `addr`, resolved for the allowed `name`, joins the allow
    /// sets: not when the rule deciding `name` has a port (an E2B
    /// hostname) and `addr` is private ([`is_private_address`]).
    pub fn admits_resolved(&self, name: &str, addr: IpAddr) -> bool {
        !(self.name_rule(name).is_some_and(|r| r.port != 0) && is_private_address(addr))
    }

    /// The TCP ports the addresses resolved for allowed names are limited
    /// to: `None` (any port and protocol) when an allowing domain rule has
    /// no port, else the allowing domain rules' ports, sorted.
    pub fn name_ports(&self) -> Option<Vec<u16>> {
        let mut ports = Vec::new();
        for r in &self.rules {
            if r.action != EgressAction::Allow || name_target(&r.cidr).is_none() {
                continue;
            }
            if r.port == 0 {
                return None;
            }
            ports.push(r.port);
        }
        ports.sort_unstable();
        ports.dedup();
        Some(ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::EgressRule;

    fn rule(action: EgressAction, target: &str) -> EgressRule {
        EgressRule {
            action,
            cidr: target.into(),
            port: 0,
        }
    }

    #[test]
    fn exact_names_match_case_insensitively_with_or_without_the_root_dot() {
        let p = NamePattern::parse("Allowed.TEST.").expect("parse");
        assert_eq!(p.to_string(), "allowed.test");
        for yes in [
            "allowed.test",
            "ALLOWED.test",
            "allowed.test.",
            " allowed.test ",
        ] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in [
            "x.allowed.test",
            "allowed.test.com",
            "llowed.test",
            "test",
            "",
        ] {
            assert!(!p.matches(no), "{no}");
        }
    }

    #[test]
    fn a_wildcard_matches_subdomains_at_any_depth_but_not_its_own_name() {
        let p = NamePattern::parse("*.Sub.Test").expect("parse");
        assert_eq!(p.to_string(), "*.sub.test");
        for yes in ["x.sub.test", "a.b.c.sub.test", "X.SUB.TEST."] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in [
            "sub.test",
            "sub.test.",
            "xsub.test",
            "x.sub.test.org",
            ".sub.test",
        ] {
            assert!(!p.matches(no), "{no}");
        }
    }

    #[test]
    fn targets_that_are_not_names_or_wildcards_are_refused() {
        for bad in [
            "", "*.", "**", "a..b", "a.*.b", "*x.com", "a b.com", "-?.com", "x.com/8",
        ] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(NamePattern::parse(&long).is_err());
        assert!(NamePattern::parse(&format!("{}.com", "a".repeat(63))).is_ok());
        assert!(name_target("10.0.0.0/8").is_none());
        assert!(name_target("10.1.2.3").is_none());
        assert!(name_target("pypi.org").is_some());
        assert_eq!(name_target("*").map(|p| p.to_string()), Some("*".into()));
    }

    #[test]
    fn a_lone_star_matches_every_name() {
        let p = NamePattern::parse("*").expect("parse");
        for yes in ["example.test", "a.b.c", "x"] {
            assert!(p.matches(yes), "{yes}");
        }
        assert!(!p.matches(""));
    }

    #[test]
    fn ported_name_rules_limit_ports_and_refuse_private_addresses() {
        use EgressAction::{Allow, Deny};
        let ported = |t: &str, port| EgressRule {
            action: Allow,
            cidr: t.into(),
            port,
        };
        let p = EgressPolicy {
            default_action: Deny,
            rules: vec![
                ported("example.test", 443),
                ported("example.test", 80),
                rule(Deny, "*.bad.test"),
                rule(Allow, "10.0.0.0/8"),
            ],
        };
        assert_eq!(p.name_ports(), Some(vec![80, 443]));
        for private in [
            "10.1.2.3",
            "127.0.0.1",
            "169.254.169.254",
            "172.31.0.1",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            let a: IpAddr = private.parse().expect("addr");
            assert!(is_private_address(a), "{private}");
            assert!(!p.admits_resolved("example.test", a), "{private}");
        }
        for public in ["198.18.0.1", "172.32.0.1", "8.8.8.8", "2001:db8::1"] {
            let a: IpAddr = public.parse().expect("addr");
            assert!(!is_private_address(a), "{public}");
            assert!(p.admits_resolved("example.test", a), "{public}");
        }
        let os = EgressPolicy {
            default_action: Deny,
            rules: vec![rule(Allow, "example.test"), ported("*.x.test", 80)],
        };
        assert_eq!(os.name_ports(), None, "an unported allowing name: any port");
        let private: IpAddr = "10.1.2.3".parse().expect("addr");
        assert!(
            os.admits_resolved("example.test", private),
            "OpenSandbox names: as upstream"
        );
        assert_eq!(EgressPolicy::default().name_ports(), Some(vec![]));
    }

    #[test]
    fn names_are_decided_by_the_first_matching_domain_rule_else_the_default() {
        use EgressAction::{Allow, Deny};
        let p = EgressPolicy {
            default_action: Deny,
            rules: vec![
                rule(Allow, "0.0.0.0/0"),
                rule(Deny, "bad.sub.test"),
                rule(Allow, "allowed.test"),
                rule(Allow, "*.sub.test"),
                rule(Deny, "allowed.test"),
            ],
        };
        assert_eq!(p.decide_name("allowed.test"), Allow);
        assert_eq!(p.decide_name("ALLOWED.test."), Allow);
        assert_eq!(p.decide_name("x.sub.test"), Allow);
        assert_eq!(p.decide_name("a.b.sub.test"), Allow);
        assert_eq!(p.decide_name("bad.sub.test"), Deny);
        assert_eq!(p.decide_name("sub.test"), Deny);
        assert_eq!(p.decide_name("denied.test"), Deny);
        let open = EgressPolicy {
            default_action: Allow,
            rules: vec![rule(Deny, "*.evil.test")],
        };
        assert_eq!(open.decide_name("x.evil.test"), Deny);
        assert_eq!(open.decide_name("evil.test"), Allow);
        assert_eq!(EgressPolicy::default().decide_name("anything.test"), Allow);
    }
}
