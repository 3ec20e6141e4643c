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

/// The state a filesystem-only pause (the sandbox's processes stopped, its
/// root file system kept) moves a claim to: a bound claim is paused, and a
/// frozen paused one (`paused_filesystem` false) may drop its memory and stay
/// paused; a claim already paused filesystem-only cannot be paused again.
pub fn on_filesystem_pause(
    state: ClaimState,
    paused_filesystem: bool,
) -> Result<ClaimState, CoreError> {
    match state {
        ClaimState::Paused if !paused_filesystem => Ok(ClaimState::Paused),
        s => s.on(ClaimEvent::Pause),
    }
}

/// Most default env vars a claim keeps for its sandbox (envd `/init`'s bound).
pub const MAX_SANDBOX_ENV_VARS: usize = 1024;
/// Largest total size (names and values) of those env vars.
pub const MAX_SANDBOX_ENV_BYTES: usize = 1 << 20;

/// Check a claim's default env vars (E2B `envVars`): names non-empty and
/// without `=` or NUL, values without NUL, at most
/// [`MAX_SANDBOX_ENV_VARS`] entries and [`MAX_SANDBOX_ENV_BYTES`] bytes.
pub fn check_sandbox_env<'a>(
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    let (mut n, mut bytes) = (0usize, 0usize);
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(format!(
                "env var name {k:?} must be non-empty, without '=' or NUL"
            ));
        }
        if v.contains('\0') {
            return Err(format!("env var {k:?}'s value has a NUL byte"));
        }
        n += 1;
        bytes += k.len() + v.len();
    }
    if n > MAX_SANDBOX_ENV_VARS || bytes > MAX_SANDBOX_ENV_BYTES {
        return Err(format!(
            "env vars are {n} entries, {bytes} bytes; at most {MAX_SANDBOX_ENV_VARS} entries and {MAX_SANDBOX_ENV_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Whether a claim expiring at `expires_ms` (0 = never) is due at `now_ms`.
/// Paused claims do not expire (their clock is stopped).
pub fn is_expired(state: ClaimState, expires_ms: i64, now_ms: i64) -> bool {
    expires_ms > 0
        && now_ms >= expires_ms
        && matches!(state, ClaimState::Pending | ClaimState::Bound)
}

/// Whether a claimed sandbox whose runtime reports `running_commands` and
/// `idle_ms` (milliseconds since its last request) is idle for `limit`
/// (idle auto-pause): nothing running and quiet at least that long.
pub fn is_idle(running_commands: u32, idle_ms: u64, limit: std::time::Duration) -> bool {
    running_commands == 0 && u128::from(idle_ms) >= limit.as_millis()
}

/// The TTL a claim paused at its expiry (E2B `autoPause`) runs under once
/// resumed without a new one (E2B's default sandbox timeout, 300 s), in
/// standalone and Kubernetes mode alike.
pub const RESUMED_TTL_MS: i64 = 300_000;

/// What the end of a claim's TTL does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExpiry {
    /// Released (deleted), the default.
    Release,
    /// Paused (frozen, memory and files kept) until resumed or released
    /// (`ClaimRequest.pause_on_expiry`, E2B `autoPause`).
    Pause,
}

impl OnExpiry {
    /// The word Kubernetes mode records on a claim (annotation
    /// `sandpool.io/on-expiry`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Release => "delete",
            OnExpiry::Pause => "pause",
        }
    }

    /// A recorded word back (absent: [`OnExpiry::Release`]); anything else
    /// is an error naming it.
    pub fn parse(word: Option<&str>) -> Result<OnExpiry, String> {
        match word {
            None => Ok(OnExpiry::Release),
            Some(w) if w == OnExpiry::Release.as_str() => Ok(OnExpiry::Release),
            Some(w) if w == OnExpiry::Pause.as_str() => Ok(OnExpiry::Pause),
            Some(w) => Err(format!(
                "unknown on-expiry action {w:?} (expected \"pause\" or \"delete\")"
            )),
        }
    }
}

