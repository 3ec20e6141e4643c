//! An egress policy as the egress peers of a Kubernetes NetworkPolicy
//! (pure): exactly, or refused naming the rule, never approximated.
//!
//! sandpool's policy is an ordered rule list (first match wins) and a
//! default action; a NetworkPolicy is a union of allowed peers, each an
//! `ipBlock` (a CIDR minus `except` CIDRs strictly inside it, same family,
//! no ports of their own) on some ports or on all. A connection is allowed
//! by the ordered list iff
//!
//! * an allow rule matches it and no deny rule before that one does, or
//! * the default allows and no deny rule matches it,
//!
//! so each allow rule becomes its network minus the deny rules before it,
//! and a default allow becomes `0.0.0.0/0` and `::/0` minus every deny
//! rule. Networks are nested or disjoint, so each subtraction is exact as
//! an `except` when the deny rule covers every port the allowed network is
//! allowed on. What is not exact is refused ([`CoreError::NotANetworkPolicy`]):
//! a domain target (a NetworkPolicy matches addresses only), a deny rule
//! with a port under a default allow, and a deny rule with a port taken out
//! of a network that a later allow rule allows on every port.
//! A deny rule that never decides (an earlier allow rule matches all it
//! matches) is left out first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Cidr, EgressAction, EgressPolicy, EgressRule, parse_cidr};
use crate::CoreError;

/// One allowed peer: `cidr` minus `except`, on `port` (TCP and UDP; 0:
/// every port and protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
    pub port: u16,
}

/// The peers a NetworkPolicy must allow, and nothing else, to enforce `p`
/// exactly: `None` when `p` allows everything (no NetworkPolicy is
/// needed), an empty list when it allows nothing.
pub fn egress_peers(p: &EgressPolicy) -> Result<Option<Vec<Peer>>, CoreError> {
    if p.allows_all() {
        return Ok(None);
    }
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| match parse_cidr(&rule.cidr) {
            Ok(cidr) => Ok(Parsed { index, rule, cidr }),
            Err(_) => Err(refuse(
                index,
                rule,
                "a domain target needs DNS-aware enforcement, and a NetworkPolicy matches addresses only (give IP addresses or CIDRs in Kubernetes mode)".into(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let live: Vec<&Parsed<'_>> = rules.iter().filter(|r| !dead(r, &rules)).collect();
    let default_allow = p.default_action == EgressAction::Allow;
    let mut peers = if default_allow {
        everything_but_denies(&live)?
    } else {
        Vec::new()
    };
    for (k, a) in live.iter().enumerate() {
        if a.rule.action != EgressAction::Allow {
            continue;
        }
        // under a default allow, an allow rule only matters where a later
        // deny rule would take its network away
        let guards = live[k + 1..]
            .iter()
            .any(|d| d.rule.action == EgressAction::Deny && overlap(&d.cidr, &a.cidr));
        if default_allow && !guards {
            continue;
        }
        peers.extend(allowed_part(a, &live[..k])?);
    }
    Ok(Some(peers))
}

/// A rule and its destination.
struct Parsed<'a> {
    index: usize,
    rule: &'a EgressRule,
    cidr: Cidr,
}

fn refuse(index: usize, r: &EgressRule, why: String) -> CoreError {
    let action = match r.action {
        EgressAction::Allow => "allow",
        EgressAction::Deny => "deny",
    };
    let port = if r.port == 0 {
        String::new()
    } else {
        format!(" port {}", r.port)
    };
    CoreError::NotANetworkPolicy {
        rule: index,
        target: format!("{action} {}{port}", r.cidr),
        why,
    }
}

fn overlap(a: &Cidr, b: &Cidr) -> bool {
    a.covers(b) || b.covers(a)
}

/// Whether deny rule `d` never decides: an allow rule before it matches
/// everything it matches.
fn dead(d: &Parsed<'_>, rules: &[Parsed<'_>]) -> bool {
    d.rule.action == EgressAction::Deny
        && rules[..d.index].iter().any(|a| {
            a.rule.action == EgressAction::Allow
                && a.cidr.covers(&d.cidr)
                && (a.rule.port == 0 || a.rule.port == d.rule.port)
        })
}

/// `0.0.0.0/0` and `::/0` minus every deny rule (a default allow).
fn everything_but_denies(live: &[&Parsed<'_>]) -> Result<Vec<Peer>, CoreError> {
    let denies: Vec<&&Parsed<'_>> = live
        .iter()
        .filter(|d| d.rule.action == EgressAction::Deny)
        .collect();
    if let Some(d) = denies.iter().find(|d| d.rule.port != 0) {
        return Err(refuse(
            d.index,
            d.rule,
            "a deny rule with a port under defaultAction allow: a NetworkPolicy cannot take one port of a network out of everything allowed (an ipBlock's except has no ports)".into(),
        ));
    }
    let mut out = Vec::new();
    let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    for addr in [v4, v6] {
        let all = Cidr { addr, prefix: 0 };
        let family: Vec<Cidr> = denies
            .iter()
            .map(|d| d.cidr)
            .filter(|c| all.covers(c))
            .collect();
        // a deny of the whole family leaves nothing of it
        if family.iter().all(|c| c.prefix > 0) {
            out.push(Peer {
                cidr: all,
                except: tidy(family),
                port: 0,
            });
        }
    }
    Ok(out)
}

/// Allow rule `a`'s network minus the deny rules `before` it; `None` when
/// nothing of it is left.
fn allowed_part(a: &Parsed<'_>, before: &[&Parsed<'_>]) -> Result<Option<Peer>, CoreError> {
    let mut except = Vec::new();
    for d in before
        .iter()
        .filter(|d| d.rule.action == EgressAction::Deny)
    {
        let (dp, ap) = (d.rule.port, a.rule.port);
        if !overlap(&d.cidr, &a.cidr) || (dp != 0 && ap != 0 && dp != ap) {
            continue;
        }
        if dp != 0 && ap == 0 {
            return Err(refuse(
                d.index,
                d.rule,
                format!(
                    "a deny rule with a port before egress[{}] ({}), which allows every port of an overlapping network: a NetworkPolicy cannot take one port out of it",
                    a.index, a.rule.cidr
                ),
            ));
        }
        if d.cidr.covers(&a.cidr) {
            return Ok(None);
        }
        except.push(d.cidr);
    }
    Ok(Some(Peer {
        cidr: a.cidr,
        except: tidy(except),
        port: a.rule.port,
    }))
}

/// `cidrs` sorted, without one that another covers.
fn tidy(mut cidrs: Vec<Cidr>) -> Vec<Cidr> {
    cidrs.sort_by_key(|c| (c.addr, c.prefix));
    cidrs.dedup();
    let all = cidrs.clone();
    cidrs.retain(|c| !all.iter().any(|o| o != c && o.covers(c)));
    cidrs
}

#[cfg(test)]
mod tests;
