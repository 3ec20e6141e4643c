//! Pool sizing and warm-sandbox choice.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// OpenSandbox `capacitySpec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySpec {
    pub buffer_min: u32,
    pub buffer_max: u32,
    pub pool_min: u32,
    pub pool_max: u32,
}

impl CapacitySpec {
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.buffer_min > self.buffer_max {
            return Err(CoreError::InvalidCapacity(format!(
                "bufferMin {} > bufferMax {}",
                self.buffer_min, self.buffer_max
            )));
        }
        if self.pool_min > self.pool_max {
            return Err(CoreError::InvalidCapacity(format!(
                "poolMin {} > poolMax {}",
                self.pool_min, self.pool_max
            )));
        }
        if self.pool_max == 0 {
            return Err(CoreError::InvalidCapacity(
                "poolMax must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What a pool holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    /// Ready, unclaimed.
    pub warm: u32,
    /// Being created for the buffer.
    pub creating: u32,
    /// Claimed.
    pub allocated: u32,
}

impl PoolCounts {
    pub fn total(&self) -> u32 {
        self.warm + self.creating + self.allocated
    }
}

/// The upstream OpenSandbox `scalePool` decision: how many sandboxes to
/// create (positive) or idle ones to delete (negative).
///
/// buffer = warm + creating; keep it within [bufferMin, bufferMax] (aiming at
/// the middle when outside), keep the total at least poolMin, never exceed
/// poolMax, and start at most `max_inflight` creations at a time.
pub fn scale_decision(spec: &CapacitySpec, c: PoolCounts, max_inflight: u32) -> i64 {
    let buffer = c.warm + c.creating;
    let desired_buffer = if (spec.buffer_min..=spec.buffer_max).contains(&buffer) {
        buffer
    } else {
        (spec.buffer_min + spec.buffer_max) / 2
    };
    let desired_total = (c.allocated + desired_buffer).max(spec.pool_min) as i64;
    let total = c.total() as i64;
    if desired_total > total {
        let room = (spec.pool_max as i64 - total).max(0);
        let inflight_room = (max_inflight as i64 - c.creating as i64).max(0);
        (desired_total - total).min(room).min(inflight_room)
    } else if desired_total < total {
        // only idle (warm) sandboxes can go
        -((total - desired_total).min(c.warm as i64))
    } else {
        0
    }
}

/// Warm sandboxes of one pool, per node. Taking one is O(number of nodes).
#[derive(Debug, Clone, Default)]
pub struct WarmSet {
    by_node: BTreeMap<String, VecDeque<String>>,
    members: HashSet<String>,
}

impl WarmSet {
    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    pub fn contains(&self, id: &str) -> bool {
        self.members.contains(id)
    }
    /// The members on `node`.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.by_node.get(node).into_iter().flatten()
    }
    /// Add a ready sandbox (ignored if already present).
    pub fn push(&mut self, node: &str, id: &str) {
        if self.members.insert(id.to_string()) {
            self.by_node
                .entry(node.to_string())
                .or_default()
                .push_back(id.to_string());
        }
    }
    /// Take one for a claim: from the node with the most warm sandboxes
    /// (spreads claims across nodes), oldest first. Never returns the same
    /// sandbox twice.
    pub fn take(&mut self) -> Option<(String, String)> {
        self.take_from_fullest_node(false)
    }
    /// Take the newest one (for scale-down), preferring the node with most.
    pub fn take_idle_for_delete(&mut self) -> Option<(String, String)> {
        self.take_from_fullest_node(true)
    }
    fn take_from_fullest_node(&mut self, newest: bool) -> Option<(String, String)> {
        let node = self
            .by_node
            .iter()
            .max_by_key(|(_, q)| q.len())
            .filter(|(_, q)| !q.is_empty())?
            .0
            .clone();
        let q = self.by_node.get_mut(&node)?;
        let id = if newest { q.pop_back() } else { q.pop_front() }?;
        if q.is_empty() {
            self.by_node.remove(&node);
        }
        self.members.remove(&id);
        Some((node, id))
    }
    /// Forget a sandbox (it failed or its node went away).
    pub fn remove(&mut self, id: &str) -> bool {
        if !self.members.remove(id) {
            return false;
        }
        for q in self.by_node.values_mut() {
            q.retain(|x| x != id);
        }
        self.by_node.retain(|_, q| !q.is_empty());
        true
    }
}

/// Among nodes (name, sandboxes, max), the least loaded with room, for a new sandbox.
pub fn pick_node<'a>(nodes: impl IntoIterator<Item = (&'a str, u32, u32)>) -> Option<&'a str> {
    nodes
        .into_iter()
        .filter(|(_, n, max)| n < max)
        .min_by(|a, b| {
            (a.1 as u64 * b.2 as u64)
                .cmp(&(b.1 as u64 * a.2 as u64))
                .then(a.0.cmp(b.0))
        })
        .map(|(name, _, _)| name)
}

