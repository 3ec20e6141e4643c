//! The unary calls of the public API: a sandbox's life from create to
//! delete, on the gateway's own (owner-checked) scheduler calls.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sandpool_proto::{public as api, v1 as pb};
use sha2::{Digest, Sha256};

use crate::{Gateway, error::ApiError, tenancy};

type Result<T> = std::result::Result<T, ApiError>;

/// A claim as the public API shows it.
pub fn sandbox(c: pb::Claim) -> api::Sandbox {
    use api::SandboxState as S;
    let state = match pb::ClaimState::try_from(c.state) {
        Ok(pb::ClaimState::Pending) => S::Pending,
        Ok(pb::ClaimState::Bound) => S::Running,
        Ok(pb::ClaimState::Paused) => S::Paused,
        Ok(pb::ClaimState::Released) => S::Deleted,
        Ok(pb::ClaimState::Expired) => S::Expired,
        Ok(pb::ClaimState::Failed) => S::Failed,
        _ => S::Unspecified,
    };
    api::Sandbox {
        id: c.claim_id,
        state: state as i32,
        pool: c.pool,
        image: c.image,
        created_unix_ms: c.created_unix_ms,
        expires_unix_ms: c.expires_unix_ms,
        metadata: c.metadata,
        message: c.message,
        oom_kills: c.oom_kills,
    }
}

/// An idempotency key checked (at most 64 of `[A-Za-z0-9_-]`) and scoped to
/// the caller's key and `what`: a stable id no other key can reach.
pub fn scoped_key(key: &str, what: &str) -> Result<Option<String>> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > 64
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::Invalid(
            "idempotency_key must be at most 64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    let owner = tenancy::current().map_or_else(String::new, |p| p.id);
    let h = Sha256::digest(format!("{owner}\n{what}\n{key}").as_bytes());
    Ok(Some(format!("idem-{}", &hex::encode(h)[..40])))
}

/// The pool an E2B-style template id names: its last name part, untagged.
fn template_pool(t: &str) -> Result<String> {
    let pool = t.rsplit('/').next().unwrap_or_default();
    let pool = pool.split(':').next().unwrap_or_default().trim();
    if pool.is_empty() {
        return Err(ApiError::Invalid(format!("template {t:?} names no pool")));
    }
    Ok(pool.to_string())
}

/// The claim a create asks for (a snapshot source is a restore, not a claim).
pub fn claim_request(gw: &Gateway, r: api::CreateSandboxRequest) -> Result<pb::ClaimRequest> {
    use api::create_sandbox_request::Source;
    let ttl_seconds = gw.check_timeout("timeout_seconds", r.timeout_seconds)?;
    let limits = r.resources.map(|l| pb::Resources {
        cpu: l.cpu,
        memory: l.memory,
        pids: 0,
    });
    let (pool, template) = match r.source {
        Some(Source::Pool(p)) if !p.trim().is_empty() => (p, None),
        Some(Source::Template(t)) => (template_pool(&t)?, None),
        Some(Source::Image(i)) if !i.trim().is_empty() => {
            let t = pb::SandboxTemplate {
                image: i.trim().to_string(),
                resources: limits.clone(),
                runtime_class: pb::RuntimeClass::Runc as i32,
                release_policy: pb::ReleasePolicy::Delete as i32,
                ..Default::default()
            };
            (String::new(), Some(t))
        }
        Some(Source::Snapshot(_)) => {
            return Err(ApiError::Invalid("a snapshot source is a restore".into()));
        }
        _ => {
            return Err(ApiError::Invalid(
                "one of pool, template, image or snapshot is required".into(),
            ));
        }
    };
    Ok(pb::ClaimRequest {
        resources: if template.is_none() { limits } else { None },
        pool,
        ttl_seconds,
        process: Some(pb::InjectRequest {
            argv: r.entrypoint,
            env: r.env,
            ..Default::default()
        }),
        metadata: r.metadata,
        claim_id: scoped_key(&r.idempotency_key, "create")?.unwrap_or_default(),
        template,
        ..Default::default()
    })
}

