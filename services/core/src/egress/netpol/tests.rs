use std::net::IpAddr;

use super::*;

const ALLOW: EgressAction = EgressAction::Allow;
const DENY: EgressAction = EgressAction::Deny;

fn rule(action: EgressAction, cidr: &str, port: u16) -> EgressRule {
    EgressRule {
        action,
        cidr: cidr.into(),
        port,
    }
}

fn policy(default_action: EgressAction, rules: Vec<EgressRule>) -> EgressPolicy {
    EgressPolicy {
        default_action,
        rules,
    }
}

/// Peers as `(cidr, [except], port)` strings.
fn shown(peers: &[Peer]) -> Vec<(String, Vec<String>, u16)> {
    peers
        .iter()
        .map(|p| {
            let except = p.except.iter().map(Cidr::to_string).collect();
            (p.cidr.to_string(), except, p.port)
        })
        .collect()
}

fn peers_of(p: &EgressPolicy) -> Vec<(String, Vec<String>, u16)> {
    shown(&egress_peers(p).expect("expressible").expect("a policy"))
}

fn peer(cidr: &str, except: &[&str], port: u16) -> (String, Vec<String>, u16) {
    let except = except.iter().map(|e| e.to_string()).collect();
    (cidr.to_string(), except, port)
}

#[test]
fn allowing_everything_needs_no_network_policy_and_denying_everything_allows_no_peer() {
    assert_eq!(egress_peers(&EgressPolicy::default()), Ok(None));
    assert_eq!(peers_of(&policy(DENY, vec![])), Vec::new());
    let all = policy(
        ALLOW,
        vec![rule(DENY, "0.0.0.0/0", 0), rule(DENY, "::/0", 0)],
    );
    assert_eq!(peers_of(&all), Vec::new());
}

#[test]
fn a_default_deny_allows_each_allow_rule_minus_the_deny_rules_before_it() {
    let p = policy(
        DENY,
        vec![
            rule(DENY, "10.1.2.0/24", 0),
            rule(ALLOW, "10.0.0.0/8", 0),
            rule(ALLOW, "192.0.2.7", 443),
            rule(DENY, "198.51.100.0/24", 53),
            rule(ALLOW, "198.51.100.0/24", 53),
            rule(ALLOW, "198.51.0.0/16", 80),
            rule(ALLOW, "2001:db8::/32", 0),
        ],
    );
    assert_eq!(
        peers_of(&p),
        vec![
            peer("10.0.0.0/8", &["10.1.2.0/24"], 0),
            peer("192.0.2.7/32", &[], 443),
            // port 53 of the /24 is shadowed by the deny before it; its
            // port 80 is not
            peer("198.51.0.0/16", &[], 80),
            peer("2001:db8::/32", &[], 0),
        ]
    );
}

#[test]
fn a_default_allow_is_everything_of_both_families_but_the_deny_rules() {
    let p = policy(
        ALLOW,
        vec![
            rule(DENY, "169.254.169.254", 0),
            rule(DENY, "10.0.0.0/8", 0),
            rule(DENY, "10.1.0.0/16", 0),
            rule(DENY, "fd00::/8", 0),
        ],
    );
    assert_eq!(
        peers_of(&p),
        vec![
            peer("0.0.0.0/0", &["10.0.0.0/8", "169.254.169.254/32"], 0),
            peer("::/0", &["fd00::/8"], 0),
        ]
    );
    // a whole family denied: nothing of it is a peer
    let v4_off = policy(ALLOW, vec![rule(DENY, "0.0.0.0/0", 0)]);
    assert_eq!(peers_of(&v4_off), vec![peer("::/0", &[], 0)]);
}

#[test]
fn an_allow_rule_before_an_overlapping_deny_rule_wins_as_e2b_allow_out_does() {
    // E2B: allowOut ["10.1.2.3"], denyOut ["10.0.0.0/8"]
    let p = policy(
        ALLOW,
        vec![
            rule(ALLOW, "10.1.2.3", 0),
            rule(ALLOW, "192.0.2.1", 0),
            rule(DENY, "10.0.0.0/8", 0),
        ],
    );
    assert_eq!(
        peers_of(&p),
        vec![
            peer("0.0.0.0/0", &["10.0.0.0/8"], 0),
            peer("::/0", &[], 0),
            peer("10.1.2.3/32", &[], 0),
        ]
    );
}

