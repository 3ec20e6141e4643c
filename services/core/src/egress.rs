//! Egress policy of a sandbox (pure): what it may connect to. Rules are
//! tried in order and the first match decides; no match: the default
//! action. The node agent enforces it with nftables in the sandbox's
//! network namespace.

use std::net::{IpAddr, Ipv4Addr};

pub mod domain;
pub mod netpol;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressAction {
    #[default]
    Allow,
    Deny,
}

/// One rule: a destination network and, optionally, a TCP/UDP port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressRule {
    pub action: EgressAction,
    /// An IPv4 or IPv6 address or CIDR.
    pub cidr: String,
    /// 0 = any port.
    #[serde(default)]
    pub port: u16,
}

/// A pool's or a sandbox's egress policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct EgressPolicy {
    #[serde(default)]
    pub default_action: EgressAction,
    #[serde(default)]
    pub rules: Vec<EgressRule>,
}

/// The most rules one policy may hold.
pub const MAX_RULES: usize = 256;

/// A rule's destination: a network (host bits cleared) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether every address of `other` is in this network (same family).
    pub fn covers(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && masked(other.addr, self.prefix) == self.addr
    }
}

/// `addr` with the bits after the first `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parse an address (`10.0.0.1`, `::1`) or a CIDR (`10.0.0.0/8`); host bits
/// of a CIDR are cleared. The error says what is wrong with `s`.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
    };
    Ok(Cidr {
        addr: masked(addr, prefix),
        prefix,
    })
}

impl EgressPolicy {
    /// Whether it lets everything out.
    pub fn allows_all(&self) -> bool {
        self.rules.is_empty() && self.default_action == EgressAction::Allow
    }

    /// Check the rules' destinations and the size; the error names the rule.
    /// Domain targets are refused (see [`EgressPolicy::validate_with_names`]).
    pub fn validate(&self) -> Result<(), String> {
        self.check(false)
    }

    /// [`EgressPolicy::validate`], where a rule may also target a domain
    /// name or `*.domain` wildcard: for an enforcer that resolves names
    /// (the node agent's DNS proxy).
    pub fn validate_with_names(&self) -> Result<(), String> {
        self.check(true)
    }

    fn check(&self, names: bool) -> Result<(), String> {
        if self.rules.len() > MAX_RULES {
            return Err(format!(
                "{} egress rules; at most {MAX_RULES}",
                self.rules.len()
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let Err(e) = parse_cidr(&r.cidr) else {
                continue;
            };
            let e = if names && !r.cidr.contains('/') {
                match domain::NamePattern::parse(&r.cidr) {
                    Ok(_) => continue,
                    Err(_) => format!("{:?} is not an IP address, CIDR or domain name", r.cidr),
                }
            } else {
                e
            };
            return Err(format!("egress rule {i}: {e}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_parsed_and_normalised() {
        let ok = [
            ("10.1.2.3", "10.1.2.3/32"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::1/8", "fd00::/8"),
            ("::1", "::1/128"),
        ];
        for (s, want) in ok {
            assert_eq!(parse_cidr(s).map(|c| c.to_string()), Ok(want.into()), "{s}");
        }
        for bad in [
            "",
            "pypi.org",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "1.2.3",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policies_are_checked_naming_the_rule_and_stored_by_name() {
        let rule = |cidr: &str| EgressRule {
            action: EgressAction::Allow,
            cidr: cidr.into(),
            port: 0,
        };
        let p = EgressPolicy {
            default_action: EgressAction::Deny,
            rules: vec![rule("10.0.0.0/8"), rule("pypi.org")],
        };
        let e = p.validate().expect_err("a domain");
        assert!(e.starts_with("egress rule 1: "), "{e}");
        let many = EgressPolicy {
            default_action: EgressAction::Allow,
            rules: vec![rule("10.0.0.1"); MAX_RULES + 1],
        };
        assert!(many.validate().is_err());
        assert!(EgressPolicy::default().allows_all());
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["default_action"], "deny");
        let back: EgressPolicy = serde_json::from_value(v).expect("back");
        assert_eq!(back, p);
    }

    #[test]
    fn names_pass_only_the_check_for_an_enforcer_that_resolves_them() {
        let rule = |cidr: &str| EgressRule {
            action: EgressAction::Allow,
            cidr: cidr.into(),
            port: 0,
        };
        let p = |t: &str| EgressPolicy {
            default_action: EgressAction::Deny,
            rules: vec![rule("10.0.0.0/8"), rule(t)],
        };
        for name in ["pypi.org", "*.Example.TEST", "example.test.", "*"] {
            assert!(p(name).validate().is_err(), "{name}");
            assert_eq!(p(name).validate_with_names(), Ok(()), "{name}");
        }
        for bad in ["*.", "a..b", "10.0.0.0/33", "x.com/8", "a b"] {
            let e = p(bad).validate_with_names().expect_err(bad);
            assert!(e.starts_with("egress rule 1: "), "{e}");
        }
    }
}