/// Why Kubernetes pods are not checkpointed (snapshots, restore, fork): the
/// sentence the Kubernetes scheduler and the CRI node agent both answer.
pub const KUBERNETES_CHECKPOINT_UNSUPPORTED: &str = "checkpoints (snapshots, restore, fork) are not supported in Kubernetes mode: every pod has the network its CNI gave it, runc checkpoints need CRIU (which fails on the kernels sandpool runs on) and gVisor cannot checkpoint a sandbox with a network; only standalone checkpointable (network-less) runsc sandboxes can be checkpointed";

/// Why a standalone checkpoint is never filesystem-only: the node agent
/// checkpoints a runsc sandbox whole (memory and files).
pub const STANDALONE_FS_CHECKPOINT_UNSUPPORTED: &str = "filesystem_only: a filesystem-only checkpoint is supported in Kubernetes mode only; standalone checkpoints always hold the sandbox's memory and files (leave filesystem_only unset)";

/// Why Kubernetes claims are not paused filesystem-only: a pod's containers
/// cannot be stopped and started again on the same root file system outside
/// the kubelet.
pub const KUBERNETES_FS_PAUSE_UNSUPPORTED: &str = "a filesystem-only pause is not supported in Kubernetes mode: a pod's containers cannot be stopped and started again on the same root file system outside the kubelet";

#[cfg(test)]
mod tests {
    use super::*;
    use ClaimEvent as E;
    use ClaimState as S;

    #[test]
    fn idle_means_nothing_running_and_quiet_for_the_limit() {
        let limit = std::time::Duration::from_secs(30);
        assert!(is_idle(0, 30_000, limit));
        assert!(is_idle(0, 90_000, limit));
        assert!(!is_idle(0, 29_999, limit));
        assert!(!is_idle(1, 90_000, limit), "a running command is activity");
    }

    #[test]
    fn on_expiry_words_round_trip_and_unknown_ones_are_named() {
        for a in [OnExpiry::Release, OnExpiry::Pause] {
            assert_eq!(OnExpiry::parse(Some(a.as_str())), Ok(a));
        }
        assert_eq!(OnExpiry::parse(None), Ok(OnExpiry::Release));
        let e = OnExpiry::parse(Some("hibernate")).expect_err("unknown");
        assert!(e.contains("\"hibernate\""), "{e}");
    }

    #[test]
    fn a_filesystem_pause_pauses_a_bound_claim_or_drops_a_frozen_ones_memory() {
        assert_eq!(on_filesystem_pause(S::Bound, false).unwrap(), S::Paused);
        // frozen: the memory goes, the claim stays paused
        assert_eq!(on_filesystem_pause(S::Paused, false).unwrap(), S::Paused);
        // already filesystem-only, or not paused-able at all
        assert!(on_filesystem_pause(S::Paused, true).is_err());
        assert!(on_filesystem_pause(S::Pending, false).is_err());
        assert!(on_filesystem_pause(S::Released, false).is_err());
    }

    #[test]
    fn sandbox_env_names_values_and_bounds() {
        let m = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = m(&[("A", "1"), ("B_2", "x=y")]);
        assert!(check_sandbox_env(ok.iter().map(|(k, v)| (k, v))).is_ok());
        for bad in [m(&[("", "1")]), m(&[("A=B", "1")]), m(&[("A", "a\0b")])] {
            assert!(check_sandbox_env(bad.iter().map(|(k, v)| (k, v))).is_err());
        }
        let many: Vec<_> = (0..=MAX_SANDBOX_ENV_VARS)
            .map(|i| (format!("K{i}"), String::new()))
            .collect();
        let e = check_sandbox_env(many.iter().map(|(k, v)| (k, v))).unwrap_err();
        assert!(e.contains("1025 entries"), "{e}");
        let big = m(&[("K", &"x".repeat(MAX_SANDBOX_ENV_BYTES))]);
        assert!(check_sandbox_env(big.iter().map(|(k, v)| (k, v))).is_err());
    }

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