#[test]
fn what_a_network_policy_cannot_say_exactly_is_refused_naming_the_rule() {
    let cases = [
        (
            policy(
                DENY,
                vec![rule(ALLOW, "10.0.0.0/8", 0), rule(ALLOW, "pypi.org", 0)],
            ),
            "egress[1] (allow pypi.org): a domain target",
        ),
        (
            policy(
                ALLOW,
                vec![rule(DENY, "10.0.0.0/8", 0), rule(DENY, "192.0.2.0/24", 22)],
            ),
            "egress[1] (deny 192.0.2.0/24 port 22): a deny rule with a port under defaultAction allow",
        ),
        (
            policy(
                DENY,
                vec![rule(DENY, "10.1.0.0/16", 25), rule(ALLOW, "10.0.0.0/8", 0)],
            ),
            "egress[0] (deny 10.1.0.0/16 port 25): a deny rule with a port before egress[1] (10.0.0.0/8)",
        ),
    ];
    for (p, want) in cases {
        let e = egress_peers(&p).expect_err(want).to_string();
        assert!(e.starts_with(want), "{e}");
    }
}

#[test]
fn a_deny_rule_that_never_decides_is_left_out() {
    // the port-25 deny comes after an allow of its whole network
    let p = policy(
        ALLOW,
        vec![
            rule(ALLOW, "10.0.0.0/8", 0),
            rule(DENY, "10.1.0.0/16", 25),
            rule(DENY, "192.0.2.0/24", 0),
        ],
    );
    assert_eq!(
        peers_of(&p),
        vec![
            peer("0.0.0.0/0", &["192.0.2.0/24"], 0),
            peer("::/0", &[], 0),
        ]
    );
}

/// A connection: destination and TCP/UDP port (`None`: another protocol).
type Conn = (IpAddr, Option<u16>);

fn matches(cidr: &Cidr, port: u16, (addr, dport): Conn) -> bool {
    let at = Cidr {
        addr,
        prefix: if addr.is_ipv4() { 32 } else { 128 },
    };
    cidr.covers(&at) && (port == 0 || dport == Some(port))
}

/// The node agent's semantics: first match wins, else the default.
fn by_rules(p: &EgressPolicy, c: Conn) -> bool {
    let first = p.rules.iter().find(|r| {
        let cidr = parse_cidr(&r.cidr).expect("cidr");
        matches(&cidr, r.port, c)
    });
    first.map_or(p.default_action, |r| r.action) == ALLOW
}

/// A NetworkPolicy's: any peer allows.
fn by_peers(peers: &[Peer], c: Conn) -> bool {
    peers.iter().any(|p| {
        let at = Cidr {
            addr: c.0,
            prefix: if c.0.is_ipv4() { 32 } else { 128 },
        };
        matches(&p.cidr, p.port, c) && !p.except.iter().any(|e| e.covers(&at))
    })
}

#[test]
fn every_translated_policy_decides_every_connection_as_the_rules_do() {
    // small networks and ports, so random policies overlap often
    let cidrs = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3",
        "10.2.0.0/16",
        "0.0.0.0/0",
        "192.0.2.0/24",
        "fd00::/8",
        "fd00::1",
        "::/0",
    ];
    let conns: Vec<Conn> = ["10.1.2.3", "10.1.2.9", "10.1.9.9", "10.2.0.1", "10.9.9.9"]
        .iter()
        .chain(&[
            "192.0.2.1",
            "198.51.100.1",
            "fd00::1",
            "fd00::2",
            "2001:db8::1",
        ])
        .flat_map(|a| {
            let a: IpAddr = a.parse().expect("address");
            [(a, None), (a, Some(53)), (a, Some(443)), (a, Some(8080))]
        })
        .collect();
    let mut seed: u64 = 0x5eed;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    let (mut translated, mut refused) = (0, 0);
    for _ in 0..3000 {
        let n = next(6);
        let rules = (0..n)
            .map(|_| {
                let action = if next(2) == 0 { ALLOW } else { DENY };
                rule(action, cidrs[next(cidrs.len())], [0, 0, 53, 443][next(4)])
            })
            .collect();
        let p = policy(if next(2) == 0 { ALLOW } else { DENY }, rules);
        let peers = match egress_peers(&p) {
            Ok(Some(peers)) => peers,
            Ok(None) => {
                assert!(p.allows_all());
                continue;
            }
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        translated += 1;
        for peer in &peers {
            for e in &peer.except {
                assert!(peer.cidr.covers(e) && e.prefix > peer.cidr.prefix, "{p:?}");
            }
        }
        for &c in &conns {
            assert_eq!(
                by_peers(&peers, c),
                by_rules(&p, c),
                "{p:?} {c:?} {peers:?}"
            );
        }
    }
    assert!(translated > 1000 && refused > 100, "{translated} {refused}");
}
