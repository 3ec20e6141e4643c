//! Leader election on a `coordination.k8s.io/v1` Lease, with optimistic
//! concurrency: taking or renewing the lease is a `replace` carrying the
//! resourceVersion that was read, so of two candidates only one can win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

use crate::error::{Result, is_already_exists, is_conflict};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// What a candidate should do with a lease it read (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Someone else holds a live lease.
    Wait { holder: String },
}

pub fn decide(spec: &LeaseSpec, me: &str, now: Timestamp) -> LeaseDecision {
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::Acquire;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = match &spec.renew_time {
        Some(t) => {
            t.0.checked_add(SignedDuration::from_secs(secs))
                .map(|end| end <= now)
                .unwrap_or(true)
        }
        None => true,
    };
    if expired {
        LeaseDecision::Acquire
    } else {
        LeaseDecision::Wait { holder }
    }
}

/// One election round: `Ok(true)` when we hold the lease afterwards.
pub async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool> {
    let now = Timestamp::now();
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_already_exists(&e) => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let mut spec = lease.spec.take().unwrap_or_default();
    match decide(&spec, &cfg.identity, now) {
        LeaseDecision::Wait { holder } => {
            tracing::debug!(%holder, "lease held by another controller");
            lease.spec = Some(spec);
            return Ok(false);
        }
        LeaseDecision::Acquire => {
            spec.holder_identity = Some(cfg.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        LeaseDecision::Renew => {}
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(secs);
    lease.spec = Some(spec);
    // `lease.metadata.resourceVersion` is what we read: a concurrent writer makes this 409
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Block until this process holds the lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<()> {
    let retry = cfg.duration / 3;
    loop {
        match try_acquire_or_renew(api, cfg).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election round failed"),
        }
        tokio::time::sleep(retry).await;
    }
}

/// Renew every third of the lease duration; returns when the lease is lost
/// (the caller should stop its controllers and exit).
pub async fn hold(api: &Api<Lease>, cfg: &LeaseConfig) {
    let period = cfg.duration / 3;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        match try_acquire_or_renew(api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the lease failed");
                if last_ok.elapsed() >= cfg.duration {
                    return;
                }
            }
        }
    }
}

/// Give the lease up on shutdown so a standby takes over at once instead of
/// waiting for it to expire: the holder is cleared (as client-go's
/// `ReleaseOnCancel` does). `Ok(false)` when someone else holds it.
pub async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(false);
    };
    let mut spec = lease.spec.take().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    lease.spec = Some(spec);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(&spec("me", 1), "me", now), LeaseDecision::Renew);
        assert_eq!(
            decide(&spec("other", 1), "me", now),
            LeaseDecision::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(
            decide(&spec("other", 60), "me", now),
            LeaseDecision::Acquire,
            "expired"
        );
        assert_eq!(
            decide(&LeaseSpec::default(), "me", now),
            LeaseDecision::Acquire,
            "free"
        );
    }
}
