//! Node resync: what the scheduler does when a node's sandbox list and its own
//! books disagree (after a node agent, scheduler or containerd restart, or a
//! create that finished while nobody was listening). Pure: the caller lists the
//! node, takes its state lock, asks for a [`Plan`] and carries it out.

use std::collections::{HashMap, HashSet};

/// A sandbox as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Still being created (a create call is in flight somewhere): left alone.
    Creating,
    Warm,
    /// Claimed or paused: belongs to a claim.
    Claimed,
    /// Dead or being released.
    Dead,
}

#[derive(Debug, Clone)]
pub struct NodeSandbox<'a> {
    pub id: &'a str,
    pub pool: &'a str,
    pub state: NodeState,
}

/// The scheduler's books for one node.
#[derive(Debug, Default)]
pub struct Books<'a> {
    /// pools that exist
    pub pools: HashSet<&'a str>,
    /// warm-set members on this node
    pub warm: HashSet<&'a str>,
    /// sandbox id -> (claim id, claim created at, ms) for claims on this node
    pub claimed: HashMap<&'a str, (&'a str, i64)>,
    /// sandboxes an in-flight claim, create or release is working on
    pub busy: HashSet<&'a str>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// (pool, sandbox): warm on the node, unknown to the books: add to the pool
    pub adopt: Vec<(String, String)>,
    /// sandboxes to delete on the node: claimed or dead with no claim, or of a deleted pool
    pub delete: Vec<String>,
    /// warm-set members the node no longer has
    pub forget_warm: Vec<String>,
    /// claims whose sandbox the node no longer has (created before the list was taken)
    pub fail_claims: Vec<String>,
}

/// Compare a node's list (taken at `listed_at_ms`) with the books.
pub fn plan(node: &[NodeSandbox<'_>], books: &Books<'_>, listed_at_ms: i64) -> Plan {
    let mut p = Plan::default();
    let on_node: HashSet<&str> = node.iter().map(|s| s.id).collect();
    for s in node {
        if books.busy.contains(s.id) || books.claimed.contains_key(s.id) {
            continue;
        }
        match s.state {
            NodeState::Creating => {}
            NodeState::Warm if books.warm.contains(s.id) => {}
            NodeState::Warm if books.pools.contains(s.pool) => {
                p.adopt.push((s.pool.to_string(), s.id.to_string()))
            }
            NodeState::Warm | NodeState::Claimed | NodeState::Dead => {
                p.delete.push(s.id.to_string())
            }
        }
    }
    for id in &books.warm {
        if !on_node.contains(id) && !books.busy.contains(id) {
            p.forget_warm.push(id.to_string());
        }
    }
    for (sid, (cid, created)) in &books.claimed {
        if !on_node.contains(sid) && !books.busy.contains(sid) && *created < listed_at_ms {
            p.fail_claims.push(cid.to_string());
        }
    }
    p.adopt.sort();
    p.delete.sort();
    p.forget_warm.sort();
    p.fail_claims.sort();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb<'a>(id: &'a str, pool: &'a str, state: NodeState) -> NodeSandbox<'a> {
        NodeSandbox { id, pool, state }
    }

    /// The books of a node whose only pool is `p`.
    fn books_of_p<'a>(
        warm: &[&'a str],
        claimed: &[(&'a str, (&'a str, i64))],
        busy: &[&'a str],
    ) -> Books<'a> {
        Books {
            pools: ["p"].into(),
            warm: warm.iter().copied().collect(),
            claimed: claimed.iter().copied().collect(),
            busy: busy.iter().copied().collect(),
        }
    }

    #[test]
    fn agrees_means_nothing_to_do() {
        let node = [
            sb("w1", "p", NodeState::Warm),
            sb("c1", "p", NodeState::Claimed),
        ];
        let books = books_of_p(&["w1"], &[("c1", ("claim-1", 5))], &[]);
        assert_eq!(plan(&node, &books, 10), Plan::default());
    }

    #[test]
    fn unknown_warm_is_adopted_orphans_deleted_lost_claims_failed() {
        let node = [
            sb("w-new", "p", NodeState::Warm),
            sb("w-gone-pool", "old", NodeState::Warm),
            sb("orphan", "p", NodeState::Claimed),
            sb("dead", "p", NodeState::Dead),
            sb("baking", "p", NodeState::Creating),
        ];
        let claimed = [("lost", ("claim-lost", 5)), ("fresh", ("claim-fresh", 20))];
        let books = books_of_p(&["w-vanished"], &claimed, &[]);
        let p = plan(&node, &books, 10);
        assert_eq!(p.adopt, [("p".to_string(), "w-new".to_string())]);
        assert_eq!(p.delete, ["dead", "orphan", "w-gone-pool"]);
        assert_eq!(p.forget_warm, ["w-vanished"]);
        // a claim newer than the list may have a sandbox the list predates
        assert_eq!(p.fail_claims, ["claim-lost"]);
    }

    #[test]
    fn busy_sandboxes_are_never_touched() {
        // an in-flight claim took w1 (not warm in the books, not claimed yet);
        // an in-flight release is deleting r1; an in-flight cold claim has c1
        let node = [
            sb("w1", "p", NodeState::Warm),
            sb("r1", "p", NodeState::Claimed),
        ];
        let books = books_of_p(&["x"], &[("c1", ("claim-c1", 1))], &["w1", "r1", "c1", "x"]);
        assert_eq!(plan(&node, &books, 10), Plan::default());
    }
}
