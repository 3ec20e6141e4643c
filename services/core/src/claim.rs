//! The claim state machine and TTL.

use serde::{Deserialize, Serialize};

use crate::CoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimState {
    Pending,
    Bound,
    Paused,
    Released,
    Expired,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimEvent {
    /// A sandbox was assigned and its process injected.
    Bind,
    Pause,
    Resume,
    Release,
    Expire,
    Fail,
}

impl ClaimState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ClaimState::Released | ClaimState::Expired | ClaimState::Failed
        )
    }

    /// The only legal moves; everything else is an error the caller reports.
    pub fn on(self, event: ClaimEvent) -> Result<ClaimState, CoreError> {
        use ClaimEvent as E;
        use ClaimState as S;
        let next = match (self, event) {
            (S::Pending, E::Bind) => S::Bound,
            (S::Bound, E::Pause) => S::Paused,
            (S::Paused, E::Resume) => S::Bound,
            (S::Pending | S::Bound | S::Paused, E::Release) => S::Released,
            (S::Pending | S::Bound | S::Paused, E::Expire) => S::Expired,
            (S::Pending | S::Bound | S::Paused, E::Fail) => S::Failed,
            (from, event) => return Err(CoreError::IllegalTransition { from, event }),
        };
        Ok(next)
    }
}

/// Whether a claim expiring at `expires_ms` (0 = never) is due at `now_ms`.
/// Paused claims do not expire (their clock is stopped).
pub fn is_expired(state: ClaimState, expires_ms: i64, now_ms: i64) -> bool {
    expires_ms > 0
        && now_ms >= expires_ms
        && matches!(state, ClaimState::Pending | ClaimState::Bound)
}

/// Why Kubernetes pods are not checkpointed (snapshots, restore, fork): the
/// sentence the Kubernetes scheduler and the CRI node agent both answer.
pub const KUBERNETES_CHECKPOINT_UNSUPPORTED: &str = "checkpoints (snapshots, restore, fork) are not supported in Kubernetes mode: every pod has the network its CNI gave it, runc checkpoints need CRIU (which fails on the kernels sandpool runs on) and gVisor cannot checkpoint a sandbox with a network; only standalone checkpointable (network-less) runsc sandboxes can be checkpointed";

#[cfg(test)]
mod tests {
    use super::*;
    use ClaimEvent as E;
    use ClaimState as S;

    #[test]
    fn legal_paths() {
        assert_eq!(S::Pending.on(E::Bind).unwrap(), S::Bound);
        assert_eq!(
            S::Bound.on(E::Pause).unwrap().on(E::Resume).unwrap(),
            S::Bound
        );
        assert_eq!(S::Paused.on(E::Release).unwrap(), S::Released);
        assert!(S::Released.is_terminal());
    }

    #[test]
    fn illegal_paths() {
        assert!(S::Paused.on(E::Pause).is_err(), "pause of a paused claim");
        assert!(S::Bound.on(E::Resume).is_err(), "resume of a running claim");
        assert!(S::Released.on(E::Bind).is_err());
        assert!(S::Expired.on(E::Release).is_err());
    }

    #[test]
    fn ttl() {
        assert!(!is_expired(S::Bound, 0, i64::MAX), "0 = never");
        assert!(is_expired(S::Bound, 100, 100));
        assert!(!is_expired(S::Bound, 100, 99));
        assert!(!is_expired(S::Paused, 100, 200), "paused clocks stop");
    }

    proptest::proptest! {
        #[test]
        fn terminal_states_absorb(events in proptest::collection::vec(0u8..6, 0..30)) {
            let mut s = S::Pending;
            for e in events {
                let ev = [E::Bind, E::Pause, E::Resume, E::Release, E::Expire, E::Fail][e as usize];
                if let Ok(n) = s.on(ev) {
                    proptest::prop_assert!(!s.is_terminal(), "a terminal state moved");
                    s = n;
                }
            }
        }
    }
}