pub async fn create(gw: &Gateway, r: api::CreateSandboxRequest) -> Result<api::Sandbox> {
    if let Some(api::create_sandbox_request::Source::Snapshot(s)) = &r.source {
        if r.entrypoint.is_empty() && !r.env.is_empty() {
            return Err(ApiError::Invalid(
                "env on a create from a snapshot is the env of its entrypoint: give an entrypoint"
                    .into(),
            ));
        }
        // a filesystem restore starts the entrypoint and takes the limits
        let process = (!r.entrypoint.is_empty()).then(|| pb::InjectRequest {
            argv: r.entrypoint,
            env: r.env,
            ..Default::default()
        });
        let resources = r
            .resources
            .filter(|l| !l.cpu.is_empty() || !l.memory.is_empty())
            .map(|l| pb::Resources {
                cpu: l.cpu,
                memory: l.memory,
                pids: 0,
            });
        // the same key on a create from a pool and from a snapshot names
        // the same claim: a retry of either returns it
        let req = pb::RestoreCheckpointRequest {
            checkpoint_id: s.clone(),
            count: 1,
            ttl_seconds: gw.check_timeout("timeout_seconds", r.timeout_seconds)?,
            metadata: r.metadata,
            claim_id: scoped_key(&r.idempotency_key, "create")?.unwrap_or_default(),
            process,
            resources,
        };
        let c = gw.restore_checkpoint(req).await?.pop();
        return c
            .map(sandbox)
            .ok_or_else(|| ApiError::Internal("restore made no sandbox".into()));
    }
    let req = claim_request(gw, r)?;
    let pool = req.pool.clone();
    let not_found = move |m| {
        if pool.is_empty() {
            ApiError::Invalid(m)
        } else {
            ApiError::PoolNotFound(pool)
        }
    };
    gw.create_claim(req, not_found).await.map(sandbox)
}

/// The caller's live sandboxes whose metadata contains `metadata`.
pub async fn list(gw: &Gateway, metadata: HashMap<String, String>) -> Result<Vec<api::Sandbox>> {
    let claims = gw
        .claims_with_metadata(metadata.into_iter().collect())
        .await?;
    Ok(claims
        .into_iter()
        .filter(|c| {
            matches!(
                pb::ClaimState::try_from(c.state),
                Ok(pb::ClaimState::Pending | pb::ClaimState::Bound | pb::ClaimState::Paused)
            )
        })
        .map(sandbox)
        .collect())
}

pub async fn renew(gw: &Gateway, id: &str, secs: u64) -> Result<api::Sandbox> {
    let now = chrono::Utc::now().timestamp_millis();
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    let at = gw.timeout_expiry("timeout_seconds", now, secs)?;
    gw.renew(id, at).await.map(sandbox)
}

/// Snapshots already taken under an idempotency key, by scoped key.
#[derive(Default)]
pub struct Snapshots(Mutex<HashMap<String, Arc<tokio::sync::OnceCell<api::SandboxSnapshot>>>>);

/// Keys kept before the oldest are forgotten.
const MAX_SNAPSHOT_KEYS: usize = 4096;

impl Snapshots {
    fn cell(&self, key: String) -> Arc<tokio::sync::OnceCell<api::SandboxSnapshot>> {
        let mut m = self.0.lock();
        if m.len() >= MAX_SNAPSHOT_KEYS && !m.contains_key(&key) {
            // forget the finished ones; a retry that late takes a new snapshot
            m.retain(|_, c| !c.initialized());
        }
        m.entry(key).or_default().clone()
    }
}

pub async fn snapshot(
    gw: &Gateway,
    done: &Snapshots,
    r: api::SnapshotSandboxRequest,
) -> Result<api::SandboxSnapshot> {
    let take = || async {
        let req = pb::CheckpointClaimRequest {
            claim_id: r.id.clone(),
            leave_running: r.leave_running,
            name: r.name.clone(),
            filesystem_only: false,
            // files only where memory cannot be kept (Kubernetes mode)
            memory_if_supported: true,
        };
        let c = gw.checkpoint_claim(req).await?;
        Ok(api::SandboxSnapshot {
            id: c.checkpoint_id,
            name: c.name,
            sandbox_id: r.id.clone(),
            size_bytes: c.size_bytes,
            created_unix_ms: c.created_unix_ms,
        })
    };
    match scoped_key(&r.idempotency_key, &format!("snapshot\n{}", r.id))? {
        // concurrent retries wait for the first; a failed one leaves it to the next
        Some(key) => done.cell(key).get_or_try_init(take).await.cloned(),
        None => take().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idempotency_keys_are_checked_and_scoped_to_the_callers_key() {
        let a = tenancy::Principal {
            id: "a".into(),
            admin: false,
        };
        let b = tenancy::Principal {
            id: "b".into(),
            admin: false,
        };
        let of = |p: tenancy::Principal, k: &'static str| {
            tenancy::scoped(p, async move { scoped_key(k, "create") })
        };
        let ka = of(a.clone(), "retry-1").await.expect("ok").expect("some");
        assert_eq!(
            of(a.clone(), "retry-1").await.expect("ok"),
            Some(ka.clone())
        );
        assert_ne!(of(b, "retry-1").await.expect("ok"), Some(ka.clone()));
        assert!(ka.len() <= 64 && ka.starts_with("idem-"), "{ka}");
        assert!(of(a.clone(), "").await.expect("ok").is_none());
        assert!(of(a, "no spaces").await.is_err());
    }

    #[test]
    fn templates_name_the_pool_of_their_last_part() {
        assert_eq!(template_pool("ns/python:3.12").expect("pool"), "python");
        assert_eq!(template_pool("base").expect("pool"), "base");
        assert!(template_pool("ns/").is_err());
    }
}
