//! DNS side of domain egress rules: a sandbox's DNS queries (UDP port 53,
//! redirected in its netns by [`crate::egress::ruleset`]) reach a proxy
//! that decides each name with [`EgressPolicy::decide_name`] (upstream
//! OpenSandbox semantics: exact or `*.suffix`, case-insensitive, first
//! match wins, else the default action). A denied name is answered
//! NXDOMAIN without asking anyone; an allowed one is resolved by the
//! upstream resolver, and the addresses of its answer join the sandbox's
//! allow sets (timeout = the record's TTL, clamped) before the answer is
//! passed on, so the connection that follows is let through.
//!
//! This file is pure (message decisions and nft scripts); [`server`] runs
//! the proxy.

use std::{net::IpAddr, time::Duration};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::RData,
};
use sandpool_core::egress::{EgressAction, EgressPolicy};

use crate::egress::TABLE;

pub mod server;

/// The IPv4 allow set in the sandbox's egress table.
pub const SET_V4: &str = "dns_allow4";
/// The IPv6 allow set.
pub const SET_V6: &str = "dns_allow6";

/// How long a resolved address stays allowed: the record's TTL within
/// these bounds (a TTL of 0 must still let the next connection out; a long
/// one must not allow an address for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlClamp {
    pub min: Duration,
    pub max: Duration,
}

impl Default for TtlClamp {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        }
    }
}

impl TtlClamp {
    /// `ttl` seconds within the bounds, in whole seconds.
    pub fn apply(&self, ttl: u32) -> u64 {
        Duration::from_secs(u64::from(ttl))
            .clamp(self.min, self.max.max(self.min))
            .as_secs()
    }
}

/// What the proxy does with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send this answer back at once (a denied name: NXDOMAIN; a message
    /// that is not a standard query: FORMERR/NOTIMP/REFUSED).
    Answer(Vec<u8>),
    /// Ask the upstream resolver.
    Forward,
    /// Not a query (unparseable, or a response): no answer.
    Drop,
}

/// An error answer to `q` with `code`, echoing its id and questions.
pub fn error_answer(q: &Message, code: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(q.id(), q.op_code(), code);
    m.set_recursion_desired(q.recursion_desired());
    m.set_recursion_available(true);
    for query in q.queries() {
        m.add_query(query.clone());
    }
    // a message built from a parsed one encodes; if not, the client times
    // out as for a lost datagram (the server sends nothing empty)
    m.to_vec().unwrap_or_default()
}

/// Decide a raw query from a sandbox whose policy is `p`. Every question
/// must be allowed (one denied name denies the message).
pub fn decide(query: &[u8], p: &EgressPolicy) -> Verdict {
    let Ok(q) = Message::from_vec(query) else {
        return Verdict::Drop;
    };
    if q.message_type() != MessageType::Query {
        return Verdict::Drop;
    }
    if q.op_code() != OpCode::Query {
        return Verdict::Answer(error_answer(&q, ResponseCode::NotImp));
    }
    if q.queries().is_empty() {
        return Verdict::Answer(error_answer(&q, ResponseCode::FormErr));
    }
    let denied = q
        .queries()
        .iter()
        .any(|x| p.decide_name(&x.name().to_ascii()) == EgressAction::Deny);
    if denied {
        Verdict::Answer(error_answer(&q, ResponseCode::NXDomain))
    } else {
        Verdict::Forward
    }
}

/// The addresses (A and AAAA) and TTLs in an upstream answer's answer
/// section. A CNAME chain's final addresses count for the name asked.
pub fn answer_addresses(answer: &[u8]) -> Vec<(IpAddr, u32)> {
    let Ok(m) = Message::from_vec(answer) else {
        return Vec::new();
    };
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect()
}

/// The addresses of `addrs` (an answer to `q`) that may join the allow
/// sets: all of them, except private ones when a name asked is decided by
/// a ported (E2B hostname) rule ([`EgressPolicy::admits_resolved`]).
pub fn admitted(q: &Message, addrs: Vec<(IpAddr, u32)>, p: &EgressPolicy) -> Vec<(IpAddr, u32)> {
    let names: Vec<String> = q.queries().iter().map(|x| x.name().to_ascii()).collect();
    addrs
        .into_iter()
        .filter(|(a, _)| names.iter().all(|n| p.admits_resolved(n, *a)))
        .collect()
}

/// The nft script that (re)adds `addrs` to the sandbox's allow sets with a
/// fresh timeout each: add (so the delete finds it), delete, add with the
/// timeout, all in one atomic transaction. Empty for no addresses.
pub fn set_script(addrs: &[(IpAddr, u32)], clamp: TtlClamp) -> String {
    let mut s = String::new();
    for (addr, ttl) in addrs {
        let set = if addr.is_ipv4() { SET_V4 } else { SET_V6 };
        let secs = clamp.apply(*ttl);
        s.push_str(&format!(
            "add element inet {TABLE} {set} {{ {addr} }}\ndelete element inet {TABLE} {set} {{ {addr} }}\nadd element inet {TABLE} {set} {{ {addr} timeout {secs}s }}\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests;
