//! Domain-name egress targets (pure), with upstream OpenSandbox's matching
//! rules: a target is an exact name (`api.example.com`) or a wildcard
//! `*.example.com`, which matches subdomains at any depth but not
//! `example.com` itself. Names and targets compare case-insensitively and
//! without a trailing dot. Only the decision lives here: the node agent's
//! DNS proxy enforces it ([`super::EgressPolicy::validate_with_names`],
//! also what the scheduler checks a claim's policy with), while
//! [`super::EgressPolicy::validate`] (pool templates) refuses a domain rule.

use super::{EgressAction, EgressPolicy, parse_cidr};

/// The longest domain name (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;
/// The longest label.
const MAX_LABEL: usize = 63;

/// A parsed domain target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// The name, or for a wildcard the suffix after `*.`; lower case, no
    /// trailing dot.
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
        n.strip_suffix(self.name.as_str())
            .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

impl EgressPolicy {
    /// What the policy says about resolving `name`: the action of the first
    /// rule whose domain target matches it (address rules are skipped),
    /// else the default action.
    pub fn decide_name(&self, name: &str) -> EgressAction {
        self.rules
            .iter()
            .find(|r| name_target(&r.cidr).is_some_and(|p| p.matches(name)))
            .map_or(self.default_action, |r| r.action)
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
            "", "*", "*.", "a..b", "a.*.b", "*x.com", "a b.com", "-?.com", "x.com/8",
        ] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(NamePattern::parse(&long).is_err());
        assert!(NamePattern::parse(&format!("{}.com", "a".repeat(63))).is_ok());
        assert!(name_target("10.0.0.0/8").is_none());
        assert!(name_target("10.1.2.3").is_none());
        assert!(name_target("pypi.org").is_some());
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