/// A pool's image on its nodes (standalone mode): the scheduler asks the
/// nodes for it before the pool's first create, so the pool can say
/// "pulling", and a pull that fails says why instead of failing every create.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ImagePhase {
    /// Not asked for yet (a new pool, or a new image).
    #[default]
    Pending,
    /// Being pulled (or, for a builtin image, built) by the nodes.
    Pulling,
    Ready,
    /// The last attempt failed at `at`: `message` says why.
    Failed {
        message: String,
        at: Instant,
    },
}

impl ImagePhase {
    /// How a pool's status names it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Pulling => "pulling",
            Self::Ready => "ready",
            Self::Failed { .. } => "failed",
        }
    }

    /// How a pool's status names it when the pool holds `sandboxes`: a pool
    /// with sandboxes that was never asked for its image (adopted after a
    /// restart with its buffer full) has it.
    pub fn shown(&self, sandboxes: u32) -> &'static str {
        match self {
            Self::Pending if sandboxes > 0 => Self::Ready.name(),
            phase => phase.name(),
        }
    }

    /// Why the last attempt failed, else "".
    pub fn message(&self) -> &str {
        match self {
            Self::Failed { message, .. } => message,
            _ => "",
        }
    }

    /// Whether warm creates may start.
    pub fn is_ready(&self) -> bool {
        *self == Self::Ready
    }

    /// Whether the nodes should be asked for the image at `now`: never
    /// asked, or failed at least `retry` ago.
    pub fn should_prepare(&self, now: Instant, retry: Duration) -> bool {
        match self {
            Self::Pending => true,
            Self::Failed { at, .. } => now.saturating_duration_since(*at) >= retry,
            Self::Pulling | Self::Ready => false,
        }
    }
}

/// Whether a pool's sandboxes become ready, as the gateway that waits for
/// them (an E2B template's readyCmd) reports it: the last failure and when
/// (unix ms), until a later success clears it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadyCheck {
    failure: Option<(String, i64)>,
}

impl ReadyCheck {
    /// Record a report made at `at_ms`: a failure needs its reason.
    pub fn report(&mut self, ready: bool, message: &str, at_ms: i64) -> Result<(), CoreError> {
        if ready {
            self.failure = None;
            return Ok(());
        }
        let message = message.trim();
        if message.is_empty() {
            return Err(CoreError::InvalidReport(
                "a report of a sandbox that did not become ready needs its message".into(),
            ));
        }
        self.failure = Some((message.to_string(), at_ms));
        Ok(())
    }

