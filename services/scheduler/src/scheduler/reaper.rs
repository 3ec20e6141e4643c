//! The reaper: periodic resync, TTL expiry and idle pause.

use std::{sync::Arc, time::Duration};

use sandpool_core::claim::{ClaimEvent, ClaimState, RESUMED_TTL_MS, is_expired, is_idle};
use sandpool_proto::v1::{self as pb, runtime_client::RuntimeClient};
use tonic::transport::{Channel, Endpoint};

use super::{ClaimRec, Scheduler, now_ms};

impl Scheduler {
    pub(super) async fn reap_loop(self: Arc<Self>) {
        let mut round: u64 = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            round += 1;
            if round.is_multiple_of(40) {
                // every 10 s: creates that finished while nobody listened, lost sandboxes
                for idx in 0..self.nodes.len() {
                    // a hung node must not stall expiry and idle pauses
                    match tokio::time::timeout(Duration::from_secs(5), self.resync_node(idx)).await
                    {
                        Ok(Err(e)) => tracing::debug!(error = %e, "periodic node resync failed"),
                        Err(_) => {
                            tracing::warn!(node = %self.nodes[idx].name, "periodic node resync timed out")
                        }
                        Ok(Ok(())) => {}
                    }
                }
            }
            if let Some(limit) = self.cfg.idle_pause
                && round.is_multiple_of(4)
            {
                self.pause_idle(limit).await;
            }
            let now = now_ms();
            let due: Vec<String> = self
                .lock()
                .claims
                .values()
                .filter(|c| is_expired(c.state, c.expires_ms, now))
                .map(|c| c.id.clone())
                .collect();
            for id in due {
                self.expire(&id).await;
            }
        }
    }

    /// The end of claim `id`'s TTL: paused when it asked for that (and
    /// can be), else released.
    async fn expire(&self, id: &str) {
        let (pause, filesystem_only) = self.lock().claims.get(id).map_or((false, false), |c| {
            (c.pause_on_expiry, c.pause_filesystem_only)
        });
        if pause {
            match self.pause_as(id, filesystem_only).await {
                Ok(_) => {
                    tracing::info!(claim = %id, "claim expired: paused");
                    // a later resume without a new TTL gets a fresh one
                    let fresh = self.update_claim(id, |c| {
                        c.paused_remaining_ms = RESUMED_TTL_MS;
                        Ok(())
                    });
                    if let Err(e) = fresh {
                        tracing::warn!(claim = %id, error = %e, "auto-pause bookkeeping failed");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(claim = %id, error = %e, "pause on expiry failed: releasing instead")
                }
            }
        }
        tracing::info!(claim = %id, "claim expired");
        if let Err(e) = self.release(id, ClaimEvent::Expire).await {
            tracing::warn!(claim = %id, error = %e, "expiry failed");
        }
    }

    /// Idle auto-pause: every bound claim whose runtime reports at least
    /// `limit` without activity is paused (TTL stops, as for a user pause).
    pub(super) async fn pause_idle(&self, limit: Duration) {
        let bound: Vec<ClaimRec> = self
            .lock()
            .claims
            .values()
            .filter(|c| c.state == ClaimState::Bound)
            .cloned()
            .collect();
        for c in bound {
            let Some(h) = self.runtime_health(&c).await else {
                continue;
            };
            if is_idle(h.running_commands, h.idle_ms, limit) {
                tracing::info!(claim = %c.id, idle_ms = h.idle_ms, "pausing idle sandbox");
                if let Err(e) = self.pause(&c.id).await {
                    tracing::warn!(claim = %c.id, error = %e, "idle pause failed");
                }
            }
        }
    }

    pub(super) async fn runtime_health(&self, c: &ClaimRec) -> Option<pb::HealthResponse> {
        let mut client = runtime_client(c, |e| {
            e.connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(1))
        })
        .await?;
        let r = runtime_request(c, pb::HealthRequest {})?;
        Some(client.health(r).await.ok()?.into_inner())
    }
}

/// A client of the runtime in `c`'s sandbox, over an endpoint set up by `tune`.
pub(super) async fn runtime_client(
    c: &ClaimRec,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Option<RuntimeClient<Channel>> {
    let endpoint =
        Endpoint::from_shared(format!("http://{}:{}", c.sandbox.ip, c.sandbox.port)).ok()?;
    Some(RuntimeClient::new(tune(endpoint).connect().await.ok()?))
}

/// `msg` as a request carrying the access token of `c`'s sandbox.
pub(super) fn runtime_request<T>(c: &ClaimRec, msg: T) -> Option<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        sandpool_proto::ACCESS_TOKEN_METADATA,
        c.sandbox.token.parse().ok()?,
    );
    Some(r)
}