    /// The last failure's reason and time, if no success followed it.
    pub fn failure(&self) -> Option<(&str, i64)> {
        self.failure.as_ref().map(|(m, at)| (m.as_str(), *at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_asked_for_once_and_a_failure_is_retried_after_the_back_off() {
        let t0 = Instant::now();
        let retry = Duration::from_secs(10);
        assert!(ImagePhase::Pending.should_prepare(t0, retry));
        assert!(!ImagePhase::Pulling.should_prepare(t0, retry));
        assert!(!ImagePhase::Ready.should_prepare(t0, retry));
        assert!(ImagePhase::Ready.is_ready() && !ImagePhase::Pulling.is_ready());
        let failed = ImagePhase::Failed {
            message: "not found".into(),
            at: t0,
        };
        assert!(!failed.should_prepare(t0 + Duration::from_secs(9), retry));
        assert!(failed.should_prepare(t0 + retry, retry));
        assert_eq!((failed.name(), failed.message()), ("failed", "not found"));
        assert_eq!(
            (ImagePhase::default().name(), ImagePhase::Pulling.message()),
            ("pending", "")
        );
        // a pool holding sandboxes has its image, asked for or not
        assert_eq!(ImagePhase::Pending.shown(0), "pending");
        assert_eq!(ImagePhase::Pending.shown(3), "ready");
        assert_eq!(ImagePhase::Pulling.shown(3), "pulling");
        assert_eq!(failed.shown(1), "failed");
    }
    use proptest::prelude::*;

    fn spec(bmin: u32, bmax: u32, pmin: u32, pmax: u32) -> CapacitySpec {
        CapacitySpec {
            buffer_min: bmin,
            buffer_max: bmax,
            pool_min: pmin,
            pool_max: pmax,
        }
    }

    #[test]
    fn fills_empty_pool_to_buffer_middle() {
        let s = spec(2, 6, 0, 100);
        assert_eq!(scale_decision(&s, PoolCounts::default(), 100), 4);
        assert_eq!(
            scale_decision(
                &s,
                PoolCounts {
                    warm: 3,
                    ..Default::default()
                },
                100
            ),
            0,
            "within the band"
        );
        assert_eq!(
            scale_decision(
                &s,
                PoolCounts {
                    warm: 1,
                    allocated: 10,
                    ..Default::default()
                },
                100
            ),
            3
        );
        assert_eq!(
            scale_decision(
                &s,
                PoolCounts {
                    warm: 9,
                    ..Default::default()
                },
                100
            ),
            -5,
            "shrink to the middle"
        );
    }

    #[test]
    fn respects_pool_min_max_and_inflight() {
        let s = spec(1, 1, 5, 6);
        assert_eq!(
            scale_decision(&s, PoolCounts::default(), 100),
            5,
            "poolMin wins"
        );
        assert_eq!(
            scale_decision(
                &s,
                PoolCounts {
                    allocated: 6,
                    ..Default::default()
                },
                100
            ),
            0,
            "poolMax reached"
        );
        assert_eq!(
            scale_decision(&s, PoolCounts::default(), 2),
            2,
            "bounded concurrency"
        );
        assert_eq!(
            scale_decision(
                &s,
                PoolCounts {
                    creating: 2,
                    ..Default::default()
                },
                2
            ),
            0
        );
    }

    #[test]
    fn validation() {
        assert!(spec(3, 2, 0, 1).validate().is_err());
        assert!(spec(0, 2, 3, 1).validate().is_err());
        assert!(spec(0, 0, 0, 0).validate().is_err());
        assert!(spec(1, 2, 0, 10).validate().is_ok());
    }

    #[test]
    fn warm_set_spreads_and_never_repeats() {
        let mut w = WarmSet::default();
        for (n, id) in [("a", "1"), ("a", "2"), ("a", "3"), ("b", "4")] {
            w.push(n, id);
        }
        w.push("a", "1");
        assert_eq!(w.len(), 4, "duplicates ignored");
        assert_eq!(w.take(), Some(("a".into(), "1".into())));
        // a has 2, b has 1 -> a again, then both 1: tie -> the max_by_key picks the last max (b)
        let second = w.take().unwrap();
        assert_eq!(second.0, "a");
        let mut rest: Vec<String> = std::iter::from_fn(|| w.take().map(|x| x.1)).collect();
        rest.sort();
        assert_eq!(rest, vec!["3".to_string(), "4".to_string()]);
        assert!(w.take().is_none());
        w.push("a", "9");
        assert!(w.remove("9"));
        assert!(w.is_empty());
    }

    #[test]
    fn node_choice() {
        assert_eq!(pick_node([("a", 5, 10), ("b", 1, 10)]), Some("b"));
        assert_eq!(pick_node([("a", 10, 10), ("b", 9, 10)]), Some("b"));
        assert_eq!(pick_node([("a", 10, 10)]), None);
        assert_eq!(
            pick_node([("a", 2, 4), ("b", 4, 8)]),
            Some("a"),
            "same ratio: by name"
        );
    }

    proptest! {
        #[test]
        fn decision_never_breaks_bounds(bmin in 0u32..20, extra in 0u32..20, pmin in 0u32..40, pmax_extra in 1u32..60,
                                        warm in 0u32..80, creating in 0u32..10, allocated in 0u32..80, inflight in 1u32..16) {
            let s = spec(bmin, bmin + extra, pmin, pmin + pmax_extra);
            let c = PoolCounts { warm, creating, allocated };
            let d = scale_decision(&s, c, inflight);
            if d > 0 {
                prop_assert!(c.total() as i64 + d <= s.pool_max as i64, "never above poolMax");
                prop_assert!(creating as i64 + d <= inflight as i64, "bounded in-flight creations");
            }
            if d < 0 {
                prop_assert!(-d <= warm as i64, "only idle sandboxes are deleted");
                prop_assert!(c.total() as i64 + d >= s.pool_min as i64, "never below poolMin");
                prop_assert!((warm + creating) as i64 + d >= s.buffer_min.min(warm + creating) as i64);
            }
        }

        #[test]
        fn warm_set_hands_out_each_exactly_once(ids in proptest::collection::vec((0u8..4, 0u32..1000), 0..60)) {
            let mut w = WarmSet::default();
            let mut expected = HashSet::new();
            for (n, id) in &ids {
                w.push(&format!("node{n}"), &id.to_string());
                expected.insert(id.to_string());
            }
            let mut seen = HashSet::new();
            while let Some((_, id)) = w.take() {
                prop_assert!(seen.insert(id.clone()), "handed out twice");
            }
            prop_assert_eq!(seen, expected);
        }
    }
}

#[cfg(test)]
mod ready_tests {
    use super::*;

    #[test]
    fn a_ready_failure_holds_until_a_success() {
        let mut r = ReadyCheck::default();
        assert_eq!(r.failure(), None);
        r.report(false, " readyCmd \"x\" failed ", 10).unwrap();
        assert_eq!(r.failure(), Some(("readyCmd \"x\" failed", 10)));
        r.report(false, "again", 20).unwrap();
        assert_eq!(r.failure(), Some(("again", 20)), "the latest one");
        let e = r.report(false, "  ", 30).unwrap_err();
        assert!(e.to_string().contains("needs its message"), "{e}");
        assert_eq!(
            r.failure(),
            Some(("again", 20)),
            "a bad report changes nothing"
        );
        r.report(true, "", 40).unwrap();
        assert_eq!(r.failure(), None);
    }
}
